//! LoadBalancer `L2` mode end to end: `switchyard-controller` assigns an address of a pool on
//! the underlay subnet, one agent answers ARP for it on its underlay interface, and a client in
//! the internet namespace reaches the Service through the fabric, which resolves the address
//! on the underlay like any neighbour.
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build --workspace
//! --bins`); fails with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1.
//! `cargo test -p switchyard-lab --test load_balancer_l2` (about a minute and a half);
//! the failover figure: `cargo test -p switchyard-lab --test load_balancer_l2 -- --ignored
//! --nocapture` (10 rounds, `SWITCHYARD_L2_ROUNDS` to change).

mod l2_support;
mod lab_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use l2_support::{Probe, arp_answers};
use lab_support::*;
use switchyard_lab::cluster::state::{LabInfo, underlay_mac};

const POD_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);
/// Generous: the measured gap is about 1 s (docs/benchmarks.md); a loaded machine may take
/// longer, never this long.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
const PEER_HTTP: u16 = 9090;
const PEER_UDP: u16 = 9091;
/// The internet namespace's address on its link to the fabric (the source of its requests).
const INTERNET_CLIENT: &str = "198.51.100.2";
/// The fabric's interface on the underlay.
const FABRIC_UNDERLAY: &str = "underlay";

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: web\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

fn service(etp: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: {etp}\n  selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 81\n    targetPort: {PEER_HTTP}\n  - name: probe\n    protocol: UDP\n    port: 82\n    targetPort: {PEER_UDP}\n"
    )
}

/// An echo server answering with the client's address in pod `name`.
fn pod_peer_server(info: &LabInfo, name: &str) -> Proc {
    peer_server(&info.pod_netns("default", name), PEER_HTTP, PEER_UDP)
}

fn svc_json(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&lab.kubectl_ok(&["get", "service", "web", "-o", "json"])).unwrap()
}

/// Nodes with the agent's proxy-ARP entry for `ip` (`ip neigh show proxy`).
fn holders(info: &LabInfo, ip: &str) -> Vec<String> {
    info.nodes
        .iter()
        .filter(|n| {
            let out = in_netns(&n.netns, &["ip", "-4", "neigh", "show", "proxy", ip]);
            String::from_utf8_lossy(&out.stdout).contains(ip)
        })
        .map(|n| n.name.clone())
        .collect()
}

fn single_holder(info: &LabInfo, ip: &str, what: &str) -> String {
    eventually(what, DEADLINE, || {
        let h = holders(info, ip);
        (h.len() == 1).then(|| h[0].clone())
    })
}

/// A metric of the agent on `node` (its endpoint is 127.0.0.1:9465 in the node namespace).
fn agent_metric(info: &LabInfo, node: &str, name: &str) -> Option<f64> {
    let out = in_netns(
        &info.node(node)?.netns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:9465/metrics",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The node whose underlay MAC the fabric's neighbour table has for `ip`.
fn fabric_owner(info: &LabInfo, fabric_netns: &str, ip: &str) -> Option<String> {
    let out = in_netns(
        fabric_netns,
        &["ip", "-4", "neigh", "show", ip, "dev", FABRIC_UNDERLAY],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let mac = words
        .windows(2)
        .find(|w| w[0] == "lladdr")
        .map(|w| w[1].to_string())?;
    info.nodes
        .iter()
        .find(|n| underlay_mac(n.address) == mac)
        .map(|n| n.name.clone())
}

/// The lab, the controller and an L2 pool on the underlay subnet.
struct Setup {
    lab: Lab,
    info: LabInfo,
    fabric_netns: String,
    internet: String,
    _controller: Proc,
}

fn setup(test: &str) -> Option<Setup> {
    if !privileged(test) {
        return None;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let controller_bin = sibling_binary("switchyard-controller", "switchyard-controller");
    let started = Instant::now();
    let lab = Lab::up(3, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    // The pool: 8 addresses at .240 of the underlay (nodes are .1-.3, the fabric .253).
    let base = u32::from(info.underlay.network()) + 240;
    let pool = format!("{}/29", Ipv4Addr::from(base));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    lab.kubectl_ok(&["apply", "-f", root.join("deploy/crds").to_str().unwrap()]);
    lab.apply(&format!(
        "apiVersion: switchyard.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: underlay\nspec:\n  cidrs: [\"{pool}\"]\n  announce:\n    mode: L2\n"
    ));
    let controller = spawn(
        Command::new(&controller_bin)
            .env("KUBECONFIG", lab.state.kubeconfig())
            .env("RUST_LOG", "info")
            .args(["--identity", "test-1", "--namespace", "switchyard-system"])
            .args(["--cluster-name", &lab.name])
            .args(["--metrics-address", "127.0.0.1:0"]),
        Some(lab.state.root().join("controller.log")),
    );
    Some(Setup {
        lab,
        info,
        fabric_netns: fabric.netns,
        internet: fabric.internet_netns,
        _controller: controller,
    })
}

fn fabric_sender(s: &Setup) -> (Ipv4Addr, [u8; 6]) {
    let ip = switchyard_lab::cluster::fabric::underlay_address(s.info.underlay).unwrap();
    let out = check(
        "fabric underlay MAC",
        in_netns(&s.fabric_netns, &["cat", "/sys/class/net/underlay/address"]),
    );
    let mut mac = [0u8; 6];
    for (i, part) in out.trim().split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    (ip, mac)
}

/// The Service's address, once assigned; how long it took.
fn lb_ip(lab: &Lab, since: Instant) -> (String, Duration) {
    let ip = eventually("web gets an address", DEADLINE, || {
        svc_json(lab)["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    });
    (ip, since.elapsed())
}

fn udp_answered_as(netns: &str, target: &str, seen_as: &str) {
    eventually(
        &format!("{netns} -> udp {target} answered as {seen_as}"),
        DEADLINE,
        || {
            let got = echo_client(netns, "udp", target, 3);
            got.iter().all(|a| a == seen_as).then_some(())
        },
    );
}

/// What one failover round saw.
struct Round {
    /// Longest time without a probe answer from the link going down.
    gap: Duration,
    /// The owner before.
    before: String,
    /// The owner after the failover.
    after: String,
    /// The nodes holding the proxy-ARP entry after the restore, each change once (e.g.
    /// `[node2] [node1,node2] [node1]`).
    holders: Vec<Vec<String>>,
    /// How often the fabric's neighbour entry changed node after the restore.
    fabric_changes: usize,
    /// The one holder at the end.
    settled: String,
}

impl Round {
    /// Whether a set of holders came back after another one (ownership went back and forth).
    fn flapped(&self) -> bool {
        self.holders
            .iter()
            .enumerate()
            .any(|(i, h)| self.holders[..i.saturating_sub(1)].contains(h))
    }
}

/// One failover: the owner's underlay link goes down, the probe resumes through another node;
/// the link comes back.
fn failover_round(s: &Setup, ip: &str, probe: &Probe) -> Round {
    let owner = single_holder(&s.info, ip, "one node answers ARP");
    eventually("the probe is answered", DEADLINE, || {
        (probe
            .since(Instant::now() - Duration::from_millis(500))
            .len()
            >= 5)
            .then_some(())
    });
    let underlay = s.info.underlay_netns();
    let down = Instant::now();
    check(
        "owner's underlay link down",
        in_netns(&underlay, &["ip", "link", "set", &owner, "down"]),
    );
    let new_owner = eventually(
        "the fabric moves to another node",
        FAILOVER_DEADLINE,
        || fabric_owner(&s.info, &s.fabric_netns, ip).filter(|n| *n != owner),
    );
    let moved = Instant::now();
    eventually("the probe is answered again", FAILOVER_DEADLINE, || {
        (probe.since(moved).len() >= 10).then_some(())
    });
    let gap = probe.longest_gap(down);
    // Back: watch the fabric's choice for 6 s (the returning node is eligible again after
    // 2 s of heartbeats).
    check(
        "owner's underlay link up",
        in_netns(&underlay, &["ip", "link", "set", &owner, "up"]),
    );
    let mut seen = vec![new_owner.clone()];
    let mut held: Vec<Vec<String>> = Vec::new();
    let start = Instant::now();
    let mut timeline = String::new();
    while start.elapsed() < Duration::from_secs(6) {
        if let Some(o) = fabric_owner(&s.info, &s.fabric_netns, ip)
            && seen.last() != Some(&o)
        {
            timeline.push_str(&format!(" {:.0?}: {o};", start.elapsed()));
            seen.push(o);
        }
        let h = holders(&s.info, ip);
        if held.last() != Some(&h) {
            timeline.push_str(&format!(" {:.0?}: holders {h:?};", start.elapsed()));
            held.push(h);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if seen.len() > 2 {
        // What the agents did, for the record of a flap.
        eprintln!("fabric after the restore:{timeline}");
        for n in &s.info.nodes {
            let log = std::fs::read_to_string(s.lab.state.node_dir(&n.name).join("agent.log"))
                .unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("L2 announcement"))
                .collect();
            eprintln!(
                "{}:\n{}",
                n.name,
                lines[lines.len().saturating_sub(12)..].join("\n")
            );
        }
    }
    let settled = single_holder(&s.info, ip, "one node answers ARP after the restore");
    eventually("the fabric follows the holder", DEADLINE, || {
        (fabric_owner(&s.info, &s.fabric_netns, ip).as_deref() == Some(settled.as_str()))
            .then_some(())
    });
    let back = Instant::now();
    eventually("the probe is answered after the restore", DEADLINE, || {
        (probe.since(back).len() >= 10).then_some(())
    });
    Round {
        gap,
        before: owner,
        after: new_owner,
        holders: held,
        fabric_changes: seen.len() - 1,
        settled,
    }
}

/// Puts the backend on a node that is not `avoid`; returns (pod name, node, server).
fn backend_off(s: &Setup, name: &str, avoid: &str) -> (String, Proc) {
    let node = s
        .info
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != avoid)
        .unwrap();
    s.lab.apply(&pod(name, &node));
    wait_running(&s.lab, name, POD_DEADLINE);
    (node, pod_peer_server(&s.info, name))
}

/// 3 nodes with the fabric, an L2 pool on the underlay, the controller on the host:
/// 1. A LoadBalancer Service gets an address, the finalizer and AddressAssigned=True; exactly
///    one node holds the proxy-ARP entry and exactly one MAC answers an ARP request from the
///    fabric: that node's; curl and UDP from the internet are answered; the fabric's
///    neighbour entry is that node's MAC.
/// 4. Failover: a 50 ms UDP probe from the internet; the owner's underlay link goes down; the
///    probe resumes through another node (the longest gap is printed); the link comes back:
///    the address moves back at most once and one node answers.
/// 5. ETP Local: the owner is the backend's node; the backend sees the client's address; the
///    pod moves to another node and the address follows.
#[test]
fn l2_announcement_failover_and_local_traffic() {
    let Some(s) = setup("l2_announcement_failover_and_local_traffic") else {
        return;
    };
    let _diag = DiagnosticsOnPanic(&s.lab, "this test");

    // 1. An address, one owner, one ARP answer.
    let created = Instant::now();
    s.lab.apply(&service("Cluster"));
    let (ip, took) = lb_ip(&s.lab, created);
    eprintln!("address {ip} assigned {took:.1?} after the Service was applied");
    let svc = svc_json(&s.lab);
    assert!(
        svc["metadata"]["finalizers"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f == "service.kubernetes.io/load-balancer-cleanup")),
        "{svc}"
    );
    assert!(
        svc["status"]["conditions"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == "switchyard.io/AddressAssigned" && c["status"] == "True")),
        "{svc}"
    );
    let owner = single_holder(&s.info, &ip, "one node answers ARP");
    let (backend_node, server) = backend_off(&s, "back", &owner);
    eprintln!("owner {owner}, backend on {backend_node}");
    let target_http = format!("http://{ip}:81/");
    eventually("curl from the internet", DEADLINE, || {
        let out = in_netns(
            &s.internet,
            &["curl", "-sS", "--max-time", "3", &target_http],
        );
        out.status.success().then_some(())
    });
    let udp_target = format!("{ip}:82");
    eventually("UDP from the internet", DEADLINE, || {
        let got = echo_client(&s.internet, "udp", &udp_target, 3);
        got.iter().all(|a| a != "-").then_some(())
    });
    assert_eq!(
        fabric_owner(&s.info, &s.fabric_netns, &ip).as_deref(),
        Some(owner.as_str()),
        "the fabric's neighbour entry is the owner's MAC"
    );
    let (sender_ip, sender_mac) = fabric_sender(&s);
    let answers = arp_answers(
        &s.fabric_netns,
        FABRIC_UNDERLAY,
        ip.parse().unwrap(),
        sender_ip,
        sender_mac,
    );
    eventually("the owner's metric counts the address", DEADLINE, || {
        (agent_metric(&s.info, &owner, "switchyard_agent_lb_l2_addresses") == Some(1.0))
            .then_some(())
    });
    let owner_mac = underlay_mac(s.info.node(&owner).unwrap().address);
    assert_eq!(
        answers,
        BTreeSet::from([owner_mac]),
        "exactly one ARP answer, from {owner}"
    );

    // 4. Failover and restore.
    let probe = Probe::start(&s.internet, udp_target.clone());
    let r = failover_round(&s, &ip, &probe);
    eprintln!(
        "failover {} -> {}: longest gap of the 50 ms UDP probe {:.2?}; after the restore the holders went {:?}, the fabric changed node {} time(s), settled on {}",
        r.before, r.after, r.gap, r.holders, r.fabric_changes, r.settled
    );
    assert!(!r.flapped(), "no flapping: holders {:?}", r.holders);
    for (node, metric) in [
        (&r.after, "switchyard_agent_lb_l2_takeovers_total"),
        (&r.after, "switchyard_agent_lb_l2_peer_deaths_total"),
        (&r.after, "switchyard_agent_lb_l2_releases_total"),
    ] {
        let v = agent_metric(&s.info, node, metric);
        assert!(v.is_some_and(|v| v >= 1.0), "{node} {metric} = {v:?}");
    }
    assert_eq!(
        r.settled, r.before,
        "the address moves back to its first choice"
    );
    drop(probe);

    // 5. ETP Local: the owner has a ready endpoint; the client's address is kept.
    s.lab.apply(&service("Local"));
    eventually(
        "the backend's node answers ARP, alone (Local)",
        DEADLINE,
        || (holders(&s.info, &ip) == [backend_node.clone()]).then_some(()),
    );
    eventually("the fabric follows to the backend's node", DEADLINE, || {
        (fabric_owner(&s.info, &s.fabric_netns, &ip).as_deref() == Some(backend_node.as_str()))
            .then_some(())
    });
    udp_answered_as(&s.internet, &udp_target, INTERNET_CLIENT);
    // Move the pod: the address follows.
    drop(server);
    s.lab.kubectl_ok(&["delete", "pod", "back", "--wait=true"]);
    let (moved_to, _server2) = backend_off(&s, "back2", &backend_node);
    eventually("the owner follows the pod", DEADLINE, || {
        (holders(&s.info, &ip) == [moved_to.clone()]).then_some(())
    });
    eventually("the fabric follows the pod", DEADLINE, || {
        (fabric_owner(&s.info, &s.fabric_netns, &ip).as_deref() == Some(moved_to.as_str()))
            .then_some(())
    });
    udp_answered_as(&s.internet, &udp_target, INTERNET_CLIENT);
    eprintln!("Local: address followed the pod from {backend_node} to {moved_to}");

    // Deleting the Service: nobody answers any more.
    s.lab.kubectl_ok(&["delete", "service", "web"]);
    eventually("no node answers after the delete", DEADLINE, || {
        holders(&s.info, &ip).is_empty().then_some(())
    });
}

/// The failover figure: 10 rounds (`SWITCHYARD_L2_ROUNDS`) of link down / recovered / link up
/// on one lab, printing each round's longest probe gap and the summary.
#[test]
#[ignore = "benchmark: about 10 s per round; cargo test -p switchyard-lab --test load_balancer_l2 -- --ignored --nocapture"]
fn l2_failover_gap_repeated() {
    let Some(s) = setup("l2_failover_gap_repeated") else {
        return;
    };
    let _diag = DiagnosticsOnPanic(&s.lab, "this test");
    let rounds: usize = std::env::var("SWITCHYARD_L2_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    s.lab.apply(&service("Cluster"));
    let (ip, _) = lb_ip(&s.lab, Instant::now());
    let owner = single_holder(&s.info, &ip, "one node answers ARP");
    let (_node, _server) = backend_off(&s, "back", &owner);
    let udp_target = format!("{ip}:82");
    eventually("UDP from the internet", DEADLINE, || {
        let got = echo_client(&s.internet, "udp", &udp_target, 3);
        got.iter().all(|a| a != "-").then_some(())
    });
    let probe = Probe::start(&s.internet, udp_target);
    let mut gaps = Vec::new();
    let (mut flaps, mut fabric_extra) = (0, 0);
    for round in 1..=rounds {
        let r = failover_round(&s, &ip, &probe);
        eprintln!(
            "round {round}: {} -> {}, longest gap {:.0} ms; restore: holders {:?}, fabric changed node {} time(s), settled on {}",
            r.before,
            r.after,
            r.gap.as_secs_f64() * 1000.0,
            r.holders,
            r.fabric_changes,
            r.settled
        );
        flaps += usize::from(r.flapped());
        fabric_extra += usize::from(r.fabric_changes > 1);
        gaps.push(r.gap.as_secs_f64() * 1000.0);
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "L2 failover gap over {rounds} rounds (50 ms UDP probe): min {:.0} ms, median {:.0} ms, max {:.0} ms; rounds whose holders went back and forth after the restore: {flaps}; rounds whose fabric entry changed more than once: {fabric_extra}",
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
}
