//! Switchyard's `br-int` pipeline, declared once: the one place where the
//! node agent and the service proxy agree on tables (by name, stage and
//! owner, in order), registers, conntrack zones, `ct_mark` bits, priorities,
//! reserved ofports and cookie spaces. The generic `switchyard-ovs` crate
//! knows none of this.
//!
//! ```text
//!  packet in
//!     |
//!  [0]  CLASSIFIER         Classification  port kind -> reg0[0..3]; segment VLAN -> reg5
//!  [10] SPOOF_GUARD        Validation      a pod port may only send from its own MAC and IPv4
//!  [15] ARP_RESPONDER      Arp             OVS answers ARP itself
//!  [20] CONNTRACK          Conntrack       ct(zone=POD, nat, table=CONNTRACK_STATE)
//!  [21] CONNTRACK_STATE    Conntrack       +inv drops; established skips to Routing
//!  [29] SERVICE_EXTERNAL_FRONTEND  Service (proxy) NodePort / external IP / LB IP of a new connection -> group
//!  [30] SESSION_AFFINITY   Service (proxy) learned ClientIP flows load reg3/reg4
//!  [31] SERVICE_LB         Service (proxy) VIP:port of a new connection -> select group
//!  [32] ENDPOINT_DNAT      Service (proxy) reg3/reg4 -> ct(commit, nat(dst=ep))
//!  [35] EGRESS_POLICY      EgressSecurity  NetworkPolicy of the source pod (new connections)
//!  [40] L3_FORWARDING      Routing         local pod / remote node (tunnel) / gateway
//!  [50] L2_FORWARDING      Switching       destination MAC -> reg1, same segment only
//!  [55] INGRESS_POLICY     IngressSecurity NetworkPolicy of the destination pod (new connections)
//!  [60] CONNTRACK_COMMIT   Commit          commit every new connection in zone POD
//!  [70] OUTPUT             Output          reg1=N -> output:N
//! ```
//!
//! [`table`] declares the tables ([`table::PIPELINE`]) and how flows move
//! between them ([`table::Table::next`], [`table::Stage::first`]);
//! reserved slots are skipped until a feature takes them. [`reg`] declares
//! the typed register fields ([`RegField`], [`RegMark`]), [`ct_mark`] the
//! connection marks, [`zone`] the conntrack zones, [`priority`] every flow
//! priority, [`ofport`] the reserved ports and [`Cookie`] the cookie spaces.
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
//! restarts; `node-agent/tests/`). Priorities are named in [`priority`]: table miss, generic,
//! per port/address, per-pod exceptions. Pods learn only the
//! gateway's MAC and OVS routes at L3, so no pod or node ARP cache ever
//! needs to be right: L3_FORWARDING rewrites both MACs from the destination
//! address.
//! - CLASSIFIER: `in_port=<pod>` loads [`PortKind::Pod`] and the segment VLAN
//!   into reg5; `in_port=GATEWAY` loads [`PortKind::Gateway`] (ARP to
//!   ARP_RESPONDER, IPv4 to CONNTRACK); anything else drops.
//! - SPOOF_GUARD: a pod's IPv4 with its own MAC and address goes to
//!   CONNTRACK, its ARP with its own MAC/sha/spa to ARP_RESPONDER.
//! - ARP_RESPONDER: a pod's ARP request for its own address (gratuitous
//!   ARP, duplicate address detection) drops (exception); any other ARP request
//!   from a pod is answered in place with the gateway's MAC (normal); the
//!   gateway's request for a pod address is answered with that pod's MAC
//!   (specific). The answer swaps `arp_spa`/`arp_tpa` through [`reg::SCRATCH`]
//!   and goes out of `in_port`. Everything else (ARP replies) drops.
//! - CONNTRACK/CONNTRACK_STATE as in the diagram; `-new+trk` skips to
//!   L3_FORWARDING, new connections continue to the Service stage
//!   (SERVICE_EXTERNAL_FRONTEND).
//! - L3_FORWARDING: `nw_dst=<pod>` sets `dl_src`=gateway MAC and
//!   `dl_dst`=pod MAC; the table miss (IPv4) sets `dl_dst`=gateway MAC.
//! - L2_FORWARDING: `dl_dst=<pod MAC>` with reg0=Pod and reg5 = its VLAN, or
//!   with reg0=Gateway, loads reg1; `dl_dst=<gateway MAC>` loads
//!   [`ofport::GATEWAY`]; other destinations drop (this is the VLAN
//!   isolation: OVS's `tag` only matters to the NORMAL action, which the
//!   pipeline never uses).
//! - CONNTRACK_COMMIT commits `+new+trk` without [`ct_mark::SERVICE`]
//!   ([`priority::SPECIFIC`]: from the tunnel as [`PortKind::Gateway`], with
//!   [`ct_mark::FROM_REMOTE_GATEWAY`]).
//!
//! Between nodes (`node-agent/src/overlay/flows.rs`, `uplink.rs`; verified in the
//! multi-node lab, `tests/lab/tests/multinode.rs`):
//! - CLASSIFIER: IPv4 from [`ofport::TUNNEL`] loads [`PortKind::Tunnel`] and
//!   `tun_id[0..11]` into reg5 (exception: a key with [`tunnel_key::FROM_GATEWAY`]
//!   loads [`PortKind::Gateway`]); from an uplink, `vlan_vid=V` pops the tag
//!   and loads [`PortKind::Uplink`] and V into reg5 (IPv4 to CONNTRACK, ARP
//!   to ARP_RESPONDER).
//! - L3_FORWARDING, per remote node ([`cookie_object::REMOTE_NODE_FIRST`]
//!   `+ n`): `nw_dst=<its pod CIDR>` sets `tun_dst`, moves reg5 into the key
//!   ([`priority::REMOTE_NODE_FROM_GATEWAY`] for the gateway: the key is [`tunnel_key::FROM_GATEWAY`]) and loads
//!   reg1 = [`ofport::TUNNEL`]; ARP_RESPONDER answers the node's request for
//!   that CIDR's first address (the node's next hop) with a fixed MAC.
//! - ARP_RESPONDER (base flow): the node routes the Service CIDR (agent
//!   `service-cidr`) `via 169.254.169.253 dev sy-gw0 onlink`; its ARP request
//!   for that next hop gets the same fixed MAC, so the node's connections to
//!   ClusterIPs enter from the gateway port ([`PortKind::Gateway`]) and meet
//!   the proxy's tables; replies are un-DNATed in [`zone::POD`] and reach the
//!   gateway through L3_FORWARDING's miss.
//!   Per `vlan` segment VLAN V ([`priority::SEGMENT_SWITCHED`]): reg5=V from a pod or the uplink is
//!   switched (straight to L2_FORWARDING), not routed; ([`priority::SERVICE_FROM_SEGMENT`]) a pod's
//!   Service connection there (`ct_mark` [`ct_mark::SERVICE`], not a reply)
//!   is marked [`PortKind::Gateway`], SNATed to the node's gateway address in
//!   [`zone::GATEWAY_SNAT`] and routed again from L3_FORWARDING; ([`priority::SERVICE_TO_SEGMENT_POD`],
//!   per pod of the segment) another pod's Service connection to it is marked
//!   [`PortKind::Gateway`] and routed again; ([`priority::REPLY_ROUTED_BACK`]) a reply of a pod of the
//!   segment with [`ct_mark::SERVICE`] or [`ct_mark::FROM_REMOTE_GATEWAY`]
//!   is marked [`PortKind::Gateway`] and routed again, not switched. Per
//!   remote node, per address of its `vlan` segment pods
//!   ([`priority::SERVICE_TO_REMOTE_SEGMENT_POD`]): a Service
//!   connection (not a reply) goes to that node through the tunnel with
//!   [`tunnel_key::FROM_GATEWAY`].
//! - CONNTRACK: a packet to the node's gateway address goes once
//!   ([`reg::GATEWAY_UNSNAT`]) through [`zone::GATEWAY_SNAT`] first; an
//!   established reply there is un-SNATed to the `vlan` pod's
//!   address and continues as [`PortKind::Gateway`] in [`zone::POD`].
//! - L2_FORWARDING: a pod's MAC with reg0=Tunnel or Uplink and reg5 = its
//!   VLAN loads reg1 (per pod); per `vlan` segment, anything else from
//!   its pods goes to the uplink.
//! - OUTPUT: reg1=TUNNEL outputs to the tunnel; reg1=uplink with reg5=V
//!   pushes tag V first.
//!
//! Pod ports request ofports from [`ofport::FIRST_POD`] up: vswitchd hands
//! out the lowest free number otherwise, and the first pod got ofport 1 (the
//! tunnel's) on a node without a tunnel port yet.
//!
//! The proxy also adds a few flows outside its tables, all in its cookie
//! space and above the agent's priorities ([`priority::SERVICE`] and
//! [`priority::HAIRPIN`]), for hairpin traffic
//! (a pod reaching itself through a Service, SNATed to [`HAIRPIN_SNAT_IP`] in
//! [`zone::HAIRPIN`]):
//! - [CONNTRACK]: `ip,nw_dst=HAIRPIN_SNAT_IP` (a hairpin reply) sets
//!   [`reg::HAIRPIN`] and un-SNATs in [`zone::HAIRPIN`], then comes back
//!   to CONNTRACK for the pod zone;
//! - [L3_FORWARDING]: per local endpoint address A, `nw_src=A,nw_dst=A` of a
//!   tracked, non-reply service connection in [`zone::POD`] sets
//!   [`reg::HAIRPIN`] and SNATs in [`zone::HAIRPIN`] (ct_mark
//!   SERVICE|HAIRPIN there, so CONNTRACK_COMMIT leaves it alone), then comes
//!   back to L3_FORWARDING;
//! - [OUTPUT]: `reg4[18]=1` outputs to `in_port` (OpenFlow never outputs to
//!   the ingress port otherwise).
//!
//! and for Service connections from the gateway port to endpoints outside the
//! pod networks (SNATed to [`OUTSIDE_SNAT_IP`] in [`zone::OUTSIDE_SNAT`], back
//! out of the gateway port; `docs/pipeline.md`):
//! - [L3_FORWARDING] ([`priority::SERVICE_TO_OUTSIDE`], above only the route
//!   to the gateway): `in_port=GATEWAY`, a tracked non-reply service
//!   connection in [`zone::POD`] sets [`reg::HAIRPIN`] and SNATs (ct_mark
//!   SERVICE), then comes back to L3_FORWARDING; the same as
//!   [`PortKind::Gateway`] in [`zone::GATEWAY_SNAT`] (a `vlan` segment pod's,
//!   SNATed by the agent) SNATs without [`reg::HAIRPIN`]; a reply from
//!   `in_port=GATEWAY` in [`zone::POD`] sets [`reg::HAIRPIN`] and turns its
//!   MACs round;
//! - [CONNTRACK] ([`priority::OUTSIDE_UNSNAT`]): `in_port=GATEWAY,
//!   nw_dst=OUTSIDE_SNAT_IP` un-SNATs, then comes back to CONNTRACK for the
//!   pod zone; still to that address in [`zone::OUTSIDE_SNAT`] (no such
//!   connection, [`priority::OUTSIDE_UNSNAT_MISS`]) drops.
//!
//! The agent relies on nothing of this; it must only keep skipping the
//! commit of connections whose ct_mark has [`ct_mark::SERVICE`], keep
//! CONNTRACK_STATE's default going to the Service stage (SERVICE_EXTERNAL_FRONTEND), and leave reg3/reg4
//! alone.
//!
//! [CONNTRACK]: table::CONNTRACK
//! [L3_FORWARDING]: table::L3_FORWARDING
//! [OUTPUT]: table::OUTPUT

pub mod cookie;
pub mod fields;
pub mod ports;
pub mod priority;
pub mod table;

pub use cookie::{Cookie, Owner, cookie_object, group};
pub use fields::{
    CtMark, EndpointPortAndState, PortKind, RegField, RegMark, RegValue, ServiceState, Zone,
    ct_mark, reg, tunnel_key, zone,
};
pub use ports::{HAIRPIN_SNAT_IP, OUTSIDE_SNAT_IP, ofport};
pub use priority::Priority;
pub use table::{Stage, Table};
