//! The in-memory Kubernetes API server.

pub mod error;
pub mod http;
pub mod openapi;
pub mod patch;
pub mod pods;
pub mod protobuf;
pub mod resources;
pub mod scale;
pub mod selector;
pub mod store;
pub mod table;
pub mod time;
pub mod websocket;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use store::{Store, StoreOptions};

/// Largest request body accepted (CRDs with big schemas fit comfortably).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Options of [`ApiServer::start`].
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Events kept for resuming watches; older resourceVersions get `410 Gone`.
    pub history_limit: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Service ClusterIP range (ClusterIP and NodePort allocation); `None` disables it.
    pub service_cidr: Option<Ipv4Net>,
    /// Cluster pod CIDR split into per-node ranges by the node IPAM controller; `None` disables it.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Prefix length of each node's pod CIDR.
    pub node_cidr_prefix: u8,
    /// Run the EndpointSlice controller.
    pub endpointslice_controller: bool,
    /// Serve the `default/kubernetes` Service (ClusterIP: the first address of
    /// `service_cidr`, port 443 `https`) with its EndpointSlice and Endpoints `kubernetes`
    /// pointing at the advertised address and the listening port, kept (recreated when
    /// deleted, endpoint restored) as kube-apiserver keeps them. Needs `service_cidr`.
    pub kubernetes_service: bool,
    /// Address other nodes and pods reach this server at, published as the endpoint of the
    /// `kubernetes` Service. `None`: the listen address when it is a specific IPv4 address
    /// (loopback included: a loopback server is only reachable there), else (listening on
    /// `0.0.0.0`) the source address of the host's default route, as kube-apiserver picks
    /// its `--advertise-address`, or 127.0.0.1 without one.
    pub advertise_address: Option<Ipv4Addr>,
    /// The node side of `pods/exec` and `pods/log` (the netns lab's runtime); `None`: exec
    /// and logs are refused with the reason.
    pub pod_runtime: Option<Arc<dyn pods::PodRuntime>>,
    /// Run the Deployment and ReplicaSet controllers ([`crate::workloads`]).
    pub workload_controllers: bool,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(15),
            service_cidr: Some(
                Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 16).expect("valid prefix"),
            ),
            cluster_cidr: Some(
                Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid prefix"),
            ),
            node_cidr_prefix: 24,
            endpointslice_controller: true,
            kubernetes_service: true,
            advertise_address: None,
            pod_runtime: None,
            workload_controllers: true,
        }
    }
}

impl ApiServerOptions {
    /// Options with every controller off (plain storage: no allocation, no `kubernetes`
    /// Service).
    pub fn without_controllers() -> Self {
        ApiServerOptions {
            service_cidr: None,
            cluster_cidr: None,
            endpointslice_controller: false,
            kubernetes_service: false,
            workload_controllers: false,
            ..Self::default()
        }
    }

    /// The endpoint published for the `kubernetes` Service when the server listens on
    /// `bound` (see [`ApiServerOptions::advertise_address`]).
    pub fn advertised_endpoint(&self, bound: SocketAddr) -> SocketAddrV4 {
        let ip = self.advertise_address.unwrap_or_else(|| match bound.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => default_route_source().unwrap_or(Ipv4Addr::LOCALHOST),
        });
        SocketAddrV4::new(ip, bound.port())
    }
}

/// The local address the host would use towards the Internet (its default route's source),
/// found by connecting a UDP socket, which sends nothing.
fn default_route_source() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Error starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid options.
    #[error("invalid options: {0}")]
    Options(String),
}

/// Entry point: `ApiServer::start(opts)`.
#[derive(Debug)]
pub struct ApiServer;

/// A running server. Dropping it shuts it down (without waiting).
#[derive(Debug)]
pub struct ApiServerHandle {
    addr: SocketAddr,
    store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds, starts serving and starts the configured controllers. Must be called inside a
    /// tokio runtime.
    pub async fn start(opts: ApiServerOptions) -> Result<ApiServerHandle, StartError> {
        if opts.node_cidr_prefix > 32 {
            return Err(StartError::Options(format!(
                "node CIDR prefix /{} is not an IPv4 prefix",
                opts.node_cidr_prefix
            )));
        }
        if let Some(c) = opts.cluster_cidr
            && opts.node_cidr_prefix < c.prefix_len()
        {
            return Err(StartError::Options(format!(
                "node CIDR prefix /{} is shorter than the cluster CIDR {c}",
                opts.node_cidr_prefix
            )));
        }
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: opts.listen,
            source,
        })?;
        let store = Store::new(StoreOptions {
            history_limit: opts.history_limit,
            service_cidr: opts.service_cidr,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = http::HttpState {
            store: store.clone(),
            bookmark_interval: opts.bookmark_interval,
            shutdown: shutdown_rx.clone(),
            pods: opts.pod_runtime.clone(),
        };
        let app = axum::Router::new().fallback(http::handle).with_state(state);
        let mut graceful = shutdown_rx.clone();
        let server = tokio::spawn(async move {
            // TCP_NODELAY on every connection, as kube-apiserver (Go) has it: with Nagle a
            // small response or watch event can wait for the client's delayed ACK (~40 ms).
            let listener = listener.tap_io(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY on an API connection");
                }
            });
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = graceful.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "API server stopped");
            }
        });
        let mut tasks = vec![server];
        let kubernetes = if opts.kubernetes_service {
            let cidr = opts.service_cidr.ok_or_else(|| {
                StartError::Options("the kubernetes Service needs a service CIDR".into())
            })?;
            let endpoint = opts.advertised_endpoint(addr);
            let service = crate::controllers::KubernetesService::new(cidr, endpoint)
                .map_err(StartError::Options)?;
            // In place before the server answers anything, as in a real cluster.
            service.reconcile(&store);
            tracing::info!(%endpoint, cluster_ip = %service.cluster_ip, "serving the kubernetes Service");
            Some(service)
        } else {
            None
        };
        if opts.workload_controllers {
            tasks.push(crate::workloads::start(&store, shutdown_rx.clone()));
        }
        tasks.extend(crate::controllers::start(
            &store,
            &opts,
            kubernetes,
            shutdown_rx,
        ));
        tracing::info!(%addr, "lab API server listening");
        Ok(ApiServerHandle {
            addr,
            store,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

impl ApiServerHandle {
    /// Base URL, e.g. `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store, for in-process inspection and direct writes.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Writes a kubeconfig (context `switchyard-lab`, no auth) pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        crate::kubeconfig::write(path, &self.url())
    }

    /// Stops serving, ends watches and controllers, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("an API server task did not stop within 5s");
            }
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
