//! `ControlPlaneVIP`: a highly available Kubernetes API address, held on the loopback of the
//! healthy control-plane nodes and routed to them by one ECMP static route on the upstream
//! router (`switchyard-cpvip`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer `switchyard-cpvip` keeps on a ControlPlaneVIP until its route and VIPs are gone.
pub const CPVIP_FINALIZER: &str = "switchyard.io/cpvip-cleanup";
/// Router owner tag value of the control-plane VIP route.
pub const CPVIP_OWNER: &str = "cpvip";
/// Lease annotation: the VIP this node holds on `lo` (empty: none).
pub const ANNOTATION_VIP_PRESENT: &str = "switchyard.io/vip-present";
/// Lease annotation: `true` while the node's local apiserver passes its `/readyz` probe.
pub const ANNOTATION_APISERVER_HEALTHY: &str = "switchyard.io/apiserver-healthy";
/// Lease annotation: the node's address (the next hop the leader would route).
pub const ANNOTATION_NODE_ADDRESS: &str = "switchyard.io/node-address";
/// Lease annotation: the ControlPlaneVIP the node reports for.
pub const ANNOTATION_CPVIP: &str = "switchyard.io/control-plane-vip";
/// Label of the per-node report Leases (value: the ControlPlaneVIP's name).
pub const LABEL_CPVIP: &str = "switchyard.io/control-plane-vip";

/// How the apiservers are probed (by each node's daemon and by the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Milliseconds between probes (default 1000); after a failure the next probe comes after
    /// a tenth of this, until the apiserver is down or passes again.
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    /// Milliseconds one probe may take (default 500).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures after which an apiserver is down (default 3).
    #[serde(default = "default_failures")]
    pub failure_threshold: u32,
    /// Consecutive passes after which a down apiserver is up again (default 2).
    #[serde(default = "default_successes")]
    pub success_threshold: u32,
}

fn default_period_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_failures() -> u32 {
    3
}
fn default_successes() -> u32 {
    2
}
fn default_port() -> u16 {
    6443
}
fn default_local() -> String {
    "https://127.0.0.1:6443".to_string()
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            period_ms: default_period_ms(),
            timeout_ms: default_timeout_ms(),
            failure_threshold: default_failures(),
            success_threshold: default_successes(),
        }
    }
}

/// A control-plane VIP.
// kube-derive takes one `printcolumn(...)` per column; clippy sees repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "ControlPlaneVIP",
    plural = "controlplanevips",
    shortname = "cpvip",
    status = "ControlPlaneVIPStatus",
    printcolumn(name = "VIP", type_ = "string", json_path = ".spec.vip"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.routeTarget"),
    printcolumn(
        name = "Next hops",
        type_ = "string",
        json_path = ".status.nextHopsText"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneVIPSpec {
    /// The API address, e.g. `198.51.100.10` (it must be in every apiserver certificate's SANs).
    pub vip: String,
    /// Prefix length of the routed network (default: 32 for IPv4, 128 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<u8>,
    /// The RouteTarget (router driver, endpoint, credentials Secret) holding the route.
    pub route_target: String,
    /// Object id of the route on the router (default `cpvip-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    /// Port of the apiservers on the nodes (default 6443): the leader probes
    /// `https://<node>:<port>/readyz`.
    #[serde(default = "default_port")]
    pub apiserver_port: u16,
    /// The local apiserver each node's daemon probes (default `https://127.0.0.1:6443`), never
    /// through the VIP.
    #[serde(default = "default_local")]
    pub local_endpoint: String,
    /// Probe timings.
    #[serde(default)]
    pub probe: ProbeSpec,
}

/// A condition (the shape of `metav1.Condition`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VIPCondition {
    /// `Ready` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// What one node reports, as the leader last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVIPStatus {
    /// Node name.
    pub node: String,
    /// Next-hop address of the node.
    pub address: String,
    /// Ready in the `default/kubernetes` EndpointSlice.
    pub endpoint_ready: bool,
    /// The node reports the VIP on its `lo` and its apiserver healthy.
    pub vip_present: bool,
    /// The leader's own `/readyz` probe over verified TLS passes.
    pub leader_probe: bool,
    /// In the route.
    pub routed: bool,
}

/// What `switchyard-cpvip` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneVIPStatus {
    /// Next hops of the route as last written or confirmed on the router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_hops: Vec<String>,
    /// The same, comma-separated (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hops_text: Option<String>,
    /// Per control-plane node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeVIPStatus>,
    /// The last router error, absent after a successful reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 time of the last successful reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<String>,
    /// The leader that wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// `Ready` (the route matches the healthy nodes) and `Degraded` (failing static: the
    /// route is kept as it was because no healthy node or no EndpointSlice was seen, or the
    /// router fails).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<VIPCondition>,
}

impl ControlPlaneVIPSpec {
    /// The routed network, validated.
    pub fn network(&self) -> Result<ipnet::IpNet, String> {
        let ip: std::net::IpAddr = self
            .vip
            .parse()
            .map_err(|e| format!("spec.vip {:?}: {e}", self.vip))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = self.prefix_length.unwrap_or(max);
        let net =
            ipnet::IpNet::new(ip, len).map_err(|e| format!("spec.prefixLength {len}: {e}"))?;
        if net.trunc().addr() != ip && len != max {
            return Err(format!(
                "spec.vip {ip} is not the network address of /{len}: use the network's address"
            ));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_and_network() {
        let spec: ControlPlaneVIPSpec = serde_json::from_value(serde_json::json!({
            "vip": "198.51.100.10", "routeTarget": "lab"
        }))
        .unwrap();
        assert_eq!(spec.apiserver_port, 6443);
        assert_eq!(spec.local_endpoint, "https://127.0.0.1:6443");
        assert_eq!(spec.probe, ProbeSpec::default());
        assert_eq!(spec.network().unwrap().to_string(), "198.51.100.10/32");
        let bad = ControlPlaneVIPSpec {
            vip: "nope".into(),
            ..spec.clone()
        };
        assert!(bad.network().unwrap_err().contains("spec.vip"));
        let v6 = ControlPlaneVIPSpec {
            vip: "2001:db8::10".into(),
            ..spec
        };
        assert_eq!(v6.network().unwrap().to_string(), "2001:db8::10/128");
    }
}
