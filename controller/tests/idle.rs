//! An idle controller writes nothing: with every LoadBalancer Service served, its periodic
//! passes (resync, route repair) and a leader change leave the API server's objects alone
//! (issue 14, test 9). Writes are counted at the lab API server: every stored change except
//! the Leases of leader election.
//!
//! The CI subset runs 100 Services for 12 s (past the 10 s resync); the 1,000 Services
//! for 60 s: `cargo test -p switchyard-controller --test idle -- --ignored`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchyard_lab::apiserver::ApiServerHandle;
use switchyard_lab::apiserver::store::StoredEvent;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_hundred_idle_services_get_no_writes() {
    idle_services_get_no_writes(100, Duration::from_secs(12)).await;
}

// Two worker threads: on one, the lab API server, both replicas and the test share a thread,
// and past about 500 Services (debug build) each write waited long enough for the Lease to
// flap, so the Services were never all assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the issue's 1,000 Services for 60 s; about 90 s"]
async fn a_thousand_idle_services_for_a_minute_get_no_writes() {
    idle_services_get_no_writes(1000, Duration::from_secs(60)).await;
}

async fn idle_services_get_no_writes(services: usize, idle: Duration) {
    let (server, client) = lab().await;
    pool(&client, "big", json!({"cidrs": ["10.200.0.0/21"]})).await;
    let replicas = [
        ("r0", replica(&client, "r0").0),
        ("r1", replica(&client, "r1").0),
    ];
    for i in 0..services {
        service(&client, &format!("s{i}"), json!({})).await;
    }
    let started = Instant::now();
    eventually(WAIT, "every Service assigned", || async {
        let list: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client.clone(), "default");
        let list = list.list(&Default::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|s| !ips(s).is_empty() && assigned(s).is_some())
            .count();
        // The pass that assigned the last one ends by writing the pool's status.
        let pools: kube::Api<switchyard_api::IPPool> = kube::Api::all(client.clone());
        let used = pools.get("big").await.ok()?.status.map_or(0, |s| s.used);
        (done == services && used == i64::try_from(services).unwrap()).then_some(())
    })
    .await;
    println!("{services} Services assigned after {:?}", started.elapsed());

    // Idle: nothing but Lease renewals for `idle`.
    let writes = writes_during(&server, idle).await;
    assert!(
        writes.is_empty(),
        "an idle controller wrote {} times in {idle:?}: {writes:?}",
        writes.values().sum::<usize>()
    );

    // A leader change: the new leader rebuilds from the Services' status and writes nothing.
    let leader = eventually(WAIT, "a leader", || lease_holder(&client)).await;
    let mut events = server.store().subscribe();
    for (id, task) in &replicas {
        if *id == leader {
            task.abort();
        }
    }
    eventually(WAIT, "the other replica to take over", || async {
        lease_holder(&client).await.filter(|h| *h != leader)
    })
    .await;
    // Past the new leader's first pass and resync.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after_takeover = drain(&mut events);
    assert!(
        after_takeover.is_empty(),
        "the new leader wrote: {after_takeover:?}"
    );
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), LEASE_NS);
    leases
        .get_opt("switchyard-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Changes stored during `window`, by `resource/name`, Leases left out.
async fn writes_during(server: &ApiServerHandle, window: Duration) -> BTreeMap<String, usize> {
    let mut events = server.store().subscribe();
    tokio::time::sleep(window).await;
    drain(&mut events)
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
