//! kube-proxy's node health URLs and a LoadBalancer Service's
//! `healthCheckNodePort`, served by the real `switchyard-proxy` binary
//! watching the lab API server, on a real OVS node (a sync must succeed for
//! the proxy to be healthy).
//!
//! Needs root and Open vSwitch; fails (does not skip) without them unless
//! `SWITCHYARD_SKIP_PRIVILEGED=1`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Lab, Node, ProxyProcess, eventually};
use serde_json::{Value, json};
use switchyard_ovs_harness::require_privileges;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How fast the health check must follow an EndpointSlice change.
const FLIP_BOUND: Duration = Duration::from_secs(1);

/// `GET path` over HTTP/1.0: (status, body), or `None` when nothing answers.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A port of the node port range free on all addresses right now (tests run
/// in parallel: start somewhere that depends on the process).
fn free_node_port() -> u16 {
    let start = 30_000 + (std::process::id() % 2_000) as u16;
    (start..=32_767)
        .chain(30_000..start)
        .find(|port| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port)).is_ok())
        .expect("a free port in 30000-32767")
}

/// Polls the health check until `want` (status, localEndpoints); returns how
/// long it took, failing after [`common::DEADLINE`].
async fn wait_health(addr: SocketAddr, want: (u16, u64), debug: &impl Fn() -> String) -> Duration {
    let started = Instant::now();
    eventually(&format!("health check {want:?}"), debug, || async {
        let (status, body) = http_get(addr, "/").await?;
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(
            body["service"],
            json!({"namespace": "default", "name": "web"})
        );
        assert_eq!(body["serviceProxyHealthy"], true);
        (status == want.0 && body["localEndpoints"] == want.1).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_health_urls_and_health_check_node_port_follow_local_endpoints() {
    if !require_privileges("node_health_urls_and_health_check_node_port_follow_local_endpoints") {
        return;
    }
    let node = Node::start().await;
    let lab = Lab::start().await;
    // The fixture passes `--healthz-bind-address 127.0.0.1:<free port>`.
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let healthz = proxy.healthz;
    let debug = || format!("{}\n--- proxy log\n{}", node.debug(), proxy.log_text());

    // kube-proxy's URLs, as the upstream e2e "should check kube-proxy urls" asks.
    let body = eventually("/healthz 200", &debug, || async {
        http_get(healthz, "/healthz")
            .await
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    })
    .await;
    let body: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert!(
        body["lastUpdated"]
            .as_str()
            .is_some_and(|t| t.ends_with(" +0000 UTC")),
        "{body}"
    );
    assert_eq!(body["lastUpdated"], body["currentTime"], "{body}");
    let (status, body) = http_get(healthz, "/livez").await.expect("/livez");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"currentTime\""), "{body}");
    assert_eq!(http_get(healthz, "/nothing").await.map(|r| r.0), Some(404));
    assert_eq!(
        proxy.get("/proxyMode").await,
        Some((200, "switchyard".to_owned()))
    );

    // A LoadBalancer Service with externalTrafficPolicy Local: one ready
    // endpoint here, one on another node (which does not count).
    let port = free_node_port();
    let check = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let web = json!({"app": "web"});
    let http = json!([{"name": "http", "containerPort": 8080}]);
    lab.create_pod_with_finalizers(
        "web-1",
        web.clone(),
        common::NODE,
        Ipv4Addr::new(10, 244, 0, 11),
        http.clone(),
        &["test/hold"],
    )
    .await;
    lab.create_pod(
        "web-far",
        web.clone(),
        "node-2",
        Ipv4Addr::new(10, 244, 1, 11),
        http,
    )
    .await;
    lab.create_service(json!({
        "metadata": {"name": "web"},
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": port,
            "selector": web,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }))
    .await;
    wait_health(check, (200, 1), &debug).await;

    // Not ready: 503 within the bound; ready again: 200.
    lab.set_ready("web-1", false).await;
    let took = wait_health(check, (503, 0), &debug).await;
    assert!(took < FLIP_BOUND, "503 after {took:?}\n{}", debug());
    eprintln!("not ready -> 503 in {took:?}");
    lab.set_ready("web-1", true).await;
    let took = wait_health(check, (200, 1), &debug).await;
    assert!(took < FLIP_BOUND, "200 after {took:?}\n{}", debug());
    eprintln!("ready -> 200 in {took:?}");

    // Deleted but held by its finalizer: only a terminating (still serving)
    // endpoint is left here, and that is 503.
    lab.delete_pod("web-1").await;
    let took = wait_health(check, (503, 0), &debug).await;
    assert!(took < FLIP_BOUND, "503 after {took:?}\n{}", debug());
    eprintln!("terminating only -> 503 in {took:?}");
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(lab.client.clone(), "default");
    let listed = slices
        .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("list slices");
    let terminating: Vec<_> = listed
        .items
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.node_name.as_deref() == Some(common::NODE))
        .map(|e| {
            (
                e.addresses.clone(),
                e.conditions.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(terminating.len(), 1, "{terminating:?}");
    let conditions = &terminating[0].1;
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(false), Some(true), Some(true)),
        "the local endpoint is terminating and still serving: {terminating:?}"
    );

    // The Service gone: the port closes.
    lab.services()
        .delete("web", &Default::default())
        .await
        .expect("delete service");
    eventually("the health check port to close", &debug, || async {
        tokio::net::TcpStream::connect(check)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // The proxy's own health is unaffected.
    assert_eq!(http_get(healthz, "/healthz").await.map(|r| r.0), Some(200));
}
