//! Switchyard's `br-int` pipeline: the one place where the node agent and the
//! service proxy agree on table numbers, registers, conntrack zones, ct_mark
//! bits and cookie spaces.
//!
//! ```text
//!  packet in
//!     |
//!  [0] CLASSIFIER        port kind -> reg0[0..3]; pod ports: segment VLAN -> reg5
//!  [10] SPOOF_GUARD      a pod port may only send from its own MAC and IPv4
//!  [15] ARP_RESPONDER    OVS answers ARP: pods learn the gateway MAC for every
//!                        address, the gateway learns each pod's own MAC
//!  [20] CONNTRACK        ct(zone=POD_ZONE, nat, table=CONNTRACK_STATE)
//!  [21] CONNTRACK_STATE  +inv drops; established traffic skips load balancing
//!  [30] SESSION_AFFINITY (proxy) learned ClientIP flows load reg3/reg4
//!  [31] SERVICE_LB       (proxy) VIP:port of a new connection -> select group
//!  [32] ENDPOINT_DNAT    (proxy) reg3/reg4 -> ct(commit, nat(dst=ep))
//!  [40] L3_FORWARDING    local pod / remote node (tunnel) / gateway
//!  [50] L2_FORWARDING    destination MAC -> reg1 (output port), same segment only
//!  [60] CONNTRACK_COMMIT commit every new connection in POD_ZONE
//!  [70] OUTPUT           one flow per port: reg1=N -> output:N
//! ```
//!
//! Ownership is by cookie space, not by table: every flow carries a cookie
//! from [`Cookie`], and each process adds, replaces and deletes only flows in
//! its own space (deletes use [`Cookie::owner_mask`] or
//! [`Cookie::generation_mask`]). The agent installs the low-priority
//! pass-through flows of every table, including the proxy's tables, so pods
//! keep working when the proxy is not (yet) running; the proxy's flows sit at
//! higher priorities in its tables.
//!
//! # The agent's flows
//!
//! Verified with traffic on the userspace (`netdev`) datapath (pod to pod,
//! pod to node, node to pod, TCP, VLAN isolation, agent and vswitchd
//! restarts; `node-agent/tests/`). Priorities: 0 table miss, 100 generic,
//! 200 per port/address, 210 per-pod exceptions. Pods learn only the
//! gateway's MAC and OVS routes at L3, so no pod or node ARP cache ever
//! needs to be right: L3_FORWARDING rewrites both MACs from the destination
//! address.
//! - CLASSIFIER: `in_port=<pod>` loads [`PortKind::Pod`] and the segment VLAN
//!   into reg5; `in_port=GATEWAY` loads [`PortKind::Gateway`] (ARP to
//!   ARP_RESPONDER, IPv4 to CONNTRACK); anything else drops.
//! - SPOOF_GUARD: a pod's IPv4 with its own MAC and address goes to
//!   CONNTRACK, its ARP with its own MAC/sha/spa to ARP_RESPONDER.
//! - ARP_RESPONDER: a pod's ARP request for its own address (gratuitous
//!   ARP, duplicate address detection) drops (210); any other ARP request
//!   from a pod is answered in place with the gateway's MAC (100); the
//!   gateway's request for a pod address is answered with that pod's MAC
//!   (200). The answer swaps `arp_spa`/`arp_tpa` through [`reg::SCRATCH`]
//!   and goes out of `in_port`. Everything else (ARP replies) drops.
//! - CONNTRACK/CONNTRACK_STATE as in the diagram; `-new+trk` skips to
//!   L3_FORWARDING, new connections continue to SESSION_AFFINITY.
//! - L3_FORWARDING: `nw_dst=<pod>` sets `dl_src`=gateway MAC and
//!   `dl_dst`=pod MAC; the table miss (IPv4) sets `dl_dst`=gateway MAC.
//! - L2_FORWARDING: `dl_dst=<pod MAC>` with reg0=Pod and reg5 = its VLAN, or
//!   with reg0=Gateway, loads reg1; `dl_dst=<gateway MAC>` loads
//!   [`ofport::GATEWAY`]; other destinations drop (this is the VLAN
//!   isolation: OVS's `tag` only matters to the NORMAL action, which the
//!   pipeline never uses).
//! - CONNTRACK_COMMIT commits `+new+trk` without [`ct_mark::SERVICE`]
//!   (200: from the tunnel as [`PortKind::Gateway`], with
//!   [`ct_mark::FROM_REMOTE_GATEWAY`]).
//!
//! Between nodes (`node-agent/src/overlay.rs`, `uplink.rs`; verified in the
//! multi-node lab, `tests/lab/tests/multinode.rs`):
//! - CLASSIFIER: IPv4 from [`ofport::TUNNEL`] loads [`PortKind::Tunnel`] and
//!   `tun_id[0..11]` into reg5 (210: a key with [`TUNNEL_KEY_FROM_GATEWAY`]
//!   loads [`PortKind::Gateway`]); from an uplink, `vlan_vid=V` pops the tag
//!   and loads [`PortKind::Uplink`] and V into reg5 (IPv4 to CONNTRACK, ARP
//!   to ARP_RESPONDER).
//! - L3_FORWARDING, per remote node ([`cookie_object::REMOTE_NODE_FIRST`]
//!   `+ n`): `nw_dst=<its pod CIDR>` sets `tun_dst`, moves reg5 into the key
//!   (101 for the gateway: the key is [`TUNNEL_KEY_FROM_GATEWAY`]) and loads
//!   reg1 = [`ofport::TUNNEL`]; ARP_RESPONDER answers the node's request for
//!   that CIDR's first address (the node's next hop) with a fixed MAC.
//! - ARP_RESPONDER (base flow): the node routes the Service CIDR (agent
//!   `service-cidr`) `via 169.254.169.253 dev sy-gw0 onlink`; its ARP request
//!   for that next hop gets the same fixed MAC, so the node's connections to
//!   ClusterIPs enter from the gateway port ([`PortKind::Gateway`]) and meet
//!   the proxy's tables; replies are un-DNATed in [`zone::POD`] and reach the
//!   gateway through L3_FORWARDING's miss.
//!   Per `vlan` segment VLAN V (250): reg5=V from a pod or the uplink is
//!   switched (straight to L2_FORWARDING), not routed; (260) a pod's
//!   Service connection there (`ct_mark` [`ct_mark::SERVICE`], not a reply)
//!   is marked [`PortKind::Gateway`], SNATed to the node's gateway address in
//!   [`zone::GATEWAY_SNAT`] and routed again from L3_FORWARDING; (255, per
//!   pod of the segment) another pod's Service connection to it is marked
//!   [`PortKind::Gateway`] and routed again; (270) a reply of a pod of the
//!   segment with [`ct_mark::SERVICE`] or [`ct_mark::FROM_REMOTE_GATEWAY`]
//!   is marked [`PortKind::Gateway`] and routed again, not switched. Per
//!   remote node, per address of its `vlan` segment pods (256): a Service
//!   connection (not a reply) goes to that node through the tunnel with
//!   [`TUNNEL_KEY_FROM_GATEWAY`].
//! - CONNTRACK: a packet to the node's gateway address goes once
//!   ([`reg::GATEWAY_UNSNAT_BIT`]) through [`zone::GATEWAY_SNAT`] first; an
//!   established reply there (200/210) is un-SNATed to the `vlan` pod's
//!   address and continues as [`PortKind::Gateway`] in [`zone::POD`].
//! - L2_FORWARDING: a pod's MAC with reg0=Tunnel or Uplink and reg5 = its
//!   VLAN loads reg1 (200, per pod); per `vlan` segment, anything else from
//!   its pods goes to the uplink (100).
//! - OUTPUT: reg1=TUNNEL outputs to the tunnel; reg1=uplink with reg5=V
//!   pushes tag V first.
//!
//! Pod ports request ofports from [`ofport::FIRST_POD`] up: vswitchd hands
//! out the lowest free number otherwise, and the first pod got ofport 1 (the
//! tunnel's) on a node without a tunnel port yet.
//!
//! The proxy also adds a few flows outside its tables, all in its cookie
//! space and above the agent's priorities (200 and 300), for hairpin traffic
//! (a pod reaching itself through a Service, SNATed to [`HAIRPIN_SNAT_IP`] in
//! [`zone::HAIRPIN`]):
//! - [CONNTRACK]: `ip,nw_dst=HAIRPIN_SNAT_IP` (a hairpin reply) sets
//!   [`reg::HAIRPIN_BIT`] and un-SNATs in [`zone::HAIRPIN`], then comes back
//!   to CONNTRACK for the pod zone;
//! - [L3_FORWARDING]: per local endpoint address A, `nw_src=A,nw_dst=A` of a
//!   tracked, non-reply service connection in [`zone::POD`] sets
//!   [`reg::HAIRPIN_BIT`] and SNATs in [`zone::HAIRPIN`] (ct_mark
//!   SERVICE|HAIRPIN there, so CONNTRACK_COMMIT leaves it alone), then comes
//!   back to L3_FORWARDING;
//! - [OUTPUT]: `reg4[18]=1` outputs to `in_port` (OpenFlow never outputs to
//!   the ingress port otherwise).
//!
//! The agent relies on nothing of this; it must only keep skipping the
//! commit of connections whose ct_mark has [`ct_mark::SERVICE`], keep
//! CONNTRACK_STATE's default going to SESSION_AFFINITY, and leave reg3/reg4
//! alone.
//!
//! [CONNTRACK]: table::CONNTRACK
//! [L3_FORWARDING]: table::L3_FORWARDING
//! [OUTPUT]: table::OUTPUT

/// Flow table numbers.
pub mod table {
    /// Classifies by input port.
    pub const CLASSIFIER: u8 = 0;
    /// Source MAC/IP validation for pod ports.
    pub const SPOOF_GUARD: u8 = 10;
    /// Answers ARP requests from pods and from the gateway.
    pub const ARP_RESPONDER: u8 = 15;
    /// Sends IP through conntrack (with un-NAT of replies).
    pub const CONNTRACK: u8 = 20;
    /// Acts on the conntrack state.
    pub const CONNTRACK_STATE: u8 = 21;
    /// Proxy: session affinity (learned flows).
    pub const SESSION_AFFINITY: u8 = 30;
    /// Proxy: service frontends (VIP, protocol, port) to groups.
    pub const SERVICE_LB: u8 = 31;
    /// Proxy: DNAT to the endpoint chosen in reg3/reg4.
    pub const ENDPOINT_DNAT: u8 = 32;
    /// Routing decision.
    pub const L3_FORWARDING: u8 = 40;
    /// Destination MAC to output port.
    pub const L2_FORWARDING: u8 = 50;
    /// Commits new connections.
    pub const CONNTRACK_COMMIT: u8 = 60;
    /// Outputs to the port in reg1.
    pub const OUTPUT: u8 = 70;

    /// Tables the proxy programs.
    pub const PROXY_TABLES: [u8; 3] = [SESSION_AFFINITY, SERVICE_LB, ENDPOINT_DNAT];
}

/// Register assignments (`NXM_NX_REGn`).
pub mod reg {
    /// reg0: packet marks. Bits 0..=3 hold the [`super::PortKind`] the
    /// packet came in on.
    pub const MARKS: u8 = 0;
    /// Bit range of the port kind in [`MARKS`].
    pub const PORT_KIND_BITS: (u8, u8) = (0, 3);
    /// Bit of [`MARKS`] set once a packet to the gateway address went
    /// through [`super::zone::GATEWAY_SNAT`] (un-SNAT of replies).
    pub const GATEWAY_UNSNAT_BIT: u8 = 4;
    /// reg1: output port chosen by L2 forwarding.
    pub const OUTPUT_PORT: u8 = 1;
    /// reg2: scratch space within the actions of one flow (the ARP
    /// responder swaps `arp_spa`/`arp_tpa` through it); never read in a
    /// later table, so any flow may overwrite it.
    pub const SCRATCH: u8 = 2;
    /// reg3: IPv4 address of the endpoint selected by a service group.
    pub const ENDPOINT_IP: u8 = 3;
    /// reg4: bits 0..=15 endpoint port, bits 16..=17 [`super::ServiceState`].
    pub const ENDPOINT_PORT_AND_STATE: u8 = 4;
    /// Bit range of the endpoint port in [`ENDPOINT_PORT_AND_STATE`].
    pub const ENDPOINT_PORT_BITS: (u8, u8) = (0, 15);
    /// Bit range of the service state in [`ENDPOINT_PORT_AND_STATE`].
    pub const SERVICE_STATE_BITS: (u8, u8) = (16, 17);
    /// Bit of [`ENDPOINT_PORT_AND_STATE`] set by the proxy on hairpin
    /// packets (both directions): OUTPUT sends them back out of `in_port`.
    pub const HAIRPIN_BIT: u8 = 18;
    /// reg5: VLAN of the segment of the source pod port (0..=4095).
    pub const SEGMENT_VLAN: u8 = 5;
}

/// Kind of the port a packet came in on, stored in reg0[0..=3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PortKind {
    /// The overlay tunnel port.
    Tunnel = 1,
    /// The node's gateway (internal) port.
    Gateway = 2,
    /// A pod's access port.
    Pod = 3,
    /// The VLAN trunk uplink.
    Uplink = 4,
}

/// Service selection state, stored in reg4[16..=17].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ServiceState {
    /// Not a service packet (or not yet classified).
    None = 0,
    /// A frontend matched; an endpoint still has to be chosen.
    NeedsEndpoint = 1,
    /// reg3/reg4 hold the chosen endpoint.
    EndpointSelected = 2,
}

/// Conntrack zones.
pub mod zone {
    /// Zone of all pod traffic (service DNAT and plain pod-to-pod alike).
    pub const POD: u16 = 0xfff0;
    /// Zone of egress SNAT to the node address.
    pub const SNAT: u16 = 0xfff1;
    /// Zone of the proxy's hairpin SNAT to [`super::HAIRPIN_SNAT_IP`].
    pub const HAIRPIN: u16 = 0xfff2;
    /// Zone where the agent SNATs `vlan`-segment pods' Service connections
    /// to the node's gateway address (so replies come back through OVS).
    pub const GATEWAY_SNAT: u16 = 0xfff3;
}

/// `ct_mark` bits.
pub mod ct_mark {
    /// The connection was DNATed to a service endpoint by the proxy.
    pub const SERVICE: u32 = 0x1;
    /// The connection is a hairpin (a pod reaching itself through a service).
    pub const HAIRPIN: u32 = 0x2;
    /// The connection came in through the tunnel from another node's
    /// gateway (that node's own traffic, or a Service connection it
    /// tunnelled to a local `vlan` segment pod): the agent routes a `vlan`
    /// segment pod's replies back instead of switching them to the fabric.
    pub const FROM_REMOTE_GATEWAY: u32 = 0x4;
}

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

/// Cookie object ids of the agent's flows that belong to no pod (pod flows
/// use the pod's ofport, below 0xff00; the base flows use 0).
pub mod cookie_object {
    /// The overlay tunnel's own flows (classification of `sy-tun0`, its
    /// output flow).
    pub const TUNNEL: u32 = 0x0001_0000;
    /// The flows of one remote node (its pod CIDR to its tunnel endpoint)
    /// use `REMOTE_NODE_FIRST + n`, n < 0x1_0000, one object per node.
    pub const REMOTE_NODE_FIRST: u32 = 0x0002_0000;
    /// The VLAN uplink's flows (`vlan` segments).
    pub const UPLINK: u32 = 0x0003_0000;
}

/// The overlay tunnel key (Geneve VNI / VXLAN VNI, `tun_id`): bits 0..=11
/// carry the source pod's segment VLAN (reg5 on the sending node), checked
/// on the receiving node like reg5; [`TUNNEL_KEY_FROM_GATEWAY`] marks
/// packets the sending node's gateway (the node itself) sent.
pub const TUNNEL_KEY_FROM_GATEWAY: u64 = 0x1000;

/// OpenFlow group ids. Groups carry no cookie, so ownership is by range.
pub mod group {
    /// First group id of the proxy (one `select` group per Service port).
    pub const PROXY_FIRST: u32 = 1;
    /// Last group id of the proxy; ids above it are free for the agent.
    pub const PROXY_LAST: u32 = 0x7fff_ffff;
}

/// Source address used to SNAT hairpin connections, so the reply from a pod
/// to itself comes back through OVS.
pub const HAIRPIN_SNAT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 252);

/// Who owns a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Owner {
    /// `switchyard-agent`.
    Agent = 1,
    /// `switchyard-proxy`.
    Proxy = 2,
}

/// A Switchyard flow cookie:
///
/// ```text
/// 63            48 47     40 39        32 31                  0
/// +---------------+---------+------------+---------------------+
/// | 0x5359 ("SY") |  owner  | generation |      object id      |
/// +---------------+---------+------------+---------------------+
/// ```
///
/// The generation lets a process replace its flows without a gap: install
/// generation N+1, then delete generation N with [`Cookie::generation_mask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie {
    /// Owner of the flow.
    pub owner: Owner,
    /// Generation (round of full installation).
    pub generation: u8,
    /// Owner-defined object id (e.g. an ofport or a service group id).
    pub object: u32,
}

impl Cookie {
    /// The fixed tag in the top 16 bits of every Switchyard cookie.
    pub const MAGIC: u64 = 0x5359;

    /// A cookie value.
    pub fn new(owner: Owner, generation: u8, object: u32) -> Self {
        Self {
            owner,
            generation,
            object,
        }
    }

    /// The 64-bit cookie.
    pub fn value(self) -> u64 {
        (Self::MAGIC << 48)
            | ((self.owner as u64) << 40)
            | ((self.generation as u64) << 32)
            | self.object as u64
    }

    /// Decodes a cookie; `None` when it is not a Switchyard cookie.
    pub fn from_value(value: u64) -> Option<Self> {
        if value >> 48 != Self::MAGIC {
            return None;
        }
        let owner = match (value >> 40) as u8 {
            1 => Owner::Agent,
            2 => Owner::Proxy,
            _ => return None,
        };
        Some(Self {
            owner,
            generation: (value >> 32) as u8,
            object: value as u32,
        })
    }

    /// `(cookie, mask)` matching every flow of `owner`.
    pub fn owner_mask(owner: Owner) -> (u64, u64) {
        (
            (Self::MAGIC << 48) | ((owner as u64) << 40),
            0xffff_ff00_0000_0000,
        )
    }

    /// `(cookie, mask)` matching every flow of `owner` in `generation`.
    pub fn generation_mask(owner: Owner, generation: u8) -> (u64, u64) {
        (
            Cookie::new(owner, generation, 0).value(),
            0xffff_ffff_0000_0000,
        )
    }

    /// `(cookie, mask)` matching the flows of one object of `owner`, in any
    /// generation.
    pub fn object_mask(owner: Owner, object: u32) -> (u64, u64) {
        (Cookie::new(owner, 0, object).value(), 0xffff_ff00_ffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_layout_is_stable() {
        let c = Cookie::new(Owner::Proxy, 7, 0x0102_0304);
        assert_eq!(c.value(), 0x5359_0207_0102_0304);
        assert_eq!(Cookie::from_value(c.value()), Some(c));
        assert_eq!(Cookie::from_value(0x1234_0207_0102_0304), None);
        assert_eq!(Cookie::from_value(0x5359_0907_0102_0304), None);
    }

    #[test]
    fn masks_select_only_their_space() {
        let agent = Cookie::new(Owner::Agent, 3, 42).value();
        let proxy = Cookie::new(Owner::Proxy, 3, 42).value();
        let (v, m) = Cookie::owner_mask(Owner::Agent);
        assert_eq!(agent & m, v);
        assert_ne!(proxy & m, v);
        let (v, m) = Cookie::generation_mask(Owner::Agent, 3);
        assert_eq!(agent & m, v);
        assert_ne!(Cookie::new(Owner::Agent, 4, 42).value() & m, v);
        let (v, m) = Cookie::object_mask(Owner::Agent, 42);
        assert_eq!(Cookie::new(Owner::Agent, 9, 42).value() & m, v);
        assert_ne!(Cookie::new(Owner::Agent, 9, 43).value() & m, v);
    }

    #[test]
    fn tables_are_ordered_along_the_pipeline() {
        let order = [
            table::CLASSIFIER,
            table::SPOOF_GUARD,
            table::ARP_RESPONDER,
            table::CONNTRACK,
            table::CONNTRACK_STATE,
            table::SESSION_AFFINITY,
            table::SERVICE_LB,
            table::ENDPOINT_DNAT,
            table::L3_FORWARDING,
            table::L2_FORWARDING,
            table::CONNTRACK_COMMIT,
            table::OUTPUT,
        ];
        // goto_table may only go forward.
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}
