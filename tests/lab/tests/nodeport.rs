//! NodePort, externalIPs and LoadBalancer Services served by `switchyard-proxy`, tested from a
//! client outside the cluster (the `internet` namespace of `switchyard-lab up --fabric`) as a
//! user would: with the address each backend saw (`echo-server --name @peer`).
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build -p
//! switchyard-cni -p switchyard-agent -p switchyard-proxy -p switchyard-lab`); fails with the
//! reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1. On failure it prints, per node, the
//! flows of `br-int`, the routes and the agent and proxy logs.

mod lab_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const REACH_DEADLINE: Duration = Duration::from_secs(20);
const PEER_HTTP: u16 = 9090;
const PEER_UDP: u16 = 9053;
const NODE_PORT_TCP: u16 = 30081;
const NODE_PORT_UDP: u16 = 30054;
/// Not routed anywhere but by the test (the fabric, to one node).
const EXTERNAL_IP: &str = "192.0.2.50";
const LB_IP: &str = "192.0.2.60";
/// The internet namespace's address on its link to the fabric (the source of its requests).
const INTERNET_CLIENT: &str = "198.51.100.2";

fn lab_up() -> Lab {
    Lab::up_with_daemons(2, &["--fabric", "--vlans", "100"])
}

fn pod(name: &str, node: &str, app: Option<&str>) -> String {
    let labels = app
        .map(|a| format!("  labels:\n    app: {a}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n{labels}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

/// Service `np` of `kind` selecting `app: np`, `@peer` ports 81/TCP and 54/UDP with fixed node
/// ports (for NodePort and LoadBalancer).
fn service(kind: &str, etp: &str, external_ips: &[&str]) -> String {
    let node_ports = kind != "ClusterIP";
    let np = |n: u16| {
        if node_ports {
            format!("\n    nodePort: {n}")
        } else {
            String::new()
        }
    };
    let etp = if node_ports {
        format!("  externalTrafficPolicy: {etp}\n")
    } else {
        String::new()
    };
    let ips = if external_ips.is_empty() {
        String::new()
    } else {
        format!("  externalIPs: [{}]\n", external_ips.join(", "))
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\n  namespace: default\nspec:\n  type: {kind}\n{etp}{ips}  selector:\n    app: np\n  ports:\n  - name: peer-http\n    protocol: TCP\n    port: 81\n    targetPort: {PEER_HTTP}{}\n  - name: peer-udp\n    protocol: UDP\n    port: 54\n    targetPort: {PEER_UDP}{}\n",
        np(NODE_PORT_TCP),
        np(NODE_PORT_UDP)
    )
}

/// Polls until `count` requests from `netns` to `target` all get an answer accepted by `ok`.
fn answers(netns: &str, proto: &str, target: &str, what: &str, ok: &dyn Fn(&str) -> bool) {
    let end = Instant::now() + REACH_DEADLINE;
    loop {
        let got = echo_client(netns, proto, target, 3);
        if got.len() == 3 && got.iter().all(|a| ok(a)) {
            eprintln!("{netns} -> {proto} {target}: {got:?}");
            return;
        }
        assert!(
            Instant::now() < end,
            "{netns} -> {proto} {target}: answers {got:?}, expected {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Both protocols of the `@peer` ports answer with `seen_as`.
fn seen_as(netns: &str, host: &str, tcp_port: u16, udp_port: u16, seen_as: &str) {
    for (proto, port) in [("http", tcp_port), ("udp", udp_port)] {
        answers(
            netns,
            proto,
            &format!("{host}:{port}"),
            &format!("every answer {seen_as}"),
            &|a| a == seen_as,
        );
    }
}

/// No answer (within the client's timeout) to TCP and UDP.
fn no_answer(netns: &str, host: &str, tcp_port: u16, udp_port: u16) {
    for (proto, port) in [("http", tcp_port), ("udp", udp_port)] {
        let got = echo_client(netns, proto, &format!("{host}:{port}"), 2);
        assert!(
            got.iter().all(|a| a == "-"),
            "{netns} -> {proto} {host}:{port} must not be answered: {got:?}"
        );
    }
}

fn gateway(netns: &str) -> String {
    let out = in_netns(netns, &["ip", "-4", "-o", "addr", "show", "dev", "sy-gw0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on sy-gw0 in {netns}: {text}"))
        .to_string()
}

/// What the proxy holds on a node for external frontends: its flows in
/// SERVICE_EXTERNAL_FRONTEND, the elements of its nftables sets, its routes.
#[derive(Debug, PartialEq, Eq)]
struct HostCounts {
    flows: usize,
    nft_elements: usize,
    routes: usize,
}

fn counts(lab: &Lab, node: &str, netns: &str) -> HostCounts {
    let flows = run_text(
        Command::new("ovs-ofctl")
            .env("OVS_RUNDIR", lab.state.ovs_dir(node))
            .args([
                "-O",
                "OpenFlow15",
                "dump-flows",
                "br-int",
                "table=29,cookie=0x5359020000000000/0xffffff0000000000",
            ]),
    )
    .lines()
    .filter(|l| l.contains("table=29"))
    .count();
    let nft = String::from_utf8_lossy(
        &in_netns(
            netns,
            &["nft", "-j", "list", "table", "ip", "switchyard-proxy"],
        )
        .stdout,
    )
    .to_string();
    let json: serde_json::Value = serde_json::from_str(&nft).unwrap_or_default();
    let nft_elements = json["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["set"]["elem"].as_array().map(Vec::len))
                .sum()
        })
        .unwrap_or(0);
    let routes = String::from_utf8_lossy(
        &in_netns(netns, &["ip", "-4", "route", "show", "proto", "0x54"]).stdout,
    )
    .lines()
    .count();
    HostCounts {
        flows,
        nft_elements,
        routes,
    }
}

/// One lab, backend on node2, a client pod on node1:
/// 1. NodePort TCP and UDP from the internet: both nodes answer; the backend sees the
///    gateway address of the node the request came in on (ETP Cluster masquerades, also on
///    the backend's own node).
/// 2. ETP Local: node2 answers with the client's own address, node1 does not answer.
/// 3. From the pod on node1, node1's address on the node port answers and the backend sees
///    the pod's own address (ETP Cluster and Local).
/// 4. LoadBalancer with an external IP (routed by the fabric to node1) and an ingress IP set
///    through `/status` (routed to node2): answered from the internet, a pod and a node.
/// 6. `loadBalancerSourceRanges` on the LB IP: allowed, dropped, updated and removed, from
///    the internet and from a pod.
/// 5. LoadBalancer -> ClusterIP: the node port stops answering within 1 s and the flows, nft
///    set elements and routes return to their starting counts.
#[test]
fn nodeport_external_ips_and_load_balancer_from_outside() {
    if !privileged("nodeport_external_ips_and_load_balancer_from_outside") {
        return;
    }
    let lab = lab_up();
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let internet = fabric.internet_netns.clone();
    let node1 = info.node("node1").unwrap().clone();
    let node2 = info.node("node2").unwrap().clone();
    let (n1, n2) = (node1.address.to_string(), node2.address.to_string());
    let (gw1, gw2) = (gateway(&node1.netns), gateway(&node2.netns));

    // The proxies' first sync of the host (the table with the node's address, the two
    // node-port VIPs routed) may still be under way when `up` returns.
    let host_synced = |node: &str, netns: &str| {
        eventually(
            &format!(
                "{node}'s proxy to route the two node-port VIPs and 169.254.169.251 and hold its nft table"
            ),
            REACH_DEADLINE,
            || {
                let c = counts(&lab, node, netns);
                (c.routes == 3 && c.nft_elements == 1).then_some(c)
            },
        )
    };
    let start1 = host_synced("node1", &node1.netns);
    let start2 = host_synced("node2", &node2.netns);
    eprintln!("starting counts: node1 {start1:?}, node2 {start2:?}");

    let mut m = pod("back", "node2", Some("np"));
    m.push_str(&pod("client", "node1", None));
    m.push_str(&service("NodePort", "Cluster", &[]));
    lab.apply(&m);
    wait_running(&lab, "back", POD_DEADLINE);
    let client_ip = wait_running(&lab, "client", POD_DEADLINE);
    let _peer = peer_server(&info.pod_netns("default", "back"), PEER_HTTP, PEER_UDP);
    let client = info.pod_netns("default", "client");

    // 1. ETP Cluster from the internet.
    seen_as(&internet, &n1, NODE_PORT_TCP, NODE_PORT_UDP, &gw1);
    seen_as(&internet, &n2, NODE_PORT_TCP, NODE_PORT_UDP, &gw2);
    // 3. From a pod on node1 to its own node's address.
    seen_as(&client, &n1, NODE_PORT_TCP, NODE_PORT_UDP, &client_ip);
    // And from node1 itself (output chain -> VIP, masqueraded to the gateway).
    seen_as(&node1.netns, &n1, NODE_PORT_TCP, NODE_PORT_UDP, &gw1);

    // 2. ETP Local.
    lab.apply(&service("NodePort", "Local", &[]));
    seen_as(
        &internet,
        &n2,
        NODE_PORT_TCP,
        NODE_PORT_UDP,
        INTERNET_CLIENT,
    );
    eventually(
        "node1's ETP-Local frontends to drop",
        REACH_DEADLINE,
        || {
            let got = echo_client(&internet, "http", &format!("{n1}:{NODE_PORT_TCP}"), 1);
            (got == ["-"]).then_some(())
        },
    );
    no_answer(&internet, &n1, NODE_PORT_TCP, NODE_PORT_UDP);
    // The node's own pods still use every endpoint.
    seen_as(&client, &n1, NODE_PORT_TCP, NODE_PORT_UDP, &client_ip);

    // 4. LoadBalancer, ETP Cluster, an external IP routed to node1 and an LB IP to node2.
    lab.apply(&service("LoadBalancer", "Cluster", &[EXTERNAL_IP]));
    set_lb_ingress(&lab, "np", LB_IP, None);
    for (ip, via) in [(EXTERNAL_IP, &n1), (LB_IP, &n2)] {
        route_from_internet(&fabric.netns, &internet, ip, via);
    }
    seen_as(&internet, EXTERNAL_IP, 81, 54, &gw1);
    seen_as(&internet, LB_IP, 81, 54, &gw2);
    for ip in [EXTERNAL_IP, LB_IP] {
        seen_as(&client, ip, 81, 54, &client_ip);
        seen_as(&node1.netns, ip, 81, 54, &gw1);
    }
    // ETP Local on the LB: node2 (the backend's) keeps the client's address.
    lab.apply(&service("LoadBalancer", "Local", &[EXTERNAL_IP]));
    seen_as(&internet, LB_IP, 81, 54, INTERNET_CLIENT);
    seen_as(&client, LB_IP, 81, 54, &client_ip);
    seen_as(&node1.netns, LB_IP, 81, 54, &gw1);

    // 6. loadBalancerSourceRanges: the internet client's /32 reaches the LB IP, a pod outside
    // the ranges does not (the external IP stays open to it); another range shuts the internet
    // client out; removing the field opens the LB IP again.
    let ranges = |value: &str| {
        lab.kubectl_ok(&[
            "patch",
            "service",
            "np",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"loadBalancerSourceRanges":{value}}}}}"#),
        ]);
    };
    ranges(&format!(r#"["{INTERNET_CLIENT}/32"]"#));
    eventually(
        "the pod outside the source ranges dropped",
        REACH_DEADLINE,
        || {
            let got = echo_client(&client, "http", &format!("{LB_IP}:81"), 1);
            (got == ["-"]).then_some(())
        },
    );
    no_answer(&client, LB_IP, 81, 54);
    seen_as(&internet, LB_IP, 81, 54, INTERNET_CLIENT);
    seen_as(&client, EXTERNAL_IP, 81, 54, &client_ip);
    ranges(r#"["203.0.113.0/24"]"#);
    eventually(
        "the internet client outside the new range dropped",
        REACH_DEADLINE,
        || {
            let got = echo_client(&internet, "http", &format!("{LB_IP}:81"), 1);
            (got == ["-"]).then_some(())
        },
    );
    no_answer(&internet, LB_IP, 81, 54);
    ranges("null");
    seen_as(&internet, LB_IP, 81, 54, INTERNET_CLIENT);
    seen_as(&client, LB_IP, 81, 54, &client_ip);

    // 5. Back to ClusterIP: nothing external is left.
    let with_lb = counts(&lab, "node1", &node1.netns);
    assert!(
        with_lb.flows > 0 && with_lb.nft_elements > start1.nft_elements && with_lb.routes == 5,
        "{with_lb:?}"
    );
    lab.apply(&service("ClusterIP", "Cluster", &[]));
    let changed = Instant::now();
    eventually(
        "node1's external frontends removed",
        Duration::from_secs(1),
        || (counts(&lab, "node1", &node1.netns).flows == start1.flows).then_some(()),
    );
    eprintln!("external frontends gone after {:?}", changed.elapsed());
    no_answer(&internet, &n2, NODE_PORT_TCP, NODE_PORT_UDP);
    no_answer(&client, &n1, NODE_PORT_TCP, NODE_PORT_UDP);
    eventually("starting counts again", Duration::from_secs(5), || {
        (counts(&lab, "node1", &node1.netns) == start1
            && counts(&lab, "node2", &node2.netns) == start2)
            .then_some(())
    });
}

const STICKY_NODE_PORT: u16 = 30090;

/// Service `sticky` (NodePort, ETP Cluster) selecting `app: sticky`, port 80 to the pods' own
/// echo server (8080, answers with the pod's name), with `sessionAffinity` as given.
fn sticky_service(affinity: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: sticky\n  namespace: default\nspec:\n  type: NodePort\n  externalTrafficPolicy: Cluster\n  sessionAffinity: {affinity}\n  selector:\n    app: sticky\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n    nodePort: {STICKY_NODE_PORT}\n"
    )
}

/// The distinct answers of `count` HTTP requests (a new connection each) from `netns`.
fn backends_seen(netns: &str, target: &str, count: u32) -> std::collections::BTreeSet<String> {
    echo_client(netns, "http", target, count)
        .into_iter()
        .collect()
}

/// `sessionAffinity: ClientIP` on a NodePort Service, two backends (node1 and node2):
/// without affinity requests from the internet through node1's node port reach both (the
/// check has the power to fail); with it every request from the internet sticks to one, and a
/// pod's requests stick to one backend across the ClusterIP and the node port (one affinity
/// per client for every frontend of the port, as in kube-proxy).
#[test]
fn session_affinity_on_the_node_port_is_shared_with_the_cluster_ip() {
    if !privileged("session_affinity_on_the_node_port_is_shared_with_the_cluster_ip") {
        return;
    }
    let lab = lab_up();
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let internet = info
        .fabric
        .clone()
        .expect("lab has a fabric")
        .internet_netns;
    let n1 = info.node("node1").unwrap().address.to_string();
    let mut m = pod("s1", "node1", Some("sticky"));
    m.push_str(&pod("s2", "node2", Some("sticky")));
    m.push_str(&pod("client", "node1", None));
    m.push_str(&sticky_service("None"));
    lab.apply(&m);
    for name in ["s1", "s2", "client"] {
        wait_running(&lab, name, POD_DEADLINE);
    }
    let client = info.pod_netns("default", "client");
    let node_port = format!("{n1}:{STICKY_NODE_PORT}");
    let both: std::collections::BTreeSet<String> = ["s1".into(), "s2".into()].into();

    eventually(
        "both backends behind node1's node port",
        REACH_DEADLINE,
        || (backends_seen(&internet, &node_port, 40) == both).then_some(()),
    );

    lab.apply(&sticky_service("ClientIP"));
    let from_internet = eventually(
        "the internet client pinned to one backend",
        REACH_DEADLINE,
        || {
            let seen = backends_seen(&internet, &node_port, 20);
            (seen.len() == 1 && !seen.contains("-")).then_some(seen)
        },
    );
    eprintln!("internet client pinned to {from_internet:?}");
    let vip = format!("{}:80", cluster_ip(&lab, "default", "sticky"));
    let pinned = eventually("the pod pinned to one backend", REACH_DEADLINE, || {
        let seen = backends_seen(&client, &vip, 20);
        (seen.len() == 1 && !seen.contains("-")).then_some(seen)
    });
    for _ in 0..3 {
        assert_eq!(
            backends_seen(&client, &node_port, 10),
            pinned,
            "the pod's node-port requests follow its ClusterIP affinity"
        );
        assert_eq!(backends_seen(&client, &vip, 10), pinned);
        assert_eq!(backends_seen(&internet, &node_port, 10), from_internet);
    }
}

/// Service `chg` selecting `app: chg`, TCP `port` (to the pods' echo server, 8080) and UDP
/// `port + 100` (5353), both answering with the pod's name; `extra` is inserted into the spec.
/// (Not one port number for both protocols: `kubectl apply` merges Service ports by `port`
/// alone, so a changed node port of the second one would be lost, as with kube-apiserver.)
fn chg_service(kind: &str, port: u16, node_ports: (u16, u16), extra: &str) -> String {
    let np = |n: u16| {
        if kind == "NodePort" || kind == "LoadBalancer" {
            format!("\n    nodePort: {n}")
        } else {
            String::new()
        }
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: chg\n  namespace: default\nspec:\n  type: {kind}\n{extra}  selector:\n    app: chg\n  ports:\n  - name: http\n    protocol: TCP\n    port: {port}\n    targetPort: 8080{}\n  - name: dns\n    protocol: UDP\n    port: {}\n    targetPort: 5353{}\n",
        np(node_ports.0),
        port + 100,
        np(node_ports.1)
    )
}

/// `name` answers TCP `host:port` and UDP `host:port+100` (`chg`'s ports).
fn named(netns: &str, host: &str, port: u16, name: &str) {
    for (proto, port) in [("http", port), ("udp", port + 100)] {
        answers(netns, proto, &format!("{host}:{port}"), name, &|a| {
            a == name
        });
    }
}

/// Polls until neither `host:tcp` nor `host:udp` answers; prints how long that took.
fn refuses(netns: &str, host: &str, tcp: u16, udp: u16, since: Instant) {
    eventually(
        &format!("{host}:{tcp}/{udp} to stop answering"),
        REACH_DEADLINE,
        || {
            let http = echo_client(netns, "http", &format!("{host}:{tcp}"), 1);
            let udp = echo_client(netns, "udp", &format!("{host}:{udp}"), 1);
            (http == ["-"] && udp == ["-"]).then_some(())
        },
    );
    eprintln!(
        "{host}:{tcp}/{udp} stopped answering after {:.1?}",
        since.elapsed()
    );
}

/// Type and port changes leave nothing behind, `ipMode: Proxy` is not short-circuited, a UDP
/// client on a fixed source port follows a replaced backend, and kubectl and kube-proxy's
/// node URLs show what a user expects:
/// 1. ExternalName -> NodePort: the node port answers from the internet.
/// 2. nodePort changed: the old one stops answering, the new one answers; with
///    `internalTrafficPolicy: Local` the ClusterIP drops on node1 (no local endpoint) while
///    node1's node port reaches the backend on node2.
/// 3. NodePort -> LoadBalancer with an ingress IP, then the port changed: the LB IP's old port
///    stops answering, the new one answers; `kubectl get svc` shows the node ports and the
///    external IP.
/// 4. `ipMode: Proxy`: a pod's request to the LB IP goes out to the load balancer (a server
///    holding that address in the internet namespace answers), not to the backend.
/// 5. UDP from a fixed source port to the node port while the only backend is replaced:
///    answers come back from the new backend (its stale conntrack entry is flushed).
/// 6. Back to ClusterIP: flows, nft set elements and routes return to their starting counts.
/// 7. `:10256/healthz` (with `lastUpdated` and `currentTime`), `/livez` and
///    `:10249/proxyMode` answer on the node, as upstream's "should check kube-proxy urls".
#[test]
fn type_and_port_changes_ip_mode_proxy_and_a_replaced_udp_backend() {
    if !privileged("type_and_port_changes_ip_mode_proxy_and_a_replaced_udp_backend") {
        return;
    }
    let lab = lab_up();
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let internet = fabric.internet_netns.clone();
    let node1 = info.node("node1").unwrap().clone();
    let n1 = node1.address.to_string();
    let start = eventually("node1's proxy host sync", REACH_DEADLINE, || {
        let c = counts(&lab, "node1", &node1.netns);
        (c.routes == 3 && c.nft_elements == 1).then_some(c)
    });

    let mut m = pod("old", "node2", Some("chg"));
    m.push_str(&pod("client", "node1", None));
    m.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: chg\n  namespace: default\nspec:\n  type: ExternalName\n  externalName: example.org\n",
    );
    lab.apply(&m);
    wait_running(&lab, "old", POD_DEADLINE);
    wait_running(&lab, "client", POD_DEADLINE);
    let client = info.pod_netns("default", "client");

    // 1. ExternalName -> NodePort.
    lab.apply(&chg_service("NodePort", 83, (30083, 30084), ""));
    answers(&internet, "http", &format!("{n1}:30083"), "old", &|a| {
        a == "old"
    });
    answers(&internet, "udp", &format!("{n1}:30084"), "old", &|a| {
        a == "old"
    });

    // 2. nodePort changed.
    lab.apply(&chg_service("NodePort", 83, (30085, 30086), ""));
    let changed = Instant::now();
    answers(&internet, "http", &format!("{n1}:30085"), "old", &|a| {
        a == "old"
    });
    answers(&internet, "udp", &format!("{n1}:30086"), "old", &|a| {
        a == "old"
    });
    refuses(&internet, &n1, 30083, 30084, changed);

    // 2b. internalTrafficPolicy: Local with externalTrafficPolicy: Cluster: the pod on node1
    // (no local endpoint) gets nothing from the ClusterIP, while node1's node port still
    // reaches the backend on node2 (the external policy alone applies to external traffic).
    let itp = |policy: &str| {
        lab.kubectl_ok(&[
            "patch",
            "service",
            "chg",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"internalTrafficPolicy":"{policy}"}}}}"#),
        ]);
    };
    let vip = cluster_ip(&lab, "default", "chg");
    named(&client, &vip, 83, "old");
    itp("Local");
    eventually(
        "the ClusterIP without local endpoints to drop",
        REACH_DEADLINE,
        || (echo_client(&client, "http", &format!("{vip}:83"), 1) == ["-"]).then_some(()),
    );
    answers(&internet, "http", &format!("{n1}:30085"), "old", &|a| {
        a == "old"
    });
    answers(&internet, "udp", &format!("{n1}:30086"), "old", &|a| {
        a == "old"
    });
    answers(&client, "http", &format!("{n1}:30085"), "old", &|a| {
        a == "old"
    });
    itp("Cluster");
    named(&client, &vip, 83, "old");

    // 3. LoadBalancer, then the port changed.
    lab.apply(&chg_service("LoadBalancer", 83, (30085, 30086), ""));
    set_lb_ingress(&lab, "chg", LB_IP, None);
    route_from_internet(&fabric.netns, &internet, LB_IP, &n1);
    named(&internet, LB_IP, 83, "old");
    lab.apply(&chg_service("LoadBalancer", 84, (30085, 30086), ""));
    let changed = Instant::now();
    named(&internet, LB_IP, 84, "old");
    refuses(&internet, LB_IP, 83, 183, changed);
    let svc = lab.kubectl_ok(&["get", "svc", "chg"]);
    assert!(
        svc.contains("LoadBalancer")
            && svc.contains(LB_IP)
            && svc.contains("84:30085/TCP,184:30086/UDP"),
        "kubectl get svc:\n{svc}"
    );

    // 4. ipMode Proxy: the LB IP belongs to a load balancer outside (here: the internet
    // namespace), and pods must reach it, not be short-circuited to the backend.
    check(
        "LB address in the internet",
        in_netns(
            &internet,
            &["ip", "addr", "add", &format!("{LB_IP}/32"), "dev", "lo"],
        ),
    );
    check(
        "route to the internet in the fabric",
        in_netns(
            &fabric.netns,
            &["ip", "route", "replace", LB_IP, "via", "198.51.100.2"],
        ),
    );
    let _outside_lb = {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &internet,
                LAB,
                "echo-server",
                "--name",
                "outside-lb",
            ])
            .args(["--http", "84", "--udp", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    };
    set_lb_ingress(&lab, "chg", LB_IP, Some("Proxy"));
    // (TCP only: the echo server answers UDP from the namespace's primary address, not the LB
    // address on `lo`, which no client's conntrack would accept.)
    answers(
        &client,
        "http",
        &format!("{LB_IP}:84"),
        "outside-lb",
        &|a| a == "outside-lb",
    );

    // 5. UDP from one source port while the only backend is replaced.
    let fixed = |target: &str| {
        let out = in_netns(
            &internet,
            &[
                LAB,
                "echo-client",
                "--udp",
                target,
                "--source-port",
                "40053",
                "--timeout",
                "1",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let target = format!("{n1}:30086");
    eventually(
        "the fixed-port UDP client answered by the old pod",
        REACH_DEADLINE,
        || (fixed(&target) == "old").then_some(()),
    );
    lab.kubectl_ok(&["delete", "pod", "old", "--wait=false"]);
    lab.apply(&pod("new", "node2", Some("chg")));
    wait_running(&lab, "new", POD_DEADLINE);
    let ready = Instant::now();
    eventually(
        "the same UDP flow answered by the new pod",
        REACH_DEADLINE,
        || (fixed(&target) == "new").then_some(()),
    );
    eprintln!(
        "fixed-port UDP answered by the new pod {:.1?} after it was Ready",
        ready.elapsed()
    );

    // 6. Back to ClusterIP: nothing external is left on node1.
    lab.apply(&chg_service("ClusterIP", 84, (0, 0), ""));
    eventually("node1's starting counts again", REACH_DEADLINE, || {
        (counts(&lab, "node1", &node1.netns) == start).then_some(())
    });

    // 7. kube-proxy's node URLs.
    let curl = |url: &str| {
        let out = in_netns(&node1.netns, &["curl", "-sS", "-w", "\n%{http_code}", url]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let healthz = curl("http://127.0.0.1:10256/healthz");
    assert!(
        healthz.ends_with("\n200")
            && healthz.contains("lastUpdated")
            && healthz.contains("currentTime"),
        "/healthz: {healthz}"
    );
    assert!(curl("http://127.0.0.1:10256/livez").ends_with("\n200"));
    let mode = curl("http://127.0.0.1:10249/proxyMode");
    assert_eq!(mode, "switchyard\n200", "/proxyMode");
}
