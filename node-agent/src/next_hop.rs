//! The next hops the node routes through `sy-gw0` that no device owns:
//! OVS answers the node's ARP requests for them (a base flow in `flows`),
//! the overlay routes remote pod CIDRs and `host_services` the Service CIDR
//! via them. Their own module, so `flows`, `overlay` and `host_services`
//! read them without importing each other.

use std::net::Ipv4Addr;

use crate::mac::MacAddr;

/// MAC the node's next hop for remote pod CIDRs resolves to (answered by
/// OVS; L3_FORWARDING rewrites both MACs, so it never leaves the node).
pub const NEXT_HOP_MAC: MacAddr = MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
/// The fixed next hop the node routes the Service CIDR through
/// (`via 169.254.169.253 dev sy-gw0 onlink`); OVS answers the node's ARP
/// request for it with [`NEXT_HOP_MAC`] (a base flow). Link-local, so it is
/// never a pod, Service or node address.
pub const SERVICE_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);
