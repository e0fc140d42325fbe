//! The HTTP endpoint of a daemon: `/metrics` (OpenMetrics text), `/healthz`
//! (liveness) and `/readyz` (readiness), answered from a [`Health`].
//!
//! - Liveness: every [`Heartbeat`] beat within its allowance and every
//!   liveness check holds. A loop of the process that stops turning (a
//!   deadlock, a stuck runtime) fails it; a lost dependency does not.
//! - Readiness: every declared condition holds (e.g. `ovsdb`, `openflow`,
//!   `initial-sync`).
//!
//! Both answer 200 or 503 with one line per item, `[+]name ok` or
//! `[-]name: reason` (as the Kubernetes API server's `?verbose`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::registry::Registry;

/// The OpenMetrics content type `/metrics` answers with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type LiveCheck = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    conditions: Mutex<BTreeMap<&'static str, Result<(), String>>>,
    heartbeats: Mutex<Vec<Heartbeat>>,
    live_checks: Mutex<Vec<(&'static str, LiveCheck)>>,
}

/// Liveness and readiness of a daemon (cheap to clone; clones share).
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.readiness())
            .field("live", &self.liveness())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// No conditions, no heartbeats: live and ready.
    pub fn new() -> Health {
        Health::default()
    }

    /// Declares readiness condition `name`, false ("not checked yet") until
    /// set; keeps its state when already declared.
    pub fn declare(&self, name: &'static str) {
        lock(&self.inner.conditions)
            .entry(name)
            .or_insert_with(|| Err("not checked yet".into()));
    }

    /// Sets condition `name` (declaring it); logs each change.
    pub fn set(&self, name: &'static str, state: Result<(), String>) {
        let mut conditions = lock(&self.inner.conditions);
        let before = conditions.insert(name, state.clone());
        let changed = !matches!(
            (&before, &state),
            (Some(Ok(())), Ok(())) | (Some(Err(_)) | None, Err(_))
        );
        drop(conditions);
        if changed {
            match &state {
                Ok(()) => tracing::info!(condition = name, "readiness condition holds"),
                Err(reason) => {
                    tracing::warn!(condition = name, %reason, "readiness condition lost")
                }
            }
        }
    }

    /// Sets condition `name` to `ok`, with `reason` when not.
    pub fn set_ok(&self, name: &'static str, ok: bool, reason: &str) {
        self.set(name, if ok { Ok(()) } else { Err(reason.to_string()) });
    }

    /// Every condition, by name.
    pub fn conditions(&self) -> BTreeMap<&'static str, Result<(), String>> {
        lock(&self.inner.conditions).clone()
    }

    /// Ready: every condition holds; else the ones that do not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let problems: Vec<String> = lock(&self.inner.conditions)
            .iter()
            .filter_map(|(name, state)| state.as_ref().err().map(|r| format!("{name}: {r}")))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Whether every readiness condition holds.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// A heartbeat named `name` that fails liveness when it has not beaten
    /// for `allowance` (it counts as beaten now).
    pub fn heartbeat(&self, name: &'static str, allowance: Duration) -> Heartbeat {
        let beat = Heartbeat {
            name,
            allowance,
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        lock(&self.inner.heartbeats).push(beat.clone());
        beat
    }

    /// Adds a liveness check (e.g. "the last successful sync is recent").
    pub fn live_check(
        &self,
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        lock(&self.inner.live_checks).push((name, Box::new(check)));
    }

    /// Live: every heartbeat recent and every liveness check holds; else
    /// the problems.
    pub fn liveness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for beat in lock(&self.inner.heartbeats).iter() {
            let since = beat.since_last();
            if since > beat.allowance {
                problems.push(format!(
                    "{}: no heartbeat for {:.1}s (allowed {:.1}s)",
                    beat.name,
                    since.as_secs_f64(),
                    beat.allowance.as_secs_f64()
                ));
            }
        }
        for (name, check) in lock(&self.inner.live_checks).iter() {
            if let Err(reason) = check() {
                problems.push(format!("{name}: {reason}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn live_report(&self) -> (StatusCode, String) {
        let mut names: Vec<&'static str> = lock(&self.inner.heartbeats)
            .iter()
            .map(|b| b.name)
            .collect();
        names.extend(lock(&self.inner.live_checks).iter().map(|(n, _)| *n));
        report(&names, self.liveness(), "ok")
    }

    fn ready_report(&self) -> (StatusCode, String) {
        let names: Vec<&'static str> = lock(&self.inner.conditions).keys().copied().collect();
        report(&names, self.readiness(), "ready")
    }
}

/// `[+]name ok` / `[-]name: reason` lines and the verdict.
fn report(
    names: &[&'static str],
    outcome: Result<(), Vec<String>>,
    verdict: &str,
) -> (StatusCode, String) {
    let problems = outcome.as_ref().err().cloned().unwrap_or_default();
    let mut out = String::new();
    for name in names {
        match problems
            .iter()
            .find(|p| p.strip_prefix(name).is_some_and(|r| r.starts_with(':')))
        {
            Some(problem) => out.push_str(&format!("[-]{problem}\n")),
            None => out.push_str(&format!("[+]{name} ok\n")),
        }
    }
    match outcome {
        Ok(()) => {
            out.push_str(verdict);
            out.push('\n');
            (StatusCode::OK, out)
        }
        Err(_) => {
            out.push_str(&format!("not {verdict}\n"));
            (StatusCode::SERVICE_UNAVAILABLE, out)
        }
    }
}

/// A loop's sign of life, from [`Health::heartbeat`].
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    allowance: Duration,
    start: Instant,
    /// Milliseconds since `start` of the last beat.
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    fn since_last(&self) -> Duration {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Acquire)))
    }
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// `/metrics` (what `metrics` renders), `/healthz` and `/readyz`; merge
/// further routes into it.
pub fn router(
    health: Health,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Router {
    let live = health.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics()) }
            }),
        )
        .route("/healthz", get(move || async move { live.live_report() }))
        .route("/readyz", get(move || async move { health.ready_report() }))
}

/// Binds `addr` for `app`: the bound address and the server future.
pub async fn bind(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_conditions() {
        let h = Health::new();
        assert!(h.is_ready());
        h.declare("ovsdb");
        let (code, body) = h.ready_report();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "[-]ovsdb: not checked yet\nnot ready\n");
        h.set("ovsdb", Ok(()));
        h.set_ok("openflow", false, "disconnected");
        assert_eq!(h.readiness(), Err(vec!["openflow: disconnected".into()]));
        h.set_ok("openflow", true, "");
        let (code, body) = h.ready_report();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "[+]openflow ok\n[+]ovsdb ok\nready\n");
    }

    #[test]
    fn liveness_follows_heartbeats_and_checks() {
        let h = Health::new();
        let beat = h.heartbeat("loop", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.liveness().is_err());
        let beat2 = h.heartbeat("other", Duration::from_secs(3600));
        beat2.beat();
        let err = h.liveness().unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].starts_with("loop: no heartbeat"), "{err:?}");
        drop(beat);
        h.live_check("sync", || Err("too old".into()));
        let (code, body) = h.live_report();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("[+]other ok\n"), "{body}");
        assert!(body.contains("[-]sync: too old\n"), "{body}");
    }
}
