//! `switchyard-cpvip`: a highly available Kubernetes API address.
//!
//! One daemon per control-plane node (host networking). Every daemon probes its own
//! apiserver's `/readyz` ([`node`]), holds the VIP of each `ControlPlaneVIP` on `lo` only
//! while that apiserver is healthy, and publishes what it holds in a Lease per node. The
//! daemon that wins the `switchyard-cpvip` Lease ([`lead`]) routes the VIP on the upstream
//! router (one static route, ECMP over the nodes that are ready in `default/kubernetes`,
//! hold the VIP and pass its own probe over verified TLS), through `switchyard-router`.
//! See `docs/control-plane-vip.md`.

pub mod decide;
pub mod health;
pub mod lead;
pub mod metrics;
pub mod node;
pub mod probe;
mod status;
pub mod vip;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use switchyard_api::leader::{Elector, Timings};

/// Namespace of the `kubernetes` Service and its EndpointSlices.
pub const KUBERNETES_NAMESPACE: &str = "default";
/// Name of the leader-election Lease.
pub const LEASE_NAME: &str = "switchyard-cpvip";

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name.
    pub node: String,
    /// This node's address: the next hop the route uses for it.
    pub node_address: std::net::IpAddr,
    /// The daemon's namespace (Leases, the router credentials Secret).
    pub namespace: String,
    /// Cluster name (the router tag `switchyard.io/cluster`).
    pub cluster: String,
    /// PEM CA bundle of the apiservers (probes verify against it).
    pub apiserver_ca: Vec<u8>,
    /// Leader election timings.
    pub timings: Timings,
    /// Read-compare-repair period of the route without changes (at most 10 s).
    pub drift_period: Duration,
    /// How long a node waits for the leader to confirm it is out of the route before it
    /// removes the VIP anyway (its apiserver may be the one it cannot reach).
    pub leave_timeout: Duration,
    /// This node's apiserver, overriding the ControlPlaneVIP's `localEndpoint` (a node whose
    /// apiserver listens elsewhere than the others).
    pub local_endpoint: Option<std::net::SocketAddr>,
    /// Whether to manage `lo` and the ARP sysctls (false: report only, for tests).
    pub manage_vip: bool,
}

/// Runs the node loop and the leader candidate until `shutdown` resolves.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: Arc<metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let elector = Arc::new(Elector::new(
        client.clone(),
        &opts.namespace,
        LEASE_NAME,
        &opts.node,
        opts.timings,
    ));
    // One task: aborting it (a crash in the tests) stops everything, like a killed process.
    let campaign = Elector::run_shared(elector.clone());
    let node = node::run(client.clone(), opts.clone(), metrics.clone());
    let lead = lead::run(client, opts, metrics, elector.subscribe(), elector.fence());
    tokio::select! {
        _ = shutdown => {}
        _ = campaign => {}
        _ = node => {}
        _ = lead => {}
    }
    elector.release().await;
}
