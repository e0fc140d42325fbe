//! `switchyard-cpvip` end to end in process: the lab API server, the lab fabric API (its
//! kernel an in-memory fake), three control-plane daemons as tasks, and three fake
//! apiservers on 127.0.0.11-13 (TLS, certificates with the VIP in their SANs, `/readyz`
//! switchable to fail, hang or die). The netns lab with apiserver relays on the nodes:
//! `tests/lab/tests/control_plane_vip_lab.rs`.
//!
//! Asserts what the router and the ControlPlaneVIP show: the ECMP route over the three
//! healthy nodes; a hung apiserver (its EndpointSlice still ready) and a dead one leave the
//! route; an empty or deleted `default/kubernetes` slice keeps the route and raises
//! Degraded with an Event; a route edited on the router (kernel) or deleted through the
//! fabric API is repaired within 10 s; killing the leader changes nothing on the router;
//! deleting the ControlPlaneVIP deletes the route and every node drops the VIP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use switchyard_api::ControlPlaneVIP;
use switchyard_api::leader::Timings;
use switchyard_cpvip::{Options, metrics::Metrics};
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use switchyard_lab::fabric_api::in_process::{InProcess, MemoryKernel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const NS: &str = "kube-system";
const VIP: &str = "198.51.100.10";

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// A fake apiserver: TLS on `addr`, `/readyz` answering by `mode`; `kill` closes it.
struct Apiserver {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    acceptor: tokio_rustls::TlsAcceptor,
    task: Option<JoinHandle<()>>,
}

impl Apiserver {
    fn new(addr: SocketAddr, ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> Apiserver {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec![VIP.to_string(), addr.ip().to_string()]).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        Apiserver {
            addr,
            mode: Arc::new(AtomicU8::new(OK)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            task: None,
        }
    }

    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let acceptor = self.acceptor.clone();
        let mode = self.mode.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    if mode.load(Ordering::SeqCst) == HANG {
                        // Hold the connection, never answer (a hung apiserver).
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(tcp);
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let status = match mode.load(Ordering::SeqCst) {
                        OK => "200 OK",
                        _ => "500 Internal Server Error",
                    };
                    let _ = tls
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        }));
    }

    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct Lab {
    client: Client,
    kernel: MemoryKernel,
    fabric: InProcess,
    apiservers: Vec<Apiserver>,
    daemons: BTreeMap<String, JoinHandle<()>>,
    ca_pem: String,
    port: u16,
    _dir: tempfile::TempDir,
    _server: ApiServerHandle,
}

fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8))
}

async fn setup() -> Lab {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The test keeps the `default/kubernetes` EndpointSlice itself.
    let server = ApiServer::start(ApiServerOptions {
        kubernetes_service: false,
        ..ApiServerOptions::default()
    })
    .await
    .unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in switchyard_api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    // The router.
    let dir = tempfile::tempdir().unwrap();
    let fabric = InProcess::start(dir.path(), "cpvip").await;
    let kernel = fabric.kernel.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("fabric-cred".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
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
    targets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "switchyard.io/v1alpha1", "kind": "RouteTarget",
                "metadata": {"name": "fabric"},
                "spec": {"driver": "lab", "endpoint": format!("https://{}", fabric.api.addr()),
                         "credentialsSecretRef": {"namespace": NS, "name": "fabric-cred"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    // Three apiservers on one port.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let probe = std::net::TcpListener::bind((node_ip(1), 0)).unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut apiservers = Vec::new();
    for i in 1..=3 {
        let mut a = Apiserver::new(SocketAddr::new(node_ip(i), port), &ca);
        a.start().await;
        apiservers.push(a);
    }
    let lab = Lab {
        client,
        kernel,
        fabric,
        apiservers,
        daemons: BTreeMap::new(),
        ca_pem: ca.pem(),
        port,
        _dir: dir,
        _server: server,
    };
    lab.slice(&[1, 2, 3]).await;
    lab
}

impl Lab {
    /// The `default/kubernetes` EndpointSlice with nodes `ready` (kube-apiserver's lease
    /// reconciler keeps it so).
    async fn slice(&self, ready: &[usize]) {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        let endpoints: Vec<_> = ready
            .iter()
            .map(|i| json!({"addresses": [node_ip(*i).to_string()], "conditions": {"ready": true}}))
            .collect();
        let mut s: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}))
        .unwrap();
        match slices.get_opt("kubernetes").await.unwrap() {
            Some(old) => {
                s.metadata.resource_version = old.metadata.resource_version;
                slices
                    .replace("kubernetes", &PostParams::default(), &s)
                    .await
                    .unwrap();
            }
            None => {
                slices.create(&PostParams::default(), &s).await.unwrap();
            }
        }
    }

    fn daemon(&mut self, i: usize) {
        let node = format!("cp{i}");
        let opts = Options {
            node: node.clone(),
            node_address: node_ip(i),
            namespace: NS.into(),
            cluster: "test".into(),
            apiserver_ca: self.ca_pem.clone().into_bytes(),
            timings: Timings {
                lease_duration: Duration::from_secs(2),
                renew_deadline: Duration::from_millis(1500),
                retry_period: Duration::from_millis(300),
            },
            drift_period: Duration::from_secs(5),
            leave_timeout: Duration::from_secs(10),
            local_endpoint: Some(SocketAddr::new(node_ip(i), self.port)),
            manage_vip: false,
        };
        let task = tokio::spawn(switchyard_cpvip::run(
            self.client.clone(),
            opts,
            Arc::new(Metrics::default()),
            std::future::pending(),
        ));
        self.daemons.insert(node, task);
    }

    async fn cr(&self) -> Option<ControlPlaneVIP> {
        let api: Api<ControlPlaneVIP> = Api::all(self.client.clone());
        api.get_opt("api").await.unwrap()
    }

    async fn route(&self, want: &[usize], what: &str) -> Duration {
        let start = Instant::now();
        let want: Vec<String> = want.iter().map(|i| node_ip(*i).to_string()).collect();
        eventually(Duration::from_secs(20), what, || async {
            (self.kernel.next_hops(&format!("{VIP}/32")).as_ref() == Some(&want)).then_some(())
        })
        .await;
        start.elapsed()
    }

    async fn degraded(&self) -> Option<(String, String)> {
        let cr = self.cr().await?;
        cr.status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    /// The route stays `want` for `how_long`.
    async fn route_stays(&self, want: &[usize], how_long: Duration, what: &str) {
        let want: Vec<String> = want.iter().map(|i| node_ip(*i).to_string()).collect();
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            assert_eq!(
                self.kernel.next_hops(&format!("{VIP}/32")).as_ref(),
                Some(&want),
                "{what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The VIP `node` reports holding (`switchyard.io/vip-present`; empty: none).
    async fn vip_reported(&self, node: &str) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NS);
        let l = leases
            .get_opt(&format!("cpvip-api-{node}"))
            .await
            .unwrap()?;
        l.metadata
            .annotations?
            .get(switchyard_api::ANNOTATION_VIP_PRESENT)
            .cloned()
    }

    async fn puts(&self) -> usize {
        let (_, log) = self
            .fabric
            .api
            .store()
            .handle("GET", "/lab/v1/requests", false, false, b"")
            .await;
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["method"] == "PUT" && r["path"].as_str().unwrap_or("").contains("static-routes")
            })
            .count()
    }
}

async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_vip_routes_healthy_nodes_fails_static_repairs_and_cleans_up() {
    let mut lab = setup().await;
    for i in 1..=3 {
        lab.daemon(i);
    }
    let api: Api<ControlPlaneVIP> = Api::all(lab.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "switchyard.io/v1alpha1", "kind": "ControlPlaneVIP",
            "metadata": {"name": "api"},
            "spec": {"vip": VIP, "routeTarget": "fabric", "apiserverPort": lab.port}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();

    // 1. The ECMP route over the three healthy nodes; finalizer, Ready, not Degraded.
    lab.route(&[1, 2, 3], "route over cp1..cp3").await;
    let cr = eventually(Duration::from_secs(10), "status Ready", || async {
        lab.cr().await.filter(|c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
    })
    .await;
    assert!(
        cr.metadata
            .finalizers
            .unwrap()
            .contains(&switchyard_api::CPVIP_FINALIZER.to_string())
    );
    assert_eq!(cr.status.as_ref().unwrap().next_hops.len(), 3);

    // 2. cp2 hangs (its slice entry stays ready): out of the route.
    lab.apiservers[1].mode.store(HANG, Ordering::SeqCst);
    let took = lab.route(&[1, 3], "hung cp2 out of the route").await;
    eprintln!("hung apiserver out of the route after {took:?}");
    // 6 (in part). cp2 drops the VIP only after it left the route: whenever its report says
    // the VIP is gone, the router's route is already without it.
    eventually(
        Duration::from_secs(15),
        "cp2 reports the VIP removed",
        || async {
            let gone = lab.vip_reported("cp2").await == Some(String::new());
            if gone {
                assert_eq!(
                    lab.kernel.next_hops(&format!("{VIP}/32")),
                    Some(vec![node_ip(1).to_string(), node_ip(3).to_string()]),
                    "cp2 dropped the VIP while routed"
                );
            }
            gone.then_some(())
        },
    )
    .await;
    lab.apiservers[1].mode.store(OK, Ordering::SeqCst);
    lab.route(&[1, 2, 3], "cp2 back").await;

    // cp1 fails readiness: out of the route.
    lab.apiservers[0].mode.store(FAIL, Ordering::SeqCst);
    let took = lab
        .route(&[2, 3], "cp1 failing /readyz out of the route")
        .await;
    eprintln!("apiserver failing /readyz out of the route after {took:?}");
    lab.apiservers[0].mode.store(OK, Ordering::SeqCst);
    lab.route(&[1, 2, 3], "cp1 back").await;

    // 3. cp3 dies: out of the route.
    lab.apiservers[2].kill();
    let took = lab.route(&[1, 2], "dead cp3 out of the route").await;
    eprintln!("dead apiserver out of the route after {took:?}");
    lab.apiservers[2].start().await;
    lab.route(&[1, 2, 3], "cp3 back").await;

    // 4. Empty, then deleted slice: the route stays, Degraded with an Event.
    lab.slice(&[]).await;
    eventually(
        Duration::from_secs(10),
        "Degraded EmptyEndpointSlice",
        || async {
            lab.degraded()
                .await
                .filter(|d| d.0 == "True" && d.1 == "EmptyEndpointSlice")
        },
    )
    .await;
    lab.route_stays(
        &[1, 2, 3],
        Duration::from_secs(2),
        "empty slice keeps the route",
    )
    .await;
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("EmptyEndpointSlice")),
        "a Degraded Event"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), "default");
    slices
        .delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "Degraded NoEndpointSlice",
        || async {
            lab.degraded()
                .await
                .filter(|d| d.0 == "True" && d.1 == "NoEndpointSlice")
        },
    )
    .await;
    lab.route_stays(
        &[1, 2, 3],
        Duration::from_secs(2),
        "no slice keeps the route",
    )
    .await;
    lab.slice(&[1, 2, 3]).await;
    eventually(Duration::from_secs(10), "Degraded False", || async {
        lab.degraded().await.filter(|d| d.0 == "False")
    })
    .await;

    // 5. Edited on the router, deleted through the fabric API: repaired within 10 s.
    lab.kernel
        .set_out_of_band(format!("{VIP}/32").parse().unwrap(), vec![node_ip(1)]);
    let took = lab
        .route(&[1, 2, 3], "repair of a route edited on the router")
        .await;
    assert!(took < Duration::from_secs(10), "repaired after {took:?}");
    let (status, _) = lab
        .fabric
        .api
        .store()
        .handle(
            "DELETE",
            "/policy/api/v1/infra/tier-1s/lab/static-routes/cpvip-api",
            false,
            false,
            b"",
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(lab.kernel.next_hops(&format!("{VIP}/32")), None);
    let took = lab
        .route(&[1, 2, 3], "repair of a route deleted through the API")
        .await;
    assert!(took < Duration::from_secs(10), "repaired after {took:?}");

    // 7. Killing the leader changes nothing on the router.
    let leader = lab.cr().await.unwrap().status.unwrap().leader.unwrap();
    let before = lab.puts().await;
    lab.daemons.remove(&leader).unwrap().abort();
    let new_leader = eventually(
        Duration::from_secs(15),
        "another leader writes the status",
        || async {
            let l = lab.cr().await?.status?.leader?;
            (l != leader).then_some(l)
        },
    )
    .await;
    lab.route_stays(
        &[1, 2, 3],
        Duration::from_secs(3),
        "after the leader changed",
    )
    .await;
    assert_eq!(lab.puts().await, before, "{new_leader} rewrote the route");

    // 9. Deleting the ControlPlaneVIP deletes the route and every VIP.
    api.delete("api", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(15), "route deleted", || async {
        lab.kernel
            .next_hops(&format!("{VIP}/32"))
            .is_none()
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "ControlPlaneVIP gone", || async {
        lab.cr().await.is_none().then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(lab.client.clone(), NS);
    let reports = leases
        .list(&ListParams::default().labels(switchyard_api::LABEL_CPVIP))
        .await
        .unwrap()
        .items;
    for r in reports {
        let holder = r.spec.unwrap().holder_identity.unwrap();
        if holder == leader {
            continue; // crashed above: its report is stale
        }
        let ann = r.metadata.annotations.unwrap();
        assert_eq!(
            ann[switchyard_api::ANNOTATION_VIP_PRESENT],
            "",
            "{holder} still holds the VIP"
        );
    }
}

/// The figure of docs/benchmarks.md: from an apiserver's failure (hang or death) to the
/// route without it, over 20 failures of each kind, p50/p99/max printed.
/// `cargo test -p switchyard-cpvip --test failover -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (about 3 minutes)"]
async fn failure_to_route_change_p99() {
    let mut lab = setup().await;
    for i in 1..=3 {
        lab.daemon(i);
    }
    let api: Api<ControlPlaneVIP> = Api::all(lab.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "switchyard.io/v1alpha1", "kind": "ControlPlaneVIP",
            "metadata": {"name": "api"},
            "spec": {"vip": VIP, "routeTarget": "fabric", "apiserverPort": lab.port}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    lab.route(&[1, 2, 3], "route over cp1..cp3").await;
    for kind in ["hang", "fail", "die"] {
        let mut took = Vec::new();
        for round in 0..20 {
            let n = round % 3;
            let rest: Vec<usize> = (1..=3).filter(|i| *i != n + 1).collect();
            // A random phase against the probe period.
            tokio::time::sleep(Duration::from_millis(137 * (round as u64 % 7))).await;
            match kind {
                "hang" => lab.apiservers[n].mode.store(HANG, Ordering::SeqCst),
                "fail" => lab.apiservers[n].mode.store(FAIL, Ordering::SeqCst),
                _ => lab.apiservers[n].kill(),
            }
            took.push(lab.route(&rest, "out of the route").await);
            match kind {
                "die" => lab.apiservers[n].start().await,
                _ => lab.apiservers[n].mode.store(OK, Ordering::SeqCst),
            }
            lab.route(&[1, 2, 3], "back").await;
        }
        took.sort();
        let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
        eprintln!(
            "{kind}: failure to route change over {} failures: p50 {:?} p99 {:?} max {:?}",
            took.len(),
            p(0.5),
            p(0.99),
            took.last().unwrap()
        );
    }
}
