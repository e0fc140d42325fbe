//! Supervisor mode against two real lab API servers: a guest cluster whose controller runs
//! with `--provider supervisor`, and a supervisor cluster, behind a TLS front (the lab's
//! apiserver relay with a fresh CA), whose own controller gives addresses from an IPPool.
//! The guest controller reads the supervisor kubeconfig only from a Secret.
//!
//! The packet path (internet -> supervisor node -> guest node port -> guest pod) is in
//! `tests/lab/tests/load_balancer_supervisor.rs` (root).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_controller::metrics::Metrics;
use switchyard_controller::supervisor::plan::{self, LABEL_GUEST_NAME, LABEL_GUEST_UID};
use switchyard_controller::{Options, run, supervisor};
use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
use switchyard_lab::relay::{Relay, RelayConfig};

const SUP_NS: &str = "guests";
const CLUSTER: &str = "guest1";
const DEADLINE: Duration = Duration::from_secs(15);

fn b64(bytes: &[u8]) -> String {
    serde_json::to_value(ByteString(bytes.to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn kubeconfig(server: &str, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: sup\ncontexts:\n- name: sup\n  context: {{cluster: sup, user: guest1, namespace: {SUP_NS}}}\nclusters:\n- name: sup\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: guest1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
}

async fn secret(client: &Client, name: &str, kubeconfig: String) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), LEASE_NS);
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(LEASE_NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &s).await.unwrap();
}

/// A guest controller replica in supervisor mode (a task; aborting it is a crash).
fn guest_replica(
    client: &Client,
    identity: &str,
    secret: &str,
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
        cluster: CLUSTER.into(),
        namespace_networks: None,
        ipam_namespace: "switchyard-system".into(),
        supervisor: Some(supervisor::Config {
            secret: secret.into(),
            namespace: None,
        }),
    };
    let task = tokio::spawn(run(
        client.clone(),
        opts,
        metrics.clone(),
        std::future::pending(),
    ));
    (task, metrics)
}

async fn node(client: &Client, name: &str, ip: &str, ready: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await.unwrap().is_none() {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name}}))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let mut n = nodes.get(name).await.unwrap();
    n.status = Some(
        serde_json::from_value(json!({
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": ready}]}))
        .unwrap(),
    );
    nodes
        .replace_status(name, &PostParams::default(), &n)
        .await
        .unwrap();
}

fn condition(svc: &Service) -> Option<(String, String, String)> {
    switchyard_controller::service::condition(svc, switchyard_controller::service::COND_ASSIGNED)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn sup_service(sup: &Client, guest: &str) -> Option<Service> {
    let api: Api<Service> = Api::namespaced(sup.clone(), SUP_NS);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| s.labels().get(LABEL_GUEST_NAME).map(String::as_str) == Some(guest))
}

async fn sup_slice(sup: &Client, name: &str) -> Option<EndpointSlice> {
    Api::<EndpointSlice>::namespaced(sup.clone(), SUP_NS)
        .get_opt(name)
        .await
        .unwrap()
}

fn endpoint_ips(slice: &EndpointSlice) -> Vec<String> {
    let mut v: Vec<String> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    v.sort();
    v
}

async fn untagged(sup: &Client, name: &str, labels: serde_json::Value) {
    let api: Api<Service> = Api::namespaced(sup.clone(), SUP_NS);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": SUP_NS, "labels": labels},
            "spec": {"type": "ClusterIP", "ports": [{"port": 1}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
}

/// 1. A wrong CA in the kubeconfig: the guest Service waits with `SupervisorUnavailable`
///    (TLS is verified; nothing is written to the supervisor).
/// 2. The right Secret: the supervisor gets a selector-less LoadBalancer Service labelled with
///    the guest's cluster/namespace/name/uid and an EndpointSlice of the guest's Ready node
///    addresses and node port; the supervisor's controller assigns it an address from its
///    pool and the guest Service gets that address, a True condition and the finalizer.
/// 3. A node going NotReady leaves the slice (watch-driven: the resync is 60 s).
/// 4. The supervisor's pool is full: the second guest Service waits with the supervisor's
///    reason. Deleting the first deletes its supervisor objects, then the guest Service
///    (finalizer), and the second gets the freed address.
/// 5. Restart: a tagged supervisor Service of a guest UID that no longer exists is deleted;
///    untagged objects and another cluster's are not; an untagged object with the name a
///    guest Service needs is left alone and reported `NotOwned`; the address held stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_mode_between_two_lab_api_servers() {
    // The supervisor: a lab API server behind TLS, its own controller in pool mode.
    let (sup_server, sup_plain) = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = switchyard_lab::fabric_api::pki::generate(
        &dir.path().join("sup"),
        &["127.0.0.1".parse().unwrap()],
        &["localhost"],
        CLUSTER,
    )
    .unwrap();
    let relay = Relay::start(&RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: sup_server.addr(),
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    })
    .await
    .unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let good = kubeconfig(
        &format!("https://127.0.0.1:{}", relay.addr().port()),
        &read(&pki.ca),
        &read(&pki.client_cert),
        &read(&pki.client_key),
    );
    let other = switchyard_lab::fabric_api::pki::generate(
        &dir.path().join("other"),
        &["127.0.0.1".parse().unwrap()],
        &[],
        CLUSTER,
    )
    .unwrap();
    let wrong_ca = kubeconfig(
        &format!("https://127.0.0.1:{}", relay.addr().port()),
        &read(&other.ca),
        &read(&pki.client_cert),
        &read(&pki.client_key),
    );
    Api::<Namespace>::all(sup_plain.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SUP_NS}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    pool(
        &sup_plain,
        "supervisor",
        json!({"ranges": ["198.18.0.10-198.18.0.10"], "announce": {"mode": "None"}}),
    )
    .await;
    let (_sup_ctl, _) = replica(&sup_plain, "sup-1");

    // The guest: 3 nodes, the Secrets.
    let guest_server = ApiServer::start(ApiServerOptions::default()).await.unwrap();
    let guest = Client::try_from(kube::Config::new(guest_server.url().parse().unwrap())).unwrap();
    for i in 1..=3 {
        node(&guest, &format!("n{i}"), &format!("10.0.0.{i}"), "True").await;
    }
    secret(&guest, "supervisor", good).await;
    secret(&guest, "supervisor-wrong-ca", wrong_ca).await;

    // 1. Wrong CA.
    let (bad, _) = guest_replica(
        &guest,
        "guest-bad",
        "supervisor-wrong-ca",
        Duration::from_secs(60),
    );
    service(&guest, "web", json!({})).await;
    let c = eventually(DEADLINE, "web waits: supervisor unavailable", || async {
        get(&guest, "web")
            .await
            .as_ref()
            .and_then(condition)
            .filter(|c| c.1 == "SupervisorUnavailable")
    })
    .await;
    assert!(
        c.2.to_lowercase().contains("certificate") || c.2.contains("tls"),
        "the TLS failure is named: {c:?}"
    );
    assert!(sup_service(&sup_plain, "web").await.is_none());
    bad.abort();

    // 2. The right Secret.
    let (guest_ctl, metrics) =
        guest_replica(&guest, "guest-1", "supervisor", Duration::from_secs(60));
    let web = eventually(DEADLINE, "web gets the supervisor's address", || async {
        get(&guest, "web")
            .await
            .filter(|s| ips(s) == ["198.18.0.10"])
    })
    .await;
    let c = condition(&web).unwrap();
    assert_eq!((c.0.as_str(), c.1.as_str()), ("True", "Assigned"), "{c:?}");
    assert!(
        web.finalizers()
            .iter()
            .any(|f| f == "service.kubernetes.io/load-balancer-cleanup")
    );
    let node_port = web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .unwrap();
    let sup = sup_service(&sup_plain, "web").await.unwrap();
    let labels = sup.labels();
    assert_eq!(labels["switchyard.io/cluster"], CLUSTER);
    assert_eq!(labels["switchyard.io/guest-namespace"], "default");
    assert_eq!(labels[LABEL_GUEST_UID], web.uid().unwrap());
    let spec = sup.spec.as_ref().unwrap();
    assert!(spec.selector.is_none(), "selector-less");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (
            80,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(node_port))
        )
    );
    let sup_name = sup.name_any();
    assert_eq!(sup_name, plan::object_name(CLUSTER, "default", "web"));
    let slice = sup_slice(&sup_plain, &sup_name).await.unwrap();
    assert_eq!(endpoint_ips(&slice), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(node_port));

    // 3. A guest node NotReady: out of the slice (by the watches; the resync is 60 s).
    node(&guest, "n3", "10.0.0.3", "False").await;
    eventually(DEADLINE, "n3 leaves the slice", || async {
        sup_slice(&sup_plain, &sup_name)
            .await
            .filter(|s| endpoint_ips(s) == ["10.0.0.1", "10.0.0.2"])
    })
    .await;

    // 4. The supervisor's pool is full; deleting web frees it.
    service(&guest, "api", json!({})).await;
    let c = eventually(
        DEADLINE,
        "api waits with the supervisor's reason",
        || async {
            get(&guest, "api")
                .await
                .as_ref()
                .and_then(condition)
                .filter(|c| c.1 == "SupervisorPending" && c.2.contains("PoolExhausted"))
        },
    )
    .await;
    assert_eq!(c.0, "False");
    Api::<Service>::namespaced(guest.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(DEADLINE, "web's supervisor objects deleted", || async {
        (sup_service(&sup_plain, "web").await.is_none()
            && sup_slice(&sup_plain, &sup_name).await.is_none())
        .then_some(())
    })
    .await;
    eventually(
        DEADLINE,
        "guest web deleted (finalizer removed)",
        || async { get(&guest, "web").await.is_none().then_some(()) },
    )
    .await;
    eventually(DEADLINE, "api gets the freed address", || async {
        get(&guest, "api")
            .await
            .filter(|s| ips(s) == ["198.18.0.10"])
    })
    .await;
    assert!(
        metrics
            .driver_errors
            .get_or_create(&vec![
                ("driver".into(), "supervisor".into()),
                ("kind".into(), "http_5xx".into()),
            ])
            .get()
            == 0
    );

    // 5. Restart with an orphan, bystanders and a taken name.
    guest_ctl.abort();
    untagged(
        &sup_plain,
        "orphan",
        json!({"switchyard.io/cluster": CLUSTER, LABEL_GUEST_UID: "gone-uid",
               LABEL_GUEST_NAME: "old"}),
    )
    .await;
    untagged(&sup_plain, "bystander", json!({"app": "x"})).await;
    untagged(
        &sup_plain,
        "other-cluster",
        json!({"switchyard.io/cluster": "guest2", LABEL_GUEST_UID: "gone-uid"}),
    )
    .await;
    untagged(
        &sup_plain,
        &plan::object_name(CLUSTER, "default", "taken"),
        json!({}),
    )
    .await;
    service(&guest, "taken", json!({})).await;
    let (_guest_ctl2, _) = guest_replica(&guest, "guest-2", "supervisor", Duration::from_secs(60));
    let api: Api<Service> = Api::namespaced(sup_plain.clone(), SUP_NS);
    eventually(DEADLINE, "the orphan deleted", || async {
        api.get_opt("orphan").await.unwrap().is_none().then_some(())
    })
    .await;
    let c = eventually(DEADLINE, "taken: NotOwned", || async {
        get(&guest, "taken")
            .await
            .as_ref()
            .and_then(condition)
            .filter(|c| c.1 == "NotOwned")
    })
    .await;
    assert!(c.2.contains("left alone"), "{c:?}");
    for name in ["bystander", "other-cluster"] {
        assert!(
            api.get_opt(name).await.unwrap().is_some(),
            "{name} untouched"
        );
    }
    let taken = api
        .get(&plan::object_name(CLUSTER, "default", "taken"))
        .await
        .unwrap();
    assert_eq!(
        taken.spec.unwrap().type_.as_deref(),
        Some("ClusterIP"),
        "the untagged object is unchanged"
    );
    assert_eq!(
        ips(&get(&guest, "api").await.unwrap()),
        ["198.18.0.10"],
        "the held address stays over the restart"
    );
    drop(relay);
}
