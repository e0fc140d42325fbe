//! `switchyard-controller`: addresses for LoadBalancer Services from `IPPool`s, and
//! namespace networks ([`namespaces`]: a `Segment` per opted-in namespace).
//!
//! Replicas campaign for a Lease ([`leader`]); the leader watches Services, IPPools and
//! Namespaces, rebuilds the allocation from every Service's `status.loadBalancer.ingress`
//! before serving any pending Service ([`lead`]), and allocates with [`allocator`].
//! In supervisor mode ([`supervisor`]) the addresses come from a supervisor cluster instead.
//! See `docs/load-balancer.md`.

pub mod allocator;
pub mod lead;
pub mod leader;
pub mod metrics;
pub mod namespaces;
mod pass;
pub mod routes;
pub mod service;
pub mod supervisor;
mod watched;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

/// How one replica runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Election timings.
    pub timings: leader::Timings,
    /// Full pass period without changes.
    pub resync: Duration,
    /// Period of the routers' read-compare-repair without changes (Route mode).
    pub route_resync: Duration,
    /// Cluster name: the `switchyard.io/cluster` tag of the routes and Segments it writes.
    pub cluster: String,
    /// Namespace networks (`None`: off).
    pub namespace_networks: Option<namespaces::Config>,
    /// Namespace of the agents' IPAM ConfigMaps (`switchyard-ipam-<segment>`).
    pub ipam_namespace: String,
    /// Supervisor mode: addresses from a supervisor cluster instead of IPPools (`None`: pool
    /// mode).
    pub supervisor: Option<supervisor::Config>,
}

/// Campaigns, and leads while elected, until `shutdown` completes; then gives the Lease up
/// (so a standby takes over at once). Dropping the future instead is a crash: the Lease
/// stays until it expires.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: Arc<metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let elector = leader::Elector::new(
        client.clone(),
        &opts.namespace,
        &opts.lease_name,
        &opts.identity,
        opts.timings,
    );
    let fence = elector.fence();
    let mut leading = elector.subscribe();
    let elector = Arc::new(elector);
    let campaign = tokio::spawn({
        let e = elector.clone();
        async move { leader::Elector::run_shared(e).await }
    });
    let _guard = AbortOnDrop(campaign);
    tokio::select! {
        _ = serve(client, &opts, metrics, fence, &mut leading) => {}
        _ = shutdown => {}
    }
    _guard.0.abort();
    elector.release().await;
}

async fn serve(
    client: Client,
    opts: &Options,
    metrics: Arc<metrics::Metrics>,
    fence: leader::Fence,
    leading: &mut tokio::sync::watch::Receiver<bool>,
) {
    loop {
        metrics.leader.set(0);
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        metrics.leader.set(1);
        let ctx = lead::Ctx {
            client: client.clone(),
            fence: fence.clone(),
            metrics: metrics.clone(),
            identity: opts.identity.clone(),
            resync: opts.resync,
            route_resync: opts.route_resync,
            namespace: opts.namespace.clone(),
            cluster: opts.cluster.clone(),
        };
        let networks = async {
            match &opts.namespace_networks {
                Some(config) => {
                    namespaces::run(namespaces::Ctx {
                        client: client.clone(),
                        fence: fence.clone(),
                        metrics: metrics.clone(),
                        cluster: opts.cluster.clone(),
                        config: config.clone(),
                        ipam_namespace: opts.ipam_namespace.clone(),
                        resync: opts.resync,
                        namespace: opts.namespace.clone(),
                        nat_resync: opts.route_resync,
                    })
                    .await;
                    tracing::warn!("namespace networks: stopped (fenced)");
                }
                None => std::future::pending().await,
            }
        };
        let provider = async {
            match &opts.supervisor {
                None => lead::lead(ctx).await,
                Some(config) => {
                    supervisor::run(supervisor::Ctx {
                        client: client.clone(),
                        fence: fence.clone(),
                        metrics: metrics.clone(),
                        namespace: opts.namespace.clone(),
                        cluster: opts.cluster.clone(),
                        resync: opts.resync,
                        config: config.clone(),
                    })
                    .await
                }
            }
        };
        tokio::select! {
            r = provider => if let Err(e) = r {
                tracing::warn!(error = %e, "leadership term ended");
            },
            _ = networks => {}
            _ = leading.wait_for(|l| !*l) => tracing::warn!("stopped leading"),
        }
        // A failed term waits for the next renewal before starting over.
        tokio::time::sleep(opts.timings.retry_period).await;
    }
}

#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
