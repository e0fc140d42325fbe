//! Route mode against the fabric API in process (its kernel an in-memory fake; the real one
//! is in `tests/lab/tests/load_balancer_route.rs`): one route per address with every eligible
//! node as next hop (ETP Local: nodes with a ready endpoint), the route deleted with the
//! Service, an out-of-band edit repaired within 10 s (read-compare-repair every 5 s), 5xx answers
//! retried with backoff and shown in the Service's condition, another loadBalancerClass
//! ignored. Credentials come only from the Secret the RouteTarget names.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use switchyard_lab::fabric_api::in_process::{InProcess, MemoryKernel};

async fn create<K>(api: &Api<K>, v: serde_json::Value)
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap();
}

struct Setup {
    client: Client,
    kernel: MemoryKernel,
    fabric: InProcess,
    _dir: tempfile::TempDir,
    _server: switchyard_lab::apiserver::ApiServerHandle,
}

async fn setup() -> Setup {
    let (server, client) = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let fabric = InProcess::start(dir.path(), "controller").await;
    let kernel = fabric.kernel.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 1..=3 {
        create(
            &nodes,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")}}),
        )
        .await;
        let mut n = nodes.get(&format!("n{i}")).await.unwrap();
        n.status = Some(
            serde_json::from_value(json!({
            "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{i}")}],
            "conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap(),
        );
        nodes
            .replace_status(&format!("n{i}"), &PostParams::default(), &n)
            .await
            .unwrap();
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), LEASE_NS);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("fabric-cred".into()),
            namespace: Some(LEASE_NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            fabric
                .credentials()
                .into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let targets: Api<switchyard_api::RouteTarget> = Api::all(client.clone());
    create(
        &targets,
        json!({"apiVersion": "switchyard.io/v1alpha1", "kind": "RouteTarget",
        "metadata": {"name": "fabric"},
        "spec": {"driver": "lab", "endpoint": format!("https://{}", fabric.api.addr()),
                 "credentialsSecretRef": {"namespace": LEASE_NS, "name": "fabric-cred"}}}),
    )
    .await;
    pool(
        &client,
        "routed",
        json!({"cidrs": ["198.18.0.0/29"],
        "announce": {"mode": "Route", "routeTarget": "fabric"}}),
    )
    .await;
    Setup {
        client,
        kernel,
        fabric,
        _dir: dir,
        _server: server,
    }
}

fn address(svc: &Service) -> Option<String> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

fn announced(svc: &Service) -> Option<(String, String, String)> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "switchyard.io/Announced")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn address_of(client: &Client, name: &str) -> String {
    eventually(
        Duration::from_secs(10),
        &format!("{name} gets an address"),
        || async { get(client, name).await.as_ref().and_then(address) },
    )
    .await
}

async fn route_of(s: &Setup, ip: &str, want: &[&str], what: &str) -> Duration {
    let start = Instant::now();
    eventually(Duration::from_secs(20), what, || async {
        (s.kernel.next_hops(&format!("{ip}/32")).as_deref()
            == Some(&want.iter().map(|w| w.to_string()).collect::<Vec<_>>()[..]))
        .then_some(())
    })
    .await;
    start.elapsed()
}

#[tokio::test]
async fn route_mode_programs_repairs_and_removes_routes() {
    let s = setup().await;
    let c = &s.client;
    let (_r, metrics) = replica(c, "a");

    // ETP Cluster: every node is a next hop; the condition says so.
    service(c, "web", json!({})).await;
    let web = address_of(c, "web").await;
    route_of(
        &s,
        &web,
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "ECMP route over 3 nodes",
    )
    .await;
    let cond = eventually(Duration::from_secs(10), "Announced=True", || async {
        get(c, "web")
            .await
            .as_ref()
            .and_then(announced)
            .filter(|a| a.0 == "True")
    })
    .await;
    assert_eq!(cond.1, "Routed");
    assert!(cond.2.contains("10.0.0.1,10.0.0.2,10.0.0.3"), "{cond:?}");

    // ETP Local: only nodes with a ready endpoint.
    service(
        c,
        "local",
        json!({"spec": {"externalTrafficPolicy": "Local", "selector": null}}),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
    create(&slices, json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-manual", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "n2", "conditions": {"ready": true}},
                      {"addresses": ["10.244.2.5"], "nodeName": "n3", "conditions": {"ready": false}}]})).await;
    let local = address_of(c, "local").await;
    route_of(&s, &local, &["10.0.0.2"], "Local: only n2 (ready endpoint)").await;

    // Out of band: the router's route loses two next hops; repaired by the periodic check.
    s.kernel.set_out_of_band(
        format!("{web}/32").parse().unwrap(),
        vec!["10.0.0.1".parse().unwrap()],
    );
    let took = route_of(
        &s,
        &web,
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "repair of an out-of-band edit",
    )
    .await;
    assert!(took < Duration::from_secs(10), "repaired after {took:?}");
    eprintln!("out-of-band edit repaired after {took:?}");

    // 5xx: retried with backoff, shown in the condition, then programmed.
    let store = s.fabric.api.store().clone();
    store
        .handle("PUT", "/lab/v1/faults", false, false, br#"{"status": 503}"#)
        .await;
    service(c, "web2", json!({})).await;
    let web2 = address_of(c, "web2").await;
    let cond = eventually(
        Duration::from_secs(15),
        "Announced=False with the router error",
        || async {
            get(c, "web2")
                .await
                .as_ref()
                .and_then(announced)
                .filter(|a| a.0 == "False")
        },
    )
    .await;
    assert_eq!(cond.1, "RouterError");
    assert!(
        cond.2.contains("503") && cond.2.contains("retrying in"),
        "{cond:?}"
    );
    eventually(
        Duration::from_secs(15),
        "three 503 answers (retries)",
        || async {
            let (_, log) = store
                .handle("GET", "/lab/v1/requests", false, false, b"")
                .await;
            let n = log
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["status"] == 503)
                .count();
            (n >= 3).then_some(())
        },
    )
    .await;
    store
        .handle("PUT", "/lab/v1/faults", false, false, b"{}")
        .await;
    route_of(
        &s,
        &web2,
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "route after the faults clear",
    )
    .await;
    eventually(Duration::from_secs(15), "Announced=True again", || async {
        get(c, "web2")
            .await
            .as_ref()
            .and_then(announced)
            .filter(|a| a.0 == "True")
    })
    .await;
    let m = metrics.render();
    assert!(m.contains("driver=\"lab\",kind=\"http_5xx\""), "{m}");

    // Another class: left alone.
    service(
        c,
        "other",
        json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
    )
    .await;
    service(c, "after", json!({})).await;
    let after = address_of(c, "after").await;
    route_of(
        &s,
        &after,
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "route of a later Service",
    )
    .await;
    let other = get(c, "other").await.unwrap();
    assert!(
        other.metadata.finalizers.is_none() && address(&other).is_none(),
        "{other:?}"
    );
    assert_eq!(s.kernel.routes().len(), 4, "web, local, web2, after");

    // Deleting the Service removes its route.
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(15), "route of web removed", || async {
        s.kernel
            .next_hops(&format!("{web}/32"))
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        s.kernel.next_hops(&format!("{after}/32")).is_some(),
        "other routes stay"
    );
}

/// A RouteTarget gets the controller's finalizer; deleting it while an IPPool names it keeps
/// it (and its routes, traffic keeps flowing) with the reason in its status; once no pool
/// names it, the controller deletes its routes from the router, then lets it go.
#[tokio::test]
async fn a_route_target_stays_while_a_pool_names_it_and_its_routes_exist() {
    let s = setup().await;
    let c = &s.client;
    let (_r, _metrics) = replica(c, "a");
    let targets: Api<switchyard_api::RouteTarget> = Api::all(c.clone());
    eventually(
        Duration::from_secs(10),
        "the finalizer on the RouteTarget",
        || async {
            targets
                .get("fabric")
                .await
                .unwrap()
                .metadata
                .finalizers
                .filter(|f| f.iter().any(|f| f == "switchyard.io/route-target-cleanup"))
        },
    )
    .await;
    service(c, "web", json!({})).await;
    let web = address_of(c, "web").await;
    route_of(&s, &web, &["10.0.0.1", "10.0.0.2", "10.0.0.3"], "route").await;

    targets
        .delete("fabric", &DeleteParams::default())
        .await
        .unwrap();
    let err = eventually(
        Duration::from_secs(10),
        "the reason in the status",
        || async {
            targets
                .get_opt("fabric")
                .await
                .unwrap()
                .and_then(|t| t.status)
                .and_then(|st| st.last_error)
                .filter(|e| e.contains("being deleted"))
        },
    )
    .await;
    assert!(err.contains("IPPool routed"), "{err}");
    let t = targets.get("fabric").await.unwrap();
    assert!(t.metadata.deletion_timestamp.is_some());
    assert_eq!(
        s.kernel.next_hops(&format!("{web}/32")).map(|h| h.len()),
        Some(3),
        "the route stays while a pool names the target"
    );

    // The pool no longer routes through it: the route goes, then the RouteTarget.
    let pools: Api<switchyard_api::IPPool> = Api::all(c.clone());
    let mut p = pools.get("routed").await.unwrap();
    p.spec.announce.mode = switchyard_api::AnnounceMode::None;
    p.spec.announce.route_target = None;
    pools
        .replace("routed", &PostParams::default(), &p)
        .await
        .unwrap();
    eventually(Duration::from_secs(15), "the RouteTarget gone", || async {
        targets
            .get_opt("fabric")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        s.kernel.next_hops(&format!("{web}/32")).is_none(),
        "its route was deleted before it went"
    );
    assert_eq!(
        ips(&get(c, "web").await.unwrap()),
        [web],
        "the Service keeps its address"
    );
}
