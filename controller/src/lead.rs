//! The leader's work: watch, rebuild the allocation from every Service, then serve.
//!
//! Only the leader watches. When a replica becomes the leader it starts fresh watches (a
//! consistent list: it sees every write of the previous leader, which stopped writing before
//! the Lease could change hands) and runs its first pass only when every watch has listed
//! everything, so the allocation is rebuilt from all Services before a pending one is served.
//! The first pass rebuilds the allocation from the cached statuses, releases, then allocates;
//! later passes look only at the Services that changed, unless something else did ([`pass`]).
//! Every write is a PUT carrying the resourceVersion it was computed from (409: refetch, that
//! Service again in the next pass).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_api::{IPPool, RouteTarget};

use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::pass::{self, Allocation, Announce, Inputs, Scope, Writers};
use crate::routes::{self, Plan, Report};
use crate::watched::{Cache, Watched, read_watches};

/// Errors that end a leadership term (the caller starts over).
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    /// A watch failed for good.
    #[error("watch: {0}")]
    Watch(#[from] watcher::Error),
    /// Leadership was lost in the middle of a pass.
    #[error("no longer the leader")]
    Fenced,
}

/// What the leader needs.
#[derive(Clone)]
pub struct Ctx {
    /// API client.
    pub client: Client,
    /// Leadership check before each write.
    pub fence: Fence,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This replica's identity (Events' reportingInstance).
    pub identity: String,
    /// Period of the full pass even without changes.
    pub resync: Duration,
    /// Period of the routers' read-compare-repair without changes.
    pub route_resync: Duration,
    /// The controller's namespace (credentials Secrets of RouteTargets live there).
    pub namespace: String,
    /// Cluster name: the `switchyard.io/cluster` tag of the routes it writes.
    pub cluster: String,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Leads until an error or until the future is dropped (leadership lost).
pub async fn lead(ctx: Ctx) -> Result<(), LeadError> {
    let c = ctx.client.clone();
    let (pools, pools_w) = reflector::store::<IPPool>();
    let (namespaces, ns_w) = reflector::store::<Namespace>();
    let pool_events = reflector(
        pools_w,
        watcher(Api::<IPPool>::all(c.clone()), Default::default()),
    );
    let ns_events = reflector(
        ns_w,
        watcher(Api::<Namespace>::all(c.clone()), Default::default()),
    );
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (targets, targets_w) = reflector::store::<RouteTarget>();
    let node_events = reflector(
        nodes_w,
        watcher(Api::<Node>::all(c.clone()), Default::default()),
    );
    let slice_events = reflector(
        slices_w,
        watcher(Api::<EndpointSlice>::all(c.clone()), Default::default()),
    );
    let target_events = reflector(
        targets_w,
        watcher(Api::<RouteTarget>::all(c.clone()), Default::default()),
    );
    let others = futures::stream::select_all([
        pool_events.map_ok(|e| Watched::Pool(Box::new(e))).boxed(),
        ns_events.map_ok(|_| Watched::Namespace).boxed(),
        node_events.map_ok(|_| Watched::Other).boxed(),
        slice_events.map_ok(|_| Watched::Other).boxed(),
        target_events.map_ok(|_| Watched::Other).boxed(),
    ]);
    // Route mode: the syncer task lives as long as this term (dropped with this future).
    let (plan_tx, plan_rx) = tokio::sync::watch::channel::<Option<Plan>>(None);
    let (report_tx, mut report_rx) = tokio::sync::watch::channel::<Report>(Report::new());
    let syncer = routes::Syncer {
        client: c.clone(),
        namespace: ctx.namespace.clone(),
        cluster: ctx.cluster.clone(),
        resync: ctx.route_resync,
        fence: ctx.fence.clone(),
        metrics: ctx.metrics.clone(),
    };
    let _syncer = crate::AbortOnDrop(tokio::spawn(syncer.run(plan_rx, report_tx)));
    let mut route_mode: BTreeSet<String> = Default::default();
    let mut report = Report::new();
    let svc_events = watcher(Api::<Service>::all(c.clone()), Default::default()).boxed();
    // The watches are read by their own task, never paused by a pass: a watch read only
    // between passes falls behind during a burst, the API server closes it, and the relist
    // and backoff stalled new Services for over 10 s (1,000 Services, lab API server).
    let (watched_tx, mut watched) = tokio::sync::mpsc::unbounded_channel::<Watched>();
    let _reader = crate::AbortOnDrop(tokio::spawn(read_watches(svc_events, others, watched_tx)));
    // Events and pool status counts are written by tasks of their own: the next Service does
    // not wait for them.
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let _events = crate::AbortOnDrop(tokio::spawn(pass::write_events(ctx.clone(), events_rx)));
    let (pool_status_tx, pool_status_rx) = tokio::sync::watch::channel(BTreeMap::new());
    let _pool_status = crate::AbortOnDrop(tokio::spawn(pass::write_pool_status(
        ctx.clone(),
        pools.clone(),
        pool_status_rx,
    )));
    let writers = Writers {
        events: events_tx,
        pool_status: pool_status_tx,
    };
    let mut cache = Cache::default();
    let mut state = Allocation::default();
    let mut listed = false;
    // Services to look at again without waiting for an event: a pass found stale copies (after
    // a short pause), or they entered or left Route mode.
    let mut again = BTreeSet::new();
    let mut resync = tokio::time::interval(ctx.resync);
    tracing::debug!("leading: watching");
    loop {
        if again.is_empty() {
            tokio::select! {
                ev = watched.recv() => match ev {
                    Some(ev) => listed |= cache.take(ev),
                    None => return Ok(()),
                },
                _ = resync.tick() => cache.full = true,
                r = report_rx.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // The Services whose announcement outcome changed.
                    let new = report_rx.borrow_and_update().clone();
                    cache.changed.extend(differing(&report, &new));
                    report = new;
                }
            }
        } else {
            cache.changed.append(&mut again);
        }
        // Coalesce: every event already waiting joins this pass (a burst of N writes is a
        // few passes, not N).
        while let Ok(ev) = watched.try_recv() {
            listed |= cache.take(ev);
        }
        if !listed || !cache.news() {
            continue;
        }
        // Every store has listed once: the allocation can be rebuilt from everything. (The
        // stores fill as the reader task polls their streams: never wait for them here.)
        let ready = [
            pools.wait_until_ready().now_or_never(),
            namespaces.wait_until_ready().now_or_never(),
            nodes.wait_until_ready().now_or_never(),
            slices.wait_until_ready().now_or_never(),
            targets.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))));
        if !ready {
            continue;
        }
        let started = Instant::now();
        let scope = if std::mem::take(&mut cache.full) {
            cache.changed.clear();
            Some(Scope::All)
        } else if !cache.changed.is_empty() {
            Some(Scope::Changed(std::mem::take(&mut cache.changed)))
        } else {
            None
        };
        cache.replan = false;
        if let Some(scope) = scope {
            let inputs = Inputs {
                pools: &pools,
                namespaces: &namespaces,
                announce: Announce {
                    report: &report,
                    route_mode: &route_mode,
                },
                writers: &writers,
            };
            let (retry, full) = pass::pass(&ctx, &mut cache, &mut state, scope, &inputs).await?;
            again = retry;
            let kind = if full { "full" } else { "changed" };
            ctx.metrics
                .passes
                .get_or_create(&vec![("kind".into(), kind.into())])
                .inc();
        }
        // What the routers should hold now (after this pass's writes).
        let plan = plan(&ctx, &cache, &pools, &nodes, &slices, &targets);
        let new_mode: BTreeSet<String> = plan
            .desired
            .targets
            .values()
            .flat_map(|t| t.services.values().flatten().cloned())
            .chain(plan.desired.unrouted.keys().cloned())
            .collect();
        // A Service that entered or left Route mode: its Announced condition is looked at
        // again at once.
        let stale = !again.is_empty();
        again.extend(route_mode.symmetric_difference(&new_mode).cloned());
        route_mode = new_mode;
        plan_tx.send_if_modified(|old| {
            let changed = old.as_ref().is_none_or(|o| {
                o.desired != plan.desired
                    || !same_targets(&o.targets, &plan.targets)
                    || o.named_by != plan.named_by
            });
            if changed {
                *old = Some(plan);
            }
            changed
        });
        ctx.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        if stale {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The Services whose entries differ between two reports.
fn differing(old: &Report, new: &Report) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

fn same_targets(a: &BTreeMap<String, RouteTarget>, b: &BTreeMap<String, RouteTarget>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((na, ta), (nb, tb))| na == nb && ta.resource_version() == tb.resource_version())
}

/// The desired routes and the RouteTargets, from the caches.
fn plan(
    ctx: &Ctx,
    cache: &Cache,
    pools: &Store<IPPool>,
    nodes: &Store<Node>,
    slices: &Store<EndpointSlice>,
    targets: &Store<RouteTarget>,
) -> Plan {
    let pools: Vec<IPPool> = pools.state().iter().map(|p| (**p).clone()).collect();
    let (nodes, slices) = (nodes.state(), slices.state());
    let targets: BTreeMap<String, RouteTarget> = targets
        .state()
        .iter()
        .map(|t| (t.name_any(), (**t).clone()))
        .collect();
    let names: Vec<String> = targets.keys().cloned().collect();
    let mut named_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &pools {
        if let Some(t) = &p.spec.announce.route_target {
            named_by.entry(t.clone()).or_default().push(p.name_any());
        }
    }
    Plan {
        named_by,
        desired: routes::desired::desired(
            &ctx.cluster,
            cache.services.values(),
            &pools,
            &names,
            &nodes,
            &slices,
        ),
        targets,
    }
}
