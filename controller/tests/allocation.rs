//! The controller against the lab API server: real kube-rs client, real Lease, CRDs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use switchyard_api::{IPPool, LB_FINALIZER};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn one_address_pool_two_services_and_another_class_is_ignored() {
    let (server, client) = lab().await;
    pool(&client, "one", json!({"cidrs": ["192.0.2.10/32"]})).await;
    // Created first, so every pass that serves the others has seen it.
    service(
        &client,
        "other-class",
        json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
    )
    .await;
    let (_r, metrics) = replica(&client, "r1");
    service(&client, "first", json!({})).await;
    let first = eventually(WAIT, "first to get the address", || async {
        get(&client, "first")
            .await
            .filter(|s| ips(s) == ["192.0.2.10"])
    })
    .await;
    assert!(
        first
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&LB_FINALIZER.to_string())
    );
    assert_eq!(assigned(&first), Some(("True".into(), "Assigned".into())));
    service(&client, "second", json!({})).await;
    let second = eventually(WAIT, "second to be pending", || async {
        get(&client, "second")
            .await
            .filter(|s| assigned(s).is_some())
    })
    .await;
    assert_eq!(
        assigned(&second),
        Some(("False".into(), "PoolExhausted".into()))
    );
    assert!(ips(&second).is_empty());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(WAIT, "a PoolExhausted Event", || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PoolExhausted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second")
            })
            .then_some(())
    })
    .await;
    let other = get(&client, "other-class").await.unwrap();
    assert!(
        other.metadata.finalizers.is_none() && ips(&other).is_empty() && assigned(&other).is_none()
    );
    // Pool status counts.
    let pools: Api<IPPool> = Api::all(client.clone());
    eventually(WAIT, "pool status 1 used 0 free", || async {
        let p = pools.get("one").await.unwrap();
        p.status.filter(|s| s.used == 1 && s.free == 0)
    })
    .await;
    // Deleting the first gives the second its address.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "first gone (finalizer removed)", || async {
        get(&client, "first").await.is_none().then_some(())
    })
    .await;
    let second = eventually(WAIT, "second to get the freed address", || async {
        get(&client, "second")
            .await
            .filter(|s| ips(s) == ["192.0.2.10"])
    })
    .await;
    assert_eq!(assigned(&second), Some(("True".into(), "Assigned".into())));
    assert!(
        metrics
            .render()
            .contains("switchyard_controller_allocations_total 2"),
        "{}",
        metrics.render()
    );
    // Type change away from LoadBalancer releases and drops the finalizer.
    let mut s2 = second.clone();
    s2.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    services
        .replace("second", &Default::default(), &s2)
        .await
        .unwrap();
    eventually(WAIT, "second released", || async {
        get(&client, "second").await.filter(|s| {
            ips(s).is_empty() && s.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())
        })
    })
    .await;
    server.shutdown().await;
}

/// An address freed by a Service that is newer than a pending one (here: it asks for an
/// address outside every pool instead of the one it shared) goes to the pending one at once,
/// not at the next resync (the pass served the older Service before the newer one let go).
#[tokio::test]
async fn an_address_let_go_by_a_newer_service_goes_to_an_older_pending_one() {
    let (server, client) = lab().await;
    pool(&client, "one", json!({"cidrs": ["192.0.2.10/32"]})).await;
    // No full pass without a change during the test: only the changes serve.
    let (_r, _metrics) = replica_with_resync(&client, "r1", Duration::from_secs(600));
    let shared = |port: i32| {
        json!({"metadata": {"annotations": {"switchyard.io/allow-shared-ip": "k"}},
               "spec": {"ports": [{"port": port, "protocol": "TCP"}]}})
    };
    service(&client, "first", shared(80)).await;
    eventually(WAIT, "first to get the address", || async {
        get(&client, "first")
            .await
            .filter(|s| ips(s) == ["192.0.2.10"])
    })
    .await;
    service(&client, "older", json!({})).await;
    eventually(WAIT, "older to be pending", || async {
        get(&client, "older")
            .await
            .filter(|s| assigned(s) == Some(("False".into(), "PoolExhausted".into())))
    })
    .await;
    service(&client, "newer", shared(443)).await;
    eventually(WAIT, "newer to share the address", || async {
        get(&client, "newer")
            .await
            .filter(|s| ips(s) == ["192.0.2.10"])
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "first gone", || async {
        get(&client, "first").await.is_none().then_some(())
    })
    .await;
    let older = get(&client, "older").await.unwrap();
    assert!(ips(&older).is_empty(), "newer still holds the address");
    // The newer Service asks for an address in no pool: it lets the shared one go.
    let mut newer = get(&client, "newer").await.unwrap();
    newer
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "switchyard.io/load-balancer-ips".into(),
            "198.51.100.1".into(),
        );
    services
        .replace("newer", &Default::default(), &newer)
        .await
        .unwrap();
    let older = eventually(WAIT, "older to get the freed address", || async {
        get(&client, "older")
            .await
            .filter(|s| ips(s) == ["192.0.2.10"])
    })
    .await;
    assert_eq!(assigned(&older), Some(("True".into(), "Assigned".into())));
    let newer = get(&client, "newer").await.unwrap();
    assert_eq!(
        assigned(&newer),
        Some(("False".into(), "AddressNotInPool".into()))
    );
    assert!(ips(&newer).is_empty());
    server.shutdown().await;
}

/// Tiny deterministic random numbers (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

async fn snapshot(client: &kube::Client) -> BTreeMap<String, Vec<String>> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), ips(s)))
        .collect()
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NS);
    leases
        .get_opt("switchyard-controller")
        .await
        .unwrap()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn killing_the_leader_twenty_times_reassigns_and_duplicates_nothing() {
    let (server, client) = lab().await;
    pool(&client, "eight", json!({"ranges": ["192.0.2.1-192.0.2.8"]})).await;
    let mut replicas = BTreeMap::new();
    for id in ["r0", "r1"] {
        replicas.insert(id.to_string(), replica(&client, id).0);
    }
    for i in 0..8 {
        service(&client, &format!("s{i}"), json!({})).await;
    }
    let full = eventually(WAIT, "8 Services assigned", || async {
        let snap = snapshot(&client).await;
        (snap.values().filter(|v| !v.is_empty()).count() == 8).then_some(snap)
    })
    .await;
    service(&client, "p0", json!({})).await;
    service(&client, "p1", json!({})).await;
    service(
        &client,
        "p2",
        json!({"metadata": {"annotations": {"switchyard.io/load-balancer-ips": "192.0.2.3"}}}),
    )
    .await;
    for p in ["p0", "p1", "p2"] {
        let svc = eventually(WAIT, "pending condition", || async {
            get(&client, p).await.filter(|s| assigned(s).is_some())
        })
        .await;
        let want = if p == "p2" {
            "AddressTaken"
        } else {
            "PoolExhausted"
        };
        assert_eq!(assigned(&svc), Some(("False".into(), want.into())), "{p}");
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut takeovers = 0;
    for round in 0..20 {
        let t0 = std::time::Instant::now();
        let leader = eventually(WAIT, "a leader", || holder(&client)).await;
        // A random moment within a pass, a renewal, or between them.
        tokio::time::sleep(Duration::from_millis(rng.next(600))).await;
        if let Some(task) = replicas.remove(&leader) {
            task.abort();
        }
        let id = format!("r{}", round + 2);
        replicas.insert(id.clone(), replica(&client, &id).0);
        // A Service created now must be served by whoever takes over.
        let name = format!("n{round}");
        service(&client, &name, json!({})).await;
        let new_leader = eventually(WAIT, "a new leader", || async {
            holder(&client).await.filter(|h| h != &leader)
        })
        .await;
        assert!(replicas.contains_key(&new_leader));
        let took_over = t0.elapsed();
        takeovers += 1;
        eventually(
            WAIT,
            "the new Service marked pending by the new leader",
            || async { get(&client, &name).await.filter(|s| assigned(s).is_some()) },
        )
        .await;
        println!(
            "round {round}: {leader} killed, {new_leader} leads after {took_over:?}, serving after {:?}",
            t0.elapsed()
        );
        let snap = snapshot(&client).await;
        for (svc, before) in &full {
            assert_eq!(&snap[svc], before, "round {round}: {svc} changed address");
        }
        for p in ["p0", "p1", "p2"] {
            assert!(snap[p].is_empty(), "round {round}: {p} got an address");
        }
    }
    assert_eq!(takeovers, 20);
    // Still serving, and no duplicates: free one address, exactly one pending Service gets it.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .delete("s2", &DeleteParams::default())
        .await
        .unwrap();
    let snap = eventually(WAIT, "a pending Service to get s2's address", || async {
        let snap = snapshot(&client).await;
        snap.values()
            .any(|v| v == &full["s2"])
            .then_some(snap)
            .filter(|s| !s.contains_key("s2"))
    })
    .await;
    let mut seen = BTreeMap::new();
    for (svc, v) in &snap {
        for ip in v {
            assert!(
                seen.insert(ip.clone(), svc.clone()).is_none(),
                "{ip} held twice: {snap:?}"
            );
        }
    }
    for task in replicas.values() {
        task.abort();
    }
    server.shutdown().await;
}
