//! `Route` announcement: one static route per address on the pool's RouteTarget, every
//! eligible node as an ECMP next hop, through a router driver (`switchyard-router`).
//!
//! The leader computes the desired routes ([`desired`]) after every pass (Service,
//! EndpointSlice, Node, IPPool or RouteTarget change) and hands them to the [`Syncer`] task,
//! which reads, compares and repairs each RouteTarget: on every change of what it should hold,
//! and at least every `resync` (`--route-resync`, 5 s) otherwise, so a route edited or lost on the router comes
//! back. A failed call is retried with exponential backoff (0.5 s doubling to 10 s); the
//! outcome per Service goes back to the leader as a [`Report`], which writes it into the
//! Service's `switchyard.io/Announced` condition (one status writer). Only routes tagged with
//! this cluster and owner `lb` are ever listed, changed or deleted.

pub mod desired;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use switchyard_api::{RouteTarget, RouteTargetStatus};
use switchyard_router::{RouterDriver, RouterError, StaticRoute};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::Fence;
use crate::metrics::Metrics;
pub use desired::{Desired, TargetRoutes};

/// The finalizer on every RouteTarget: removed, when it is deleted, only once no IPPool
/// names it and the `lb` routes this cluster wrote on it are deleted from the router.
pub const FINALIZER: &str = "switchyard.io/route-target-cleanup";

/// What the syncer is given: the desired routes and the RouteTargets by name.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Desired routes.
    pub desired: Desired,
    /// RouteTargets as last seen.
    pub targets: BTreeMap<String, RouteTarget>,
    /// RouteTarget name -> the IPPools naming it in `announce.routeTarget`.
    pub named_by: BTreeMap<String, Vec<String>>,
}

fn deleting(t: &RouteTarget) -> bool {
    t.metadata.deletion_timestamp.is_some()
}

fn has_finalizer(t: &RouteTarget) -> bool {
    t.finalizers().iter().any(|f| f == FINALIZER)
}

/// The announcement state of one Service: (ok, reason, message).
pub type Outcome = (bool, String, String);

/// Per Service (`ns/name`), its announcement outcome (Route mode only).
pub type Report = BTreeMap<String, Outcome>;

/// First retry delay after a failure.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Backoff after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// The suffix of an error message saying when it is tried again (empty when it is not
/// retriable: then the next resync tries).
pub fn retry_text(retriable: bool, failures: u32, delay: Duration) -> String {
    if retriable {
        format!(
            " (attempt {failures}, retrying in {:.1} s)",
            delay.as_secs_f64()
        )
    } else {
        String::new()
    }
}

#[derive(Debug, Default)]
struct TargetState {
    built: Option<target::Built>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_sync: Option<Instant>,
    last_synced: Option<TargetRoutes>,
    last_routes: i64,
    /// The RouteTarget's `lastError`: a failure of the whole target, or a summary of the
    /// routes' failures.
    last_error: Option<String>,
    /// Whether the last sync failed as a whole (list, credentials, driver): every route's
    /// Services are told.
    target_failed: bool,
    /// Routes known to be on the router as wanted, after the last sync.
    held: BTreeMap<String, StaticRoute>,
    /// Routes whose write or delete failed in the last sync, with the error.
    route_errors: BTreeMap<String, String>,
}

/// The route syncer of one leadership term.
pub struct Syncer {
    /// API client (Secrets, RouteTarget status).
    pub client: Client,
    /// The controller's namespace (where credentials Secrets live).
    pub namespace: String,
    /// The cluster tag value.
    pub cluster: String,
    /// Period of the read-compare-repair without changes.
    pub resync: Duration,
    /// Leadership check before each router write.
    pub fence: Fence,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("namespace", &self.namespace)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// What syncing one target did.
#[derive(Debug, Default, PartialEq)]
pub struct SyncResult {
    /// Routes written (created or repaired).
    pub put: Vec<String>,
    /// Routes deleted.
    pub deleted: Vec<String>,
    /// Routes that failed, with the error.
    pub failed: BTreeMap<String, String>,
    /// Whether any failure is worth retrying soon.
    pub retriable: bool,
    /// Routes held after the sync.
    pub held: i64,
}

/// Read, compare, repair: makes `driver` hold exactly `want` among its `lb` routes.
pub async fn sync_routes(
    driver: &dyn RouterDriver,
    want: &BTreeMap<String, StaticRoute>,
    fence: Option<&Fence>,
    metrics: Option<&Metrics>,
) -> Result<SyncResult, RouterError> {
    let count_err = |e: &RouterError| {
        if let Some(m) = metrics {
            m.driver_error(driver.name(), e.kind());
        }
    };
    let have: BTreeMap<String, StaticRoute> = driver
        .list()
        .await
        .inspect_err(count_err)?
        .into_iter()
        .filter(|r| r.owner == desired::OWNER)
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut out = SyncResult::default();
    let fenced = || fence.is_some_and(|f| !f.valid());
    for (id, route) in want {
        if have.get(id).is_some_and(|h| h.same_route(route)) {
            out.held += 1;
            continue;
        }
        if fenced() {
            return Ok(out);
        }
        match driver.put(route).await {
            Ok(()) => {
                tracing::info!(route = %id, network = %route.network, next_hops = ?route.next_hops, "route written");
                out.put.push(id.clone());
                out.held += 1;
            }
            Err(e) => {
                count_err(&e);
                out.retriable |= e.retriable();
                out.failed.insert(id.clone(), e.to_string());
            }
        }
    }
    for id in have.keys().filter(|id| !want.contains_key(*id)) {
        if fenced() {
            return Ok(out);
        }
        match driver.delete(id).await {
            Ok(()) => {
                tracing::info!(route = %id, "route deleted");
                out.deleted.push(id.clone());
            }
            Err(e) => {
                count_err(&e);
                out.retriable |= e.retriable();
                out.failed.insert(id.clone(), e.to_string());
            }
        }
    }
    Ok(out)
}

fn hops_text(r: &StaticRoute) -> String {
    r.next_hops
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Syncer {
    /// Runs until `plans` closes (the leadership term ends).
    pub async fn run(
        self,
        mut plans: watch::Receiver<Option<Plan>>,
        report: watch::Sender<Report>,
    ) {
        let mut states: BTreeMap<String, TargetState> = BTreeMap::new();
        loop {
            let wake = states
                .values()
                .filter_map(|s| match (s.failures, s.next_attempt, s.last_sync) {
                    (f, Some(t), _) if f > 0 => Some(t),
                    (_, _, Some(t)) => Some(t + self.resync),
                    _ => None,
                })
                .min()
                .unwrap_or_else(|| Instant::now() + self.resync);
            tokio::select! {
                r = plans.changed() => if r.is_err() { return; },
                _ = tokio::time::sleep_until(wake) => {}
            }
            let Some(plan) = plans.borrow_and_update().clone() else {
                continue;
            };
            if !self.fence.valid() {
                return;
            }
            let mut out = Report::new();
            for (k, (reason, msg)) in &plan.desired.unrouted {
                out.insert(k.clone(), (false, reason.clone(), msg.clone()));
            }
            states.retain(|name, _| plan.desired.targets.contains_key(name));
            for (name, want) in &plan.desired.targets {
                let st = states.entry(name.clone()).or_default();
                let now = Instant::now();
                let target = plan.targets.get(name);
                // A RouteTarget being deleted is synced on every plan until it can go.
                let releasing = target.is_some_and(|t| deleting(t) && has_finalizer(t));
                let due = if st.failures > 0 {
                    st.next_attempt.is_none_or(|t| now >= t)
                } else {
                    releasing
                        || st.last_synced.as_ref() != Some(want)
                        || st.last_sync.is_none_or(|t| now >= t + self.resync)
                };
                if due {
                    let named_by = plan.named_by.get(name).map(Vec::as_slice).unwrap_or(&[]);
                    self.sync_target(name, want, target, named_by, st).await;
                }
                report_target(name, want, st, &mut out);
            }
            report.send_if_modified(|r| {
                if *r == out {
                    false
                } else {
                    *r = out;
                    true
                }
            });
        }
    }

    async fn sync_target(
        &self,
        name: &str,
        want: &TargetRoutes,
        target: Option<&RouteTarget>,
        named_by: &[String],
        st: &mut TargetState,
    ) {
        let now = Instant::now();
        // The finalizer goes on before any route is written there.
        if let Some(t) = target
            && !deleting(t)
            && !has_finalizer(t)
        {
            self.set_finalizer(name, true).await;
        }
        let result = match target {
            None => Err((
                false,
                target::TargetError::Missing(name.to_string()).to_string(),
            )),
            Some(t) => {
                match target::driver(
                    &self.client,
                    &self.namespace,
                    &self.cluster,
                    t,
                    st.built.as_ref(),
                )
                .await
                {
                    Err(e) => {
                        self.metrics.driver_error("config", "config");
                        Err((matches!(e, target::TargetError::Api { .. }), e.to_string()))
                    }
                    Ok(built) => {
                        st.built = Some(built.clone());
                        match sync_routes(
                            built.driver.as_ref(),
                            &want.routes,
                            Some(&self.fence),
                            Some(&self.metrics),
                        )
                        .await
                        {
                            Ok(r) => Ok(r),
                            Err(e) => Err((e.retriable(), e.to_string())),
                        }
                    }
                }
            }
        };
        match result {
            Ok(r) if r.failed.is_empty() => {
                st.failures = 0;
                st.next_attempt = None;
                st.last_sync = Some(now);
                st.last_synced = Some(want.clone());
                st.last_error = None;
                st.target_failed = false;
                st.last_routes = r.held;
                st.held = want.routes.clone();
                st.route_errors.clear();
            }
            Ok(r) => {
                // Some routes failed: the others are in place.
                st.failures += 1;
                let delay = if r.retriable {
                    backoff(st.failures)
                } else {
                    self.resync
                };
                let suffix = retry_text(r.retriable, st.failures, delay);
                tracing::warn!(target = name, failed = ?r.failed, attempt = st.failures, retry_in = ?delay, "some routes failed");
                st.next_attempt = Some(now + delay);
                st.last_sync = Some(now);
                st.last_synced = None;
                st.target_failed = false;
                st.last_routes = r.held;
                st.held = want
                    .routes
                    .iter()
                    .filter(|(id, _)| !r.failed.contains_key(*id))
                    .map(|(id, route)| (id.clone(), route.clone()))
                    .collect();
                st.route_errors = r
                    .failed
                    .iter()
                    .map(|(id, e)| (id.clone(), format!("{e}{suffix}")))
                    .collect();
                st.last_error = Some(format!(
                    "{}{suffix}",
                    r.failed
                        .iter()
                        .map(|(id, e)| format!("{id}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            Err((retriable, msg)) => {
                st.failures += 1;
                let delay = if retriable {
                    backoff(st.failures)
                } else {
                    self.resync
                };
                tracing::warn!(target = name, error = %msg, attempt = st.failures, retry_in = ?delay, "route sync failed");
                st.next_attempt = Some(now + delay);
                st.last_sync = Some(now);
                st.last_synced = None;
                st.target_failed = true;
                st.route_errors.clear();
                st.last_error = Some(format!(
                    "{msg}{}",
                    retry_text(retriable, st.failures, delay)
                ));
            }
        }
        if let Some(t) = target
            && deleting(t)
            && has_finalizer(t)
        {
            if !named_by.is_empty() {
                st.last_error = Some(format!(
                    "being deleted: still named by IPPool {} (announce.routeTarget); its routes stay until no pool names it",
                    named_by.join(", ")
                ));
            } else if st.last_error.is_none() && st.last_routes == 0 && want.routes.is_empty() {
                // Nothing of this cluster's is left on the router: let it go.
                self.set_finalizer(name, false).await;
                return;
            }
        }
        if let Some(t) = target {
            self.write_target_status(t, st).await;
        }
    }

    /// Adds or removes [`FINALIZER`] on a fresh copy of the RouteTarget (a failure is
    /// logged; the next sync tries again).
    async fn set_finalizer(&self, name: &str, on: bool) {
        if !self.fence.valid() {
            return;
        }
        let api: Api<RouteTarget> = Api::all(self.client.clone());
        let Ok(mut cur) = api.get(name).await else {
            return;
        };
        let finalizers = cur.metadata.finalizers.get_or_insert_with(Vec::new);
        if finalizers.iter().any(|f| f == FINALIZER) == on {
            return;
        }
        finalizers.retain(|f| f != FINALIZER);
        if on {
            finalizers.push(FINALIZER.to_string());
        }
        match api.replace(name, &PostParams::default(), &cur).await {
            Ok(_) if on => tracing::debug!(target = name, "RouteTarget finalizer added"),
            Ok(_) => tracing::info!(
                target = name,
                "RouteTarget released: no IPPool names it and its routes are deleted"
            ),
            Err(e) => {
                tracing::debug!(target = name, error = %e, "RouteTarget finalizer not written (next sync)")
            }
        }
    }

    async fn write_target_status(&self, t: &RouteTarget, st: &TargetState) {
        let want = RouteTargetStatus {
            routes: st.last_routes,
            last_error: st.last_error.clone(),
        };
        if t.status.as_ref() == Some(&want) || !self.fence.valid() {
            return;
        }
        let api: Api<RouteTarget> = Api::all(self.client.clone());
        // Fresh copy: the plan's may be stale after our own previous write.
        let Ok(mut cur) = api.get_status(&t.name_any()).await else {
            return;
        };
        if cur.status.as_ref() == Some(&want) {
            return;
        }
        cur.status = Some(want);
        if let Err(e) = api
            .replace_status(&t.name_any(), &PostParams::default(), &cur)
            .await
        {
            tracing::debug!(target = %t.name_any(), error = %e, "RouteTarget status not written");
        }
    }
}

fn report_target(name: &str, want: &TargetRoutes, st: &TargetState, out: &mut Report) {
    for (id, route) in &want.routes {
        let services = want.services.get(id).cloned().unwrap_or_default();
        let error = if st.target_failed {
            st.last_error.as_deref()
        } else {
            st.route_errors.get(id).map(String::as_str)
        };
        let outcome = match error {
            Some(e) => (
                false,
                "RouterError".to_string(),
                format!("RouteTarget {name}: {e}"),
            ),
            None if st.held.get(id).is_some_and(|h| h.same_route(route)) => (
                true,
                "Routed".to_string(),
                format!(
                    "{} via {} on RouteTarget {name}",
                    route.network,
                    hops_text(route)
                ),
            ),
            // Not synced since it changed: the condition stays as it is.
            None => continue,
        };
        for k in services {
            out.insert(k, outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// This cluster's routes by id; ids in `foreign` belong to someone else.
    #[derive(Debug, Default)]
    struct FakeRouter {
        routes: Mutex<BTreeMap<String, StaticRoute>>,
        foreign: Vec<String>,
        writes: Mutex<Vec<String>>,
    }

    impl RouterDriver for FakeRouter {
        fn name(&self) -> &str {
            "fake"
        }
        fn list(&self) -> BoxFuture<'_, Result<Vec<StaticRoute>, RouterError>> {
            let v = self.routes.lock().unwrap().values().cloned().collect();
            async move { Ok(v) }.boxed()
        }
        fn get<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<StaticRoute>, RouterError>> {
            let v = self.routes.lock().unwrap().get(id).cloned();
            async move { Ok(v) }.boxed()
        }
        fn put<'a>(&'a self, route: &'a StaticRoute) -> BoxFuture<'a, Result<(), RouterError>> {
            let r = if self.foreign.contains(&route.id) {
                Err(RouterError::NotOwned {
                    id: route.id.clone(),
                    cluster: "c1".into(),
                })
            } else {
                self.writes
                    .lock()
                    .unwrap()
                    .push(format!("put {}", route.id));
                self.routes
                    .lock()
                    .unwrap()
                    .insert(route.id.clone(), route.clone());
                Ok(())
            };
            async move { r }.boxed()
        }
        fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>> {
            self.writes.lock().unwrap().push(format!("delete {id}"));
            self.routes.lock().unwrap().remove(id);
            async { Ok(()) }.boxed()
        }
        fn realized<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<bool, RouterError>> {
            async { Ok(true) }.boxed()
        }
    }

    fn route(id: &str, owner: &str, hops: &[&str]) -> StaticRoute {
        StaticRoute::new(
            id,
            "198.18.0.1/32".parse().unwrap(),
            hops.iter().map(|h| h.parse().unwrap()).collect(),
            owner,
            id,
        )
    }

    #[tokio::test]
    async fn sync_repairs_and_deletes_only_its_own_routes() {
        let router = FakeRouter::default();
        for r in [
            route("c1-lb-a", "lb", &["10.0.0.1"]),
            route("c1-lb-gone", "lb", &["10.0.0.1"]),
            // The control-plane VIP's route, same cluster tag, another owner.
            route("c1-cpvip", "cpvip", &["10.0.0.9"]),
        ] {
            router.routes.lock().unwrap().insert(r.id.clone(), r);
        }
        let want: BTreeMap<String, StaticRoute> = [
            route("c1-lb-a", "lb", &["10.0.0.1", "10.0.0.2"]),
            route("c1-lb-b", "lb", &["10.0.0.3"]),
        ]
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
        let r = sync_routes(&router, &want, None, None).await.unwrap();
        assert_eq!(r.put, ["c1-lb-a", "c1-lb-b"]);
        assert_eq!(r.deleted, ["c1-lb-gone"]);
        assert!(r.failed.is_empty());
        let held = router.routes.lock().unwrap().clone();
        assert_eq!(held["c1-cpvip"], route("c1-cpvip", "cpvip", &["10.0.0.9"]));
        // In sync: a second pass writes nothing.
        router.writes.lock().unwrap().clear();
        let r = sync_routes(&router, &want, None, None).await.unwrap();
        assert!(r.put.is_empty() && r.deleted.is_empty(), "{r:?}");
        assert!(router.writes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_failing_route_does_not_fail_the_others() {
        let router = FakeRouter {
            foreign: vec!["c1-lb-taken".into()],
            ..Default::default()
        };
        let want = TargetRoutes {
            routes: [
                route("c1-lb-ok", "lb", &["10.0.0.1"]),
                route("c1-lb-taken", "lb", &["10.0.0.1"]),
            ]
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect(),
            services: BTreeMap::from([
                ("c1-lb-ok".to_string(), vec!["default/ok".to_string()]),
                ("c1-lb-taken".to_string(), vec!["default/taken".to_string()]),
            ]),
        };
        let r = sync_routes(&router, &want.routes, None, None)
            .await
            .unwrap();
        assert_eq!(r.put, ["c1-lb-ok"]);
        assert!(!r.retriable);
        let st = TargetState {
            held: BTreeMap::from([("c1-lb-ok".to_string(), want.routes["c1-lb-ok"].clone())]),
            route_errors: r.failed.clone(),
            last_error: Some("x".into()),
            ..Default::default()
        };
        let mut out = Report::new();
        report_target("edge", &want, &st, &mut out);
        assert_eq!(out["default/ok"].1, "Routed");
        assert_eq!(out["default/taken"].1, "RouterError");
        assert!(out["default/taken"].2.contains("not tagged"), "{out:?}");
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let d: Vec<f64> = (1..=7).map(|f| backoff(f).as_secs_f64()).collect();
        assert_eq!(d, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
    }
}
