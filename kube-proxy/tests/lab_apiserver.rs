//! The proxy's watch against the lab's in-memory API server (real kube-rs
//! watchers over HTTP, the lab's EndpointSlice controller making slices from
//! pods), asserting the desired state the proxy would install.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use switchyard_proxy::fixtures::{endpoint, slice};
use switchyard_proxy::{
    GroupIdAllocator, Protocol, ServicePortName, ServicePortState, Update, WatchConfig, watch,
};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);
const NODE: &str = "node-1";

struct Lab {
    server: ApiServerHandle,
    client: kube::Client,
    updates: mpsc::Receiver<Update>,
    /// Every update received so far, in order.
    seen: Vec<Update>,
    watcher: tokio::task::JoinHandle<Result<(), switchyard_proxy::WatchError>>,
}

async fn start() -> Lab {
    let server = ApiServer::start(ApiServerOptions::default())
        .await
        .expect("lab API server starts");
    let config = kube::Config::new(server.url().parse().expect("server URL parses"));
    let client = kube::Client::try_from(config).expect("kube client builds");
    let (tx, updates) = mpsc::channel(64);
    let watch_config = WatchConfig {
        node_name: NODE.to_owned(),
        debounce: Duration::from_millis(20),
        node: Default::default(),
        frontends: None,
    };
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let watcher = tokio::spawn(watch(client.clone(), watch_config, groups, tx));
    Lab {
        server,
        client,
        updates,
        seen: Vec::new(),
        watcher,
    }
}

impl Lab {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Receives updates until `check` holds for the latest state; returns
    /// the updates received on the way (the last one satisfies `check`).
    async fn wait_for(&mut self, what: &str, check: impl Fn(&Update) -> bool) -> Vec<Update> {
        let end = tokio::time::Instant::now() + DEADLINE;
        let mut received = Vec::new();
        if let Some(last) = self.seen.last()
            && check(last)
        {
            return received;
        }
        loop {
            let update = tokio::time::timeout_at(end, self.updates.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for {what}; last state: {:?}",
                        self.seen.last().map(|u| &u.state)
                    )
                })
                .expect("watch loop still running");
            self.seen.push(update.clone());
            received.push(update.clone());
            if check(&update) {
                return received;
            }
        }
    }

    async fn stop(self) {
        self.watcher.abort();
        self.server.shutdown().await;
    }
}

fn port(name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, port, protocol)
}

fn backends(update: &Update, name: &ServicePortName) -> Option<Vec<String>> {
    update.state.get(name).map(|state| {
        state
            .endpoints
            .iter()
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect()
    })
}

fn state<'a>(update: &'a Update, name: &ServicePortName) -> &'a ServicePortState {
    update.state.get(name).expect("service port present")
}

async fn create_pod(
    pods: &Api<Pod>,
    name: &str,
    app: &str,
    node: &str,
    ip: &str,
    ports: serde_json::Value,
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
    }))
    .expect("pod manifest");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }})),
    )
    .await
    .expect("pod status");
}

async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": status}]}})),
    )
    .await
    .expect("pod readiness");
}

async fn create_service(services: &Api<Service>, manifest: serde_json::Value) -> Service {
    let service: Service = serde_json::from_value(manifest).expect("service manifest");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("create service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_behind_a_service_become_endpoints_and_follow_readiness() {
    let mut lab = start().await;
    let pods = lab.pods();
    let web = create_service(
        &lab.services(),
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        }),
    )
    .await;
    let vip = web
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("the lab allocated a cluster IP");
    let http = port("web", "http", Protocol::Tcp);

    // The Service shows up with no endpoints: reject.
    let updates = lab
        .wait_for("web without endpoints", |u| {
            backends(u, &http) == Some(vec![])
        })
        .await;
    let first = updates.last().expect("an update");
    let web_state = state(first, &http);
    assert_eq!(web_state.cluster_ip.to_string(), vip);
    assert_eq!(web_state.port, 80);
    assert_eq!(web_state.session_affinity, Some(10_800));
    assert_eq!(
        web_state.no_endpoints_action(),
        Some(switchyard_proxy::NoEndpointsAction::Reject)
    );

    let named_port = json!([{"name": "http", "containerPort": 8080}]);
    create_pod(
        &pods,
        "web-1",
        "web",
        "node-1",
        "10.244.1.10",
        named_port.clone(),
    )
    .await;
    create_pod(&pods, "web-2", "web", "node-2", "10.244.2.10", named_port).await;
    let want = vec!["10.244.1.10:8080".to_owned(), "10.244.2.10:8080".to_owned()];
    let updates = lab
        .wait_for("two endpoints", |u| {
            backends(u, &http).as_ref() == Some(&want)
        })
        .await;
    let last = updates.last().expect("an update");
    let locality: Vec<bool> = state(last, &http)
        .endpoints
        .iter()
        .map(|e| e.is_local)
        .collect();
    assert_eq!(locality, [true, false]);

    // web-2 fails its readiness probe: only the group changes.
    set_ready(&pods, "web-2", false).await;
    let updates = lab
        .wait_for("web-2 gone", |u| {
            backends(u, &http) == Some(vec!["10.244.1.10:8080".to_owned()])
        })
        .await;
    let change = updates
        .last()
        .and_then(|u| u.changes.changed.iter().find(|c| c.name == http))
        .expect("web changed in the last update");
    assert!(change.group_only(), "{change:?}");

    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectorless_service_with_a_hand_made_slice() {
    let mut lab = start().await;
    create_service(
        &lab.services(),
        json!({
            "metadata": {"name": "db"},
            "spec": {"ports": [{"name": "pg", "port": 5432}]},
        }),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    slices
        .create(
            &PostParams::default(),
            &slice("default", "db-manual", "db")
                .tcp("pg", 15432)
                .endpoint(endpoint("192.168.10.5"))
                .build(),
        )
        .await
        .expect("create slice");
    let pg = port("db", "pg", Protocol::Tcp);
    lab.wait_for("the hand-made endpoint", |u| {
        backends(u, &pg) == Some(vec!["192.168.10.5:15432".to_owned()])
    })
    .await;
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_udp_service_lists_its_endpoints_as_stale() {
    let mut lab = start().await;
    create_service(
        &lab.services(),
        json!({
            "metadata": {"name": "dns"},
            "spec": {
                "selector": {"app": "dns"},
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}],
            },
        }),
    )
    .await;
    create_pod(
        &lab.pods(),
        "dns-1",
        "dns",
        "node-2",
        "10.244.2.20",
        json!([{"containerPort": 5353, "protocol": "UDP"}]),
    )
    .await;
    let dns = port("dns", "dns", Protocol::Udp);
    lab.wait_for("the dns endpoint", |u| {
        backends(u, &dns) == Some(vec!["10.244.2.20:5353".to_owned()])
    })
    .await;

    lab.services()
        .delete("dns", &DeleteParams::default())
        .await
        .expect("delete service");
    let updates = lab
        .wait_for("dns removed", |u| u.state.get(&dns).is_none())
        .await;
    let last = updates.last().expect("an update");
    assert_eq!(last.changes.removed.len(), 1);
    let stale: Vec<String> = last
        .changes
        .stale_udp_endpoints
        .iter()
        .map(|s| {
            format!(
                "{}:{}->{}:{}",
                s.cluster_ip, s.port, s.endpoint_ip, s.endpoint_port
            )
        })
        .collect();
    let vip = last.changes.removed[0].state.cluster_ip;
    assert_eq!(stale, [format!("{vip}:53->10.244.2.20:5353")]);
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_of_another_proxy_are_ignored() {
    let mut lab = start().await;
    create_service(
        &lab.services(),
        json!({
            "metadata": {"name": "theirs", "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }),
    )
    .await;
    // Created after it on the same watch: once this one is in, the other
    // would have been too.
    create_service(
        &lab.services(),
        json!({
            "metadata": {"name": "ours"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }),
    )
    .await;
    let ours = port("ours", "http", Protocol::Tcp);
    let updates = lab.wait_for("ours", |u| u.state.get(&ours).is_some()).await;
    let last = updates.last().expect("an update");
    assert!(
        last.state
            .get(&port("theirs", "http", Protocol::Tcp))
            .is_none()
    );
    // Ours and the API server's own `default/kubernetes`.
    assert!(
        last.state
            .get(&port("kubernetes", "https", Protocol::Tcp))
            .is_some()
    );
    assert_eq!(last.state.len(), 2);
    lab.stop().await;
}
