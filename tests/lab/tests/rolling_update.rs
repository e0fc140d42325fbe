//! A rolling update of a Service's backends under a steady stream of requests from outside
//! the cluster loses none of them (upstream's e2e accepts 5%), for `externalTrafficPolicy:
//! Cluster` through a node port and `Local` through a LoadBalancer address.
//!
//! The backends have a `preStop` `sleep` (the lab runtime runs it as kubelet does): a deleted
//! pod keeps serving while its endpoint is terminating, until the proxies have taken it out.
//! A new pod is created and Ready before each old one is deleted, as a Deployment with
//! `maxUnavailable: 0` does.
//!
//! The default run replaces 3 replicas under 20 requests/s for 10 s per policy; the issue's
//! 60 s run: `cargo test -p switchyard-lab --test rolling_update -- --ignored`.
//!
//! Needs root, OVS, nft and kubectl, and the binaries built (`cargo build -p switchyard-cni
//! -p switchyard-agent -p switchyard-proxy -p switchyard-lab`).

mod lab_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const NODE_PORT: u16 = 30087;
/// Routed by the test to node2 only (ETP Local: all backends are there).
const LB_IP: &str = "192.0.2.70";
const INTERVAL_MS: u64 = 50;

fn backend(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: roll\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    lifecycle:\n      preStop:\n        sleep:\n          seconds: 3\n---\n"
    )
}

fn service(etp: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: roll\n  namespace: default\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: {etp}\n  selector:\n    app: roll\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n    nodePort: {NODE_PORT}\n"
    )
}

/// Replaces `old` by `new` (each `(name, node)`), one at a time, new first, while
/// `echo-client` sends `requests` requests from `netns` to `target`, one every 50 ms.
/// Returns the answers (`-` for a failed request).
fn roll_under_load(
    lab: &Lab,
    netns: &str,
    target: &str,
    requests: u32,
    old: &[(&str, &str)],
    new: &[(&str, &str)],
) -> Vec<String> {
    let mut client = Command::new("ip")
        .args(["netns", "exec", netns, LAB, "echo-client", "--http", target])
        .args(["--count", &requests.to_string()])
        .args(["--interval-ms", &INTERVAL_MS.to_string(), "--timeout", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    for ((old, _), (name, node)) in old.iter().zip(new) {
        lab.apply(&backend(name, node));
        wait_running(lab, name, POD_DEADLINE);
        lab.kubectl_ok(&["delete", "pod", old, "--wait=false"]);
    }
    eprintln!("rolled {} pods in {:.1?}", new.len(), started.elapsed());
    let mut out = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = client.wait();
    out.lines().map(str::to_string).collect()
}

fn run(requests: u32) {
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let internet = fabric.internet_netns.clone();
    let n1 = info.node("node1").unwrap().address.to_string();
    let n2 = info.node("node2").unwrap().address.to_string();

    // ETP Cluster through node1's node port, backends on both nodes.
    let mut m = backend("a1", "node1") + &backend("a2", "node2") + &backend("a3", "node2");
    m.push_str(&service("Cluster"));
    lab.apply(&m);
    for name in ["a1", "a2", "a3"] {
        wait_running(&lab, name, POD_DEADLINE);
    }
    let node_port = format!("{n1}:{NODE_PORT}");
    eventually("the node port to answer", Duration::from_secs(20), || {
        (echo_client(&internet, "http", &node_port, 3)
            .iter()
            .all(|a| a != "-"))
        .then_some(())
    });
    let answers = roll_under_load(
        &lab,
        &internet,
        &node_port,
        requests,
        &[("a1", "node1"), ("a2", "node2"), ("a3", "node2")],
        &[("b1", "node1"), ("b2", "node2"), ("b3", "node2")],
    );
    report("ETP Cluster, node port via node1", &answers, requests);

    // ETP Local through the LoadBalancer address, routed to node2, backends there.
    lab.apply(&service("Local"));
    lab.kubectl_ok(&[
        "patch",
        "service",
        "roll",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{LB_IP}"}}]}}}}}}"#),
    ]);
    check(
        "route in the fabric",
        in_netns(
            &fabric.netns,
            &["ip", "route", "replace", LB_IP, "via", &n2],
        ),
    );
    check(
        "route in the internet",
        in_netns(
            &internet,
            &["ip", "route", "replace", LB_IP, "via", "198.51.100.1"],
        ),
    );
    lab.kubectl_ok(&["delete", "pod", "b1", "--wait=false"]);
    lab.apply(&backend("c0", "node2"));
    wait_running(&lab, "c0", POD_DEADLINE);
    let lb = format!("{LB_IP}:80");
    eventually("the LB address to answer", Duration::from_secs(20), || {
        (echo_client(&internet, "http", &lb, 3)
            .iter()
            .all(|a| a != "-"))
        .then_some(())
    });
    let answers = roll_under_load(
        &lab,
        &internet,
        &lb,
        requests,
        &[("b2", "node2"), ("b3", "node2"), ("c0", "node2")],
        &[("c1", "node2"), ("c2", "node2"), ("c3", "node2")],
    );
    report("ETP Local, LoadBalancer IP via node2", &answers, requests);
}

/// Prints which backends answered and asserts that every request was answered.
fn report(what: &str, answers: &[String], requests: u32) {
    let failed = answers.iter().filter(|a| *a == "-").count();
    let mut by_backend = std::collections::BTreeMap::new();
    for a in answers {
        *by_backend.entry(a.as_str()).or_insert(0) += 1;
    }
    eprintln!(
        "{what}: {} answers, {failed} failed: {by_backend:?}",
        answers.len()
    );
    assert_eq!(
        answers.len(),
        requests as usize,
        "{what}: every request reported"
    );
    assert_eq!(
        failed, 0,
        "{what}: failed requests during the rolling update: {by_backend:?}"
    );
}

/// 3 replicas replaced per policy under 20 requests/s for 10 s each: 0 failed requests.
#[test]
fn rolling_update_under_load_fails_no_request() {
    if !privileged("rolling_update_under_load_fails_no_request") {
        return;
    }
    run(200);
}

/// The same for 60 s per policy (the issue's figure).
#[test]
#[ignore = "60 s per policy; run with --ignored"]
fn rolling_update_under_load_for_a_minute_fails_no_request() {
    if !privileged("rolling_update_under_load_for_a_minute_fails_no_request") {
        return;
    }
    run(1200);
}
