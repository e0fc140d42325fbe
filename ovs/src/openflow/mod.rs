//! Native OpenFlow 1.5 client for Open vSwitch (with an OpenFlow 1.3
//! fallback for flow mods, see below).
//!
//! Programs a bridge through its management socket (`<rundir>/<bridge>.mgmt`)
//! without spawning `ovs-ofctl`: flows ([`Flow`], [`FlowMod`]), groups
//! ([`Group`], [`GroupMod`]), bundles, flow/group statistics, packet-out and
//! packet-in, with the Nicira extensions OVS uses (conntrack, NAT, learn,
//! resubmit, registers, conjunction, controller2). Every value has a
//! `Display` in ovs-ofctl syntax.
//!
//! Notes on what OVS (3.1) does on the wire, all covered by tests:
//! - Version: HELLO offers 1.3 and 1.5 and the connection uses the highest
//!   both sides allow ([`Client::version`]); a bridge's default `protocols`
//!   allow 1.5 on the management socket. Neither 1.5 nor 1.3:
//!   [`Error::Version`].
//! - OpenFlow 1.3 (a bridge whose `protocols` allow 1.3 but not 1.5) is a
//!   fallback for flow programming only. What works on 1.3: flow mods
//!   ([`Client::flow_mod`], [`Client::add_flows`], [`Client::send`] of flow
//!   mods) with every match and action here except the `meter` action and
//!   masked `set_field`s whose mask is not one run of at most 64 bits;
//!   registers are matched as `NXM_NX_REGn`, `move` goes as
//!   `NXAST_REG_MOVE`, masked `set_field` as `NXAST_REG_LOAD`; and barrier,
//!   echo, conntrack flush ([`Client::ct_flush`]), TLV maps and the
//!   connection setup (packet-in format, async config in its 1.3 form).
//!   What does not: group mods, bundles (1.3 would need the ONF extension
//!   2300 messages), flow/group statistics and dumps, packet-out, meter mods
//!   and flow `importance`; these fail with [`Error::UnsupportedOn13`]
//!   before anything of the request is sent, and
//!   [`Message::encodable_as`] tells in advance. Packet-ins on a 1.3
//!   connection are not decoded (untested). The 1.3 forms are covered by
//!   golden tests and by a real bridge with `protocols=OpenFlow13`.
//! - Registers: in OpenFlow 1.5 matches OVS writes `reg0..15` as 64-bit
//!   `xreg` pairs (class 0x8001); the client does the same and decodes them
//!   back into [`Field::Reg`] matches. `load` is a masked set-field.
//! - Bundles: OVS rejects some messages already when they are added (e.g.
//!   `ct` without an IP match) and would then commit the others; the client
//!   puts a barrier after the adds and discards the bundle instead, so an
//!   atomic bundle is all-or-nothing in both cases. Errors found at commit
//!   time name the failing message by its xid; [`Error::BundleRejected`]
//!   turns that into the index in the caller's batch.
//! - The management socket is a "service" connection: OVS sends it no
//!   asynchronous messages until asked, so the client sets the packet-in
//!   format (NXT_PACKET_IN2, for `userdata`) and the async config.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_ovs::openflow::Error> {
//! use std::net::Ipv4Addr;
//! use switchyard_ovs::openflow::*;
//!
//! let client = Client::connect(ClientConfig::new("/var/run/openvswitch/br-int.mgmt")).await?;
//! let group = Group::select(7, vec![
//!     (100, vec![Action::Ct(Ct {
//!         commit: true,
//!         zone: CtZone::Immediate(1),
//!         table: Some(3),
//!         nat: Some(Nat::dst(Ipv4Addr::new(10, 1, 0, 2).into(), Some(8080))),
//!         ..Ct::default()
//!     })]),
//! ])
//! .selection(SelectionMethod::hash(&[Field::Ipv4Src, Field::Ipv4Dst]));
//! let flow = Flow::new(2, 100)
//!     .cookie(0x5e)
//!     .matching(MatchField::eth_type(0x0800))
//!     .matching(MatchField::ip_proto(6))
//!     .matching(MatchField::ipv4_dst(Ipv4Addr::new(10, 96, 0, 1), 32))
//!     .matching(MatchField::tcp_dst(80))
//!     .action(Action::Group(7));
//! // "table=2,cookie=0x5e,priority=100,tcp,nw_dst=10.96.0.1,tcp_dst=80 actions=group:7"
//! println!("{flow}");
//! // All or nothing; on failure the error names the rejected message.
//! client
//!     .bundle(
//!         vec![GroupMod::add(group).into(), FlowMod::add(flow).into()],
//!         bundle_flags::ATOMIC | bundle_flags::ORDERED,
//!     )
//!     .await?;
//! // After ovs-vswitchd restarts, the generation goes up: replay.
//! let mut events = client.connection_events();
//! events.changed().await.ok();
//! # Ok(())
//! # }
//! ```

/// Ethertype of IPv4 (`dl_type=0x0800`).
pub const ETH_TYPE_IP: u16 = 0x0800;
/// Ethertype of ARP (`dl_type=0x0806`).
pub const ETH_TYPE_ARP: u16 = 0x0806;

pub mod action;
pub mod client;
pub mod field;
pub mod flow;
pub mod group;
pub mod message;
mod wire;

pub use action::{Action, Ct, CtZone, Learn, LearnSpec, Nat, PacketInReason, fmt_actions, port};
pub use client::{Client, ClientConfig, ConnectionEvent, Error, TxMessage};
pub use field::{Field, MatchField, SubField, ct_state, fmt_match};
pub use flow::{
    ALL_TABLES, ANY, Flow, FlowMod, FlowModCommand, FlowStats, FlowStatsRequest, flow_flags,
};
pub use group::{
    ALL_GROUPS, BUCKET_ALL, BUCKET_FIRST, BUCKET_LAST, Bucket, Group, GroupMod, GroupModCommand,
    GroupStats, GroupType, SelectionMethod,
};
pub use message::{
    BundleCtrlType, CtTuple, EncodeError, MAX_MESSAGE_LEN, Message, MeterMod, MeterModCommand,
    MultipartReply, MultipartRequest, OFP13_VERSION, OFP15_VERSION, OfpError, PacketIn, PacketOut,
    PortReason, PortStatus, TlvMap, TlvTableCommand, bundle_flags,
};
pub use wire::DecodeError;
