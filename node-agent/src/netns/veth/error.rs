//! [`InterfaceError`]: why building, deleting or inspecting a pod interface
//! failed, naming the [`Step`].

use crate::netns::NetnsError;

/// A step of building or inspecting a pod interface (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Looking a link up by name.
    LookUpLink,
    /// Listing the links of a namespace.
    ListLinks,
    /// Removing a leftover host end.
    RemoveLeftover,
    /// Creating the veth pair.
    CreateVeth,
    /// Setting a link up.
    SetUp,
    /// Adding the pod address.
    AddAddress,
    /// Adding the on-link route to the gateway.
    AddGatewayRoute,
    /// Adding the default route.
    AddDefaultRoute,
    /// Turning off transmit checksum offload.
    DisableTxChecksum,
    /// Sending the gratuitous ARP.
    SendGratuitousArp,
    /// Deleting the host end.
    DeleteHostEnd,
    /// Listing addresses.
    ListAddresses,
    /// Listing routes.
    ListRoutes,
    /// Reading transmit checksum offload.
    ReadTxChecksum,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::LookUpLink => "looking up link",
            Step::ListLinks => "listing links",
            Step::RemoveLeftover => "removing leftover host end",
            Step::CreateVeth => "creating veth pair",
            Step::SetUp => "setting link up",
            Step::AddAddress => "adding address",
            Step::AddGatewayRoute => "adding on-link route to gateway",
            Step::AddDefaultRoute => "adding default route",
            Step::DisableTxChecksum => "disabling tx checksum offload",
            Step::SendGratuitousArp => "sending gratuitous ARP",
            Step::DeleteHostEnd => "deleting host end",
            Step::ListAddresses => "listing addresses",
            Step::ListRoutes => "listing routes",
            Step::ReadTxChecksum => "reading tx checksum offload",
        })
    }
}

/// Why building, deleting or inspecting a pod interface failed. Each
/// variant names the step, the interface and the namespace.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// Interface name unusable.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Bad request values.
    #[error("invalid pod interface request: {0}")]
    InvalidSpec(String),
    /// CNI_IFNAME is taken inside the pod.
    #[error(
        "interface {ifname} already exists in netns {netns}; remove it or use another CNI_IFNAME"
    )]
    AlreadyExists {
        /// The name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// Interface missing (CHECK).
    #[error("interface {ifname} not found in netns {netns}")]
    NotFound {
        /// The name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// A netlink request failed.
    #[error("{step} {ifname} in netns {netns}: {source}")]
    Netlink {
        /// The step.
        step: Step,
        /// The interface.
        ifname: String,
        /// The namespace.
        netns: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A socket or ioctl failed.
    #[error("{step} {ifname} in netns {netns}: {source}")]
    Io {
        /// The step.
        step: Step,
        /// The interface.
        ifname: String,
        /// The namespace.
        netns: String,
        /// The error.
        source: std::io::Error,
    },
    /// Opening or entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

pub(super) fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}
