//! The `lab` router driver against the fabric API, in process: the fabric API's TLS (lab CA,
//! client certificate required), the Policy API subset it serves, reads reporting the
//! kernel's next hops (an out-of-band edit shows), fault injection (5xx and latency, both
//! retriable) and the request log. The kernel is an in-memory fake here;
//! `tests/load_balancer_route.rs` runs the real one (netlink in the lab's fabric namespace).

use std::net::IpAddr;

use std::time::Duration;

use switchyard_lab::fabric_api::FabricApi;
use switchyard_lab::fabric_api::in_process::{InProcess, MemoryKernel};
use switchyard_lab::fabric_api::pki::{self, PkiFiles};
use switchyard_router::{PolicyConfig, PolicyDriver, RouterDriver, RouterError, StaticRoute};

struct Setup {
    _dir: tempfile::TempDir,
    files: PkiFiles,
    kernel: MemoryKernel,
    api: FabricApi,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let InProcess { api, files, kernel } = InProcess::start(dir.path(), "test").await;
    Setup {
        _dir: dir,
        files,
        kernel,
        api,
    }
}

fn driver(s: &Setup, cluster: &str) -> PolicyDriver {
    PolicyDriver::lab(config(s, cluster)).unwrap()
}

fn config(s: &Setup, cluster: &str) -> PolicyConfig {
    PolicyConfig {
        endpoint: format!("https://{}", s.api.addr()),
        tier1: "lab".into(),
        cluster: cluster.into(),
        ca_pem: std::fs::read(&s.files.ca).unwrap(),
        cert_pem: std::fs::read(&s.files.client_cert).unwrap(),
        key_pem: std::fs::read(&s.files.client_key).unwrap(),
        timeout: Duration::from_secs(5),
    }
}

fn route(id: &str, net: &str, hops: &[&str]) -> StaticRoute {
    StaticRoute::new(
        id,
        net.parse().unwrap(),
        hops.iter().map(|h| h.parse().unwrap()).collect(),
        "lb",
        id,
    )
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|h| h.parse().unwrap()).collect()
}

#[tokio::test]
async fn lab_driver_programs_ecmp_routes_through_the_fabric_api() {
    let s = setup().await;
    let d = driver(&s, "lab-a");
    let r = route(
        "lb-a",
        "198.18.0.10/32",
        &["10.0.0.3", "10.0.0.1", "10.0.0.2"],
    );
    d.put(&r).await.unwrap();
    assert_eq!(
        s.kernel.routes()[&"198.18.0.10/32".parse().unwrap()],
        ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        "one ECMP route, three next hops"
    );
    assert_eq!(d.get("lb-a").await.unwrap(), Some(r.clone()));
    assert!(d.realized("lb-a").await.unwrap());
    d.put(&route("lb-a", "198.18.0.10/32", &["10.0.0.2"]))
        .await
        .unwrap();
    assert_eq!(
        s.kernel.routes()[&"198.18.0.10/32".parse().unwrap()],
        ips(&["10.0.0.2"])
    );

    // Another cluster sees none of it and may not touch it.
    let other = driver(&s, "lab-b");
    assert!(other.list().await.unwrap().is_empty());
    assert!(matches!(
        other.delete("lb-a").await,
        Err(RouterError::NotOwned { .. })
    ));
    assert_eq!(d.list().await.unwrap().len(), 1);

    d.delete("lb-a").await.unwrap();
    assert!(s.kernel.routes().is_empty(), "route removed");
    assert_eq!(d.get("lb-a").await.unwrap(), None);
}

#[tokio::test]
async fn reads_show_out_of_band_edits_and_faults_are_retriable() {
    let s = setup().await;
    let d = driver(&s, "lab-a");
    d.put(&route("lb-a", "198.18.0.10/32", &["10.0.0.1", "10.0.0.2"]))
        .await
        .unwrap();
    // Edited on the router behind the API's back.
    s.kernel
        .set_out_of_band("198.18.0.10/32".parse().unwrap(), ips(&["10.0.0.9"]));
    let seen = d.get("lb-a").await.unwrap().unwrap();
    assert_eq!(seen.next_hops, ips(&["10.0.0.9"]));
    assert!(
        !d.realized("lb-a").await.unwrap(),
        "intent and kernel differ"
    );

    // Two 503s, then normal service.
    let store = s.api.store().clone();
    let (status, _) = store
        .handle(
            "PUT",
            "/lab/v1/faults",
            false,
            false,
            br#"{"status": 503, "count": 2}"#,
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let e = d.list().await.unwrap_err();
        assert!(e.retriable() && e.kind() == "http_5xx", "{e}");
    }
    assert_eq!(d.list().await.unwrap().len(), 1);
    let (_, log) = store
        .handle("GET", "/lab/v1/requests", false, false, b"")
        .await;
    let statuses: Vec<u64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );

    // Latency: a driver with a shorter timeout gets a retriable timeout.
    store
        .handle(
            "PUT",
            "/lab/v1/faults",
            false,
            false,
            br#"{"latency_ms": 1000}"#,
        )
        .await;
    let mut cfg = config(&s, "lab-a");
    cfg.timeout = Duration::from_millis(200);
    let e = PolicyDriver::lab(cfg).unwrap().list().await.unwrap_err();
    assert!(
        matches!(e, RouterError::Timeout { .. }) && e.retriable(),
        "{e}"
    );
    store
        .handle("PUT", "/lab/v1/faults", false, false, b"{}")
        .await;

    // Basic auth and X-Allow-Overwrite are refused by the server too.
    let (status, _) = store
        .handle(
            "GET",
            "/policy/api/v1/infra/tier-1s/lab/static-routes",
            true,
            false,
            b"",
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = store
        .handle(
            "GET",
            "/policy/api/v1/infra/tier-1s/lab/static-routes",
            false,
            true,
            b"",
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_client_without_the_lab_ca_is_refused() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let other = pki::generate(dir.path(), &["127.0.0.1".parse().unwrap()], &[], "x").unwrap();
    let mut cfg = PolicyConfig {
        endpoint: format!("https://{}", s.api.addr()),
        tier1: "lab".into(),
        cluster: "lab-a".into(),
        ca_pem: std::fs::read(&s.files.ca).unwrap(),
        cert_pem: std::fs::read(&other.client_cert).unwrap(),
        key_pem: std::fs::read(&other.client_key).unwrap(),
        timeout: Duration::from_secs(5),
    };
    assert!(
        PolicyDriver::lab(cfg.clone())
            .unwrap()
            .list()
            .await
            .is_err()
    );
    cfg.cert_pem = std::fs::read(&s.files.client_cert).unwrap();
    cfg.key_pem = std::fs::read(&s.files.client_key).unwrap();
    cfg.ca_pem = std::fs::read(&other.ca).unwrap();
    let e = PolicyDriver::lab(cfg).unwrap().list().await.unwrap_err();
    assert!(matches!(e, RouterError::Tls { .. }), "{e:?}");
}

#[tokio::test]
async fn lab_driver_writes_snat_rules_and_leaves_untagged_ones_alone() {
    use switchyard_router::NatRule;
    let s = setup().await;
    let d = driver(&s, "lab-a");
    let nat = d.nat().expect("the lab driver writes NAT rules");
    let rule = NatRule::snat(
        "lab-a-ns-blue",
        vec!["10.30.0.0/26".parse().unwrap()],
        "198.18.20.1".parse().unwrap(),
        "ns",
        "blue",
    )
    .with_namespace_uid("uid-blue");
    nat.put_nat(&rule).await.unwrap();
    assert_eq!(
        nat.get_nat("lab-a-ns-blue").await.unwrap(),
        Some(rule.clone())
    );
    // An operator's rule (no tags) next to it: not listed, not changed, not deleted.
    let store = s.api.store().clone();
    let ops = br#"{"action": "SNAT", "source_network": "10.9.0.0/16", "translated_network": "198.18.20.9", "tags": []}"#;
    let path = "/policy/api/v1/infra/tier-1s/lab/nat/USER/nat-rules/ops-snat";
    let (status, _) = store.handle("PUT", path, false, false, ops).await;
    assert_eq!(status, 200);
    assert_eq!(nat.list_nat().await.unwrap(), vec![rule.clone()]);
    let e = nat.delete_nat("ops-snat").await.unwrap_err();
    assert!(matches!(e, RouterError::NotOwned { .. }), "{e}");
    // Faults reach the NAT paths too (retriable).
    store
        .handle(
            "PUT",
            "/lab/v1/faults",
            false,
            false,
            br#"{"status": 503, "count": 1}"#,
        )
        .await;
    let e = nat.list_nat().await.unwrap_err();
    assert!(e.retriable(), "{e}");
    nat.delete_nat("lab-a-ns-blue").await.unwrap();
    assert!(nat.list_nat().await.unwrap().is_empty());
    let (status, obj) = store.handle("GET", path, false, false, b"").await;
    assert_eq!(status, 200, "the operator's rule is still there: {obj}");
}
