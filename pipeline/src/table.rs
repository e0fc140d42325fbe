//! The tables of `br-int`, declared once and in pipeline order.
//!
//! [`PIPELINE`] lists every table with its number, name, [`Stage`], owner
//! and miss behaviour. Flows never spell a table number: they continue at
//! [`Table::next`] (the next table in pipeline order that is in use), at the
//! first table of a stage ([`Stage::first`]), or at a table they name
//! (`table::L3_FORWARDING.goto()`).
//!
//! # Reserved slots
//!
//! A table can be declared for a feature that comes next and is not in use
//! yet ([`Table::is_reserved`]): nothing is installed in it and
//! [`Table::next`] skips it, so the packet's path is the one it was before
//! it was declared. The feature that takes a slot declares it with
//! `Table::new` (in use, with its miss behaviour) instead of
//! `Table::reserved` and installs its flows; every flow that continues at
//! "the next table" then passes through it, without a table number changing.
//! The three slots declared so far are all in use:
//! [`SERVICE_EXTERNAL_FRONTEND`] (the proxy's NodePort and external
//! frontends), [`EGRESS_POLICY`] (right after endpoint DNAT) and
//! [`INGRESS_POLICY`] (right after L2 forwarding), both NetworkPolicy
//! (`node-agent/src/policy/`). Their numbers sit in gaps of the existing
//! layout, so no table in use moved: flows already on a bridge (which a
//! restarted proxy reads back by table, see `switchyard-proxy`'s
//! `read_switch`) keep their tables.

use switchyard_ovs::openflow::{Action, Flow};

use crate::cookie::Owner;
use crate::priority::{self, Priority};

/// A group of consecutive tables with one job. Stages appear in
/// [`PIPELINE`] in the order of this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// What kind of port a packet came in on, and its segment.
    Classification,
    /// Source validation (spoof guard).
    Validation,
    /// ARP, answered by OVS itself.
    Arp,
    /// Conntrack and acting on its state.
    Conntrack,
    /// Service frontends, session affinity, endpoint selection and DNAT.
    Service,
    /// NetworkPolicy on the way out of the source pod.
    EgressSecurity,
    /// The routing decision.
    Routing,
    /// The output port within a segment.
    Switching,
    /// NetworkPolicy on the way into the destination pod.
    IngressSecurity,
    /// Committing new connections.
    Commit,
    /// Leaving the bridge.
    Output,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 11] = [
        Stage::Classification,
        Stage::Validation,
        Stage::Arp,
        Stage::Conntrack,
        Stage::Service,
        Stage::EgressSecurity,
        Stage::Routing,
        Stage::Switching,
        Stage::IngressSecurity,
        Stage::Commit,
        Stage::Output,
    ];

    /// The first table in use of this stage.
    ///
    /// # Panics
    ///
    /// When every table of the stage is a reserved slot (a programming
    /// error: nothing may continue at a stage that does not exist yet).
    pub fn first(self) -> Table {
        PIPELINE
            .iter()
            .copied()
            .find(|t| t.stage == self && !t.is_reserved())
            .unwrap_or_else(|| panic!("stage {self:?} has no table in use"))
    }

    /// `goto_table` to the first table in use of this stage.
    pub fn goto(self) -> Action {
        self.first().goto()
    }
}

/// What a packet that matches none of a table's flows meets: the
/// priority-[`priority::MISS`] flow, which the agent installs for every
/// table in use, the proxy's included (so pods keep working while the
/// proxy is not running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Miss {
    /// An empty action list: the packet is dropped.
    Drop,
    /// `goto_table` to [`Table::next`]: the table passes packets on.
    Next,
    /// The owner's own flows decide (e.g. L3 forwarding's route to the
    /// gateway); no generic miss flow.
    OwnFlows,
}

/// Whether a declared table is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Use {
    /// Flows are installed and [`Table::next`] leads here.
    Active,
    /// A named slot for a coming feature: no flows, skipped by
    /// [`Table::next`].
    Reserved,
}

/// One OpenFlow table of `br-int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    id: u8,
    name: &'static str,
    stage: Stage,
    owner: Owner,
    miss: Miss,
    usage: Use,
}

impl Table {
    const fn new(id: u8, name: &'static str, stage: Stage, owner: Owner, miss: Miss) -> Self {
        Self {
            id,
            name,
            stage,
            owner,
            miss,
            usage: Use::Active,
        }
    }

    // No slot is reserved now; kept for the next feature that needs one.
    #[allow(dead_code)]
    const fn reserved(id: u8, name: &'static str, stage: Stage, owner: Owner) -> Self {
        Self {
            id,
            name,
            stage,
            owner,
            miss: Miss::Next,
            usage: Use::Reserved,
        }
    }

    /// The OpenFlow table number.
    pub const fn id(self) -> u8 {
        self.id
    }

    /// The table's name (the constant's name, as `docs/pipeline.md` shows it).
    pub const fn name(self) -> &'static str {
        self.name
    }

    /// The stage the table belongs to.
    pub const fn stage(self) -> Stage {
        self.stage
    }

    /// The daemon that programs the table.
    pub const fn owner(self) -> Owner {
        self.owner
    }

    /// What a packet matching none of its flows meets.
    pub const fn miss(self) -> Miss {
        self.miss
    }

    /// A declared slot not in use yet (see the module docs).
    pub const fn is_reserved(self) -> bool {
        matches!(self.usage, Use::Reserved)
    }

    /// The next table in use after this one in pipeline order.
    ///
    /// # Panics
    ///
    /// For [`OUTPUT`], the last table (a programming error).
    pub fn next(self) -> Table {
        PIPELINE
            .iter()
            .copied()
            .skip_while(|t| t.id != self.id)
            .skip(1)
            .find(|t| !t.is_reserved())
            .unwrap_or_else(|| panic!("{} is the last table", self.name))
    }

    /// A flow in this table at `priority`, without cookie, matches or actions.
    pub fn flow(self, priority: Priority) -> Flow {
        Flow::new(self.id, priority.value())
    }

    /// `goto_table:` this table.
    pub fn goto(self) -> Action {
        Action::GotoTable(self.id)
    }

    /// `resubmit(,`this table`)`: run this table's flows now and come back.
    pub fn resubmit(self) -> Action {
        Action::resubmit_table(self.id)
    }

    /// The table's priority-[`priority::MISS`] flow (see [`Miss`]); `None`
    /// for [`Miss::OwnFlows`] and for reserved slots.
    pub fn miss_flow(self) -> Option<Flow> {
        if self.is_reserved() {
            return None;
        }
        match self.miss {
            Miss::Drop => Some(self.flow(priority::MISS)),
            Miss::Next => Some(self.flow(priority::MISS).action(self.next().goto())),
            Miss::OwnFlows => None,
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

/// Classifies by input port: port kind and segment VLAN.
pub const CLASSIFIER: Table = Table::new(
    0,
    "CLASSIFIER",
    Stage::Classification,
    Owner::Agent,
    Miss::Drop,
);
/// Source MAC/IPv4 validation of pod ports.
pub const SPOOF_GUARD: Table = Table::new(
    10,
    "SPOOF_GUARD",
    Stage::Validation,
    Owner::Agent,
    Miss::Drop,
);
/// Answers ARP requests from pods, the gateway and the uplink.
pub const ARP_RESPONDER: Table =
    Table::new(15, "ARP_RESPONDER", Stage::Arp, Owner::Agent, Miss::Drop);
/// Sends IPv4 through conntrack (replies un-NATed).
pub const CONNTRACK: Table = Table::new(
    20,
    "CONNTRACK",
    Stage::Conntrack,
    Owner::Agent,
    Miss::OwnFlows,
);
/// Acts on the conntrack state: invalid drops, established skips services.
pub const CONNTRACK_STATE: Table = Table::new(
    21,
    "CONNTRACK_STATE",
    Stage::Conntrack,
    Owner::Agent,
    Miss::Next,
);
/// Proxy: NodePort and external frontends (the node-port VIPs, node
/// addresses, external IPs, LoadBalancer addresses), before session
/// affinity and load balancing.
pub const SERVICE_EXTERNAL_FRONTEND: Table = Table::new(
    29,
    "SERVICE_EXTERNAL_FRONTEND",
    Stage::Service,
    Owner::Proxy,
    Miss::Next,
);
/// Proxy: session affinity (learned flows load the remembered endpoint).
pub const SESSION_AFFINITY: Table = Table::new(
    30,
    "SESSION_AFFINITY",
    Stage::Service,
    Owner::Proxy,
    Miss::Next,
);
/// Proxy: Service frontends (VIP, protocol, port) to select groups.
pub const SERVICE_LB: Table =
    Table::new(31, "SERVICE_LB", Stage::Service, Owner::Proxy, Miss::Next);
/// Proxy: DNAT to the endpoint chosen in reg3/reg4 (session affinity).
pub const ENDPOINT_DNAT: Table = Table::new(
    32,
    "ENDPOINT_DNAT",
    Stage::Service,
    Owner::Proxy,
    Miss::Next,
);
/// Egress NetworkPolicy of the source pod (new connections), right after
/// endpoint DNAT (it sees the chosen endpoint); `node-agent/src/policy/`.
pub const EGRESS_POLICY: Table = Table::new(
    35,
    "EGRESS_POLICY",
    Stage::EgressSecurity,
    Owner::Agent,
    Miss::Next,
);
/// The routing decision: local pod, remote node (tunnel), gateway.
pub const L3_FORWARDING: Table = Table::new(
    40,
    "L3_FORWARDING",
    Stage::Routing,
    Owner::Agent,
    Miss::OwnFlows,
);
/// Destination MAC to output port (reg1), within a segment.
pub const L2_FORWARDING: Table = Table::new(
    50,
    "L2_FORWARDING",
    Stage::Switching,
    Owner::Agent,
    Miss::Drop,
);
/// Ingress NetworkPolicy of the destination pod (new connections), right
/// after L2 forwarding (it sees the output port); `node-agent/src/policy/`.
pub const INGRESS_POLICY: Table = Table::new(
    55,
    "INGRESS_POLICY",
    Stage::IngressSecurity,
    Owner::Agent,
    Miss::Next,
);
/// Commits new connections in the pod zone.
pub const CONNTRACK_COMMIT: Table = Table::new(
    60,
    "CONNTRACK_COMMIT",
    Stage::Commit,
    Owner::Agent,
    Miss::Next,
);
/// Outputs to the port in reg1.
pub const OUTPUT: Table = Table::new(70, "OUTPUT", Stage::Output, Owner::Agent, Miss::Drop);

/// Every table of `br-int`, in pipeline order (reserved slots included).
pub const PIPELINE: [Table; 15] = [
    CLASSIFIER,
    SPOOF_GUARD,
    ARP_RESPONDER,
    CONNTRACK,
    CONNTRACK_STATE,
    SERVICE_EXTERNAL_FRONTEND,
    SESSION_AFFINITY,
    SERVICE_LB,
    ENDPOINT_DNAT,
    EGRESS_POLICY,
    L3_FORWARDING,
    L2_FORWARDING,
    INGRESS_POLICY,
    CONNTRACK_COMMIT,
    OUTPUT,
];

/// The tables in use, in pipeline order.
pub fn active() -> impl Iterator<Item = Table> {
    PIPELINE.iter().copied().filter(|t| !t.is_reserved())
}

/// The tables `owner` programs (in use or reserved), in pipeline order.
pub fn owned_by(owner: Owner) -> impl Iterator<Item = Table> {
    PIPELINE.iter().copied().filter(move |t| t.owner == owner)
}

/// The table called `name`.
pub fn by_name(name: &str) -> Option<Table> {
    PIPELINE.iter().copied().find(|t| t.name == name)
}

/// The table numbered `id`.
pub fn by_id(id: u8) -> Option<Table> {
    PIPELINE.iter().copied().find(|t| t.id == id)
}

/// The priority-[`priority::MISS`] flows of every table in use, with
/// `cookie` (the agent installs them, see [`Miss`]).
pub fn miss_flows(cookie: u64) -> Vec<Flow> {
    active()
        .filter_map(Table::miss_flow)
        .map(|flow| flow.cookie(cookie))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_grow_along_the_pipeline() {
        // goto_table may only go forward.
        assert!(PIPELINE.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn stages_are_contiguous_and_in_order() {
        assert!(PIPELINE.windows(2).all(|w| w[0].stage <= w[1].stage));
        for stage in Stage::ALL {
            assert!(
                PIPELINE.iter().any(|t| t.stage == stage),
                "{stage:?} has no table"
            );
        }
    }

    #[test]
    fn names_are_unique_and_found() {
        for t in PIPELINE {
            assert_eq!(by_name(t.name()), Some(t));
            assert_eq!(by_id(t.id()), Some(t));
        }
        assert_eq!(by_name("NO_SUCH_TABLE"), None);
    }

    #[test]
    fn next_skips_reserved_slots() {
        assert_eq!(CLASSIFIER.next(), SPOOF_GUARD);
        assert_eq!(CONNTRACK_STATE.next(), SERVICE_EXTERNAL_FRONTEND);
        assert_eq!(SERVICE_EXTERNAL_FRONTEND.next(), SESSION_AFFINITY);
        assert_eq!(ENDPOINT_DNAT.next(), EGRESS_POLICY);
        assert_eq!(EGRESS_POLICY.next(), L3_FORWARDING);
        assert_eq!(L2_FORWARDING.next(), INGRESS_POLICY);
        assert_eq!(INGRESS_POLICY.next(), CONNTRACK_COMMIT);
        assert_eq!(CONNTRACK_COMMIT.next(), OUTPUT);
        assert_eq!(Stage::Routing.first(), L3_FORWARDING);
        assert_eq!(Stage::Service.first(), SERVICE_EXTERNAL_FRONTEND);
    }

    #[test]
    fn the_slots_sit_where_the_features_need_them() {
        let position = |t: Table| PIPELINE.iter().position(|p| *p == t).unwrap();
        assert!(!SERVICE_EXTERNAL_FRONTEND.is_reserved());
        assert!(position(SERVICE_EXTERNAL_FRONTEND) < position(SERVICE_LB));
        assert_eq!(position(EGRESS_POLICY), position(ENDPOINT_DNAT) + 1);
        assert_eq!(position(INGRESS_POLICY), position(L2_FORWARDING) + 1);
        assert!(!EGRESS_POLICY.is_reserved() && !INGRESS_POLICY.is_reserved());
    }

    #[test]
    #[should_panic(expected = "last table")]
    fn output_has_no_next_table() {
        let _ = OUTPUT.next();
    }

    #[test]
    fn miss_flows_follow_the_declaration() {
        let text: Vec<String> = miss_flows(0x5e).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "table=0,cookie=0x5e,priority=0 actions=drop",
                "table=10,cookie=0x5e,priority=0 actions=drop",
                "table=15,cookie=0x5e,priority=0 actions=drop",
                "table=21,cookie=0x5e,priority=0 actions=goto_table:29",
                "table=29,cookie=0x5e,priority=0 actions=goto_table:30",
                "table=30,cookie=0x5e,priority=0 actions=goto_table:31",
                "table=31,cookie=0x5e,priority=0 actions=goto_table:32",
                "table=32,cookie=0x5e,priority=0 actions=goto_table:35",
                "table=35,cookie=0x5e,priority=0 actions=goto_table:40",
                "table=50,cookie=0x5e,priority=0 actions=drop",
                "table=55,cookie=0x5e,priority=0 actions=goto_table:60",
                "table=60,cookie=0x5e,priority=0 actions=goto_table:70",
                "table=70,cookie=0x5e,priority=0 actions=drop",
            ]
        );
    }
}
