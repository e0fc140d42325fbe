//! The generated manifests: up to date with deploy/sources/, every document
//! valid against the Kubernetes schema (it deserializes into its typed
//! k8s-openapi struct and serializes back without losing a field, so no field
//! is unknown or misspelled), and internally consistent where the API server
//! would reject it or the pod would break at run time.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{manifest, manifest_text, objects, pod_spec};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
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
        ("v1", "Service") => roundtrip::<Service>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<RoleBinding>(doc),
        ("apps/v1", "DaemonSet") => roundtrip::<DaemonSet>(doc),
        ("apps/v1", "Deployment") => roundtrip::<Deployment>(doc),
        _ => Err(format!(
            "{api_version} {kind}: not a kind this test knows; add it"
        )),
    }
}

#[test]
fn cpvip_manifest_matches_the_kubernetes_schema() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("switchyard-cpvip.yaml"),
    )
    .unwrap();
    let docs = common::documents(&text);
    assert_eq!(docs.len(), 2);
    for doc in &docs {
        if let Err(e) = validate(doc) {
            panic!(
                "switchyard-cpvip.yaml: {} {}: {e}",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["serviceAccountName"], "switchyard-cpvip");
}

#[test]
fn every_document_matches_the_kubernetes_schema() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        assert_eq!(docs.len(), 25, "{}: documents", variant.file_name());
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
        assert_eq!(names, ["agent", "proxy"], "{}", variant.file_name());
        let init = pod["initContainers"].as_array().unwrap();
        let init_names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        match variant {
            Variant::BundledOvs => {
                // install-cni runs to completion; ovs is a sidecar that keeps
                // running, and agent/proxy start after its startup probe,
                // which waits for the restore of saved flows.
                assert_eq!(init_names, ["install-cni", "ovs"]);
                assert!(init[0].get("restartPolicy").is_none());
                assert_eq!(init[1]["restartPolicy"], "Always");
                assert_eq!(
                    init[1]["startupProbe"]["exec"]["command"],
                    serde_json::json!(["/usr/local/bin/switchyard-ovs", "ready"])
                );
            }
            Variant::HostOvs => assert_eq!(init_names, ["install-cni"]),
        }
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
fn bindings_grant_the_roles_to_their_service_accounts() {
    let docs = manifest(Variant::BundledOvs);
    for (role_kind, binding_kind) in [
        ("ClusterRole", "ClusterRoleBinding"),
        ("Role", "RoleBinding"),
    ] {
        // (namespace, name); namespace null for cluster-scoped roles.
        let roles: BTreeSet<(String, &str)> = objects(&docs, role_kind)
            .iter()
            .map(|r| {
                (
                    r["metadata"]["namespace"].to_string(),
                    r["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        let mut bound = BTreeSet::new();
        for b in objects(&docs, binding_kind) {
            let role = (
                b["metadata"]["namespace"].to_string(),
                b["roleRef"]["name"].as_str().unwrap(),
            );
            assert_eq!(b["roleRef"]["kind"], role_kind);
            assert!(
                roles.contains(&role),
                "binding to missing {role_kind} {role:?}"
            );
            bound.insert(role);
            let subjects = b["subjects"].as_array().unwrap();
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            // The controller's roles go to the Deployment's own account, the others to the
            // DaemonSet's.
            let account = if b["metadata"]["name"] == "switchyard-cpvip" {
                serde_json::Value::from("switchyard-cpvip")
            } else if b["metadata"]["name"] == "switchyard-controller" {
                common::object(&docs, "Deployment", "switchyard-controller")["spec"]["template"]
                    ["spec"]["serviceAccountName"]
                    .clone()
            } else {
                pod_spec(&docs)["serviceAccountName"].clone()
            };
            assert_eq!(subjects[0]["name"], account);
            assert_eq!(subjects[0]["namespace"], switchyard_deploy::NAMESPACE);
        }
        assert_eq!(bound, roles, "every {role_kind} is bound");
    }
    assert!(
        !objects(&docs, "Role").is_empty(),
        "the agent's ConfigMaps are granted by a Role in {}",
        switchyard_deploy::NAMESPACE
    );
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
    // The plugin entry, as libcni hands it to the plugin (cniVersion and
    // name copied from the list), passes the plugin's own config parser.
    let mut net = plugins[0].clone();
    net["cniVersion"] = conflist["cniVersion"].clone();
    net["name"] = conflist["name"].clone();
    let parsed = switchyard_cni::parse_config(net.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("the conflist's switchyard entry is refused: {e:?}"));
    assert_eq!(parsed.plugin_type, "switchyard");
    assert_eq!(
        parsed.capabilities.get("io.kubernetes.cri.pod-annotations"),
        Some(&true)
    );
    assert!(parsed.log_file.is_some());
    // And the parser does refuse what it should (so this check can fail).
    let mut bad = net.clone();
    bad["timeoutSeconds"] = Value::String("soon".into());
    assert!(switchyard_cni::parse_config(bad.to_string().as_bytes()).is_err());
}

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn one_of(value: &Value, allowed: &[&str], what: &str) {
    if value.is_null() {
        return;
    }
    let v = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string"));
    assert!(
        allowed.contains(&v),
        "{what}: {v:?} is not one of {allowed:?}"
    );
}

/// A Kubernetes quantity as the API server parses it (the subset used here).
fn quantity_ok(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &q[digits.len()..];
    digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
        && ["", "m", "k", "M", "G", "Ki", "Mi", "Gi"].contains(&suffix)
}

/// The API server's validation rules that a typed round trip cannot see
/// (enumerations, name formats, one handler per probe, quantities, unique
/// names), as `kubectl apply` against a real cluster would report them.
#[test]
fn api_server_validation_rules_hold() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        for doc in &docs {
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(
                name.split('.').all(dns1123_label) && name.len() <= 253,
                "metadata.name {name:?}"
            );
        }
        let ds = common::object(&docs, "DaemonSet", "switchyard-node");
        one_of(
            &ds["spec"]["updateStrategy"]["type"],
            &["RollingUpdate", "OnDelete"],
            "updateStrategy",
        );
        let pod = pod_spec(&docs);
        one_of(
            &pod["dnsPolicy"],
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            "dnsPolicy",
        );
        for t in pod["tolerations"].as_array().unwrap() {
            one_of(&t["operator"], &["Exists", "Equal"], "toleration operator");
        }
        let mut volume_names = BTreeSet::new();
        for v in pod["volumes"].as_array().unwrap() {
            let n = v["name"].as_str().unwrap();
            assert!(dns1123_label(n), "volume {n}");
            assert!(volume_names.insert(n), "volume {n} twice");
            one_of(
                &v["hostPath"]["type"],
                &[
                    "",
                    "DirectoryOrCreate",
                    "Directory",
                    "FileOrCreate",
                    "File",
                    "Socket",
                    "CharDevice",
                    "BlockDevice",
                ],
                "hostPath.type",
            );
        }
        let mut container_names = BTreeSet::new();
        for c in pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().unwrap())
        {
            let n = c["name"].as_str().unwrap();
            assert!(dns1123_label(n), "container {n}");
            assert!(container_names.insert(n), "container {n} twice");
            one_of(
                &c["imagePullPolicy"],
                &["Always", "IfNotPresent", "Never"],
                "imagePullPolicy",
            );
            let mut paths = BTreeSet::new();
            for m in c["volumeMounts"].as_array().unwrap() {
                assert!(
                    paths.insert(m["mountPath"].as_str().unwrap()),
                    "{n}: mountPath twice"
                );
                one_of(
                    &m["mountPropagation"],
                    &["None", "HostToContainer", "Bidirectional"],
                    "mountPropagation",
                );
            }
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(p) = c[probe].as_object() {
                    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
                        .iter()
                        .filter(|h| p.contains_key(**h))
                        .count();
                    assert_eq!(handlers, 1, "{n} {probe}: exactly one handler");
                }
            }
            for (kind, values) in c["resources"].as_object().unwrap() {
                for (res, q) in values.as_object().unwrap() {
                    let q = q.as_str().unwrap();
                    assert!(quantity_ok(q), "{n} {kind}.{res}: {q:?}");
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                assert!(
                    e["name"]
                        .as_str()
                        .unwrap()
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
                    "env name"
                );
                one_of(
                    &e["valueFrom"]["fieldRef"]["fieldPath"],
                    &[
                        "metadata.name",
                        "metadata.namespace",
                        "metadata.uid",
                        "spec.nodeName",
                        "spec.serviceAccountName",
                        "status.hostIP",
                        "status.podIP",
                    ],
                    "env fieldRef",
                );
            }
        }
    }
    assert!(quantity_ok("100m") && quantity_ok("64Mi") && !quantity_ok("64MB"));
    assert!(dns1123_label("agent") && !dns1123_label("Agent") && !dns1123_label("-a"));
}

/// `kubectl kustomize` (offline: no API server involved) reads every
/// document of the manifest with kubectl's own YAML decoding and gives back
/// the same objects, field for field; an image override reaches every
/// container (what `kubectl apply -k` with an overlay does).
#[test]
fn kubectl_reads_the_manifest_as_written() {
    let dir = tempfile::Builder::new()
        .prefix("sy-kustomize-")
        .tempdir()
        .unwrap();
    // deploy/ itself (its kustomization.yaml), by a path relative to the
    // temporary directory: kustomize refuses absolute ones.
    let up = dir.path().components().count() - 1;
    let deploy = std::iter::repeat_n(Path::new(".."), up)
        .collect::<std::path::PathBuf>()
        .join(
            common::repo_root()
                .join("deploy")
                .strip_prefix("/")
                .unwrap(),
        );
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {}\nimages:\n  - name: switchyard\n    newName: registry.example.com/switchyard\n    newTag: \"9.9\"\n",
            deploy.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(dir.path())
        .output()
        .expect("kubectl (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = common::documents(&String::from_utf8(out.stdout).unwrap());
    let mut expected = manifest(Variant::BundledOvs);
    assert_eq!(rendered.len(), expected.len());
    for doc in &mut expected {
        if doc["kind"] == "DaemonSet" || doc["kind"] == "Deployment" {
            let spec = &mut doc["spec"]["template"]["spec"];
            for list in ["containers", "initContainers"] {
                let Some(list) = spec.get_mut(list).and_then(Value::as_array_mut) else {
                    continue;
                };
                for c in list {
                    c["image"] = Value::String("registry.example.com/switchyard:9.9".into());
                }
            }
        }
    }
    for doc in &expected {
        let name = &doc["metadata"]["name"];
        let same = rendered
            .iter()
            .find(|r| {
                r["kind"] == doc["kind"]
                    && &r["metadata"]["name"] == name
                    && r["metadata"]["namespace"] == doc["metadata"]["namespace"]
            })
            .unwrap_or_else(|| panic!("kubectl lost {} {name}", doc["kind"]));
        let mut lost = Vec::new();
        lost_fields(doc, same, "", &mut lost);
        lost_fields(same, doc, "", &mut lost);
        assert!(lost.is_empty(), "{} {name}: {lost:?}", doc["kind"]);
    }
}

/// The headless metrics Services select the pods whose containers declare
/// the ports they target, and the optional ServiceMonitors select those
/// Services by label and name their ports.
#[test]
fn metrics_services_and_service_monitors_reach_the_metrics_ports() {
    let monitors = common::documents(switchyard_deploy::SERVICE_MONITOR);
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let services = objects(&docs, "Service");
        assert_eq!(services.len(), 2, "{}", variant.file_name());
        for svc in &services {
            let name = svc["metadata"]["name"].as_str().unwrap();
            assert_eq!(svc["spec"]["clusterIP"], "None", "{name} is headless");
            let selector = svc["spec"]["selector"].as_object().unwrap();
            let workloads: Vec<&Value> = docs
                .iter()
                .filter(|d| d["kind"] == "DaemonSet" || d["kind"] == "Deployment")
                .filter(|d| {
                    let labels = &d["spec"]["template"]["metadata"]["labels"];
                    selector.iter().all(|(k, v)| &labels[k] == v)
                })
                .collect();
            assert_eq!(workloads.len(), 1, "{name} selects one workload");
            let declared: BTreeSet<(String, u64)> =
                workloads[0]["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["containerPort"].as_u64().unwrap(),
                        )
                    })
                    .collect();
            for port in svc["spec"]["ports"].as_array().unwrap() {
                let target = (
                    port["targetPort"].as_str().unwrap().to_string(),
                    port["port"].as_u64().unwrap(),
                );
                assert!(
                    declared.contains(&target),
                    "{name}: {target:?} not in {declared:?}"
                );
            }
            let monitor = monitors
                .iter()
                .find(|m| {
                    let labels = m["spec"]["selector"]["matchLabels"].as_object().unwrap();
                    labels
                        .iter()
                        .all(|(k, v)| &svc["metadata"]["labels"][k] == v)
                })
                .unwrap_or_else(|| panic!("no ServiceMonitor selects {name}"));
            let scraped: BTreeSet<&str> = monitor["spec"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["port"].as_str().unwrap())
                .collect();
            let ports: BTreeSet<&str> = svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(scraped, ports, "{name}: ServiceMonitor endpoints");
        }
    }
}
