//! The pod's interface: a veth pair whose host end stays in the node
//! namespace (to become an OVS port) and whose peer is created directly in
//! the pod namespace, named CNI_IFNAME, with MAC, MTU, address and routes.
//!
//! - `create.rs`: the pair ([`create_pod_interface`]), with the request's
//!   checks, the removal of a leftover host end and the rollback.
//! - `configure.rs`: the pod side once the pair exists (address, links up,
//!   routes, tx checksum offload, gratuitous ARP).
//! - `inspect.rs`: reading the pod end back for CHECK
//!   ([`inspect_pod_interface`]).
//! - `delete.rs`: deleting by the host end ([`delete_pod_interface`]).
//! - `link.rs`: link lookups the others share; `error.rs`:
//!   [`InterfaceError`] and the [`Step`] it names.

mod configure;
mod create;
mod delete;
mod error;
mod inspect;
mod link;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::mac::MacAddr;

pub use create::create_pod_interface;
pub use delete::{delete_host_end, delete_pod_interface};
pub use error::{InterfaceError, Step};
pub use inspect::inspect_pod_interface;

/// Prefix of every host-side veth name the agent creates.
pub const HOST_IFNAME_PREFIX: &str = "sy";

/// The host end's name for a pod interface: `sy` + 11 hex digits of
/// SHA-256(container id, ifname); 13 characters, stable across retries.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{}", &hex[..11])
}

/// Whether `name` has the form of a host end the agent names ([`host_ifname`]).
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 13
        && name.starts_with(HOST_IFNAME_PREFIX)
        && name[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Checks a Linux interface name (CNI_IFNAME).
pub fn validate_ifname(name: &str) -> Result<(), InterfaceError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("it contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InterfaceError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What to build for one pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME: the name inside the pod.
    pub ifname: String,
    /// Pod address and prefix length.
    pub address: Ipv4Net,
    /// Default gateway; `None` adds no default route.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of both ends.
    pub mtu: u32,
    /// Pod MAC; `None` derives a stable one from container id and ifname.
    pub mac: Option<MacAddr>,
    /// Turn off transmit checksum offload on the pod end (netdev datapath).
    pub disable_tx_checksum: bool,
    /// Announce the address with a gratuitous ARP.
    pub gratuitous_arp: bool,
}

impl PodInterfaceSpec {
    /// The MAC the pod end gets.
    pub fn pod_mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            MacAddr::derived_local(format!("{}/{}", self.container_id, self.ifname).as_bytes())
        })
    }
}

/// What was built: what a CNI result and the OVS port need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Host end name (the OVS port name).
    pub host_ifname: String,
    /// Host end index in the node namespace.
    pub host_ifindex: u32,
    /// Host end MAC.
    pub host_mac: MacAddr,
    /// Pod end name.
    pub pod_ifname: String,
    /// Pod end index in the pod namespace.
    pub pod_ifindex: u32,
    /// Pod end MAC.
    pub pod_mac: MacAddr,
    /// The netns path (CNI result `sandbox`).
    pub sandbox: PathBuf,
    /// Pod address.
    pub address: Ipv4Net,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MTU.
    pub mtu: u32,
}

/// One IPv4 route of the main table through the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination (0.0.0.0/0 for the default route).
    pub destination: Ipv4Net,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Link scope (on-link, no next hop needed).
    pub link_scope: bool,
}

/// The interface as it is now (for CNI CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceState {
    /// Name.
    pub ifname: String,
    /// Index.
    pub ifindex: u32,
    /// MAC.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses with prefix.
    pub addresses: Vec<Ipv4Net>,
    /// IPv4 main-table routes through it.
    pub routes: Vec<RouteEntry>,
    /// Transmit checksum offload state.
    pub tx_checksum: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("sy") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("0123456789abcdef", "net1"));
        assert_ne!(a, host_ifname("0123456789abcdee", "eth0"));
        // Golden value: the name must not change between releases, or the
        // agent could not find the ports it made before an upgrade.
        assert_eq!(host_ifname("c1", "eth0"), "syd72e032fedd");
    }

    #[test]
    fn ifname_validation() {
        for good in ["eth0", "net1", "a", "fifteen-chars-x"] {
            validate_ifname(good).unwrap();
        }
        for bad in ["", "sixteen-chars-xx", ".", "..", "a/b", "a b", "a:b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn derived_pod_mac_is_stable() {
        let spec = PodInterfaceSpec {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: None,
            mtu: 1450,
            mac: None,
            disable_tx_checksum: false,
            gratuitous_arp: false,
        };
        assert_eq!(spec.pod_mac(), MacAddr::derived_local(b"abc/eth0"));
    }
}
