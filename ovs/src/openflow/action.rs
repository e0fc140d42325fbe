//! Actions (OpenFlow 1.5 plus the Nicira extensions OVS uses).
//!
//! [`Action`] values are plain data with an ovs-ofctl style `Display`.
//! `goto_table` is modelled as an action for convenience; it is written as
//! an instruction after the apply-actions instruction.

use std::fmt;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::field::{Field, MatchField, SubField, get_value, port_from_16, port_name, port_to_16};
use super::wire::{DResult, DecodeError, Reader, pad8, patch_len, round8};

/// Reserved port numbers (32-bit OpenFlow 1.1+ space).
pub mod port {
    /// Send back out the ingress port.
    pub const IN_PORT: u32 = 0xffff_fff8;
    /// Submit to the first flow table (packet-out only).
    pub const TABLE: u32 = 0xffff_fff9;
    /// L2 learning switch processing.
    pub const NORMAL: u32 = 0xffff_fffa;
    /// Flood.
    pub const FLOOD: u32 = 0xffff_fffb;
    /// All ports but the ingress port.
    pub const ALL: u32 = 0xffff_fffc;
    /// Send to the controller.
    pub const CONTROLLER: u32 = 0xffff_fffd;
    /// The bridge's local port.
    pub const LOCAL: u32 = 0xffff_fffe;
    /// Wildcard / none.
    pub const ANY: u32 = 0xffff_ffff;
}

const OFPAT_OUTPUT: u16 = 0;
const OFPAT_PUSH_VLAN: u16 = 17;
const OFPAT_POP_VLAN: u16 = 18;
const OFPAT_GROUP: u16 = 22;
const OFPAT_DEC_NW_TTL: u16 = 24;
const OFPAT_SET_FIELD: u16 = 25;
const OFPAT_COPY_FIELD: u16 = 28;
const OFPAT_METER: u16 = 29;
const OFPAT_EXPERIMENTER: u16 = 0xffff;
const NX_VENDOR_ID: u32 = 0x0000_2320;

const NXAST_RESUBMIT: u16 = 1;
const NXAST_REG_MOVE: u16 = 6;
const NXAST_REG_LOAD: u16 = 7;
const NXAST_NOTE: u16 = 8;
const NXAST_RESUBMIT_TABLE: u16 = 14;
const NXAST_LEARN: u16 = 16;
const NXAST_DEC_TTL: u16 = 18;
const NXAST_CONTROLLER: u16 = 20;
const NXAST_CONJUNCTION: u16 = 34;
const NXAST_CT: u16 = 35;
const NXAST_NAT: u16 = 36;
const NXAST_CONTROLLER2: u16 = 37;
const NXAST_CT_CLEAR: u16 = 43;
const NXAST_RESUBMIT_TABLE_CT: u16 = 44;

/// Why a packet went to the controller (`OFPR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketInReason {
    /// No matching flow (table-miss).
    NoMatch,
    /// Explicit controller action.
    Action,
    /// Invalid TTL.
    InvalidTtl,
    /// Output in an action set.
    ActionSet,
    /// Output in a group bucket.
    Group,
    /// Output in a packet-out.
    PacketOut,
    /// Any other value.
    Other(u8),
}

impl PacketInReason {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::NoMatch => 0,
            Self::Action => 1,
            Self::InvalidTtl => 2,
            Self::ActionSet => 3,
            Self::Group => 4,
            Self::PacketOut => 5,
            Self::Other(v) => v,
        }
    }
    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::NoMatch,
            1 => Self::Action,
            2 => Self::InvalidTtl,
            3 => Self::ActionSet,
            4 => Self::Group,
            5 => Self::PacketOut,
            v => Self::Other(v),
        }
    }
    /// ovs-ofctl name.
    pub fn name(self) -> String {
        match self {
            Self::NoMatch => "no_match".into(),
            Self::Action => "action".into(),
            Self::InvalidTtl => "invalid_ttl".into(),
            Self::ActionSet => "action_set".into(),
            Self::Group => "group".into(),
            Self::PacketOut => "packet_out".into(),
            Self::Other(v) => v.to_string(),
        }
    }
}

/// Where `ct` takes its zone from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtZone {
    /// A fixed zone.
    Immediate(u16),
    /// A 16-bit subfield (e.g. `NXM_NX_REG0[0..15]`).
    Field(SubField),
}

/// NAT part of a `ct` action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Nat {
    /// `Some(false)` = `src`, `Some(true)` = `dst`, `None` = plain `nat`
    /// (un-NAT replies / apply the connection's existing NAT).
    pub dst: Option<bool>,
    /// Address range (min, max); both of one family.
    pub addrs: Option<(IpAddr, IpAddr)>,
    /// Port range (min, max).
    pub ports: Option<(u16, u16)>,
    /// `persistent` flag.
    pub persistent: bool,
    /// `hash` port selection.
    pub hash: bool,
    /// `random` port selection.
    pub random: bool,
}

impl Nat {
    /// `nat(dst=addr[:port])`.
    pub fn dst(addr: IpAddr, port: Option<u16>) -> Self {
        Self {
            dst: Some(true),
            addrs: Some((addr, addr)),
            ports: port.map(|p| (p, p)),
            ..Self::default()
        }
    }
    /// `nat(src=addr[:port])`.
    pub fn src(addr: IpAddr, port: Option<u16>) -> Self {
        Self {
            dst: Some(false),
            addrs: Some((addr, addr)),
            ports: port.map(|p| (p, p)),
            ..Self::default()
        }
    }
    /// Plain `nat` (reverse or re-apply existing translation).
    pub fn existing() -> Self {
        Self::default()
    }
}

/// The conntrack action `ct(...)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ct {
    /// `commit`.
    pub commit: bool,
    /// `force` (commit even if the existing entry is in the other direction).
    pub force: bool,
    /// Zone.
    pub zone: CtZone,
    /// `table=N` to recirculate to.
    pub table: Option<u8>,
    /// `alg=port` (0 = none).
    pub alg: u16,
    /// `nat(...)`.
    pub nat: Option<Nat>,
    /// `exec(...)`: set-field of `ct_mark` / `ct_label`.
    pub exec: Vec<Action>,
}

impl Default for Ct {
    fn default() -> Self {
        Self {
            commit: false,
            force: false,
            zone: CtZone::Immediate(0),
            table: None,
            alg: 0,
            nat: None,
            exec: Vec::new(),
        }
    }
}

/// One element of a `learn` action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LearnSpec {
    /// Match `dst` against the value of `src` in the packet (`dst=src`, or
    /// `FIELD[]` when they are the same).
    MatchField {
        /// Field to match in the learned flow.
        dst: SubField,
        /// Where the value comes from in the packet.
        src: SubField,
    },
    /// Match `dst` against a constant (`field=value`).
    MatchValue {
        /// Field to match.
        dst: SubField,
        /// The constant.
        value: u128,
    },
    /// `load:src->dst` in the learned flow's actions.
    LoadField {
        /// Source (from the learning packet).
        src: SubField,
        /// Destination in the learned flow's packet.
        dst: SubField,
    },
    /// `load:value->dst`.
    LoadValue {
        /// Destination.
        dst: SubField,
        /// The constant.
        value: u128,
    },
    /// `output:src`.
    Output {
        /// Port taken from this subfield.
        src: SubField,
    },
}

impl LearnSpec {
    /// `FIELD[]`: match the same field as in the packet.
    pub fn copy_match(field: Field) -> Self {
        let sf = SubField::whole(field);
        Self::MatchField { dst: sf, src: sf }
    }
    /// `field=value` in the learned flow's match (whole field).
    pub fn match_value(field: Field, value: u128) -> Self {
        Self::MatchValue {
            dst: SubField::whole(field),
            value,
        }
    }
    /// `load:SRC[]->DST[]` with whole fields.
    pub fn load_field(src: Field, dst: Field) -> Self {
        Self::LoadField {
            src: SubField::whole(src),
            dst: SubField::whole(dst),
        }
    }
}

/// The Nicira `learn` action. `Learn::default()` has priority 0x8000, like
/// ovs-ofctl when no priority is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Learn {
    /// Table of the learned flow.
    pub table: u8,
    /// Idle timeout of the learned flow (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout of the learned flow (0 = none).
    pub hard_timeout: u16,
    /// `fin_idle_timeout`.
    pub fin_idle_timeout: u16,
    /// `fin_hard_timeout`.
    pub fin_hard_timeout: u16,
    /// Priority of the learned flow.
    pub priority: u16,
    /// Cookie of the learned flow.
    pub cookie: u64,
    /// `send_flow_rem`.
    pub send_flow_rem: bool,
    /// `delete_learned`: delete learned flows when this flow is removed.
    pub delete_learned: bool,
    /// Match and action specifications.
    pub specs: Vec<LearnSpec>,
}

impl Default for Learn {
    fn default() -> Self {
        Self {
            table: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            fin_idle_timeout: 0,
            fin_hard_timeout: 0,
            priority: 0x8000,
            cookie: 0,
            send_flow_rem: false,
            delete_learned: false,
            specs: Vec::new(),
        }
    }
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `output:PORT` (also `in_port`, `NORMAL`, `LOCAL`, `CONTROLLER` via [`port`]).
    Output(u32),
    /// `controller(reason=...,userdata=...)` (NXAST_CONTROLLER2).
    Controller {
        /// Bytes of the packet to send (`u16::MAX` = all).
        max_len: u16,
        /// Reason reported in the packet-in.
        reason: PacketInReason,
        /// Opaque bytes delivered with the packet-in.
        userdata: Vec<u8>,
    },
    /// `goto_table:N` (an instruction; always placed after the other actions).
    GotoTable(u8),
    /// `resubmit(port,table)` / `resubmit(port,table,ct)`.
    Resubmit {
        /// Port to pretend the packet came in on (`None` = actual in_port).
        port: Option<u32>,
        /// Table (`None` = current table).
        table: Option<u8>,
        /// Use the conntrack original-direction tuple (`ct`).
        ct: bool,
    },
    /// `set_field:VALUE[/MASK]->FIELD` (covers `load`).
    SetField(MatchField),
    /// `move:SRC->DST` (OF1.5 copy_field).
    Move {
        /// Source bits.
        src: SubField,
        /// Destination bits.
        dst: SubField,
    },
    /// `push_vlan:ETHERTYPE`.
    PushVlan(u16),
    /// `pop_vlan`.
    PopVlan,
    /// `dec_ttl`.
    DecTtl,
    /// `group:ID`.
    Group(u32),
    /// `meter:ID`.
    Meter(u32),
    /// `ct(...)`.
    Ct(Ct),
    /// `ct_clear`.
    CtClear,
    /// `learn(...)`.
    Learn(Learn),
    /// `conjunction(id,clause/n_clauses)`; `clause` is 1-based as in ovs-ofctl.
    Conjunction {
        /// Conjunction id.
        id: u32,
        /// This clause (1-based).
        clause: u8,
        /// Number of clauses.
        n_clauses: u8,
    },
    /// `note:XX.XX...`.
    Note(Vec<u8>),
    /// An action this module does not model, kept as its raw bytes.
    Unknown(Vec<u8>),
}

impl Action {
    /// `set_field:VALUE->FIELD` (exact).
    pub fn set_field(field: Field, value: u128) -> Self {
        Self::SetField(MatchField::exact(field, value))
    }
    /// `load:VALUE->FIELD[start..end]` as a masked set-field.
    pub fn load(dst: SubField, value: u128) -> Self {
        let width = if dst.n_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << dst.n_bits) - 1
        };
        // Bits beyond 128 do not exist: shifting them out leaves nothing.
        let shift = |v: u128| v.checked_shl(u32::from(dst.ofs)).unwrap_or(0);
        let mask = shift(width);
        let all = field_all_ones(dst.field);
        if mask == all {
            Self::SetField(MatchField::exact(dst.field, value & all))
        } else {
            Self::SetField(MatchField::masked(dst.field, shift(value & width), mask))
        }
    }
    /// Sets the VLAN id of a tagged packet (`set_field:0x1000|vid->vlan_vid`).
    pub fn set_vlan_vid(vid: u16) -> Self {
        Self::set_field(Field::VlanVid, u128::from(0x1000 | (vid & 0xfff)))
    }
    /// `push_vlan:0x8100`.
    pub fn push_vlan() -> Self {
        Self::PushVlan(0x8100)
    }
    /// `controller` with a reason and userdata.
    pub fn controller(reason: PacketInReason, userdata: Vec<u8>) -> Self {
        Self::Controller {
            max_len: u16::MAX,
            reason,
            userdata,
        }
    }
    /// `note:` with the bytes zero-padded the way OVS stores them.
    pub fn note(bytes: &[u8]) -> Self {
        let mut v = bytes.to_vec();
        let total = round8(10 + v.len()).max(16);
        v.resize(total - 10, 0);
        Self::Note(v)
    }
    /// `resubmit(,table)`.
    pub fn resubmit_table(table: u8) -> Self {
        Self::Resubmit {
            port: None,
            table: Some(table),
            ct: false,
        }
    }
}

fn field_all_ones(f: Field) -> u128 {
    let bits = f.len() * 8;
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn put_nx_header(out: &mut BytesMut, subtype: u16) -> usize {
    let start = out.len();
    out.put_u16(OFPAT_EXPERIMENTER);
    out.put_u16(0);
    out.put_u32(NX_VENDOR_ID);
    out.put_u16(subtype);
    start
}

fn finish(out: &mut BytesMut, start: usize) {
    pad8(out, start);
    patch_len(out, start + 2, start);
}

fn put_prop(out: &mut BytesMut, ty: u16, value: &[u8]) {
    let start = out.len();
    out.put_u16(ty);
    out.put_u16(u16::try_from(4 + value.len()).unwrap_or(u16::MAX));
    out.put_slice(value);
    pad8(out, start);
}

/// Encodes a list of actions (without instructions).
pub(crate) fn encode_actions(actions: &[Action], out: &mut BytesMut) {
    encode_actions_for(actions, false, out);
}

/// Encodes a list of actions in their OpenFlow 1.5 form, or with `of13` in
/// their OpenFlow 1.3 form (`move` as `NXAST_REG_MOVE`, not copy-field).
fn encode_actions_for(actions: &[Action], of13: bool, out: &mut BytesMut) {
    for a in actions {
        encode_action(a, of13, out);
    }
}

/// Whether `actions` have an OpenFlow 1.3 form here: all but `meter` (an
/// instruction, not an action, in 1.3) and masked `set_field`s whose mask
/// is not one run of at most 64 bits (1.3 has no masked set-field; they go
/// as `NXAST_REG_LOAD`).
pub(crate) fn actions_encodable_as_13(actions: &[Action]) -> bool {
    actions.iter().all(|a| match a {
        Action::Meter(_) => false,
        Action::SetField(mf) => mf.mask.is_none_or(|m| reg_load_bits(m).is_some()),
        Action::Ct(ct) => actions_encodable_as_13(&ct.exec),
        _ => true,
    })
}

/// (ofs, n_bits) of a mask that is one run of 1 to 64 bits.
fn reg_load_bits(mask: u128) -> Option<(u32, u32)> {
    let ofs = mask.trailing_zeros();
    let n_bits = mask.count_ones();
    (mask != 0 && n_bits <= 64 && (mask >> ofs).trailing_ones() == n_bits).then_some((ofs, n_bits))
}

fn encode_action(a: &Action, of13: bool, out: &mut BytesMut) {
    match a {
        Action::Output(p) => {
            out.put_u16(OFPAT_OUTPUT);
            out.put_u16(16);
            out.put_u32(*p);
            out.put_u16(if *p == port::CONTROLLER { u16::MAX } else { 0 });
            out.put_bytes(0, 6);
        }
        Action::Controller {
            max_len,
            reason: PacketInReason::Action,
            userdata,
        } if userdata.is_empty() => {
            // Like OVS: a plain output to CONTROLLER when nothing else is needed.
            out.put_u16(OFPAT_OUTPUT);
            out.put_u16(16);
            out.put_u32(port::CONTROLLER);
            out.put_u16(*max_len);
            out.put_bytes(0, 6);
        }
        Action::Controller {
            max_len,
            reason,
            userdata,
        } => {
            let s = put_nx_header(out, NXAST_CONTROLLER2);
            out.put_bytes(0, 6);
            if *max_len != u16::MAX {
                put_prop(out, 0, &max_len.to_be_bytes());
            }
            if *reason != PacketInReason::Action {
                put_prop(out, 2, &[reason.to_u8()]);
            }
            if !userdata.is_empty() {
                put_prop(out, 3, userdata);
            }
            finish(out, s);
        }
        Action::GotoTable(_) => {}
        Action::Resubmit { port, table, ct } => {
            let s = put_nx_header(
                out,
                if *ct {
                    NXAST_RESUBMIT_TABLE_CT
                } else {
                    NXAST_RESUBMIT_TABLE
                },
            );
            out.put_u16(port_to_16(port.unwrap_or(port::IN_PORT)));
            out.put_u8(table.unwrap_or(0xff));
            out.put_bytes(0, 3);
            finish(out, s);
        }
        Action::SetField(mf)
            if of13 && let Some((ofs, n_bits)) = mf.mask.and_then(reg_load_bits) =>
        {
            // NXAST_REG_LOAD: ofs_nbits, dst, value (callers checked
            // actions_encodable_as_13, so the mask is one run).
            let s = put_nx_header(out, NXAST_REG_LOAD);
            out.put_u16(u16::try_from((ofs << 6) | (n_bits - 1)).unwrap_or(u16::MAX));
            mf.field.put_nxm_header(out);
            out.put_u64(
                u64::try_from((mf.value & mf.mask.unwrap_or(0)) >> ofs).unwrap_or(u64::MAX),
            );
            finish(out, s);
        }
        Action::SetField(mf) => {
            let s = out.len();
            out.put_u16(OFPAT_SET_FIELD);
            out.put_u16(0);
            mf.encode(out);
            finish(out, s);
        }
        Action::Move { src, dst } if of13 => {
            let s = put_nx_header(out, NXAST_REG_MOVE);
            out.put_u16(dst.n_bits);
            out.put_u16(src.ofs);
            out.put_u16(dst.ofs);
            src.field.put_nxm_header(out);
            dst.field.put_nxm_header(out);
            finish(out, s);
        }
        Action::Move { src, dst } => {
            let s = out.len();
            out.put_u16(OFPAT_COPY_FIELD);
            out.put_u16(0);
            out.put_u16(dst.n_bits);
            out.put_u16(src.ofs);
            out.put_u16(dst.ofs);
            out.put_u16(0);
            src.field.put_oxm_header(out, false);
            dst.field.put_oxm_header(out, false);
            finish(out, s);
        }
        Action::PushVlan(et) => {
            out.put_u16(OFPAT_PUSH_VLAN);
            out.put_u16(8);
            out.put_u16(*et);
            out.put_u16(0);
        }
        Action::PopVlan => {
            out.put_u16(OFPAT_POP_VLAN);
            out.put_u16(8);
            out.put_u32(0);
        }
        Action::DecTtl => {
            out.put_u16(OFPAT_DEC_NW_TTL);
            out.put_u16(8);
            out.put_u32(0);
        }
        Action::Group(g) => {
            out.put_u16(OFPAT_GROUP);
            out.put_u16(8);
            out.put_u32(*g);
        }
        Action::Meter(m) => {
            out.put_u16(OFPAT_METER);
            out.put_u16(8);
            out.put_u32(*m);
        }
        Action::Ct(ct) => {
            let s = put_nx_header(out, NXAST_CT);
            let mut flags = 0u16;
            if ct.commit {
                flags |= 1;
            }
            if ct.force {
                flags |= 2;
            }
            out.put_u16(flags);
            match ct.zone {
                CtZone::Immediate(z) => {
                    out.put_u32(0);
                    out.put_u16(z);
                }
                CtZone::Field(sf) => {
                    sf.field.put_nxm_header(out);
                    out.put_u16(sf.ofs_nbits());
                }
            }
            out.put_u8(ct.table.unwrap_or(0xff));
            out.put_bytes(0, 3);
            out.put_u16(ct.alg);
            if let Some(nat) = &ct.nat {
                encode_nat(nat, out);
            }
            encode_actions_for(&ct.exec, of13, out);
            finish(out, s);
        }
        Action::CtClear => {
            let s = put_nx_header(out, NXAST_CT_CLEAR);
            out.put_bytes(0, 6);
            finish(out, s);
        }
        Action::Learn(l) => encode_learn(l, out),
        Action::Conjunction {
            id,
            clause,
            n_clauses,
        } => {
            let s = put_nx_header(out, NXAST_CONJUNCTION);
            out.put_u8(clause.saturating_sub(1));
            out.put_u8(*n_clauses);
            out.put_u32(*id);
            finish(out, s);
        }
        Action::Note(bytes) => {
            let s = put_nx_header(out, NXAST_NOTE);
            out.put_slice(bytes);
            if out.len() - s < 16 {
                out.put_bytes(0, 16 - (out.len() - s));
            }
            finish(out, s);
        }
        Action::Unknown(raw) => out.put_slice(raw),
    }
}

fn encode_nat(nat: &Nat, out: &mut BytesMut) {
    let s = put_nx_header(out, NXAST_NAT);
    out.put_u16(0);
    let mut flags = 0u16;
    match nat.dst {
        Some(false) => flags |= 1,
        Some(true) => flags |= 2,
        None => {}
    }
    if nat.persistent {
        flags |= 4;
    }
    if nat.hash {
        flags |= 8;
    }
    if nat.random {
        flags |= 16;
    }
    out.put_u16(flags);
    let mut present = 0u16;
    let range_at = out.len();
    out.put_u16(0);
    if let Some((min, max)) = nat.addrs {
        match (min, max) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                present |= 1;
                out.put_u32(u32::from(a));
                if a != b {
                    present |= 2;
                    out.put_u32(u32::from(b));
                }
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                present |= 4;
                out.put_slice(&a.octets());
                if a != b {
                    present |= 8;
                    out.put_slice(&b.octets());
                }
            }
            _ => {}
        }
    }
    if let Some((a, b)) = nat.ports {
        present |= 16;
        out.put_u16(a);
        if a != b {
            present |= 32;
            out.put_u16(b);
        }
    }
    super::wire::patch_u16(out, range_at, present);
    finish(out, s);
}

fn encode_learn(l: &Learn, out: &mut BytesMut) {
    let s = put_nx_header(out, NXAST_LEARN);
    out.put_u16(l.idle_timeout);
    out.put_u16(l.hard_timeout);
    out.put_u16(l.priority);
    out.put_u64(l.cookie);
    let mut flags = 0u16;
    if l.send_flow_rem {
        flags |= 1;
    }
    if l.delete_learned {
        flags |= 2;
    }
    out.put_u16(flags);
    out.put_u8(l.table);
    out.put_u8(0);
    out.put_u16(l.fin_idle_timeout);
    out.put_u16(l.fin_hard_timeout);
    for spec in &l.specs {
        let put_sf = |out: &mut BytesMut, sf: &SubField| {
            sf.field.put_nxm_header(out);
            out.put_u16(sf.ofs);
        };
        let put_imm = |out: &mut BytesMut, v: u128, n_bits: u16| {
            let n = usize::from(n_bits.div_ceil(16)) * 2;
            super::field::put_value(out, v, n.min(16));
        };
        match spec {
            LearnSpec::MatchField { dst, src } => {
                out.put_u16(dst.n_bits);
                put_sf(out, src);
                put_sf(out, dst);
            }
            LearnSpec::MatchValue { dst, value } => {
                out.put_u16(dst.n_bits | (1 << 13));
                put_imm(out, *value, dst.n_bits);
                put_sf(out, dst);
            }
            LearnSpec::LoadField { src, dst } => {
                out.put_u16(dst.n_bits | (1 << 11));
                put_sf(out, src);
                put_sf(out, dst);
            }
            LearnSpec::LoadValue { dst, value } => {
                out.put_u16(dst.n_bits | (1 << 13) | (1 << 11));
                put_imm(out, *value, dst.n_bits);
                put_sf(out, dst);
            }
            LearnSpec::Output { src } => {
                out.put_u16(src.n_bits | (2 << 11));
                put_sf(out, src);
            }
        }
    }
    finish(out, s);
}

/// Decodes a list of actions filling `r`.
pub(crate) fn decode_actions(r: &mut Reader<'_>) -> DResult<Vec<Action>> {
    let mut v = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.peek_u16_at(2)?);
        if len < 8 || len % 8 != 0 {
            return Err(DecodeError::BadLength {
                what: "action",
                len,
            });
        }
        let mut a = r.sub(len, "action")?;
        v.push(decode_action(&mut a)?);
    }
    Ok(v)
}

fn read_sub(r: &mut Reader<'_>, n_bits: u16) -> DResult<SubField> {
    let (field, _, _) = Field::read_header(r)?;
    let ofs = r.u16()?;
    Ok(SubField { field, ofs, n_bits })
}

fn decode_action(r: &mut Reader<'_>) -> DResult<Action> {
    let raw = r.buf.to_vec();
    let ty = r.u16()?;
    let _len = r.u16()?;
    Ok(match ty {
        OFPAT_OUTPUT => {
            let p = r.u32()?;
            let max_len = r.u16()?;
            if p == port::CONTROLLER && max_len != u16::MAX {
                Action::Controller {
                    max_len,
                    reason: PacketInReason::Action,
                    userdata: Vec::new(),
                }
            } else {
                Action::Output(p)
            }
        }
        OFPAT_PUSH_VLAN => Action::PushVlan(r.u16()?),
        OFPAT_POP_VLAN => Action::PopVlan,
        OFPAT_DEC_NW_TTL => Action::DecTtl,
        OFPAT_GROUP => Action::Group(r.u32()?),
        OFPAT_METER => Action::Meter(r.u32()?),
        OFPAT_SET_FIELD => Action::SetField(MatchField::decode(r)?),
        OFPAT_COPY_FIELD => {
            let n_bits = r.u16()?;
            let src_ofs = r.u16()?;
            let dst_ofs = r.u16()?;
            r.skip(2)?;
            let (sf, _, _) = Field::read_header(r)?;
            let (df, _, _) = Field::read_header(r)?;
            Action::Move {
                src: SubField {
                    field: sf,
                    ofs: src_ofs,
                    n_bits,
                },
                dst: SubField {
                    field: df,
                    ofs: dst_ofs,
                    n_bits,
                },
            }
        }
        OFPAT_EXPERIMENTER => {
            let vendor = r.u32()?;
            if vendor != NX_VENDOR_ID {
                return Ok(Action::Unknown(raw));
            }
            let sub = r.u16()?;
            decode_nx(sub, r, raw)?
        }
        _ => Action::Unknown(raw),
    })
}

fn decode_nx(sub: u16, r: &mut Reader<'_>, raw: Vec<u8>) -> DResult<Action> {
    Ok(match sub {
        NXAST_RESUBMIT | NXAST_RESUBMIT_TABLE | NXAST_RESUBMIT_TABLE_CT => {
            let p = port_from_16(r.u16()?);
            let t = if sub == NXAST_RESUBMIT { 0xff } else { r.u8()? };
            Action::Resubmit {
                port: (p != port::IN_PORT).then_some(p),
                table: (t != 0xff).then_some(t),
                ct: sub == NXAST_RESUBMIT_TABLE_CT,
            }
        }
        NXAST_REG_MOVE => {
            let n_bits = r.u16()?;
            let src_ofs = r.u16()?;
            let dst_ofs = r.u16()?;
            let (sf, _, _) = Field::read_header(r)?;
            let (df, _, _) = Field::read_header(r)?;
            Action::Move {
                src: SubField {
                    field: sf,
                    ofs: src_ofs,
                    n_bits,
                },
                dst: SubField {
                    field: df,
                    ofs: dst_ofs,
                    n_bits,
                },
            }
        }
        NXAST_REG_LOAD => {
            let ofs_nbits = r.u16()?;
            let (f, _, _) = Field::read_header(r)?;
            let value = r.u64()?;
            let sf = SubField {
                field: f,
                ofs: ofs_nbits >> 6,
                n_bits: (ofs_nbits & 0x3f) + 1,
            };
            Action::load(sf, u128::from(value))
        }
        NXAST_NOTE => Action::Note(r.buf.to_vec()),
        NXAST_DEC_TTL => Action::DecTtl,
        NXAST_CONTROLLER => {
            let max_len = r.u16()?;
            let _id = r.u16()?;
            let reason = PacketInReason::from_u8(r.u8()?);
            Action::Controller {
                max_len,
                reason,
                userdata: Vec::new(),
            }
        }
        NXAST_CONTROLLER2 => {
            r.skip(6)?;
            let mut max_len = u16::MAX;
            let mut reason = PacketInReason::Action;
            let mut userdata = Vec::new();
            while r.remaining() >= 4 {
                let ty = r.u16()?;
                let len = usize::from(r.u16()?);
                if len < 4 {
                    return Err(DecodeError::BadLength {
                        what: "controller2 property",
                        len,
                    });
                }
                let mut v = r.sub(len - 4, "controller2 property")?;
                r.skip((round8(len) - len).min(r.remaining()))?;
                match ty {
                    0 => max_len = v.u16()?,
                    2 => reason = PacketInReason::from_u8(v.u8()?),
                    3 => userdata = v.buf.to_vec(),
                    _ => {}
                }
            }
            Action::Controller {
                max_len,
                reason,
                userdata,
            }
        }
        NXAST_CONJUNCTION => {
            let clause = r.u8()?;
            let n_clauses = r.u8()?;
            let id = r.u32()?;
            Action::Conjunction {
                id,
                clause: clause.saturating_add(1),
                n_clauses,
            }
        }
        NXAST_CT => {
            let flags = r.u16()?;
            let zone_src = r.u32()?;
            let zone_v = r.u16()?;
            let table = r.u8()?;
            r.skip(3)?;
            let alg = r.u16()?;
            let zone = if zone_src == 0 {
                CtZone::Immediate(zone_v)
            } else {
                let mut hb = BytesMut::new();
                hb.put_u32(zone_src);
                let mut hr = Reader::new(&hb, "ct zone field");
                let (f, _, _) = Field::read_header(&mut hr)?;
                CtZone::Field(SubField {
                    field: f,
                    ofs: zone_v >> 6,
                    n_bits: (zone_v & 0x3f) + 1,
                })
            };
            let nested = decode_actions(r)?;
            let mut nat = None;
            let mut exec = Vec::new();
            for a in nested {
                match a {
                    Action::Unknown(raw) if is_nat(&raw) => {
                        nat = Some(decode_nat(&raw)?);
                    }
                    other => exec.push(other),
                }
            }
            Action::Ct(Ct {
                commit: flags & 1 != 0,
                force: flags & 2 != 0,
                zone,
                table: (table != 0xff).then_some(table),
                alg,
                nat,
                exec,
            })
        }
        NXAST_NAT => Action::Unknown(raw),
        NXAST_CT_CLEAR => Action::CtClear,
        NXAST_LEARN => decode_learn(r)?,
        _ => Action::Unknown(raw),
    })
}

fn is_nat(raw: &[u8]) -> bool {
    raw.len() >= 10
        && raw[0..2] == [0xff, 0xff]
        && raw[4..8] == NX_VENDOR_ID.to_be_bytes()
        && raw[8..10] == NXAST_NAT.to_be_bytes()
}

fn decode_nat(raw: &[u8]) -> DResult<Nat> {
    let mut r = Reader::new(raw, "nat");
    r.skip(12)?;
    let flags = r.u16()?;
    let present = r.u16()?;
    let mut nat = Nat {
        dst: if flags & 2 != 0 {
            Some(true)
        } else if flags & 1 != 0 {
            Some(false)
        } else {
            None
        },
        persistent: flags & 4 != 0,
        hash: flags & 8 != 0,
        random: flags & 16 != 0,
        ..Nat::default()
    };
    if present & 1 != 0 {
        let a = IpAddr::V4(r.u32()?.into());
        let b = if present & 2 != 0 {
            IpAddr::V4(r.u32()?.into())
        } else {
            a
        };
        nat.addrs = Some((a, b));
    }
    if present & 4 != 0 {
        let a = IpAddr::V6(get_value(r.bytes(16)?).into());
        let b = if present & 8 != 0 {
            IpAddr::V6(get_value(r.bytes(16)?).into())
        } else {
            a
        };
        nat.addrs = Some((a, b));
    }
    if present & 16 != 0 {
        let a = r.u16()?;
        let b = if present & 32 != 0 { r.u16()? } else { a };
        nat.ports = Some((a, b));
    }
    Ok(nat)
}

fn decode_learn(r: &mut Reader<'_>) -> DResult<Action> {
    let idle_timeout = r.u16()?;
    let hard_timeout = r.u16()?;
    let priority = r.u16()?;
    let cookie = r.u64()?;
    let flags = r.u16()?;
    let table = r.u8()?;
    r.skip(1)?;
    let fin_idle_timeout = r.u16()?;
    let fin_hard_timeout = r.u16()?;
    let mut specs = Vec::new();
    while r.remaining() >= 2 {
        let h = r.u16()?;
        if h == 0 {
            break;
        }
        let n_bits = h & 0x3ff;
        let src_imm = h & (1 << 13) != 0;
        let dst_type = (h >> 11) & 3;
        let mut imm = 0;
        let mut src = None;
        if src_imm {
            let n = usize::from(n_bits.div_ceil(16)) * 2;
            imm = get_value(r.bytes(n)?);
        } else {
            src = Some(read_sub(r, n_bits)?);
        }
        let spec = match (dst_type, src) {
            (0, Some(src)) => LearnSpec::MatchField {
                dst: read_sub(r, n_bits)?,
                src,
            },
            (0, None) => LearnSpec::MatchValue {
                dst: read_sub(r, n_bits)?,
                value: imm,
            },
            (1, Some(src)) => LearnSpec::LoadField {
                src,
                dst: read_sub(r, n_bits)?,
            },
            (1, None) => LearnSpec::LoadValue {
                dst: read_sub(r, n_bits)?,
                value: imm,
            },
            (2, Some(src)) => LearnSpec::Output { src },
            _ => {
                return Err(DecodeError::Unsupported {
                    what: "learn spec",
                    detail: format!("{h:#x}"),
                });
            }
        };
        specs.push(spec);
    }
    Ok(Action::Learn(Learn {
        table,
        idle_timeout,
        hard_timeout,
        fin_idle_timeout,
        fin_hard_timeout,
        priority,
        cookie,
        send_flow_rem: flags & 1 != 0,
        delete_learned: flags & 2 != 0,
        specs,
    }))
}

fn hex_dotted(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(".")
}

fn fmt_sub_value(sf: &SubField, v: u128) -> String {
    if sf.ofs == 0
        && sf.n_bits == sf.field.nxm_bits()
        && sf.field.nxm_bits() as usize == sf.field.len() * 8
    {
        format!(
            "{}={}",
            sf.field.name(),
            super::field::fmt_value(sf.field, v)
        )
    } else {
        format!("{sf}={v:#x}")
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nat")?;
        let mut parts = Vec::new();
        if let Some(d) = self.dst {
            let mut s = String::from(if d { "dst=" } else { "src=" });
            if let Some((a, b)) = self.addrs {
                let fa = |x: IpAddr| match x {
                    IpAddr::V6(v) => format!("[{v}]"),
                    IpAddr::V4(v) => v.to_string(),
                };
                s.push_str(&fa(a));
                if a != b {
                    s.push('-');
                    s.push_str(&fa(b));
                }
            }
            if let Some((a, b)) = self.ports {
                s.push_str(&format!(":{a}"));
                if a != b {
                    s.push_str(&format!("-{b}"));
                }
            }
            parts.push(s);
        }
        if self.persistent {
            parts.push("persistent".into());
        }
        if self.hash {
            parts.push("hash".into());
        }
        if self.random {
            parts.push("random".into());
        }
        if !parts.is_empty() {
            write!(f, "({})", parts.join(","))?;
        }
        Ok(())
    }
}

impl fmt::Display for LearnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LearnSpec::MatchField { dst, src } => {
                if dst == src {
                    write!(f, "{dst}")
                } else {
                    write!(f, "{dst}={src}")
                }
            }
            LearnSpec::MatchValue { dst, value } => write!(f, "{}", fmt_sub_value(dst, *value)),
            LearnSpec::LoadField { src, dst } => write!(f, "load:{src}->{dst}"),
            LearnSpec::LoadValue { dst, value } => write!(f, "load:{value:#x}->{dst}"),
            LearnSpec::Output { src } => write!(f, "output:{src}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => match *p {
                port::IN_PORT => write!(f, "IN_PORT"),
                port::NORMAL => write!(f, "NORMAL"),
                port::LOCAL => write!(f, "LOCAL"),
                port::FLOOD => write!(f, "FLOOD"),
                port::ALL => write!(f, "ALL"),
                port::CONTROLLER => write!(f, "CONTROLLER:65535"),
                p => write!(f, "output:{}", port_name(p)),
            },
            Action::Controller {
                max_len,
                reason,
                userdata,
            } => {
                let mut parts = Vec::new();
                if *reason != PacketInReason::Action {
                    parts.push(format!("reason={}", reason.name()));
                }
                if *max_len != u16::MAX {
                    parts.push(format!("max_len={max_len}"));
                }
                if !userdata.is_empty() {
                    parts.push(format!("userdata={}", hex_dotted(userdata)));
                }
                write!(f, "controller({})", parts.join(","))
            }
            Action::GotoTable(t) => write!(f, "goto_table:{t}"),
            Action::Resubmit { port, table, ct } => {
                write!(f, "resubmit(")?;
                if let Some(p) = port {
                    write!(f, "{}", port_name(*p))?;
                }
                write!(f, ",")?;
                if let Some(t) = table {
                    write!(f, "{t}")?;
                }
                if *ct {
                    write!(f, ",ct")?;
                }
                write!(f, ")")
            }
            Action::SetField(mf) => {
                let v = super::field::fmt_value(mf.field, mf.value);
                let v = if mf.field == Field::VlanVid {
                    mf.value.to_string()
                } else {
                    v
                };
                match mf.mask {
                    None => write!(f, "set_field:{v}->{}", mf.field.name()),
                    Some(m) => write!(f, "set_field:{:#x}/{m:#x}->{}", mf.value, mf.field.name()),
                }
            }
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::PushVlan(et) => write!(f, "push_vlan:{et:#06x}"),
            Action::PopVlan => write!(f, "pop_vlan"),
            Action::DecTtl => write!(f, "dec_ttl"),
            Action::Group(g) => write!(f, "group:{g}"),
            Action::Meter(m) => write!(f, "meter:{m}"),
            Action::Ct(ct) => {
                let mut parts = Vec::new();
                if ct.commit {
                    parts.push("commit".to_string());
                }
                if ct.force {
                    parts.push("force".to_string());
                }
                if let Some(t) = ct.table {
                    parts.push(format!("table={t}"));
                }
                match ct.zone {
                    CtZone::Immediate(0) => {}
                    CtZone::Immediate(z) => parts.push(format!("zone={z}")),
                    CtZone::Field(sf) => parts.push(format!("zone={sf}")),
                }
                if let Some(n) = &ct.nat {
                    parts.push(n.to_string());
                }
                if !ct.exec.is_empty() {
                    let e: Vec<String> = ct.exec.iter().map(|a| a.to_string()).collect();
                    parts.push(format!("exec({})", e.join(",")));
                }
                if ct.alg != 0 {
                    parts.push(format!("alg={}", ct.alg));
                }
                write!(f, "ct({})", parts.join(","))
            }
            Action::CtClear => write!(f, "ct_clear"),
            Action::Learn(l) => {
                let mut parts = vec![format!("table={}", l.table)];
                if l.idle_timeout != 0 {
                    parts.push(format!("idle_timeout={}", l.idle_timeout));
                }
                if l.hard_timeout != 0 {
                    parts.push(format!("hard_timeout={}", l.hard_timeout));
                }
                if l.fin_idle_timeout != 0 {
                    parts.push(format!("fin_idle_timeout={}", l.fin_idle_timeout));
                }
                if l.fin_hard_timeout != 0 {
                    parts.push(format!("fin_hard_timeout={}", l.fin_hard_timeout));
                }
                if l.priority != 0x8000 {
                    parts.push(format!("priority={}", l.priority));
                }
                if l.send_flow_rem {
                    parts.push("send_flow_rem".into());
                }
                if l.delete_learned {
                    parts.push("delete_learned".into());
                }
                if l.cookie != 0 {
                    parts.push(format!("cookie={:#x}", l.cookie));
                }
                parts.extend(l.specs.iter().map(|s| s.to_string()));
                write!(f, "learn({})", parts.join(","))
            }
            Action::Conjunction {
                id,
                clause,
                n_clauses,
            } => write!(f, "conjunction({id},{clause}/{n_clauses})"),
            Action::Note(b) => write!(f, "note:{}", hex_dotted(b)),
            Action::Unknown(raw) => write!(f, "unknown_action({})", hex_dotted(raw)),
        }
    }
}

/// Formats an action list ovs-ofctl style (`drop` when empty).
pub fn fmt_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "drop".into();
    }
    // ovs-ofctl wants meter first and goto_table last.
    let mut v: Vec<String> = actions
        .iter()
        .filter(|a| matches!(a, Action::Meter(_)))
        .map(|a| a.to_string())
        .collect();
    v.extend(
        actions
            .iter()
            .filter(|a| !matches!(a, Action::GotoTable(_) | Action::Meter(_)))
            .map(|a| a.to_string()),
    );
    v.extend(
        actions
            .iter()
            .filter(|a| matches!(a, Action::GotoTable(_)))
            .map(|a| a.to_string()),
    );
    v.join(",")
}

const OFPIT_GOTO_TABLE: u16 = 1;
const OFPIT_APPLY_ACTIONS: u16 = 4;

/// Encodes the instructions for `actions`: apply-actions with every action
/// but `goto_table`, then goto-table; in the OpenFlow 1.5 form, or 1.3 with
/// `of13`.
pub(crate) fn encode_instructions_for(actions: &[Action], of13: bool, out: &mut BytesMut) {
    let apply: Vec<&Action> = actions
        .iter()
        .filter(|a| !matches!(a, Action::GotoTable(_)))
        .collect();
    if !apply.is_empty() {
        let s = out.len();
        out.put_u16(OFPIT_APPLY_ACTIONS);
        out.put_u16(0);
        out.put_u32(0);
        for a in apply {
            encode_action(a, of13, out);
        }
        patch_len(out, s + 2, s);
    }
    for a in actions {
        if let Action::GotoTable(t) = a {
            out.put_u16(OFPIT_GOTO_TABLE);
            out.put_u16(8);
            out.put_u8(*t);
            out.put_bytes(0, 3);
        }
    }
}

/// Decodes instructions into the flat action list used by [`Action`].
pub(crate) fn decode_instructions(r: &mut Reader<'_>) -> DResult<Vec<Action>> {
    let mut v = Vec::new();
    let mut goto = None;
    while !r.is_empty() {
        let ty = r.peek_u16()?;
        let len = usize::from(r.peek_u16_at(2)?);
        if len < 8 || len % 8 != 0 {
            return Err(DecodeError::BadLength {
                what: "instruction",
                len,
            });
        }
        let mut i = r.sub(len, "instruction")?;
        i.skip(4)?;
        match ty {
            OFPIT_GOTO_TABLE => goto = Some(i.u8()?),
            OFPIT_APPLY_ACTIONS => {
                i.skip(4)?;
                v.extend(decode_actions(&mut i)?);
            }
            other => {
                return Err(DecodeError::Unsupported {
                    what: "instruction",
                    detail: other.to_string(),
                });
            }
        }
    }
    if let Some(t) = goto {
        v.push(Action::GotoTable(t));
    }
    Ok(v)
}
