//! Cookie spaces: which daemon owns a flow, in which generation, for which
//! object; and the group id ranges (groups carry no cookie).

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
    /// NetworkPolicy flows shared by rules: the exemptions and the
    /// conjunctions' clause flows (one clause flow may serve many rules).
    pub const POLICY: u32 = 0x0004_0000;
    /// The default drops of pods isolated for ingress (their counters are
    /// the denied new connections).
    pub const POLICY_ISOLATION_INGRESS: u32 = 0x0004_0001;
    /// The default drops of pods isolated for egress.
    pub const POLICY_ISOLATION_EGRESS: u32 = 0x0004_0002;
    /// The allowing flow of one policy rule's conjunction uses
    /// `POLICY_RULE_FIRST + conjunction id` (ids below 0x1000_0000), so its
    /// counters are the rule's (flow stats by cookie).
    pub const POLICY_RULE_FIRST: u32 = 0x1000_0000;
}

/// OpenFlow group ids. Groups carry no cookie, so ownership is by range.
pub mod group {
    /// First group id of the proxy (one `select` group per Service port).
    pub const PROXY_FIRST: u32 = 1;
    /// Last group id of the proxy; ids above it are free for the agent.
    pub const PROXY_LAST: u32 = 0x7fff_ffff;
}

/// Which daemon owns a flow (its cookie space) or programs a table.
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
}
