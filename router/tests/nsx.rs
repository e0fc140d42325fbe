//! The `nsx` driver against a local HTTPS server that checks the exact requests: paths, JSON
//! bodies, tags, no basic auth, no `X-Allow-Overwrite`, the client certificate presented,
//! the server's certificate verified (a wrong CA fails), and untagged objects never modified
//! or deleted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use switchyard_router::{
    NatRule, PolicyConfig, PolicyDriver, RouterDriver, RouterError, StaticRoute, TAG_CLUSTER,
    TAG_NAMESPACE_UID, TAG_OWNER,
};

const T1: &str = "t1-edge";
const ROUTES: &str = "/policy/api/v1/infra/tier-1s/t1-edge/static-routes";
const NAT: &str = "/policy/api/v1/infra/tier-1s/t1-edge/nat/USER/nat-rules";

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, sans: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn new_pki() -> Pki {
    let ca = ca();
    let (server_cert, server_key) = leaf(&ca, &["127.0.0.1"]);
    let (client_cert, client_key) = leaf(&ca, &["switchyard-controller"]);
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Option<Value>,
    authorization: bool,
    allow_overwrite: bool,
    client_cert: bool,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    /// NAT rules (`.../nat/USER/nat-rules`) by id.
    nat: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    fail_with: Option<u16>,
    delay: Option<Duration>,
    revision: i64,
}

type Shared = Arc<Mutex<State>>;

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A small NSX imitation: objects by id, `_revision` checked on update (412), list paged by
/// two with a cursor.
async fn handle(state: Shared, req: Request<Incoming>, client_cert: bool) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authorization = req.headers().contains_key("authorization");
    let allow_overwrite = req.headers().contains_key("x-allow-overwrite");
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let delay = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
            authorization,
            allow_overwrite,
            client_cert,
        });
        st.delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut st = state.lock().unwrap();
    if let Some(code) = st.fail_with {
        return reply(
            StatusCode::from_u16(code).unwrap(),
            json!({"error_code": 99, "error_message": "injected"}),
        );
    }
    if path.starts_with("/policy/api/v1/infra/realized-state/status?intent_path=") {
        return reply(
            StatusCode::OK,
            json!({"consolidated_status": {"consolidated_status": "SUCCESS"}}),
        );
    }
    let (base, is_nat) = if path.starts_with(NAT) {
        (NAT, true)
    } else {
        (ROUTES, false)
    };
    let st = &mut *st;
    let objects = if is_nat { &mut st.nat } else { &mut st.objects };
    if method == "GET" && (path == base || path.starts_with(&format!("{base}?cursor="))) {
        let start: usize = path
            .split("cursor=")
            .nth(1)
            .map(|c| c.parse().unwrap())
            .unwrap_or(0);
        let all: Vec<Value> = objects.values().cloned().collect();
        let page: Vec<Value> = all.iter().skip(start).take(2).cloned().collect();
        let mut out = json!({"results": page, "result_count": all.len()});
        if start + 2 < all.len() {
            out["cursor"] = json!((start + 2).to_string());
        }
        return reply(StatusCode::OK, out);
    }
    let Some(id) = path.strip_prefix(&format!("{base}/")) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error_message": "no such path"}),
        );
    };
    let id = id.to_string();
    match method.as_str() {
        "GET" => match objects.get(&id) {
            Some(o) => reply(StatusCode::OK, o.clone()),
            None => reply(StatusCode::NOT_FOUND, json!({"error_message": "not found"})),
        },
        "PUT" => {
            let mut obj = body.unwrap_or(Value::Null);
            let sent = obj.get("_revision").and_then(Value::as_i64);
            let current = objects
                .get(&id)
                .and_then(|o| o.get("_revision"))
                .and_then(Value::as_i64);
            if sent != current {
                return reply(
                    StatusCode::PRECONDITION_FAILED,
                    json!({"error_message": "revision mismatch"}),
                );
            }
            st.revision += 1;
            obj["_revision"] = json!(st.revision);
            let objects = if is_nat { &mut st.nat } else { &mut st.objects };
            objects.insert(id, obj.clone());
            reply(StatusCode::OK, obj)
        }
        "DELETE" => {
            objects.remove(&id);
            reply(StatusCode::OK, json!({}))
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, json!({})),
    }
}

async fn server(pki: &Pki, state: Shared) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let certs = CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(state, req, client_cert).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(addr: SocketAddr, pki: &Pki) -> PolicyConfig {
    PolicyConfig {
        endpoint: format!("https://{addr}"),
        tier1: T1.into(),
        cluster: "lab-a".into(),
        ca_pem: pki.ca.clone().into_bytes(),
        cert_pem: pki.client_cert.clone().into_bytes(),
        key_pem: pki.client_key.clone().into_bytes(),
        timeout: Duration::from_secs(5),
    }
}

fn route(id: &str, net: &str, hops: &[&str]) -> StaticRoute {
    StaticRoute::new(
        id,
        net.parse().unwrap(),
        hops.iter().map(|h| h.parse().unwrap()).collect(),
        "lb",
        format!("switchyard {id}"),
    )
}

fn untagged(id: &str) -> Value {
    json!({"resource_type": "StaticRoutes", "id": id, "display_name": "ops",
           "network": "10.9.9.0/24", "next_hops": [{"ip_address": "10.0.0.254", "admin_distance": 1}],
           "tags": [{"scope": "owner", "tag": "netops"}], "_revision": 7})
}

async fn setup_at() -> (Pki, Shared, SocketAddr, PolicyDriver) {
    let pki = new_pki();
    let state: Shared = Arc::default();
    let addr = server(&pki, state.clone()).await;
    let driver = PolicyDriver::nsx(config(addr, &pki)).unwrap();
    (pki, state, addr, driver)
}

async fn setup() -> (Pki, Shared, PolicyDriver) {
    let (pki, state, _, driver) = setup_at().await;
    (pki, state, driver)
}

#[tokio::test]
async fn put_get_list_delete_send_the_exact_requests() {
    let (_pki, state, d) = setup().await;
    let r = route(
        "sy-lb-a",
        "192.0.2.10/32",
        &["10.0.0.3", "10.0.0.1", "10.0.0.2"],
    );
    d.put(&r).await.unwrap();
    // Update: read first, then PUT with the revision read.
    let r2 = route("sy-lb-a", "192.0.2.10/32", &["10.0.0.1"]);
    d.put(&r2).await.unwrap();
    assert_eq!(d.get("sy-lb-a").await.unwrap(), Some(r2.clone()));
    assert!(d.realized("sy-lb-a").await.unwrap());
    d.put(&route("sy-lb-b", "192.0.2.11/32", &["10.0.0.2"]))
        .await
        .unwrap();
    d.put(&route("sy-lb-c", "2001:db8::1/128", &["fd00::2"]))
        .await
        .unwrap();
    let ids: Vec<String> = d.list().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        ["sy-lb-a", "sy-lb-b", "sy-lb-c"],
        "three objects, two pages"
    );
    d.delete("sy-lb-a").await.unwrap();
    d.delete("sy-lb-a").await.unwrap(); // already gone: fine
    assert_eq!(d.get("sy-lb-a").await.unwrap(), None);

    let seen = state.lock().unwrap().seen.clone();
    let path = format!("{ROUTES}/sy-lb-a");
    let lines: Vec<String> = seen
        .iter()
        .take(6)
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        lines,
        [
            format!("GET {path}"),
            format!("PUT {path}"),
            format!("GET {path}"),
            format!("PUT {path}"),
            format!("GET {path}"),
            "GET /policy/api/v1/infra/realized-state/status?intent_path=%2Finfra%2Ftier-1s%2Ft1-edge%2Fstatic-routes%2Fsy-lb-a".to_string(),
        ]
    );
    assert_eq!(
        seen[1].body.clone().unwrap(),
        json!({"resource_type": "StaticRoutes", "id": "sy-lb-a", "display_name": "switchyard sy-lb-a",
               "network": "192.0.2.10/32",
               "next_hops": [{"ip_address": "10.0.0.1", "admin_distance": 1},
                             {"ip_address": "10.0.0.2", "admin_distance": 1},
                             {"ip_address": "10.0.0.3", "admin_distance": 1}],
               "tags": [{"scope": TAG_CLUSTER, "tag": "lab-a"}, {"scope": TAG_OWNER, "tag": "lb"}]}),
        "create: no _revision"
    );
    assert_eq!(
        seen[3].body.as_ref().unwrap()["_revision"],
        json!(1),
        "update carries the revision read"
    );
    assert!(seen.iter().any(|s| s.method == "DELETE" && s.path == path));
    assert!(seen.iter().any(|s| s.path == format!("{ROUTES}?cursor=2")));
    for s in &seen {
        assert!(
            !s.authorization,
            "{} {}: no Authorization header",
            s.method, s.path
        );
        assert!(
            !s.allow_overwrite,
            "{} {}: no X-Allow-Overwrite",
            s.method, s.path
        );
        assert!(
            s.client_cert,
            "{} {}: client certificate presented",
            s.method, s.path
        );
    }
}

#[tokio::test]
async fn untagged_objects_are_never_modified_or_deleted() {
    let (_pki, state, d) = setup().await;
    state
        .lock()
        .unwrap()
        .objects
        .insert("ops-route".into(), untagged("ops-route"));
    // Another cluster's object is not ours either.
    let mut other = untagged("other-cluster");
    other["tags"] =
        json!([{"scope": TAG_CLUSTER, "tag": "lab-b"}, {"scope": TAG_OWNER, "tag": "lb"}]);
    state
        .lock()
        .unwrap()
        .objects
        .insert("other-cluster".into(), other);
    d.put(&route("sy-lb-a", "192.0.2.10/32", &["10.0.0.1"]))
        .await
        .unwrap();

    assert_eq!(
        d.list().await.unwrap().len(),
        1,
        "only this cluster's routes are listed"
    );
    for id in ["ops-route", "other-cluster"] {
        let put = d.put(&route(id, "192.0.2.12/32", &["10.0.0.1"])).await;
        assert!(matches!(put, Err(RouterError::NotOwned { .. })), "{put:?}");
        let del = d.delete(id).await;
        assert!(matches!(del, Err(RouterError::NotOwned { .. })), "{del:?}");
        assert!(matches!(d.get(id).await, Err(RouterError::NotOwned { .. })));
        assert!(!put.unwrap_err().retriable());
    }
    let st = state.lock().unwrap();
    assert_eq!(st.objects["ops-route"], untagged("ops-route"), "untouched");
    let writes: Vec<&Seen> = st
        .seen
        .iter()
        .filter(|s| s.method != "GET" && !s.path.ends_with("/sy-lb-a"))
        .collect();
    assert!(writes.is_empty(), "no write to others' objects: {writes:?}");
}

#[tokio::test]
async fn errors_say_whether_to_retry() {
    let (pki, state, addr, d) = setup_at().await;
    state.lock().unwrap().fail_with = Some(503);
    let e = d.list().await.unwrap_err();
    assert!(e.retriable(), "{e}");
    assert_eq!(e.kind(), "http_5xx");
    assert!(e.to_string().contains("injected"), "{e}");
    state.lock().unwrap().fail_with = Some(403);
    let e = d
        .put(&route("sy-lb-a", "192.0.2.10/32", &["10.0.0.1"]))
        .await
        .unwrap_err();
    assert!(!e.retriable(), "{e}");
    state.lock().unwrap().fail_with = None;
    let e = d
        .put(&route("sy-lb-a", "192.0.2.10/32", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RouterError::Config(_)),
        "empty next hops refused: {e}"
    );

    state.lock().unwrap().delay = Some(Duration::from_secs(3));
    let mut cfg = config(addr, &pki);
    cfg.timeout = Duration::from_millis(300);
    let slow = PolicyDriver::nsx(cfg).unwrap();
    let e = slow.list().await.unwrap_err();
    assert!(
        matches!(e, RouterError::Timeout { .. }) && e.retriable(),
        "{e}"
    );
}

#[tokio::test]
async fn tls_is_verified_both_ways() {
    let (pki, state, addr, _d) = setup_at().await;
    // A client that trusts another CA refuses the server.
    let other = new_pki();
    let mut cfg = config(addr, &pki);
    cfg.ca_pem = other.ca.clone().into_bytes();
    let e = PolicyDriver::nsx(cfg).unwrap().list().await.unwrap_err();
    assert!(matches!(e, RouterError::Tls { .. }), "{e:?}");
    assert!(!e.retriable());
    // A client certificate from another CA is refused by the server.
    let mut cfg = config(addr, &pki);
    cfg.cert_pem = other.client_cert.clone().into_bytes();
    cfg.key_pem = other.client_key.clone().into_bytes();
    let e = PolicyDriver::nsx(cfg).unwrap().list().await.unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(
        state.lock().unwrap().seen.is_empty(),
        "no request got through"
    );
    // Plain http and missing material are refused before any connection.
    let mut cfg = config(addr, &pki);
    cfg.endpoint = format!("http://{addr}");
    assert!(matches!(
        PolicyDriver::nsx(cfg),
        Err(RouterError::Config(_))
    ));
    let mut cfg = config(addr, &pki);
    cfg.ca_pem.clear();
    assert!(matches!(
        PolicyDriver::nsx(cfg),
        Err(RouterError::Config(_))
    ));
    let mut cfg = config(addr, &pki);
    cfg.key_pem.clear();
    assert!(matches!(
        PolicyDriver::lab(cfg),
        Err(RouterError::Config(_))
    ));
}

fn snat(id: &str, sources: &[&str], to: &str) -> NatRule {
    NatRule::snat(
        id,
        sources.iter().map(|s| s.parse().unwrap()).collect(),
        to.parse().unwrap(),
        "ns",
        format!("switchyard {id}"),
    )
    .with_namespace_uid("uid-1")
}

#[tokio::test]
async fn nat_rules_send_the_exact_requests_and_leave_others_alone() {
    let (_pki, state, d) = setup().await;
    let nat = d.nat().expect("the Policy API driver writes NAT rules");
    let r = snat(
        "lab-a-ns-blue",
        &["10.30.0.64/26", "10.30.0.0/26"],
        "192.0.2.7",
    );
    nat.put_nat(&r).await.unwrap();
    let r2 = snat("lab-a-ns-blue", &["10.30.0.0/26"], "192.0.2.7");
    nat.put_nat(&r2).await.unwrap();
    assert_eq!(
        nat.get_nat("lab-a-ns-blue").await.unwrap(),
        Some(r2.clone())
    );
    {
        let st = state.lock().unwrap();
        let path = format!("{NAT}/lab-a-ns-blue");
        let lines: Vec<String> = st
            .seen
            .iter()
            .take(4)
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        assert_eq!(
            lines,
            [
                format!("GET {path}"),
                format!("PUT {path}"),
                format!("GET {path}"),
                format!("PUT {path}"),
            ]
        );
        assert_eq!(
            st.seen[1].body.clone().unwrap(),
            json!({"resource_type": "PolicyNatRule", "id": "lab-a-ns-blue",
                   "display_name": "switchyard lab-a-ns-blue", "action": "SNAT",
                   "source_network": "10.30.0.0/26,10.30.0.64/26",
                   "translated_network": "192.0.2.7", "enabled": true,
                   "tags": [{"scope": TAG_CLUSTER, "tag": "lab-a"}, {"scope": TAG_OWNER, "tag": "ns"},
                            {"scope": TAG_NAMESPACE_UID, "tag": "uid-1"}]}),
            "create: no _revision"
        );
        assert_eq!(st.seen[3].body.as_ref().unwrap()["_revision"], json!(1));
        assert!(st.objects.is_empty(), "no static route written");
    }
    // An untagged rule and another cluster's: not listed, never changed or deleted.
    let ops = json!({"resource_type": "PolicyNatRule", "id": "ops-snat", "action": "SNAT",
                     "source_network": "10.9.0.0/16", "translated_network": "192.0.2.1",
                     "enabled": true, "tags": [], "_revision": 3});
    let mut other = ops.clone();
    other["id"] = json!("other-snat");
    other["tags"] = json!([{"scope": TAG_CLUSTER, "tag": "lab-b"}]);
    state
        .lock()
        .unwrap()
        .nat
        .insert("ops-snat".into(), ops.clone());
    state
        .lock()
        .unwrap()
        .nat
        .insert("other-snat".into(), other.clone());
    nat.put_nat(&snat("lab-a-ns-green", &["10.30.1.0/26"], "192.0.2.8"))
        .await
        .unwrap();
    let ids: Vec<String> = nat
        .list_nat()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["lab-a-ns-blue", "lab-a-ns-green"], "ours only, paged");
    for id in ["ops-snat", "other-snat"] {
        let put = nat.put_nat(&snat(id, &["10.30.2.0/26"], "192.0.2.9")).await;
        assert!(matches!(put, Err(RouterError::NotOwned { .. })), "{put:?}");
        assert!(!put.unwrap_err().retriable());
        let del = nat.delete_nat(id).await;
        assert!(matches!(del, Err(RouterError::NotOwned { .. })), "{del:?}");
    }
    nat.delete_nat("lab-a-ns-blue").await.unwrap();
    nat.delete_nat("lab-a-ns-blue").await.unwrap(); // already gone: fine
    let st = state.lock().unwrap();
    assert_eq!(st.nat["ops-snat"], ops, "untouched");
    assert_eq!(st.nat["other-snat"], other, "untouched");
    assert!(!st.nat.contains_key("lab-a-ns-blue"));
    assert!(st.seen.iter().any(|s| s.path == format!("{NAT}?cursor=2")));
    for s in &st.seen {
        assert!(
            !s.authorization && !s.allow_overwrite && s.client_cert,
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn nat_rules_edited_on_the_router_read_as_they_are_and_bad_rules_are_refused() {
    let (_pki, state, d) = setup().await;
    let nat = d.nat().unwrap();
    let r = snat("lab-a-ns-blue", &["10.30.0.0/26"], "192.0.2.7");
    nat.put_nat(&r).await.unwrap();
    // Someone turns it into a disabled rule: reads show it, and it differs.
    state.lock().unwrap().nat.get_mut("lab-a-ns-blue").unwrap()["enabled"] = json!(false);
    let got = nat.get_nat("lab-a-ns-blue").await.unwrap().unwrap();
    assert!(!got.enabled && !got.same_rule(&r), "{got:?}");
    // No sources, or a family mix: refused before any request.
    let before = state.lock().unwrap().seen.len();
    let e = nat.put_nat(&snat("x", &[], "192.0.2.7")).await.unwrap_err();
    assert!(matches!(e, RouterError::Config(_)), "{e}");
    let e = nat
        .put_nat(&snat("x", &["fd00::/64"], "192.0.2.7"))
        .await
        .unwrap_err();
    assert!(matches!(e, RouterError::Config(_)), "{e}");
    let e = nat
        .put_nat(&snat("bad/id", &["10.0.0.0/8"], "192.0.2.7"))
        .await
        .unwrap_err();
    assert!(matches!(e, RouterError::Config(_)), "{e}");
    assert_eq!(state.lock().unwrap().seen.len(), before, "nothing sent");
    // Router failures say whether to retry.
    state.lock().unwrap().fail_with = Some(503);
    let e = nat.list_nat().await.unwrap_err();
    assert!(e.retriable() && e.kind() == "http_5xx", "{e}");
    state.lock().unwrap().fail_with = Some(403);
    let e = nat.put_nat(&r).await.unwrap_err();
    assert!(!e.retriable(), "{e}");
}
