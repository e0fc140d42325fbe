//! RBAC covers exactly the API calls the code makes.
//!
//! Three things must agree: the table `deploy/rbac.tsv` (binary, group,
//! resource, verbs), the ClusterRoles of the manifest, and the code: every
//! kube-rs `Api<K>` in the sources a binary is built from, with the calls
//! made on it. The code scan understands `let x: Api<K> = ...; x.get(..)`,
//! `let x = Api::<K>::...; x.list(..)`, `Api::<K>::all(c).get(..)` and
//! `watcher(Api::<K>::..)`; anything else it fails on, so a new kind of use
//! is not silently missed (extend the scanner, then the table).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{manifest, object, objects, repo_root};
use k8s_openapi::Resource;
use switchyard_deploy::Variant;

/// (group, resource, verb)
type Permission = (String, String, String);

/// The sources each binary is built from and the binary's ClusterRole.
const BINARIES: &[(&str, &[&str])] = &[
    (
        "switchyard-agent",
        &["node-agent/src", "cni/src", "ovs/src"],
    ),
    ("switchyard-proxy", &["kube-proxy/src", "ovs/src"]),
    ("switchyard", &["cni/src"]),
];

fn table() -> BTreeMap<String, BTreeSet<Permission>> {
    let path = repo_root().join("deploy/rbac.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out: BTreeMap<String, BTreeSet<Permission>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            4,
            "rbac.tsv line {}: 4 tab-separated columns",
            n + 1
        );
        for verb in cols[3].split(',') {
            out.entry(cols[0].to_string()).or_default().insert((
                cols[1].to_string(),
                cols[2].to_string(),
                verb.to_string(),
            ));
        }
    }
    out
}

/// (group, plural) of a k8s-openapi kind named in the code.
fn resource_of(kind: &str) -> Option<(String, String)> {
    fn of<K: Resource>() -> Option<(String, String)> {
        Some((K::GROUP.to_string(), K::URL_PATH_SEGMENT.to_string()))
    }
    use k8s_openapi::api::{apps, coordination, core, discovery, events};
    match kind {
        "Node" => of::<core::v1::Node>(),
        "Pod" => of::<core::v1::Pod>(),
        "Namespace" => of::<core::v1::Namespace>(),
        "Service" => of::<core::v1::Service>(),
        "Endpoints" => of::<core::v1::Endpoints>(),
        "ConfigMap" => of::<core::v1::ConfigMap>(),
        "Secret" => of::<core::v1::Secret>(),
        "Event" => of::<events::v1::Event>(),
        "EndpointSlice" => of::<discovery::v1::EndpointSlice>(),
        "Lease" => of::<coordination::v1::Lease>(),
        "DaemonSet" => of::<apps::v1::DaemonSet>(),
        _ => None,
    }
}

/// RBAC verbs (and subresource) of a kube-rs `Api` method.
fn verbs_of(method: &str) -> Option<(&'static [&'static str], &'static str)> {
    Some(match method {
        "get" | "get_opt" | "get_metadata" | "get_metadata_opt" => (&["get"], ""),
        "list" | "list_metadata" => (&["list"], ""),
        "watch" | "watch_metadata" => (&["watch"], ""),
        "create" => (&["create"], ""),
        "replace" => (&["update"], ""),
        "patch" | "patch_metadata" => (&["patch"], ""),
        "delete" => (&["delete"], ""),
        "delete_collection" => (&["deletecollection"], ""),
        "get_status" => (&["get"], "/status"),
        "patch_status" => (&["patch"], "/status"),
        "replace_status" => (&["update"], "/status"),
        "entry" => (&["get", "create", "update"], ""),
        _ => return None,
    })
}

/// Source without comment lines and `#[cfg(test)]` modules (tests are not
/// part of the binary).
fn production_source(text: &str) -> String {
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier ending just before byte `end` of `s`.
fn ident_before(s: &str, end: usize) -> &str {
    let start = s[..end]
        .char_indices()
        .rev()
        .find(|(_, c)| !is_ident(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &s[start..end]
}

/// Index just past the parenthesis closing the one at `open`.
fn close_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Method names called as `.name(` on `var` between `from` and the next `fn `.
fn calls_on(src: &str, var: &str, from: usize) -> Vec<String> {
    let end = src[from..].find("fn ").map_or(src.len(), |i| from + i);
    let scope = &src[from..end];
    let needle = format!("{var}.");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = scope[at..].find(&needle) {
        let pos = at + i;
        at = pos + needle.len();
        if pos > 0 && scope[..pos].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let method: String = scope[at..].chars().take_while(|c| is_ident(*c)).collect();
        if method != "clone" {
            out.push(method);
        }
    }
    out
}

/// Every API permission the code in `src` needs; Err names an use the scan
/// cannot classify.
fn scan_source(src: &str, origin: &str) -> Result<BTreeSet<Permission>, String> {
    let src = production_source(src);
    let mut out = BTreeSet::new();
    for forbidden in [
        ".request::<",
        "request_text(",
        "Recorder::new",
        "DynamicObject",
    ] {
        if src.contains(forbidden) {
            return Err(format!(
                "{origin}: `{forbidden}` makes API calls this scan does not classify"
            ));
        }
    }
    let mut at = 0;
    while let Some(i) = src[at..].find("Api") {
        let pos = at + i;
        at = pos + 3;
        if pos > 0 && src[..pos].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &src[pos + 3..];
        let (turbofish, generic) = if let Some(r) = rest.strip_prefix("::<") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('<') {
            (false, r)
        } else {
            continue; // `Api::all(..)` etc.: typed by the `Api<K>` it is bound to.
        };
        let kind: String = generic
            .chars()
            .take_while(|c| is_ident(*c) || *c == ':')
            .collect();
        let kind = kind.rsplit("::").next().unwrap_or_default().to_string();
        let line = src[..pos].lines().count() + 1;
        let (group, resource) = resource_of(&kind).ok_or_else(|| {
            format!("{origin}:{line}: Api<{kind}>: unknown kind; add it to resource_of()")
        })?;
        let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
        let before = &src[line_start..pos];
        let after_kind =
            pos + 3 + if turbofish { 3 } else { 1 } + generic.find('>').unwrap_or(0) + 1;
        let mut methods: Vec<String> = Vec::new();
        let mut watched = false;
        if before.contains("watcher(") || before.contains("reflector(") {
            watched = true;
        } else if let Some(colon) = before.trim_end().strip_suffix(':') {
            // `let var: Api<K> = ...`
            let var = ident_before(colon, colon.len());
            methods = calls_on(&src, var, pos);
        } else if turbofish {
            // `Api::<K>::ctor(..)` followed by `.method(` or bound by `let var =`.
            let after = &src[after_kind..];
            let open = after.find('(').map(|i| after_kind + i);
            let closed = open.and_then(|o| close_paren(&src, o));
            if let Some(c) = closed
                && let Some(chain) = src[c..].strip_prefix('.')
            {
                methods.push(chain.chars().take_while(|c| is_ident(*c)).collect());
            } else if let Some(eq) = before.trim_end().strip_suffix('=') {
                let var = ident_before(eq.trim_end(), eq.trim_end().len());
                methods = calls_on(&src, var, pos);
            }
        }
        if watched {
            for verb in ["list", "watch"] {
                out.insert((group.clone(), resource.clone(), verb.to_string()));
            }
            continue;
        }
        if methods.is_empty() {
            return Err(format!(
                "{origin}:{line}: cannot tell which API calls this Api<{kind}> makes"
            ));
        }
        for m in methods {
            let (verbs, sub) = verbs_of(&m).ok_or_else(|| {
                format!("{origin}:{line}: Api<{kind}>.{m}(): unknown kube-rs method; add it to verbs_of()")
            })?;
            for v in verbs {
                out.insert((group.clone(), format!("{resource}{sub}"), v.to_string()));
            }
        }
    }
    Ok(out)
}

fn scan_dir(dir: &Path, out: &mut BTreeSet<Permission>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            scan_dir(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let origin = path
                .strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string();
            out.extend(scan_source(&text, &origin).unwrap_or_else(|e| panic!("{e}")));
        }
    }
}

fn code_permissions(binary: &str) -> BTreeSet<Permission> {
    let dirs = BINARIES.iter().find(|(b, _)| *b == binary).unwrap().1;
    let mut out = BTreeSet::new();
    for dir in dirs {
        scan_dir(&repo_root().join(dir), &mut out);
    }
    out
}

fn role_permissions(role: &serde_json::Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let s = |x: &serde_json::Value| x.as_str().unwrap().to_string();
                    assert!(
                        s(v) != "*" && s(r) != "*" && s(g) != "*",
                        "no wildcards in {}",
                        role["metadata"]["name"]
                    );
                    out.insert((s(g), s(r), s(v)));
                }
            }
        }
    }
    out
}

#[test]
fn table_lists_exactly_the_api_calls_of_the_code() {
    let table = table();
    for (binary, _) in BINARIES {
        let code = code_permissions(binary);
        let listed = table.get(*binary).cloned().unwrap_or_default();
        assert_eq!(
            code, listed,
            "{binary}: the code's API calls (left) differ from deploy/rbac.tsv (right)"
        );
    }
    assert!(
        table.keys().all(|b| BINARIES.iter().any(|(x, _)| x == b)),
        "rbac.tsv names an unknown binary"
    );
}

#[test]
fn cluster_roles_grant_exactly_the_table() {
    let table = table();
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let roles = objects(&docs, "ClusterRole");
        let mut role_names = BTreeSet::new();
        for role in roles {
            let name = role["metadata"]["name"].as_str().unwrap();
            role_names.insert(name.to_string());
            let listed = table
                .get(name)
                .unwrap_or_else(|| panic!("ClusterRole {name} is not a binary of rbac.tsv"));
            assert_eq!(&role_permissions(role), listed, "ClusterRole {name}");
        }
        let needing: BTreeSet<String> = table.keys().cloned().collect();
        assert_eq!(
            role_names, needing,
            "one ClusterRole per binary that calls the API"
        );
        // Both roles reach the pod through its service account.
        for name in &needing {
            object(&docs, "ClusterRoleBinding", name);
        }
    }
}

#[test]
fn scanner_finds_calls_and_refuses_what_it_cannot_classify() {
    let src = r#"
async fn a(c: Client) {
    let nodes: Api<Node> = Api::all(c.clone());
    nodes.get("n").await;
    let pods = Api::<Pod>::namespaced(c.clone(), "ns");
    pods.patch_status("p", &pp, &patch).await;
    Api::<Service>::all(c.clone()).list(&lp).await;
    let w = watcher::watcher(Api::<EndpointSlice>::all(c), cfg);
    // let x: Api<Secret> = Api::all(c); x.get("in a comment")
}
#[cfg(test)]
mod tests { fn t(c: Client) { let s: Api<Secret> = Api::all(c); s.delete("x"); } }
"#;
    let got = scan_source(src, "t.rs").unwrap();
    let p = |g: &str, r: &str, v: &str| (g.to_string(), r.to_string(), v.to_string());
    let want: BTreeSet<Permission> = [
        p("", "nodes", "get"),
        p("", "pods/status", "patch"),
        p("", "services", "list"),
        p("discovery.k8s.io", "endpointslices", "list"),
        p("discovery.k8s.io", "endpointslices", "watch"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);

    let err = scan_source("fn f(api: Api<Node>) { g(api) }", "x.rs").unwrap_err();
    assert!(err.contains("cannot tell"), "{err}");
    let err = scan_source(
        "fn f(c: C) { let a: Api<Widget> = Api::all(c); a.get(\"x\"); }",
        "x.rs",
    )
    .unwrap_err();
    assert!(err.contains("unknown kind"), "{err}");
    let err = scan_source(
        "fn f(c: C) { let a: Api<Pod> = Api::all(c); a.evict(\"x\"); }",
        "x.rs",
    )
    .unwrap_err();
    assert!(err.contains("evict"), "{err}");
}
