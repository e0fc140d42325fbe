//! The overlay's flows (tables in `switchyard_pipeline`): the tunnel's own
//! ([`tunnel_flows`]) and one set per remote node ([`node_flows`]).

use switchyard_ovs::openflow::{Action, Ct, Field, Flow, MatchField, ct_state};
use switchyard_pipeline::table::{self, Table};
use switchyard_pipeline::{
    PortKind, Priority, cookie_object, ct_mark, ofport, priority, reg, tunnel_key, zone,
};

use super::{NEXT_HOP_MAC, RemoteNode};
use crate::flows::{self, ETH_TYPE_ARP, ETH_TYPE_IP, cookie};

/// The tunnel's own flows: classification of packets from `sy-tun0` and
/// output to it.
pub fn tunnel_flows(generation: u8) -> Vec<Flow> {
    let c = cookie(generation, cookie_object::TUNNEL);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    vec![
        f(table::CLASSIFIER, priority::SPECIFIC)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .action(reg::PORT_KIND.load(PortKind::Tunnel))
            .action(Action::Move {
                src: tunnel_key::vlan(),
                dst: reg::SEGMENT_VLAN_ID.subfield(),
            })
            .action(table::CONNTRACK.goto()),
        f(table::CLASSIFIER, priority::EXCEPTION)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(tunnel_key::matching_from_gateway())
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(table::CONNTRACK.goto()),
        // A new connection from another node's gateway is committed with
        // ct_mark FROM_REMOTE_GATEWAY: a `vlan` segment pod's replies to it
        // are routed back through the tunnel, not switched to the fabric.
        f(table::CONNTRACK_COMMIT, priority::SPECIFIC)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .matching(MatchField::ct_state(
                ct_state::NEW | ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .matching(ct_mark::SERVICE.matching_clear())
            .action(Action::Ct(Ct {
                commit: true,
                zone: zone::POD.ct(),
                exec: vec![ct_mark::FROM_REMOTE_GATEWAY.set()],
                ..Ct::default()
            }))
            .action(table::CONNTRACK_COMMIT.next().goto()),
        f(table::OUTPUT, priority::SPECIFIC)
            .matching(reg::OUTPUT_PORT.matching(ofport::TUNNEL))
            .action(Action::Output(ofport::TUNNEL)),
    ]
}

/// The flows of one remote node under cookie object `object`.
pub fn node_flows(generation: u8, object: u32, node: &RemoteNode) -> Vec<Flow> {
    let c = cookie(generation, object);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    let to_tunnel = |flow: Flow| {
        flow.matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(
                node.pod_cidr.network(),
                node.pod_cidr.prefix_len(),
            ))
            .action(Action::set_field(
                Field::TunDst,
                u128::from(u32::from(node.ip)),
            ))
    };
    vec![
        // From a pod: the key carries its segment VLAN.
        to_tunnel(f(table::L3_FORWARDING, priority::NORMAL))
            .action(Action::Move {
                src: reg::SEGMENT_VLAN.subfield(),
                dst: tunnel_key::key(),
            })
            .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
            .action(table::CONNTRACK_COMMIT.goto()),
        // From this node (its gateway): the key says so.
        to_tunnel(f(table::L3_FORWARDING, priority::REMOTE_NODE_FROM_GATEWAY))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .action(tunnel_key::set_from_gateway())
            .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
            .action(table::CONNTRACK_COMMIT.goto()),
        Flow {
            actions: flows::arp_reply_actions(NEXT_HOP_MAC),
            ..f(table::ARP_RESPONDER, priority::SPECIFIC)
                .matching(MatchField::eth_type(ETH_TYPE_ARP))
                .matching(reg::PORT_KIND.matching(PortKind::Gateway))
                .matching(MatchField::arp_op(flows::ARP_REQUEST))
                .matching(MatchField::arp_tpa(node.next_hop()))
        },
    ]
    .into_iter()
    // A Service connection (the proxy DNATed it, not a reply) to one of its
    // `vlan` segment pods, from any client: tunnelled to it as this node's
    // own traffic; it delivers the packet to the pod and routes the replies
    // back (ct_mark FROM_REMOTE_GATEWAY, see `tunnel_flows` and `uplink`).
    .chain(node.vlan_pods.iter().map(|addr| {
        f(
            table::L3_FORWARDING,
            priority::SERVICE_TO_REMOTE_SEGMENT_POD,
        )
        .matching(MatchField::eth_type(ETH_TYPE_IP))
        .matching(MatchField::ipv4_dst(*addr, 32))
        .matching(MatchField::ct_state(
            ct_state::TRK,
            ct_state::TRK | ct_state::RPL,
        ))
        .matching(ct_mark::SERVICE.matching())
        .action(Action::set_field(
            Field::TunDst,
            u128::from(u32::from(node.ip)),
        ))
        .action(tunnel_key::set_from_gateway())
        .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
        .action(table::CONNTRACK_COMMIT.goto())
    }))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn node() -> RemoteNode {
        RemoteNode {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            ip: "192.168.100.2".parse().unwrap(),
            vlan_pods: BTreeSet::new(),
        }
    }

    #[test]
    fn node_flows_golden() {
        let text: Vec<String> = node_flows(3, cookie_object::REMOTE_NODE_FIRST + 1, &node())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        for line in &text {
            assert!(line.contains("cookie=0x5359010300020001"), "{line}");
        }
        assert!(text[0].contains("nw_dst=10.244.1.0/24"), "{}", text[0]);
        assert!(
            text[0].contains("set_field:192.168.100.2->tun_dst"),
            "{}",
            text[0]
        );
        assert!(
            text[0].contains("move:NXM_NX_REG5[]->NXM_NX_TUN_ID[0..31]"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("set_field:0x1000->tun_id"), "{}", text[1]);
        assert!(text[2].contains("arp_tpa=10.244.1.1"), "{}", text[2]);
    }

    #[test]
    fn tunnel_flows_classify_the_key() {
        let text: Vec<String> = tunnel_flows(1).iter().map(ToString::to_string).collect();
        assert!(text[0].contains("in_port=1"), "{}", text[0]);
        assert!(
            text[0].contains("move:NXM_NX_TUN_ID[0..11]->NXM_NX_REG5[0..11]"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("tun_id=0x1000/0x1000"), "{}", text[1]);
        assert_eq!(
            text[2],
            "table=60,cookie=0x5359010100010000,priority=200,ip,in_port=1,reg0=0x2/0xf,ct_state=+new+trk,ct_mark=0x0/0x1 actions=ct(commit,zone=65520,exec(set_field:0x4->ct_mark)),goto_table:70"
        );
        assert!(text[3].contains("output:1"), "{}", text[3]);
    }

    #[test]
    fn service_connections_to_a_remote_nodes_vlan_pods_are_tunnelled_to_it() {
        let mut n = node();
        n.vlan_pods.insert("10.100.0.7".parse().unwrap());
        let text: Vec<String> = node_flows(3, cookie_object::REMOTE_NODE_FIRST + 1, &n)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert_eq!(
            text[3],
            "table=40,cookie=0x5359010300020001,priority=256,ip,nw_dst=10.100.0.7,ct_state=-rpl+trk,ct_mark=0x1/0x1 actions=set_field:192.168.100.2->tun_dst,set_field:0x1000->tun_id,set_field:0x1->reg1,goto_table:60"
        );
    }
}
