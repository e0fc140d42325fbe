//! `vlan` segments (the NSX model): the uplink trunk port on `br-int` and the
//! flows that make each such segment one L2 network across the nodes and
//! the external fabric, whose router is the segment's gateway.
//!
//! Choice: explicit flows, not the NORMAL action. `OVS NORMAL` would honour
//! the access tags of pod ports and the uplink's `trunks`, but it also
//! treats every untagged port (overlay pods, `sy-gw0`, `sy-tun0`) as a trunk
//! of all VLANs and floods the segment's broadcasts there, and it would
//! bypass conntrack and the spoof guard. An OpenFlow `output` ignores the
//! port's `tag`/`trunks` entirely (tags only mean something to NORMAL), so
//! the flows tag and untag themselves: `push_vlan` + `set_field vlan_vid`
//! on the way out of the uplink, `pop_vlan` on the way in.
//!
//! Flows (priorities named in `switchyard_pipeline::priority`):
//! - CLASSIFIER (200), per uplink and VLAN V: `in_port=uplink,vlan_vid=V`
//!   pops the tag, marks [`PortKind::Uplink`] and loads V into reg5; IPv4
//!   continues to CONNTRACK (replies must be tracked like everything else),
//!   ARP to ARP_RESPONDER. Other VLANs and untagged frames drop.
//! - ARP_RESPONDER (200), per pod of a `vlan` segment: a request for the
//!   pod's address from a pod or the uplink of the same VLAN is answered
//!   with the pod's own MAC (tagged again toward the uplink): pods of one
//!   node never see each other's broadcasts otherwise. (101), per VLAN:
//!   every other ARP of the segment goes to L2_FORWARDING, not to the
//!   overlay's "everything is the node gateway" answer.
//! - L3_FORWARDING (250), per VLAN: the segment's IPv4 is switched, not
//!   routed: straight to L2_FORWARDING, MACs untouched. (260) A Service
//!   connection of a pod of the segment (the proxy DNATed it: `ct_mark`
//!   SERVICE, not a reply) is instead marked [`PortKind::Gateway`], SNATed
//!   to the node's gateway address in [`zone::GATEWAY_SNAT`] and routed
//!   again like the node's own traffic (any local pod, or the tunnel with the
//!   gateway key); the replies, addressed to the gateway address, are
//!   un-SNATed in CONNTRACK (base flows in `flows`) and delivered as the
//!   gateway's traffic. (255, per pod of the segment) Another pod's Service
//!   connection to it is routed to it as the gateway's traffic. (270, per
//!   VLAN) A pod's reply to a connection routed to it (`ct_mark` SERVICE,
//!   DNATed here, or FROM_REMOTE_GATEWAY, tunnelled here by another node,
//!   see `overlay`) is routed back as the gateway's traffic, not switched
//!   to the fabric.
//! - L2_FORWARDING: a local pod's MAC from the uplink with its VLAN (200,
//!   per pod); anything else from a pod of the segment goes to the uplink
//!   (100, per VLAN), where the fabric switches or routes it.
//! - OUTPUT (200), per uplink and VLAN: `reg1=uplink,reg5=V` pushes tag V.
//!
//! Pods of different segments on one node never meet: every L2 decision
//! matches reg5, and only the fabric routes between VLANs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use switchyard_ovs::openflow::{Action, Ct, Flow, MatchField, Nat, ct_state, port};
use switchyard_ovs::ovsdb::{self, PortSpec};
use switchyard_pipeline::table::{self, Table};
use switchyard_pipeline::{
    PortKind, Priority, cookie_object, ct_mark, ofport, priority, reg, zone,
};

use crate::config::{SegmentConfig, SegmentKind};
use crate::flows::{self, ARP_REQUEST, ETH_TYPE_ARP, ETH_TYPE_IP, PodPort, cookie};
use crate::reserved_port::{Found, Ofport, ReservedPort, ReservedPortError, Step};

/// Why an uplink could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// An uplink port could not be set up.
    #[error(transparent)]
    Port(#[from] ReservedPortError),
    /// More uplinks than the reserved ofport range holds.
    #[error(
        "{count} uplinks configured: at most {} fit the reserved ofports {}..={}",
        ofport::LAST_UPLINK - ofport::UPLINK + 1,
        ofport::UPLINK,
        ofport::LAST_UPLINK
    )]
    TooMany {
        /// How many uplinks the configuration names.
        count: usize,
    },
}

// The uplink range sits between the well-known ports and the pods'.
const _: () = assert!(
    ofport::UPLINK > ofport::TUNNEL
        && ofport::UPLINK > ofport::GATEWAY
        && ofport::UPLINK <= ofport::LAST_UPLINK
        && ofport::LAST_UPLINK < ofport::FIRST_POD
);

/// The ofport the `index`-th uplink (in name order) asks for: distinct
/// numbers from [`ofport::UPLINK`] to [`ofport::LAST_UPLINK`], so no uplink
/// takes a number the tunnel, the gateway or a pod asks for; `None` past
/// the range.
pub fn requested_ofport(index: usize) -> Option<u32> {
    let n = ofport::UPLINK.checked_add(u32::try_from(index).ok()?)?;
    (n <= ofport::LAST_UPLINK).then_some(n)
}

/// An uplink trunk port on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name (a NIC of the node).
    pub name: String,
    /// Its OpenFlow port.
    pub ofport: u32,
    /// VLANs of the `vlan` segments trunked on it, sorted.
    pub vlans: Vec<u16>,
}

/// The uplinks the segments ask for, with their VLANs.
pub fn planned(segments: &[SegmentConfig]) -> BTreeMap<String, Vec<u16>> {
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for seg in segments
        .iter()
        .filter(|s| s.kind == SegmentKind::Vlan && s.vlan != 0)
    {
        if let Some(u) = &seg.uplink {
            let vlans = out.entry(u.clone()).or_default();
            if !vlans.contains(&seg.vlan) {
                vlans.push(seg.vlan);
                vlans.sort_unstable();
            }
        }
    }
    out
}

/// Attaches every uplink of `segments` to the bridge as a trunk of exactly
/// its segments' VLANs, each asking for its own ofport from the reserved
/// range ([`requested_ofport`]); a port of ours whose trunks differ gets
/// them set in place, in one OVSDB transaction (a segment added or removed
/// at run time: the port, its ofport and its flows stay).
/// The returned ofports are the ones OVSDB reports (a port kept from an
/// older configuration may hold another number), and the flows use those.
/// More uplinks than the range holds is an error that changes nothing.
pub async fn ensure_uplinks(
    ovsdb: &ovsdb::Client,
    bridge: &str,
    segments: &[SegmentConfig],
) -> Result<Vec<Uplink>, UplinkError> {
    let planned = planned(segments);
    let ofports: Vec<u32> = (0..planned.len())
        .map(requested_ofport)
        .collect::<Option<_>>()
        .ok_or(UplinkError::TooMany {
            count: planned.len(),
        })?;
    let mut out = Vec::new();
    for ((name, vlans), number) in planned.into_iter().zip(ofports) {
        let mut spec = PortSpec::new(&name)
            .with_trunks(&vlans)
            .with_external_id(crate::attachment::KEY_OWNER, "switchyard-agent-uplink");
        spec.vlan_mode = Some("trunk".to_string());
        let port = ReservedPort {
            role: "uplink",
            spec,
            ofport: Ofport::Requested(number),
        };
        let existing = ovsdb.port(&name).await.map_err(port.error(Step::Read))?;
        let mut have: Vec<u16> = existing
            .as_ref()
            .map(|p| p.trunks.clone())
            .unwrap_or_default();
        have.sort_unstable();
        let mut found = Found::of(existing.as_ref(), |_| have == vlans);
        let ours = existing.as_ref().is_some_and(|p| {
            p.external_ids
                .get(crate::attachment::KEY_OWNER)
                .map(String::as_str)
                == Some("switchyard-agent-uplink")
        });
        if found == Found::Different && ours {
            tracing::info!(uplink = %name, ?have, want = ?vlans, "setting the uplink's trunks");
            set_trunks(ovsdb, &name, &vlans)
                .await
                .map_err(port.error(Step::Add))?;
            found = Found::AsWanted;
        } else if found == Found::Different {
            tracing::info!(uplink = %name, ?have, want = ?vlans, "re-creating the uplink with the configured trunks");
        }
        let got = port.ensure(ovsdb, bridge, found).await?;
        tracing::info!(uplink = %name, ofport = got, ?vlans, "uplink attached");
        out.push(Uplink {
            name,
            ofport: got,
            vlans,
        });
    }
    Ok(out)
}

/// Sets a port's `trunks` in one OVSDB transaction.
async fn set_trunks(ovsdb: &ovsdb::Client, name: &str, vlans: &[u16]) -> Result<(), ovsdb::Error> {
    let row: ovsdb::Row = [(
        "trunks".to_string(),
        ovsdb::Value::set(vlans.iter().map(|v| i64::from(*v))),
    )]
    .into();
    ovsdb
        .transact(
            ovsdb::vswitch::DB,
            &[ovsdb::Operation::update(
                "Port",
                vec![ovsdb::Condition::eq("name", name)],
                row,
            )],
        )
        .await
        .map(|_| ())
}

/// The flows of every uplink and its VLANs (cookie object
/// [`cookie_object::UPLINK`]).
pub fn uplink_flows(generation: u8, uplinks: &[Uplink], gateway_ip: Ipv4Addr) -> Vec<Flow> {
    let c = cookie(generation, cookie_object::UPLINK);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    let mut out = Vec::new();
    for u in uplinks {
        for &vlan in &u.vlans {
            for (eth_type, next) in [
                (ETH_TYPE_IP, table::CONNTRACK),
                (ETH_TYPE_ARP, table::ARP_RESPONDER),
            ] {
                out.push(
                    f(table::CLASSIFIER, priority::SPECIFIC)
                        .matching(MatchField::in_port(u.ofport))
                        .matching(MatchField::vlan_vid(vlan))
                        .matching(MatchField::eth_type(eth_type))
                        .action(Action::PopVlan)
                        .action(reg::PORT_KIND.load(PortKind::Uplink))
                        .action(reg::SEGMENT_VLAN.load(vlan))
                        .action(next.goto()),
                );
            }
            for kind in [PortKind::Pod, PortKind::Uplink] {
                out.push(
                    f(table::ARP_RESPONDER, priority::SEGMENT_ARP_TO_L2)
                        .matching(MatchField::eth_type(ETH_TYPE_ARP))
                        .matching(reg::PORT_KIND.matching(kind))
                        .matching(reg::SEGMENT_VLAN.matching(vlan))
                        .action(table::L2_FORWARDING.goto()),
                );
                out.push(
                    f(table::L3_FORWARDING, priority::SEGMENT_SWITCHED)
                        .matching(MatchField::eth_type(ETH_TYPE_IP))
                        .matching(reg::PORT_KIND.matching(kind))
                        .matching(reg::SEGMENT_VLAN.matching(vlan))
                        .action(table::L3_FORWARDING.next().goto()),
                );
            }
            // A Service connection of a pod of the segment (the proxy has
            // DNATed it, ct_mark SERVICE): routed as the node's own traffic,
            // SNATed to the gateway address so the endpoint's replies come
            // back here (un-SNAT in CONNTRACK, see `flows`).
            for (state, ct) in [
                (
                    ct_state::NEW,
                    Ct {
                        commit: true,
                        zone: zone::GATEWAY_SNAT.ct(),
                        table: Some(table::L3_FORWARDING.id()),
                        nat: Some(Nat::src(IpAddr::V4(gateway_ip), None)),
                        exec: vec![ct_mark::SERVICE.set()],
                        ..Ct::default()
                    },
                ),
                (
                    0,
                    Ct {
                        zone: zone::GATEWAY_SNAT.ct(),
                        table: Some(table::L3_FORWARDING.id()),
                        nat: Some(Nat::existing()),
                        ..Ct::default()
                    },
                ),
            ] {
                out.push(
                    f(table::L3_FORWARDING, priority::SERVICE_FROM_SEGMENT)
                        .matching(MatchField::eth_type(ETH_TYPE_IP))
                        .matching(reg::PORT_KIND.matching(PortKind::Pod))
                        .matching(reg::SEGMENT_VLAN.matching(vlan))
                        .matching(MatchField::ct_state(
                            state | ct_state::TRK,
                            ct_state::NEW | ct_state::TRK | ct_state::RPL,
                        ))
                        .matching(ct_mark::SERVICE.matching())
                        .action(reg::PORT_KIND.load(PortKind::Gateway))
                        .action(reg::SEGMENT_VLAN.load(0))
                        .action(Action::Ct(ct)),
                );
            }
            // A reply of a pod of the segment to a connection that was
            // routed to it, not switched: a Service connection the proxy
            // DNATed on this node, or one another node's gateway tunnelled
            // here. It goes back the way it came, routed as the gateway's
            // traffic (a local pod, the node, or the tunnel), not to the
            // fabric, which knows nothing of pod CIDRs or gateway addresses.
            for mark in [ct_mark::SERVICE, ct_mark::FROM_REMOTE_GATEWAY] {
                out.push(
                    f(table::L3_FORWARDING, priority::REPLY_ROUTED_BACK)
                        .matching(MatchField::eth_type(ETH_TYPE_IP))
                        .matching(reg::PORT_KIND.matching(PortKind::Pod))
                        .matching(reg::SEGMENT_VLAN.matching(vlan))
                        .matching(MatchField::ct_state(
                            ct_state::RPL | ct_state::TRK,
                            ct_state::RPL | ct_state::TRK,
                        ))
                        .matching(mark.matching())
                        .action(reg::PORT_KIND.load(PortKind::Gateway))
                        .action(reg::SEGMENT_VLAN.load(0))
                        .action(table::L3_FORWARDING.resubmit()),
                );
            }
            out.push(
                f(table::L2_FORWARDING, priority::NORMAL)
                    .matching(reg::PORT_KIND.matching(PortKind::Pod))
                    .matching(reg::SEGMENT_VLAN.matching(vlan))
                    .action(reg::OUTPUT_PORT.load(u.ofport))
                    .action(table::L2_FORWARDING.next().goto()),
            );
            out.push(
                f(table::OUTPUT, priority::SPECIFIC)
                    .matching(reg::OUTPUT_PORT.matching(u.ofport))
                    .matching(reg::SEGMENT_VLAN.matching(vlan))
                    .action(Action::push_vlan())
                    .action(Action::set_vlan_vid(vlan))
                    .action(Action::Output(u.ofport)),
            );
        }
    }
    out
}

/// The extra flows of a pod of a `vlan` segment (cookie object: its
/// ofport, like its other flows); none for other segments.
pub fn pod_flows(generation: u8, pod: &PodPort, segment: Option<&SegmentConfig>) -> Vec<Flow> {
    if segment.is_none_or(|s| s.kind != SegmentKind::Vlan) || pod.vlan == 0 {
        return Vec::new();
    }
    let c = cookie(generation, pod.ofport);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    let ask = |kind: PortKind| {
        f(table::ARP_RESPONDER, priority::SPECIFIC)
            .matching(MatchField::eth_type(ETH_TYPE_ARP))
            .matching(reg::PORT_KIND.matching(kind))
            .matching(reg::SEGMENT_VLAN.matching(pod.vlan))
            .matching(MatchField::arp_op(ARP_REQUEST))
            .matching(MatchField::arp_tpa(pod.ip))
    };
    let mut from_uplink = flows::arp_reply_actions(pod.mac);
    // Tag the answer again before it leaves through the uplink.
    let out = from_uplink.pop();
    from_uplink.push(Action::push_vlan());
    from_uplink.push(Action::set_vlan_vid(pod.vlan));
    from_uplink.extend(out);
    debug_assert!(matches!(
        from_uplink.last(),
        Some(Action::Output(p)) if *p == port::IN_PORT
    ));
    vec![
        Flow {
            actions: flows::arp_reply_actions(pod.mac),
            ..ask(PortKind::Pod)
        },
        Flow {
            actions: from_uplink,
            ..ask(PortKind::Uplink)
        },
        f(table::L2_FORWARDING, priority::SPECIFIC)
            .matching(MatchField::eth_dst(pod.mac.0))
            .matching(reg::PORT_KIND.matching(PortKind::Uplink))
            .matching(reg::SEGMENT_VLAN.matching(pod.vlan))
            .action(reg::OUTPUT_PORT.load(pod.ofport))
            .action(table::L2_FORWARDING.next().goto()),
        // Another pod's Service connection to this pod (the proxy DNATed
        // it, not a reply; the segment's own pods were SNATed and re-routed
        // as the gateway's traffic at `SERVICE_FROM_SEGMENT` already): routed
        // to it as the gateway's traffic, which reaches a pod of any VLAN.
        f(table::L3_FORWARDING, priority::SERVICE_TO_SEGMENT_POD)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(reg::PORT_KIND.matching(PortKind::Pod))
            .matching(MatchField::ipv4_dst(pod.ip, 32))
            .matching(MatchField::ct_state(
                ct_state::TRK,
                ct_state::RPL | ct_state::TRK,
            ))
            .matching(ct_mark::SERVICE.matching())
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(reg::SEGMENT_VLAN.load(0))
            .action(table::L3_FORWARDING.resubmit()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink() -> Uplink {
        Uplink {
            name: "trunk0".into(),
            ofport: 3,
            vlans: vec![100, 200],
        }
    }

    #[test]
    fn uplink_flows_golden() {
        let text: Vec<String> = uplink_flows(2, &[uplink()], "10.244.0.1".parse().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 2 * 12, "{text:#?}");
        for line in &text {
            assert!(line.contains("cookie=0x5359010200030000"), "{line}");
        }
        let first = &text[0];
        assert!(first.contains("in_port=3"), "{first}");
        assert!(
            first.contains("dl_vlan=100") || first.contains("vlan_vid=0x1064"),
            "{first}"
        );
        assert!(first.contains("pop_vlan"), "{first}");
        assert!(first.contains("goto_table:20"), "{first}");
        let out = text.iter().find(|l| l.contains("table=70")).unwrap();
        assert!(out.contains("reg5=0x64"), "{out}");
        assert!(out.contains("push_vlan:0x8100"), "{out}");
        assert!(out.contains("output:3"), "{out}");
        let services: Vec<&String> = text
            .iter()
            .filter(|l| l.contains("priority=260") && l.contains("reg5=0x64"))
            .collect();
        assert_eq!(
            services,
            [
                "table=40,cookie=0x5359010200030000,priority=260,ip,reg0=0x3/0xf,reg5=0x64,ct_state=+new-rpl+trk,ct_mark=0x1/0x1 actions=set_field:0x2/0xf->reg0,set_field:0x0->reg5,ct(commit,table=40,zone=65523,nat(src=10.244.0.1),exec(set_field:0x1->ct_mark))",
                "table=40,cookie=0x5359010200030000,priority=260,ip,reg0=0x3/0xf,reg5=0x64,ct_state=-new-rpl+trk,ct_mark=0x1/0x1 actions=set_field:0x2/0xf->reg0,set_field:0x0->reg5,ct(table=40,zone=65523,nat)",
            ]
        );
        let replies: Vec<&String> = text
            .iter()
            .filter(|l| l.contains("priority=270") && l.contains("reg5=0x64"))
            .collect();
        assert_eq!(
            replies,
            [
                "table=40,cookie=0x5359010200030000,priority=270,ip,reg0=0x3/0xf,reg5=0x64,ct_state=+rpl+trk,ct_mark=0x1/0x1 actions=set_field:0x2/0xf->reg0,set_field:0x0->reg5,resubmit(,40)",
                "table=40,cookie=0x5359010200030000,priority=270,ip,reg0=0x3/0xf,reg5=0x64,ct_state=+rpl+trk,ct_mark=0x4/0x4 actions=set_field:0x2/0xf->reg0,set_field:0x0->reg5,resubmit(,40)",
            ]
        );
    }

    #[test]
    fn each_uplink_asks_for_its_own_reserved_ofport() {
        assert_eq!(requested_ofport(0), Some(ofport::UPLINK));
        assert_eq!(requested_ofport(1), Some(ofport::UPLINK + 1));
        assert_eq!(requested_ofport(12), Some(ofport::LAST_UPLINK));
        assert_eq!(requested_ofport(13), None);
    }

    #[test]
    fn each_uplinks_flows_use_its_own_ofport() {
        let second = Uplink {
            name: "trunk1".into(),
            ofport: 4,
            vlans: vec![300],
        };
        let text: Vec<String> = uplink_flows(2, &[uplink(), second], "10.244.0.1".parse().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3 * 12, "{text:#?}");
        let vlan300: Vec<&String> = text
            .iter()
            .filter(|l| {
                l.contains("dl_vlan=300")
                    || l.contains("vlan_vid=0x112c")
                    || l.contains("reg5=0x12c")
            })
            .collect();
        let classify: Vec<&&String> = vlan300.iter().filter(|l| l.contains("table=0,")).collect();
        assert_eq!(classify.len(), 2, "{vlan300:#?}");
        for l in classify {
            assert!(l.contains("in_port=4"), "{l}");
        }
        let out: Vec<&&String> = vlan300.iter().filter(|l| l.contains("table=70")).collect();
        assert!(!out.is_empty(), "{vlan300:#?}");
        for l in out {
            assert!(l.contains("output:4"), "{l}");
        }
        for l in text
            .iter()
            .filter(|l| l.contains("reg5=0x64") || l.contains("dl_vlan=100"))
        {
            assert!(!l.contains("in_port=4") && !l.contains("output:4"), "{l}");
        }
    }

    #[test]
    fn pod_flows_only_for_vlan_segments() {
        let pod = PodPort {
            ofport: 17,
            mac: "0a:58:0a:64:00:05".parse().unwrap(),
            ip: "10.100.0.5".parse().unwrap(),
            vlan: 100,
        };
        let overlay = SegmentConfig::overlay("default");
        assert!(pod_flows(1, &pod, Some(&overlay)).is_empty());
        assert!(pod_flows(1, &pod, None).is_empty());
        let seg = SegmentConfig {
            kind: SegmentKind::Vlan,
            vlan: 100,
            subnet: Some("10.100.0.0/24".parse().unwrap()),
            gateway: Some("10.100.0.1".parse().unwrap()),
            uplink: Some("trunk0".into()),
            ..SegmentConfig::overlay("vlan100")
        };
        let text: Vec<String> = pod_flows(1, &pod, Some(&seg))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 4);
        assert!(text[1].contains("push_vlan"), "{}", text[1]);
        assert!(text[1].ends_with("IN_PORT"), "{}", text[1]);
        assert!(text[2].contains("dl_dst=0a:58:0a:64:00:05"), "{}", text[2]);
        assert_eq!(
            text[3],
            "table=40,cookie=0x5359010100000011,priority=255,ip,reg0=0x3/0xf,nw_dst=10.100.0.5,ct_state=-rpl+trk,ct_mark=0x1/0x1 actions=set_field:0x2/0xf->reg0,set_field:0x0->reg5,resubmit(,40)"
        );
    }
}
