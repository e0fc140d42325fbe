//! Why a pod could not be attached, detached or checked: the domain errors
//! of the CNI verbs. The CNI layer maps each to a CNI error code and
//! message in one place (`impl From<AttachError> for CniError` in
//! `cni/mod.rs`); nothing below the CNI layer builds a `CniError`.

use switchyard_ovs::{openflow, ovsdb};

use crate::apiserver::ApiError;
use crate::ipam::IpamError;
use crate::netns::{InterfaceError, NetnsError};
use crate::segment::SegmentError;
use crate::vlan_pool::ClusterAllocationError;

/// Why a CNI verb failed (before the mapping to a CNI error code).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The agent is still starting.
    #[error("switchyard-agent is not ready")]
    NotReady,
    /// OVSDB or the OpenFlow connection is down.
    #[error("Open vSwitch is not reachable right now")]
    OvsUnreachable,
    /// The request lacks CNI_CONTAINERID or CNI_IFNAME.
    #[error("{verb} needs CNI_CONTAINERID and CNI_IFNAME")]
    MissingAttachment {
        /// The CNI verb.
        verb: &'static str,
    },
    /// CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME.
    #[error("pod identity missing")]
    MissingPodIdentity,
    /// K8S_POD_NAMESPACE or K8S_POD_NAME is no Kubernetes name.
    #[error("{arg}={value:?} is not a Kubernetes name")]
    InvalidPodIdentity {
        /// The CNI_ARGS key.
        arg: &'static str,
        /// Its value.
        value: String,
    },
    /// ADD without CNI_NETNS.
    #[error("CNI_NETNS is required")]
    NetnsRequired,
    /// The pod's network namespace is unusable.
    #[error("unusable network namespace: {0}")]
    Netns(#[source] NetnsError),
    /// The API server has no such pod.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// Reading the pod failed.
    #[error("cannot read the pod from the API server: {0}")]
    ReadPod(#[source] ApiError),
    /// Reading the pod's namespace failed.
    #[error("cannot read the pod's namespace from the API server: {0}")]
    ReadNamespace(#[source] ApiError),
    /// Bad segment, VLAN or address annotation.
    #[error("invalid pod network request: {0}")]
    Placement(#[from] SegmentError),
    /// The cluster-wide pool of a `vlan` segment refused or failed.
    #[error(transparent)]
    ClusterAddress(Box<ClusterAllocationError>),
    /// The segment has no local address pool.
    #[error("segment {segment} has no address pool")]
    NoPool {
        /// The segment.
        segment: String,
    },
    /// The local pool refused (exhausted, address outside or in use).
    #[error(transparent)]
    Address(#[from] IpamError),
    /// Building the pod interface failed.
    #[error("creating the pod interface failed: {0}")]
    CreateInterface(#[source] Box<InterfaceError>),
    /// Deleting the pod's veth failed.
    #[error("deleting the pod's veth failed: {0}")]
    DeleteInterface(#[source] Box<InterfaceError>),
    /// An OVSDB request failed.
    #[error("{what} failed: {source}")]
    Ovsdb {
        /// What was done (e.g. "adding the OVS port").
        what: &'static str,
        /// The error.
        source: ovsdb::Error,
    },
    /// An OpenFlow request failed.
    #[error("{what} failed: {source}")]
    OpenFlow {
        /// What was done (e.g. "installing the pod's flows").
        what: &'static str,
        /// The error.
        source: openflow::Error,
    },
    /// CHECK found the attachment different from its record.
    #[error("attachment differs from its record: {}", .differences.join("; "))]
    CheckFailed {
        /// Each difference, named.
        differences: Vec<String>,
    },
    /// GC could not tear down some attachments (it went on with the rest).
    #[error("GC could not remove {} attachment(s): {}", .failures.len(), .failures.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; "))]
    GcIncomplete {
        /// Each attachment that is still there, with why.
        failures: Vec<(crate::ipam::AttachmentKey, AttachError)>,
    },
    /// STATUS: the agent cannot serve ADD now.
    #[error("switchyard-agent cannot serve ADD: {}", .problems.join("; "))]
    Unavailable {
        /// What is wrong.
        problems: Vec<&'static str>,
    },
}

impl From<ClusterAllocationError> for AttachError {
    fn from(e: ClusterAllocationError) -> AttachError {
        AttachError::ClusterAddress(Box::new(e))
    }
}

impl AttachError {
    /// An OVSDB failure while doing `what`.
    pub fn ovsdb(what: &'static str) -> impl FnOnce(ovsdb::Error) -> AttachError {
        move |source| AttachError::Ovsdb { what, source }
    }

    /// An OpenFlow failure while doing `what`.
    pub fn openflow(what: &'static str) -> impl FnOnce(openflow::Error) -> AttachError {
        move |source| AttachError::OpenFlow { what, source }
    }
}
