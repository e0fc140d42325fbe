//! Server-side printing: `meta.k8s.io/v1` `Table` responses, which `kubectl get` asks for.

use serde_json::{Value, json};

use super::resources::ResourceType;
use super::time;

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        priority,
    }
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
        ],
        ("", "nodes") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
            col("Pod-CIDR", "string", 1),
        ],
        ("", "services") => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        ("", "namespaces") => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
        ],
        ("discovery.k8s.io", "endpointslices") => vec![
            col("Name", "string", 0),
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0),
        ],
        ("apps", "deployments") => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ],
        ("apps", "replicasets") => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
        ],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn cells(rt: &ResourceType, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let age = json!(
        time::parse_rfc3339(s(obj, "/metadata/creationTimestamp"))
            .map(|t| time::human_age(now - t))
            .unwrap_or_else(|| "<unknown>".into())
    );
    let none = |v: &str| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.to_string()
        }
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses.map_or(0, |cs| {
                cs.iter()
                    .filter(|c| c.get("ready") == Some(&json!(true)))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |cs| {
                cs.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .sum()
            });
            let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                none(s(obj, "/status/phase"))
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age,
                json!(none(s(obj, "/status/podIP"))),
                json!(none(s(obj, "/spec/nodeName"))),
            ]
        }
        ("", "nodes") => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                .map(|c| {
                    if c.get("status") == Some(&json!("True")) {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            vec![
                name,
                json!(ready),
                age,
                json!(none(s(obj, "/spec/podCIDR"))),
            ]
        }
        ("", "services") => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let selector: Vec<String> = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(obj, "/spec/type")),
                json!(none(s(obj, "/spec/clusterIP"))),
                json!(service_external_ip(obj)),
                json!(none(&ports.join(","))),
                age,
                json!(none(&selector.join(","))),
            ]
        }
        ("", "namespaces") => vec![name, json!(s(obj, "/status/phase")), age],
        ("discovery.k8s.io", "endpointslices") => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.get("port").and_then(Value::as_i64))
                        .map(|p| p.to_string())
                        .collect()
                })
                .unwrap_or_default();
            let addrs: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|es| {
                    es.iter()
                        .flat_map(|e| {
                            e.get("addresses")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(obj, "/addressType")),
                json!(none(&ports.join(","))),
                json!(none(&addrs.join(","))),
                age,
            ]
        }
        ("apps", "deployments") => vec![
            name,
            json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            json!(int(obj, "/status/updatedReplicas")),
            json!(int(obj, "/status/availableReplicas")),
            age,
        ],
        ("apps", "replicasets") => vec![
            name,
            json!(int(obj, "/spec/replicas")),
            json!(int(obj, "/status/replicas")),
            json!(int(obj, "/status/readyReplicas")),
            age,
        ],
        _ => vec![name, age],
    }
}

/// kubectl's EXTERNAL-IP of a Service (kube-apiserver's printer, not wide): external IPs,
/// for a LoadBalancer its ingress addresses first (`<pending>` without any), for an
/// ExternalName the name.
fn service_external_ip(svc: &Value) -> String {
    let strings = |ptr: &str| -> Vec<String> {
        svc.pointer(ptr)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let external_ips = strings("/spec/externalIPs");
    match s(svc, "/spec/type") {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let ingress: Vec<&str> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                })
                .collect();
            let mut lb = ingress.join(",");
            if lb.len() > 16 {
                lb = format!("{}...", &lb[..13]);
            }
            let all: Vec<String> = lb
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .chain(external_ips)
                .collect();
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    }
}

/// A `Table` for the given objects (each row carries the full object).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value) -> Value {
    let now = time::now_unix();
    let defs: Vec<Value> = columns(rt)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": cells(rt, o, now), "object": o}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
