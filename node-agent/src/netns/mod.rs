//! The pod's network namespace and interface.
//!
//! Data flow of an ADD: validate and open the CNI_NETNS path ([`Netns`]),
//! open netlink in the node and pod namespaces ([`Netlink`]), build the veth
//! pair with address, routes, MAC and MTU ([`create_pod_interface`]).
//! Everything that must run inside the pod namespace runs on a dedicated
//! thread ([`run_in_netns`]), never on a tokio worker.

pub mod arp;
pub mod ethtool;
mod netlink;
mod path;
mod thread;
mod veth;

pub use netlink::{Netlink, link_mac};
pub use path::{DEFAULT_ALLOWED_PREFIXES, Netns, NetnsError, NetnsPolicy};
pub use thread::{THREAD_NAME_PREFIX, run_async_in_netns, run_in_netns, run_in_netns_blocking};
pub use veth::{
    HOST_IFNAME_PREFIX, InterfaceError, PodInterface, PodInterfaceSpec, PodInterfaceState,
    RouteEntry, Step, create_pod_interface, delete_host_end, delete_pod_interface, host_ifname,
    inspect_pod_interface, is_host_ifname, validate_ifname,
};
