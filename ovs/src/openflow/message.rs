//! OpenFlow messages: header framing, encode and decode.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::action::{Action, PacketInReason, decode_actions, encode_actions};
use super::field::{MatchField, decode_match, encode_match};
use super::flow::{FlowMod, FlowStats, FlowStatsRequest, decode_flow_stats};
use super::group::{Group, GroupMod, GroupStats, decode_group_desc, decode_group_stats};
use super::wire::{DResult, DecodeError, Reader, patch_len, round8};

/// The largest OpenFlow message: its header's length field has 16 bits.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Why a message could not be encoded. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message is longer than an OpenFlow length field can say.
    #[error("{kind} would be {len} bytes, over OpenFlow's {MAX_MESSAGE_LEN}-byte message limit")]
    TooLong {
        /// The message type (for a bundle add, `BUNDLE_ADD`).
        kind: &'static str,
        /// The length it would have had.
        len: usize,
    },
    /// This client has no encoding of the message for that OpenFlow version
    /// (see [`Message::encodable_as`]).
    #[error("{kind} has no OpenFlow version {version:#x} encoding here")]
    NoEncoding {
        /// The message type.
        kind: &'static str,
        /// The wire version asked for.
        version: u8,
    },
}

/// Undoes what was appended since `start` when it does not fit in one message.
fn check_fits(msg: &Message, out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong {
            kind: msg.kind(),
            len,
        });
    }
    Ok(())
}

/// OpenFlow 1.3 wire version.
pub const OFP13_VERSION: u8 = 0x04;
/// OpenFlow 1.5 wire version.
pub const OFP15_VERSION: u8 = 0x06;

pub(crate) const OFPT_HELLO: u8 = 0;
pub(crate) const OFPT_ERROR: u8 = 1;
pub(crate) const OFPT_ECHO_REQUEST: u8 = 2;
pub(crate) const OFPT_ECHO_REPLY: u8 = 3;
pub(crate) const OFPT_EXPERIMENTER: u8 = 4;
pub(crate) const OFPT_PACKET_IN: u8 = 10;
pub(crate) const OFPT_PORT_STATUS: u8 = 12;
pub(crate) const OFPT_PACKET_OUT: u8 = 13;
pub(crate) const OFPT_FLOW_MOD: u8 = 14;
pub(crate) const OFPT_GROUP_MOD: u8 = 15;
pub(crate) const OFPT_MULTIPART_REQUEST: u8 = 18;
pub(crate) const OFPT_MULTIPART_REPLY: u8 = 19;
pub(crate) const OFPT_BARRIER_REQUEST: u8 = 20;
pub(crate) const OFPT_BARRIER_REPLY: u8 = 21;
pub(crate) const OFPT_SET_ASYNC: u8 = 28;
pub(crate) const OFPT_METER_MOD: u8 = 29;
pub(crate) const OFPT_BUNDLE_CONTROL: u8 = 33;
pub(crate) const OFPT_BUNDLE_ADD_MESSAGE: u8 = 34;

const OFPMP_FLOW: u16 = 1;
const OFPMP_GROUP: u16 = 6;
const OFPMP_GROUP_DESC: u16 = 7;

const NX_VENDOR_ID: u32 = 0x0000_2320;
const NXT_SET_PACKET_IN_FORMAT: u32 = 16;
const NXT_PACKET_IN2: u32 = 30;
const NXT_TLV_TABLE_MOD: u32 = 24;
const NXT_CT_FLUSH: u32 = 32;

/// An OpenFlow error message (`OFPT_ERROR`), with type/code names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OfpError {
    /// Error type (`OFPET_*`), 0xffff for experimenter errors.
    pub err_type: u16,
    /// Error code (experimenter code for experimenter errors).
    pub code: u16,
    /// Experimenter id for experimenter errors.
    pub experimenter: Option<u32>,
    /// The start of the offending request.
    pub data: Vec<u8>,
}

impl OfpError {
    /// Symbolic name, e.g. `OFPBAC_BAD_OUT_PORT`.
    pub fn name(&self) -> String {
        error_name(self.err_type, self.code, self.experimenter)
    }
}

impl fmt::Display for OfpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.experimenter {
            Some(e) => write!(
                f,
                "{} (experimenter {e:#x} code {})",
                self.name(),
                self.code
            ),
            None => write!(
                f,
                "{} (type {} {}, code {})",
                self.name(),
                self.err_type,
                error_type_name(self.err_type),
                self.code
            ),
        }
    }
}

/// Name of an `OFPET_*` error type.
pub fn error_type_name(t: u16) -> &'static str {
    match t {
        0 => "HELLO_FAILED",
        1 => "BAD_REQUEST",
        2 => "BAD_ACTION",
        3 => "BAD_INSTRUCTION",
        4 => "BAD_MATCH",
        5 => "FLOW_MOD_FAILED",
        6 => "GROUP_MOD_FAILED",
        7 => "PORT_MOD_FAILED",
        8 => "TABLE_MOD_FAILED",
        9 => "QUEUE_OP_FAILED",
        10 => "SWITCH_CONFIG_FAILED",
        11 => "ROLE_REQUEST_FAILED",
        12 => "METER_MOD_FAILED",
        13 => "TABLE_FEATURES_FAILED",
        14 => "BAD_PROPERTY",
        15 => "ASYNC_CONFIG_FAILED",
        16 => "FLOW_MONITOR_FAILED",
        17 => "BUNDLE_FAILED",
        0xffff => "EXPERIMENTER",
        _ => "UNKNOWN",
    }
}

fn error_name(t: u16, c: u16, exp: Option<u32>) -> String {
    const HFC: &[&str] = &["INCOMPATIBLE", "EPERM"];
    const BRC: &[&str] = &[
        "BAD_VERSION",
        "BAD_TYPE",
        "BAD_MULTIPART",
        "BAD_EXPERIMENTER",
        "BAD_EXP_TYPE",
        "EPERM",
        "BAD_LEN",
        "BUFFER_EMPTY",
        "BUFFER_UNKNOWN",
        "BAD_TABLE_ID",
        "IS_SLAVE",
        "BAD_PORT",
        "BAD_PACKET",
        "MULTIPART_BUFFER_OVERFLOW",
        "MULTIPART_REQUEST_TIMEOUT",
        "MULTIPART_REPLY_TIMEOUT",
    ];
    const BAC: &[&str] = &[
        "BAD_TYPE",
        "BAD_LEN",
        "BAD_EXPERIMENTER",
        "BAD_EXP_TYPE",
        "BAD_OUT_PORT",
        "BAD_ARGUMENT",
        "EPERM",
        "TOO_MANY",
        "BAD_QUEUE",
        "BAD_OUT_GROUP",
        "MATCH_INCONSISTENT",
        "UNSUPPORTED_ORDER",
        "BAD_TAG",
        "BAD_SET_TYPE",
        "BAD_SET_LEN",
        "BAD_SET_ARGUMENT",
        "BAD_SET_MASK",
    ];
    const BIC: &[&str] = &[
        "UNKNOWN_INST",
        "UNSUP_INST",
        "BAD_TABLE_ID",
        "UNSUP_METADATA",
        "UNSUP_METADATA_MASK",
        "BAD_EXPERIMENTER",
        "BAD_EXP_TYPE",
        "BAD_LEN",
        "EPERM",
        "DUP_INST",
    ];
    const BMC: &[&str] = &[
        "BAD_TYPE",
        "BAD_LEN",
        "BAD_TAG",
        "BAD_DL_ADDR_MASK",
        "BAD_NW_ADDR_MASK",
        "BAD_WILDCARDS",
        "BAD_FIELD",
        "BAD_VALUE",
        "BAD_MASK",
        "BAD_PREREQ",
        "DUP_FIELD",
        "EPERM",
    ];
    const FMFC: &[&str] = &[
        "UNKNOWN",
        "TABLE_FULL",
        "BAD_TABLE_ID",
        "OVERLAP",
        "EPERM",
        "BAD_TIMEOUT",
        "BAD_COMMAND",
        "BAD_FLAGS",
        "CANT_SYNC",
        "BAD_PRIORITY",
        "IS_SYNC",
    ];
    const GMFC: &[&str] = &[
        "GROUP_EXISTS",
        "INVALID_GROUP",
        "WEIGHT_UNSUPPORTED",
        "OUT_OF_GROUPS",
        "OUT_OF_BUCKETS",
        "CHAINING_UNSUPPORTED",
        "WATCH_UNSUPPORTED",
        "LOOP",
        "UNKNOWN_GROUP",
        "CHAINED_GROUP",
        "BAD_TYPE",
        "BAD_COMMAND",
        "BAD_BUCKET",
        "BAD_WATCH",
        "EPERM",
        "UNKNOWN_BUCKET",
        "BUCKET_EXISTS",
    ];
    const BFC: &[&str] = &[
        "UNKNOWN",
        "EPERM",
        "BAD_ID",
        "BUNDLE_EXIST",
        "BUNDLE_CLOSED",
        "OUT_OF_BUNDLES",
        "BAD_TYPE",
        "BAD_FLAGS",
        "MSG_BAD_LEN",
        "MSG_BAD_XID",
        "MSG_UNSUP",
        "MSG_CONFLICT",
        "MSG_TOO_MANY",
        "MSG_FAILED",
        "TIMEOUT",
        "BUNDLE_IN_PROGRESS",
        "SCHED_NOT_SUPPORTED",
        "SCHED_FUTURE",
        "SCHED_PAST",
    ];
    if let Some(e) = exp {
        // Nicira errors OVS sends as OpenFlow 1.2+ experimenter errors.
        let nx = match c {
            2 => "NXBRC_NXM_INVALID",
            3 => "NXBRC_NXM_BAD_TYPE",
            4 => "NXBRC_MUST_BE_ZERO",
            5 => "NXBRC_BAD_REASON",
            9 => "NXBRC_FM_BAD_EVENT",
            10 => "NXBRC_UNENCODABLE_ERROR",
            11 => "NXBAC_MUST_BE_ZERO",
            12 => "NXFMFC_HARDWARE",
            13 => "NXFMFC_BAD_TABLE_ID",
            15 => "NXBAC_BAD_CONJUNCTION",
            16 => "NXTTMFC_BAD_COMMAND",
            17 => "NXTTMFC_BAD_OPT_LEN",
            18 => "NXTTMFC_BAD_FIELD_IDX",
            19 => "NXTTMFC_TABLE_FULL",
            20 => "NXTTMFC_ALREADY_MAPPED",
            21 => "NXTTMFC_DUP_ENTRY",
            34 => "NXR_NOT_SUPPORTED",
            35 => "NXR_STALE",
            36 => "NXST_NOT_CONFIGURED",
            37 => "NXFMFC_INVALID_TLV_FIELD",
            38 => "NXTTMFC_INVALID_TLV_DEL",
            42 => "NXBAC_CT_DATAPATH_SUPPORT",
            43 => "NXBMC_CT_DATAPATH_SUPPORT",
            _ => "",
        };
        return if e == NX_VENDOR_ID && !nx.is_empty() {
            nx.to_string()
        } else {
            format!("EXPERIMENTER_{e:#x}_ERROR_{c}")
        };
    }
    let (prefix, names): (&str, &[&str]) = match t {
        0 => ("OFPHFC", HFC),
        1 => ("OFPBRC", BRC),
        2 => ("OFPBAC", BAC),
        3 => ("OFPBIC", BIC),
        4 => ("OFPBMC", BMC),
        5 => ("OFPFMFC", FMFC),
        6 => ("OFPGMFC", GMFC),
        17 => ("OFPBFC", BFC),
        _ => ("OFPET", &[]),
    };
    match names.get(usize::from(c)) {
        Some(n) => format!("{prefix}_{n}"),
        None => format!("{}_{c}", error_type_name(t)),
    }
}

/// Bundle control operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BundleCtrlType {
    /// Open request.
    OpenRequest,
    /// Open reply.
    OpenReply,
    /// Close request.
    CloseRequest,
    /// Close reply.
    CloseReply,
    /// Commit request.
    CommitRequest,
    /// Commit reply.
    CommitReply,
    /// Discard request.
    DiscardRequest,
    /// Discard reply.
    DiscardReply,
}

impl BundleCtrlType {
    fn to_u16(self) -> u16 {
        match self {
            Self::OpenRequest => 0,
            Self::OpenReply => 1,
            Self::CloseRequest => 2,
            Self::CloseReply => 3,
            Self::CommitRequest => 4,
            Self::CommitReply => 5,
            Self::DiscardRequest => 6,
            Self::DiscardReply => 7,
        }
    }
    fn from_u16(v: u16) -> DResult<Self> {
        Ok(match v {
            0 => Self::OpenRequest,
            1 => Self::OpenReply,
            2 => Self::CloseRequest,
            3 => Self::CloseReply,
            4 => Self::CommitRequest,
            5 => Self::CommitReply,
            6 => Self::DiscardRequest,
            7 => Self::DiscardReply,
            _ => {
                return Err(DecodeError::Unsupported {
                    what: "bundle control type",
                    detail: v.to_string(),
                });
            }
        })
    }
}

/// Bundle flags.
pub mod bundle_flags {
    /// All-or-nothing.
    pub const ATOMIC: u16 = 1;
    /// Apply in order.
    pub const ORDERED: u16 = 2;
}

/// Meter-mod command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterModCommand {
    /// Add a meter.
    Add,
    /// Replace a meter.
    Modify,
    /// Delete a meter.
    Delete,
}

/// An OFPT_METER_MOD with drop bands (rate limiting, e.g. of packet-ins).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterMod {
    /// Command.
    pub command: MeterModCommand,
    /// Meter id (1..).
    pub meter_id: u32,
    /// Rates in packets per second (else kbit/s).
    pub pktps: bool,
    /// Bands use `burst_size`.
    pub burst: bool,
    /// Collect statistics.
    pub stats: bool,
    /// Drop bands: (rate, burst_size).
    pub drop_bands: Vec<(u32, u32)>,
}

impl MeterMod {
    /// `meter=ID,pktps,band=type=drop,rate=RATE` (add).
    pub fn add_pktps(meter_id: u32, rate: u32) -> Self {
        Self {
            command: MeterModCommand::Add,
            meter_id,
            pktps: true,
            burst: false,
            stats: false,
            drop_bands: vec![(rate, 0)],
        }
    }
    /// Delete meter `meter_id`.
    pub fn delete(meter_id: u32) -> Self {
        Self {
            command: MeterModCommand::Delete,
            meter_id,
            pktps: false,
            burst: false,
            stats: false,
            drop_bands: Vec::new(),
        }
    }
}

impl fmt::Display for MeterMod {
    /// `ovs-ofctl add-meter` syntax (after the verb).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.command {
            MeterModCommand::Add => "add",
            MeterModCommand::Modify => "modify",
            MeterModCommand::Delete => "delete",
        };
        write!(f, "{verb} meter={}", self.meter_id)?;
        write!(f, ",{}", if self.pktps { "pktps" } else { "kbps" })?;
        if self.burst {
            write!(f, ",burst")?;
        }
        if self.stats {
            write!(f, ",stats")?;
        }
        for (rate, burst) in &self.drop_bands {
            write!(f, ",band=type=drop,rate={rate}")?;
            if self.burst {
                write!(f, ",burst_size={burst}")?;
            }
        }
        Ok(())
    }
}

/// One Geneve option <-> `tun_metadata<index>` mapping (`nx_tlv_map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlvMap {
    /// Option class.
    pub option_class: u16,
    /// Option type.
    pub option_type: u8,
    /// Option length in bytes (multiple of 4, at most 124).
    pub option_len: u8,
    /// `tun_metadata` index 0..=63.
    pub index: u16,
}

/// One direction of a conntrack tuple for [`Message::CtFlush`]; fields left
/// `None` match any value (OVS 3.1 flushes by partial tuples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtTuple {
    /// Source address.
    pub src: Option<std::net::IpAddr>,
    /// Destination address.
    pub dst: Option<std::net::IpAddr>,
    /// Source port.
    pub src_port: Option<u16>,
    /// Destination port.
    pub dst_port: Option<u16>,
}

impl CtTuple {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Nested NXT_CT_TUPLE_* properties, in OVS's order and layout
    /// (addresses as IPv4-mapped 128-bit values, ports in 8-byte properties).
    fn encode(&self, out: &mut BytesMut) {
        for (ty, addr) in [(0u16, self.src), (1, self.dst)] {
            if let Some(addr) = addr {
                let v6 = match addr {
                    std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    std::net::IpAddr::V6(v6) => v6,
                };
                out.put_u16(ty);
                out.put_u16(20);
                out.put_slice(&v6.octets());
                out.put_bytes(0, 4);
            }
        }
        for (ty, port) in [(2u16, self.src_port), (3, self.dst_port)] {
            if let Some(port) = port {
                out.put_u16(ty);
                out.put_u16(8);
                out.put_u16(port);
                out.put_u16(0);
            }
        }
    }
}

/// NXT_TLV_TABLE_MOD command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlvTableCommand {
    /// Add mappings.
    Add,
    /// Delete mappings.
    Delete,
    /// Remove every mapping.
    Clear,
}

/// A packet-in, from NXT_PACKET_IN2 or OFPT_PACKET_IN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacketIn {
    /// Packet bytes (possibly truncated).
    pub data: Vec<u8>,
    /// Original length.
    pub total_len: u32,
    /// Table that sent it.
    pub table: u8,
    /// Cookie of the flow that sent it.
    pub cookie: u64,
    /// Why.
    pub reason: PacketInReason,
    /// Pipeline metadata (in_port, registers, ...).
    pub metadata: Vec<MatchField>,
    /// Userdata of a `controller(userdata=...)` action.
    pub userdata: Vec<u8>,
}

/// Why a [`PortStatus`] was sent (`ofp_port_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortReason {
    /// The port was added to the bridge (`ovs-vswitchd` attached it).
    Add,
    /// The port was removed.
    Delete,
    /// Its state or configuration changed (link up or down, ...).
    Modify,
    /// A reason this client does not know.
    Other(u8),
}

impl PortReason {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => PortReason::Add,
            1 => PortReason::Delete,
            2 => PortReason::Modify,
            v => PortReason::Other(v),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            PortReason::Add => 0,
            PortReason::Delete => 1,
            PortReason::Modify => 2,
            PortReason::Other(v) => v,
        }
    }
}

/// OFPT_PORT_STATUS: a port of the bridge came, went or changed. Only the
/// port's number and name are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortStatus {
    /// Why it was sent.
    pub reason: PortReason,
    /// The port's OpenFlow number (the Interface's `ofport`).
    pub port_no: u32,
    /// The port's name (the Interface's `name`).
    pub name: String,
}

/// Length of `ofp_port` without properties (OpenFlow 1.4 and 1.5).
const OFP_PORT_LEN: u16 = 40;
/// `OFP_MAX_PORT_NAME_LEN`.
const PORT_NAME_LEN: usize = 16;

/// A packet-out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacketOut {
    /// Ingress port to pretend ([`super::action::port::CONTROLLER`] for none).
    pub in_port: u32,
    /// Actions to apply.
    pub actions: Vec<Action>,
    /// The packet.
    pub data: Vec<u8>,
}

/// Multipart (statistics) requests this client sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartRequest {
    /// Flow statistics.
    Flow(FlowStatsRequest),
    /// Group counters for one group or [`super::group::ALL_GROUPS`].
    Group(u32),
    /// Group descriptions for one group or [`super::group::ALL_GROUPS`].
    GroupDesc(u32),
}

/// Multipart reply bodies this client decodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartReply {
    /// Flow statistics.
    Flow(Vec<FlowStats>),
    /// Group counters.
    Group(Vec<GroupStats>),
    /// Group descriptions.
    GroupDesc(Vec<Group>),
    /// Another type, raw.
    Other(u16, Vec<u8>),
}

/// An OpenFlow message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// HELLO with the version bitmap (bit n = version n).
    Hello(u32),
    /// Error.
    Error(OfpError),
    /// Echo request with payload.
    EchoRequest(Vec<u8>),
    /// Echo reply with payload.
    EchoReply(Vec<u8>),
    /// Flow mod.
    FlowMod(FlowMod),
    /// Group mod.
    GroupMod(GroupMod),
    /// Packet out.
    PacketOut(PacketOut),
    /// Packet in (standard or NXT_PACKET_IN2).
    PacketIn(PacketIn),
    /// Barrier request.
    BarrierRequest,
    /// Barrier reply.
    BarrierReply,
    /// Multipart request.
    MultipartRequest(MultipartRequest),
    /// Multipart reply; `more` = OFPMPF_REPLY_MORE.
    MultipartReply {
        /// More parts follow.
        more: bool,
        /// Body.
        body: MultipartReply,
    },
    /// Bundle control.
    BundleControl {
        /// Bundle id.
        bundle_id: u32,
        /// Operation.
        ctrl: BundleCtrlType,
        /// [`bundle_flags`].
        flags: u16,
    },
    /// Bundle add: `inner` must be encoded with the same xid.
    BundleAdd {
        /// Bundle id.
        bundle_id: u32,
        /// [`bundle_flags`].
        flags: u16,
        /// The message added.
        inner: Box<Message>,
    },
    /// OFPT_SET_ASYNC asking for packet-ins for `packet_in_mask` reasons
    /// (bit n = reason n) in both roles.
    SetAsync {
        /// Packet-in reasons.
        packet_in_mask: u32,
    },
    /// NXT_SET_PACKET_IN_FORMAT (2 = NXT_PACKET_IN2).
    SetPacketInFormat(u32),
    /// OFPT_PORT_STATUS (sent by the switch).
    PortStatus(PortStatus),
    /// Meter mod.
    MeterMod(MeterMod),
    /// NXT_TLV_TABLE_MOD: map Geneve options to `tun_metadata` fields.
    TlvTableMod {
        /// Add, delete or clear.
        command: TlvTableCommand,
        /// The mappings.
        maps: Vec<TlvMap>,
    },
    /// NXT_CT_FLUSH (OVS 3.1+): flush the conntrack entries of `zone`
    /// (zone 0 when `None`) whose original and reply tuples match `orig` and
    /// `reply` (both empty: every entry of the zone); `ip_proto` 0 = any.
    CtFlush {
        /// Conntrack zone.
        zone: Option<u16>,
        /// IP protocol (0 = any).
        ip_proto: u8,
        /// Original-direction tuple.
        orig: CtTuple,
        /// Reply-direction tuple.
        reply: CtTuple,
    },
    /// Anything else.
    Other {
        /// Message type.
        msg_type: u8,
        /// Body after the header.
        body: Vec<u8>,
    },
}

impl Message {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "HELLO",
            Message::Error(_) => "ERROR",
            Message::EchoRequest(_) => "ECHO_REQUEST",
            Message::EchoReply(_) => "ECHO_REPLY",
            Message::FlowMod(_) => "FLOW_MOD",
            Message::GroupMod(_) => "GROUP_MOD",
            Message::PacketOut(_) => "PACKET_OUT",
            Message::PacketIn(_) => "PACKET_IN",
            Message::PortStatus(_) => "PORT_STATUS",
            Message::BarrierRequest => "BARRIER_REQUEST",
            Message::BarrierReply => "BARRIER_REPLY",
            Message::MultipartRequest(_) => "MULTIPART_REQUEST",
            Message::MultipartReply { .. } => "MULTIPART_REPLY",
            Message::BundleControl { .. } => "BUNDLE_CONTROL",
            Message::BundleAdd { .. } => "BUNDLE_ADD_MESSAGE",
            Message::SetAsync { .. } => "SET_ASYNC",
            Message::SetPacketInFormat(_) => "NXT_SET_PACKET_IN_FORMAT",
            Message::TlvTableMod { .. } => "NXT_TLV_TABLE_MOD",
            Message::CtFlush { .. } => "NXT_CT_FLUSH",
            Message::MeterMod(_) => "METER_MOD",
            Message::Other { .. } => "OTHER",
        }
    }

    fn msg_type(&self) -> u8 {
        match self {
            Message::Hello(_) => OFPT_HELLO,
            Message::Error(_) => OFPT_ERROR,
            Message::EchoRequest(_) => OFPT_ECHO_REQUEST,
            Message::EchoReply(_) => OFPT_ECHO_REPLY,
            Message::FlowMod(_) => OFPT_FLOW_MOD,
            Message::GroupMod(_) => OFPT_GROUP_MOD,
            Message::PacketOut(_) => OFPT_PACKET_OUT,
            Message::PacketIn(_) => OFPT_PACKET_IN,
            Message::PortStatus(_) => OFPT_PORT_STATUS,
            Message::BarrierRequest => OFPT_BARRIER_REQUEST,
            Message::BarrierReply => OFPT_BARRIER_REPLY,
            Message::MultipartRequest(_) => OFPT_MULTIPART_REQUEST,
            Message::MultipartReply { .. } => OFPT_MULTIPART_REPLY,
            Message::BundleControl { .. } => OFPT_BUNDLE_CONTROL,
            Message::BundleAdd { .. } => OFPT_BUNDLE_ADD_MESSAGE,
            Message::SetAsync { .. } => OFPT_SET_ASYNC,
            Message::SetPacketInFormat(_)
            | Message::TlvTableMod { .. }
            | Message::CtFlush { .. } => OFPT_EXPERIMENTER,
            Message::MeterMod(_) => OFPT_METER_MOD,
            Message::Other { msg_type, .. } => *msg_type,
        }
    }

    /// Appends the OpenFlow 1.5 encoding of this message with `xid` to `out`.
    ///
    /// A message longer than OpenFlow's 16-bit length allows is an error and
    /// appends nothing: a length field is never truncated.
    pub fn encode(&self, xid: u32, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        self.encode_unchecked(xid, out);
        check_fits(self, out, start)
    }

    /// Appends the encoding; a length over 65,535 saturates in its field, so
    /// callers check the whole message's length afterwards ([`check_fits`]):
    /// every inner length counts bytes inside the message, so an overflow
    /// anywhere makes the whole message too long.
    fn encode_unchecked(&self, xid: u32, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(OFP15_VERSION);
        out.put_u8(self.msg_type());
        out.put_u16(0);
        out.put_u32(xid);
        match self {
            Message::Hello(bitmap) => {
                // One version-bitmap element.
                out.put_u16(1);
                out.put_u16(8);
                out.put_u32(*bitmap);
            }
            Message::Error(e) => {
                out.put_u16(e.err_type);
                out.put_u16(e.code);
                if let Some(x) = e.experimenter {
                    out.put_u32(x);
                }
                out.put_slice(&e.data);
            }
            Message::EchoRequest(d) | Message::EchoReply(d) => out.put_slice(d),
            Message::FlowMod(fm) => fm.encode_body(out),
            Message::GroupMod(gm) => gm.encode_body(out),
            Message::PacketOut(po) => {
                out.put_u32(0xffff_ffff);
                let alen_at = out.len();
                out.put_u16(0);
                out.put_u16(0);
                encode_match(&[MatchField::in_port(po.in_port)], out);
                let a = out.len();
                encode_actions(&po.actions, out);
                let alen = u16::try_from(out.len() - a).unwrap_or(u16::MAX);
                super::wire::patch_u16(out, alen_at, alen);
                out.put_slice(&po.data);
            }
            Message::PacketIn(pi) => {
                out.put_u32(0xffff_ffff);
                out.put_u16(u16::try_from(pi.total_len).unwrap_or(u16::MAX));
                out.put_u8(pi.reason.to_u8());
                out.put_u8(pi.table);
                out.put_u64(pi.cookie);
                encode_match(&pi.metadata, out);
                out.put_u16(0);
                out.put_slice(&pi.data);
            }
            Message::PortStatus(ps) => {
                // OpenFlow 1.5 `ofp_port_status` with an `ofp_port` of no
                // properties (hardware address, config and state zero).
                out.put_u8(ps.reason.to_u8());
                out.put_bytes(0, 7);
                out.put_u32(ps.port_no);
                out.put_u16(OFP_PORT_LEN);
                out.put_bytes(0, 2 + 6 + 2);
                let name = ps.name.as_bytes();
                let n = name.len().min(PORT_NAME_LEN - 1);
                out.put_slice(&name[..n]);
                out.put_bytes(0, PORT_NAME_LEN - n);
                out.put_bytes(0, 8);
            }
            Message::BarrierRequest | Message::BarrierReply => {}
            Message::MultipartRequest(req) => {
                let (ty, body): (u16, BytesMut) = match req {
                    MultipartRequest::Flow(f) => {
                        let mut b = BytesMut::new();
                        f.encode_body(&mut b);
                        (OFPMP_FLOW, b)
                    }
                    MultipartRequest::Group(g) => {
                        let mut b = BytesMut::new();
                        b.put_u32(*g);
                        b.put_u32(0);
                        (OFPMP_GROUP, b)
                    }
                    MultipartRequest::GroupDesc(g) => {
                        let mut b = BytesMut::new();
                        b.put_u32(*g);
                        b.put_u32(0);
                        (OFPMP_GROUP_DESC, b)
                    }
                };
                out.put_u16(ty);
                out.put_u16(0);
                out.put_u32(0);
                out.put_slice(&body);
            }
            Message::MultipartReply { more, body } => {
                let ty = match body {
                    MultipartReply::Flow(_) => OFPMP_FLOW,
                    MultipartReply::Group(_) => OFPMP_GROUP,
                    MultipartReply::GroupDesc(_) => OFPMP_GROUP_DESC,
                    MultipartReply::Other(t, _) => *t,
                };
                out.put_u16(ty);
                out.put_u16(u16::from(*more));
                out.put_u32(0);
                if let MultipartReply::Other(_, b) = body {
                    out.put_slice(b);
                }
            }
            Message::BundleControl {
                bundle_id,
                ctrl,
                flags,
            } => {
                out.put_u32(*bundle_id);
                out.put_u16(ctrl.to_u16());
                out.put_u16(*flags);
            }
            Message::BundleAdd {
                bundle_id,
                flags,
                inner,
            } => {
                out.put_u32(*bundle_id);
                out.put_u16(0);
                out.put_u16(*flags);
                inner.encode_unchecked(xid, out);
            }
            Message::SetAsync { packet_in_mask } => {
                for ty in [0u16, 1] {
                    out.put_u16(ty);
                    out.put_u16(8);
                    out.put_u32(*packet_in_mask);
                }
            }
            Message::SetPacketInFormat(fmt) => {
                out.put_u32(NX_VENDOR_ID);
                out.put_u32(NXT_SET_PACKET_IN_FORMAT);
                out.put_u32(*fmt);
            }
            Message::CtFlush {
                zone,
                ip_proto,
                orig,
                reply,
            } => {
                out.put_u32(NX_VENDOR_ID);
                out.put_u32(NXT_CT_FLUSH);
                out.put_u8(*ip_proto);
                out.put_bytes(0, 7);
                for (ty, tuple) in [(0u16, orig), (1, reply)] {
                    if !tuple.is_empty() {
                        let at = out.len();
                        out.put_u16(ty);
                        out.put_u16(0);
                        // Nested properties start 8-byte aligned.
                        out.put_bytes(0, 4);
                        tuple.encode(out);
                        super::wire::patch_len(out, at + 2, at);
                    }
                }
                if let Some(zone) = zone {
                    out.put_u16(2);
                    out.put_u16(8);
                    out.put_u16(*zone);
                    out.put_u16(0);
                }
            }
            Message::TlvTableMod { command, maps } => {
                out.put_u32(NX_VENDOR_ID);
                out.put_u32(NXT_TLV_TABLE_MOD);
                out.put_u16(match command {
                    TlvTableCommand::Add => 0,
                    TlvTableCommand::Delete => 1,
                    TlvTableCommand::Clear => 2,
                });
                out.put_bytes(0, 6);
                for m in maps {
                    out.put_u16(m.option_class);
                    out.put_u8(m.option_type);
                    out.put_u8(m.option_len);
                    out.put_u16(m.index);
                    out.put_u16(0);
                }
            }
            Message::MeterMod(mm) => {
                out.put_u16(match mm.command {
                    MeterModCommand::Add => 0,
                    MeterModCommand::Modify => 1,
                    MeterModCommand::Delete => 2,
                });
                let mut flags = if mm.pktps { 2 } else { 1 };
                if mm.burst {
                    flags |= 4;
                }
                if mm.stats {
                    flags |= 8;
                }
                out.put_u16(flags);
                out.put_u32(mm.meter_id);
                for (rate, burst) in &mm.drop_bands {
                    out.put_u16(1); // OFPMBT_DROP
                    out.put_u16(16);
                    out.put_u32(*rate);
                    out.put_u32(*burst);
                    out.put_u32(0);
                }
            }
            Message::Other { body, .. } => out.put_slice(body),
        }
        patch_len(out, start + 2, start);
    }

    /// Whether this message has an encoding for OpenFlow `version` here:
    /// every message for 1.5; for 1.3 only those whose 1.3 form this client
    /// writes (HELLO, ERROR, ECHO, BARRIER, FLOW_MOD with importance 0,
    /// SET_ASYNC and the Nicira experimenter messages). Group mods, packet-out,
    /// meter mods, multipart (flow/group stats) and bundles are 1.5 only.
    pub fn encodable_as(&self, version: u8) -> bool {
        match version {
            OFP15_VERSION => true,
            OFP13_VERSION => match self {
                Message::Hello(_)
                | Message::Error(_)
                | Message::EchoRequest(_)
                | Message::EchoReply(_)
                | Message::BarrierRequest
                | Message::BarrierReply
                | Message::SetAsync { .. }
                | Message::SetPacketInFormat(_)
                | Message::TlvTableMod { .. }
                | Message::CtFlush { .. }
                | Message::Other { .. } => true,
                // OF1.3 has padding where OF1.5 has `importance`.
                Message::FlowMod(fm) => {
                    fm.flow.importance == 0
                        && super::action::actions_encodable_as_13(&fm.flow.actions)
                }
                Message::GroupMod(_)
                | Message::PacketOut(_)
                | Message::PacketIn(_)
                | Message::PortStatus(_)
                | Message::MultipartRequest(_)
                | Message::MultipartReply { .. }
                | Message::BundleControl { .. }
                | Message::BundleAdd { .. }
                | Message::MeterMod(_) => false,
            },
            _ => false,
        }
    }

    /// Appends the OpenFlow `version` encoding of this message; `None` (and
    /// nothing appended) when [`Message::encodable_as`] says it has none.
    /// The 1.3 forms differ from 1.5 only in the header's version, except
    /// SET_ASYNC (OF1.3 `ofp_async_config`: fixed masks, not properties).
    pub fn encode_as(&self, version: u8, xid: u32, out: &mut BytesMut) -> Result<(), EncodeError> {
        if !self.encodable_as(version) {
            return Err(EncodeError::NoEncoding {
                kind: self.kind(),
                version,
            });
        }
        let start = out.len();
        match (version, self) {
            (OFP13_VERSION, Message::SetAsync { packet_in_mask }) => {
                out.put_u8(OFP13_VERSION);
                out.put_u8(OFPT_SET_ASYNC);
                out.put_u16(0);
                out.put_u32(xid);
                // packet_in_mask[master, slave], port_status_mask[2],
                // flow_removed_mask[2].
                for mask in [*packet_in_mask, *packet_in_mask, 0, 0, 0, 0] {
                    out.put_u32(mask);
                }
                patch_len(out, start + 2, start);
            }
            (OFP13_VERSION, Message::FlowMod(fm)) => {
                out.put_u8(OFP13_VERSION);
                out.put_u8(OFPT_FLOW_MOD);
                out.put_u16(0);
                out.put_u32(xid);
                fm.encode_body_for(out, false);
                patch_len(out, start + 2, start);
            }
            _ => {
                self.encode_unchecked(xid, out);
                out[start] = version;
            }
        }
        check_fits(self, out, start)
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, xid: u32) -> Result<Vec<u8>, EncodeError> {
        let mut b = BytesMut::new();
        self.encode(xid, &mut b)?;
        Ok(b.to_vec())
    }

    /// Decodes one whole message; returns (version, xid, message).
    pub fn decode(buf: &[u8]) -> DResult<(u8, u32, Message)> {
        let mut r = Reader::new(buf, "OpenFlow header");
        let version = r.u8()?;
        let ty = r.u8()?;
        let len = usize::from(r.u16()?);
        let xid = r.u32()?;
        if len < 8 || len > buf.len() {
            return Err(DecodeError::BadLength {
                what: "OpenFlow message",
                len,
            });
        }
        let mut b = Reader::new(&buf[8..len], "OpenFlow message body");
        let other = |b: &Reader<'_>| Message::Other {
            msg_type: ty,
            body: b.buf.to_vec(),
        };
        if ty != OFPT_HELLO
            && ty != OFPT_ERROR
            && ty != OFPT_ECHO_REQUEST
            && ty != OFPT_ECHO_REPLY
            && version != OFP15_VERSION
            // Same form in OpenFlow 1.3 (a 1.3 connection's replies); a
            // port status's port number and name are at the same offsets.
            && !(version == OFP13_VERSION
                && (ty == OFPT_BARRIER_REPLY
                    || ty == OFPT_BARRIER_REQUEST
                    || ty == OFPT_PORT_STATUS))
        {
            return Ok((version, xid, other(&b)));
        }
        let msg = match ty {
            OFPT_HELLO => {
                let mut bitmap = 0;
                while b.remaining() >= 4 {
                    let et = b.u16()?;
                    let el = usize::from(b.u16()?);
                    if el < 4 {
                        break;
                    }
                    let mut e = b.sub((el - 4).min(b.remaining()), "hello element")?;
                    b.skip((round8(el) - el).min(b.remaining()))?;
                    if et == 1 && e.remaining() >= 4 {
                        bitmap = e.u32()?;
                    }
                }
                if bitmap == 0 {
                    // No bitmap: the peer supports every version up to its own.
                    bitmap = 1u32
                        .checked_shl(u32::from(version) + 1)
                        .map_or(u32::MAX, |b| b - 1);
                }
                Message::Hello(bitmap)
            }
            OFPT_ERROR => {
                let err_type = b.u16()?;
                let code = b.u16()?;
                let experimenter = if err_type == 0xffff {
                    Some(b.u32()?)
                } else {
                    None
                };
                Message::Error(OfpError {
                    err_type,
                    code,
                    experimenter,
                    data: b.buf.to_vec(),
                })
            }
            OFPT_ECHO_REQUEST => Message::EchoRequest(b.buf.to_vec()),
            OFPT_ECHO_REPLY => Message::EchoReply(b.buf.to_vec()),
            OFPT_FLOW_MOD => Message::FlowMod(FlowMod::decode_body(&mut b)?),
            OFPT_GROUP_MOD => Message::GroupMod(GroupMod::decode_body(&mut b)?),
            OFPT_PACKET_OUT => {
                let _buffer = b.u32()?;
                let alen = usize::from(b.u16()?);
                b.skip(2)?;
                let m = decode_match(&mut b)?;
                let in_port = m
                    .iter()
                    .find(|f| f.field == super::field::Field::InPort)
                    .map(|f| u32::try_from(f.value).unwrap_or(0))
                    .unwrap_or(super::action::port::CONTROLLER);
                let mut a = b.sub(alen, "packet-out actions")?;
                let actions = decode_actions(&mut a)?;
                Message::PacketOut(PacketOut {
                    in_port,
                    actions,
                    data: b.buf.to_vec(),
                })
            }
            OFPT_PACKET_IN => {
                let _buffer = b.u32()?;
                let total_len = u32::from(b.u16()?);
                let reason = PacketInReason::from_u8(b.u8()?);
                let table = b.u8()?;
                let cookie = b.u64()?;
                let metadata = decode_match(&mut b)?;
                b.skip(2)?;
                Message::PacketIn(PacketIn {
                    data: b.buf.to_vec(),
                    total_len,
                    table,
                    cookie,
                    reason,
                    metadata,
                    userdata: Vec::new(),
                })
            }
            OFPT_BARRIER_REQUEST => Message::BarrierRequest,
            OFPT_PORT_STATUS => {
                let reason = PortReason::from_u8(b.u8()?);
                b.skip(7)?;
                // `ofp_port`: port_no, then (1.5) length and pad or (1.3)
                // pad, then hw_addr and its pad: the name starts 16 bytes in.
                let port_no = b.u32()?;
                b.skip(4 + 6 + 2)?;
                let name = b.bytes(PORT_NAME_LEN)?;
                let end = name.iter().position(|&c| c == 0).unwrap_or(PORT_NAME_LEN);
                Message::PortStatus(PortStatus {
                    reason,
                    port_no,
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                })
            }
            OFPT_METER_MOD => {
                let command = match b.u16()? {
                    0 => MeterModCommand::Add,
                    1 => MeterModCommand::Modify,
                    2 => MeterModCommand::Delete,
                    c => {
                        return Err(DecodeError::Unsupported {
                            what: "meter_mod command",
                            detail: c.to_string(),
                        });
                    }
                };
                let flags = b.u16()?;
                let meter_id = b.u32()?;
                let mut drop_bands = Vec::new();
                while !b.is_empty() {
                    let ty = b.u16()?;
                    let len = usize::from(b.u16()?);
                    if len < 16 {
                        return Err(DecodeError::BadLength {
                            what: "meter band",
                            len,
                        });
                    }
                    let mut band = b.sub(len - 4, "meter band")?;
                    if ty != 1 {
                        return Err(DecodeError::Unsupported {
                            what: "meter band type",
                            detail: ty.to_string(),
                        });
                    }
                    drop_bands.push((band.u32()?, band.u32()?));
                }
                Message::MeterMod(MeterMod {
                    command,
                    meter_id,
                    pktps: flags & 2 != 0,
                    burst: flags & 4 != 0,
                    stats: flags & 8 != 0,
                    drop_bands,
                })
            }
            OFPT_MULTIPART_REQUEST => {
                let mty = b.u16()?;
                b.skip(6)?;
                match mty {
                    OFPMP_FLOW => {
                        let table = b.u8()?;
                        b.skip(3)?;
                        let out_port = b.u32()?;
                        let out_group = b.u32()?;
                        b.skip(4)?;
                        let cookie = b.u64()?;
                        let cookie_mask = b.u64()?;
                        let matches = decode_match(&mut b)?;
                        Message::MultipartRequest(MultipartRequest::Flow(FlowStatsRequest {
                            table,
                            out_port,
                            out_group,
                            cookie,
                            cookie_mask,
                            matches,
                        }))
                    }
                    OFPMP_GROUP => Message::MultipartRequest(MultipartRequest::Group(b.u32()?)),
                    OFPMP_GROUP_DESC => {
                        Message::MultipartRequest(MultipartRequest::GroupDesc(b.u32()?))
                    }
                    _ => other(&Reader::new(&buf[8..len], "multipart request")),
                }
            }
            OFPT_SET_ASYNC => {
                let mut packet_in_mask = 0;
                while b.remaining() >= 8 {
                    let ty = b.u16()?;
                    let l = usize::from(b.u16()?);
                    let mask = b.u32()?;
                    if l != 8 {
                        return Err(DecodeError::BadLength {
                            what: "async property",
                            len: l,
                        });
                    }
                    if ty == 1 {
                        packet_in_mask = mask;
                    }
                }
                Message::SetAsync { packet_in_mask }
            }
            OFPT_BARRIER_REPLY => Message::BarrierReply,
            OFPT_MULTIPART_REPLY => {
                let mty = b.u16()?;
                let flags = b.u16()?;
                b.skip(4)?;
                let body = match mty {
                    OFPMP_FLOW => MultipartReply::Flow(decode_flow_stats(&mut b)?),
                    OFPMP_GROUP => MultipartReply::Group(decode_group_stats(&mut b)?),
                    OFPMP_GROUP_DESC => MultipartReply::GroupDesc(decode_group_desc(&mut b)?),
                    t => MultipartReply::Other(t, b.buf.to_vec()),
                };
                Message::MultipartReply {
                    more: flags & 1 != 0,
                    body,
                }
            }
            OFPT_BUNDLE_CONTROL => {
                let bundle_id = b.u32()?;
                let ctrl = BundleCtrlType::from_u16(b.u16()?)?;
                let flags = b.u16()?;
                Message::BundleControl {
                    bundle_id,
                    ctrl,
                    flags,
                }
            }
            OFPT_BUNDLE_ADD_MESSAGE => {
                let bundle_id = b.u32()?;
                b.skip(2)?;
                let flags = b.u16()?;
                let ilen = usize::from(b.peek_u16_at(2)?);
                let inner = b.bytes(ilen.min(b.remaining()))?;
                let (_, _, inner) = Message::decode(inner)?;
                Message::BundleAdd {
                    bundle_id,
                    flags,
                    inner: Box::new(inner),
                }
            }
            OFPT_EXPERIMENTER => {
                let exp = b.u32()?;
                let et = b.u32()?;
                match (exp, et) {
                    (NX_VENDOR_ID, NXT_PACKET_IN2) => Message::PacketIn(decode_packet_in2(&mut b)?),
                    (NX_VENDOR_ID, NXT_SET_PACKET_IN_FORMAT) => {
                        Message::SetPacketInFormat(b.u32()?)
                    }
                    (NX_VENDOR_ID, NXT_TLV_TABLE_MOD) => {
                        let command = match b.u16()? {
                            0 => TlvTableCommand::Add,
                            1 => TlvTableCommand::Delete,
                            2 => TlvTableCommand::Clear,
                            c => {
                                return Err(DecodeError::Unsupported {
                                    what: "TLV table command",
                                    detail: c.to_string(),
                                });
                            }
                        };
                        b.skip(6)?;
                        let mut maps = Vec::new();
                        while !b.is_empty() {
                            let option_class = b.u16()?;
                            let option_type = b.u8()?;
                            let option_len = b.u8()?;
                            let index = b.u16()?;
                            b.skip(2)?;
                            maps.push(TlvMap {
                                option_class,
                                option_type,
                                option_len,
                                index,
                            });
                        }
                        Message::TlvTableMod { command, maps }
                    }
                    _ => other(&Reader::new(&buf[8..len], "experimenter")),
                }
            }
            _ => other(&b),
        };
        Ok((version, xid, msg))
    }
}

fn decode_packet_in2(r: &mut Reader<'_>) -> DResult<PacketIn> {
    let mut pi = PacketIn {
        data: Vec::new(),
        total_len: 0,
        table: 0,
        cookie: 0,
        reason: PacketInReason::NoMatch,
        metadata: Vec::new(),
        userdata: Vec::new(),
    };
    let mut have_full_len = false;
    while r.remaining() >= 4 {
        let ty = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 4 {
            return Err(DecodeError::BadLength {
                what: "packet_in2 property",
                len,
            });
        }
        let mut p = r.sub(len - 4, "packet_in2 property")?;
        r.skip((round8(len) - len).min(r.remaining()))?;
        match ty {
            0 => pi.data = p.buf.to_vec(),
            1 => {
                pi.total_len = p.u32()?;
                have_full_len = true;
            }
            3 => pi.table = p.u8()?,
            4 => {
                p.skip(4)?;
                pi.cookie = p.u64()?;
            }
            5 => pi.reason = PacketInReason::from_u8(p.u8()?),
            6 => {
                // Metadata: raw OXM fields (in_port, registers, ...).
                // A field this decoder cannot hold must not cost the packet.
                pi.metadata = super::field::decode_oxms(&mut p).unwrap_or_default();
            }
            7 => pi.userdata = p.buf.to_vec(),
            _ => {}
        }
    }
    if !have_full_len {
        pi.total_len = u32::try_from(pi.data.len()).unwrap_or(u32::MAX);
    }
    Ok(pi)
}
