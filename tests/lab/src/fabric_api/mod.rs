//! `switchyard-lab fabric-api`: the lab's router API.
//!
//! Serves the NSX-T Policy API subset the router drivers speak (tier-1 static routes, their
//! realization status, tier-1 SNAT rules in the `USER` NAT section; see `switchyard-router`)
//! over HTTPS with the lab CA, requiring a client certificate signed by it, and applies each
//! route to the kernel of the namespace it runs in (the lab's fabric) as an ECMP route, and
//! the SNAT rules as one nftables table for traffic leaving through [`NAT_OUT_INTERFACE`]
//! ([`kernel`]). Reads report the kernel's next hops, so a route edited out of band shows as
//! it is.
//!
//! Lab endpoints (same TLS and client certificate):
//! - `GET|PUT /lab/v1/faults` `{"status": 503, "count": 5, "latency_ms": 200}`: answer the
//!   next `count` Policy API requests (all, when `count` is absent) with `status`, and delay
//!   every answer by `latency_ms`; `{}` clears.
//! - `GET /lab/v1/requests`: the Policy API requests served (time, method, path, status).
//! - `PUT /lab/v1/kernel-routes` `{"network": ..., "next_hops": [{"ip_address": ...}]}`: edit
//!   the kernel route out of band (empty `next_hops` removes it), leaving the object as it is.

pub mod in_process;
pub mod kernel;
pub mod pki;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use store::{Faults, Kernel, Served, Snat, Store};

/// The fabric's interface toward the internet namespace (`cluster::fabric`): SNAT rules
/// translate traffic leaving through it only.
pub const NAT_OUT_INTERFACE: &str = "internet";
/// Default port of the fabric API.
pub const DEFAULT_PORT: u16 = 8443;
/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// A failure starting the fabric API.
#[derive(Debug, thiserror::Error)]
pub enum FabricApiError {
    /// Reading a PEM file failed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Binding or netlink failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// TLS material of the server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA the client certificates must be signed by (PEM).
    pub client_ca: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, FabricApiError> {
    std::fs::read(path).map_err(|e| FabricApiError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn server_config(tls: &ServerTls) -> Result<rustls::ServerConfig, FabricApiError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| FabricApiError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&tls.client_ca)?) {
        let c = c.map_err(|e| pem_err(&tls.client_ca, &e))?;
        roots.add(c).map_err(|e| pem_err(&tls.client_ca, &e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| FabricApiError::Tls(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&tls.cert, &e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| pem_err(&tls.key, &e))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
        })
        .map_err(|e| FabricApiError::Tls(e.to_string()))
}

/// A running fabric API.
#[derive(Debug)]
pub struct FabricApi {
    addr: SocketAddr,
    store: Arc<Store>,
    task: tokio::task::JoinHandle<()>,
}

impl FabricApi {
    /// Starts serving on `listen` with `tls`, applying routes through `kernel`.
    pub async fn start(
        listen: SocketAddr,
        tls: &ServerTls,
        kernel: Box<dyn Kernel>,
    ) -> Result<Self, FabricApiError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(tls)?));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| FabricApiError::Io {
                what: format!("binding {listen}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| FabricApiError::Io {
            what: "local address".into(),
            source,
        })?;
        let store = Arc::new(Store::new(kernel));
        let task = tokio::spawn(accept_loop(listener, acceptor, store.clone()));
        Ok(Self { addr, store, task })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state (for in-process tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FabricApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<Store>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, std::convert::Infallible>(serve_one(&store, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn serve_one(store: &Store, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authorization = req.headers().contains_key(http::header::AUTHORIZATION);
    let overwrite = req.headers().contains_key("x-allow-overwrite");
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, value) = store
        .handle(&method, &path, authorization, overwrite, &body)
        .await;
    tracing::debug!(%method, %path, status = status.as_u16(), "served");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

/// Runs the fabric API with the kernel of this process's namespace until SIGINT/SIGTERM;
/// writes `ready_file` once listening.
pub async fn run(
    listen: SocketAddr,
    tls: ServerTls,
    ready_file: Option<PathBuf>,
) -> Result<(), FabricApiError> {
    let kernel = kernel::Netlink::open(NAT_OUT_INTERFACE).map_err(|source| FabricApiError::Io {
        what: "opening netlink".into(),
        source,
    })?;
    let api = FabricApi::start(listen, &tls, Box::new(kernel)).await?;
    tracing::info!(addr = %api.addr(), "fabric API serving");
    if let Some(f) = ready_file {
        std::fs::write(&f, api.addr().to_string()).map_err(|source| FabricApiError::Io {
            what: format!("writing {}", f.display()),
            source,
        })?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| FabricApiError::Io {
            what: "SIGTERM handler".into(),
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    api.stop();
    Ok(())
}
