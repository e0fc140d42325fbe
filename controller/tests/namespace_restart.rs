//! Issue 16, test 6 and its figure: a restart of the controller over dedicated namespaces
//! that all have their network writes nothing, and how long its first reconcile takes.
//! Against the lab API server (writes counted there, as in `idle.rs`: every stored change
//! except the Leases of leader election).
//!
//! Printed: the time from the namespaces' creation to one network each, the new leader's
//! time from its start to its first pass done (this includes taking over the crashed
//! leader's Lease: up to its 1 s duration), and that first pass alone (its
//! `namespace_network_pass_seconds`: list Namespaces, Segments, IPPools and the IPAM
//! ConfigMaps, plan, write nothing).
//!
//! CI: 50 namespaces (a few seconds). The 500: `cargo test -p switchyard-controller
//! --test namespace_restart -- --ignored --nocapture` (about 15 s; figures in
//! docs/benchmarks.md).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{LEASE_NS, eventually, lab, timings};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use switchyard_api::{IPPool, IPPoolSpec, Segment};
use switchyard_controller::metrics::Metrics;
use switchyard_controller::namespaces::Config;
use switchyard_controller::{Options, run};
use switchyard_lab::apiserver::ApiServerHandle;
use switchyard_lab::apiserver::store::StoredEvent;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

const IPAM_NS: &str = "switchyard-system";

/// A replica with namespace networks (VLANs 1000-1999, /26s of 10.64.0.0/16: room for
/// 1,000 namespaces) and a 2 s resync, so the idle window sees several periodic passes.
fn replica(client: &Client, identity: &str) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let opts = Options {
        namespace: LEASE_NS.into(),
        lease_name: "switchyard-controller".into(),
        identity: identity.into(),
        timings: timings(),
        resync: Duration::from_secs(2),
        route_resync: Duration::from_secs(5),
        cluster: "test".into(),
        namespace_networks: Some(
            Config::from_flags("label", "1000-1999", "10.64.0.0/16", 26, "trunk0").unwrap(),
        ),
        ipam_namespace: IPAM_NS.into(),
        supervisor: None,
    };
    let task = tokio::spawn(run(
        client.clone(),
        opts,
        metrics.clone(),
        std::future::pending(),
    ));
    (task, metrics)
}

/// The changes received so far, by `resource/name`, Leases left out.
fn drain(events: &mut Receiver<Arc<StoredEvent>>) -> BTreeMap<String, usize> {
    let mut writes = BTreeMap::new();
    loop {
        match events.try_recv() {
            Ok(event) => {
                if event.key.resource != "leases" {
                    *writes
                        .entry(format!("{}/{}", event.key.resource, event.key.name))
                        .or_default() += 1;
                }
            }
            Err(TryRecvError::Lagged(n)) => {
                *writes.entry("(lagged)".into()).or_default() += usize::try_from(n).unwrap();
            }
            Err(_) => break,
        }
    }
    writes
}

/// Waits until a whole second passes without a stored change (Leases aside).
async fn settled(server: &ApiServerHandle) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let mut events = server.store().subscribe();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if drain(&mut events).is_empty() {
            return;
        }
        assert!(Instant::now() < end, "the controller never went idle");
    }
}

/// The sum of the observations of a histogram in the text exposition.
fn histogram_sum(text: &str, name: &str) -> Option<f64> {
    let key = format!("{name}_sum ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

async fn idle_restart_writes_nothing(count: usize) {
    let (server, client) = lab().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    for name in [IPAM_NS, LEASE_NS] {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let _ = nss.create(&PostParams::default(), &ns).await;
    }
    let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
        "cidrs": ["100.64.0.0/22"], "usage": "Egress", "announce": {"mode": "None"}
    }))
    .unwrap();
    Api::<IPPool>::all(client.clone())
        .create(&PostParams::default(), &IPPool::new("egress", spec))
        .await
        .unwrap();
    let (first, _) = replica(&client, "r0");

    let created = Instant::now();
    for i in 0..count {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {
            "name": format!("team-{i}"),
            "labels": {"switchyard.io/network": "dedicated"}
        }}))
        .unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
    }
    let segs: Api<Segment> = Api::all(client.clone());
    eventually(
        Duration::from_secs(600),
        "one network per namespace",
        || async {
            let annotated = nss
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|n| {
                    n.annotations().get("switchyard.io/segment")
                        == Some(&format!("ns-{}", n.name_any()))
                })
                .count();
            let with_status = segs
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|s| s.status.is_some() && s.spec.snat_address.is_some())
                .count();
            (annotated == count && with_status == count).then_some(())
        },
    )
    .await;
    let converged = created.elapsed();
    settled(&server).await;

    // The restart: the leader crashes (its Lease is not released), a new replica starts.
    let mut events = server.store().subscribe();
    first.abort();
    let restarted = Instant::now();
    let (_second, metrics) = replica(&client, "r1");
    eventually(
        Duration::from_secs(120),
        "the new leader's first pass",
        || async { (metrics.ns_passes.get() >= 1).then_some(()) },
    )
    .await;
    let to_first_pass = restarted.elapsed();
    let text = metrics.render();
    let first_pass = histogram_sum(
        &text,
        "switchyard_controller_namespace_network_pass_seconds",
    );
    let counted = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_controller_namespace_network_pass_seconds_count "))
        .unwrap_or("?")
        .trim()
        .to_string();
    // Idle past several resyncs (2 s each).
    tokio::time::sleep(Duration::from_secs(5)).await;
    eventually(Duration::from_secs(120), "three more passes", || async {
        (metrics.ns_passes.get() >= 4).then_some(())
    })
    .await;
    let writes = drain(&mut events);
    println!(
        "namespace networks, {count} dedicated namespaces: one network each {converged:.2?} after creation; restart: new replica to first pass done {to_first_pass:.2?} (includes the Lease takeover), first pass {:.3} s (passes measured: {counted}); writes after the restart: {} (passes {})",
        first_pass.unwrap_or(f64::NAN),
        writes.values().sum::<usize>(),
        metrics.ns_passes.get(),
    );
    assert!(
        writes.is_empty(),
        "the restarted controller wrote: {writes:?}"
    );
    assert_eq!(metrics.ns_writes.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_restart_over_fifty_namespace_networks_writes_nothing() {
    idle_restart_writes_nothing(50).await;
}

/// The 500 namespaces (test 6 and the "restart reconcile < 5 s with 0 writes"
/// figure). `cargo test -p switchyard-controller --test namespace_restart --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the issue's 500 namespaces (about 15 s), see docs/benchmarks.md"]
async fn an_idle_restart_over_five_hundred_namespace_networks_writes_nothing() {
    idle_restart_writes_nothing(500).await;
}
