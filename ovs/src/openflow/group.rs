//! Groups (OpenFlow 1.5 group_mod with OVS's selection-method property).

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::action::{Action, decode_actions, encode_actions, fmt_actions};
use super::field::{Field, MatchField};
use super::wire::{DResult, DecodeError, Reader, pad8, patch_len, round8};

/// Group id meaning "all groups" (deletes, statistics).
pub const ALL_GROUPS: u32 = 0xffff_fffc;
/// `command_bucket_id`: first bucket.
pub const BUCKET_FIRST: u32 = 0xffff_fffd;
/// `command_bucket_id`: last bucket.
pub const BUCKET_LAST: u32 = 0xffff_fffe;
/// `command_bucket_id`: all buckets.
pub const BUCKET_ALL: u32 = 0xffff_ffff;

const NTR_VENDOR_ID: u32 = 0x0000_154d;

/// Group type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupType {
    /// Execute every bucket.
    All,
    /// Execute one bucket chosen by the selection method.
    Select,
    /// Exactly one bucket.
    Indirect,
    /// Fast failover.
    FastFailover,
}

impl GroupType {
    fn to_u8(self) -> u8 {
        match self {
            Self::All => 0,
            Self::Select => 1,
            Self::Indirect => 2,
            Self::FastFailover => 3,
        }
    }
    fn from_u8(v: u8) -> DResult<Self> {
        Ok(match v {
            0 => Self::All,
            1 => Self::Select,
            2 => Self::Indirect,
            3 => Self::FastFailover,
            _ => {
                return Err(DecodeError::Unsupported {
                    what: "group type",
                    detail: v.to_string(),
                });
            }
        })
    }
    /// ovs-ofctl name.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Select => "select",
            Self::Indirect => "indirect",
            Self::FastFailover => "ff",
        }
    }
}

/// OVS's select-group `selection_method` property.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectionMethod {
    /// `hash` or `dp_hash`.
    pub method: String,
    /// `selection_method_param`.
    pub param: u64,
    /// Fields hashed (`value` is the mask applied to the packet field).
    pub fields: Vec<MatchField>,
}

impl SelectionMethod {
    /// `selection_method=hash,fields(...)` with whole fields.
    pub fn hash(fields: &[Field]) -> Self {
        Self {
            method: "hash".into(),
            param: 0,
            fields: fields
                .iter()
                .map(|f| {
                    let bits = f.len() * 8;
                    let all = if bits >= 128 {
                        u128::MAX
                    } else {
                        (1u128 << bits) - 1
                    };
                    MatchField::exact(*f, all)
                })
                .collect(),
        }
    }
    /// `selection_method=dp_hash`.
    pub fn dp_hash() -> Self {
        Self {
            method: "dp_hash".into(),
            param: 0,
            fields: Vec::new(),
        }
    }
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Bucket id (ovs-ofctl numbers buckets 0, 1, ... by default).
    pub bucket_id: u32,
    /// Weight (select groups).
    pub weight: Option<u16>,
    /// Watch port (fast failover).
    pub watch_port: Option<u32>,
    /// Actions.
    pub actions: Vec<Action>,
}

impl Bucket {
    /// A bucket with `actions` and no weight.
    pub fn new(bucket_id: u32, actions: Vec<Action>) -> Self {
        Self {
            bucket_id,
            weight: None,
            watch_port: None,
            actions,
        }
    }
    /// Sets the weight.
    pub fn weight(mut self, w: u16) -> Self {
        self.weight = Some(w);
        self
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bucket=bucket_id:{}", self.bucket_id)?;
        if let Some(w) = self.weight {
            write!(f, ",weight:{w}")?;
        }
        if let Some(p) = self.watch_port {
            write!(f, ",watch_port:{p}")?;
        }
        write!(f, ",actions={}", fmt_actions(&self.actions))
    }
}

/// A group as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Group {
    /// Group id.
    pub group_id: u32,
    /// Type.
    pub group_type: GroupType,
    /// Select groups: how to pick a bucket (`None` = OVS default).
    pub selection: Option<SelectionMethod>,
    /// Buckets.
    pub buckets: Vec<Bucket>,
}

impl Group {
    /// A select group with `buckets` given as (weight, actions); bucket ids 0, 1, ...
    pub fn select(group_id: u32, buckets: Vec<(u16, Vec<Action>)>) -> Self {
        Self {
            group_id,
            group_type: GroupType::Select,
            selection: None,
            buckets: buckets
                .into_iter()
                .enumerate()
                .map(|(i, (w, a))| Bucket::new(u32::try_from(i).unwrap_or(0), a).weight(w))
                .collect(),
        }
    }
    /// An `all` or `indirect` group with bucket ids 0, 1, ...
    pub fn new(group_id: u32, group_type: GroupType, buckets: Vec<Vec<Action>>) -> Self {
        Self {
            group_id,
            group_type,
            selection: None,
            buckets: buckets
                .into_iter()
                .enumerate()
                .map(|(i, a)| Bucket::new(u32::try_from(i).unwrap_or(0), a))
                .collect(),
        }
    }
    /// Sets the selection method.
    pub fn selection(mut self, s: SelectionMethod) -> Self {
        self.selection = Some(s);
        self
    }
}

impl fmt::Display for Group {
    /// `ovs-ofctl add-group` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group_id={},type={}",
            self.group_id,
            self.group_type.name()
        )?;
        if let Some(s) = &self.selection {
            write!(f, ",selection_method={}", s.method)?;
            if s.param != 0 {
                write!(f, ",selection_method_param={}", s.param)?;
            }
            if !s.fields.is_empty() {
                let names: Vec<String> = s
                    .fields
                    .iter()
                    .map(|m| {
                        let bits = m.field.len() * 8;
                        let all = if bits >= 128 {
                            u128::MAX
                        } else {
                            (1u128 << bits) - 1
                        };
                        if m.value == all {
                            m.field.name().to_string()
                        } else {
                            format!(
                                "{}={}",
                                m.field.name(),
                                super::field::fmt_value(m.field, m.value)
                            )
                        }
                    })
                    .collect();
                write!(f, ",fields({})", names.join(","))?;
            }
        }
        for b in &self.buckets {
            write!(f, ",{b}")?;
        }
        Ok(())
    }
}

/// Group-mod command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupModCommand {
    /// Add a new group.
    Add,
    /// Replace a group's type, properties and buckets.
    Modify,
    /// Delete.
    Delete,
    /// Insert buckets (before `command_bucket_id`).
    InsertBucket,
    /// Remove the bucket `command_bucket_id`.
    RemoveBucket,
}

impl GroupModCommand {
    fn to_u16(self) -> u16 {
        match self {
            Self::Add => 0,
            Self::Modify => 1,
            Self::Delete => 2,
            Self::InsertBucket => 3,
            Self::RemoveBucket => 5,
        }
    }
    fn from_u16(v: u16) -> DResult<Self> {
        Ok(match v {
            0 => Self::Add,
            1 => Self::Modify,
            2 => Self::Delete,
            3 => Self::InsertBucket,
            5 => Self::RemoveBucket,
            _ => {
                return Err(DecodeError::Unsupported {
                    what: "group_mod command",
                    detail: v.to_string(),
                });
            }
        })
    }
    fn verb(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Modify => "modify",
            Self::Delete => "delete",
            Self::InsertBucket => "insert_buckets",
            Self::RemoveBucket => "remove_buckets",
        }
    }
}

/// An OFPT_GROUP_MOD (OpenFlow 1.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupMod {
    /// Command.
    pub command: GroupModCommand,
    /// The group (for delete only `group_id` matters).
    pub group: Group,
    /// Bucket the insert/remove command refers to ([`BUCKET_LAST`], [`BUCKET_ALL`], or an id).
    pub command_bucket_id: u32,
}

impl GroupMod {
    /// Add `group`.
    pub fn add(group: Group) -> Self {
        Self {
            command: GroupModCommand::Add,
            group,
            command_bucket_id: BUCKET_ALL,
        }
    }
    /// Replace `group`.
    pub fn modify(group: Group) -> Self {
        Self {
            command: GroupModCommand::Modify,
            group,
            command_bucket_id: BUCKET_ALL,
        }
    }
    /// Delete group `group_id` ([`ALL_GROUPS`] = all).
    pub fn delete(group_id: u32) -> Self {
        Self {
            command: GroupModCommand::Delete,
            group: Group::new(group_id, GroupType::All, Vec::new()),
            command_bucket_id: BUCKET_ALL,
        }
    }
    /// Insert `buckets` into group `group_id` before bucket `before` ([`BUCKET_LAST`] = append).
    pub fn insert_buckets(
        group_id: u32,
        group_type: GroupType,
        buckets: Vec<Bucket>,
        before: u32,
    ) -> Self {
        Self {
            command: GroupModCommand::InsertBucket,
            group: Group {
                group_id,
                group_type,
                selection: None,
                buckets,
            },
            command_bucket_id: before,
        }
    }
    /// Remove bucket `bucket_id` ([`BUCKET_ALL`] = all) from group `group_id`.
    pub fn remove_bucket(group_id: u32, group_type: GroupType, bucket_id: u32) -> Self {
        Self {
            command: GroupModCommand::RemoveBucket,
            group: Group::new(group_id, group_type, Vec::new()),
            command_bucket_id: bucket_id,
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        let g = &self.group;
        out.put_u16(self.command.to_u16());
        out.put_u8(g.group_type.to_u8());
        out.put_u8(0);
        out.put_u32(g.group_id);
        let bal_at = out.len();
        out.put_u16(0);
        out.put_u16(0);
        out.put_u32(self.command_bucket_id);
        let bstart = out.len();
        encode_buckets(&g.buckets, out);
        let bal = u16::try_from(out.len() - bstart).unwrap_or(u16::MAX);
        super::wire::patch_u16(out, bal_at, bal);
        if let Some(s) = &g.selection {
            encode_selection(s, out);
        }
    }

    pub(crate) fn decode_body(r: &mut Reader<'_>) -> DResult<Self> {
        let command = GroupModCommand::from_u16(r.u16()?)?;
        let group_type = GroupType::from_u8(r.u8()?)?;
        r.skip(1)?;
        let group_id = r.u32()?;
        let bal = usize::from(r.u16()?);
        r.skip(2)?;
        let command_bucket_id = r.u32()?;
        let mut b = r.sub(bal, "buckets")?;
        let buckets = decode_buckets(&mut b)?;
        let selection = decode_group_props(r)?;
        Ok(Self {
            command,
            group: Group {
                group_id,
                group_type,
                selection,
                buckets,
            },
            command_bucket_id,
        })
    }
}

impl fmt::Display for GroupMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command {
            GroupModCommand::Delete => write!(f, "delete group_id={}", self.group.group_id),
            GroupModCommand::RemoveBucket => write!(
                f,
                "remove_buckets group_id={},command_bucket_id={}",
                self.group.group_id, self.command_bucket_id
            ),
            c => write!(f, "{} {}", c.verb(), self.group),
        }
    }
}

fn encode_buckets(buckets: &[Bucket], out: &mut BytesMut) {
    for b in buckets {
        let s = out.len();
        out.put_u16(0);
        out.put_u16(0);
        out.put_u32(b.bucket_id);
        let a = out.len();
        encode_actions(&b.actions, out);
        let alen = u16::try_from(out.len() - a).unwrap_or(u16::MAX);
        super::wire::patch_u16(out, s + 2, alen);
        if let Some(w) = b.weight {
            out.put_u16(0);
            out.put_u16(8);
            out.put_u16(w);
            out.put_u16(0);
        }
        if let Some(p) = b.watch_port {
            out.put_u16(1);
            out.put_u16(8);
            out.put_u32(p);
        }
        patch_len(out, s, s);
    }
}

fn decode_buckets(r: &mut Reader<'_>) -> DResult<Vec<Bucket>> {
    let mut v = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.peek_u16()?);
        if len < 8 {
            return Err(DecodeError::BadLength {
                what: "bucket",
                len,
            });
        }
        let mut b = r.sub(len, "bucket")?;
        b.skip(2)?;
        let alen = usize::from(b.u16()?);
        let bucket_id = b.u32()?;
        let mut a = b.sub(alen, "bucket actions")?;
        let actions = decode_actions(&mut a)?;
        let mut bucket = Bucket::new(bucket_id, actions);
        while b.remaining() >= 4 {
            let ty = b.u16()?;
            let plen = usize::from(b.u16()?);
            if plen < 4 {
                return Err(DecodeError::BadLength {
                    what: "bucket property",
                    len: plen,
                });
            }
            let mut p = b.sub(plen - 4, "bucket property")?;
            b.skip((round8(plen) - plen).min(b.remaining()))?;
            match ty {
                0 => bucket.weight = Some(p.u16()?),
                1 => bucket.watch_port = Some(p.u32()?),
                _ => {}
            }
        }
        v.push(bucket);
    }
    Ok(v)
}

fn encode_selection(s: &SelectionMethod, out: &mut BytesMut) {
    let start = out.len();
    out.put_u16(0xffff);
    out.put_u16(0);
    out.put_u32(NTR_VENDOR_ID);
    out.put_u32(1); // NTRT_SELECTION_METHOD
    out.put_u32(0);
    let mut name = [0u8; 16];
    let n = s.method.len().min(15);
    name[..n].copy_from_slice(&s.method.as_bytes()[..n]);
    out.put_slice(&name);
    out.put_u64(s.param);
    for f in &s.fields {
        f.encode(out);
    }
    patch_len(out, start + 2, start);
    pad8(out, start);
}

fn decode_group_props(r: &mut Reader<'_>) -> DResult<Option<SelectionMethod>> {
    let mut sel = None;
    while r.remaining() >= 4 {
        let ty = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 4 {
            return Err(DecodeError::BadLength {
                what: "group property",
                len,
            });
        }
        let mut p = r.sub(len - 4, "group property")?;
        r.skip((round8(len) - len).min(r.remaining()))?;
        if ty != 0xffff {
            continue;
        }
        let exp = p.u32()?;
        let exp_type = p.u32()?;
        if exp != NTR_VENDOR_ID || exp_type != 1 {
            continue;
        }
        p.skip(4)?;
        let name = p.bytes(16)?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(16);
        let method = String::from_utf8_lossy(&name[..end]).into_owned();
        let param = p.u64()?;
        let mut fields = Vec::new();
        while !p.is_empty() {
            fields.push(MatchField::decode(&mut p)?);
        }
        sel = Some(SelectionMethod {
            method,
            param,
            fields,
        });
    }
    Ok(sel)
}

/// Decodes an OpenFlow 1.5 group-desc reply body.
pub(crate) fn decode_group_desc(r: &mut Reader<'_>) -> DResult<Vec<Group>> {
    let mut v = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.peek_u16()?);
        if len < 16 {
            return Err(DecodeError::BadLength {
                what: "group desc",
                len,
            });
        }
        let mut e = r.sub(len, "group desc")?;
        e.skip(2)?;
        let group_type = GroupType::from_u8(e.u8()?)?;
        e.skip(1)?;
        let group_id = e.u32()?;
        let bl = usize::from(e.u16()?);
        e.skip(6)?;
        let mut b = e.sub(bl, "group desc buckets")?;
        let buckets = decode_buckets(&mut b)?;
        let selection = decode_group_props(&mut e)?;
        v.push(Group {
            group_id,
            group_type,
            selection,
            buckets,
        });
    }
    Ok(v)
}

/// Counters of one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupStats {
    /// Group id.
    pub group_id: u32,
    /// Flows referring to the group.
    pub ref_count: u32,
    /// Packets processed.
    pub packet_count: u64,
    /// Bytes processed.
    pub byte_count: u64,
    /// Per-bucket (packets, bytes).
    pub buckets: Vec<(u64, u64)>,
}

/// Decodes an OpenFlow 1.3+ group-stats reply body.
pub(crate) fn decode_group_stats(r: &mut Reader<'_>) -> DResult<Vec<GroupStats>> {
    let mut v = Vec::new();
    while !r.is_empty() {
        let len = usize::from(r.peek_u16()?);
        if len < 40 {
            return Err(DecodeError::BadLength {
                what: "group stats",
                len,
            });
        }
        let mut e = r.sub(len, "group stats")?;
        e.skip(4)?;
        let group_id = e.u32()?;
        let ref_count = e.u32()?;
        e.skip(4)?;
        let packet_count = e.u64()?;
        let byte_count = e.u64()?;
        e.skip(8)?;
        let mut buckets = Vec::new();
        while e.remaining() >= 16 {
            buckets.push((e.u64()?, e.u64()?));
        }
        v.push(GroupStats {
            group_id,
            ref_count,
            packet_count,
            byte_count,
            buckets,
        });
    }
    Ok(v)
}
