//! `policy NS/NAME`: a NetworkPolicy as this node enforces it: the local
//! pods it selects (with their isolation drop counters from the switch), its
//! rules, and each rule's packet and byte counters (the agent's
//! `network_policy_rule_*` metrics, which it reads from the rules' flows
//! every 10 s). Read-only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use switchyard_pipeline::cookie_object;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;
use crate::flows::FlowView;
use crate::kube::api_err;
use crate::output::{Render, Table};
use crate::ovs::Ovs;
use crate::pod::{PodInterface, pod_ports};

/// A local pod the policy selects.
#[derive(Debug, Clone, Serialize)]
pub struct SelectedPod {
    /// Name (in the policy's namespace).
    pub name: String,
    /// Its OpenFlow port.
    pub ofport: Option<i64>,
    /// Its address.
    pub address: String,
    /// Packets its ingress isolation drop flow dropped (`None`: no such flow).
    pub ingress_denied_packets: Option<u64>,
    /// Packets its egress isolation drop flow dropped.
    pub egress_denied_packets: Option<u64>,
}

/// One rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index in the policy's list (the metrics' `rule` label).
    pub index: usize,
    /// The peers (`from`/`to`), as text.
    pub peers: Vec<String>,
    /// The ports, as text.
    pub ports: Vec<String>,
    /// Packets its flows matched (new connections allowed), as the agent
    /// last read them; `None` when the agent has no counter for it (it
    /// selects no local pod, or the agent was not reachable).
    pub packets: Option<u64>,
    /// Bytes.
    pub bytes: Option<u64>,
}

/// What `policy` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `Ingress` and/or `Egress`.
    pub policy_types: Vec<String>,
    /// The `podSelector`, as text.
    pub pod_selector: String,
    /// The pods of this node it selects.
    pub selected_pods: Vec<SelectedPod>,
    /// Its rules.
    pub rules: Vec<RuleView>,
    /// Where the rule counters come from.
    pub counters_from: String,
    /// Why they could not be read, if so.
    pub counters_error: Option<String>,
}

/// Whether `sel` selects `labels` (matchLabels and matchExpressions).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// A selector as text (`{}`: everything).
pub fn selector_text(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    if parts.is_empty() {
        "{}".to_string()
    } else {
        parts.join(",")
    }
}

fn peer_text(p: &NetworkPolicyPeer) -> String {
    if let Some(b) = &p.ip_block {
        return match b.except.as_deref() {
            Some(ex) if !ex.is_empty() => format!("ipBlock {} except {}", b.cidr, ex.join(",")),
            _ => format!("ipBlock {}", b.cidr),
        };
    }
    let pods = p
        .pod_selector
        .as_ref()
        .map_or("every pod".to_string(), |s| {
            format!("pods {}", selector_text(s))
        });
    match &p.namespace_selector {
        None => format!("{pods} (this namespace)"),
        Some(s) => format!("{pods} in namespaces {}", selector_text(s)),
    }
}

fn port_text(p: &NetworkPolicyPort) -> String {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    match (&p.port, p.end_port) {
        (None, _) => format!("{proto}/any"),
        (Some(IntOrString::Int(n)), Some(end)) => format!("{proto}/{n}-{end}"),
        (Some(IntOrString::Int(n)), None) => format!("{proto}/{n}"),
        (Some(IntOrString::String(s)), _) => format!("{proto}/{s}"),
    }
}

/// The agent's per-rule counters: (namespace, policy, direction, rule) ->
/// (packets, bytes), from its metrics text.
pub fn parse_rule_counters(metrics: &str) -> BTreeMap<(String, String, String, usize), (u64, u64)> {
    let mut out: BTreeMap<_, (u64, u64)> = BTreeMap::new();
    for line in metrics.lines() {
        let (is_bytes, rest) = if let Some(r) =
            line.strip_prefix("switchyard_agent_network_policy_rule_packets{")
        {
            (false, r)
        } else if let Some(r) = line.strip_prefix("switchyard_agent_network_policy_rule_bytes{") {
            (true, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut l: BTreeMap<&str, &str> = BTreeMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                l.insert(k, v.trim_end_matches('"'));
            }
        }
        let (Some(ns), Some(policy), Some(direction), Some(rule)) = (
            l.get("namespace"),
            l.get("policy"),
            l.get("direction"),
            l.get("rule").and_then(|r| r.parse().ok()),
        ) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let e = out
            .entry((
                ns.to_string(),
                policy.to_string(),
                direction.to_string(),
                rule,
            ))
            .or_default();
        // Counters are integers; the text form may carry a fraction.
        let value = value as u64;
        if is_bytes {
            e.1 = value;
        } else {
            e.0 = value;
        }
    }
    out
}

/// `GET /metrics` of the agent over plain HTTP/1.0.
async fn agent_metrics(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(reply)) => {
            let status = reply.lines().next().unwrap_or_default().to_string();
            if status.split_whitespace().nth(1) != Some("200") {
                return Err(status);
            }
            Ok(reply
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default())
        }
    }
}

/// The packets of the isolation drop flow of `ofport` in `object`'s table.
fn denied(flows: &[FlowView], object: u32, field: &str, ofport: Option<i64>) -> Option<u64> {
    let ofport = u64::try_from(ofport?).ok()?;
    flows
        .iter()
        .find(|f| f.owner == "agent" && f.object == Some(object) && f.matches_number(field, ofport))
        .map(|f| f.packets)
}

/// Runs `policy`.
pub async fn run(
    ovs: &Ovs,
    client: ::kube::Client,
    ns: &str,
    name: &str,
    agent: SocketAddr,
) -> Result<PolicyReport, Error> {
    let api: ::kube::Api<NetworkPolicy> = ::kube::Api::namespaced(client.clone(), ns);
    let np = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("get networkpolicy {ns}/{name}")))?
        .ok_or_else(|| Error::NotFound(format!("networkpolicy {ns}/{name} does not exist")))?;
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = spec.pod_selector.clone().unwrap_or_default();
    let policy_types = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec!["Ingress".to_string()];
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            t.push("Egress".to_string());
        }
        t
    });

    let pods: ::kube::Api<Pod> = ::kube::Api::namespaced(client, ns);
    let list = pods
        .list(&Default::default())
        .await
        .map_err(api_err(format!("list pods in {ns}")))?;
    let db = ovs.ovsdb().await?;
    let ports = ovs.ports(&db).await?;
    let of = ovs.openflow().await?;
    let flows: Vec<FlowView> = ovs.flows(&of).await?.iter().map(FlowView::new).collect();
    let mut selected_pods = Vec::new();
    for p in &list.items {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        if !selects(&pod_selector, &labels) {
            continue;
        }
        for port in pod_ports(&ports, ns, &pod_name) {
            let iface = PodInterface::from_port(port);
            selected_pods.push(SelectedPod {
                name: pod_name.clone(),
                ofport: iface.ofport,
                address: iface.ip().to_string(),
                ingress_denied_packets: denied(
                    &flows,
                    cookie_object::POLICY_ISOLATION_INGRESS,
                    "reg1",
                    iface.ofport,
                ),
                egress_denied_packets: denied(
                    &flows,
                    cookie_object::POLICY_ISOLATION_EGRESS,
                    "in_port",
                    iface.ofport,
                ),
            });
        }
    }

    let counters_from = format!("http://{agent}/metrics");
    let (counters, counters_error) = match agent_metrics(agent, ovs.timeout).await {
        Ok(text) => (parse_rule_counters(&text), None),
        Err(e) => (BTreeMap::new(), Some(e)),
    };
    let mut rules = Vec::new();
    let directions = [
        (
            "ingress",
            "Ingress",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.clone(), r.ports.clone()))
                .collect::<Vec<_>>(),
        ),
        (
            "egress",
            "Egress",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.clone(), r.ports.clone()))
                .collect(),
        ),
    ];
    for (direction, kind, list) in directions {
        if !policy_types.iter().any(|t| t == kind) {
            continue;
        }
        for (index, (peers, ports)) in list.into_iter().enumerate() {
            let c = counters
                .get(&(
                    ns.to_string(),
                    name.to_string(),
                    direction.to_string(),
                    index,
                ))
                .copied();
            let peers: Vec<String> = peers.iter().flatten().map(peer_text).collect();
            let ports: Vec<String> = ports.iter().flatten().map(port_text).collect();
            rules.push(RuleView {
                direction: direction.to_string(),
                index,
                peers: if peers.is_empty() {
                    vec!["any peer".to_string()]
                } else {
                    peers
                },
                ports: if ports.is_empty() {
                    vec!["any port".to_string()]
                } else {
                    ports
                },
                packets: c.map(|c| c.0),
                bytes: c.map(|c| c.1),
            });
        }
    }
    Ok(PolicyReport {
        namespace: ns.to_string(),
        name: name.to_string(),
        policy_types,
        pod_selector: selector_text(&pod_selector),
        selected_pods,
        rules,
        counters_from,
        counters_error,
    })
}

impl Render for PolicyReport {
    fn render(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = format!(
            "NetworkPolicy: {}/{}\nTypes:         {}\nPod selector:  {}\n\nPods of this node it selects ({}):\n",
            self.namespace,
            self.name,
            self.policy_types.join(", "),
            self.pod_selector,
            self.selected_pods.len()
        );
        let mut t = Table::new(&[
            "pod",
            "ofport",
            "address",
            "ingress denied",
            "egress denied",
        ]);
        for p in &self.selected_pods {
            t.row([
                p.name.clone(),
                p.ofport.map_or("-".to_string(), |p| p.to_string()),
                p.address.clone(),
                opt(p.ingress_denied_packets),
                opt(p.egress_denied_packets),
            ]);
        }
        if t.is_empty() {
            out.push_str("  (none)\n");
        } else {
            out.push_str(&t.render_indented(2));
        }
        out.push_str("\nRules (packets and bytes of the new connections each allowed):\n");
        let mut t = Table::new(&["direction", "rule", "peers", "ports", "packets", "bytes"]);
        for r in &self.rules {
            t.row([
                r.direction.clone(),
                r.index.to_string(),
                r.peers.join("; "),
                r.ports.join(", "),
                opt(r.packets),
                opt(r.bytes),
            ]);
        }
        if t.is_empty() {
            out.push_str("  (none: every connection in its directions is denied)\n");
        } else {
            out.push_str(&t.render_indented(2));
        }
        match &self.counters_error {
            None => out.push_str(&format!(
                "\nCounters: {} (the agent reads them from the flows every 10 s)\n",
                self.counters_from
            )),
            Some(e) => out.push_str(&format!(
                "\nCounters: not read from {}: {e} (--agent-address)\n",
                self.counters_from
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_counters_from_the_agents_metrics() {
        let text = "# HELP switchyard_agent_network_policy_rule_packets x\n\
            switchyard_agent_network_policy_rule_packets{namespace=\"default\",policy=\"web\",direction=\"ingress\",rule=\"0\"} 7\n\
            switchyard_agent_network_policy_rule_bytes{namespace=\"default\",policy=\"web\",direction=\"ingress\",rule=\"0\"} 518\n\
            switchyard_agent_network_policy_flows 12\n";
        let c = parse_rule_counters(text);
        assert_eq!(
            c.get(&("default".into(), "web".into(), "ingress".into(), 0)),
            Some(&(7, 518))
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn selectors_match_and_read() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selects(&sel, &labels(&[("app", "web")])));
        assert!(!selects(&sel, &labels(&[("app", "web"), ("tier", "db")])));
        assert!(!selects(&sel, &labels(&[("app", "client")])));
        assert!(selects(&LabelSelector::default(), &labels(&[])));
        assert_eq!(selector_text(&sel), "app=web,tier notin (db)");
    }
}
