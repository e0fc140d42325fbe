//! Issue 16, test 1 (the isolation part) on the multi-node lab (`switchyard-lab up
//! --fabric`, real OVS, the real agent and CNI binary, `switchyard-controller` on the
//! host): pods of two namespace networks, `blue` and `green`, each with a pod on both
//! nodes.
//!
//! - the two namespaces get different VLANs and subnets;
//! - pods of one namespace reach each other across nodes on their own L2 segment (reply
//!   TTL 64: no router between them);
//! - a pod of `blue` reaches `green`'s pods, on its node and on the other node, only routed
//!   through the fabric (reply TTL 63: one router hop, the fabric's gateways);
//! - at L2 they cannot reach each other: `blue`'s pod, told that `green`'s pod is on its
//!   link, gets no ARP answer, and with `green`'s MAC written into its neighbour table its
//!   frames are not delivered either (no reply), on the same node and across nodes.
//!
//! Needs root, OVS and kubectl, and the binaries built (`cargo build -p switchyard-cni -p
//! switchyard-agent -p switchyard-proxy -p switchyard-lab -p switchyard-controller`); fails
//! with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1.
//! `cargo test -p switchyard-lab --test namespace_isolation` (about 20 s).

mod lab_support;
mod nsnet_support;

use std::time::{Duration, Instant};

use lab_support::*;
use nsnet_support::*;
use switchyard_lab::cluster::fabric;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn pods_of_two_namespace_networks_meet_only_through_the_fabric() {
    if !privileged("pods_of_two_namespace_networks_meet_only_through_the_fabric") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let started = Instant::now();
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    apply_crds(&lab);
    let _controller = start_controller(
        &lab,
        &[
            "--namespace-vlans",
            "310-319",
            "--namespace-supernet",
            "10.31.0.0/24",
            "--namespace-subnet-prefix",
            "26",
        ],
    );
    let mut m = String::new();
    for ns in ["blue", "green"] {
        m.push_str(&namespace(ns));
        m.push_str(&pod(ns, &format!("{ns}1"), "node1"));
        m.push_str(&pod(ns, &format!("{ns}2"), "node2"));
    }
    lab.apply(&m);

    // Each namespace's VLAN and subnet; the fabric owns each gateway on its VLAN.
    let mut nets = Vec::new();
    for ns in ["blue", "green"] {
        let seg = eventually(&format!("Segment ns-{ns}"), DEADLINE, || {
            segment_json(&lab, &format!("ns-{ns}"))
        });
        let vlan = u16::try_from(seg["spec"]["vlan"].as_u64().unwrap()).unwrap();
        let (subnet, gateway) = subnets(&seg)[0];
        eprintln!("ns-{ns}: VLAN {vlan}, subnet {subnet}, gateway {gateway}");
        fabric::add_vlan_gateway(
            &lab.state,
            &info,
            vlan,
            ipnet::Ipv4Net::new(gateway, subnet.prefix_len()).unwrap(),
        )
        .unwrap();
        nets.push((vlan, subnet));
    }
    assert_ne!(nets[0].0, nets[1].0, "one VLAN each");
    assert_ne!(nets[0].1, nets[1].1, "one subnet each");

    let mut ips = std::collections::BTreeMap::new();
    for (i, ns) in ["blue", "green"].into_iter().enumerate() {
        for p in [format!("{ns}1"), format!("{ns}2")] {
            let ip: std::net::Ipv4Addr =
                wait_running_in(&lab, ns, &p, POD_DEADLINE).parse().unwrap();
            assert!(
                nets[i].1.contains(&ip),
                "{p} got {ip}, outside {}",
                nets[i].1
            );
            ips.insert(p, ip.to_string());
        }
    }
    let blue1 = info.pod_netns("blue", "blue1");

    // Same namespace, other node: the same L2 segment, no router in between.
    let ttl = eventually("blue1 reaching blue2", DEADLINE, || {
        ping_ttl(&blue1, &ips["blue2"])
    });
    assert_eq!(ttl, 64, "blue1 -> blue2 crossed a router");

    // Other namespace, same node and other node: routed by the fabric, one hop.
    for target in ["green1", "green2"] {
        let ttl = eventually(&format!("blue1 reaching {target}"), DEADLINE, || {
            ping_ttl(&blue1, &ips[target])
        });
        eprintln!("blue1 -> {target} ({}): reply TTL {ttl}", ips[target]);
        assert_eq!(ttl, 63, "blue1 -> {target} not routed through one router");
    }

    // The check below works: blue2's address with blue2's MAC written into blue1's
    // neighbour table is reached (same segment, TTL 64).
    let blue2_mac = mac_of(&info.pod_netns("blue", "blue2"));
    check(
        "static neighbour for blue2 in blue1",
        in_netns(
            &blue1,
            &[
                "ip",
                "neigh",
                "replace",
                &ips["blue2"],
                "lladdr",
                &blue2_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        ),
    );
    assert_eq!(ping_ttl(&blue1, &ips["blue2"]), Some(64));

    // At L2 they do not meet. blue1 is told green's pods are on its link: ARP gets no
    // answer; with green's MAC written in, the frames are not delivered either.
    for target in ["green1", "green2"] {
        let ip = &ips[target];
        let host = format!("{ip}/32");
        check(
            "on-link route in blue1",
            in_netns(&blue1, &["ip", "route", "replace", &host, "dev", "eth0"]),
        );
        assert_eq!(
            ping_ttl(&blue1, ip),
            None,
            "blue1 reached {target} at L2 by ARP"
        );
        let neigh = check(
            "ip neigh show",
            in_netns(&blue1, &["ip", "neigh", "show", ip, "dev", "eth0"]),
        );
        assert!(
            !neigh.contains("lladdr"),
            "{target}'s address was resolved on blue's segment: {neigh}"
        );
        let mac = mac_of(&info.pod_netns("green", target));
        check(
            "static neighbour in blue1",
            in_netns(
                &blue1,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            ),
        );
        assert_eq!(
            ping_ttl(&blue1, ip),
            None,
            "blue1's frames to {target}'s MAC {mac} were delivered"
        );
        // Back to the gateway: routed again.
        check(
            "neighbour removed",
            in_netns(&blue1, &["ip", "neigh", "del", ip, "dev", "eth0"]),
        );
        check(
            "on-link route removed",
            in_netns(&blue1, &["ip", "route", "del", &host, "dev", "eth0"]),
        );
        let ttl = eventually(&format!("blue1 reaching {target} again"), DEADLINE, || {
            ping_ttl(&blue1, ip)
        });
        assert_eq!(ttl, 63);
    }
    eprintln!("test took {:.1?}", started.elapsed());
}
