//! The generated manifests: up to date with deploy/sources/, every document
//! valid against the Kubernetes schema (it deserializes into its typed
//! k8s-openapi struct and serializes back without losing a field, so no field
//! is unknown or misspelled), and internally consistent where the API server
//! would reject it or the pod would break at run time.

mod common;

use std::collections::BTreeSet;

use common::{manifest, manifest_text, objects, pod_spec};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_deploy::{Variant, render};

#[test]
fn generated_manifests_are_up_to_date_with_their_sources() {
    for variant in Variant::ALL {
        let expected = render(variant);
        let actual = manifest_text(variant);
        if expected != actual {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
            panic!(
                "deploy/{} differs from its sources from line {}: run `cargo run -p switchyard-deploy -- generate`",
                variant.file_name(),
                line + 1
            );
        }
    }
}

/// Paths where `before` has something `after` lacks or differs.
fn lost_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => lost_fields(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if before != after => out.push(format!("{path} ({before} became {after})")),
        _ => {}
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown or mistyped fields: {}", lost.join(", ")))
    }
}

/// Validates one document against its typed struct.
fn validate(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => roundtrip::<Namespace>(doc),
        ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => roundtrip::<ConfigMap>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<ClusterRoleBinding>(doc)
        }
        ("apps/v1", "DaemonSet") => roundtrip::<DaemonSet>(doc),
        _ => Err(format!(
            "{api_version} {kind}: not a kind this test knows; add it"
        )),
    }
}

#[test]
fn every_document_matches_the_kubernetes_schema() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        assert_eq!(docs.len(), 8, "{}: documents", variant.file_name());
        for doc in &docs {
            if let Err(e) = validate(doc) {
                panic!(
                    "{}: {} {}: {e}",
                    variant.file_name(),
                    doc["kind"],
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn schema_check_catches_misspelled_and_mistyped_fields() {
    let docs = manifest(Variant::BundledOvs);
    let ds = common::object(&docs, "DaemonSet", "switchyard-node").clone();

    let mut misspelled = ds.clone();
    misspelled["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = validate(&misspelled).unwrap_err();
    assert!(err.contains(".spec.template.spec.hostNetwrok"), "{err}");

    let mut nested = ds.clone();
    nested["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = Value::Null;
    nested["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] =
        Value::Bool(true);
    let err = validate(&nested).unwrap_err();
    assert!(err.contains("securityContext.privilegd"), "{err}");

    let mut mistyped = ds;
    mistyped["spec"]["template"]["spec"]["hostNetwork"] = Value::String("yes".into());
    assert!(validate(&mistyped).is_err());
}

#[test]
fn daemonset_runs_everywhere_one_node_at_a_time() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let ds = common::object(&docs, "DaemonSet", "switchyard-node");
        let spec = &ds["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "selector {k} does not match the template");
        }
        assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
        let pod = pod_spec(&docs);
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        // Tolerating every taint covers control-plane and not-ready nodes.
        let tolerations = pod["tolerations"].as_array().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
            "{tolerations:?}"
        );
        assert_eq!(pod["serviceAccountName"], "switchyard-node");
        common::object(&docs, "ServiceAccount", "switchyard-node");
        assert_eq!(ds["metadata"]["namespace"], switchyard_deploy::NAMESPACE);
    }
}

#[test]
fn containers_have_probes_resources_and_only_declared_volumes() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let pod = pod_spec(&docs);
        let volumes: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let mut used = BTreeSet::new();
        let containers = pod["containers"].as_array().unwrap();
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let expected: &[&str] = match variant {
            Variant::BundledOvs => &["ovs", "agent", "proxy"],
            Variant::HostOvs => &["agent", "proxy"],
        };
        assert_eq!(names, expected, "{}", variant.file_name());
        let init = pod["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["name"], "install-cni");
        for c in containers.iter().chain(init) {
            let name = c["name"].as_str().unwrap();
            assert_eq!(
                c["image"], containers[0]["image"],
                "{name}: one image for all"
            );
            assert!(
                c["resources"]["requests"]["cpu"].is_string()
                    && c["resources"]["requests"]["memory"].is_string(),
                "{name}: resource requests"
            );
            for m in c["volumeMounts"].as_array().unwrap() {
                let v = m["name"].as_str().unwrap();
                assert!(volumes.contains(v), "{name} mounts undeclared volume {v}");
                used.insert(v);
            }
            if name != "install-cni" {
                assert!(c["livenessProbe"].is_object(), "{name}: liveness probe");
            }
        }
        assert_eq!(used, volumes, "every declared volume is mounted somewhere");
        assert!(common::container(&docs, "agent")["readinessProbe"]["httpGet"].is_object());
        assert!(common::container(&docs, "proxy")["readinessProbe"]["httpGet"].is_object());
    }
}

#[test]
fn bindings_grant_the_roles_to_the_daemonset_service_account() {
    let docs = manifest(Variant::BundledOvs);
    let roles: BTreeSet<&str> = objects(&docs, "ClusterRole")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    let mut bound = BTreeSet::new();
    for b in objects(&docs, "ClusterRoleBinding") {
        let role = b["roleRef"]["name"].as_str().unwrap();
        assert_eq!(b["roleRef"]["kind"], "ClusterRole");
        assert!(roles.contains(role), "binding to missing role {role}");
        bound.insert(role);
        let subjects = b["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], pod_spec(&docs)["serviceAccountName"]);
        assert_eq!(subjects[0]["namespace"], switchyard_deploy::NAMESPACE);
    }
    assert_eq!(bound, roles);
}

#[test]
fn conflist_is_a_valid_network_configuration_list() {
    let docs = manifest(Variant::BundledOvs);
    let cm = common::object(&docs, "ConfigMap", switchyard_deploy::CONFIG_MAP);
    let text = cm["data"][switchyard_deploy::CONFLIST_KEY]
        .as_str()
        .unwrap();
    assert_eq!(text, switchyard_deploy::CONFLIST_SOURCE);
    let conflist: Value = serde_json::from_str(text).expect("conflist is JSON");
    assert_eq!(conflist["name"], "switchyard");
    let plugins = conflist["plugins"].as_array().unwrap();
    assert_eq!(
        plugins[0]["type"], "switchyard",
        "switchyard is the first plugin"
    );
    // The version must be one the plugin supports.
    let version = conflist["cniVersion"].as_str().unwrap();
    assert!(
        switchyard_cni_versions().contains(&version.to_string()),
        "cniVersion {version}"
    );
    // The CNI binary's own config parser accepts the plugin entry.
    let mut net = plugins[0].clone();
    net["cniVersion"] = conflist["cniVersion"].clone();
    net["name"] = conflist["name"].clone();
    let out = run_plugin_version(&net);
    assert!(out.contains("supportedVersions"), "{out}");
}

fn switchyard_cni_versions() -> Vec<String> {
    ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .map(String::from)
        .to_vec()
}

/// Runs `switchyard` with CNI_COMMAND=VERSION on `net` (as libcni does).
fn run_plugin_version(net: &Value) -> String {
    use std::io::Write;
    let bin = common::workspace_binary("switchyard", "switchyard-cni");
    let mut child = std::process::Command::new(bin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(net.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "switchyard VERSION failed");
    String::from_utf8(out.stdout).unwrap()
}
