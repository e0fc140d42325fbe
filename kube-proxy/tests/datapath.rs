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

/// Distinct backends answering `rounds` new connections from `client`.
async fn backends_seen(
    node: &Node,
    client: &str,
    addr: SocketAddr,
    rounds: usize,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..rounds {
        if let Ok(name) = node.pod(client).curl(addr).await {
            seen.insert(name);
        }
    }
    seen
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
    let debug = || format!("{}\n--- proxy log\n{}", node.debug(), proxy.log_text());

    // All three backends answer new connections.
    eventually("all three backends to answer", &debug, || async {
        let seen = backends_seen(&node, "client", vip, 12).await;
        (seen == set(&["web-1", "web-2", "web-3"])).then_some(())
    })
    .await;

    // Scale up: a fourth backend joins.
    add_backend(&mut node, &lab, "web-4", 14).await;
    let debug = || format!("{}\n--- proxy log\n{}", node.debug(), proxy.log_text());
    eventually("web-4 to answer", &debug, || async {
        backends_seen(&node, "client", vip, 8)
            .await
            .contains("web-4")
            .then_some(())
    })
    .await;

    // Readiness flip: web-1 not ready -> gets no new connections.
    lab.set_ready("web-1", false).await;
    eventually("web-1 to leave", &debug, || async {
        let seen = backends_seen(&node, "client", vip, 16).await;
        (seen == set(&["web-2", "web-3", "web-4"])).then_some(())
    })
    .await;
    lab.set_ready("web-1", true).await;
    eventually("web-1 to come back", &debug, || async {
        backends_seen(&node, "client", vip, 8)
            .await
            .contains("web-1")
            .then_some(())
    })
    .await;

    // Scale down: web-2 and web-3 deleted.
    lab.delete_pod("web-2").await;
    lab.delete_pod("web-3").await;
    eventually("only web-1 and web-4", &debug, || async {
        let seen = backends_seen(&node, "client", vip, 12).await;
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
    let debug = || format!("{}\n--- proxy log\n{}", node.debug(), proxy.log_text());
    let _ = &lab;
    // Once the proxy has synced, curl exits with 7 (could not connect:
    // connection refused) at once: no SYN retransmission, no timeout.
    eventually("the proxy to sync", &debug, || async {
        proxy
            .get("/healthz")
            .await
            .is_some_and(|(status, _)| status == 200)
            .then_some(())
    })
    .await;
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
}
