//! kube-proxy's health endpoints, answered as kube-proxy answers them
//! (`pkg/proxy/healthcheck` upstream):
//!
//! - the proxy's own health server (`--healthz-bind-address`, default
//!   `0.0.0.0:10256`): `/healthz` and `/livez`, `200` while the last sync is
//!   fresh (the same rule as `/healthz` on the metrics address:
//!   [`Metrics::healthy`]), `503` otherwise, with kube-proxy's JSON body
//!   ([`healthz_body`], [`livez_body`]);
//! - [`ServiceHealthServer`]: for every LoadBalancer Service with
//!   `externalTrafficPolicy: Local` and a `healthCheckNodePort`, an HTTP
//!   server on that port (all IPv4 addresses) answering any path with `200`
//!   when this node has a ready endpoint of the Service and the proxy is
//!   healthy, `503` otherwise (also when only terminating endpoints are left),
//!   and kube-proxy's JSON body ([`service_health_body`]). Load balancers use it
//!   to send traffic only to nodes that have endpoints. Listeners open and
//!   close as the [`HealthChecks`] published by the watch loop change; the
//!   endpoint counts follow every recompute.
//!
//! Differences from kube-proxy: times are printed in UTC without Go's
//! monotonic clock suffix (`m=+…`); `nodeEligible` is always `true` (the proxy
//! does not watch its Node, so a node being deleted or tainted
//! `ToBeDeletedByClusterAutoscaler` is not reported); and before the first
//! successful sync `/healthz` answers `503` (kube-proxy: `200` while starting).

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics::{HttpState, Metrics};
use crate::recompute::HealthChecks;
use crate::service_model::ServiceKey;

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// How often a health check port that could not be opened is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A time as Go's `time.Time.String()` prints it, in UTC and without the
/// monotonic suffix: `2006-01-02 15:04:05.999999999 +0000 UTC` (trailing
/// zeros of the fraction dropped). `None` is Go's zero time.
pub fn go_time(time: Option<SystemTime>) -> String {
    let Some(time) = time else {
        return "0001-01-01 00:00:00 +0000 UTC".to_owned();
    };
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        out.push('.');
        out.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A JSON string literal (Go's `%q` gives the same for these texts).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The time of the last successful sync as `/healthz` reports it: "now" while
/// healthy (kube-proxy keeps that compatibility), else when it happened.
fn last_updated(metrics: &Metrics, healthy: bool, now: SystemTime) -> Option<SystemTime> {
    if healthy {
        Some(now)
    } else {
        metrics.last_sync_age().and_then(|age| now.checked_sub(age))
    }
}

/// kube-proxy's `/healthz` body.
pub fn healthz_body(
    last_updated: Option<SystemTime>,
    now: SystemTime,
    node_eligible: bool,
) -> String {
    format!(
        r#"{{"lastUpdated": {},"currentTime": {}, "nodeEligible": {node_eligible}}}"#,
        json_string(&go_time(last_updated)),
        json_string(&go_time(Some(now)))
    )
}

/// kube-proxy's `/livez` body.
pub fn livez_body(last_updated: Option<SystemTime>, now: SystemTime) -> String {
    format!(
        r#"{{"lastUpdated": {},"currentTime": {}}}"#,
        json_string(&go_time(last_updated)),
        json_string(&go_time(Some(now)))
    )
}

/// kube-proxy's health check node port body.
pub fn service_health_body(
    service: &ServiceKey,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        json_string(&service.namespace),
        json_string(&service.name)
    )
}

/// `200` when the node has local ready endpoints and the proxy is healthy.
pub fn service_health_status(local_endpoints: usize, proxy_healthy: bool) -> StatusCode {
    if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn health_status(healthy: bool) -> StatusCode {
    if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let healthy = state.metrics.healthy(state.max_sync_age);
    let now = SystemTime::now();
    let last = last_updated(&state.metrics, healthy, now);
    json_response(health_status(healthy), healthz_body(last, now, true))
}

async fn livez(State(state): State<HttpState>) -> Response {
    let healthy = state.metrics.healthy(state.max_sync_age);
    let now = SystemTime::now();
    let last = last_updated(&state.metrics, healthy, now);
    json_response(health_status(healthy), livez_body(last, now))
}

/// Binds the proxy's health server (`/healthz`, `/livez`) on `addr`; returns
/// the bound address and the server future.
pub async fn bind_proxy_health(
    addr: SocketAddr,
    state: HttpState,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(state);
    crate::metrics::serve_router(addr, app).await
}

/// What one health check port's handler reads.
#[derive(Debug, Clone)]
struct PortState {
    service: Arc<ServiceKey>,
    local_endpoints: Arc<AtomicUsize>,
    proxy: HttpState,
}

async fn service_health(State(state): State<PortState>) -> Response {
    let count = state.local_endpoints.load(Ordering::Acquire);
    let healthy = state.proxy.metrics.healthy(state.proxy.max_sync_age);
    json_response(
        service_health_status(count, healthy),
        service_health_body(&state.service, count, healthy),
    )
}

/// One Service's open (or not yet openable) health check port.
#[derive(Debug)]
struct Instance {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    /// The server; `None` while the port could not be opened.
    server: Option<JoinHandle<()>>,
}

impl Instance {
    async fn close(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // The listener is closed once the aborted task is gone.
            let _ = server.await;
        }
    }
}

/// The health check node port servers, kept in line with [`HealthChecks`].
#[derive(Debug)]
pub struct ServiceHealthServer {
    ip: IpAddr,
    proxy: HttpState,
    services: HashMap<ServiceKey, Instance>,
}

impl ServiceHealthServer {
    /// Servers listening on `ip` (kube-proxy: all addresses), reporting the
    /// proxy's health from `proxy`.
    pub fn new(ip: IpAddr, proxy: HttpState) -> Self {
        Self {
            ip,
            proxy,
            services: HashMap::new(),
        }
    }

    /// The open health check ports, by Service.
    pub fn listening(&self) -> Vec<(ServiceKey, u16)> {
        let mut open: Vec<(ServiceKey, u16)> = self
            .services
            .iter()
            .filter(|(_, instance)| instance.server.is_some())
            .map(|(service, instance)| (service.clone(), instance.port))
            .collect();
        open.sort();
        open
    }

    /// Opens, closes and updates the ports for `checks`. Returns `false` when
    /// some port could not be opened (it is tried again on the next call).
    pub async fn sync(&mut self, checks: &HealthChecks) -> bool {
        let stale: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|(service, instance)| {
                checks
                    .get(*service)
                    .is_none_or(|check| check.port != instance.port)
            })
            .map(|(service, _)| service.clone())
            .collect();
        for service in stale {
            if let Some(mut instance) = self.services.remove(&service) {
                info!(%service, port = instance.port, "closing health check port");
                instance.close().await;
            }
        }
        let mut complete = true;
        for (service, check) in checks {
            let instance = self
                .services
                .entry(service.clone())
                .or_insert_with(|| Instance {
                    port: check.port,
                    local_endpoints: Arc::new(AtomicUsize::new(0)),
                    server: None,
                });
            let before = instance
                .local_endpoints
                .swap(check.local_endpoints, Ordering::AcqRel);
            if before != check.local_endpoints {
                debug!(%service, local_endpoints = check.local_endpoints, "health check endpoints");
            }
            if instance.server.is_none() {
                let state = PortState {
                    service: Arc::new(service.clone()),
                    local_endpoints: Arc::clone(&instance.local_endpoints),
                    proxy: self.proxy.clone(),
                };
                match serve_port(SocketAddr::new(self.ip, check.port), state).await {
                    Ok(server) => {
                        info!(%service, port = check.port, local_endpoints = check.local_endpoints, "opened health check port");
                        instance.server = Some(server);
                    }
                    Err(err) => {
                        warn!(%service, port = check.port, %err, "cannot open health check port; retrying");
                        complete = false;
                    }
                }
            }
        }
        complete
    }

    /// Closes every port.
    pub async fn close_all(&mut self) {
        for (_, mut instance) in self.services.drain() {
            instance.close().await;
        }
    }

    /// Follows `checks` until its sender is dropped (then closes every port).
    pub async fn run(mut self, mut checks: watch::Receiver<Arc<HealthChecks>>) {
        loop {
            let current = Arc::clone(&checks.borrow_and_update());
            let complete = self.sync(&current).await;
            tokio::select! {
                changed = checks.changed() => {
                    if changed.is_err() {
                        self.close_all().await;
                        return;
                    }
                }
                () = tokio::time::sleep(RETRY_INTERVAL), if !complete => {}
            }
        }
    }
}

async fn serve_port(addr: SocketAddr, state: PortState) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().fallback(service_health).with_state(state);
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).into_future().await {
            warn!(%addr, %err, "health check server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_model::HealthCheck;

    #[test]
    fn go_times() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(Some(UNIX_EPOCH)), "1970-01-01 00:00:00 +0000 UTC");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 120_000_000);
        assert_eq!(go_time(Some(t)), "2024-02-29 23:59:59.12 +0000 UTC");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 1);
        assert_eq!(go_time(Some(t)), "2000-02-29 00:00:00.000000001 +0000 UTC");
    }

    #[test]
    fn proxy_health_bodies_are_kube_proxys() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            healthz_body(Some(now), now, true),
            r#"{"lastUpdated": "2023-11-14 22:13:20 +0000 UTC","currentTime": "2023-11-14 22:13:20 +0000 UTC", "nodeEligible": true}"#
        );
        assert_eq!(
            livez_body(None, now),
            r#"{"lastUpdated": "0001-01-01 00:00:00 +0000 UTC","currentTime": "2023-11-14 22:13:20 +0000 UTC"}"#
        );
    }

    #[test]
    fn service_health_body_and_status() {
        let service = ServiceKey::new("ns", "web");
        let body = service_health_body(&service, 2, true);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(
            compact,
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        assert_eq!(service_health_status(1, true), StatusCode::OK);
        assert_eq!(
            service_health_status(0, true),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            service_health_status(3, false),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(json_string("a\"b\\\u{1}"), r#""a\"b\\\u0001""#);
    }

    #[test]
    fn healthz_reports_the_last_sync_when_stale() {
        let metrics = Metrics::new();
        let now = SystemTime::now();
        assert_eq!(last_updated(&metrics, false, now), None);
        metrics.record_sync(true);
        assert_eq!(last_updated(&metrics, true, now), Some(now));
        let last = last_updated(&metrics, false, now).expect("a sync happened");
        assert!(now.duration_since(last).expect("before now") < Duration::from_secs(5));
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    #[tokio::test]
    async fn ports_open_follow_counts_and_close() {
        let metrics = Arc::new(Metrics::new());
        metrics.record_sync(true);
        let state = HttpState {
            metrics: Arc::clone(&metrics),
            max_sync_age: Duration::from_secs(60),
        };
        let mut server = ServiceHealthServer::new(IpAddr::from([127, 0, 0, 1]), state);
        let (a, b) = (ServiceKey::new("ns", "a"), ServiceKey::new("ns", "b"));
        let (port_a, port_b) = (free_port(), free_port());
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let check = |port, local_endpoints| HealthCheck {
            port,
            local_endpoints,
        };
        let mut checks = HealthChecks::new();
        checks.insert(a.clone(), check(port_a, 1));
        checks.insert(b.clone(), check(port_b, 0));
        assert!(server.sync(&checks).await);
        assert_eq!(
            server.listening(),
            [(a.clone(), port_a), (b.clone(), port_b)]
        );
        let (status, body) = get(addr(port_a), "/any/path").await.expect("a answers");
        assert_eq!(status, 200);
        assert!(body.contains("\"name\": \"a\"") && body.contains("\"localEndpoints\": 1"));
        assert_eq!(get(addr(port_b), "/").await.expect("b answers").0, 503);

        // Counts follow; a Service gone closes its port.
        checks.insert(a.clone(), check(port_a, 0));
        checks.remove(&b);
        assert!(server.sync(&checks).await);
        let (status, body) = get(addr(port_a), "/").await.expect("a answers");
        assert_eq!(status, 503);
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");
        assert!(get(addr(port_b), "/").await.is_err(), "b still listening");

        // The proxy unhealthy: 503 even with endpoints.
        checks.insert(a.clone(), check(port_a, 3));
        assert!(server.sync(&checks).await);
        metrics.record_sync(false);
        let (status, body) = get(addr(port_a), "/").await.expect("a answers");
        assert_eq!(status, 503);
        assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");

        // A port held by someone else is reported and tried again.
        let squatter = std::net::TcpListener::bind(addr(port_b)).expect("squat");
        checks.insert(b.clone(), check(port_b, 1));
        assert!(!server.sync(&checks).await);
        assert_eq!(server.listening(), [(a.clone(), port_a)]);
        drop(squatter);
        assert!(server.sync(&checks).await);
        assert_eq!(server.listening(), [(a, port_a), (b, port_b)]);
        server.close_all().await;
        assert!(get(addr(port_a), "/").await.is_err());
    }
}
