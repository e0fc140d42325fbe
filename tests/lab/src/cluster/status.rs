//! `switchyard-lab status`: nodes, their daemons, pods with IPs, and the OVS ports the agents
//! made (with VLAN tag and segment from their `external_ids`).

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::LabError;
use super::node;
use super::state::{Entry, StateDir};
use super::sys;
use super::up::{block_on, client};

/// An OVS port as the agent recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// VLAN tag (None = untagged).
    pub tag: Option<u64>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
}

/// Parses `ovs-vsctl -f json --columns=name,tag,external_ids list Port`.
pub fn parse_ports(json: &str) -> Vec<PortInfo> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    v["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| PortInfo {
                    name: row[0].as_str().unwrap_or("").to_string(),
                    tag: row[1].as_u64(),
                    external_ids: row[2][1]
                        .as_array()
                        .map(|pairs| {
                            pairs
                                .iter()
                                .filter_map(|p| {
                                    Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The OVS ports of a node (empty when its OVSDB does not answer).
pub fn node_ports(state: &StateDir, node: &super::state::NodeInfo) -> Vec<PortInfo> {
    node::vsctl(
        state,
        node,
        &[
            "-f",
            "json",
            "--columns=name,tag,external_ids",
            "list",
            "Port",
        ],
    )
    .map(|out| parse_ports(&out))
    .unwrap_or_default()
}

fn daemon_state(journal: &[Entry], what: &str) -> String {
    journal
        .iter()
        .rev()
        .find_map(|e| match e {
            Entry::Pid {
                pid,
                start,
                what: w,
            } if w == what => Some((*pid, *start)),
            _ => None,
        })
        .map_or_else(
            || "-".to_string(),
            |(pid, start)| {
                if sys::is_same_process(pid, start) {
                    format!("pid {pid}")
                } else {
                    "exited".to_string()
                }
            },
        )
}

/// The status report.
pub fn status(state: &StateDir) -> Result<String, LabError> {
    let info = state.load_info()?;
    let journal = state.journal();
    let url = info.api_url.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Lab {:?}: state {}, API server {url} ({}), runtime driver {}",
        info.name,
        state.root().display(),
        daemon_state(&journal, "apiserver"),
        daemon_state(&journal, "runtime"),
    );
    let _ = writeln!(out, "kubeconfig: {}", state.kubeconfig().display());
    if let Some(f) = &info.fabric {
        let vlans: Vec<String> = f
            .vlans
            .iter()
            .map(|v| format!("VLAN {} {} gw {}", v.vlan, v.subnet, v.gateway))
            .collect();
        let _ = writeln!(
            out,
            "fabric: namespace {} ({}), internet: namespace {} ({})",
            f.netns,
            vlans.join(", "),
            f.internet_netns,
            super::fabric::INTERNET_HOST
        );
    }
    let listed = block_on(async {
        let c = client(&url)?;
        let nodes = Api::<Node>::all(c.clone())
            .list(&ListParams::default())
            .await?;
        let pods = Api::<Pod>::all(c).list(&ListParams::default()).await?;
        Ok::<_, LabError>((nodes.items, pods.items))
    })?;
    let (nodes, pods) = match listed {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(
                out,
                "API server unreachable ({e}): showing what lab.json knows"
            );
            (Vec::new(), Vec::new())
        }
    };
    let cidr: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\n{:<8} {:<16} {:<16} {:<16} {:<12} {:<12} {:<12}",
        "NODE", "NETNS", "INTERNAL-IP", "POD-CIDR", "OVS", "AGENT", "PROXY"
    );
    let mut ports: BTreeMap<(String, String), (String, PortInfo)> = BTreeMap::new();
    for n in &info.nodes {
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:<16} {:<16} {:<12} {:<12} {:<12}",
            n.name,
            n.netns,
            n.address,
            cidr.get(&n.name).map_or("-", String::as_str),
            daemon_state(&journal, &format!("ovs-vswitchd {}", n.name)),
            daemon_state(&journal, &format!("agent {}", n.name)),
            daemon_state(&journal, &format!("proxy {}", n.name)),
        );
        for p in node_ports(state, n) {
            let ns = p.external_ids.get("switchyard.io/pod-namespace").cloned();
            let name = p.external_ids.get("switchyard.io/pod-name").cloned();
            if let (Some(ns), Some(name)) = (ns, name) {
                ports.insert((ns, name), (n.name.clone(), p));
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<16} {:<8} {:<10} {:<15} {:<16} {:<10} {:<5}",
        "NAMESPACE", "POD", "NODE", "PHASE", "IP", "OVS-PORT", "SEGMENT", "VLAN"
    );
    for p in &pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let port = ports.get(&(ns.clone(), name.clone()));
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:<8} {:<10} {:<15} {:<16} {:<10} {:<5}",
            ns,
            name,
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("-"),
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("-"),
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .unwrap_or("-"),
            port.map_or("-", |(_, p)| p.name.as_str()),
            port.and_then(|(_, p)| p.external_ids.get("switchyard.io/segment"))
                .map_or("-", String::as_str),
            port.map_or("-".to_string(), |(_, p)| p
                .tag
                .map_or("0".to_string(), |t| t.to_string())),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_parse_from_vsctl_json() {
        let json = r#"{"data":[["sy-abc",100,["map",[["switchyard.io/pod-name","web-1"],["switchyard.io/pod-namespace","default"]]]],["br-int",["set",[]],["map",[]]]],"headings":["name","tag","external_ids"]}"#;
        let ports = super::parse_ports(json);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].tag, Some(100));
        assert_eq!(ports[0].external_ids["switchyard.io/pod-name"], "web-1");
        assert_eq!(ports[1].tag, None);
        assert!(ports[1].external_ids.is_empty());
    }
}
