//! Faults in a running lab (issue 18's chaos suite, the lab half): each fault under a continuous
//! probe, with a leak check at the end. The node-level half (the agent killed in the middle of an
//! ADD) is `node-agent/tests/chaos.rs`; the others of the suite are named in
//! `docs/troubleshooting.md` ("Faults the suite exercises").
//!
//! Two-node lab with the real CNI binary, agent and proxy (`switchyard-lab up`); needs root,
//! OVS and kubectl, and the binaries built (`cargo build --workspace --bins`); fails with the
//! reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1. About 40 s.

mod lab_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lab_support::*;
use switchyard_lab::cluster::ops::{self, Daemon};

const NS: &str = "chaos";
const NEW_PODS: usize = 6;

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

/// Requests from `netns` to `target` until one is answered by each of `expect`.
fn answered_by_each(netns: &str, target: &str, expect: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    eventually(
        &format!("{target} answered by each of {expect:?} (seen so far: {seen:?})"),
        Duration::from_secs(60),
        || {
            seen.extend(
                echo_client(netns, "udp", target, 12)
                    .into_iter()
                    .filter(|a| a != "-"),
            );
            expect.is_subset(&seen).then_some(())
        },
    );
    assert!(
        seen.is_subset(expect),
        "{target} answered by {seen:?}, expected only {expect:?}"
    );
}

/// Requests every 100 ms from a pod namespace to a pod on the other node, counting the
/// unanswered ones, until dropped.
struct Probe {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
    lost: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(netns: &str, target: &str) -> Probe {
        let (stop, sent, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let (netns, target) = (netns.to_string(), target.to_string());
        let (s, n, l) = (stop.clone(), sent.clone(), lost.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let answers = echo_client(&netns, "udp", &target, 5);
                n.fetch_add(5, Ordering::Relaxed);
                let missing = 5 - answers.iter().filter(|a| *a != "-").count();
                l.fetch_add(u32::try_from(missing).unwrap_or(5), Ordering::Relaxed);
            }
        });
        Probe {
            stop,
            sent,
            lost,
            thread: Some(thread),
        }
    }

    /// Stops the probe; (sent, lost).
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `ovs-vsctl` on a lab node.
fn vsctl(lab: &Lab, node: &str, args: &[&str]) -> String {
    check(
        &format!("ovs-vsctl {}", args.join(" ")),
        Command::new("ovs-vsctl")
            .arg(format!(
                "--db=unix:{}",
                lab.state.ovsdb_socket(node).display()
            ))
            .args(args)
            .output()
            .unwrap(),
    )
}

/// The select group of the Service whose buckets go to `endpoints` on `node`, as
/// `ovs-ofctl dump-groups` shows it.
fn group_with_buckets(lab: &Lab, node: &str, endpoints: &BTreeSet<String>) -> Option<String> {
    let out = Command::new("ovs-ofctl")
        .env("OVS_RUNDIR", lab.state.ovs_dir(node))
        .args(["-O", "OpenFlow15", "dump-groups", "br-int"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|g| {
            g.matches("bucket_id").count() == endpoints.len()
                && endpoints
                    .iter()
                    .all(|ip| g.contains(&format!("dst={ip}:")) || g.contains(&format!("={ip}")))
        })
        .map(str::to_string)
}

#[test]
fn ovsdb_server_restarted_while_pods_are_created() {
    if !privileged("ovsdb_server_restarted_while_pods_are_created") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::up(2, &[]);
    let _diag = DiagnosticsOnPanic(&lab, "ovsdb-server restart");
    let mut m = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n---\n");
    m.push_str(&pod("client", "node1", "client"));
    m.push_str(&pod("far", "node2", "far"));
    lab.apply(&m);
    let far = wait_running_in(&lab, NS, "far", Duration::from_secs(60));
    wait_running_in(&lab, NS, "client", Duration::from_secs(60));
    let info = lab.info();
    let client = info.pod_netns(NS, "client");
    let far_target = format!("{far}:5353");
    answered_by_each(&client, &far_target, &BTreeSet::from(["far".to_string()]));

    // Established traffic between the nodes all along; new pods and a Service on node1 asked
    // for, and node1's ovsdb-server killed and started again while they are being made.
    let probe = Probe::start(&client, &far_target);
    let mut m = String::new();
    for i in 0..NEW_PODS {
        m.push_str(&pod(&format!("w{i}"), "node1", "w"));
    }
    m.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: w\n  namespace: {NS}\nspec:\n  selector:\n    app: w\n  ports:\n  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n"
    ));
    // ovsdb-server is killed once node1's agent serves the first of the new pods' ADDs. (Not
    // stopped first to hold the ADDs half done: the agent's OVSDB echo probe notices a stopped
    // server within seconds and answers ADDs with 11 without starting them.)
    let agent_log = lab.state.node_dir("node1").join("agent.log");
    let adds = || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .matches("CNI request verb=Add")
            .count()
    };
    let adds_before = adds();
    lab.apply(&m);
    eventually(
        "node1's agent serving a new pod's ADD",
        Duration::from_secs(60),
        || (adds() > adds_before).then_some(()),
    );
    let restarted = Instant::now();
    ops::restart(&lab.state, "node1", Daemon::Ovsdb).expect("restart node1's ovsdb-server");
    eprintln!(
        "node1's ovsdb-server killed and started again in {:.1?}",
        restarted.elapsed()
    );

    // Every pod starts (the runtime retries what failed), with its own address.
    let mut addresses = BTreeSet::new();
    for i in 0..NEW_PODS {
        let ip = wait_running_in(&lab, NS, &format!("w{i}"), Duration::from_secs(120));
        assert!(addresses.insert(ip.clone()), "address {ip} given twice");
    }
    let (sent, lost) = probe.finish();
    eprintln!("probe to the other node during the restart: {lost} lost of {sent}");
    assert_eq!(
        lost, 0,
        "the datapath does not depend on ovsdb-server: {lost} of {sent} requests lost"
    );

    // Each new pod answers, directly and through the Service; the Service's group on node1 has
    // a bucket for each of them.
    for i in 0..NEW_PODS {
        let name = format!("w{i}");
        let ip = wait_running_in(&lab, NS, &name, Duration::from_secs(5));
        answered_by_each(&client, &format!("{ip}:5353"), &BTreeSet::from([name]));
    }
    let names: BTreeSet<String> = (0..NEW_PODS).map(|i| format!("w{i}")).collect();
    let vip = cluster_ip(&lab, NS, "w");
    answered_by_each(&client, &format!("{vip}:53"), &names);
    eventually(
        "node1's group for Service w with a bucket per pod",
        Duration::from_secs(30),
        || group_with_buckets(&lab, "node1", &addresses),
    );

    // No leak: node1's bridge has one pod port per pod on node1, each in OVSDB once.
    let ports: Vec<String> = vsctl(&lab, "node1", &["list-ports", "br-int"])
        .lines()
        .filter(|p| p.starts_with("sy") && *p != "sy-tun0" && *p != "sy-gw0")
        .map(str::to_string)
        .collect();
    assert_eq!(
        ports.len(),
        NEW_PODS + 1,
        "node1's pod ports after the restart: {ports:?}"
    );
    let unique: BTreeSet<&String> = ports.iter().collect();
    assert_eq!(unique.len(), ports.len(), "a port twice: {ports:?}");
}
