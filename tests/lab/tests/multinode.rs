//! Pods across nodes with the REAL `switchyard-agent` (issue 7): overlay pod-to-pod on one and
//! across nodes, node-to-pod, egress SNAT to the node address (seen by the fabric's internet
//! host), MTU with DF across nodes, a Node removed and re-added, an agent restart during a
//! cross-node transfer, and `vlan` segments through the fabric. Needs root and the agent and CNI
//! binaries built (`cargo build -p switchyard-agent -p switchyard-cni`). On failure the message
//! carries each node's `ovs-ofctl dump-flows` and the agent log.

mod lab_support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;

fn curl(netns: &str, target: &str) -> Result<String, String> {
    let out = in_netns(
        netns,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{target}/"),
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("curl {}", out.status))
    }
}

/// Polls until `from` gets `expect` from `target` (ip:port), with a deadline.
fn reach(lab: &Lab, from: &str, target: &str, expect: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = curl(from, target);
        if r.as_deref() == Ok(expect) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{from} -> {target}: {r:?}, expected {expect:?}{}",
            diagnostics(lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts `from` cannot reach `target` (3 attempts, each bounded by curl's timeout).
fn unreachable(lab: &Lab, from: &str, target: &str) {
    for _ in 0..3 {
        let r = curl(from, target);
        assert!(
            r.is_err(),
            "{from} -> {target} answered {r:?}, expected no answer{}",
            diagnostics(lab)
        );
    }
}

fn pod_manifest(name: &str, node: &str, annotations: &[(&str, &str)]) -> String {
    let mut a = String::new();
    if !annotations.is_empty() {
        a.push_str("  annotations:\n");
        for (k, v) in annotations {
            a.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{a}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

fn setup(nodes: usize) -> Option<Lab> {
    Some(Lab::up_with_daemons(
        nodes,
        &["--no-proxy", "--fabric", "--vlans", "100,200"],
    ))
}

/// Three nodes: overlay pods reach each other on one node and across nodes, every node reaches
/// every pod, pod-to-pod is not SNATed, pod-to-internet is SNATed to the node address, and a
/// DF ping of the full pod MTU crosses nodes while one byte more fails at once.
#[test]
fn overlay_across_three_nodes_node_to_pod_egress_and_mtu() {
    if !privileged("overlay_across_three_nodes_node_to_pod_egress_and_mtu") {
        return;
    }
    let Some(lab) = setup(3) else { return };
    let mut manifest = String::new();
    for (pod, node) in [
        ("a1", "node1"),
        ("b1", "node1"),
        ("a2", "node2"),
        ("a3", "node3"),
    ] {
        manifest.push_str(&pod_manifest(pod, node, &[]));
    }
    lab.apply(&manifest);
    let ips: Vec<(&str, String)> = ["a1", "b1", "a2", "a3"]
        .into_iter()
        .map(|p| (p, wait_running(&lab, p, Duration::from_secs(60))))
        .collect();
    let info = lab.info();
    // Pod to pod, every pair (same node a1<->b1, across nodes the rest).
    for (from, _) in &ips {
        let ns = info.pod_netns("default", from);
        for (to, ip) in &ips {
            if from != to {
                reach(&lab, &ns, &format!("{ip}:8080"), to);
            }
        }
    }
    // Node to pod, every node to every pod (through sy-gw0 and the overlay).
    for n in &info.nodes {
        for (to, ip) in &ips {
            reach(&lab, &n.netns, &format!("{ip}:8080"), to);
        }
    }
    let ip_of = |p: &str| ips.iter().find(|(n, _)| *n == p).unwrap().1.clone();
    // Pod to pod across nodes keeps the source address.
    let _peer = peer_server(&info.pod_netns("default", "a2"), 9090, 0);
    reach(
        &lab,
        &info.pod_netns("default", "a1"),
        &format!("{}:9090", ip_of("a2")),
        &ip_of("a1"),
    );
    // Pod to the internet: the internet host sees the node's address.
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let _inet = peer_server(&fabric.internet_netns, 8080, 0);
    for (pod, node) in [("a1", 0usize), ("a3", 2)] {
        reach(
            &lab,
            &info.pod_netns("default", pod),
            "203.0.113.1:8080",
            &info.nodes[node].address.to_string(),
        );
    }
    // MTU: the agent derived the pod MTU from the underlay (the lab's eth0/br-ul: 1600 bytes)
    // minus Geneve's 50; a DF ping of exactly that size crosses nodes, one byte more fails in
    // the pod at once (never fragmented, never silently lost).
    let a1 = info.pod_netns("default", "a1");
    let mtu: u32 =
        String::from_utf8_lossy(&in_netns(&a1, &["cat", "/sys/class/net/eth0/mtu"]).stdout)
            .trim()
            .parse()
            .unwrap();
    let underlay: u32 = switchyard_lab::cluster::up::UNDERLAY_MTU.parse().unwrap();
    assert_eq!(mtu, underlay - 50, "pod MTU");
    let ping = |payload: u32| {
        in_netns(
            &a1,
            &[
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &payload.to_string(),
                &ip_of("a3"),
            ],
        )
    };
    let ok = ping(mtu - 28);
    assert!(
        ok.status.success(),
        "DF ping of {mtu} bytes across nodes: {}{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr),
        diagnostics(&lab)
    );
    let too_big = ping(mtu - 27);
    assert!(!too_big.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&too_big.stdout),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        text.contains("message too long") || text.contains(&format!("mtu = {mtu}")),
        "one byte over the MTU must fail locally, not vanish: {text}"
    );
}

/// Deleting a Node removes only its flows and route on the other nodes (the other remote
/// node's flow keeps its packet counter); re-creating it restores them.
#[test]
fn overlay_node_removed_and_readded() {
    if !privileged("overlay_node_removed_and_readded") {
        return;
    }
    let Some(lab) = setup(3) else { return };
    let mut manifest = String::new();
    for (pod, node) in [("a1", "node1"), ("a2", "node2"), ("a3", "node3")] {
        manifest.push_str(&pod_manifest(pod, node, &[]));
    }
    lab.apply(&manifest);
    let a2 = wait_running(&lab, "a2", Duration::from_secs(60));
    let a3 = wait_running(&lab, "a3", Duration::from_secs(60));
    wait_running(&lab, "a1", Duration::from_secs(60));
    let info = lab.info();
    let a1_ns = info.pod_netns("default", "a1");
    reach(&lab, &a1_ns, &format!("{a2}:8080"), "a2");
    reach(&lab, &a1_ns, &format!("{a3}:8080"), "a3");
    let cidr_of = |node: &str| {
        lab.kubectl_ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])
            .trim()
            .to_string()
    };
    let (cidr2, cidr3) = (cidr_of("node2"), cidr_of("node3"));
    // The packet counter of node2's tunnel flow on node1.
    let node2_flow = || {
        flows(&lab, "node1")
            .lines()
            .find(|l| l.contains(&format!("nw_dst={cidr2}")) && l.contains("priority=100"))
            .map(str::to_string)
    };
    let packets = |line: &str| -> u64 {
        line.split("n_packets=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = packets(&node2_flow().expect("node2's flow on node1"));
    assert!(before > 0);

    let saved = lab.kubectl_ok(&["get", "node", "node3", "-o", "json"]);
    lab.kubectl_ok(&["delete", "node", "node3"]);
    eventually(
        "node3's flows and route to go from node1",
        Duration::from_secs(15),
        || {
            let gone = !flows(&lab, "node1").contains(&format!("nw_dst={cidr3}"));
            let route = run_text(Command::new("ip").args([
                "netns",
                "exec",
                &info.nodes[0].netns,
                "ip",
                "route",
            ]));
            (gone && !route.contains(&cidr3)).then_some(())
        },
    );
    unreachable(&lab, &a1_ns, &format!("{a3}:8080"));
    let after = node2_flow().expect("node2's flow survives node3's removal");
    assert!(
        packets(&after) >= before,
        "node2's flow was replaced (counter {before} -> {}): {after}",
        packets(&after)
    );
    reach(&lab, &a1_ns, &format!("{a2}:8080"), "a2");

    // Re-create node3 as it was (same pod CIDR and address).
    let mut node: serde_json::Value = serde_json::from_str(&saved).unwrap();
    for k in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        node["metadata"].as_object_mut().unwrap().remove(k);
    }
    let file = lab.state.root().join("node3.json");
    std::fs::write(&file, node.to_string()).unwrap();
    lab.kubectl_ok(&["create", "-f", &file.display().to_string()]);
    reach(&lab, &a1_ns, &format!("{a3}:8080"), "a3");
    reach(&lab, &info.nodes[0].netns, &format!("{a3}:8080"), "a3");
}

/// Runs `f` on a fresh thread inside the network namespace `netns` (setns affects only that
/// thread).
fn in_netns_thread<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A TCP echo stream between pods on node1 and node2 keeps flowing, without a gap longer than
/// a few seconds, while node1's agent is killed and started again.
#[test]
fn agent_restart_during_cross_node_transfer_keeps_the_connection() {
    if !privileged("agent_restart_during_cross_node_transfer_keeps_the_connection") {
        return;
    }
    let Some(lab) = setup(2) else { return };
    let mut manifest = String::new();
    for (pod, node) in [("a1", "node1"), ("a2", "node2")] {
        manifest.push_str(&pod_manifest(pod, node, &[]));
    }
    lab.apply(&manifest);
    let a2 = wait_running(&lab, "a2", Duration::from_secs(60));
    wait_running(&lab, "a1", Duration::from_secs(60));
    let info = lab.info();
    reach(
        &lab,
        &info.pod_netns("default", "a1"),
        &format!("{a2}:8080"),
        "a2",
    );
    // Echo server in a2 on port 7000 (one connection).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let _server = in_netns_thread(&info.pod_netns("default", "a2"), move || {
        let listener = std::net::TcpListener::bind("0.0.0.0:7000").unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_client = stop.clone();
    // Bytes echoed so far, read by the test to see the transfer flow.
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let echoed_client = echoed.clone();
    let target = format!("{a2}:7000");
    let client = in_netns_thread(&info.pod_netns("default", "a1"), move || {
        let mut conn = std::net::TcpStream::connect(&target).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let chunk = [0x5au8; 1024];
        let mut buf = [0u8; 1024];
        while !stop_client.load(std::sync::atomic::Ordering::Relaxed) {
            let so_far = echoed_client.load(std::sync::atomic::Ordering::Relaxed);
            conn.write_all(&chunk)
                .map_err(|e| format!("write after {so_far} bytes: {e}"))?;
            conn.read_exact(&mut buf)
                .map_err(|e| format!("read after {so_far} bytes: {e}"))?;
            echoed_client.fetch_add(1024, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok::<u64, String>(echoed_client.load(std::sync::atomic::Ordering::Relaxed))
    });
    // Polls until the transfer echoed `chunks` more 1 KiB chunks than `since` bytes (or the
    // client ended: the join below reports why); returns the bytes echoed then.
    let echoed_past = |what: &str, since: u64, chunks: u64| {
        eventually(what, Duration::from_secs(30), || {
            let now = echoed.load(std::sync::atomic::Ordering::Relaxed);
            (now >= since + chunks * 1024 || client.is_finished()).then_some(now)
        })
    };
    // Baseline: the transfer flows before the kill.
    let before_kill = echoed_past("the transfer to flow before the kill", 0, 20);

    // Kill node1's agent and start it again (the lab journal records the new one for `down`).
    let agent_pid = lab
        .recorded_pids()
        .into_iter()
        .find(|(_, what)| what == "agent node1")
        .map(|(pid, _)| pid)
        .expect("node1's agent pid");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent_pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    eventually("node1's agent to exit", Duration::from_secs(10), || {
        (!alive(agent_pid)).then_some(())
    });
    std::fs::remove_file(lab.state.cni_socket("node1")).ok();
    let program = sibling_binary("switchyard-agent", "switchyard-agent");
    let node1 = info.nodes[0].clone();
    let (mut child, log) = switchyard_lab::cluster::node::start_agent(
        &lab.state,
        &node1,
        &program,
        info.fabric.as_ref(),
    )
    .unwrap();
    // Generous: on a 2-core machine running several labs and builds at once the agent's start
    // (OVSDB, flows, API lists) took over 30 s once; the connection is what is tested here.
    // A start that never ends shows the new agent's log (where it waits).
    let restarted = Instant::now();
    while !lab.state.cni_socket("node1").exists() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || restarted.elapsed() > Duration::from_secs(120) {
            panic!(
                "node1's new agent does not serve after {:.1?} (exit status {exited:?}); its log's end:\n{}{}",
                restarted.elapsed(),
                switchyard_lab::cluster::sys::tail(&log, 80),
                diagnostics(&lab)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("node1's new agent serves after {:.1?}", restarted.elapsed());
    // The same connection carries on with the new agent.
    let served = echoed.load(std::sync::atomic::Ordering::Relaxed);
    echoed_past("the transfer to flow after the restart", served, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = client.join().unwrap();
    assert!(
        matches!(result, Ok(n) if n >= served + 200 * 1024 && served >= before_kill),
        "the transfer broke: {result:?} (echoed {before_kill} bytes before the kill, \
         {served} when the new agent served){}",
        diagnostics(&lab)
    );
    // New connections work too.
    reach(
        &lab,
        &info.pod_netns("default", "a1"),
        &format!("{a2}:8080"),
        "a2",
    );
}

fn pod_ip(lab: &Lab, name: &str) -> String {
    wait_running(lab, name, Duration::from_secs(60))
}

fn mac_of(netns: &str) -> String {
    let out = in_netns(netns, &["cat", "/sys/class/net/eth0/address"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `vlan` segments through the fabric, three nodes: a namespace selects `vlan100`; addresses
/// are unique across nodes although pods start at once on all of them (and recorded in the
/// segment's ConfigMap); pods of the segment reach each other on one node and across nodes;
/// the fabric routes between `vlan100` and `vlan200` and to the internet (no SNAT: the fabric
/// is the gateway); the node reaches them through the fabric; frames addressed straight to
/// the MAC of a pod of another segment on the same node (VLAN or overlay) go nowhere.
#[test]
fn vlan_segments_across_nodes_through_the_fabric() {
    if !privileged("vlan_segments_across_nodes_through_the_fabric") {
        return;
    }
    let Some(lab) = setup(3) else { return };
    // r1 and r2 choose their segment: the cluster admin lets `default`'s pods choose.
    lab.allow_pod_placement("default");
    let mut manifest = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: blue\n  annotations:\n    switchyard.io/segment: vlan100\n---\n",
    );
    let blue: Vec<(String, &str)> = (0..9)
        .map(|i| (format!("b{i}"), ["node1", "node2", "node3"][i % 3]))
        .collect();
    for (pod, node) in &blue {
        manifest.push_str(&pod_manifest(pod, node, &[]).replacen(
            "metadata:\n",
            "metadata:\n  namespace: blue\n",
            1,
        ));
    }
    manifest.push_str(&pod_manifest(
        "r1",
        "node1",
        &[("switchyard.io/segment", "vlan200")],
    ));
    manifest.push_str(&pod_manifest(
        "r2",
        "node2",
        &[("switchyard.io/segment", "vlan200")],
    ));
    manifest.push_str(&pod_manifest("o1", "node1", &[]));
    lab.apply(&manifest);
    let info = lab.info();
    let blue_ip = |pod: &str| {
        eventually(
            &format!("blue/{pod} Running"),
            Duration::from_secs(60),
            || {
                let out = lab.kubectl(&["-n", "blue", "get", "pod", pod, "-o", "json"]);
                let p: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                (p["status"]["phase"] == "Running")
                    .then(|| p["status"]["podIP"].as_str().map(str::to_string))
                    .flatten()
            },
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    let ips: Vec<String> = blue.iter().map(|(p, _)| blue_ip(p)).collect();
    for ip in &ips {
        assert!(ip.starts_with("10.100.0."), "{ip}");
        assert!(seen.insert(ip.clone()), "{ip} given twice: {ips:?}");
    }
    // One SegmentAddress object per address, named <segment>.<address>.
    let objects = lab.kubectl_ok(&[
        "get",
        "segmentaddresses",
        "-l",
        "switchyard.io/segment=vlan100",
        "-o",
        "json",
    ]);
    let objects: serde_json::Value = serde_json::from_str(&objects).unwrap();
    for ip in &ips {
        let recorded = objects["items"].as_array().unwrap().iter().any(|o| {
            o["spec"]["address"] == ip.as_str()
                && o["metadata"]["name"] == format!("vlan100.{ip}").as_str()
        });
        assert!(recorded, "{ip} not recorded: {objects}");
    }
    let (r1, r2, o1) = (pod_ip(&lab, "r1"), pod_ip(&lab, "r2"), pod_ip(&lab, "o1"));
    assert!(
        r1.starts_with("10.101.0.") && r2.starts_with("10.101.0."),
        "{r1} {r2}"
    );
    let ns_of = |pod: &str| info.pod_netns("blue", pod);
    // b0, b3 on node1; b1 on node2; b2 on node3.
    reach(&lab, &ns_of("b0"), &format!("{}:8080", ips[3]), "b3");
    reach(&lab, &ns_of("b0"), &format!("{}:8080", ips[1]), "b1");
    reach(&lab, &ns_of("b2"), &format!("{}:8080", ips[0]), "b0");
    reach(&lab, &ns_of("b1"), &format!("{}:8080", ips[2]), "b2");
    // Routed by the fabric between the VLANs, both ways, same node and across.
    reach(&lab, &ns_of("b0"), &format!("{r1}:8080"), "r1");
    reach(&lab, &ns_of("b0"), &format!("{r2}:8080"), "r2");
    reach(
        &lab,
        &info.pod_netns("default", "r2"),
        &format!("{}:8080", ips[2]),
        "b2",
    );
    // The node reaches them (through its default route, the fabric).
    reach(
        &lab,
        &info.nodes[0].netns,
        &format!("{}:8080", ips[1]),
        "b1",
    );
    // The internet sees the pod's own address: the fabric is the segment's gateway.
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let _inet = peer_server(&fabric.internet_netns, 8080, 0);
    reach(&lab, &ns_of("b0"), "203.0.113.1:8080", &ips[0]);
    // No L2 leak: b0 (VLAN 100) sends straight to the MACs of r1 (VLAN 200) and o1 (overlay),
    // both on node1, as if they were on its link.
    for (victim_ip, victim_ns) in [
        (r1.clone(), info.pod_netns("default", "r1")),
        (o1.clone(), info.pod_netns("default", "o1")),
    ] {
        let mac = mac_of(&victim_ns);
        let b0 = ns_of("b0");
        let add = in_netns(
            &b0,
            &[
                "ip",
                "route",
                "add",
                &format!("{victim_ip}/32"),
                "dev",
                "eth0",
            ],
        );
        assert!(add.status.success(), "{add:?}");
        let neigh = in_netns(
            &b0,
            &[
                "ip",
                "neigh",
                "replace",
                &victim_ip,
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
        assert!(neigh.status.success(), "{neigh:?}");
        unreachable(&lab, &b0, &format!("{victim_ip}:8080"));
    }
}

/// A static address request (`switchyard.io/ip`) is honoured when free; the same request from
/// a pod on another node fails with a clear error until the first pod is deleted (its address
/// released by DEL), then succeeds.
#[test]
fn vlan_static_address_is_unique_across_nodes_and_released_on_delete() {
    if !privileged("vlan_static_address_is_unique_across_nodes_and_released_on_delete") {
        return;
    }
    let Some(lab) = setup(2) else { return };
    // The pods choose segment vlan100: the cluster admin lets `default`'s pods choose.
    lab.allow_pod_placement("default");
    let want = "10.100.0.77";
    lab.apply(&pod_manifest(
        "s1",
        "node1",
        &[
            ("switchyard.io/segment", "vlan100"),
            ("switchyard.io/ip", want),
        ],
    ));
    assert_eq!(pod_ip(&lab, "s1"), want);
    lab.apply(&pod_manifest(
        "s2",
        "node2",
        &[
            ("switchyard.io/segment", "vlan100"),
            ("switchyard.io/ip", want),
        ],
    ));
    let message = eventually("s2's ADD error", Duration::from_secs(60), || {
        let p = pod_json(&lab, "s2")?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["message"].as_str())
            .filter(|m| m.contains(want))
            .map(str::to_string)
    });
    assert!(
        message.contains("in use") || message.contains("allocated") || message.contains("taken"),
        "{message}"
    );
    let bad = pod_manifest(
        "s3",
        "node2",
        &[
            ("switchyard.io/segment", "vlan100"),
            ("switchyard.io/ip", "10.7.0.5"),
        ],
    );
    lab.apply(&bad);
    eventually("s3's ADD error", Duration::from_secs(60), || {
        let p = pod_json(&lab, "s3")?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["message"].as_str())
            .filter(|m| m.contains("10.7.0.5"))
            .map(drop)
    });
    lab.kubectl_ok(&["delete", "pod", "s1", "--wait=false"]);
    assert_eq!(
        wait_running(&lab, "s2", Duration::from_secs(120)),
        want,
        "{}",
        diagnostics(&lab)
    );
}

/// `tunnel-type: vxlan`: the agents (started by the test with `--tunnel-type vxlan`) make
/// `sy-tun0` a VXLAN port and pods reach each other across nodes through it, full MTU included.
#[test]
fn overlay_with_vxlan_tunnels() {
    if !privileged("overlay_with_vxlan_tunnels") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    let program = sibling_binary("switchyard-agent", "switchyard-agent");
    let lab = Lab::up(2, &["--no-proxy", "--no-agent"]);
    let info = lab.info();
    let mut agents = Vec::new();
    for node in &info.nodes {
        let config = lab.state.node_dir(&node.name).join("agent.yaml");
        std::fs::write(
            &config,
            switchyard_lab::cluster::node::agent_config_yaml(&lab.state, node, None),
        )
        .unwrap();
        let log = std::fs::File::create(lab.state.node_dir(&node.name).join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(&program)
            .args(switchyard_lab::cluster::node::agent_args(&config))
            .args(["--tunnel-type", "vxlan"])
            .env("NODE_NAME", &node.name)
            .env("KUBECONFIG", lab.state.kubeconfig())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        agents.push(Proc(child));
    }
    for node in &info.nodes {
        eventually(
            &format!("the agent on {} to serve", node.name),
            Duration::from_secs(30),
            || lab.state.cni_socket(&node.name).exists().then_some(()),
        );
        let iface = run_text(
            Command::new("ovs-vsctl")
                .arg(format!(
                    "--db=unix:{}",
                    lab.state.ovsdb_socket(&node.name).display()
                ))
                .args(["get", "Interface", "sy-tun0", "type"]),
        );
        assert_eq!(iface.trim(), "vxlan", "{}", node.name);
    }
    let mut manifest = String::new();
    for (pod, node) in [("a1", "node1"), ("a2", "node2")] {
        manifest.push_str(&pod_manifest(pod, node, &[]));
    }
    lab.apply(&manifest);
    let a1 = pod_ip(&lab, "a1");
    let a2 = pod_ip(&lab, "a2");
    reach(
        &lab,
        &info.pod_netns("default", "a1"),
        &format!("{a2}:8080"),
        "a2",
    );
    reach(
        &lab,
        &info.pod_netns("default", "a2"),
        &format!("{a1}:8080"),
        "a1",
    );
    reach(&lab, &info.nodes[0].netns, &format!("{a2}:8080"), "a2");
    let ns = info.pod_netns("default", "a1");
    let mtu: u32 =
        String::from_utf8_lossy(&in_netns(&ns, &["cat", "/sys/class/net/eth0/mtu"]).stdout)
            .trim()
            .parse()
            .unwrap();
    let size = (mtu - 28).to_string();
    let ping = in_netns(
        &ns,
        &["ping", "-c", "2", "-W", "2", "-M", "do", "-s", &size, &a2],
    );
    assert!(
        ping.status.success(),
        "DF ping of {mtu} bytes over VXLAN: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        diagnostics(&lab)
    );
    drop(agents);
}
