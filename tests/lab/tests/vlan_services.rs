//! ClusterIP Services with `vlan` segment backends, and the untagged (VLAN 0) part of a `vlan`
//! segment, on the multi-node lab with every real part (`switchyard-lab up --fabric`: netns
//! nodes with their own `ovsdb-server`/`ovs-vswitchd`, the real agent, proxy and CNI binary,
//! the fabric router namespace, `kubectl` against the lab API server).
//!
//! Needs root, OVS, curl and kubectl, and the binaries built (`cargo build -p switchyard-cni
//! -p switchyard-agent -p switchyard-proxy -p switchyard-lab`); fails with the reason
//! otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1. On failure each test prints, per node,
//! the flows of `br-int`, the routes and the agent and proxy logs.

mod lab_support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use switchyard_lab::cluster::{node, state::NodeInfo};

const POD_DEADLINE: Duration = Duration::from_secs(60);
const REACH_DEADLINE: Duration = Duration::from_secs(20);
/// Ports of the extra `@peer` echo server the tests start in each backend pod: it answers
/// with the client address the backend sees.
const PEER_HTTP: u16 = 9090;
const PEER_UDP: u16 = 9053;

// ---------------------------------------------------------------------------------------------
// Diagnostics

// ---------------------------------------------------------------------------------------------
// Lab, pods, traffic

fn lab_up(nodes: usize, extra: &[&str]) -> Lab {
    Lab::up_with_daemons(nodes, extra)
}

fn namespace_manifest(name: &str, segment: Option<&str>) -> String {
    let annotations = segment
        .map(|s| format!("  annotations:\n    switchyard.io/segment: \"{s}\"\n"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{annotations}---\n")
}

fn pod_manifest(namespace: &str, name: &str, node: &str, app: Option<&str>) -> String {
    let labels = app
        .map(|a| format!("  labels:\n    app: {a}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{labels}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

/// Service `name` selecting `app`: the pods' echo servers (80/TCP -> 8080, 53/UDP -> 5353)
/// and the tests' `@peer` servers (81/TCP -> 9090, 54/UDP -> 9053).
fn service_manifest(namespace: &str, name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  selector:\n    app: {app}\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n  - name: peer-http\n    protocol: TCP\n    port: 81\n    targetPort: {PEER_HTTP}\n  - name: peer-udp\n    protocol: UDP\n    port: 54\n    targetPort: {PEER_UDP}\n---\n"
    )
}

/// Waits until the pod is Running and Ready; returns its IP.
fn running(lab: &Lab, namespace: &str, pod: &str) -> String {
    wait_running_in(lab, namespace, pod, POD_DEADLINE)
}

/// Polls until all `count` requests from `netns` to `target` are answered and `ok` accepts
/// the answers; returns them.
fn poll_answers(
    netns: &str,
    proto: &str,
    target: &str,
    count: u32,
    what: &str,
    ok: &dyn Fn(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + REACH_DEADLINE;
    loop {
        let answers = echo_client(netns, proto, target, count);
        if answers.len() == count as usize && ok(&answers) {
            return answers;
        }
        assert!(
            Instant::now() < end,
            "{netns} -> {proto} {target}: answers {answers:?}, expected {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn distinct(answers: &[String]) -> BTreeSet<&str> {
    answers.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. ClusterIP with vlan-segment backends

/// A ClusterIP Service whose backends are pods of the `vlan100` segment on node1 (`near`)
/// and node2 (`far`) is reached over TCP and UDP, both backends answering, from overlay pods
/// on both nodes, from `vlan100` pods on both nodes (the backends themselves included, so
/// hairpin too) and from both nodes' host network. The backend sees: an overlay pod's own
/// address; the client node's gateway address for a pod of the segment and for the node
/// itself.
#[test]
fn cluster_ip_with_vlan_segment_backends_from_every_kind_of_client() {
    if !privileged("cluster_ip_with_vlan_segment_backends_from_every_kind_of_client") {
        return;
    }
    let lab = lab_up(2, &["--fabric", "--vlans", "100"]);
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let back = "vsvc-back";
    let front = "vsvc-front";
    let mut m = namespace_manifest(back, Some("vlan100"));
    m.push_str(&pod_manifest(back, "near", "node1", Some("both")));
    m.push_str(&pod_manifest(back, "far", "node2", Some("both")));
    m.push_str(&pod_manifest(back, "v1", "node1", None));
    m.push_str(&pod_manifest(back, "v2", "node2", None));
    m.push_str(&namespace_manifest(front, None));
    m.push_str(&pod_manifest(front, "o1", "node1", None));
    m.push_str(&pod_manifest(front, "o2", "node2", None));
    m.push_str(&service_manifest(back, "both", "both"));
    lab.apply(&m);
    let info = lab.info();
    let mut ips = std::collections::BTreeMap::new();
    for (ns, pod) in [
        (back, "near"),
        (back, "far"),
        (back, "v1"),
        (back, "v2"),
        (front, "o1"),
        (front, "o2"),
    ] {
        ips.insert(pod, running(&lab, ns, pod));
    }
    let _peers: Vec<Proc> = ["near", "far"]
        .iter()
        .map(|p| peer_server(&info.pod_netns(back, p), PEER_HTTP, PEER_UDP))
        .collect();
    let vip = cluster_ip(&lab, back, "both");
    eprintln!("pods: {ips:?}, ClusterIP {vip}");

    // The client address each backend must see: an overlay pod's own, the
    // node's gateway address (first of its pod CIDR) for the node and for a
    // pod of the segment (SNATed there).
    let gateway = |node: &str| {
        let out = in_netns(
            &info.node(node).unwrap().netns,
            &["ip", "-4", "-o", "addr", "show", "dev", "sy-gw0"],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address on {node}'s sy-gw0: {text}"))
            .to_string()
    };
    let node_netns = |name: &str| info.node(name).unwrap().netns.clone();
    let clients = [
        ("o1", info.pod_netns(front, "o1"), ips["o1"].clone()),
        ("o2", info.pod_netns(front, "o2"), ips["o2"].clone()),
        ("v1", info.pod_netns(back, "v1"), gateway("node1")),
        ("v2", info.pod_netns(back, "v2"), gateway("node2")),
        ("node1", node_netns("node1"), gateway("node1")),
        ("node2", node_netns("node2"), gateway("node2")),
        // The backends themselves (hairpin included): pods of the segment.
        ("near", info.pod_netns(back, "near"), gateway("node1")),
        ("far", info.pod_netns(back, "far"), gateway("node2")),
    ];
    for (client, netns, seen_as) in &clients {
        for (proto, port) in [("http", 80), ("udp", 53)] {
            let answers = poll_answers(
                netns,
                proto,
                &format!("{vip}:{port}"),
                20,
                "every answer from near or far, both answering",
                &|a| a.iter().all(|x| x == "near" || x == "far") && distinct(a).len() == 2,
            );
            eprintln!("{client} -> {proto} {vip}:{port}: {answers:?}");
        }
        for (proto, port) in [("http", 81), ("udp", 54)] {
            let answers = poll_answers(
                netns,
                proto,
                &format!("{vip}:{port}"),
                10,
                &format!("every backend to see the client as {seen_as}"),
                &|a| a.iter().all(|x| x == seen_as),
            );
            eprintln!("{client} -> {proto} {vip}:{port}: seen as {answers:?}");
        }
    }
}

/// The `vlan100` pod `name` on `node` with the static address `ip`, behind Service `mover`.
fn static_vlan_pod(namespace: &str, name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: mover\n  annotations:\n    switchyard.io/ip: \"{ip}\"\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

/// Whether the segment's allocation object of `ip` exists (and for which holder:
/// `<node>/<container id>/<interface>`).
fn ipam_holder(lab: &Lab, ip: &str) -> Option<String> {
    let out = lab.kubectl(&[
        "get",
        "segmentaddress",
        &format!("vlan100.{ip}"),
        "-o",
        "json",
    ]);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = &o["spec"];
    Some(format!(
        "{}/{}/{}",
        s["node"].as_str()?,
        s["containerID"].as_str()?,
        s["interface"].as_str()?
    ))
}

/// The only backend of a ClusterIP, a `vlan100` pod with a static address, is deleted on
/// node2 and created again with the same address on node1: every client (both nodes, an
/// overlay pod on each node) follows it, TCP and UDP. The tunnel flows toward a remote
/// `vlan` pod follow the segment's allocation objects (a stale one on node1 would send the
/// connection to node2, where the pod no longer is).
#[test]
fn vlan_backend_moving_to_the_other_node_is_followed() {
    if !privileged("vlan_backend_moving_to_the_other_node_is_followed") {
        return;
    }
    let lab = lab_up(2, &["--fabric", "--vlans", "100"]);
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let (back, front, ip) = ("vsvc-move", "vsvc-move-front", "10.100.0.50");
    let mut m = namespace_manifest(back, Some("vlan100"));
    m.push_str(&static_vlan_pod(back, "mover", "node2", ip));
    m.push_str(&namespace_manifest(front, None));
    m.push_str(&pod_manifest(front, "o1", "node1", None));
    m.push_str(&pod_manifest(front, "o2", "node2", None));
    m.push_str(&service_manifest(back, "mover", "mover"));
    lab.apply(&m);
    let info = lab.info();
    for (ns, pod) in [(back, "mover"), (front, "o1"), (front, "o2")] {
        running(&lab, ns, pod);
    }
    let vip = cluster_ip(&lab, back, "mover");
    let clients = [
        info.node("node1").unwrap().netns.clone(),
        info.node("node2").unwrap().netns.clone(),
        info.pod_netns(front, "o1"),
        info.pod_netns(front, "o2"),
    ];
    let all_answered = |when: &str| {
        for netns in &clients {
            for (proto, port) in [("http", 80), ("udp", 53)] {
                poll_answers(
                    netns,
                    proto,
                    &format!("{vip}:{port}"),
                    5,
                    &format!("every answer from mover ({when})"),
                    &|a| a.iter().all(|x| x == "mover"),
                );
            }
        }
    };
    all_answered("on node2");
    assert!(
        ipam_holder(&lab, ip).is_some_and(|h| h.starts_with("node2/")),
        "{:?}",
        ipam_holder(&lab, ip)
    );

    lab.kubectl_ok(&["-n", back, "delete", "pod", "mover", "--wait=false"]);
    eventually(
        &format!("{ip} released by the deleted pod"),
        POD_DEADLINE,
        || {
            (pod_json_in(&lab, back, "mover").is_none() && ipam_holder(&lab, ip).is_none())
                .then_some(())
        },
    );
    lab.apply(&static_vlan_pod(back, "mover", "node1", ip));
    assert_eq!(running(&lab, back, "mover"), ip);
    assert!(
        ipam_holder(&lab, ip).is_some_and(|h| h.starts_with("node1/")),
        "{:?}",
        ipam_holder(&lab, ip)
    );
    all_answered("moved to node1");
}

fn pod_json_in(lab: &Lab, namespace: &str, name: &str) -> Option<serde_json::Value> {
    let out = lab.kubectl(&["-n", namespace, "get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// 2. The untagged (VLAN 0, native) part of a vlan segment

/// What an agent start must leave unchanged on the node: the flows of `br-int` (without
/// counters), its ports, and the VLANs trunked to the uplink.
/// The agent's flows (its cookie owner; the proxy programs its own tables
/// on its own schedule), the bridge's ports and the uplink's trunks.
fn node_snapshot(lab: &Lab, node: &NodeInfo) -> String {
    let mut flows: Vec<String> =
        run_text(node::ovs_command_in(&lab.state, node, "ovs-ofctl").args([
            "-O",
            "OpenFlow15",
            "--no-stats",
            "dump-flows",
            "br-int",
            "cookie=0x5359010000000000/0xffffff0000000000",
        ]))
        .lines()
        .map(str::to_string)
        .collect();
    flows.sort();
    let ports = node::vsctl(&lab.state, node, &["list-ports", "br-int"]).unwrap();
    let trunks = node::vsctl(&lab.state, node, &["get", "Port", "trunk0", "trunks"]).unwrap();
    format!(
        "{}\nports: {ports}\ntrunk0 trunks: {trunks}",
        flows.join("\n")
    )
}

/// Runs the real `switchyard-agent` in the node's namespace with `args`; it must exit with a
/// failure within the deadline (killed otherwise). Returns its stderr.
fn agent_must_refuse(lab: &Lab, node: &NodeInfo, args: &[String]) -> String {
    let agent = sibling_binary("switchyard-agent", "switchyard-agent");
    let err_path = lab.state.node_dir(&node.name).join("refused-agent.stderr");
    let stderr = std::fs::File::create(&err_path).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&agent)
        .args(args)
        .env("NODE_NAME", &node.name)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut agent_proc = Proc(child);
    let status = eventually(
        "the agent with an untagged vlan segment to exit",
        Duration::from_secs(20),
        || agent_proc.0.try_wait().unwrap(),
    );
    let text = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        !status.success(),
        "the agent accepted it ({status}):\n{text}"
    );
    text
}

/// A `vlan` segment with VLAN 0 (the uplink's native, untagged VLAN), in the configuration
/// file or on the command line with `allow-untagged=true`, is refused at start with a
/// configuration error naming the segment, and the refused agent changes nothing on the
/// node: flows, ports and trunks stay as they were and the running agent keeps attaching
/// pods of the tagged segment.
#[test]
fn untagged_vlan_segment_is_refused_with_a_clear_config_error() {
    if !privileged("untagged_vlan_segment_is_refused_with_a_clear_config_error") {
        return;
    }
    let lab = lab_up(1, &["--fabric", "--vlans", "100"]);
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let node1 = &info.nodes[0];
    let before = node_snapshot(&lab, node1);

    // The node's own configuration file with one more segment, untagged, and its own socket
    // and listen address (so even a wrongly accepted start would not take the running
    // agent's).
    let dir = lab.state.node_dir(&node1.name);
    let config = std::fs::read_to_string(dir.join("agent.yaml")).unwrap();
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("cni-socket:") {
                format!("cni-socket: {}", dir.join("refused.sock").display())
            } else if l.starts_with("listen-address:") {
                "listen-address: 127.0.0.1:9466".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(config.contains("segments:"), "{config}");
    let untagged = format!(
        "{config}\n- name: native\n  kind: vlan\n  vlan: 0\n  subnet: 10.110.0.0/24\n  gateway: 10.110.0.1\n  uplink: trunk0\n"
    );
    let path = dir.join("agent-untagged.yaml");
    std::fs::write(&path, &untagged).unwrap();
    let expected = "invalid configuration: segment \"native\": untagged vlan segments (vlan 0 or allow-untagged: true, the uplink's native VLAN) are not supported, the uplink carries tagged VLANs only; set vlan to 1..=4094 and remove allow-untagged";
    let from_file = agent_must_refuse(
        &lab,
        node1,
        &["--config".into(), path.display().to_string()],
    );
    assert!(from_file.contains(expected), "stderr:\n{from_file}");

    // On the command line (the list replaces the file's), with allow-untagged=true.
    let from_flags = agent_must_refuse(
        &lab,
        node1,
        &[
            "--config".into(),
            path.display().to_string(),
            "--segment".into(),
            "name=default,kind=overlay".into(),
            "--segment".into(),
            "name=native,kind=vlan,vlan=0,subnet=10.110.0.0/24,gateway=10.110.0.1,uplink=trunk0,allow-untagged=true".into(),
        ],
    );
    assert!(from_flags.contains(expected), "stderr:\n{from_flags}");

    assert_eq!(
        node_snapshot(&lab, node1),
        before,
        "a refused agent changed the node"
    );
    // The running agent still serves the tagged segment.
    let ns = "vsvc-tagged";
    let mut m = namespace_manifest(ns, Some("vlan100"));
    m.push_str(&pod_manifest(ns, "tagged", &node1.name, None));
    lab.apply(&m);
    let ip = running(&lab, ns, "tagged");
    let answers = poll_answers(
        &node1.netns,
        "http",
        &format!("{ip}:8080"),
        1,
        "tagged",
        &|a| a.iter().all(|x| x == "tagged"),
    );
    eprintln!("node1 -> tagged pod {ip}: {answers:?}");
}
