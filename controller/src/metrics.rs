//! Prometheus metrics and the `/metrics` + `/healthz` server.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Addresses given to Services.
    pub allocations: Counter,
    /// Addresses taken back from Services.
    pub releases: Counter,
    /// Services waiting for an address.
    pub pending: Gauge,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Duration of a reconcile pass.
    pub reconcile_seconds: Histogram,
    /// Passes, by kind: `full` (every Service) or `changed` (the changed Services only).
    pub passes: Family<Vec<(String, String)>, Counter>,
    /// Failed router driver calls, by driver and error kind (`http_5xx`, `timeout`, ...).
    pub driver_errors: Family<Vec<(String, String)>, Counter>,
    /// Status writes refused with 409 (retried from fresh state).
    pub conflicts: Counter,
    /// Namespace networks: writes to the API (0 in a pass with nothing to change).
    pub ns_writes: Counter,
    /// Namespace networks: passes completed.
    pub ns_passes: Counter,
    /// Namespace networks: Segments created.
    pub ns_created: Counter,
    /// Namespace networks: Segments deleted.
    pub ns_deleted: Counter,
    /// Namespace networks: Segments carrying a namespace UID.
    pub ns_networks: Gauge,
    /// Namespace networks: namespaces waiting for a free VLAN, subnet or SNAT address.
    pub ns_shortages: Gauge,
    /// Namespace networks: duration of a pass.
    pub ns_reconcile_seconds: Histogram,
    /// Namespace networks: SNAT rules on the router as wanted, after the last sync.
    pub ns_nat_rules: Gauge,
    /// Namespace networks: SNAT rules whose last write or delete failed (or every wanted
    /// rule, when the router could not be read).
    pub ns_nat_failing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard_controller");
        let m = Metrics {
            allocations: Counter::default(),
            releases: Counter::default(),
            pending: Gauge::default(),
            leader: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            passes: Family::default(),
            driver_errors: Family::default(),
            conflicts: Counter::default(),
            ns_writes: Counter::default(),
            ns_passes: Counter::default(),
            ns_created: Counter::default(),
            ns_deleted: Counter::default(),
            ns_networks: Gauge::default(),
            ns_shortages: Gauge::default(),
            ns_reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ns_nat_rules: Gauge::default(),
            ns_nat_failing: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "allocations",
            "Addresses given to Services",
            m.allocations.clone(),
        );
        registry.register(
            "releases",
            "Addresses taken back from Services",
            m.releases.clone(),
        );
        registry.register(
            "pending_services",
            "Services waiting for an address",
            m.pending.clone(),
        );
        registry.register("leader", "1 while this replica leads", m.leader.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "passes",
            "Allocation passes, by kind: full (every Service) or changed (the changed ones)",
            m.passes.clone(),
        );
        registry.register(
            "driver_errors",
            "Failed router driver calls, by driver and error kind",
            m.driver_errors.clone(),
        );
        registry.register(
            "status_conflicts",
            "Writes refused with 409 and retried from fresh state",
            m.conflicts.clone(),
        );
        registry.register(
            "namespace_network_writes",
            "API writes of the namespace-network task",
            m.ns_writes.clone(),
        );
        registry.register(
            "namespace_network_passes",
            "Passes of the namespace-network task",
            m.ns_passes.clone(),
        );
        registry.register(
            "namespace_networks_created",
            "Segments created for namespaces",
            m.ns_created.clone(),
        );
        registry.register(
            "namespace_networks_deleted",
            "Segments of gone namespaces deleted",
            m.ns_deleted.clone(),
        );
        registry.register(
            "namespace_networks",
            "Segments that belong to a namespace",
            m.ns_networks.clone(),
        );
        registry.register(
            "namespace_network_shortages",
            "Namespaces waiting for a free VLAN, subnet or SNAT address",
            m.ns_shortages.clone(),
        );
        registry.register(
            "namespace_network_pass_seconds",
            "Duration of a namespace-network pass",
            m.ns_reconcile_seconds.clone(),
        );
        registry.register(
            "namespace_nat_rules",
            "SNAT rules of namespace networks held on the router",
            m.ns_nat_rules.clone(),
        );
        registry.register(
            "namespace_nat_failing",
            "SNAT rules of namespace networks whose last router call failed",
            m.ns_nat_failing.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one failed router call.
    pub fn driver_error(&self, driver: &str, kind: &str) {
        self.driver_errors
            .get_or_create(&vec![
                ("driver".to_string(), driver.to_string()),
                ("kind".to_string(), kind.to_string()),
            ])
            .inc();
    }

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
