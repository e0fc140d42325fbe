//! [`SegmentAddress`]: one address of a `vlan` segment held by one pod attachment, the
//! cluster-wide allocation record the node agents keep (as Kubernetes' own `IPAddress`
//! objects do for Service addresses).
//!
//! The object's name is derived from segment and address ([`segment_address_name`]), so
//! the API server itself keeps an address unique: a second create of the same name fails
//! with 409 AlreadyExists. Each object is small (a few hundred bytes), so a segment's size
//! is bounded by its subnets, not by an object size limit.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label: the segment of a [`SegmentAddress`] (allocation lists select on it).
pub const LABEL_ADDRESS_SEGMENT: &str = "switchyard.io/segment";
/// Label: the node holding a [`SegmentAddress`].
pub const LABEL_ADDRESS_NODE: &str = "switchyard.io/node";
/// Label `app.kubernetes.io/managed-by` value of the objects the node agents create.
pub const MANAGED_BY_AGENT: &str = "switchyard-agent";

/// An allocated address of a `vlan` segment and who holds it.
// kube-derive takes one `printcolumn(...)` per column; clippy sees repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "SegmentAddress",
    plural = "segmentaddresses",
    shortname = "sya",
    printcolumn(name = "Segment", type_ = "string", json_path = ".spec.segment"),
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Container", type_ = "string", json_path = ".spec.containerID"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SegmentAddressSpec {
    /// The `vlan` segment.
    pub segment: String,
    /// The IPv4 address.
    pub address: String,
    /// The node whose pod holds it.
    pub node: String,
    /// The container (sandbox) id of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The attachment's interface name in the pod.
    pub interface: String,
}

/// The object name of `address` in `segment`: `<segment>.<address>` (segment names are DNS
/// labels, so the name is a valid DNS subdomain and names one address only).
pub fn segment_address_name(segment: &str, address: std::net::Ipv4Addr) -> String {
    format!("{segment}.{address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_segment_and_the_address() {
        assert_eq!(
            segment_address_name("vlan100", "10.100.0.7".parse().unwrap()),
            "vlan100.10.100.0.7"
        );
        let spec: SegmentAddressSpec = serde_json::from_value(serde_json::json!({
            "segment": "vlan100", "address": "10.100.0.7", "node": "n1",
            "containerID": "abc", "interface": "eth0"
        }))
        .unwrap();
        assert_eq!(spec.container_id, "abc");
    }
}
