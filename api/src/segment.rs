//! The `Segment` custom resource: a named L2 network the agents build on every node, as
//! their configuration file's `segments:` do, but created and changed through the API (by
//! a user, or by the controller for a namespace that asks for its own network).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer the controller keeps on every Segment: removed once no pod address of the
/// segment is allocated any more (no `SegmentAddress` object of it, and no entry in a previous-design `switchyard-ipam-<segment>` ConfigMap), so a
/// segment in use cannot disappear under its pods.
pub const SEGMENT_FINALIZER: &str = "switchyard.io/segment-in-use";
/// Label valued with the UID of the namespace a controller-made object belongs to.
pub const TAG_NAMESPACE_UID: &str = "switchyard.io/namespace-uid";
/// Namespace label opting a namespace into its own network (value [`NETWORK_DEDICATED`]).
pub const LABEL_NETWORK: &str = "switchyard.io/network";
/// The [`LABEL_NETWORK`] value asking for a dedicated segment.
pub const NETWORK_DEDICATED: &str = "dedicated";
/// Annotation (namespace or pod) naming the segment its pods attach to.
pub const ANNOTATION_SEGMENT: &str = "switchyard.io/segment";
/// Namespace annotation: the namespace's SNAT (egress) address.
pub const ANNOTATION_SNAT: &str = "switchyard.io/snat-address";
/// Finalizer on an opted-in namespace: its network is released before it goes.
pub const NAMESPACE_FINALIZER: &str = "switchyard.io/namespace-network";

/// What kind of L2 network a segment is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    /// VLAN trunked to an uplink; the gateway and subnets are in the fabric.
    #[default]
    Vlan,
    /// Per-node pod CIDR, the node is the gateway, encapsulated between nodes.
    Overlay,
}

/// One subnet of a segment with its gateway (in the fabric).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SegmentSubnet {
    /// IPv4 network, e.g. `10.64.0.0/26`.
    pub cidr: String,
    /// The fabric's gateway address inside `cidr`.
    pub gateway: String,
}

/// A segment: VLAN, subnets and uplink. The agents trunk the VLAN on the uplink and install
/// its flows on every node; pods choose it with the `switchyard.io/segment` annotation (on
/// the pod or its namespace).
// kube-derive takes one `printcolumn(...)` per column; clippy sees repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "Segment",
    plural = "segments",
    shortname = "seg",
    status = "SegmentStatus",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "VLAN", type_ = "integer", json_path = ".spec.vlan"),
    printcolumn(
        name = "Subnets",
        type_ = "string",
        json_path = ".spec.subnets[*].cidr"
    ),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SegmentSpec {
    /// `vlan` (default) or `overlay`.
    #[serde(default)]
    pub kind: SegmentKind,
    /// 802.1Q VLAN id, 1..=4094 (required for `vlan`).
    #[serde(default)]
    pub vlan: u16,
    /// `vlan` segments: the subnets pods take addresses from, in order (the first until it is
    /// full, then the next).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<SegmentSubnet>,
    /// `vlan` segments: the node NIC the VLAN is trunked to (the same name on every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// The address pods of the segment leave the cluster with (set by the controller for a
    /// namespace network, from an `IPPool` with `usage: Egress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_address: Option<String>,
}

/// What the controller reports about a segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentStatus {
    /// Pod addresses allocated in the segment, as last counted.
    #[serde(default)]
    pub used: i64,
    /// Addresses of all subnets (without network, broadcast and gateway addresses).
    #[serde(default)]
    pub capacity: i64,
    /// Problems with the spec (empty when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a Segment's spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentSpecError {
    /// The VLAN is outside 1..=4094.
    #[error("segment {segment:?}: vlan {vlan} is out of range; use 1..=4094")]
    Vlan {
        /// Segment name.
        segment: String,
        /// The VLAN.
        vlan: u16,
    },
    /// A field the kind needs is missing.
    #[error("segment {segment:?}: a {kind} segment needs {field}")]
    Missing {
        /// Segment name.
        segment: String,
        /// Its kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A subnet or gateway does not parse or does not fit.
    #[error("segment {segment:?}: subnet {cidr:?} with gateway {gateway:?}: {reason}")]
    Subnet {
        /// Segment name.
        segment: String,
        /// The CIDR as written.
        cidr: String,
        /// The gateway as written.
        gateway: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A subnet parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSubnet {
    /// The network.
    pub cidr: ipnet::Ipv4Net,
    /// Its gateway.
    pub gateway: std::net::Ipv4Addr,
}

impl SegmentSpec {
    /// Checks the spec and parses its subnets (`name` only for the messages).
    pub fn parsed_subnets(&self, name: &str) -> Result<Vec<ParsedSubnet>, SegmentSpecError> {
        let missing = |field| SegmentSpecError::Missing {
            segment: name.to_string(),
            kind: "vlan",
            field,
        };
        if self.kind == SegmentKind::Overlay {
            return Ok(Vec::new());
        }
        if !(1..=4094).contains(&self.vlan) {
            return Err(SegmentSpecError::Vlan {
                segment: name.to_string(),
                vlan: self.vlan,
            });
        }
        if self.uplink.as_deref().is_none_or(str::is_empty) {
            return Err(missing("uplink"));
        }
        if self.subnets.is_empty() {
            return Err(missing("subnets"));
        }
        self.subnets
            .iter()
            .map(|s| {
                let bad = |reason| SegmentSpecError::Subnet {
                    segment: name.to_string(),
                    cidr: s.cidr.clone(),
                    gateway: s.gateway.clone(),
                    reason,
                };
                let cidr: ipnet::Ipv4Net = s
                    .cidr
                    .parse()
                    .map_err(|_| bad("not an IPv4 CIDR like 10.1.0.0/24"))?;
                let gateway: std::net::Ipv4Addr = s
                    .gateway
                    .parse()
                    .map_err(|_| bad("gateway is not an IPv4 address"))?;
                if cidr.trunc() != cidr {
                    return Err(bad("not a network address"));
                }
                if cidr.prefix_len() > 30 {
                    return Err(bad("smaller than /30"));
                }
                if !cidr.contains(&gateway)
                    || gateway == cidr.network()
                    || gateway == cidr.broadcast()
                {
                    return Err(bad("gateway is not a host address of the subnet"));
                }
                Ok(ParsedSubnet { cidr, gateway })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> SegmentSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn vlan_segment_parses_and_checks() {
        let s = spec(serde_json::json!({
            "vlan": 100, "uplink": "trunk0",
            "subnets": [{"cidr": "10.64.0.0/26", "gateway": "10.64.0.1"}]
        }));
        assert_eq!(s.kind, SegmentKind::Vlan);
        let subnets = s.parsed_subnets("blue").unwrap();
        assert_eq!(subnets[0].cidr.to_string(), "10.64.0.0/26");
    }

    #[test]
    fn bad_specs_are_named() {
        let s = spec(serde_json::json!({"vlan": 0, "uplink": "t", "subnets": []}));
        assert_eq!(
            s.parsed_subnets("x").unwrap_err().to_string(),
            "segment \"x\": vlan 0 is out of range; use 1..=4094"
        );
        let s = spec(serde_json::json!({
            "vlan": 5, "uplink": "t",
            "subnets": [{"cidr": "10.64.0.0/26", "gateway": "10.65.0.1"}]
        }));
        let e = s.parsed_subnets("x").unwrap_err().to_string();
        assert!(e.contains("gateway is not a host address"), "{e}");
        let s = spec(
            serde_json::json!({"vlan": 5, "subnets": [{"cidr": "10.64.0.0/26", "gateway": "10.64.0.1"}]}),
        );
        assert!(
            s.parsed_subnets("x")
                .unwrap_err()
                .to_string()
                .contains("needs uplink")
        );
    }
}
