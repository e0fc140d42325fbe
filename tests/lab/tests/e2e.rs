//! End-to-end suite (issue 5) on the multi-node lab with every real part: `switchyard-lab up`
//! (netns nodes, one `ovsdb-server`/`ovs-vswitchd` each, userspace datapath), the real
//! `switchyard-agent` and `switchyard-proxy` on each node, the real `switchyard` CNI binary run
//! by the lab's runtime driver as libcni runs it, and `kubectl` against the lab API server.
//!
//! Two labs, each owned by one test and removed on drop (also when a step panics):
//!
//! - `e2e_pods_services_vlan_and_bad_inputs` (2 nodes, fabric with VLAN 100): independent
//!   steps, each run to the end even when an earlier one failed, the test failing with the list
//!   of failed steps: pod-to-pod and node-to-pod (HTTP and DNS-like UDP) on one node and across
//!   nodes in the overlay and in a `vlan` segment; ClusterIP Services (spread over backends,
//!   UDP, no endpoints rejects fast, scale down/up followed, sessionAffinity ClientIP, hairpin);
//!   bad inputs (VLAN 5000, unknown segment, malformed network configurations given to the CNI
//!   binary) leave the lab healthy.
//! - `e2e_restarts_with_a_continuous_probe_then_node_removal` (3 nodes): a client pod probes a
//!   pod on its node, a pod on another node and a ClusterIP every 50 ms (UDP: new flows, and
//!   established flows on one connected socket) while the agent, the proxy and `ovs-vswitchd`
//!   of its node are restarted one after the other; the measured loss is printed and bounded.
//!   Then a node is removed (Node object deleted, its namespace and daemons gone): the others
//!   drop its route and flows and keep working.
//!
//! Needs root, OVS, curl and kubectl, and the binaries built (`cargo test --workspace` builds
//! them); fails with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1. On failure each
//! step prints, per node, `ovs-ofctl -O OpenFlow15 dump-flows br-int`, `ovs-vsctl show`, the
//! routes and the agent and proxy logs.

mod lab_support;

use std::net::{SocketAddr, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab_support::*;
use switchyard_lab::cluster::ops::{self, Daemon};
use switchyard_lab::cluster::{state::NodeInfo, status, sys};

const POD_DEADLINE: Duration = Duration::from_secs(60);
const REACH_DEADLINE: Duration = Duration::from_secs(20);
/// The proxy's metrics endpoint (its default address) inside a node namespace.
const PROXY_METRICS: &str = "http://127.0.0.1:10249/metrics";

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Diagnostics

/// A named step of a test on a shared lab.
type Step<'a> = (&'a str, fn(&Lab));

/// Runs every step (each with diagnostics on failure), then fails listing the failed ones.
fn run_steps(lab: &Lab, steps: &[Step<'_>]) {
    let mut failed = Vec::new();
    for (name, step) in steps {
        let started = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _diag = DiagnosticsOnPanic(lab, name);
            step(lab);
        }));
        eprintln!(
            "step {name}: {} in {:.1?}",
            if r.is_ok() { "ok" } else { "FAILED" },
            started.elapsed()
        );
        if r.is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed steps: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// Pods and traffic

fn pod_manifest(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    let mut meta = format!("  name: {name}\n  namespace: {namespace}\n");
    for (title, pairs) in [("labels", labels), ("annotations", annotations)] {
        if !pairs.is_empty() {
            meta.push_str(&format!("  {title}:\n"));
            for (k, v) in pairs {
                meta.push_str(&format!("    {k}: \"{v}\"\n"));
            }
        }
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n{meta}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

fn service_manifest(namespace: &str, name: &str, app: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  selector:\n    app: {app}\n{extra_spec}  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n"
    )
}

fn namespace_manifest(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n---\n")
}

/// A namespace whose pods may choose their own segment and VLAN (the cluster admin's
/// `switchyard.io/pod-placement: allow`; by default the namespace decides).
fn namespace_manifest_pods_choose(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations:\n    switchyard.io/pod-placement: allow\n---\n"
    )
}

/// Waits until the pod is Running and Ready; returns its IP.
fn running(lab: &Lab, namespace: &str, pod: &str) -> String {
    wait_running_in(lab, namespace, pod, POD_DEADLINE)
}

/// Polls until every one of `count` requests from `netns` to `target` is answered, each answer
/// in `expect`; returns the answers.
fn reach_all(netns: &str, proto: &str, target: &str, count: u32, expect: &[&str]) -> Vec<String> {
    let end = Instant::now() + REACH_DEADLINE;
    loop {
        let answers = echo_client(netns, proto, target, count);
        let ok =
            answers.len() == count as usize && answers.iter().all(|a| expect.contains(&a.as_str()));
        if ok {
            return answers;
        }
        assert!(
            Instant::now() < end,
            "{netns} -> {proto} {target}: answers {answers:?}, expected each in {expect:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `from` reaches `target_ip` over HTTP (8080) and UDP (5353), answered by `expect`.
fn reach_pod(from: &str, target_ip: &str, expect: &str) {
    reach_all(from, "http", &format!("{target_ip}:8080"), 1, &[expect]);
    reach_all(from, "udp", &format!("{target_ip}:5353"), 3, &[expect]);
}

fn distinct(answers: &[String]) -> std::collections::BTreeSet<&str> {
    answers.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// Lab 1: pods, Services, VLAN segment, bad inputs

fn lab_up(nodes: usize, extra: &[&str]) -> Lab {
    Lab::up_with_daemons(nodes, extra)
}

/// Overlay pods: pod-to-pod on one node and across nodes, node-to-pod from both nodes, HTTP
/// and DNS-like UDP.
fn step_overlay_pod_to_pod_and_node_to_pod(lab: &Lab) {
    let ns = "e2e-pods";
    let mut m = namespace_manifest(ns);
    for (pod, node) in [("a1", "node1"), ("b1", "node1"), ("a2", "node2")] {
        m.push_str(&pod_manifest(ns, pod, node, &[], &[]));
    }
    lab.apply(&m);
    let ips: Vec<(&str, String)> = ["a1", "b1", "a2"]
        .into_iter()
        .map(|p| (p, running(lab, ns, p)))
        .collect();
    pods_and_nodes_reach_every_pod(lab, ns, &ips);
}

/// Every pod of `ips` (name, IP) in `ns` reaches every other one, and every node reaches each.
fn pods_and_nodes_reach_every_pod(lab: &Lab, ns: &str, ips: &[(&str, String)]) {
    let info = lab.info();
    for (from, _) in ips {
        for (to, ip) in ips {
            if from != to {
                reach_pod(&info.pod_netns(ns, from), ip, to);
            }
        }
    }
    for n in &info.nodes {
        for (to, ip) in ips {
            reach_pod(&n.netns, ip, to);
        }
    }
}

/// `vlan100` segment pods (through the fabric): same node, across nodes, node-to-pod.
fn step_vlan_segment_pod_to_pod_and_node_to_pod(lab: &Lab) {
    let ns = "e2e-vlan";
    let mut m = namespace_manifest_pods_choose(ns);
    let seg = [("switchyard.io/segment", "vlan100")];
    for (pod, node) in [("v1", "node1"), ("w1", "node1"), ("v2", "node2")] {
        m.push_str(&pod_manifest(ns, pod, node, &[], &seg));
    }
    lab.apply(&m);
    let ips: Vec<(&str, String)> = ["v1", "w1", "v2"]
        .into_iter()
        .map(|p| (p, running(lab, ns, p)))
        .collect();
    let fabric = lab.info().fabric.expect("lab has a fabric");
    let subnet = fabric.vlans[0].subnet;
    for (pod, ip) in &ips {
        let addr: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(subnet.contains(&addr), "{pod} got {ip}, not in {subnet}");
    }
    pods_and_nodes_reach_every_pod(lab, ns, &ips);
}

/// ClusterIP: backends on both nodes get the requests (TCP and UDP); scaling down and up is
/// followed; a Service without endpoints refuses at once; sessionAffinity ClientIP sticks;
/// a backend reaches its own Service (hairpin).
fn step_cluster_ip_services(lab: &Lab) {
    let ns = "e2e-svc";
    let mut m = namespace_manifest(ns);
    for (pod, node) in [("web-1", "node1"), ("web-2", "node2"), ("web-3", "node1")] {
        m.push_str(&pod_manifest(ns, pod, node, &[("app", "web")], &[]));
    }
    m.push_str(&pod_manifest(
        ns,
        "client",
        "node1",
        &[("app", "client")],
        &[],
    ));
    m.push_str(&service_manifest(ns, "web", "web", ""));
    m.push_str(&service_manifest(ns, "empty", "nothing", ""));
    m.push_str(&pod_manifest(ns, "far", "node2", &[("app", "far")], &[]));
    m.push_str(&service_manifest(ns, "remote", "far", ""));
    m.push_str(&service_manifest(
        ns,
        "sticky",
        "web",
        "  sessionAffinity: ClientIP\n",
    ));
    lab.apply(&m);
    for p in ["web-1", "web-2", "web-3", "client", "far"] {
        running(lab, ns, p);
    }
    let info = lab.info();
    let client = info.pod_netns(ns, "client");
    let vip = cluster_ip(lab, ns, "web");
    let all = ["web-1", "web-2", "web-3"];
    // Spread: 30 new connections reach all three backends (each misses with p = (2/3)^30).
    let spread = |proto: &str, port: u16, expect: &[&str]| {
        eventually(
            &format!("{proto} to {vip}:{port} spread over {expect:?}"),
            REACH_DEADLINE,
            || {
                let answers = reach_all(&client, proto, &format!("{vip}:{port}"), 30, expect);
                (distinct(&answers).len() == expect.len()).then_some(answers)
            },
        )
    };
    let answers = spread("http", 80, &all);
    eprintln!("ClusterIP HTTP spread: {answers:?}");
    spread("udp", 53, &all);

    // The only backend on the other node.
    let remote = cluster_ip(lab, ns, "remote");
    reach_all(&client, "http", &format!("{remote}:80"), 5, &["far"]);
    reach_all(&client, "udp", &format!("{remote}:53"), 5, &["far"]);

    // No endpoints: refused at once (curl exit 7), not a timeout.
    let empty = cluster_ip(lab, ns, "empty");
    let started = Instant::now();
    let out = in_netns(
        &client,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{empty}:80/"),
        ],
    );
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(7),
        "a Service without endpoints must refuse (curl exit 7), got {:?}",
        out.status
    );
    assert!(
        took < Duration::from_secs(2),
        "refusal took {took:?}, expected at once"
    );

    // Scale down: web-3 deleted, the Service follows.
    lab.kubectl_ok(&["-n", ns, "delete", "pod", "web-3", "--wait=false"]);
    spread("http", 80, &["web-1", "web-2"]);
    // Scale up: web-4 on node2 joins.
    lab.apply(&pod_manifest(ns, "web-4", "node2", &[("app", "web")], &[]));
    running(lab, ns, "web-4");
    spread("http", 80, &["web-1", "web-2", "web-4"]);
    spread("udp", 53, &["web-1", "web-2", "web-4"]);

    // Session affinity: every request of one client goes to one backend.
    let sticky = cluster_ip(lab, ns, "sticky");
    let answers = reach_all(
        &client,
        "http",
        &format!("{sticky}:80"),
        15,
        &["web-1", "web-2", "web-4"],
    );
    assert_eq!(
        distinct(&answers).len(),
        1,
        "sessionAffinity ClientIP spread one client over backends: {answers:?}"
    );

    // Hairpin: a backend reaches its own Service (some requests land on itself).
    let web1 = info.pod_netns(ns, "web-1");
    let answers = eventually(
        "web-1 reaches itself through its Service",
        REACH_DEADLINE,
        || {
            let a = reach_all(
                &web1,
                "http",
                &format!("{vip}:80"),
                20,
                &["web-1", "web-2", "web-4"],
            );
            a.iter().any(|x| x == "web-1").then_some(a)
        },
    );
    eprintln!("hairpin answers: {answers:?}");
}

/// internalTrafficPolicy Local keeps each client on its node's backends; a UDP flow pinned to
/// a backend moves to another one when that backend goes away (its conntrack entry is flushed
/// rather than black-holing the flow).
fn step_service_local_policy_and_udp_endpoint_removal(lab: &Lab) {
    let ns = "e2e-svc2";
    let mut m = namespace_manifest(ns);
    for (pod, node, app) in [
        ("c1", "node1", "client"),
        ("c2", "node2", "client"),
        ("loc-1", "node1", "loc"),
        ("loc-2", "node2", "loc"),
        ("pin-1", "node1", "pin"),
        ("pin-2", "node2", "pin"),
    ] {
        m.push_str(&pod_manifest(ns, pod, node, &[("app", app)], &[]));
    }
    m.push_str(&service_manifest(
        ns,
        "local",
        "loc",
        "  internalTrafficPolicy: Local\n",
    ));
    m.push_str(&service_manifest(ns, "pinned", "pin", ""));
    lab.apply(&m);
    for p in ["c1", "c2", "loc-1", "loc-2", "pin-1", "pin-2"] {
        running(lab, ns, p);
    }
    let info = lab.info();
    let local = cluster_ip(lab, ns, "local");
    for (client, backend) in [("c1", "loc-1"), ("c2", "loc-2")] {
        reach_all(
            &info.pod_netns(ns, client),
            "http",
            &format!("{local}:80"),
            15,
            &[backend],
        );
    }

    // One connected UDP socket (one conntrack entry) to the Service.
    let pinned: SocketAddr = format!("{}:53", cluster_ip(lab, ns, "pinned"))
        .parse()
        .unwrap();
    reach_all(
        &info.pod_netns(ns, "c1"),
        "udp",
        &pinned.to_string(),
        10,
        &["pin-1", "pin-2"],
    );
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<Option<String>>();
    let path = format!("/run/netns/{}", info.pod_netns(ns, "c1"));
    let asker = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(pinned).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Until the test drops `answer_rx`.
        loop {
            let mut buf = [0u8; 512];
            let a = (s.send(b"q").is_ok())
                .then(|| s.recv(&mut buf).ok())
                .flatten()
                .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_string());
            if answer_tx.send(a).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let first = eventually(
        "a first answer on the pinned socket",
        REACH_DEADLINE,
        || {
            answer_rx
                .recv_timeout(Duration::from_secs(1))
                .ok()
                .flatten()
        },
    );
    // One flow, one backend: the next answers on the socket come from the same one.
    let before: Vec<Option<String>> = (0..5)
        .map(|_| {
            answer_rx
                .recv_timeout(Duration::from_secs(2))
                .ok()
                .flatten()
        })
        .collect();
    assert!(
        before.iter().all(|a| a.as_deref() == Some(first.as_str())),
        "one UDP flow answered by several backends: {first} then {before:?}"
    );
    let other = if first == "pin-1" { "pin-2" } else { "pin-1" };
    // The race behind the repeat flush, made certain: with node1's revalidators paused, the
    // datapath keeps the megaflow that DNATs this flow to `first`, so the first packet after
    // the proxy's flush re-creates the entry. Only the flush repeated after revalidation
    // (`conntrack_flushes_total{pass="after_revalidation"}`) frees the flow.
    let node1 = info.nodes.iter().find(|n| n.name == "node1").unwrap();
    let first_flushes = || proxy_flushes(node1, "first");
    let flushes_before = first_flushes();
    let paused = RevalidatorsPaused::pause(lab, "node1");
    lab.kubectl_ok(&["-n", ns, "delete", "pod", &first, "--wait=false"]);
    eventually(
        "node1's proxy to flush the removed endpoint",
        REACH_DEADLINE,
        || (first_flushes() > flushes_before).then_some(()),
    );
    // Two more send/receive rounds after the answers already queued: at least one packet went
    // out after the flush.
    while answer_rx.try_recv().is_ok() {}
    for _ in 0..2 {
        let _ = answer_rx.recv_timeout(Duration::from_secs(2));
    }
    drop(paused);
    // What the socket saw after the delete ("-" for no answer), for the failure message.
    let mut seen = Vec::new();
    let end = Instant::now() + REACH_DEADLINE;
    let moved = loop {
        if let Ok(a) = answer_rx.recv_timeout(Duration::from_secs(1)) {
            seen.push(a.clone().unwrap_or_else(|| "-".into()));
            if a.as_deref() == Some(other) {
                break seen.len();
            }
        }
        assert!(
            Instant::now() < end,
            "timed out after {REACH_DEADLINE:?} waiting for the UDP flow pinned to {first} to \
             move to {other}; answers since the delete: {seen:?}"
        );
    };
    drop(answer_rx);
    asker.join().unwrap();
    eprintln!("pinned UDP flow moved from {first} to {other} after {moved} answers");
    // Each proxy flushed the removed endpoint's entries twice: right away, and again once its
    // vswitchd's revalidators no longer held a cached flow that could re-create them.
    for node in &info.nodes {
        eventually(
            &format!(
                "{}'s proxy to repeat the flush after revalidation",
                node.name
            ),
            REACH_DEADLINE,
            || (proxy_flushes(node, "after_revalidation") >= 1.0).then_some(()),
        );
    }
}

/// `switchyard_proxy_conntrack_flushes_total{pass}` of a node's proxy (0 before the first).
fn proxy_flushes(node: &NodeInfo, pass: &str) -> f64 {
    let out = in_netns(
        &node.netns,
        &["curl", "-sf", "--max-time", "5", PROXY_METRICS],
    );
    metric_value(
        &String::from_utf8_lossy(&out.stdout),
        &format!("switchyard_proxy_conntrack_flushes_total{{pass=\"{pass}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A node's ovs-vswitchd with its revalidators paused (`revalidator/pause`) until dropped:
/// datapath flows keep their old actions whatever the OpenFlow tables say.
struct RevalidatorsPaused {
    ctl: std::path::PathBuf,
}

impl RevalidatorsPaused {
    fn pause(lab: &Lab, node: &str) -> Self {
        let dir = lab.state.ovs_dir(node);
        let pid = std::fs::read_to_string(dir.join("ovs-vswitchd.pid")).unwrap();
        let ctl = dir.join(format!("ovs-vswitchd.{}.ctl", pid.trim()));
        let this = Self { ctl };
        this.appctl("revalidator/pause");
        this
    }

    fn appctl(&self, command: &str) {
        let out = Command::new("ovs-appctl")
            .arg("-t")
            .arg(&self.ctl)
            .arg(command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-appctl {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RevalidatorsPaused {
    fn drop(&mut self) {
        self.appctl("revalidator/resume");
    }
}

/// A Service `both` with one backend on node1 and one on node2, in namespace `ns`; plus the
/// pods of `extra`. Returns the ClusterIP.
fn two_node_service(lab: &Lab, ns: &str, extra: &str) -> String {
    // `extra` pods may choose their segment (a `vlan` segment client).
    let mut m = namespace_manifest_pods_choose(ns);
    m.push_str(&pod_manifest(ns, "near", "node1", &[("app", "both")], &[]));
    m.push_str(&pod_manifest(ns, "far", "node2", &[("app", "both")], &[]));
    m.push_str(extra);
    m.push_str(&service_manifest(ns, "both", "both", ""));
    lab.apply(&m);
    for p in ["near", "far"] {
        running(lab, ns, p);
    }
    cluster_ip(lab, ns, "both")
}

/// `from` reaches both backends of [`two_node_service`] over TCP and UDP.
fn reaches_both_backends(from: &str, vip: &str) {
    for (proto, port) in [("http", 80), ("udp", 53)] {
        let answers = reach_all(from, proto, &format!("{vip}:{port}"), 20, &["near", "far"]);
        assert_eq!(distinct(&answers).len(), 2, "{from}: {answers:?}");
    }
}

/// ClusterIP from each node (host network, as kube-proxy serves it), to backends on the same
/// and on the other node.
fn step_cluster_ip_from_nodes(lab: &Lab) {
    let vip = two_node_service(lab, "e2e-svc-node", "");
    for n in &lab.info().nodes {
        reaches_both_backends(&n.netns, &vip);
    }
}

/// ClusterIP from a pod of a `vlan` segment, to overlay backends on the same and on the other
/// node.
fn step_cluster_ip_from_vlan_segment_pods(lab: &Lab) {
    let ns = "e2e-svc-vlan";
    let vclient = pod_manifest(
        ns,
        "vclient",
        "node1",
        &[],
        &[("switchyard.io/segment", "vlan100")],
    );
    let vip = two_node_service(lab, ns, &vclient);
    running(lab, ns, "vclient");
    reaches_both_backends(&lab.info().pod_netns(ns, "vclient"), &vip);
}

/// ClusterIP from the nodes themselves (kube-proxy serves host-network clients).
#[test]
fn e2e_cluster_ip_from_nodes() {
    if !privileged("e2e_cluster_ip_from_nodes") {
        return;
    }
    let lab = lab_up(2, &[]);
    run_steps(
        &lab,
        &[("cluster_ip_from_nodes", step_cluster_ip_from_nodes)],
    );
}

/// ClusterIP from `vlan`-segment pods.
#[test]
fn e2e_cluster_ip_from_vlan_segment_pods() {
    if !privileged("e2e_cluster_ip_from_vlan_segment_pods") {
        return;
    }
    let lab = lab_up(2, &["--fabric", "--vlans", "100"]);
    run_steps(
        &lab,
        &[(
            "cluster_ip_from_vlan_segment_pods",
            step_cluster_ip_from_vlan_segment_pods,
        )],
    );
}

/// Pod names of the OVS ports of a node (from the agent's external_ids).
fn port_pods(lab: &Lab, node: &NodeInfo) -> Vec<String> {
    status::node_ports(&lab.state, node)
        .into_iter()
        .filter_map(|p| p.external_ids.get("switchyard.io/pod-name").cloned())
        .collect()
}

/// Runs the real CNI binary against node1's agent with `stdin` as the network configuration;
/// returns (exit code, stdout JSON).
fn cni_exec(node: &NodeInfo, stdin: &str) -> (Option<i32>, serde_json::Value) {
    use std::io::Write;
    let plugin = sibling_binary("switchyard", "switchyard-cni");
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "e2ebadinput0123456789")
        .env("CNI_NETNS", format!("/run/netns/{}", node.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=e2e-bad;K8S_POD_NAME=raw;K8S_POD_INFRA_CONTAINER_ID=e2ebadinput0123456789",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "CNI stdout is not JSON ({e}): {:?} / stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

/// Bad inputs leave the lab healthy: a VLAN out of range and an unknown segment keep the pod
/// not Ready with the CNI error in its condition and no OVS port; malformed network
/// configurations given to the CNI binary get the CNI error codes of the spec and change
/// nothing; afterwards a normal pod works.
fn step_bad_inputs_leave_the_lab_healthy(lab: &Lab) {
    let ns = "e2e-bad";
    let info = lab.info();
    let node1 = info.nodes[0].clone();
    let ports_before = port_pods(lab, &node1);
    // Pods may choose here, so the values themselves are what is refused.
    let mut m = namespace_manifest_pods_choose(ns);
    m.push_str(&pod_manifest(
        ns,
        "vlan5000",
        "node1",
        &[],
        &[("switchyard.io/vlan", "5000")],
    ));
    m.push_str(&pod_manifest(
        ns,
        "nosegment",
        "node1",
        &[],
        &[("switchyard.io/segment", "no-such-segment")],
    ));
    lab.apply(&m);
    for (pod, needle) in [("vlan5000", "5000"), ("nosegment", "no-such-segment")] {
        let message = eventually(
            &format!("{pod}'s CNI error in its Ready condition"),
            POD_DEADLINE,
            || {
                let out = lab.kubectl(&["-n", ns, "get", "pod", pod, "-o", "json"]);
                let p: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let cond = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                assert_ne!(cond["status"], "True", "{pod} became Ready: {p}");
                cond["message"]
                    .as_str()
                    .filter(|m| m.contains(needle))
                    .map(str::to_string)
            },
        );
        eprintln!("{pod}: {message}");
    }
    let describe = lab.kubectl_ok(&["-n", ns, "describe", "pod", "vlan5000"]);
    assert!(describe.contains("5000"), "{describe}");

    // The real plugin, node1's agent socket, malformed configurations.
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.state.conflist("node1")).unwrap())
            .unwrap();
    let mut good = conflist["plugins"][0].clone();
    good["name"] = conflist["name"].clone();
    good["cniVersion"] = conflist["cniVersion"].clone();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = good.clone();
        c[key] = value;
        c.to_string()
    };
    for (what, stdin, code) in [
        ("truncated JSON", "{\"cniVersion\":".to_string(), 6),
        ("not an object", "[]".to_string(), 6),
        (
            "unsupported cniVersion",
            with("cniVersion", "9.9.9".into()),
            1,
        ),
        ("mtu of the wrong type", with("mtu", "big".into()), 7),
        (
            "an ipam section",
            with("ipam", serde_json::json!({"type": "host-local"})),
            2,
        ),
    ] {
        let (status, json) = cni_exec(&node1, &stdin);
        assert_ne!(status, Some(0), "{what}: the plugin succeeded: {json}");
        assert_eq!(json["code"], code, "{what}: {json}");
        assert!(
            json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg: {json}"
        );
    }
    assert_eq!(
        port_pods(lab, &node1),
        ports_before,
        "bad inputs left OVS ports behind"
    );

    // The lab is still healthy: a normal pod on the same node works and is reachable.
    lab.apply(&pod_manifest(ns, "good", "node1", &[], &[]));
    let ip = running(lab, ns, "good");
    reach_pod(&node1.netns, &ip, "good");
    let now = port_pods(lab, &node1);
    assert!(now.contains(&"good".to_string()), "{now:?}");
    assert!(
        !now.iter()
            .any(|p| p == "vlan5000" || p == "nosegment" || p == "raw"),
        "a failed ADD left a port: {now:?}"
    );
}

/// Pod-to-pod and node-to-pod (overlay and VLAN segment on one node and across nodes),
/// ClusterIP Services, and bad inputs, on one 2-node lab with a fabric.
#[test]
fn e2e_pods_services_vlan_and_bad_inputs() {
    if !privileged("e2e_pods_services_vlan_and_bad_inputs") {
        return;
    }
    let started = Instant::now();
    let lab = lab_up(2, &["--fabric", "--vlans", "100"]);
    run_steps(
        &lab,
        &[
            (
                "overlay_pod_to_pod_and_node_to_pod",
                step_overlay_pod_to_pod_and_node_to_pod,
            ),
            (
                "vlan_segment_pod_to_pod_and_node_to_pod",
                step_vlan_segment_pod_to_pod_and_node_to_pod,
            ),
            ("cluster_ip_services", step_cluster_ip_services),
            (
                "service_local_policy_and_udp_endpoint_removal",
                step_service_local_policy_and_udp_endpoint_removal,
            ),
            (
                "bad_inputs_leave_the_lab_healthy",
                step_bad_inputs_leave_the_lab_healthy,
            ),
        ],
    );
    eprintln!(
        "e2e_pods_services_vlan_and_bad_inputs: {:.1?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Lab 2: restarts under a continuous probe, then node removal

/// Period of the probe: one request per target every period, whether or not the earlier ones
/// were answered yet.
const PROBE_PERIOD: Duration = Duration::from_millis(50);
/// An answer arriving later than this after its request is counted as late (and reported
/// with its delay), not lost.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// A request still without an answer this long after it was sent is lost: the network
/// dropped it (a slow round trip on a loaded machine is late, not lost).
const PROBE_LOST_AFTER: Duration = Duration::from_secs(3);
/// How often a probe thread looks for answers on its non-blocking sockets (the resolution of
/// the measured delays).
const PROBE_TICK: Duration = Duration::from_millis(5);
/// Answered requests per target that prove the baseline before a disruption starts.
const PROBE_BASELINE_ANSWERS: usize = 10;
/// Answered requests per target, all sent after the disruption ended, that prove the service
/// is back before the probe finishes.
const PROBE_AFTER_ANSWERS: usize = 20;
/// Deadline of each of those two waits.
const PROBE_WAIT_DEADLINE: Duration = Duration::from_secs(60);

/// One thing the probe sends to: a fresh socket per request (a new flow each time) or one
/// connected socket for the whole run (an established flow).
#[derive(Debug, Clone)]
struct ProbeTarget {
    label: &'static str,
    address: SocketAddr,
    established: bool,
}

/// One request of the probe; times since the probe started.
#[derive(Debug, Clone, Copy)]
struct ProbeRequest {
    sent: Duration,
    answered: Option<Duration>,
}

/// What was sent to one target and what came back so far.
#[derive(Debug, Default)]
struct TargetLog {
    /// Every request, in the order sent; `answered` as matched while probing (on the
    /// established flow: each answer to the oldest request still waiting, which never credits
    /// an answer to a request newer than the one it answers).
    requests: Vec<ProbeRequest>,
    /// On the established flow, when each answer arrived.
    arrivals: Vec<Duration>,
    in_order: bool,
}

impl TargetLog {
    /// The requests with their answers for the report. On the established flow, answers are
    /// matched again once all are in: each, from the last one back, goes to the latest request
    /// sent before it and before the request of the answer after it. That is exact when the
    /// answers come back in order faster than one period, and otherwise gives the shortest
    /// delays the arrivals allow (a late answer is at least that late); the lost count is
    /// exact either way.
    fn matched(&self) -> Vec<ProbeRequest> {
        let mut requests = self.requests.clone();
        if !self.in_order {
            return requests;
        }
        for r in &mut requests {
            r.answered = None;
        }
        let mut candidates = requests.len();
        for &at in self.arrivals.iter().rev() {
            let sent_before = requests[..candidates].partition_point(|r| r.sent <= at);
            if let Some(j) = sent_before.checked_sub(1) {
                requests[j].answered = Some(at);
                candidates = j;
            }
        }
        requests
    }
}

/// The report's matching of in-order answers (no root needed).
#[test]
fn probe_matches_in_order_answers_to_the_latest_possible_requests() {
    let ms = Duration::from_millis;
    let log = |sent: &[u64], arrivals: &[u64]| TargetLog {
        requests: sent
            .iter()
            .map(|s| ProbeRequest {
                sent: ms(*s),
                // As matched while probing (oldest first); the report matches again.
                answered: None,
            })
            .collect(),
        arrivals: arrivals.iter().map(|a| ms(*a)).collect(),
        in_order: true,
    };
    let answered = |l: &TargetLog| -> Vec<Option<u64>> {
        l.matched()
            .iter()
            .map(|r| r.answered.map(|a| u64::try_from(a.as_millis()).unwrap()))
            .collect()
    };
    // Two lost in the middle: the answer after them is the fourth request's, not the second's.
    assert_eq!(
        answered(&log(&[0, 50, 100, 150], &[2, 152])),
        [Some(2), None, None, Some(152)]
    );
    // All slow, none lost: each answer to its own request.
    assert_eq!(
        answered(&log(&[0, 50, 100], &[400, 401, 402])),
        [Some(400), Some(401), Some(402)]
    );
    let result = ProbeResult::from_requests(
        "t",
        &log(&[0, 50, 100], &[400, 401, 402]).matched(),
        ms(100),
    );
    assert_eq!((result.sent, result.lost), (3, 0));
    assert_eq!(result.late, [ms(400), ms(351), ms(302)]);
    assert_eq!(result.longest_gap, ms(400));
}

/// The log of one target, shared by its probe thread and the test.
type ProbeLog = Arc<std::sync::Mutex<TargetLog>>;

/// What the probe measured for one target.
#[derive(Debug, Clone, Default)]
struct ProbeResult {
    label: &'static str,
    sent: u32,
    /// Requests without an answer within [`PROBE_LOST_AFTER`].
    lost: u32,
    /// When the lost requests were sent (since the probe started).
    lost_sent_at: Vec<Duration>,
    /// Delays of the answers that came later than [`PROBE_TIMEOUT`], in request order.
    late: Vec<Duration>,
    /// The longest time without an answer arriving, from the probe's start to its end (about
    /// one period without loss): how long the target was unreachable.
    longest_gap: Duration,
}

impl ProbeResult {
    /// The result of the requests of one target; `ended` is when the probe stopped sending.
    fn from_requests(label: &'static str, requests: &[ProbeRequest], ended: Duration) -> Self {
        let mut answers: Vec<Duration> = requests.iter().filter_map(|r| r.answered).collect();
        answers.sort();
        let mut longest_gap = Duration::ZERO;
        let mut last = Duration::ZERO;
        for at in answers.into_iter().chain([ended]) {
            longest_gap = longest_gap.max(at.saturating_sub(last));
            last = last.max(at);
        }
        ProbeResult {
            label,
            sent: u32::try_from(requests.len()).unwrap_or(u32::MAX),
            lost: u32::try_from(requests.iter().filter(|r| r.answered.is_none()).count())
                .unwrap_or(u32::MAX),
            lost_sent_at: requests
                .iter()
                .filter(|r| r.answered.is_none())
                .map(|r| r.sent)
                .collect(),
            late: requests
                .iter()
                .filter_map(|r| r.answered.map(|a| a - r.sent))
                .filter(|delay| *delay > PROBE_TIMEOUT)
                .collect(),
            longest_gap,
        }
    }
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} lost of {}", self.label, self.lost, self.sent)?;
        if !self.lost_sent_at.is_empty() {
            let shown: Vec<String> = self
                .lost_sent_at
                .iter()
                .take(10)
                .map(|d| format!("{d:.2?}"))
                .collect();
            let more = if self.lost_sent_at.len() > 10 {
                ", ..."
            } else {
                ""
            };
            write!(f, " (sent at {}{more})", shown.join(", "))?;
        }
        write!(f, ", {} late", self.late.len())?;
        if !self.late.is_empty() {
            let shown: Vec<String> = self
                .late
                .iter()
                .take(10)
                .map(|d| format!("{d:.0?}"))
                .collect();
            let more = if self.late.len() > 10 { ", ..." } else { "" };
            write!(f, " (after {}{more})", shown.join(", "))?;
        }
        write!(f, ", longest gap between answers {:.0?}", self.longest_gap)
    }
}

/// A UDP request every [`PROBE_PERIOD`] per target, each target on its own thread inside a
/// pod's network namespace, answers collected as they come; stopped (and joined, once every
/// request is answered or lost) by [`Probe::finish`] or on drop.
///
/// The lab's echo server answers each datagram with its pod name only, so answers are matched
/// to requests by socket: on new flows each request has a socket (a source port) of its own,
/// so its delay is exact; on the established flow the answers come back in order (see
/// [`TargetLog::matched`]).
struct Probe {
    stop: Arc<AtomicBool>,
    started: Instant,
    /// Wall clock at `started`, to read the report next to the daemons' logs.
    started_wall: std::time::SystemTime,
    logs: Vec<(&'static str, ProbeLog)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn probe_target(stop: &AtomicBool, target: &ProbeTarget, started: Instant, log: &ProbeLog) {
    let open = || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(target.address).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let established = target.established.then(open);
    // Requests not answered yet, oldest first: index in the log, and on new flows the
    // request's own socket.
    let mut waiting: std::collections::VecDeque<(usize, Option<UdpSocket>)> =
        std::collections::VecDeque::new();
    let mut next_send = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut log = log.lock().unwrap();
        let TargetLog {
            requests, arrivals, ..
        } = &mut *log;
        if !stopping && now >= next_send {
            let own = established.is_none().then(open);
            let socket = own.as_ref().or(established.as_ref()).unwrap();
            // A send error is a request that gets no answer.
            let _ = socket.send(b"probe");
            requests.push(ProbeRequest {
                sent: now - started,
                answered: None,
            });
            waiting.push_back((requests.len() - 1, own));
            next_send = (next_send + PROBE_PERIOD).max(now);
        }
        let at = Instant::now() - started;
        match &established {
            Some(socket) => {
                while socket.recv(&mut buf).is_ok() {
                    arrivals.push(at);
                    if let Some((i, _)) = waiting.pop_front() {
                        requests[i].answered = Some(at);
                    }
                }
            }
            None => waiting.retain(|(i, socket)| {
                let answered = socket.as_ref().is_some_and(|s| s.recv(&mut buf).is_ok());
                if answered {
                    requests[*i].answered = Some(at);
                }
                !answered
            }),
        }
        while waiting
            .front()
            .is_some_and(|(i, _)| at - requests[*i].sent >= PROBE_LOST_AFTER)
        {
            waiting.pop_front();
        }
        drop(log);
        std::thread::sleep(PROBE_TICK);
    }
}

impl Probe {
    fn start(netns: &str, targets: Vec<ProbeTarget>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let started_wall = std::time::SystemTime::now();
        let path = format!("/run/netns/{netns}");
        let mut logs = Vec::new();
        let threads = targets
            .into_iter()
            .map(|target| {
                let log = ProbeLog::new(std::sync::Mutex::new(TargetLog {
                    in_order: target.established,
                    ..TargetLog::default()
                }));
                logs.push((target.label, log.clone()));
                let stop = stop.clone();
                let path = path.clone();
                std::thread::spawn(move || {
                    // setns on this dedicated thread only.
                    let file = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    probe_target(&stop, &target, started, &log);
                })
            })
            .collect();
        Probe {
            stop,
            started,
            started_wall,
            logs,
            threads,
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What was measured so far, as if the probe stopped now.
    fn results_so_far(&self) -> Vec<ProbeResult> {
        let now = self.elapsed();
        self.logs
            .iter()
            .map(|(label, log)| {
                ProbeResult::from_requests(label, &log.lock().unwrap().matched(), now)
            })
            .collect()
    }

    /// Polls until every target answered at least `count` requests sent at or after `since`;
    /// panics with what was measured after [`PROBE_WAIT_DEADLINE`] or if a probe thread ended.
    fn wait_for_answers(&self, what: &str, count: usize, since: Duration) {
        let end = Instant::now() + PROBE_WAIT_DEADLINE;
        loop {
            let answered: Vec<usize> = self
                .logs
                .iter()
                .map(|(_, log)| {
                    log.lock()
                        .unwrap()
                        .requests
                        .iter()
                        .filter(|r| r.sent >= since && r.answered.is_some())
                        .count()
                })
                .collect();
            if answered.iter().all(|n| *n >= count) {
                return;
            }
            let ended = self.threads.iter().any(|t| t.is_finished());
            if ended || Instant::now() >= end {
                let report: Vec<String> = self
                    .results_so_far()
                    .iter()
                    .zip(&answered)
                    .map(|(r, n)| format!("\n  {r}; {n} answered since {since:.2?}"))
                    .collect();
                panic!(
                    "{what}: not every target answered {count} requests sent since {since:.2?} \
                     within {PROBE_WAIT_DEADLINE:?}{}:{}",
                    if ended { " (a probe thread ended)" } else { "" },
                    report.concat()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops sending, waits until every request is answered or lost, and returns the results
    /// and when the sending stopped.
    fn finish(mut self) -> (Vec<ProbeResult>, Duration) {
        let ended = self.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            h.join().expect("probe thread panicked");
        }
        let results = self
            .logs
            .iter()
            .map(|(label, log)| {
                ProbeResult::from_requests(label, &log.lock().unwrap().matched(), ended)
            })
            .collect();
        (results, ended)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// TCP echo servers on `port` in pod namespaces (a thread each, setns on that thread; one
/// more thread per connection), until dropped.
struct TcpEchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TcpEchoServers {
    fn start(namespaces: &[String], port: u16) -> TcpEchoServers {
        use std::io::{Read, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for netns in namespaces {
            let path = format!("/run/netns/{netns}");
            let stop = stop.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let file = std::fs::File::open(&path).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let stop = stop.clone();
                            // Threads inherit this thread's network namespace.
                            conns.push(std::thread::spawn(move || {
                                conn.set_nonblocking(false).unwrap();
                                conn.set_read_timeout(Some(Duration::from_millis(100)))
                                    .unwrap();
                                let mut buf = [0u8; 4096];
                                while !stop.load(Ordering::Relaxed) {
                                    match conn.read(&mut buf) {
                                        Ok(0) => return,
                                        Ok(n) => {
                                            if conn.write_all(&buf[..n]).is_err() {
                                                return;
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => return,
                                    }
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("TCP echo server listening");
        }
        TcpEchoServers { stop, threads }
    }
}

impl Drop for TcpEchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Progress of one established TCP connection echoing 64 bytes every [`PROBE_PERIOD`].
#[derive(Default)]
struct StreamState {
    echoed: std::sync::atomic::AtomicU64,
    /// Longest wait for an echo since the last [`TcpStreamProbe::take_gap`], in ms.
    longest_gap_ms: std::sync::atomic::AtomicU64,
    error: std::sync::Mutex<Option<String>>,
}

/// One long-lived TCP connection from a pod namespace, until dropped.
struct TcpStreamProbe {
    label: &'static str,
    stop: Arc<AtomicBool>,
    state: Arc<StreamState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpStreamProbe {
    fn start(label: &'static str, netns: &str, target: SocketAddr) -> TcpStreamProbe {
        use std::io::{Read, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(StreamState::default());
        let path = format!("/run/netns/{netns}");
        let (stop_t, state_t) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let fail = |e: String| *state_t.error.lock().unwrap() = Some(e);
            let mut conn =
                match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
                    Ok(c) => c,
                    Err(e) => return fail(format!("connect: {e}")),
                };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let out = [0x5au8; 64];
            let mut back = [0u8; 64];
            while !stop_t.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Err(e) = conn
                    .write_all(&out)
                    .and_then(|()| conn.read_exact(&mut back))
                {
                    let n = state_t.echoed.load(Ordering::Relaxed);
                    return fail(format!("after {n} bytes: {e}"));
                }
                let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                state_t.longest_gap_ms.fetch_max(ms, Ordering::Relaxed);
                state_t.echoed.fetch_add(64, Ordering::Relaxed);
                std::thread::sleep(PROBE_PERIOD);
            }
        });
        TcpStreamProbe {
            label,
            stop,
            state,
            thread: Some(thread),
        }
    }

    fn echoed(&self) -> u64 {
        self.state.echoed.load(Ordering::Relaxed)
    }

    fn error(&self) -> Option<String> {
        self.state.error.lock().unwrap().clone()
    }

    /// The longest wait for an echo since the last call.
    fn take_gap(&self) -> Duration {
        Duration::from_millis(self.state.longest_gap_ms.swap(0, Ordering::Relaxed))
    }

    /// Asserts the connection is alive and echoes more than `since` bytes now; returns the
    /// count.
    fn assert_flowing(&self, what: &str, since: u64) -> u64 {
        let now = eventually(
            &format!("{}: echoes after {what}", self.label),
            Duration::from_secs(5),
            || {
                assert_eq!(self.error(), None, "{}: broken by {what}", self.label);
                let n = self.echoed();
                (n > since).then_some(n)
            },
        );
        eprintln!(
            "  TCP {}: alive after {what}, {now} bytes echoed, longest wait {:.0?}",
            self.label,
            self.take_gap()
        );
        now
    }
}

impl Drop for TcpStreamProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `HH:MM:SS.ffffff` of a time, as in the daemons' log timestamps.
fn utc_time_of_day(t: std::time::SystemTime) -> String {
    let since_epoch = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since_epoch.subsec_micros()
    )
}

/// Probes `targets` from `netns` through `disrupt`: the disruption starts once every target
/// answered [`PROBE_BASELINE_ANSWERS`] requests (baseline proven), and the probe ends once
/// every target answered [`PROBE_AFTER_ANSWERS`] requests sent after `disrupt` returned
/// (service proven back), each wait polled with a deadline; prints and returns the results.
fn probe_through(
    what: &str,
    netns: &str,
    targets: &[ProbeTarget],
    disrupt: impl FnOnce(),
) -> Vec<ProbeResult> {
    let probe = Probe::start(netns, targets.to_vec());
    probe.wait_for_answers(
        &format!("baseline before {what}"),
        PROBE_BASELINE_ANSWERS,
        Duration::ZERO,
    );
    let t0 = probe.elapsed();
    disrupt();
    let t1 = probe.elapsed();
    probe.wait_for_answers(&format!("service after {what}"), PROBE_AFTER_ANSWERS, t1);
    let started_utc = utc_time_of_day(probe.started_wall);
    let (results, ended) = probe.finish();
    eprintln!(
        "probe during {what} (started {started_utc} UTC; disruption from {t0:.2?} to {t1:.2?}, {PROBE_AFTER_ANSWERS} answers \
         each after it by {ended:.2?}; period {PROBE_PERIOD:?}, late after {PROBE_TIMEOUT:?}, \
         lost after {PROBE_LOST_AFTER:?}):"
    );
    for r in &results {
        eprintln!("  {r}");
    }
    results
}

/// Three nodes; a client on node1 probes a pod on node1, a pod on node2 and a ClusterIP with
/// backends on both; node1's agent, proxy and ovs-vswitchd are restarted in turn under the
/// probe; then node3 is removed.
#[test]
fn e2e_restarts_with_a_continuous_probe_then_node_removal() {
    if !privileged("e2e_restarts_with_a_continuous_probe_then_node_removal") {
        return;
    }
    let started = Instant::now();
    let lab = lab_up(3, &[]);
    let diag = DiagnosticsOnPanic(&lab, "restarts and node removal");
    let ns = "e2e-restart";
    let mut m = namespace_manifest(ns);
    for (pod, node, app) in [
        ("client", "node1", "client"),
        ("s1", "node1", "probe"),
        ("s2", "node2", "probe"),
        ("s3", "node3", "other"),
    ] {
        m.push_str(&pod_manifest(ns, pod, node, &[("app", app)], &[]));
    }
    m.push_str(&service_manifest(ns, "probe", "probe", "").replace(
        "  ports:\n",
        "  ports:\n  - name: tcp-echo\n    protocol: TCP\n    port: 7000\n    targetPort: 7000\n",
    ));
    lab.apply(&m);
    let mut ip = std::collections::BTreeMap::new();
    for p in ["client", "s1", "s2", "s3"] {
        ip.insert(p, running(&lab, ns, p));
    }
    let info = lab.info();
    let client = info.pod_netns(ns, "client");
    let vip = cluster_ip(&lab, ns, "probe");
    let sock = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let targets = vec![
        ProbeTarget {
            label: "pod same node (new flows)",
            address: sock(&ip["s1"], 5353),
            established: false,
        },
        ProbeTarget {
            label: "pod other node (new flows)",
            address: sock(&ip["s2"], 5353),
            established: false,
        },
        ProbeTarget {
            label: "pod other node (established)",
            address: sock(&ip["s2"], 5353),
            established: true,
        },
        ProbeTarget {
            label: "ClusterIP (new flows)",
            address: sock(&vip, 53),
            established: false,
        },
        ProbeTarget {
            label: "ClusterIP (established)",
            address: sock(&vip, 53),
            established: true,
        },
    ];
    reach_all(&client, "udp", &format!("{}:5353", ip["s1"]), 3, &["s1"]);
    reach_all(&client, "udp", &format!("{}:5353", ip["s2"]), 3, &["s2"]);
    reach_all(&client, "udp", &format!("{vip}:53"), 10, &["s1", "s2"]);
    reach_all(&client, "http", &format!("{}:8080", ip["s3"]), 1, &["s3"]);

    // Established TCP connections through all restarts: pod to pod across nodes, and through
    // the ClusterIP (to s1 or s2).
    let _servers =
        TcpEchoServers::start(&[info.pod_netns(ns, "s1"), info.pod_netns(ns, "s2")], 7000);
    let streams = [
        TcpStreamProbe::start("pod other node", &client, sock(&ip["s2"], 7000)),
        TcpStreamProbe::start("ClusterIP", &client, sock(&vip, 7000)),
    ];
    let mut echoed: Vec<u64> = streams
        .iter()
        .map(|s| s.assert_flowing("the start", 0))
        .collect();

    // Agent restart: no loss at all (the datapath does not depend on the agent process).
    let r = probe_through(
        "SIGKILL + restart of node1's agent",
        &client,
        &targets,
        || ops::restart(&lab.state, "node1", Daemon::Agent).unwrap(),
    );
    for t in &r {
        assert_eq!(t.lost, 0, "agent restart lost requests: {t}");
    }
    // The restarted agent kept the paths to the other nodes: it installed them from its first
    // list and never took them out while its watches were listing (it once removed them for a
    // few milliseconds, and a Service connection in flight then broke minutes later).
    let agent_log =
        std::fs::read_to_string(lab.state.node_dir("node1").join("agent.log")).unwrap_or_default();
    assert!(
        !agent_log.contains("remote node removed"),
        "node1's agent removed a remote node although no Node changed:\n{agent_log}"
    );
    for (s, n) in streams.iter().zip(echoed.iter_mut()) {
        *n = s.assert_flowing("the agent restart", *n);
    }
    // A pod created after the restart works.
    lab.apply(&pod_manifest(ns, "late", "node1", &[], &[]));
    let late = running(&lab, ns, "late");
    reach_all(&client, "udp", &format!("{late}:5353"), 3, &["late"]);

    // Proxy restart: no loss (the new proxy adopts the flows and groups on the switch).
    let r = probe_through(
        "SIGKILL + restart of node1's proxy",
        &client,
        &targets,
        || ops::restart(&lab.state, "node1", Daemon::Proxy).unwrap(),
    );
    // What the new proxy flushed from conntrack (a loss on the ClusterIP alone points there).
    eprintln!(
        "  node1's new proxy: stale UDP conntrack flushes first {}, after revalidation {}",
        proxy_flushes(&info.nodes[0], "first"),
        proxy_flushes(&info.nodes[0], "after_revalidation")
    );
    for t in &r {
        assert_eq!(t.lost, 0, "proxy restart lost requests: {t}");
    }
    // Nothing changed while it was down: the new proxy, judging against the flows and groups it
    // read back, flushed no live UDP flow (its first change set alone calls every port new).
    assert_eq!(
        proxy_flushes(&info.nodes[0], "first"),
        0.0,
        "the restarted proxy flushed conntrack entries although no Service changed"
    );
    for (s, n) in streams.iter().zip(echoed.iter_mut()) {
        *n = s.assert_flowing("the proxy restart", *n);
    }

    // ovs-vswitchd restart: every flow goes with it; service must come back within the bound.
    const OVS_RECOVERY_BOUND: Duration = Duration::from_secs(5);
    let r = probe_through(
        "SIGKILL + restart of node1's ovs-vswitchd",
        &client,
        &targets,
        // The probe waits until every target answers again, and measures how long it did not.
        || ops::restart(&lab.state, "node1", Daemon::Vswitchd).unwrap(),
    );
    for t in &r {
        assert!(
            t.longest_gap <= OVS_RECOVERY_BOUND,
            "ovs-vswitchd restart: {t}, bound {OVS_RECOVERY_BOUND:?}"
        );
    }
    // Established TCP across the vswitchd restart (the userspace datapath's conntrack table
    // goes with the process; the connections must carry on after a pause within the bound).
    for (s, n) in streams.iter().zip(&echoed) {
        let survived = eventually(
            "the TCP stream to echo or fail",
            Duration::from_secs(15),
            || {
                if let Some(e) = s.error() {
                    return Some(Err(e));
                }
                (s.echoed() > *n).then_some(Ok(s.echoed()))
            },
        );
        let gap = s.take_gap();
        eprintln!(
            "  TCP {} across the ovs-vswitchd restart: {survived:?}, longest wait {gap:.0?}",
            s.label
        );
        assert!(
            survived.is_ok() && gap <= OVS_RECOVERY_BOUND,
            "TCP {} across the ovs-vswitchd restart: {survived:?}, longest wait {gap:?}",
            s.label
        );
    }
    drop(streams);
    // The last seconds of the window were clean: recovered, not flapping.
    reach_all(&client, "udp", &format!("{vip}:53"), 10, &["s1", "s2"]);
    reach_all(&client, "http", &format!("{}:8080", ip["s2"]), 1, &["s2"]);

    // Node removal: node3's Node object goes, then its namespace with its daemons.
    let node3 = info.nodes[2].clone();
    let cidr3 = lab
        .kubectl_ok(&["get", "node", "node3", "-o", "jsonpath={.spec.podCIDR}"])
        .trim()
        .to_string();
    assert!(!cidr3.is_empty());
    ops::remove_node(&lab.state, "node3").unwrap();
    assert!(!sys::netns_exists(&node3.netns));
    assert!(
        !lab.kubectl_ok(&["get", "nodes", "-o", "name"])
            .contains("node/node3")
    );
    for n in &info.nodes[..2] {
        eventually(
            &format!("{}: node3's flows and route gone", n.name),
            Duration::from_secs(15),
            || {
                let route = routes(&n.netns);
                (!flows(&lab, &n.name).contains(&format!("nw_dst={cidr3}"))
                    && !route.contains(&cidr3))
                .then_some(())
            },
        );
    }
    // The rest keeps working: pods across node1/node2, node to pod, the Service.
    reach_all(&client, "udp", &format!("{}:5353", ip["s2"]), 3, &["s2"]);
    reach_all(
        &info.nodes[1].netns,
        "http",
        &format!("{}:8080", ip["client"]),
        1,
        &["client"],
    );
    reach_all(&client, "udp", &format!("{vip}:53"), 10, &["s1", "s2"]);
    drop(diag);
    eprintln!(
        "e2e_restarts_with_a_continuous_probe_then_node_removal: {:.1?}",
        started.elapsed()
    );
}
