//! Every flow priority of `br-int`, named. A [`Priority`] can only be one of
//! these constants, so no flow carries a magic number.
//!
//! Within one table a higher priority wins. The agent's layers are
//! [`MISS`] < [`NORMAL`] < [`SPECIFIC`] < [`EXCEPTION`]; the `vlan` segment
//! routing in L3_FORWARDING stacks above them
//! ([`SEGMENT_SWITCHED`] < [`SERVICE_TO_SEGMENT_POD`] <
//! [`SERVICE_TO_REMOTE_SEGMENT_POD`] < [`SERVICE_FROM_SEGMENT`] <
//! [`REPLY_ROUTED_BACK`]); the proxy's flows sit at [`SERVICE`] in its own
//! tables and at [`HAIRPIN`], above everything of the agent, in the agent's.

/// The priority of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u16);

impl Priority {
    /// The OpenFlow priority.
    pub const fn value(self) -> u16 {
        self.0
    }
}

/// Table-miss flows: drop, or pass on to the next table (see
/// [`crate::table::Miss`]); also L3_FORWARDING's route to the gateway.
pub const MISS: Priority = Priority(0);
/// Proxy, SESSION_AFFINITY: state NeedsEndpoint without a learned flow ends
/// the affinity resubmit without loading anything.
pub const AFFINITY_MISS: Priority = Priority(1);
/// Proxy, L3_FORWARDING: a Service connection from the gateway port whose
/// endpoint no route of `br-int` takes (outside the pod networks) is SNATed
/// to [`crate::OUTSIDE_SNAT_IP`] and sent back out of the gateway port
/// (above the route to the gateway at [`MISS`], below every route to a pod
/// or a remote pod CIDR).
pub const SERVICE_TO_OUTSIDE: Priority = Priority(50);
/// Generic flows of a table (e.g. "any ARP request from a pod"); a remote
/// node's pod CIDR; a `vlan` segment's traffic to the uplink.
pub const NORMAL: Priority = Priority(100);
/// Proxy, SERVICE_LB: state EndpointSelected goes on to ENDPOINT_DNAT.
pub const SERVICE_SELECTED: Priority = Priority(100);
/// A remote node's pod CIDR for the gateway's own traffic (the tunnel key
/// says "from the gateway"), above the same route for pods ([`NORMAL`]).
pub const REMOTE_NODE_FROM_GATEWAY: Priority = Priority(101);
/// ARP of a `vlan` segment goes to L2_FORWARDING, above the overlay's
/// generic "every address is the gateway" answer ([`NORMAL`]).
pub const SEGMENT_ARP_TO_L2: Priority = Priority(101);
/// Flows for one port or address.
pub const SPECIFIC: Priority = Priority(200);
/// Proxy: frontends, learned affinity flows and endpoint DNAT.
pub const SERVICE: Priority = Priority(200);
/// Proxy, SERVICE_EXTERNAL_FRONTEND: a LoadBalancer address with
/// `loadBalancerSourceRanges`, from a source outside them: dropped (above
/// the frontend for everyone at [`SERVICE`]).
pub const SOURCE_RANGE_DENY: Priority = Priority(201);
/// Proxy, SERVICE_EXTERNAL_FRONTEND: the same address from a source inside
/// a range, or from the gateway (the host filtered it): served (above
/// [`SOURCE_RANGE_DENY`], below the ETP-Local gateway flows).
pub const SOURCE_RANGE_ALLOW: Priority = Priority(202);
/// Proxy, SERVICE_EXTERNAL_FRONTEND: an `externalTrafficPolicy: Local`
/// external IP or LoadBalancer address reached from the gateway port (a
/// client outside the cluster): this node's endpoints only (above the
/// frontend for everyone else at [`SERVICE`]).
pub const EXTERNAL_FROM_OUTSIDE: Priority = Priority(205);
/// Exceptions to [`SPECIFIC`] flows (e.g. a pod's gratuitous ARP).
pub const EXCEPTION: Priority = Priority(210);
/// Proxy, SERVICE_EXTERNAL_FRONTEND: the same from the node itself (source
/// = the node's gateway address): every endpoint, as for pods (above
/// [`EXTERNAL_FROM_OUTSIDE`]).
pub const EXTERNAL_FROM_NODE: Priority = Priority(210);
/// L3_FORWARDING, per `vlan` segment: its traffic is switched, not routed
/// (above per-pod routing at [`SPECIFIC`]).
pub const SEGMENT_SWITCHED: Priority = Priority(250);
/// L3_FORWARDING, per local `vlan` segment pod: another pod's Service
/// connection to it is routed as the gateway's traffic (below
/// [`SERVICE_FROM_SEGMENT`], which routes the segment's own pods' first).
pub const SERVICE_TO_SEGMENT_POD: Priority = Priority(255);
/// L3_FORWARDING, per remote `vlan` segment pod: a Service connection to
/// it is tunnelled to its node (above the segments' own switching, below
/// their pods' Service SNAT, which comes back as the gateway's traffic).
pub const SERVICE_TO_REMOTE_SEGMENT_POD: Priority = Priority(256);
/// L3_FORWARDING, per `vlan` segment: its pods' Service connections are
/// SNATed to the gateway address and routed (above the switching).
pub const SERVICE_FROM_SEGMENT: Priority = Priority(260);
/// L3_FORWARDING, per `vlan` segment: a pod's reply to a connection that
/// was routed to it is routed back (above everything of the segment).
pub const REPLY_ROUTED_BACK: Priority = Priority(270);
/// EGRESS_POLICY / INGRESS_POLICY: the default drop of a pod isolated in
/// that direction (`ip` and its port), below every allowing flow.
pub const POLICY_ISOLATION: Priority = Priority(100);
/// EGRESS_POLICY / INGRESS_POLICY: the clause flows of the rules'
/// conjunctions (pods, peers, ports) and their `conj_id` flows.
pub const POLICY_RULE: Priority = Priority(200);
/// EGRESS_POLICY / INGRESS_POLICY: a rule allowing every peer on every
/// port (no conjunction: only the pod is matched).
pub const POLICY_ALLOW_ALL: Priority = Priority(201);
/// EGRESS_POLICY / INGRESS_POLICY: what is never policed: packets of
/// established or related connections, and (ingress) the node's own
/// traffic to its pods (source = the gateway address: kubelet probes).
pub const POLICY_EXEMPT: Priority = Priority(220);
/// Proxy: hairpin flows in the agent's tables (above all of the agent's).
pub const HAIRPIN: Priority = Priority(300);

/// Proxy, CONNTRACK: a packet from the gateway port to
/// [`crate::OUTSIDE_SNAT_IP`] (the reply of a connection sent outside) is
/// un-SNATed in [`crate::zone::OUTSIDE_SNAT`] before the pod zone (above
/// all of the agent's, like [`HAIRPIN`]).
pub const OUTSIDE_UNSNAT: Priority = Priority(300);
/// Proxy, CONNTRACK: the same packet back from that zone still to
/// [`crate::OUTSIDE_SNAT_IP`] (the zone knows no such connection): dropped,
/// never round again (above [`OUTSIDE_UNSNAT`]).
pub const OUTSIDE_UNSNAT_MISS: Priority = Priority(301);

/// Every priority with its name, ascending (for documentation checks).
pub const ALL: [(&str, Priority); 26] = [
    ("MISS", MISS),
    ("AFFINITY_MISS", AFFINITY_MISS),
    ("SERVICE_TO_OUTSIDE", SERVICE_TO_OUTSIDE),
    ("NORMAL", NORMAL),
    ("POLICY_ISOLATION", POLICY_ISOLATION),
    ("SERVICE_SELECTED", SERVICE_SELECTED),
    ("REMOTE_NODE_FROM_GATEWAY", REMOTE_NODE_FROM_GATEWAY),
    ("SEGMENT_ARP_TO_L2", SEGMENT_ARP_TO_L2),
    ("SPECIFIC", SPECIFIC),
    ("SERVICE", SERVICE),
    ("POLICY_RULE", POLICY_RULE),
    ("SOURCE_RANGE_DENY", SOURCE_RANGE_DENY),
    ("POLICY_ALLOW_ALL", POLICY_ALLOW_ALL),
    ("SOURCE_RANGE_ALLOW", SOURCE_RANGE_ALLOW),
    ("EXTERNAL_FROM_OUTSIDE", EXTERNAL_FROM_OUTSIDE),
    ("EXCEPTION", EXCEPTION),
    ("EXTERNAL_FROM_NODE", EXTERNAL_FROM_NODE),
    ("POLICY_EXEMPT", POLICY_EXEMPT),
    ("SEGMENT_SWITCHED", SEGMENT_SWITCHED),
    ("SERVICE_TO_SEGMENT_POD", SERVICE_TO_SEGMENT_POD),
    (
        "SERVICE_TO_REMOTE_SEGMENT_POD",
        SERVICE_TO_REMOTE_SEGMENT_POD,
    ),
    ("SERVICE_FROM_SEGMENT", SERVICE_FROM_SEGMENT),
    ("REPLY_ROUTED_BACK", REPLY_ROUTED_BACK),
    ("HAIRPIN", HAIRPIN),
    ("OUTSIDE_UNSNAT", OUTSIDE_UNSNAT),
    ("OUTSIDE_UNSNAT_MISS", OUTSIDE_UNSNAT_MISS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_keep_their_order() {
        assert!(MISS < NORMAL && NORMAL < SPECIFIC && SPECIFIC < EXCEPTION);
        assert!(NORMAL < REMOTE_NODE_FROM_GATEWAY && SEGMENT_ARP_TO_L2 < SPECIFIC);
        assert!(EXCEPTION < SEGMENT_SWITCHED);
        assert!(SEGMENT_SWITCHED < SERVICE_TO_SEGMENT_POD);
        assert!(SERVICE_TO_SEGMENT_POD < SERVICE_TO_REMOTE_SEGMENT_POD);
        assert!(SERVICE_TO_REMOTE_SEGMENT_POD < SERVICE_FROM_SEGMENT);
        assert!(SERVICE_FROM_SEGMENT < REPLY_ROUTED_BACK);
        assert!(REPLY_ROUTED_BACK < HAIRPIN);
        assert!(SERVICE < SOURCE_RANGE_DENY && SOURCE_RANGE_DENY < SOURCE_RANGE_ALLOW);
        assert!(SOURCE_RANGE_ALLOW < EXTERNAL_FROM_OUTSIDE);
        assert!(MISS < AFFINITY_MISS && SERVICE_SELECTED < SERVICE);
        assert!(AFFINITY_MISS < SERVICE_TO_OUTSIDE && SERVICE_TO_OUTSIDE < NORMAL);
        assert!(REPLY_ROUTED_BACK < OUTSIDE_UNSNAT && OUTSIDE_UNSNAT < OUTSIDE_UNSNAT_MISS);
        assert!(SERVICE < EXTERNAL_FROM_OUTSIDE && EXTERNAL_FROM_OUTSIDE < EXTERNAL_FROM_NODE);
        assert!(POLICY_ISOLATION < POLICY_RULE && POLICY_RULE < POLICY_ALLOW_ALL);
        assert!(POLICY_ALLOW_ALL < POLICY_EXEMPT);
    }

    #[test]
    fn all_lists_every_priority_once_ascending() {
        assert!(ALL.windows(2).all(|w| w[0].1 <= w[1].1));
        let names: std::collections::BTreeSet<_> = ALL.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), ALL.len());
    }
}
