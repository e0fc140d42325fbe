//! Switchyard's custom resources, API group `switchyard.io`, version `v1alpha1`.
//!
//! - [`IPPool`] (cluster-scoped): addresses for LoadBalancer Services and how they are
//!   announced.
//! - [`RouteTarget`] (cluster-scoped): an upstream router the controller programs routes on
//!   (driver, endpoint, credentials Secret, CA bundle).
//! - [`Segment`] (cluster-scoped): an L2 network (VLAN, subnets, uplink) the agents build
//!   on every node (`segment.rs`).
//! - [`SegmentAddress`] (cluster-scoped): one allocated address of a `vlan` segment and the
//!   pod attachment holding it, written by the node agents (`segment_address.rs`); no
//!   status (a record, nothing to report).
//!
//! The CRD manifests shipped in `deploy/crds/` are generated from these types
//! ([`crd_yaml`]); `cargo test -p switchyard-deploy --test crds` checks they agree.

mod addresses;
mod cpvip;
pub mod leader;
mod segment;
mod segment_address;
mod selector;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use addresses::{AddressError, AddressRange, PoolAddresses};
pub use cpvip::*;
pub use segment::{
    ANNOTATION_SEGMENT, ANNOTATION_SNAT, LABEL_NETWORK, NAMESPACE_FINALIZER, NETWORK_DEDICATED,
    ParsedSubnet, SEGMENT_FINALIZER, Segment, SegmentKind, SegmentSpec, SegmentSpecError,
    SegmentStatus, SegmentSubnet, TAG_NAMESPACE_UID,
};
pub use segment_address::{
    LABEL_ADDRESS_NODE, LABEL_ADDRESS_SEGMENT, MANAGED_BY_AGENT, SegmentAddress,
    SegmentAddressSpec, segment_address_name,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorError};

/// API group of Switchyard's custom resources.
pub const GROUP: &str = "switchyard.io";
/// The only version served so far.
pub const VERSION: &str = "v1alpha1";

/// Annotation: comma-separated addresses a Service asks for.
pub const ANNOTATION_LB_IPS: &str = "switchyard.io/load-balancer-ips";
/// Annotation: the IPPool a Service takes its address from.
pub const ANNOTATION_POOL: &str = "switchyard.io/address-pool";
/// Annotation: Services with the same value may share an address (ports permitting).
pub const ANNOTATION_SHARED: &str = "switchyard.io/allow-shared-ip";
/// The `spec.loadBalancerClass` Switchyard serves (besides an unset class).
pub const LB_CLASS: &str = "switchyard.io/lb";
/// Finalizer kept on a Service while it holds an address (the Kubernetes convention).
pub const LB_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// Tag scope (NSX) / label key marking objects Switchyard owns, valued with the cluster name.
pub const TAG_CLUSTER: &str = "switchyard.io/cluster";

/// What a pool's addresses are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PoolUsage {
    /// Addresses for `type: LoadBalancer` Services.
    #[default]
    LoadBalancer,
    /// SNAT addresses of namespace networks (one per opted-in namespace); never given to
    /// Services.
    Egress,
}

/// How a pool's addresses reach the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnnounceMode {
    /// One node answers ARP for the address (the agents; IPv4 only, no NDP yet).
    #[default]
    L2,
    /// A static route per address on the upstream router, every eligible node as a next hop.
    Route,
    /// Nothing is announced (the network delivers the addresses by other means).
    None,
}

/// How and by which nodes a pool's addresses are announced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Announce {
    /// `L2` (default), `Route` or `None`.
    #[serde(default)]
    pub mode: AnnounceMode,
    /// Nodes that may carry the pool's traffic (default: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Name of the RouteTarget (mode `Route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_target: Option<String>,
}

/// A pool of addresses for LoadBalancer Services.
// kube-derive takes one `printcolumn(...)` per column; clippy sees repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "ipp",
    status = "IPPoolStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.announce.mode"),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.used"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.free"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// Address blocks, e.g. `192.0.2.0/28` (every address of the block is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Inclusive ranges, e.g. `192.0.2.10-192.0.2.20`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<String>,
    /// Only Services with matching labels take addresses from this pool without naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in namespaces with matching labels take addresses from this pool
    /// without naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// `LoadBalancer` (the default) or `Egress` (namespace SNAT addresses).
    #[serde(default)]
    pub usage: PoolUsage,
    /// How the addresses are announced.
    #[serde(default)]
    pub announce: Announce,
}

/// What the controller reports about a pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// Addresses held by Services.
    #[serde(default)]
    pub used: i64,
    /// Addresses free.
    #[serde(default)]
    pub free: i64,
    /// Problems: invalid CIDRs/ranges, addresses also in another pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

/// Which router driver a RouteTarget uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// The lab's fabric API (`switchyard-lab fabric-api`).
    #[default]
    Lab,
    /// The NSX-T Policy API (tier-1 static routes).
    Nsx,
}

/// Reference to a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// An upstream router the controller writes static routes to.
// kube-derive takes one `printcolumn(...)` per column; clippy sees repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "RouteTarget",
    plural = "routetargets",
    shortname = "rt",
    status = "RouteTargetStatus",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(name = "Routes", type_ = "integer", json_path = ".status.routes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RouteTargetSpec {
    /// `lab` or `nsx`.
    pub driver: Driver,
    /// Base URL of the API, e.g. `https://nsx.example.com` (HTTPS only, no path).
    pub endpoint: String,
    /// Tier-1 gateway id holding the static routes (required for `nsx`; `lab` defaults to
    /// `lab`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier1: Option<String>,
    /// Secret with `tls.crt`/`tls.key` (the client certificate: NSX principal identity) and
    /// optionally `ca.crt`; it must be in the controller's namespace. Only the controller reads
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// PEM CA bundle the endpoint's certificate is verified against (else the Secret's
    /// `ca.crt`; system roots are never used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// What the controller reports about a route target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTargetStatus {
    /// Routes Switchyard owns there, as last read.
    #[serde(default)]
    pub routes: i64,
    /// The last driver error, empty when the last sync succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The CRDs of this crate.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        RouteTarget::crd(),
        ControlPlaneVIP::crd(),
        Segment::crd(),
        SegmentAddress::crd(),
    ]
}

/// File name in `deploy/crds/` of each CRD, with its YAML (as [`crd_yaml`] renders it).
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), crd_yaml(crd))
        })
        .collect()
}

/// One CRD as the YAML shipped in `deploy/crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let body = serde_norway::to_string(crd).unwrap_or_default();
    format!(
        "# GENERATED from switchyard-api (api/src/lib.rs): CRD {name}.\n\
         # Regenerate: SWITCHYARD_UPDATE_CRDS=1 cargo test -p switchyard-deploy --test crds\n{body}"
    )
}

/// Labels of an object as a map (empty when none).
pub fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_status_subresource_and_columns() {
        for crd in crds() {
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, VERSION);
            // A SegmentAddress is a record: nothing to report, no status.
            if crd.spec.names.kind != "SegmentAddress" {
                assert!(v.subresources.as_ref().unwrap().status.is_some());
            }
            assert!(v.additional_printer_columns.as_ref().unwrap().len() >= 3);
            assert_eq!(crd.spec.scope, "Cluster");
        }
    }

    #[test]
    fn pool_parses_with_defaults() {
        let pool: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "cidrs": ["192.0.2.0/30"], "announce": {"mode": "Route", "routeTarget": "lab"}
        }))
        .unwrap();
        assert_eq!(pool.usage, PoolUsage::LoadBalancer);
        assert_eq!(pool.announce.mode, AnnounceMode::Route);
        assert_eq!(pool.announce.route_target.as_deref(), Some("lab"));
    }
}
