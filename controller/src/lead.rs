//! The leader's work: watch, rebuild the allocation from every Service, then serve.
//!
//! Only the leader watches. When a replica becomes the leader it starts fresh watches (a
//! consistent list: it sees every write of the previous leader, which stopped writing before
//! the Lease could change hands) and runs its first pass only when every watch has listed
//! everything, so the allocation is rebuilt from all Services before a pending one is served.
//! A pass rebuilds the allocation from the cached statuses, releases, then allocates; every
//! write is a PUT carrying the resourceVersion it was computed from (409: refetch, next pass).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_api::{IPPool, RouteTarget};

use crate::allocator::{Allocator, Pool};
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::routes::{self, Plan, Report};
use crate::service::{self as s, COND_ANNOUNCED, COND_ASSIGNED};
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
        ns_events.map_ok(|_| Watched::Other).boxed(),
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
    let mut route_mode: std::collections::BTreeSet<String> = Default::default();
    let svc_events = watcher(Api::<Service>::all(c.clone()), Default::default()).boxed();
    // The watches are read by their own task, never paused by a pass: a watch read only
    // between passes falls behind during a burst, the API server closes it, and the relist
    // and backoff stalled new Services for over 10 s (1,000 Services, lab API server).
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<Watched>();
    let _reader = crate::AbortOnDrop(tokio::spawn(read_watches(svc_events, others, events_tx)));
    let mut cache = Cache::default();
    let mut listed = false;
    // A pass found a stale copy: pass again (after a short pause) even without an event.
    let mut again = false;
    // Something changed since the last pass (the echoes of this leader's own writes do not
    // count: a pass for them would find nothing to do, and a new Service would wait for it).
    let mut news = false;
    let mut resync = tokio::time::interval(ctx.resync);
    tracing::debug!("leading: watching");
    loop {
        if std::mem::take(&mut again) {
            news = true;
        } else {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        let (l, n) = cache.take(ev);
                        listed |= l;
                        news |= n;
                    }
                    None => return Ok(()),
                },
                _ = resync.tick() => news = true,
                r = report_rx.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    news = true;
                }
            }
        }
        // Coalesce: every event already waiting joins this pass (a burst of N writes is a
        // few passes, not N passes of all Services each).
        while let Ok(ev) = events.try_recv() {
            let (l, n) = cache.take(ev);
            listed |= l;
            news |= n;
        }
        if !listed || !news {
            continue;
        }
        // Every store has listed once: the allocation can be rebuilt from everything. (The
        // stores fill as the reader task polls their streams: never wait for them here.)
        let pools_ready = pools
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        let ns_ready = namespaces
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok());
        let rest_ready = [
            nodes.wait_until_ready().now_or_never(),
            slices.wait_until_ready().now_or_never(),
            targets.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))));
        if !pools_ready || !ns_ready || !rest_ready {
            continue;
        }
        news = false;
        let started = Instant::now();
        tracing::debug!(services = cache.services.len(), "pass");
        let report = report_rx.borrow_and_update().clone();
        let announce = Announce {
            report: &report,
            route_mode: &route_mode,
        };
        let pass_again = pass(&ctx, &mut cache, &pools, &namespaces, &announce).await?;
        // What the routers should hold now (after this pass's writes).
        let plan = plan(&ctx, &cache, &pools, &nodes, &slices, &targets);
        route_mode = plan
            .desired
            .targets
            .values()
            .flat_map(|t| t.services.values().flatten().cloned())
            .chain(plan.desired.unrouted.keys().cloned())
            .collect();
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
        again = pass_again;
        if again {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Outcome of one write.
enum Wrote {
    Ok(Box<Service>),
    Conflict,
}

async fn write_service(ctx: &Ctx, svc: &Service, status: bool) -> Result<Wrote, LeadError> {
    if !ctx.fence.valid() {
        return Err(LeadError::Fenced);
    }
    let ns = svc.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let name = svc.name_any();
    let result = if status {
        services
            .replace_status(&name, &PostParams::default(), svc)
            .await
    } else {
        services.replace(&name, &PostParams::default(), svc).await
    };
    match result {
        Ok(new) => Ok(Wrote::Ok(Box::new(new))),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            ctx.metrics.conflicts.inc();
            tracing::debug!(service = %s::key(svc), code = e.code, "stale write; retrying from fresh state");
            Ok(Wrote::Conflict)
        }
        Err(e) => {
            tracing::warn!(service = %s::key(svc), error = %e, "write failed");
            Ok(Wrote::Conflict)
        }
    }
}

async fn refetch(ctx: &Ctx, cache: &mut Cache, key: &str) {
    let (ns, name) = key.split_once('/').unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    match services.get_opt(name).await {
        Ok(Some(svc)) => {
            cache.apply(svc);
        }
        Ok(None) => {
            cache.services.remove(key);
        }
        Err(e) => tracing::warn!(service = key, error = %e, "refetch failed"),
    }
}

async fn emit(ctx: &Ctx, svc: &Service, warning: bool, reason: &str, note: &str) {
    if !ctx.fence.valid() {
        return;
    }
    let ns = svc.namespace().unwrap_or_default();
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", svc.name_any())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("AllocateAddress".into()),
        reason: Some(reason.into()),
        note: Some(note.into()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        reporting_controller: Some("switchyard.io/controller".into()),
        reporting_instance: Some(ctx.identity.clone()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: svc.metadata.name.clone(),
            namespace: Some(ns),
            uid: svc.metadata.uid.clone(),
            resource_version: svc.metadata.resource_version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, "could not record an Event");
    }
}

/// One pass over every Service; true when another pass is needed (a write was stale).
async fn pass(
    ctx: &Ctx,
    cache: &mut Cache,
    pool_store: &Store<IPPool>,
    ns_store: &Store<Namespace>,
    announce: &Announce<'_>,
) -> Result<bool, LeadError> {
    let pools: Vec<Pool> = pool_store
        .state()
        .iter()
        // Egress pools hold namespace SNAT addresses (`namespaces`), never Services'.
        .filter(|p| p.spec.usage == switchyard_api::PoolUsage::LoadBalancer)
        .map(|p| Pool::new(&p.name_any(), &p.spec))
        .collect();
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = ns_store
        .state()
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let labels_of = |svc: &Service| {
        ns_labels
            .get(&svc.namespace().unwrap_or_default())
            .cloned()
            .unwrap_or_default()
    };
    let mut alloc = Allocator::new(pools);
    // Oldest first: on a duplicate (another controller's bug), the older Service keeps it.
    let mut order: Vec<Service> = cache.services.values().cloned().collect();
    order.sort_by(|a, b| {
        (a.creation_timestamp().map(|t| t.0), s::key(a))
            .cmp(&(b.creation_timestamp().map(|t| t.0), s::key(b)))
    });
    order.retain(s::is_ours);
    // 1. Rebuild from the statuses.
    let mut refused: BTreeMap<String, bool> = BTreeMap::new();
    for svc in &order {
        let ips = s::ingress_ips(svc);
        if ips.is_empty() {
            continue;
        }
        let req =
            s::request(svc, &labels_of(svc)).unwrap_or_else(|_| crate::allocator::SvcRequest {
                key: s::key(svc),
                ..Default::default()
            });
        let r = alloc.hold(&req, &ips);
        if !r.is_empty() {
            tracing::warn!(service = %s::key(svc), addresses = ?r, "address held twice; the newer Service gives it up");
            refused.insert(s::key(svc), true);
        }
    }
    let mut again = false;
    // 2. Release: deleted Services, and Services no longer of type LoadBalancer.
    for svc in &order {
        if !s::is_deleting(svc) && s::is_load_balancer(svc) {
            continue;
        }
        let k = s::key(svc);
        let mut new = svc.clone();
        let stale = !s::ingress_ips(svc).is_empty()
            || s::condition(svc, COND_ASSIGNED).is_some()
            || s::condition(svc, COND_ANNOUNCED).is_some();
        if stale && !s::is_deleting(svc) {
            s::set_ingress(&mut new, &[]);
            s::clear_condition(&mut new, COND_ASSIGNED);
            s::clear_condition(&mut new, COND_ANNOUNCED);
            match write_service(ctx, &new, true).await? {
                Wrote::Ok(w) => new = *w,
                Wrote::Conflict => {
                    refetch(ctx, cache, &k).await;
                    again = true;
                    continue;
                }
            }
        }
        if !alloc.addresses_of(&k).is_empty() {
            ctx.metrics.releases.inc();
        }
        alloc.release(&k);
        if s::has_finalizer(&new) {
            s::set_finalizer(&mut new, false);
            match write_service(ctx, &new, false).await? {
                Wrote::Ok(w) => {
                    cache.apply(*w);
                }
                Wrote::Conflict => {
                    refetch(ctx, cache, &k).await;
                    again = true;
                }
            }
        }
    }
    // 3. Serve: finalizer first, then an address (or the reason there is none).
    let mut pending = 0;
    for svc in &order {
        if s::is_deleting(svc) || !s::is_load_balancer(svc) {
            continue;
        }
        let k = s::key(svc);
        let mut cur = svc.clone();
        if !s::has_finalizer(&cur) {
            s::set_finalizer(&mut cur, true);
            match write_service(ctx, &cur, false).await? {
                Wrote::Ok(w) => {
                    cache.apply((*w).clone());
                    cur = *w;
                }
                Wrote::Conflict => {
                    refetch(ctx, cache, &k).await;
                    again = true;
                    continue;
                }
            }
        }
        let current = s::ingress_ips(&cur);
        let mut new = cur.clone();
        let outcome = match s::request(&cur, &labels_of(&cur)) {
            Err(msg) => Err(("InvalidRequest", msg)),
            Ok(req) => {
                let keep = !current.is_empty()
                    && !refused.contains_key(&k)
                    && (req.requested.is_empty() || {
                        let mut a = req.requested.clone();
                        let mut b = current.clone();
                        a.sort();
                        b.sort();
                        a == b
                    });
                if keep {
                    Ok(current.clone())
                } else {
                    alloc.release(&k);
                    alloc
                        .allocate(&req)
                        .map_err(|p| (p.reason(), p.to_string()))
                }
            }
        };
        let was_pending = s::condition(&cur, COND_ASSIGNED)
            .map(|c| (c.status == "False").then(|| c.reason.clone()))
            .unwrap_or(None);
        let event = match &outcome {
            Ok(ips) => {
                s::set_ingress(&mut new, ips);
                let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                let pool = ips
                    .first()
                    .and_then(|ip| alloc.pool_of(*ip))
                    .map_or("none".to_string(), |p| p.name.clone());
                s::set_condition(
                    &mut new,
                    COND_ASSIGNED,
                    true,
                    "Assigned",
                    &format!("{} from IPPool {pool}", list.join(",")),
                );
                (ips != &current).then(|| {
                    (
                        false,
                        "AddressAssigned".to_string(),
                        format!("assigned {}", list.join(",")),
                    )
                })
            }
            Err((reason, msg)) => {
                pending += 1;
                s::set_ingress(&mut new, &[]);
                s::set_condition(&mut new, COND_ASSIGNED, false, reason, msg);
                (was_pending.as_deref() != Some(*reason))
                    .then(|| (true, reason.to_string(), msg.clone()))
            }
        };
        announce.apply(&k, outcome.is_ok(), &mut new);
        if new.status != cur.status {
            match write_service(ctx, &new, true).await? {
                Wrote::Ok(w) => {
                    if outcome.as_ref().is_ok_and(|ips| ips != &current) {
                        ctx.metrics.allocations.inc();
                        tracing::info!(service = %k, addresses = ?outcome.as_ref().ok(), "assigned");
                    }
                    cache.apply((*w).clone());
                    if let Some((warning, reason, note)) = event {
                        emit(ctx, &w, warning, &reason, &note).await;
                    }
                }
                Wrote::Conflict => {
                    // Computed from a stale copy: forget what it would have taken.
                    alloc.release(&k);
                    if !current.is_empty() {
                        alloc.hold(
                            &s::request(&cur, &labels_of(&cur)).unwrap_or_default(),
                            &current,
                        );
                    }
                    refetch(ctx, cache, &k).await;
                    again = true;
                }
            }
        }
    }
    ctx.metrics.pending.set(pending);
    pool_status(ctx, pool_store, &alloc, &mut cache.pool_status).await?;
    Ok(again)
}

/// Route mode's outcome per Service, from the route syncer.
struct Announce<'a> {
    report: &'a Report,
    route_mode: &'a std::collections::BTreeSet<String>,
}

impl Announce<'_> {
    /// Sets (or clears) the Service's `Announced` condition from the syncer's report.
    fn apply(&self, key: &str, has_address: bool, svc: &mut Service) {
        match self.report.get(key) {
            Some((ok, reason, message)) if has_address => {
                s::set_condition(svc, COND_ANNOUNCED, *ok, reason, message);
            }
            // Not synced yet: leave it as it is.
            None if has_address && self.route_mode.contains(key) => {}
            _ => s::clear_condition(svc, COND_ANNOUNCED),
        }
    }
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
    let services: Vec<Service> = cache.services.values().cloned().collect();
    let pools: Vec<IPPool> = pools.state().iter().map(|p| (**p).clone()).collect();
    let nodes: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
    let slices: Vec<EndpointSlice> = slices.state().iter().map(|e| (**e).clone()).collect();
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
        desired: routes::desired::desired(&ctx.cluster, &services, &pools, &names, &nodes, &slices),
        targets,
    }
}

/// Writes each pool's used/free counts and conflicts when they changed (a merge
/// patch of the status without a resourceVersion: the counts are the leader's own,
/// so a write racing the pool watch must not fail and be repeated every pass).
async fn pool_status(
    ctx: &Ctx,
    pool_store: &Store<IPPool>,
    alloc: &Allocator,
    written: &mut BTreeMap<String, switchyard_api::IPPoolStatus>,
) -> Result<(), LeadError> {
    let conflicts = alloc.pool_conflicts();
    for pool in alloc.pools() {
        let Some(obj) = pool_store
            .state()
            .into_iter()
            .find(|p| p.name_any() == pool.name)
        else {
            continue;
        };
        let used = alloc.used_in(pool) as i64;
        let total = i64::try_from(pool.addresses.len()).unwrap_or(i64::MAX);
        let want = switchyard_api::IPPoolStatus {
            used,
            free: total.saturating_sub(used),
            conflicts: conflicts.get(&pool.name).cloned().unwrap_or_default(),
        };
        if obj.status.as_ref() == Some(&want) || written.get(&pool.name) == Some(&want) {
            continue;
        }
        if !ctx.fence.valid() {
            return Err(LeadError::Fenced);
        }
        let ippools: Api<IPPool> = Api::all(ctx.client.clone());
        let patch = serde_json::json!({ "status": want });
        match ippools
            .patch_status(&pool.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written.insert(pool.name.clone(), want);
            }
            Err(e) => {
                tracing::debug!(pool = %pool.name, error = %e, "pool status not written (next pass)");
            }
        }
    }
    Ok(())
}
