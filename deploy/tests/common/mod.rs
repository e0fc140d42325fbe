//! Shared helpers of the deploy checks: the repository root, the generated
//! manifests parsed into JSON values, and lookups in them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use switchyard_deploy::Variant;

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/ has a parent")
        .to_path_buf()
}

/// The text of a generated manifest as checked in.
pub fn manifest_text(variant: Variant) -> String {
    let path = repo_root().join("deploy").join(variant.file_name());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of `text` as JSON (empty documents skipped).
pub fn documents(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("document {i}: {e}"));
        if !value.is_null() {
            out.push(value);
        }
    }
    out
}

/// The checked-in manifest of `variant`, parsed.
pub fn manifest(variant: Variant) -> Vec<Value> {
    documents(&manifest_text(variant))
}

/// The one object of `kind` named `name`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

/// All objects of `kind`.
pub fn objects<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The DaemonSet's pod spec.
pub fn pod_spec(docs: &[Value]) -> &Value {
    &object(docs, "DaemonSet", "switchyard-node")["spec"]["template"]["spec"]
}

/// A container (or init container) of the DaemonSet by name.
pub fn container<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    let spec = pod_spec(docs);
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's command + args as a string list.
pub fn argv(container: &Value) -> Vec<String> {
    container["command"]
        .as_array()
        .into_iter()
        .chain(container["args"].as_array())
        .flatten()
        .map(|v| v.as_str().expect("command entries are strings").to_string())
        .collect()
}

/// The file a container sees at `path` as (volume name, path inside the volume).
pub fn mounted_at<'a>(container: &'a Value, path: &str) -> Option<(&'a str, String)> {
    let mut best: Option<(&str, String, usize)> = None;
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let mount = m["mountPath"].as_str()?;
        let rest = match path.strip_prefix(mount) {
            Some("") => String::new(),
            Some(r) if r.starts_with('/') => r.trim_start_matches('/').to_string(),
            _ => continue,
        };
        if best.as_ref().is_none_or(|b| mount.len() > b.2) {
            best = Some((m["name"].as_str()?, rest, mount.len()));
        }
    }
    best.map(|(n, r, _)| (n, r))
}

/// A sibling binary of this test (target/<profile>/NAME), built by
/// `cargo test --workspace` or `cargo build -p PACKAGE`.
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// Every `.rs` file under `dir`, recursively, sorted.
pub fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
