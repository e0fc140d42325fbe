//! Native OpenFlow 1.5 client for Open vSwitch.
//!
//! Programs a bridge through its management socket (`<rundir>/<bridge>.mgmt`)
//! without spawning `ovs-ofctl`: flows ([`Flow`], [`FlowMod`]), groups
//! ([`Group`], [`GroupMod`]), bundles, flow/group statistics, packet-out and
//! packet-in, with the Nicira extensions OVS uses (conntrack, NAT, learn,
//! resubmit, registers, conjunction, controller2). Every value has a
//! `Display` in ovs-ofctl syntax.
//!
//! Notes on what OVS (3.1) does on the wire, all covered by tests:
//! - Version: HELLO offers 1.3 and 1.5; the client requires 1.5 (a bridge's
//!   default `protocols` allows it on the management socket) and says so
//!   clearly otherwise ([`Error::Version`]).
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
    BundleCtrlType, CtTuple, Message, MeterMod, MeterModCommand, MultipartReply, MultipartRequest,
    OFP15_VERSION, OfpError, PacketIn, PacketOut, TlvMap, TlvTableCommand, bundle_flags,
};
pub use wire::DecodeError;
