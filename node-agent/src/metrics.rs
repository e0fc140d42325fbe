//! Prometheus metrics, the agent's [`Health`] and the HTTP endpoint serving
//! them: `/metrics`, `/healthz`, `/readyz` (`switchyard_daemon::http`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
pub use switchyard_daemon::Health;

/// Readiness condition: ovsdb-server answers an echo (within 1 s, checked
/// every 0.5 s).
pub const READY_OVSDB: &str = "ovsdb";
/// Readiness condition: ovs-vswitchd answers an OpenFlow echo on the bridge.
pub const READY_OPENFLOW: &str = "openflow";
/// Readiness condition: the last reconciliation with OVS (at start, after
/// each reconnect) finished and the CNI socket serves.
pub const READY_RECONCILED: &str = "reconciled";

/// Label of request metrics: `result="success"` or the CNI error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `error_<code>`.
    pub result: String,
}

impl ResultLabel {
    /// From a request's outcome.
    pub fn of<T>(outcome: &Result<T, switchyard_cni::CniError>) -> ResultLabel {
        ResultLabel {
            result: match outcome {
                Ok(_) => "success".to_string(),
                Err(e) => format!("error_{}", e.code),
            },
        }
    }
}

/// Labels of a NetworkPolicy rule's counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyRuleLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index of the rule in the policy's list.
    pub rule: String,
}

impl PolicyRuleLabels {
    /// The labels of `rule`.
    pub fn of(rule: &crate::policy::RuleRef) -> PolicyRuleLabels {
        PolicyRuleLabels {
            namespace: rule.namespace.clone(),
            policy: rule.policy.clone(),
            direction: rule.direction.as_str().to_string(),
            rule: rule.index.to_string(),
        }
    }
}

/// `direction="ingress"` or `"egress"`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `ingress` or `egress`.
    pub direction: String,
}

type HistogramFamily = Family<ResultLabel, Histogram, fn() -> Histogram>;

/// Counts a request by its outcome and observes how long it took.
fn record<T>(
    count: &Family<ResultLabel, Counter>,
    seconds: &HistogramFamily,
    outcome: &Result<T, switchyard_cni::CniError>,
    took: Duration,
) {
    let label = ResultLabel::of(outcome);
    count.get_or_create(&label).inc();
    seconds.get_or_create(&label).observe(took.as_secs_f64());
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// CNI ADD requests by result.
    pub adds: Family<ResultLabel, Counter>,
    /// CNI ADD latency in seconds by result.
    pub add_seconds: HistogramFamily,
    /// CNI DEL requests by result.
    pub dels: Family<ResultLabel, Counter>,
    /// CNI DEL latency in seconds by result.
    pub del_seconds: HistogramFamily,
    /// Pods attached now.
    pub pods_attached: Gauge,
    /// Reconciliation runs.
    pub reconcile_runs: Counter,
    /// Packets of new connections each NetworkPolicy rule allowed (flow
    /// stats of the rule's flows, read periodically).
    pub policy_rule_packets: Family<PolicyRuleLabels, Gauge>,
    /// Bytes of the same packets.
    pub policy_rule_bytes: Family<PolicyRuleLabels, Gauge>,
    /// Packets of new connections dropped by the default deny of isolated
    /// pods, per direction.
    pub policy_denied_packets: Family<DirectionLabel, Gauge>,
    /// NetworkPolicy flows installed.
    pub policy_flows: Gauge,
    /// Seconds from a change to its flows being installed (updates that
    /// changed flows).
    pub policy_update_seconds: Histogram,
    /// `Segment` objects not applied (a name or VLAN clash, an invalid spec).
    pub segment_errors: Gauge,
    /// Liveness and readiness (`/healthz`, `/readyz`, CNI STATUS): see
    /// `daemon.rs` for the conditions.
    pub health: Health,
    /// LoadBalancer L2 announcement (`announce/metrics.rs`).
    pub announce: crate::announce::metrics::AnnounceMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `switchyard_agent` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard_agent");
        let adds = Family::<ResultLabel, Counter>::default();
        let dels = Family::<ResultLabel, Counter>::default();
        let add_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let del_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let pods_attached = Gauge::default();
        let reconcile_runs = Counter::default();
        registry.register("cni_add", "CNI ADD requests by result", adds.clone());
        registry.register(
            "cni_add_duration_seconds",
            "CNI ADD latency by result",
            add_seconds.clone(),
        );
        registry.register("cni_del", "CNI DEL requests by result", dels.clone());
        registry.register(
            "cni_del_duration_seconds",
            "CNI DEL latency by result",
            del_seconds.clone(),
        );
        registry.register(
            "pods_attached",
            "Pod interfaces attached to the bridge",
            pods_attached.clone(),
        );
        let announce = crate::announce::metrics::AnnounceMetrics::register(&mut registry);
        let segment_errors = Gauge::default();
        registry.register(
            "segment_errors",
            "Segment objects not applied (name or VLAN clash, invalid spec)",
            segment_errors.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Full reconciliations with OVSDB (start and OVS reconnects)",
            reconcile_runs.clone(),
        );
        let policy_rule_packets = Family::<PolicyRuleLabels, Gauge>::default();
        let policy_rule_bytes = Family::<PolicyRuleLabels, Gauge>::default();
        let policy_denied_packets = Family::<DirectionLabel, Gauge>::default();
        let policy_flows = Gauge::default();
        let policy_update_seconds = latency_histogram();
        registry.register(
            "network_policy_rule_packets",
            "Packets of new connections allowed per NetworkPolicy rule",
            policy_rule_packets.clone(),
        );
        registry.register(
            "network_policy_rule_bytes",
            "Bytes of new connections' packets allowed per NetworkPolicy rule",
            policy_rule_bytes.clone(),
        );
        registry.register(
            "network_policy_denied_packets",
            "Packets of new connections dropped by NetworkPolicy isolation",
            policy_denied_packets.clone(),
        );
        registry.register(
            "network_policy_flows",
            "NetworkPolicy flows installed",
            policy_flows.clone(),
        );
        registry.register(
            "network_policy_update_duration_seconds",
            "Time to compile and install a NetworkPolicy change",
            policy_update_seconds.clone(),
        );
        Metrics {
            policy_rule_packets,
            policy_rule_bytes,
            policy_denied_packets,
            policy_flows,
            policy_update_seconds,
            registry,
            adds,
            add_seconds,
            dels,
            del_seconds,
            pods_attached,
            reconcile_runs,
            segment_errors,
            health: Health::new(),
            announce,
        }
    }

    /// Counts an ADD by its outcome and observes how long it took.
    pub fn record_add<T>(&self, outcome: &Result<T, switchyard_cni::CniError>, took: Duration) {
        record(&self.adds, &self.add_seconds, outcome, took);
    }

    /// Counts a DEL by its outcome and observes how long it took.
    pub fn record_del<T>(&self, outcome: &Result<T, switchyard_cni::CniError>, took: Duration) {
        record(&self.dels, &self.del_seconds, outcome, took);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        switchyard_daemon::http::encode(&self.registry)
    }
}

/// Binds `addr` and returns the bound address and the server future:
/// `/metrics`, `/healthz` and `/readyz` of `metrics` and its health.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let health = metrics.health.clone();
    let app = switchyard_daemon::http::router(health, move || metrics.encode());
    switchyard_daemon::http::bind(addr, app).await
}
