//! The service datapath on a real OVS (userspace datapath) with real pods in
//! network namespaces, driven by the real `switchyard-proxy` binary watching
//! the lab's API server. See `common` for the fixture. Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Lab, Node, ProxyProcess, eventually};
use serde_json::json;
use switchyard_ovs_harness::require_privileges;

const HTTP: serde_json::Value = serde_json::Value::Null;

fn http_ports() -> serde_json::Value {
    json!([{"name": "http", "containerPort": 8080}])
}

/// Starts a node with `backends` pods serving HTTP on 8080 behind Service
/// `web` (port 80 -> named port http), a client pod, and the proxy.
async fn web_setup(backends: &[(&str, u8)]) -> (Node, Lab, ProxyProcess, SocketAddr) {
    let _ = HTTP;
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_service(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .await;
    for (name, host) in backends {
        add_backend(&mut node, &lab, name, *host).await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    (node, lab, proxy, SocketAddr::from((vip, 80)))
}

async fn add_backend(node: &mut Node, lab: &Lab, name: &str, host: u8) {
    let pod = node.add_pod(name, host).await;
    pod.serve_tcp(8080);
    let ip = pod.ip;
    lab.create_pod(name, json!({"app": "web"}), common::NODE, ip, http_ports())
        .await;
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_spreads_connections_and_follows_scale_and_readiness() {
    if !require_privileges("cluster_ip_spreads_connections_and_follows_scale_and_readiness") {
        return;
    }
    let (mut node, lab, proxy, vip) =
        web_setup(&[("web-1", 11), ("web-2", 12), ("web-3", 13)]).await;
    let debug = debug_of!(node, proxy);

    // All three backends answer new connections.
    eventually("all three backends to answer", &debug, || async {
        let seen = node.backends_seen("client", vip, 12).await;
        (seen == set(&["web-1", "web-2", "web-3"])).then_some(())
    })
    .await;

    // An established connection, kept across every change below while its
    // backend exists.
    let mut conn = node.pod("client").connect(vip).await.expect("connect");
    let pinned = conn.ask().await.expect("answer");

    // Scale up: a fourth backend joins.
    add_backend(&mut node, &lab, "web-4", 14).await;
    let debug = debug_of!(node, proxy);
    eventually("web-4 to answer", &debug, || async {
        node.backends_seen("client", vip, 8)
            .await
            .contains("web-4")
            .then_some(())
    })
    .await;

    // Readiness flip: web-1 not ready -> gets no new connections.
    lab.set_ready("web-1", false).await;
    eventually("web-1 to leave", &debug, || async {
        let seen = node.backends_seen("client", vip, 16).await;
        (seen == set(&["web-2", "web-3", "web-4"])).then_some(())
    })
    .await;
    lab.set_ready("web-1", true).await;
    eventually("web-1 to come back", &debug, || async {
        node.backends_seen("client", vip, 8)
            .await
            .contains("web-1")
            .then_some(())
    })
    .await;

    assert_eq!(
        conn.ask().await.expect("pinned answer"),
        pinned,
        "{}",
        debug()
    );

    // Scale down: web-2 and web-3 deleted.
    lab.delete_pod("web-2").await;
    lab.delete_pod("web-3").await;
    eventually("only web-1 and web-4", &debug, || async {
        let seen = node.backends_seen("client", vip, 12).await;
        (seen == set(&["web-1", "web-4"])).then_some(())
    })
    .await;

    // Metrics and health are served.
    let (status, body) = proxy.get("/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    assert!(
        body.contains("switchyard_proxy_service_ports_programmed"),
        "{body}"
    );
    let (status, _) = proxy.get("/healthz").await.expect("healthz answers");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_endpoints_rejects_at_once() {
    if !require_privileges("service_without_endpoints_rejects_at_once") {
        return;
    }
    let (node, lab, proxy, vip) = web_setup(&[]).await;
    let debug = debug_of!(node, proxy);
    let _ = &lab;
    // Once the proxy has synced, curl exits with 7 (could not connect:
    // connection refused) at once: no SYN retransmission, no timeout.
    proxy.wait_synced(&debug).await;
    for _ in 0..5 {
        let started = Instant::now();
        let result = node.pod("client").curl(vip).await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err((7, _))), "{result:?}\n{}", debug());
        assert!(
            elapsed < Duration::from_millis(500),
            "refusal took {elapsed:?}\n{}",
            debug()
        );
    }
    // The proxy answered (ICMP port unreachable), straight out of the
    // client's port (the packet-in carried in_port).
    let (_, metrics) = proxy.get("/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_proxy_rejects_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let client_port = node.pod("client").ofport;
    assert!(
        proxy
            .log_text()
            .contains(&format!("in_port=Some({client_port})")),
        "{}",
        debug()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_endpoints_are_a_fallback_only() {
    if !require_privileges("terminating_endpoints_are_a_fallback_only") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab.create_web_service("web", json!({})).await;
    for (name, host) in [("web-1", 11), ("web-2", 12)] {
        let pod = node.add_pod(name, host).await;
        pod.serve_tcp(8080);
        let ip = pod.ip;
        lab.create_pod_with_finalizers(
            name,
            json!({"app": "web"}),
            common::NODE,
            ip,
            http_ports(),
            &["switchyard.test/hold"],
        )
        .await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    eventually("both backends", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;

    // web-1 terminates (still serving): new connections go to web-2 only.
    lab.delete_pod("web-1").await;
    eventually("only web-2 while web-1 drains", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-2"])).then_some(())
    })
    .await;

    // web-2 terminates too: nothing is ready, so both serving-terminating
    // endpoints are used rather than rejecting.
    lab.delete_pod("web-2").await;
    eventually("fallback to both terminating", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_uses_local_endpoints_or_drops() {
    if !require_privileges("internal_traffic_policy_local_uses_local_endpoints_or_drops") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_service(json!({
            "metadata": {"name": "local"},
            "spec": {"selector": {"app": "local"}, "internalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .await;
    let vip = SocketAddr::from((vip, 80));
    // Only a remote endpoint (another node): dropped silently, not rejected.
    lab.create_pod(
        "remote",
        json!({"app": "local"}),
        "node-2",
        "10.244.1.5".parse().expect("ip"),
        http_ports(),
    )
    .await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    proxy.wait_synced(&debug).await;
    eventually("a drop (curl times out)", &debug, || async {
        // 28: operation timed out (a reject would be 7).
        matches!(node.pod("client").curl(vip).await, Err((28, _))).then_some(())
    })
    .await;
    // A local endpoint appears: every connection goes to it.
    let pod = node.add_pod("local-1", 11).await;
    pod.serve_tcp(8080);
    let ip = pod.ip;
    lab.create_pod(
        "local-1",
        json!({"app": "local"}),
        common::NODE,
        ip,
        http_ports(),
    )
    .await;
    let debug = debug_of!(node, proxy);
    eventually("the local endpoint", &debug, || async {
        (node.pod("client").curl(vip).await.ok().as_deref() == Some("local-1")).then_some(())
    })
    .await;
    for _ in 0..8 {
        assert_eq!(
            node.pod("client").curl(vip).await.ok().as_deref(),
            Some("local-1"),
            "{}",
            debug()
        );
    }
}

/// Learned affinity flows of the proxy in SESSION_AFFINITY.
fn learned_flows(node: &Node) -> usize {
    node.ovs
        .ofctl(&["-O", "OpenFlow15", "dump-flows", common::BRIDGE, "table=30"])
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("priority=200"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_sticks_and_expires() {
    if !require_privileges("session_affinity_sticks_and_expires") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_web_service(
            "sticky",
            json!({"sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2}}}),
        )
        .await;
    for (name, host) in [("web-1", 11), ("web-2", 12), ("web-3", 13)] {
        add_backend(&mut node, &lab, name, host).await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    let first = eventually("a first answer", &debug, || async {
        node.pod("client").curl(vip).await.ok()
    })
    .await;
    // Many new connections (new source ports) all stick to the first backend.
    for _ in 0..12 {
        assert_eq!(
            node.pod("client").curl(vip).await.ok().as_deref(),
            Some(first.as_str()),
            "{}",
            debug()
        );
    }
    assert_eq!(learned_flows(&node), 1, "{}", debug());
    // After 2 s without new connections the affinity expires and a new
    // choice is made: eventually another backend answers.
    eventually("another backend after expiry", &debug, || async {
        if learned_flows(&node) != 0 {
            return None;
        }
        let answer = node.pod("client").curl(vip).await.ok()?;
        (answer != first).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hairpin_a_pod_reaches_itself_through_its_service() {
    if !require_privileges("hairpin_a_pod_reaches_itself_through_its_service") {
        return;
    }
    let (node, lab, proxy, vip) = web_setup(&[("web-1", 11)]).await;
    let _ = &lab;
    let debug = debug_of!(node, proxy);
    eventually("web-1 reaching itself", &debug, || async {
        (node.pod("web-1").curl(vip).await.ok().as_deref() == Some("web-1")).then_some(())
    })
    .await;
    // A long-lived hairpin connection carries many exchanges (established path).
    let mut conn = node.pod("web-1").connect(vip).await.expect("connect");
    for _ in 0..5 {
        assert_eq!(conn.ask().await.expect("answer"), "web-1", "{}", debug());
    }
    // Other clients still work alongside.
    assert_eq!(
        node.pod("client").curl(vip).await.ok().as_deref(),
        Some("web-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_port_service_with_named_ports_per_pod() {
    if !require_privileges("multi_port_service_with_named_ports_per_pod") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_service(json!({
            "metadata": {"name": "multi"},
            "spec": {"selector": {"app": "multi"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                               {"name": "admin", "port": 81, "targetPort": 9090}]},
        }))
        .await;
    // The named port "http" resolves to a different number on each pod.
    for (name, host, http) in [("multi-1", 11, 8080), ("multi-2", 12, 8081)] {
        let pod = node.add_pod(name, host).await;
        pod.serve_tcp(http);
        pod.serve_tcp(9090);
        let ip = pod.ip;
        lab.create_pod(
            name,
            json!({"app": "multi"}),
            common::NODE,
            ip,
            json!([{"name": "http", "containerPort": http}, {"name": "admin", "containerPort": 9090}]),
        )
        .await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    for port in [80, 81] {
        let addr = SocketAddr::from((vip, port));
        eventually(&format!("both pods on port {port}"), &debug, || async {
            (node.backends_seen("client", addr, 12).await == set(&["multi-1", "multi-2"]))
                .then_some(())
        })
        .await;
    }
}

/// Service `dns`: UDP port 53 -> 5353 of pods labelled `app: dns`.
async fn dns_service(lab: &Lab) -> SocketAddr {
    let vip = lab
        .create_service(json!({
            "metadata": {"name": "dns"},
            "spec": {"selector": {"app": "dns"},
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]},
        }))
        .await;
    SocketAddr::from((vip, 53))
}

/// A pod answering UDP on 5353 with its name, behind [`dns_service`].
async fn add_dns_backend(node: &mut Node, lab: &Lab, name: &str, host: u8) {
    let pod = node.add_pod(name, host).await;
    pod.serve_udp(5353);
    let ip = pod.ip;
    let udp_ports = json!([{"name": "dns", "containerPort": 5353, "protocol": "UDP"}]);
    lab.create_pod(name, json!({"app": "dns"}), common::NODE, ip, udp_ports)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_follows_a_replaced_backend() {
    if !require_privileges("udp_service_follows_a_replaced_backend") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = dns_service(&lab).await;
    add_dns_backend(&mut node, &lab, "dns-1", 11).await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    // One client socket (one source port, so one conntrack entry) throughout.
    let socket = node.pod("client").udp_socket();
    eventually("dns-1 answering", &debug, || async {
        (common::udp_ask(&socket, vip).await.as_deref() == Some("dns-1")).then_some(())
    })
    .await;

    // The backend is replaced by a pod with another address, rolling-update
    // style: the new one is ready before the old one goes, so the Service
    // always has an endpoint and only the old endpoint's entries are stale.
    add_dns_backend(&mut node, &lab, "dns-2", 12).await;
    let debug = debug_of!(node, proxy);
    eventually("dns-2 in the group", &debug, || async {
        node.dump_groups()
            .contains("10.244.0.12:5353")
            .then_some(())
    })
    .await;
    // The established entry keeps the socket on dns-1.
    assert_eq!(
        common::udp_ask(&socket, vip).await.as_deref(),
        Some("dns-1"),
        "{}",
        debug()
    );
    lab.delete_pod("dns-1").await;
    node.remove_pod("dns-1").await;
    let debug = debug_of!(node, proxy);
    // Asking all along keeps a stale entry alive unless the proxy flushes it.
    eventually("dns-2 answering the same socket", &debug, || async {
        (common::udp_ask(&socket, vip).await.as_deref() == Some("dns-2")).then_some(())
    })
    .await;
}

fn group_ids(node: &Node) -> Vec<String> {
    node.dump_groups()
        .lines()
        .filter_map(|line| {
            line.split(',')
                .find_map(|part| part.trim().strip_prefix("group_id=").map(str::to_owned))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_restart_keeps_connections_and_service() {
    if !require_privileges("proxy_restart_keeps_connections_and_service") {
        return;
    }
    let (node, lab, mut proxy, vip) = web_setup(&[("web-1", 11), ("web-2", 12)]).await;
    let debug = debug_of!(node, proxy);
    eventually("both backends", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;
    let mut conn = node.pod("client").connect(vip).await.expect("connect");
    let backend = conn.ask().await.expect("answer");
    let groups_before = group_ids(&node);

    // Proxy down: flows stay, the connection and new connections work.
    proxy.kill();
    assert_eq!(conn.ask().await.expect("answer while down"), backend);
    assert!(node.pod("client").curl(vip).await.is_ok());

    // Proxy back: it adopts the groups and replaces its flows without a gap.
    let proxy = ProxyProcess::start(&lab, &node, "second", &[]);
    let debug = debug_of!(node, proxy);
    proxy.wait_synced(&debug).await;
    // The web Service's port and the API server's `default/kubernetes` one.
    assert!(proxy.log_text().contains("adopted=2"), "{}", debug());
    assert_eq!(group_ids(&node), groups_before, "{}", debug());
    for _ in 0..5 {
        assert_eq!(conn.ask().await.expect("answer after restart"), backend);
    }
    assert_eq!(
        node.backends_seen("client", vip, 12).await,
        set(&["web-1", "web-2"]),
        "{}",
        debug()
    );
    // Only the new generation's flows remain (one frontend for the VIP).
    let frontends = node.frontend_flows(vip.ip()).len();
    assert_eq!(frontends, 1, "{}", debug());
}

/// How long service takes to come back after ovs-vswitchd restarts: the
/// proxy reconnects (client backoff at most 2 s) and reinstalls everything.
const VSWITCHD_RESTART_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vswitchd_restart_restores_service_within_bound() {
    if !require_privileges("vswitchd_restart_restores_service_within_bound") {
        return;
    }
    let (mut node, lab, proxy, vip) = web_setup(&[("web-1", 11), ("web-2", 12)]).await;
    let _ = &lab;
    let debug = debug_of!(node, proxy);
    eventually("both backends", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;

    node.ovs.kill_vswitchd();
    node.ovs.start_vswitchd().expect("vswitchd restarts");
    let restarted = Instant::now();
    // The agent's part: it reinstalls its flows on reconnect.
    node.install_agent_flows().await;
    let debug = debug_of!(node, proxy);
    eventually("service back", &debug, || async {
        (node.backends_seen("client", vip, 8).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;
    let took = restarted.elapsed();
    eprintln!(
        "service back {took:?} after ovs-vswitchd restarted\n{}",
        proxy
            .log_text()
            .lines()
            .filter(|l| l.contains("OpenFlow")
                || l.contains("full sync")
                || l.contains("connection"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        took < VSWITCHD_RESTART_BOUND,
        "service came back after {took:?}\n{}",
        debug()
    );
    assert!(
        proxy.log_text().contains("OpenFlow reconnected"),
        "{}",
        debug()
    );
}

/// After `ovs-vswitchd` restarts, the agent's flows may be back before the
/// proxy's. A datagram sent to a UDP Service in that gap is committed in the
/// pod zone without DNAT (the agent commits every new connection), and every
/// later datagram of that 5-tuple is established, skips the Service stage and
/// refreshes the broken entry: the flow stays black-holed for as long as the
/// client keeps sending (seen in the lab's e2e restart probe). The proxy
/// flushes such un-NATed entries of its frontends after the full sync that
/// follows a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_that_sent_before_the_proxy_returned_recovers_after_vswitchd_restart() {
    if !require_privileges(
        "udp_flow_that_sent_before_the_proxy_returned_recovers_after_vswitchd_restart",
    ) {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = dns_service(&lab).await;
    add_dns_backend(&mut node, &lab, "dns-1", 11).await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    // One client socket (one source port, so one conntrack entry) throughout.
    let socket = node.pod("client").udp_socket();
    eventually("dns-1 answering", &debug, || async {
        (common::udp_ask(&socket, vip).await.as_deref() == Some("dns-1")).then_some(())
    })
    .await;

    // The proxy is held back while vswitchd restarts and the agent's flows return.
    let paused = proxy.pause();
    node.ovs.kill_vswitchd();
    node.ovs.start_vswitchd().expect("vswitchd restarts");
    node.install_agent_flows().await;
    let debug = debug_of!(node, proxy);
    // The client's next datagram makes an entry to the VIP itself, without NAT.
    let vip_text = format!("dst={},", vip.ip());
    let unnatted = eventually("an un-NATed entry to the VIP", &debug, || async {
        let _ = common::udp_ask(&socket, vip).await;
        node.dump_conntrack()
            .lines()
            .find(|line| {
                line.starts_with("udp,")
                    && line.contains(&vip_text)
                    && line.contains(&format!("reply=(src={},", vip.ip()))
            })
            .map(str::to_owned)
    })
    .await;
    eprintln!("before the proxy returned: {unnatted}");

    drop(paused);
    // The same socket, asking all along, is answered again.
    eventually("dns-1 answering the same socket again", &debug, || async {
        (common::udp_ask(&socket, vip).await.as_deref() == Some("dns-1")).then_some(())
    })
    .await;
    assert!(
        proxy.log_text().contains("OpenFlow reconnected"),
        "{}",
        debug()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_resync_replaces_generations_without_a_gap() {
    if !require_privileges("periodic_resync_replaces_generations_without_a_gap") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab.create_web_service("web", json!({})).await;
    for (name, host) in [("web-1", 11), ("web-2", 12)] {
        add_backend(&mut node, &lab, name, host).await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &["--resync-period", "1"]);
    let debug = debug_of!(node, proxy);
    eventually("service up", &debug, || async {
        node.pod("client").curl(vip).await.ok()
    })
    .await;
    // Every request succeeds while full syncs replace the flows, until the
    // fourth generation is installed.
    let mut requests = 0;
    while !proxy
        .log_text()
        .contains("full sync installed generation=4")
    {
        assert!(
            node.pod("client").curl(vip).await.is_ok(),
            "request {requests} failed during resyncs\n{}",
            debug()
        );
        requests += 1;
        assert!(requests < 400, "no fourth generation\n{}", debug());
    }
    // Only one generation of the proxy's flows is left (learned flows aside).
    let generations: BTreeSet<String> = node
        .dump_flows()
        .lines()
        .filter_map(|line| {
            let cookie = line.trim().strip_prefix("cookie=0x53590")?;
            // owner 2 = proxy, then two hex digits of generation.
            let rest = cookie.strip_prefix('2')?;
            Some(rest[..2].to_owned())
        })
        .collect();
    // (Each full sync is one atomic bundle, so a dump sees exactly one.)
    assert_eq!(generations.len(), 1, "{generations:?}\n{}", debug());
    assert!(
        generations.iter().all(|g| g.as_str() >= "04"),
        "{generations:?}\n{}",
        debug()
    );
}

#[test]
fn help_describes_the_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-proxy"))
        .arg("--help")
        .output()
        .expect("switchyard-proxy runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node-name",
        "--kubeconfig",
        "--ovs-rundir",
        "--bridge",
        "--metrics-address",
        "--resync-period",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_without_endpoints_refuses_at_once() {
    if !require_privileges("udp_service_without_endpoints_refuses_at_once") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = dns_service(&lab).await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    proxy.wait_synced(&debug).await;
    // A connected UDP socket sees the ICMP port unreachable as ECONNREFUSED.
    let socket = common::in_netns(node.pod("client").ns(), move || {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        socket.connect(vip)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .expect("udp socket");
    let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
    // Refused (an ICMP error back), not silence until the 2 s timeout: no wall-clock check.
    socket.send(b"who").await.expect("send");
    let mut buf = [0u8; 64];
    let result = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await;
    match result {
        Ok(Err(err)) => assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{err}\n{}",
            debug()
        ),
        other => panic!("expected connection refused, got {other:?}\n{}", debug()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_moves_when_its_endpoint_goes_away() {
    if !require_privileges("session_affinity_moves_when_its_endpoint_goes_away") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_web_service(
            "sticky",
            json!({"sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
        )
        .await;
    for (name, host) in [("web-1", 11), ("web-2", 12)] {
        add_backend(&mut node, &lab, name, host).await;
    }
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    let pinned = eventually("a first answer", &debug, || async {
        node.pod("client").curl(vip).await.ok()
    })
    .await;
    let other = if pinned == "web-1" { "web-2" } else { "web-1" };
    // The pinned backend goes away: the client is not left pinned to it for
    // the 600 s timeout; its next connections go to the other backend.
    lab.delete_pod(&pinned).await;
    eventually("the other backend", &debug, || async {
        (node.pod("client").curl(vip).await.ok().as_deref() == Some(other)).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            node.pod("client").curl(vip).await.ok().as_deref(),
            Some(other),
            "{}",
            debug()
        );
    }
}
