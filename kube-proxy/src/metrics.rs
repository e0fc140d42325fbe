//! Prometheus metrics and the HTTP endpoint serving them with `/healthz`,
//! `/readyz` (`switchyard_daemon::http`) and kube-proxy's `/proxyMode`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `kind="incremental"` or `kind="full"`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncKind {
    pub kind: &'static str,
}

impl SyncKind {
    pub const INCREMENTAL: Self = Self {
        kind: "incremental",
    };
    pub const FULL: Self = Self { kind: "full" };
}

/// Label of [`Metrics::conntrack_flushes`]: which flush of a set of stale
/// UDP entries (see [`crate::conntrack`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FlushPass {
    pub pass: &'static str,
}

impl FlushPass {
    /// Right after the bundle.
    pub const FIRST: Self = Self { pass: "first" };
    /// Repeated once `revalidator/wait` returned.
    pub const AFTER_REVALIDATION: Self = Self {
        pass: "after_revalidation",
    };
    /// Repeated after a fixed delay (the unixctl socket could not be used).
    pub const AFTER_DELAY: Self = Self {
        pass: "after_delay",
    };
}

type HistogramFamily = Family<SyncKind, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. about 16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// The proxy's metrics and health.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Event seen (or sync started) -> flows installed, by sync kind.
    pub sync_seconds: HistogramFamily,
    /// Syncs by kind.
    pub syncs: Family<SyncKind, Counter>,
    /// Bundles the switch rejected or that failed in flight.
    pub bundle_failures: Counter,
    /// Service ports programmed on the switch.
    pub service_ports: Gauge,
    /// Endpoints programmed (summed over Service ports).
    pub endpoints: Gauge,
    /// Rejects sent for Services without endpoints.
    pub rejects: Counter,
    /// Conntrack flush failures.
    pub conntrack_flush_failures: Counter,
    /// Conntrack flushes of stale UDP entries that succeeded, by pass.
    pub conntrack_flushes: Family<FlushPass, Counter>,
    /// Flushes of frontend entries committed without DNAT, by pass.
    pub conntrack_unnatted_flushes: Family<FlushPass, Counter>,
    health: Health,
}

#[derive(Debug, Default)]
struct Health {
    /// The last sync attempt succeeded.
    last_ok: AtomicBool,
    /// Milliseconds since `start` of the last successful sync, plus one (0 = never).
    last_success_ms: AtomicU64,
    start: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `switchyard_proxy` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard_proxy");
        let sync_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let syncs = Family::<SyncKind, Counter>::default();
        let bundle_failures = Counter::default();
        let service_ports = Gauge::default();
        let endpoints = Gauge::default();
        let rejects = Counter::default();
        let conntrack_flush_failures = Counter::default();
        let conntrack_flushes = Family::<FlushPass, Counter>::default();
        let conntrack_unnatted_flushes = Family::<FlushPass, Counter>::default();
        registry.register(
            "sync_duration_seconds",
            "From the first API event of a burst (incremental) or the start of a full sync to its flows and groups being installed",
            sync_seconds.clone(),
        );
        registry.register("syncs", "Syncs applied to the switch", syncs.clone());
        registry.register(
            "bundle_failures",
            "OpenFlow bundles that were not committed",
            bundle_failures.clone(),
        );
        registry.register(
            "service_ports_programmed",
            "Service ports with flows on the switch",
            service_ports.clone(),
        );
        registry.register(
            "endpoints_programmed",
            "Endpoints in the switch's groups, summed over Service ports",
            endpoints.clone(),
        );
        registry.register(
            "rejects",
            "ICMP port unreachable replies sent for Services without endpoints",
            rejects.clone(),
        );
        registry.register(
            "conntrack_flush_failures",
            "Stale UDP conntrack flushes that failed",
            conntrack_flush_failures.clone(),
        );
        registry.register(
            "conntrack_flushes",
            "Stale UDP conntrack flushes, right after the bundle (first) and repeated once the datapath's cached flows were revalidated (after_revalidation) or after a fixed delay (after_delay)",
            conntrack_flushes.clone(),
        );
        registry.register(
            "conntrack_unnatted_flushes",
            "Flushes of conntrack entries to frontends that were committed without DNAT (made while ovs-vswitchd had the agent's flows but not yet the proxy's), after the full sync that follows an OpenFlow reconnect (first) and repeated after revalidation (after_revalidation) or a fixed delay (after_delay)",
            conntrack_unnatted_flushes.clone(),
        );
        let health = Health::default();
        *health.start.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Self {
            registry,
            sync_seconds,
            syncs,
            bundle_failures,
            service_ports,
            endpoints,
            rejects,
            conntrack_flush_failures,
            conntrack_flushes,
            conntrack_unnatted_flushes,
            health,
        }
    }

    /// Records a sync attempt's outcome for `/healthz`.
    pub fn record_sync(&self, ok: bool) {
        self.health.last_ok.store(ok, Ordering::Release);
        if ok {
            let start = self
                .health
                .start
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unwrap_or_else(Instant::now);
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.health.last_success_ms.store(ms + 1, Ordering::Release);
        }
    }

    /// Healthy: a sync has succeeded, the last attempt succeeded, and the
    /// last success is younger than `max_age`.
    pub fn healthy(&self, max_age: Duration) -> bool {
        let last = self.health.last_success_ms.load(Ordering::Acquire);
        if last == 0 || !self.health.last_ok.load(Ordering::Acquire) {
            return false;
        }
        let start = self
            .health
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Instant::now);
        let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(last - 1) <= u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX)
    }

    /// How long ago the last successful sync was; `None` before the first.
    pub fn last_sync_age(&self) -> Option<Duration> {
        let last = self.health.last_success_ms.load(Ordering::Acquire);
        if last == 0 {
            return None;
        }
        let start = self
            .health
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Instant::now);
        let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(now_ms.saturating_sub(last - 1)))
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        switchyard_daemon::http::encode(&self.registry)
    }
}

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when the last successful sync is older than this.
    pub max_sync_age: Duration,
}

impl HttpState {
    /// Liveness of the sync loop: a successful sync younger than
    /// `max_sync_age` (a lost OVS does not fail it until then).
    pub fn sync_recent(&self) -> Result<(), String> {
        match self.metrics.last_sync_age() {
            None => Err("no successful sync yet".into()),
            Some(age) if age > self.max_sync_age => {
                Err(format!("last successful sync {}s ago", age.as_secs()))
            }
            Some(_) => Ok(()),
        }
    }
}

/// What kube-proxy's `/proxyMode` answers here.
pub const PROXY_MODE: &str = "switchyard";

/// kube-proxy's `/proxyMode` (the upstream e2e "should check kube-proxy urls"
/// asks for it): the mode's name as plain text.
async fn proxy_mode() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        PROXY_MODE,
    )
}

/// Binds `addr` and returns the bound address and the server future:
/// `/metrics`, `/healthz` (the probe loop's heartbeat and a recent successful
/// sync), `/readyz` (the conditions of `health`) and `/proxyMode`.
pub async fn bind(
    addr: SocketAddr,
    state: HttpState,
    health: switchyard_daemon::Health,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let sync = state.clone();
    health.live_check("sync", move || sync.sync_recent());
    let metrics = state.metrics;
    let app = switchyard_daemon::http::router(health, move || metrics.encode())
        .route("/proxyMode", get(proxy_mode));
    serve_router(addr, app).await
}

/// Binds `addr` for `app`; returns the bound address and the server future
/// (the metrics and the health servers share it).
pub(crate) async fn serve_router(
    addr: SocketAddr,
    app: Router,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, app).await }))
}
