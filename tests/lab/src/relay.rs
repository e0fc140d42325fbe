//! `switchyard-lab apiserver-relay`: a control-plane node's apiserver, for the control-plane
//! VIP (`switchyard-cpvip`). TLS on `listen` with a certificate of the lab's (the VIP and the
//! node's address in its SANs); `GET /readyz` is answered by the relay itself according to
//! its mode; everything else is relayed as bytes to the lab API server (plain HTTP).
//!
//! `GET /connections` on the control address: TLS connections accepted so far per client
//! address (JSON object), to see how a load balancer spread them.
//!
//! Modes (switched with `PUT /mode` on the plain-HTTP control address, body `ok`, `fail`,
//! `hang` or `die`): `ok` answers `/readyz` 200; `fail` answers 500 and keeps relaying (an
//! apiserver shutting down gracefully); `hang` accepts TCP and never answers; `die` exits
//! the process (connections refused from then on).
//!
//! With an endpoint address ([`run`]'s `lease_address`) the relay renews a Lease for it in
//! the lab API server every 5 s (15 s duration), in every mode, as a live kube-apiserver
//! renews its endpoint lease; the lab's keeper of `default/kubernetes` lists the addresses
//! of unexpired Leases as the endpoints (`controllers::KubernetesService::endpoint_leases`).
//! Only `die` (or killing the process) stops the renewals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `/readyz` answers 200, requests relayed.
pub const MODE_OK: u8 = 0;
/// `/readyz` answers 500, requests relayed.
pub const MODE_FAIL: u8 = 1;
/// Connections accepted and never answered.
pub const MODE_HANG: u8 = 2;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Certificate or key unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What a relay serves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// TLS address (the node's apiserver address, e.g. `0.0.0.0:6443`).
    pub listen: SocketAddr,
    /// The lab API server (plain HTTP).
    pub upstream: SocketAddr,
    /// Server certificate (PEM; the VIP and the node's address in its SANs).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// Connections accepted, per client address.
type Peers = Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::IpAddr, u64>>>;

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    peers: Peers,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts serving.
    pub async fn start(cfg: &RelayConfig) -> Result<Relay, RelayError> {
        let certs = CertificateDer::pem_file_iter(&cfg.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| RelayError::Tls(format!("{}: {e}", cfg.cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key)
            .map_err(|e| RelayError::Tls(format!("{}: {e}", cfg.key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| RelayError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RelayError::Io {
                what: format!("binding {}", cfg.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RelayError::Io {
            what: "local address".into(),
            source,
        })?;
        let mode = Arc::new(AtomicU8::new(MODE_OK));
        let peers = Peers::default();
        let upstream = cfg.upstream;
        let m = mode.clone();
        let p = peers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                if let Ok(mut counts) = p.lock() {
                    *counts.entry(peer.ip()).or_default() += 1;
                }
                tokio::spawn(serve(tcp, acceptor.clone(), upstream, m.clone()));
            }
        });
        Ok(Relay {
            addr,
            mode,
            peers,
            task,
        })
    }

    /// Connections accepted so far, per client address.
    pub fn connections(&self) -> std::collections::BTreeMap<std::net::IpAddr, u64> {
        self.peers.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The TLS address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode ([`MODE_OK`], [`MODE_FAIL`], [`MODE_HANG`]).
    pub fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: SocketAddr,
    mode: Arc<AtomicU8>,
) {
    if mode.load(Ordering::SeqCst) == MODE_HANG {
        // Hold the connection without a word until the mode changes (then drop it).
        while mode.load(Ordering::SeqCst) == MODE_HANG {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(tcp);
        return;
    }
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    // The first request's head decides: /readyz is ours, the rest is relayed.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head[..head.len().min(256)]).to_string();
    let path = line.split_whitespace().nth(1).unwrap_or_default();
    if line.starts_with("GET ") && (path == "/readyz" || path.starts_with("/readyz?")) {
        let (status, body) = match mode.load(Ordering::SeqCst) {
            MODE_OK => ("200 OK", "ok"),
            _ => (
                "500 Internal Server Error",
                "readyz check failed (relay mode fail)",
            ),
        };
        let _ = tls
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        let _ = tls.shutdown().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    if up.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
}

/// How often a relay renews its endpoint Lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(5);

/// Name of the endpoint Lease of `address`.
pub fn lease_name(address: std::net::Ipv4Addr) -> String {
    format!(
        "apiserver-endpoint-{}",
        address.to_string().replace('.', "-")
    )
}

/// Renews the endpoint Lease of `address` in the lab API server at `upstream` every
/// [`LEASE_RENEW`], forever (failures are logged and retried at the next renewal).
pub async fn renew_lease(upstream: SocketAddr, address: std::net::Ipv4Addr) {
    use crate::controllers::{
        ENDPOINT_LEASE_NAMESPACE, ENDPOINT_LEASE_SECONDS, LABEL_ENDPOINT_LEASE,
    };
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let client = match format!("http://{upstream}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
        .and_then(|u| kube::Client::try_from(kube::Config::new(u)).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "relay: no client for the endpoint Lease");
            return;
        }
    };
    let leases: Api<Lease> = Api::namespaced(client, ENDPOINT_LEASE_NAMESPACE);
    let name = lease_name(address);
    loop {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": ENDPOINT_LEASE_NAMESPACE,
                         "labels": {LABEL_ENDPOINT_LEASE: "true"}},
            "spec": {"holderIdentity": address.to_string(),
                     "leaseDurationSeconds": ENDPOINT_LEASE_SECONDS,
                     "renewTime": now},
        });
        let result = match leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&lease))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => match serde_json::from_value(lease) {
                Ok(l) => leases.create(&PostParams::default(), &l).await.map(drop),
                Err(e) => {
                    tracing::error!(error = %e, "relay: endpoint Lease");
                    return;
                }
            },
            r => r.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, lease = %name, "relay: renewing the endpoint Lease failed");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// The `apiserver-relay` command: the relay plus its control address (`PUT /mode`), until
/// killed or switched to `die`; with `lease_address`, renewing its endpoint Lease
/// ([`renew_lease`]).
pub async fn run(
    cfg: RelayConfig,
    control: SocketAddr,
    ready_file: Option<PathBuf>,
    lease_address: Option<std::net::Ipv4Addr>,
) -> Result<(), RelayError> {
    use axum::routing::{get, put};
    let relay = Arc::new(Relay::start(&cfg).await?);
    if let Some(address) = lease_address {
        tokio::spawn(renew_lease(cfg.upstream, address));
    }
    let r = relay.clone();
    let counts = relay.clone();
    let app = axum::Router::new()
        .route(
            "/connections",
            get(move || {
                let c = counts.connections();
                async move {
                    let map: serde_json::Map<String, serde_json::Value> = c
                        .into_iter()
                        .map(|(ip, n)| (ip.to_string(), n.into()))
                        .collect();
                    serde_json::Value::Object(map).to_string()
                }
            }),
        )
        .route(
            "/mode",
            put(move |body: String| {
                let r = r.clone();
                async move {
                    match body.trim() {
                        "ok" => r.set_mode(MODE_OK),
                        "fail" => r.set_mode(MODE_FAIL),
                        "hang" => r.set_mode(MODE_HANG),
                        "die" => {
                            tracing::warn!("relay: die");
                            std::process::exit(137);
                        }
                        other => {
                            return (
                                http::StatusCode::BAD_REQUEST,
                                format!("mode {other:?}: ok, fail, hang or die\n"),
                            );
                        }
                    }
                    (http::StatusCode::OK, format!("{}\n", body.trim()))
                }
            }),
        );
    let listener = TcpListener::bind(control)
        .await
        .map_err(|source| RelayError::Io {
            what: format!("binding {control}"),
            source,
        })?;
    if let Some(f) = ready_file {
        std::fs::write(&f, relay.addr().to_string()).map_err(|source| RelayError::Io {
            what: format!("writing {}", f.display()),
            source,
        })?;
    }
    axum::serve(listener, app)
        .await
        .map_err(|source| RelayError::Io {
            what: "control server".into(),
            source,
        })
}
