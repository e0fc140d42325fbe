//! The lab API server with Switchyard's CRDs, and controller replicas as tasks.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use switchyard_api::{IPPool, IPPoolSpec};
use switchyard_controller::leader::Timings;
use switchyard_controller::metrics::Metrics;
use switchyard_controller::{Options, run};
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};

pub const LEASE_NS: &str = "kube-system";

pub async fn lab() -> (ApiServerHandle, Client) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = ApiServer::start(ApiServerOptions::default()).await.unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in switchyard_api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

pub fn timings() -> Timings {
    Timings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(150),
    }
}

/// A replica as a task; aborting it is a crash (the Lease is not released).
pub fn replica(client: &Client, identity: &str) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    replica_with_resync(client, identity, Duration::from_secs(10))
}

/// A replica whose full pass without changes comes every `resync` (a test that a change is
/// served without waiting for it sets it long).
pub fn replica_with_resync(
    client: &Client,
    identity: &str,
    resync: Duration,
) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let opts = Options {
        namespace: LEASE_NS.into(),
        lease_name: "switchyard-controller".into(),
        identity: identity.into(),
        timings: timings(),
        resync,
        route_resync: Duration::from_secs(5),
        cluster: "test".into(),
        namespace_networks: None,
        ipam_namespace: "switchyard-system".into(),
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

pub async fn pool(client: &Client, name: &str, spec: serde_json::Value) {
    let pools: Api<IPPool> = Api::all(client.clone());
    let spec: IPPoolSpec = serde_json::from_value(spec).unwrap();
    pools
        .create(&PostParams::default(), &IPPool::new(name, spec))
        .await
        .unwrap();
}

pub async fn service(client: &Client, name: &str, extra: serde_json::Value) -> Service {
    let mut svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
                 "ports": [{"port": 80, "protocol": "TCP"}]}
    });
    merge(&mut svc, extra);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get(client: &Client, name: &str) -> Option<Service> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.get_opt(name).await.unwrap()
}

pub fn ips(svc: &Service) -> Vec<String> {
    switchyard_controller::service::ingress_ips(svc)
        .iter()
        .map(|i| i.to_string())
        .collect()
}

/// (status, reason) of the AddressAssigned condition.
pub fn assigned(svc: &Service) -> Option<(String, String)> {
    switchyard_controller::service::condition(svc, switchyard_controller::service::COND_ASSIGNED)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
