//! The agent's OpenFlow flows on `br-int`, as pure functions of the gateway
//! and the attached pods (tables, registers and priorities are declared in
//! `switchyard_pipeline`).
//!
//! Pods learn only the gateway's MAC (OVS answers every ARP request from a
//! pod with it) and OVS routes at L3. A packet from a pod reaches a local pod
//! only when reg5 (the VLAN of the source pod's segment) equals the
//! destination pod's VLAN; the gateway (the node) reaches every pod.
//!
//! Cookies: base flows `Cookie::new(Agent, generation, 0)`, a pod's flows
//! `Cookie::new(Agent, generation, ofport)`, so a pod's flows are deleted with
//! `Cookie::object_mask(Agent, ofport)` and a whole old generation with
//! `Cookie::generation_mask(Agent, generation)`.

use std::net::Ipv4Addr;

use switchyard_ovs::openflow::{
    Action, Ct, Field, Flow, MatchField, Nat, SubField, ct_state, port,
};
use switchyard_pipeline::table::{self, Stage, Table};
use switchyard_pipeline::{Cookie, Owner, PortKind, Priority, ct_mark, priority, reg, zone};

use crate::mac::MacAddr;

pub use switchyard_ovs::openflow::{ETH_TYPE_ARP, ETH_TYPE_IP};
/// ARP request opcode.
pub(crate) const ARP_REQUEST: u16 = 1;
/// ARP reply opcode.
const ARP_REPLY: u128 = 2;

/// The node's gateway port on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    /// OpenFlow port number (`pipeline::ofport::GATEWAY`).
    pub ofport: u32,
    /// MAC of the gateway device in the node namespace.
    pub mac: MacAddr,
    /// Gateway address (first address of the node's pod CIDR).
    pub ip: Ipv4Addr,
}

/// One attached pod as the flows see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPort {
    /// OpenFlow port number of the pod's host veth.
    pub ofport: u32,
    /// Pod interface MAC.
    pub mac: MacAddr,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// VLAN of the pod's segment (0 = untagged).
    pub vlan: u16,
}

pub(crate) fn mac(m: MacAddr) -> u128 {
    m.0.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The cookie of the agent's flows of `object` in `generation`.
pub(crate) fn cookie(generation: u8, object: u32) -> u64 {
    Cookie::new(Owner::Agent, generation, object).value()
}

fn mv(src: SubField, dst: SubField) -> Action {
    Action::Move { src, dst }
}

fn whole(field: Field) -> SubField {
    SubField::whole(field)
}

/// Turns the ARP request in the packet into the reply "`tpa` is at
/// `answer_mac`" and sends it back out of the port it came in on.
pub(crate) fn arp_reply_actions(answer_mac: MacAddr) -> Vec<Action> {
    vec![
        mv(whole(Field::EthSrc), whole(Field::EthDst)),
        Action::set_field(Field::EthSrc, mac(answer_mac)),
        Action::set_field(Field::ArpOp, ARP_REPLY),
        mv(whole(Field::ArpSha), whole(Field::ArpTha)),
        Action::set_field(Field::ArpSha, mac(answer_mac)),
        mv(whole(Field::ArpTpa), reg::SCRATCH.subfield()),
        mv(whole(Field::ArpSpa), whole(Field::ArpTpa)),
        mv(reg::SCRATCH.subfield(), whole(Field::ArpSpa)),
        Action::Output(port::IN_PORT),
    ]
}

/// Conntrack in the pod zone, replies un-NATed, then CONNTRACK_STATE.
fn through_pod_zone() -> Action {
    Action::Ct(Ct {
        zone: zone::POD.ct(),
        table: Some(table::CONNTRACK.next().id()),
        nat: Some(Nat::existing()),
        ..Ct::default()
    })
}

fn with_actions(mut flow: Flow, actions: Vec<Action>) -> Flow {
    flow.actions = actions;
    flow
}

/// Flows that do not depend on any pod: the gateway's classification,
/// ARP answering for pods, conntrack, pass-through of the proxy's tables,
/// routing to the gateway, output to the gateway and every table's miss.
// One push per flow, with its comment, reads top-down along the pipeline.
#[allow(clippy::vec_init_then_push)]
pub fn base_flows(generation: u8, gw: &Gateway) -> Vec<Flow> {
    let c = cookie(generation, 0);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    let mut flows = Vec::new();

    // CLASSIFIER: the gateway port.
    flows.push(
        f(table::CLASSIFIER, priority::SPECIFIC)
            .matching(MatchField::in_port(gw.ofport))
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(table::ARP_RESPONDER.goto()),
    );
    flows.push(
        f(table::CLASSIFIER, priority::SPECIFIC)
            .matching(MatchField::in_port(gw.ofport))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(table::CONNTRACK.goto()),
    );

    // ARP_RESPONDER: any ARP request from a pod is answered with the
    // gateway's MAC (exceptions per pod sit at EXCEPTION priority).
    flows.push(with_actions(
        f(table::ARP_RESPONDER, priority::NORMAL)
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .matching(reg::PORT_KIND.matching(PortKind::Pod))
            .matching(MatchField::arp_op(ARP_REQUEST)),
        arp_reply_actions(gw.mac),
    ));

    // ARP_RESPONDER: the node's next hop for the Service CIDR.
    flows.push(with_actions(
        f(table::ARP_RESPONDER, priority::SPECIFIC)
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .matching(MatchField::arp_op(ARP_REQUEST))
            .matching(MatchField::arp_tpa(crate::next_hop::SERVICE_NEXT_HOP)),
        arp_reply_actions(crate::next_hop::NEXT_HOP_MAC),
    ));

    // CONNTRACK: packets to the gateway address first go through the
    // gateway SNAT zone (replies of vlan-segment pods' Service connections
    // get their pod address back there, see `uplink`), once.
    flows.push(
        f(table::CONNTRACK, priority::SPECIFIC)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(gw.ip, 32))
            .matching(reg::GATEWAY_UNSNAT_PENDING.matching())
            .action(reg::GATEWAY_UNSNAT_DONE.load())
            .action(Action::Ct(Ct {
                zone: zone::GATEWAY_SNAT.ct(),
                table: Some(table::CONNTRACK.id()),
                nat: Some(Nat::existing()),
                ..Ct::default()
            })),
    );
    // Such a reply continues as the gateway's traffic (it reaches the pod
    // of any segment) through the pod zone.
    flows.push(
        f(table::CONNTRACK, priority::EXCEPTION)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(reg::GATEWAY_UNSNAT_DONE.matching())
            .matching(MatchField::ct_state(
                ct_state::TRK | ct_state::EST | ct_state::RPL,
                ct_state::TRK | ct_state::EST | ct_state::RPL,
            ))
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(through_pod_zone()),
    );

    // CONNTRACK: every IPv4 packet through the pod zone, replies un-NATed.
    flows.push(
        f(table::CONNTRACK, priority::NORMAL)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .action(through_pod_zone()),
    );

    // CONNTRACK_STATE.
    flows.push(
        f(table::CONNTRACK_STATE, priority::SPECIFIC)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ct_state(
                ct_state::INV | ct_state::TRK,
                ct_state::INV | ct_state::TRK,
            )),
    );
    flows.push(
        f(table::CONNTRACK_STATE, priority::NORMAL)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ct_state(
                ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .action(Stage::Routing.goto()),
    );
    // New connections go on to the Service stage through CONNTRACK_STATE's
    // miss flow (see the end).

    // L3_FORWARDING: anything not for a local pod goes to the node.
    flows.push(
        f(table::L3_FORWARDING, priority::MISS)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .action(Action::set_field(Field::EthDst, mac(gw.mac)))
            .action(table::L3_FORWARDING.next().goto()),
    );

    // L2_FORWARDING: the gateway's MAC.
    flows.push(
        f(table::L2_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_dst(gw.mac.0))
            .action(reg::OUTPUT_PORT.load(gw.ofport))
            .action(table::L2_FORWARDING.next().goto()),
    );

    // CONNTRACK_COMMIT: commit every new connection that the proxy did not
    // commit itself (service connections carry ct_mark SERVICE).
    flows.push(
        f(table::CONNTRACK_COMMIT, priority::NORMAL)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ct_state(
                ct_state::NEW | ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .matching(ct_mark::SERVICE.matching_clear())
            .action(Action::Ct(Ct {
                commit: true,
                zone: zone::POD.ct(),
                ..Ct::default()
            }))
            .action(table::CONNTRACK_COMMIT.next().goto()),
    );

    // OUTPUT: the gateway.
    flows.push(
        f(table::OUTPUT, priority::SPECIFIC)
            .matching(reg::OUTPUT_PORT.matching(gw.ofport))
            .action(Action::Output(gw.ofport)),
    );

    // Every table's miss flow, the proxy's included (pass-through there),
    // as the declaration says: drop or go on to the next table.
    flows.extend(table::miss_flows(c));
    flows
}

/// The flows of one pod; all carry the pod's ofport as cookie object.
pub fn pod_flows(generation: u8, gw: &Gateway, pod: &PodPort) -> Vec<Flow> {
    let c = cookie(generation, pod.ofport);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    vec![
        // CLASSIFIER: mark as pod, remember the segment VLAN.
        f(table::CLASSIFIER, priority::SPECIFIC)
            .matching(MatchField::in_port(pod.ofport))
            .action(reg::PORT_KIND.load(PortKind::Pod))
            .action(reg::SEGMENT_VLAN.load(pod.vlan))
            .action(table::CLASSIFIER.next().goto()),
        // SPOOF_GUARD: only the pod's own MAC and address.
        f(table::SPOOF_GUARD, priority::SPECIFIC)
            .matching(MatchField::in_port(pod.ofport))
            .matching(MatchField::eth_src(pod.mac.0))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_src(pod.ip, 32))
            .action(table::CONNTRACK.goto()),
        f(table::SPOOF_GUARD, priority::SPECIFIC)
            .matching(MatchField::in_port(pod.ofport))
            .matching(MatchField::eth_src(pod.mac.0))
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .matching(MatchField::arp_sha(pod.mac.0))
            .matching(MatchField::arp_spa(pod.ip))
            .action(table::ARP_RESPONDER.goto()),
        // ARP_RESPONDER: the pod asking for its own address (gratuitous ARP,
        // duplicate address detection) gets no answer.
        f(table::ARP_RESPONDER, priority::EXCEPTION)
            .matching(MatchField::in_port(pod.ofport))
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .matching(MatchField::arp_tpa(pod.ip)),
        // ARP_RESPONDER: the node asking for the pod gets the pod's MAC.
        with_actions(
            f(table::ARP_RESPONDER, priority::SPECIFIC)
                .matching(MatchField::eth_type(ETH_TYPE_ARP))
                .matching(reg::PORT_KIND.matching(PortKind::Gateway))
                .matching(MatchField::arp_op(ARP_REQUEST))
                .matching(MatchField::arp_tpa(pod.ip)),
            arp_reply_actions(pod.mac),
        ),
        // L3_FORWARDING: routed to the pod.
        f(table::L3_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(pod.ip, 32))
            .action(Action::set_field(Field::EthSrc, mac(gw.mac)))
            .action(Action::set_field(Field::EthDst, mac(pod.mac)))
            .action(table::L3_FORWARDING.next().goto()),
        // L2_FORWARDING: from a pod of the same VLAN, or from the gateway.
        f(table::L2_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_dst(pod.mac.0))
            .matching(reg::PORT_KIND.matching(PortKind::Pod))
            .matching(reg::SEGMENT_VLAN.matching(pod.vlan))
            .action(reg::OUTPUT_PORT.load(pod.ofport))
            .action(table::L2_FORWARDING.next().goto()),
        f(table::L2_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_dst(pod.mac.0))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .action(reg::OUTPUT_PORT.load(pod.ofport))
            .action(table::L2_FORWARDING.next().goto()),
        // L2_FORWARDING: from a remote node's pod of the same VLAN (the
        // tunnel key carried the source VLAN into reg5; the remote node's
        // own traffic arrives marked Gateway, see `overlay`).
        f(table::L2_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_dst(pod.mac.0))
            .matching(reg::PORT_KIND.matching(PortKind::Tunnel))
            .matching(reg::SEGMENT_VLAN.matching(pod.vlan))
            .action(reg::OUTPUT_PORT.load(pod.ofport))
            .action(table::L2_FORWARDING.next().goto()),
        // OUTPUT.
        f(table::OUTPUT, priority::SPECIFIC)
            .matching(reg::OUTPUT_PORT.matching(pod.ofport))
            .action(Action::Output(pod.ofport)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Gateway {
        Gateway {
            ofport: 2,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            ip: "10.244.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn pod_flows_golden() {
        let pod = PodPort {
            ofport: 7,
            mac: "0a:58:0a:f4:00:05".parse().unwrap(),
            ip: "10.244.0.5".parse().unwrap(),
            vlan: 100,
        };
        let text: Vec<String> = pod_flows(3, &gw(), &pod)
            .iter()
            .map(ToString::to_string)
            .collect();
        for line in &text {
            assert!(line.contains("cookie=0x5359010300000007"), "{line}");
        }
        assert_eq!(text.len(), 10);
        assert!(text[0].starts_with("table=0,"), "{}", text[0]);
        assert!(text[0].contains("in_port=7"), "{}", text[0]);
        assert!(text[6].contains("reg5=0x64"), "{}", text[6]);
    }

    #[test]
    fn gateway_unsnat_and_service_next_hop_flows_golden() {
        let text: Vec<String> = base_flows(1, &gw())
            .iter()
            .map(ToString::to_string)
            .filter(|l| {
                l.starts_with("table=20,") && !l.contains("priority=100")
                    || l.contains("169.254.169.253")
            })
            .collect();
        assert_eq!(
            text,
            [
                "table=15,cookie=0x5359010100000000,priority=200,arp,reg0=0x2/0xf,arp_op=1,arp_tpa=169.254.169.253 actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:ff->dl_src,set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],set_field:aa:bb:cc:dd:ee:ff->arp_sha,move:NXM_OF_ARP_TPA[]->NXM_NX_REG2[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],move:NXM_NX_REG2[]->NXM_OF_ARP_SPA[],IN_PORT",
                "table=20,cookie=0x5359010100000000,priority=200,ip,nw_dst=10.244.0.1,reg0=0x0/0x10 actions=set_field:0x10/0x10->reg0,ct(table=20,zone=65523,nat)",
                "table=20,cookie=0x5359010100000000,priority=210,ip,reg0=0x10/0x10,ct_state=+est+rpl+trk actions=set_field:0x2/0xf->reg0,ct(table=21,zone=65520,nat)",
            ]
        );
    }

    #[test]
    fn base_flows_have_object_zero_and_cover_every_table() {
        let flows = base_flows(1, &gw());
        for flow in &flows {
            let c = Cookie::from_value(flow.cookie).unwrap();
            assert_eq!((c.owner, c.generation, c.object), (Owner::Agent, 1, 0));
        }
        for t in table::active() {
            assert!(
                flows
                    .iter()
                    .any(|f| f.table == t.id() && f.priority == priority::MISS.value())
                    || t == table::CONNTRACK,
                "table {t} has no miss flow"
            );
        }
        for t in table::PIPELINE.iter().filter(|t| t.is_reserved()) {
            assert!(
                flows.iter().all(|f| f.table != t.id()),
                "reserved slot {t} has flows"
            );
        }
    }
}
