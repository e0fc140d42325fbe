//! Flows, flow_mods and flow statistics.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::action::{Action, decode_instructions, encode_instructions_for, fmt_actions};
use super::field::{MatchField, decode_match, encode_match, encode_match_for, fmt_match};
use super::wire::{DResult, DecodeError, Reader};

/// `table_id` meaning "all tables" in deletes and statistics requests.
pub const ALL_TABLES: u8 = 0xff;
/// `out_group` / `out_port` wildcard.
pub const ANY: u32 = 0xffff_ffff;
/// Default flow priority (as in ovs-ofctl).
pub const DEFAULT_PRIORITY: u16 = 0x8000;

/// Flow flags (`OFPFF_*`).
pub mod flow_flags {
    /// Send a flow-removed message when the flow expires or is deleted.
    pub const SEND_FLOW_REM: u16 = 1 << 0;
    /// Refuse to add an overlapping flow.
    pub const CHECK_OVERLAP: u16 = 1 << 1;
    /// Reset counters on modify.
    pub const RESET_COUNTS: u16 = 1 << 2;
    /// Do not count packets.
    pub const NO_PKT_COUNTS: u16 = 1 << 3;
    /// Do not count bytes.
    pub const NO_BYT_COUNTS: u16 = 1 << 4;
}

/// One flow: where it lives, what it matches and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Flow table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie.
    pub cookie: u64,
    /// Idle timeout in seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout in seconds (0 = none).
    pub hard_timeout: u16,
    /// `OFPFF_*` flags (see [`flow_flags`]).
    pub flags: u16,
    /// Eviction importance.
    pub importance: u16,
    /// Match fields.
    pub matches: Vec<MatchField>,
    /// Actions (empty = drop). `goto_table` goes last.
    pub actions: Vec<Action>,
}

impl Flow {
    /// An empty flow (matches everything, drops) in `table` at `priority`.
    pub fn new(table: u8, priority: u16) -> Self {
        Self {
            table,
            priority,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            flags: 0,
            importance: 0,
            matches: Vec::new(),
            actions: Vec::new(),
        }
    }
    /// Sets the cookie.
    pub fn cookie(mut self, cookie: u64) -> Self {
        self.cookie = cookie;
        self
    }
    /// Adds a match field.
    pub fn matching(mut self, m: MatchField) -> Self {
        self.matches.push(m);
        self
    }
    /// Appends an action.
    pub fn action(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }
    /// Sets idle and hard timeouts.
    pub fn timeouts(mut self, idle: u16, hard: u16) -> Self {
        self.idle_timeout = idle;
        self.hard_timeout = hard;
        self
    }
    /// The same flow with its match fields in a fixed order (by [`super::Field`]),
    /// so a flow read back from the switch (which reorders fields) compares
    /// equal to the one that was installed.
    pub fn canonical(mut self) -> Self {
        self.matches.sort_by_key(|m| m.field);
        self
    }
    /// The match part ovs-ofctl style (`priority=..,` included, no table/cookie).
    pub fn match_string(&self) -> String {
        let m = fmt_match(&self.matches);
        if m.is_empty() {
            format!("priority={}", self.priority)
        } else {
            format!("priority={},{m}", self.priority)
        }
    }
}

impl fmt::Display for Flow {
    /// `ovs-ofctl add-flow` syntax, e.g.
    /// `table=0,priority=100,cookie=0x1,tcp,nw_dst=10.96.0.1 actions=ct(table=1)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table={},", self.table)?;
        if self.cookie != 0 {
            write!(f, "cookie={:#x},", self.cookie)?;
        }
        if self.idle_timeout != 0 {
            write!(f, "idle_timeout={},", self.idle_timeout)?;
        }
        if self.hard_timeout != 0 {
            write!(f, "hard_timeout={},", self.hard_timeout)?;
        }
        if self.importance != 0 {
            write!(f, "importance={},", self.importance)?;
        }
        for (bit, name) in [
            (flow_flags::SEND_FLOW_REM, "send_flow_rem"),
            (flow_flags::CHECK_OVERLAP, "check_overlap"),
            (flow_flags::RESET_COUNTS, "reset_counts"),
            (flow_flags::NO_PKT_COUNTS, "no_packet_counts"),
            (flow_flags::NO_BYT_COUNTS, "no_byte_counts"),
        ] {
            if self.flags & bit != 0 {
                write!(f, "{name},")?;
            }
        }
        write!(
            f,
            "{} actions={}",
            self.match_string(),
            fmt_actions(&self.actions)
        )
    }
}

/// Flow-mod command (`OFPFC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowModCommand {
    /// Add (replacing an identical match+priority).
    Add,
    /// Modify all matching flows.
    Modify,
    /// Modify the flow with exactly this match and priority.
    ModifyStrict,
    /// Delete all matching flows.
    Delete,
    /// Delete the flow with exactly this match and priority.
    DeleteStrict,
}

impl FlowModCommand {
    fn to_u8(self) -> u8 {
        match self {
            Self::Add => 0,
            Self::Modify => 1,
            Self::ModifyStrict => 2,
            Self::Delete => 3,
            Self::DeleteStrict => 4,
        }
    }
    fn from_u8(v: u8) -> DResult<Self> {
        Ok(match v {
            0 => Self::Add,
            1 => Self::Modify,
            2 => Self::ModifyStrict,
            3 => Self::Delete,
            4 => Self::DeleteStrict,
            _ => {
                return Err(DecodeError::Unsupported {
                    what: "flow_mod command",
                    detail: v.to_string(),
                });
            }
        })
    }
    /// ovs-ofctl verb.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Modify => "modify",
            Self::ModifyStrict => "modify_strict",
            Self::Delete => "delete",
            Self::DeleteStrict => "delete_strict",
        }
    }
}

/// An OFPT_FLOW_MOD.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowMod {
    /// What to do.
    pub command: FlowModCommand,
    /// The flow (for deletes: table may be [`ALL_TABLES`], actions ignored).
    pub flow: Flow,
    /// Cookie mask for modify/delete (0 = cookie ignored).
    pub cookie_mask: u64,
    /// Delete only flows that output to this port ([`ANY`] = no filter).
    pub out_port: u32,
    /// Delete only flows that use this group ([`ANY`] = no filter).
    pub out_group: u32,
}

impl FlowMod {
    fn with(command: FlowModCommand, flow: Flow) -> Self {
        Self {
            command,
            flow,
            cookie_mask: 0,
            out_port: ANY,
            out_group: ANY,
        }
    }
    /// Add `flow`.
    pub fn add(flow: Flow) -> Self {
        Self::with(FlowModCommand::Add, flow)
    }
    /// Replace the actions of every flow matching `flow`'s match (non-strict).
    pub fn modify(flow: Flow) -> Self {
        Self::with(FlowModCommand::Modify, flow)
    }
    /// Replace the actions of the flow with exactly `flow`'s match and priority.
    pub fn modify_strict(flow: Flow) -> Self {
        Self::with(FlowModCommand::ModifyStrict, flow)
    }
    /// Delete flows in `table` (or [`ALL_TABLES`]) matching `matches` (non-strict).
    pub fn delete(table: u8, matches: Vec<MatchField>) -> Self {
        let mut f = Flow::new(table, 0);
        f.matches = matches;
        Self::with(FlowModCommand::Delete, f)
    }
    /// Delete exactly the flow with `flow`'s table, match and priority.
    pub fn delete_strict(flow: Flow) -> Self {
        Self::with(FlowModCommand::DeleteStrict, flow)
    }
    /// Delete, in every table, all flows whose cookie matches `cookie/mask`.
    pub fn delete_cookie(cookie: u64, mask: u64) -> Self {
        let mut fm = Self::delete(ALL_TABLES, Vec::new());
        fm.flow.cookie = cookie;
        fm.cookie_mask = mask;
        fm
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        self.encode_body_for(out, true);
    }

    /// The body in its OpenFlow 1.5 (`xregs`) or 1.3 form: the layouts are
    /// the same (1.3 has padding where 1.5 has `importance`) except for how
    /// the match writes registers.
    pub(crate) fn encode_body_for(&self, out: &mut BytesMut, xregs: bool) {
        let f = &self.flow;
        out.put_u64(f.cookie);
        out.put_u64(self.cookie_mask);
        out.put_u8(f.table);
        out.put_u8(self.command.to_u8());
        out.put_u16(f.idle_timeout);
        out.put_u16(f.hard_timeout);
        out.put_u16(f.priority);
        out.put_u32(0xffff_ffff); // buffer_id: none
        out.put_u32(self.out_port);
        out.put_u32(self.out_group);
        out.put_u16(f.flags);
        out.put_u16(f.importance);
        encode_match_for(&f.matches, xregs, out);
        if !matches!(
            self.command,
            FlowModCommand::Delete | FlowModCommand::DeleteStrict
        ) {
            encode_instructions_for(&f.actions, !xregs, out);
        }
    }

    pub(crate) fn decode_body(r: &mut Reader<'_>) -> DResult<Self> {
        let cookie = r.u64()?;
        let cookie_mask = r.u64()?;
        let table = r.u8()?;
        let command = FlowModCommand::from_u8(r.u8()?)?;
        let idle_timeout = r.u16()?;
        let hard_timeout = r.u16()?;
        let priority = r.u16()?;
        let _buffer = r.u32()?;
        let out_port = r.u32()?;
        let out_group = r.u32()?;
        let flags = r.u16()?;
        let importance = r.u16()?;
        let matches = decode_match(r)?;
        let actions = decode_instructions(r)?;
        Ok(Self {
            command,
            flow: Flow {
                table,
                priority,
                cookie,
                idle_timeout,
                hard_timeout,
                flags,
                importance,
                matches,
                actions,
            },
            cookie_mask,
            out_port,
            out_group,
        })
    }
}

impl fmt::Display for FlowMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command {
            FlowModCommand::Add | FlowModCommand::Modify | FlowModCommand::ModifyStrict => {
                write!(f, "{} {}", self.command.verb(), self.flow)
            }
            _ => {
                // `ovs-ofctl del-flows` argument syntax.
                let mut parts = Vec::new();
                if self.flow.table != ALL_TABLES {
                    parts.push(format!("table={}", self.flow.table));
                }
                if self.cookie_mask != 0 {
                    parts.push(format!(
                        "cookie={:#x}/{:#x}",
                        self.flow.cookie, self.cookie_mask
                    ));
                }
                if self.out_port != ANY {
                    parts.push(format!("out_port={}", self.out_port));
                }
                if self.out_group != ANY {
                    parts.push(format!("out_group={}", self.out_group));
                }
                if self.command == FlowModCommand::DeleteStrict {
                    parts.push(format!("priority={}", self.flow.priority));
                }
                let m = fmt_match(&self.flow.matches);
                if !m.is_empty() {
                    parts.push(m);
                }
                write!(f, "{}", self.command.verb())?;
                if !parts.is_empty() {
                    write!(f, " {}", parts.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// Which flows a flow-stats request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowStatsRequest {
    /// Table ([`ALL_TABLES`] = all).
    pub table: u8,
    /// Only flows outputting to this port ([`ANY`] = all).
    pub out_port: u32,
    /// Only flows using this group ([`ANY`] = all).
    pub out_group: u32,
    /// Cookie value.
    pub cookie: u64,
    /// Cookie mask (0 = any cookie).
    pub cookie_mask: u64,
    /// Non-strict match.
    pub matches: Vec<MatchField>,
}

impl Default for FlowStatsRequest {
    fn default() -> Self {
        Self {
            table: ALL_TABLES,
            out_port: ANY,
            out_group: ANY,
            cookie: 0,
            cookie_mask: 0,
            matches: Vec::new(),
        }
    }
}

impl FlowStatsRequest {
    /// Every flow in every table.
    pub fn all() -> Self {
        Self::default()
    }
    /// Flows whose cookie matches `cookie/mask`.
    pub fn cookie(cookie: u64, mask: u64) -> Self {
        Self {
            cookie,
            cookie_mask: mask,
            ..Self::default()
        }
    }
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.table);
        out.put_bytes(0, 3);
        out.put_u32(self.out_port);
        out.put_u32(self.out_group);
        out.put_u32(0);
        out.put_u64(self.cookie);
        out.put_u64(self.cookie_mask);
        encode_match(&self.matches, out);
    }
}

/// One entry of a flow-stats reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowStats {
    /// The flow as installed.
    pub flow: Flow,
    /// Packets matched.
    pub packet_count: u64,
    /// Bytes matched.
    pub byte_count: u64,
    /// Age in seconds.
    pub duration_sec: u32,
    /// Seconds since last hit, if reported.
    pub idle_age: Option<u32>,
}

impl fmt::Display for FlowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n_packets={}, n_bytes={}, {}",
            self.packet_count, self.byte_count, self.flow
        )
    }
}

/// Decodes an OpenFlow 1.5 flow-stats reply body (a list of `ofp15_flow_desc`).
pub(crate) fn decode_flow_stats(r: &mut Reader<'_>) -> DResult<Vec<FlowStats>> {
    let mut v = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.peek_u16()?);
        if len < 24 {
            return Err(DecodeError::BadLength {
                what: "flow stats entry",
                len,
            });
        }
        let mut e = r.sub(len, "flow stats entry")?;
        e.skip(4)?;
        let table = e.u8()?;
        e.skip(1)?;
        let priority = e.u16()?;
        let idle_timeout = e.u16()?;
        let hard_timeout = e.u16()?;
        let flags = e.u16()?;
        let importance = e.u16()?;
        let cookie = e.u64()?;
        let matches = decode_match(&mut e)?;
        // OXS statistics.
        e.skip(2)?;
        let slen = usize::from(e.u16()?);
        if slen < 4 {
            return Err(DecodeError::BadLength {
                what: "OXS stats",
                len: slen,
            });
        }
        let mut s = e.sub(slen - 4, "OXS stats")?;
        e.skip(super::wire::round8(slen) - slen)?;
        let (mut packets, mut bytes, mut dur, mut idle) = (0, 0, 0, None);
        while !s.is_empty() {
            let h = s.u32()?;
            let class = h >> 16;
            let field = (h >> 9) & 0x7f;
            let flen = usize::try_from(h & 0xff).unwrap_or(0);
            let mut val = s.sub(flen, "OXS field")?;
            if class != 0x8002 {
                continue;
            }
            match (field, flen) {
                (0, 8) => dur = val.u32()?,
                (1, 8) => idle = Some(val.u32()?),
                (4, 8) => packets = val.u64()?,
                (5, 8) => bytes = val.u64()?,
                _ => {}
            }
        }
        let actions = decode_instructions(&mut e)?;
        v.push(FlowStats {
            flow: Flow {
                table,
                priority,
                cookie,
                idle_timeout,
                hard_timeout,
                flags,
                importance,
                matches,
                actions,
            },
            packet_count: packets,
            byte_count: bytes,
            duration_sec: dur,
            idle_age: idle,
        });
    }
    Ok(v)
}
