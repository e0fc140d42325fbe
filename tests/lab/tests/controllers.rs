//! The in-process controllers, observed through a kube-rs client as the agent and proxy will.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_lab::apiserver::ApiServerOptions;

const DEADLINE: Duration = Duration::from_secs(10);

fn node(name: &str, pod_cidr: Option<&str>) -> Node {
    let mut v = json!({"metadata": {"name": name}});
    if let Some(c) = pod_cidr {
        v["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_from_the_cluster_cidr() {
    let server = common::start(ApiServerOptions::default()).await;
    let nodes: Api<Node> = Api::all(common::client(&server));
    nodes
        .create(
            &PostParams::default(),
            &node("preset", Some("10.244.0.0/24")),
        )
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("n1", None))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("n2", None))
        .await
        .unwrap();
    let mut cidrs = Vec::new();
    for name in ["preset", "n1", "n2"] {
        let cidr = common::eventually(&format!("podCIDR of {name}"), DEADLINE, || {
            let nodes = nodes.clone();
            async move { nodes.get(name).await.ok()?.spec?.pod_cidr }
        })
        .await;
        let spec = nodes.get(name).await.unwrap().spec.unwrap();
        assert_eq!(spec.pod_cidrs, Some(vec![cidr.clone()]));
        cidrs.push(cidr);
    }
    assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
    server.shutdown().await;
}

fn service(name: &str, cluster_ip: Option<&str>, target_port: serde_json::Value) -> Service {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "web", "port": 80, "targetPort": target_port}]},
    });
    if let Some(ip) = cluster_ip {
        v["spec"]["clusterIP"] = json!(ip);
    }
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_cluster_ips_from_the_service_cidr() {
    let server = common::start(ApiServerOptions::default()).await;
    let svcs: Api<Service> = Api::namespaced(common::client(&server), "default");
    let pp = PostParams::default();
    let a = svcs
        .create(&pp, &service("a", None, json!(8080)))
        .await
        .unwrap();
    let a_ip = a.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    let a_ip: std::net::Ipv4Addr = a_ip.parse().unwrap();
    assert_eq!(a_ip.octets()[..2], [10, 96]);
    assert_eq!(
        a.spec.as_ref().unwrap().cluster_ips,
        Some(vec![a_ip.to_string()])
    );
    assert_eq!(
        a.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );

    let b = svcs
        .create(&pp, &service("b", Some("10.96.7.7"), json!(8080)))
        .await
        .unwrap();
    assert_eq!(b.spec.unwrap().cluster_ip.as_deref(), Some("10.96.7.7"));
    match svcs
        .create(&pp, &service("c", Some("10.96.7.7"), json!(8080)))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(
                s.message.contains("provided IP is already allocated"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422 for a taken clusterIP, got {other:?}"),
    }
    match svcs
        .create(&pp, &service("d", Some("192.168.1.1"), json!(8080)))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422),
        other => panic!("expected 422 for an out-of-range clusterIP, got {other:?}"),
    }
    let headless = svcs
        .create(&pp, &service("h", Some("None"), json!(8080)))
        .await
        .unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    // Updates keep the allocated IP.
    let relabelled = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(relabelled.spec.unwrap().cluster_ip, Some(a_ip.to_string()));
    let np: Service = serde_json::from_value(json!({
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }))
    .unwrap();
    let np = svcs.create(&pp, &np).await.unwrap();
    let node_port = np.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&node_port));
    server.shutdown().await;
}

async fn slices_of(api: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
}

/// (pod name, ready, serving, terminating, port) of every endpoint of the service.
async fn endpoints(api: &Api<EndpointSlice>, svc: &str) -> Vec<(String, bool, bool, bool, i32)> {
    let mut out = Vec::new();
    for slice in slices_of(api, svc).await {
        let port = slice
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
            .unwrap_or(0);
        for e in slice.endpoints {
            let c = e.conditions.unwrap_or_default();
            out.push((
                e.target_ref.and_then(|r| r.name).unwrap_or_default(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
                port,
            ));
        }
    }
    out.sort();
    out
}

async fn make_pod(pods: &Api<Pod>, name: &str, ip: &str, port_name: &str, port: i32) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x", "ports": [{"name": port_name, "containerPort": port}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
    )
    .await
    .unwrap();
}

async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslices_follow_pods_readiness_termination_and_named_ports() {
    let server = common::start(ApiServerOptions::default()).await;
    let client = common::client(&server);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");

    svcs.create(&PostParams::default(), &service("web", None, json!("http")))
        .await
        .unwrap();
    // A service without pods still gets an (empty) slice.
    common::eventually("empty slice", DEADLINE, || {
        let s = slices.clone();
        async move { (slices_of(&s, "web").await.len() == 1).then_some(()) }
    })
    .await;
    let empty = slices_of(&slices, "web").await.remove(0);
    assert_eq!(empty.address_type, "IPv4");
    let labels = empty.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(empty.metadata.owner_references.unwrap()[0].kind, "Service");

    make_pod(&pods, "web-1", "10.244.1.10", "http", 8080).await;
    make_pod(&pods, "web-2", "10.244.1.11", "http", 9090).await;
    // A pod without the named port gets no endpoint port; it lands in its own slice with no ports.
    make_pod(&pods, "web-3", "10.244.1.12", "other", 7070).await;

    let want = vec![
        ("web-1".to_string(), false, false, false, 8080),
        ("web-2".to_string(), false, false, false, 9090),
        ("web-3".to_string(), false, false, false, 0),
    ];
    common::eventually(
        "not-ready endpoints with resolved named ports",
        DEADLINE,
        || {
            let s = slices.clone();
            let want = want.clone();
            async move { (endpoints(&s, "web").await == want).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        slices_of(&slices, "web").await.len(),
        3,
        "one slice per distinct port set"
    );

    set_ready(&pods, "web-1", true).await;
    common::eventually("web-1 ready", DEADLINE, || {
        let s = slices.clone();
        async move {
            endpoints(&s, "web")
                .await
                .contains(&("web-1".to_string(), true, true, false, 8080))
                .then_some(())
        }
    })
    .await;
    let slice = slices_of(&slices, "web")
        .await
        .into_iter()
        .find(|s| {
            s.ports
                .as_ref()
                .is_some_and(|p| p.first().and_then(|p| p.port) == Some(8080))
        })
        .unwrap();
    let ep = &slice.endpoints[0];
    assert_eq!(ep.addresses, ["10.244.1.10"]);
    assert_eq!(ep.node_name.as_deref(), Some("node-1"));
    assert_eq!(slice.ports.unwrap()[0].name.as_deref(), Some("web"));

    // Graceful delete: terminating, not ready, still serving; gone after the grace period.
    let dp = DeleteParams {
        grace_period_seconds: Some(2),
        ..DeleteParams::default()
    };
    pods.delete("web-1", &dp).await.unwrap();
    assert!(
        pods.get("web-1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    common::eventually("web-1 terminating", DEADLINE, || {
        let s = slices.clone();
        async move {
            endpoints(&s, "web")
                .await
                .contains(&("web-1".to_string(), false, true, true, 8080))
                .then_some(())
        }
    })
    .await;
    common::eventually("web-1 removed after its grace period", DEADLINE, || {
        let (s, p) = (slices.clone(), pods.clone());
        async move {
            let gone = p.get_opt("web-1").await.unwrap().is_none();
            let eps = endpoints(&s, "web").await;
            (gone && !eps.iter().any(|e| e.0 == "web-1")).then_some(())
        }
    })
    .await;

    // Ready flips back off.
    set_ready(&pods, "web-2", true).await;
    common::eventually("web-2 ready", DEADLINE, || {
        let s = slices.clone();
        async move {
            endpoints(&s, "web")
                .await
                .contains(&("web-2".to_string(), true, true, false, 9090))
                .then_some(())
        }
    })
    .await;
    set_ready(&pods, "web-2", false).await;
    common::eventually("web-2 not ready again", DEADLINE, || {
        let s = slices.clone();
        async move {
            endpoints(&s, "web")
                .await
                .contains(&("web-2".to_string(), false, false, false, 9090))
                .then_some(())
        }
    })
    .await;

    // Deleting the service removes its slices.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    common::eventually("slices gone with their service", DEADLINE, || {
        let s = slices.clone();
        async move { slices_of(&s, "web").await.is_empty().then_some(()) }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_points_at_the_advertised_address_and_comes_back() {
    use k8s_openapi::api::core::v1::Endpoints;
    let server = common::start(ApiServerOptions {
        advertise_address: Some("192.0.2.5".parse().unwrap()),
        ..ApiServerOptions::default()
    })
    .await;
    let port = i32::from(server.addr().port());
    let client = common::client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client, "default");

    // There from the start, before any controller pass.
    let svc = services.get("kubernetes").await.unwrap();
    let labels = svc.metadata.labels.clone().unwrap();
    assert_eq!(labels["component"], "apiserver");
    assert_eq!(labels["provider"], "kubernetes");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.selector, None);
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].port,
            ports[0].protocol.as_deref()
        ),
        (Some("https"), 443, Some("TCP"))
    );
    assert_eq!(
        ports[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
    );
    let check_slice = |slice: &EndpointSlice| {
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
            "kubernetes"
        );
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints.len(), 1);
        assert_eq!(slice.endpoints[0].addresses, ["192.0.2.5"]);
        assert_eq!(
            slice.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(true)
        );
        let p = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_deref()),
            (Some("https"), Some(port), Some("TCP"))
        );
    };
    check_slice(&slices.get("kubernetes").await.unwrap());
    let ep = endpoints.get("kubernetes").await.unwrap();
    let subset = &ep.subsets.unwrap()[0];
    assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "192.0.2.5");
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, port);

    // The ClusterIP is not handed out to another Service.
    let other = services
        .create(&PostParams::default(), &service("other", None, json!(80)))
        .await
        .unwrap();
    assert_eq!(other.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.2"));

    // Deleted objects and changed endpoints come back.
    services
        .delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    slices
        .patch(
            "kubernetes",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [{"addresses": ["192.0.2.99"]}]})),
        )
        .await
        .unwrap();
    common::eventually("the kubernetes Service back", DEADLINE, || {
        let services = services.clone();
        async move { services.get("kubernetes").await.ok() }
    })
    .await;
    let slice = common::eventually("the kubernetes endpoint restored", DEADLINE, || {
        let slices = slices.clone();
        async move {
            let slice = slices.get("kubernetes").await.ok()?;
            (slice.endpoints[0].addresses == ["192.0.2.5"]).then_some(slice)
        }
    })
    .await;
    check_slice(&slice);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_is_opt_out_and_advertises_the_listen_address() {
    let server = common::start(ApiServerOptions {
        kubernetes_service: false,
        ..ApiServerOptions::default()
    })
    .await;
    let services: Api<Service> = Api::namespaced(common::client(&server), "default");
    assert!(
        services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    server.shutdown().await;

    let opts = ApiServerOptions::default();
    let bound: std::net::SocketAddr = "127.0.0.1:6443".parse().unwrap();
    assert_eq!(
        opts.advertised_endpoint(bound).to_string(),
        "127.0.0.1:6443"
    );
    let bound: std::net::SocketAddr = "10.1.2.3:7443".parse().unwrap();
    assert_eq!(opts.advertised_endpoint(bound).to_string(), "10.1.2.3:7443");
    let unspecified = opts.advertised_endpoint("0.0.0.0:6443".parse().unwrap());
    assert!(!unspecified.ip().is_unspecified(), "{unspecified}");
    assert_eq!(unspecified.port(), 6443);
}

/// `up --control-planes`: `default/kubernetes` lists the apiservers holding an unexpired
/// endpoint Lease (kube-apiserver's lease endpoint reconciler), on the apiservers' port; an
/// expired Lease drops out without any change to it, a renewed one comes back; a relay's
/// own renewal (`relay::renew_lease`) lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_follows_apiserver_endpoint_leases() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Endpoints;
    use switchyard_lab::controllers::{
        KubernetesService, LABEL_ENDPOINT_LEASE, spawn_kubernetes_service,
    };
    let server = common::start(ApiServerOptions {
        kubernetes_service: false,
        ..ApiServerOptions::default()
    })
    .await;
    let mut keeper = KubernetesService::new(
        "10.96.0.0/16".parse().unwrap(),
        "0.0.0.0:6443".parse().unwrap(),
    )
    .unwrap();
    keeper.endpoint_leases = true;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let _keeper = spawn_kubernetes_service(server.store(), keeper, stop_rx);
    let client = common::client(&server);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let ago = |secs: i64| {
        k8s_openapi::jiff::Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    };
    let lease = |ip: &str, renewed: String| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": format!("ep-{}", ip.replace('.', "-")),
                         "labels": {LABEL_ENDPOINT_LEASE: "true"}},
            "spec": {"holderIdentity": ip, "leaseDurationSeconds": 15, "renewTime": renewed},
        }))
        .unwrap()
    };
    let listed = |want: &'static [&'static str]| {
        let slices = slices.clone();
        let endpoints = endpoints.clone();
        async move {
            let s = slices.get("kubernetes").await.ok()?;
            let got: Vec<String> = s
                .endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect();
            let port = s.ports.as_ref()?.first()?.port;
            let ep = endpoints.get("kubernetes").await.ok()?;
            let ep_addrs: Vec<String> = ep
                .subsets
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s.addresses.clone().unwrap_or_default())
                .map(|a| a.ip)
                .collect();
            (got == want && ep_addrs == want && port == Some(6443)).then_some(())
        }
    };
    // No Lease: no endpoint (nothing to route to), the Service still there.
    common::eventually("an empty slice", DEADLINE, || listed(&[])).await;
    let pp = PostParams::default();
    leases
        .create(&pp, &lease("10.0.0.1", ago(0)))
        .await
        .unwrap();
    leases
        .create(&pp, &lease("10.0.0.2", ago(20)))
        .await
        .unwrap();
    common::eventually("only the live Lease listed", DEADLINE, || {
        listed(&["10.0.0.1"])
    })
    .await;
    let renew = |ip: &'static str, renewed: String| {
        let leases = leases.clone();
        async move {
            leases
                .patch(
                    &format!("ep-{}", ip.replace('.', "-")),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"renewTime": renewed}})),
                )
                .await
                .unwrap();
        }
    };
    renew("10.0.0.2", ago(0)).await;
    common::eventually("the renewed Lease listed", DEADLINE, || {
        listed(&["10.0.0.1", "10.0.0.2"])
    })
    .await;
    // 10.0.0.1 last renewed 14 s ago: it expires within about a second, unchanged.
    renew("10.0.0.1", ago(14)).await;
    common::eventually("the expired Lease dropped", DEADLINE, || {
        listed(&["10.0.0.2"])
    })
    .await;
    // A relay renewing its own Lease.
    let relay = tokio::spawn(switchyard_lab::relay::renew_lease(
        server.addr(),
        "10.0.0.3".parse().unwrap(),
    ));
    common::eventually("the relay's Lease listed", DEADLINE, || {
        listed(&["10.0.0.2", "10.0.0.3"])
    })
    .await;
    relay.abort();
    server.shutdown().await;
}
