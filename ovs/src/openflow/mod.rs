//! Native OpenFlow 1.5 client for Open vSwitch.
//!
//! Programs a bridge through its management socket (`<rundir>/<bridge>.mgmt`)
//! without spawning `ovs-ofctl`: flows ([`Flow`], [`FlowMod`]), groups
//! ([`Group`], [`GroupMod`]), bundles, flow/group statistics, packet-out and
//! packet-in, with the Nicira extensions OVS uses (conntrack, NAT, learn,
//! resubmit, registers, conjunction, controller2). Every value has a
//! `Display` in ovs-ofctl syntax.

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
    BundleCtrlType, Message, MultipartReply, MultipartRequest, OFP15_VERSION, OfpError, PacketIn,
    PacketOut, bundle_flags,
};
pub use wire::DecodeError;
