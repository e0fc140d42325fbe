//! Prometheus metrics (prefix `switchyard_cpvip`) and the `/metrics` + `/healthz` server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 for each next hop of the route as last written or confirmed, by `vip` and `address`.
    pub route_next_hop: Family<Labels, Gauge>,
    /// Number of next hops of the route, by `vip`.
    pub route_next_hops: Family<Labels, Gauge>,
    /// Last probe result (1 pass, 0 fail) by `vip`, `node`/`address` and `probe` (`local`: a
    /// node's own apiserver; `leader`: the leader's probe over TLS).
    pub probe_ok: Family<Labels, Gauge>,
    /// Hysteresis state (1 healthy) by the same labels.
    pub probe_healthy: Family<Labels, Gauge>,
    /// Seconds since the leader's last successful reconcile, by `vip`.
    pub seconds_since_reconcile: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Route writes (repairs and changes), by `vip`.
    pub route_writes: Family<Labels, Counter>,
    /// Failed router calls, by `kind`.
    pub router_errors: Family<Labels, Counter>,
    /// 1 while this daemon leads.
    pub leader: Gauge,
    /// 1 while this node holds the VIP on `lo`, by `vip`.
    pub vip_present: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard_cpvip");
        let m = Metrics {
            registry: Registry::default(),
            route_next_hop: Family::default(),
            route_next_hops: Family::default(),
            probe_ok: Family::default(),
            probe_healthy: Family::default(),
            seconds_since_reconcile: Family::default(),
            route_writes: Family::default(),
            router_errors: Family::default(),
            leader: Gauge::default(),
            vip_present: Family::default(),
        };
        registry.register(
            "route_next_hop",
            "1 for each next hop of the route",
            m.route_next_hop.clone(),
        );
        registry.register(
            "route_next_hops",
            "Number of next hops of the route",
            m.route_next_hops.clone(),
        );
        registry.register(
            "probe_ok",
            "Last /readyz probe result (1 pass)",
            m.probe_ok.clone(),
        );
        registry.register(
            "probe_healthy",
            "Probe hysteresis state (1 healthy)",
            m.probe_healthy.clone(),
        );
        registry.register(
            "since_last_successful_reconcile_seconds",
            "Seconds since the leader last reconciled the route successfully",
            m.seconds_since_reconcile.clone(),
        );
        registry.register(
            "route_writes",
            "Route writes (changes and repairs)",
            m.route_writes.clone(),
        );
        registry.register(
            "router_errors",
            "Failed router calls by error kind",
            m.router_errors.clone(),
        );
        registry.register("leader", "1 while this daemon leads", m.leader.clone());
        registry.register(
            "vip_present",
            "1 while this node holds the VIP on lo",
            m.vip_present.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        switchyard_daemon::http::encode(&self.registry)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (both: the process answers) on `addr`
/// until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app =
        switchyard_daemon::http::router(switchyard_daemon::Health::new(), move || metrics.render());
    let (_, server) = switchyard_daemon::http::bind(addr, app).await?;
    server.await
}
