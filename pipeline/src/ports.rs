//! Reserved OpenFlow port numbers and fixed addresses of the pipeline.

use std::net::Ipv4Addr;

/// Well-known OpenFlow port numbers requested through `ofport_request`.
pub mod ofport {
    /// The overlay tunnel port (`sy-tun0`).
    pub const TUNNEL: u32 = 1;
    /// The gateway port (`sy-gw0`).
    pub const GATEWAY: u32 = 2;
    /// The first VLAN trunk uplink. Uplinks ask for `UPLINK + i` (`i` their
    /// index in name order) up to [`LAST_UPLINK`], the range reserved for
    /// them below [`FIRST_POD`]; their flows use the ofport read back from
    /// OVSDB either way.
    pub const UPLINK: u32 = 3;
    /// The last ofport reserved for uplinks (13 uplinks at most).
    pub const LAST_UPLINK: u32 = FIRST_POD - 1;
    /// Pod ports ask for ofports from here up (`ofport_request`), so the
    /// well-known numbers below stay free even when those ports are created
    /// after the first pods.
    pub const FIRST_POD: u32 = 16;
}

/// Source address used to SNAT hairpin connections, so the reply from a pod
/// to itself comes back through OVS.
pub const HAIRPIN_SNAT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 252);

/// Source address of a Service connection that came in from the gateway port
/// (the node itself, or a client outside masqueraded to the gateway address)
/// and was DNATed to an endpoint outside the pod networks (another host's
/// address, a node port): the proxy SNATs it to this address and sends it
/// back out of the gateway port, so the node routes it like forwarded traffic
/// (its own gateway address as the source of a packet arriving on `sy-gw0`
/// would be a martian) and masquerades it to the outgoing interface's address.
/// The node routes it back into `sy-gw0`, where the reply is un-SNATed in
/// [`crate::zone::OUTSIDE_SNAT`].
pub const OUTSIDE_SNAT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 251);
