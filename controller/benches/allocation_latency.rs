//! How long a LoadBalancer Service waits for its address: from the create request to its
//! `status.loadBalancer.ingress` seen by a watch, with `existing` Services already served
//! (issue 14's figure: p99 < 200 ms at 1,000 Services), against the lab API server.
//!
//! Side by side, in the same run and process:
//! - `controller`: one `switchyard-controller` replica (leader) serving the Service;
//! - `api floor`: no controller; the bench itself writes the status right after the create,
//!   as a controller that needed no finalizer, no decision and no Event would. The ratio says
//!   what the controller adds over the API round trips it cannot avoid.
//!
//! Also the burst: `existing` Services created 16 at a time, until the last one is served.
//! The controller samples twice: right after the burst (while the controller may still write
//! the burst's Events), then once it has written an `AddressAssigned` Event for every Service
//! served so far (`settled`).
//!
//! `cargo bench -p switchyard-controller --bench allocation_latency [-- EXISTING SAMPLES]`
//! (defaults 1000 and 100).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;
use tokio::sync::mpsc;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let existing = args.first().copied().unwrap_or(1000);
    let samples = args.get(1).copied().unwrap_or(100);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(existing, samples));
}

/// Names as they first show an ingress address, with when.
type Served = mpsc::UnboundedReceiver<(String, Instant)>;

fn watch_served(client: &kube::Client) -> Served {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(Mutex::new(HashMap::<String, ()>::new()));
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            let services = match event {
                Event::Apply(s) | Event::InitApply(s) => vec![s],
                _ => continue,
            };
            for svc in services {
                if common::ips(&svc).is_empty() {
                    continue;
                }
                let name = svc.metadata.name.clone().unwrap_or_default();
                if seen.lock().unwrap().insert(name.clone(), ()).is_none() {
                    let _ = tx.send((name, Instant::now()));
                }
            }
        }
    });
    rx
}

async fn wait_for(served: &mut Served, name: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, served.recv()).await {
            Ok(Some((n, at))) if n == name => return at,
            Ok(Some(_)) => {}
            _ => panic!("{name} got no address within 60 s"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Creates `existing` Services 16 at a time; returns when the last one has an address.
async fn burst(client: &kube::Client, served: &mut Served, prefix: &str, n: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let name = format!("{prefix}{i}");
            async move { common::service(&client, &name, json!({})).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut left = n;
    while left > 0 {
        match tokio::time::timeout(Duration::from_secs(600), served.recv()).await {
            Ok(Some((name, _))) if name.starts_with(prefix) => left -= 1,
            Ok(Some(_)) => {}
            _ => panic!("burst: {left} of {n} Services got no address within 600 s"),
        }
    }
    started.elapsed()
}

/// Latency of `samples` creates, one at a time; `write_status` makes the bench write the
/// status itself (the API floor).
async fn one_at_a_time(
    client: &kube::Client,
    served: &mut Served,
    prefix: &str,
    samples: usize,
    write_status: bool,
) -> Vec<Duration> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("{prefix}{i}");
        let t0 = Instant::now();
        let mut svc = common::service(client, &name, json!({})).await;
        if write_status {
            svc.status = Some(
                serde_json::from_value(
                    json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}),
                )
                .unwrap(),
            );
            api.replace_status(&name, &PostParams::default(), &svc)
                .await
                .expect("status written");
        }
        let at = wait_for(served, &name).await;
        if at - t0 > Duration::from_millis(500) {
            println!(
                "slow: {name} served after {:?} (created at {})",
                at - t0,
                k8s_openapi::jiff::Timestamp::now()
            );
        }
        out.push(at - t0);
    }
    out.sort();
    out
}

fn report(label: &str, sorted: &[Duration]) -> (f64, f64) {
    let (p50, p99) = (percentile(sorted, 0.5), percentile(sorted, 0.99));
    println!(
        "{label:<12} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} samples)",
        ms(p50),
        ms(p99),
        ms(*sorted.last().unwrap()),
        sorted.len()
    );
    (ms(p50), ms(p99))
}

async fn run(existing: usize, samples: usize) {
    println!("allocation latency: {existing} Services served, {samples} created one at a time");
    // The API floor: no controller at all.
    let (_floor_server, floor_client) = common::lab().await;
    let mut floor_served = watch_served(&floor_client);
    let floor = one_at_a_time(&floor_client, &mut floor_served, "f", samples, true).await;

    let (_server, client) = common::lab().await;
    common::pool(&client, "big", json!({"cidrs": ["10.128.0.0/21"]})).await;
    let (_replica, _metrics) = common::replica(&client, "bench");
    let mut served = watch_served(&client);
    let took = burst(&client, &mut served, "s", existing).await;
    println!(
        "burst: {existing} Services created 16 at a time, all served after {:.1} s ({:.1} ms per Service)",
        took.as_secs_f64(),
        ms(took) / existing as f64
    );
    let controller = one_at_a_time(&client, &mut served, "n", samples, false).await;
    let settle = Instant::now();
    settled(&client, existing + samples).await;
    println!(
        "settled: {} AddressAssigned Events written {:.1} s after the last sample",
        existing + samples,
        settle.elapsed().as_secs_f64()
    );
    let after = one_at_a_time(&client, &mut served, "m", samples, false).await;
    let (f50, f99) = report("api floor", &floor);
    let (c50, c99) = report("controller", &controller);
    let (s50, s99) = report("settled", &after);
    println!(
        "ratio controller/api floor: p50 {:.2}x  p99 {:.2}x; settled: p50 {:.2}x  p99 {:.2}x   (goal: p99 < 200 ms)",
        c50 / f50,
        c99 / f99,
        s50 / f50,
        s99 / f99
    );
}

/// Waits until the controller has written `n` `AddressAssigned` Events.
async fn settled(client: &kube::Client, n: usize) {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = events.list(&Default::default()).await.expect("Events");
        let assigned = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("AddressAssigned"))
            .count();
        if assigned >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {assigned} of {n} AddressAssigned Events after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
