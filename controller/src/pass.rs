//! One allocation pass of the leader: over every Service, or over the changed ones only.
//!
//! A full pass (the first of a term, then after a relist, an IPPool, Namespace or route-report
//! change, and every `--resync`) rebuilds the allocation from every Service's
//! `status.loadBalancer.ingress`, releases, then serves every Service, oldest first. The leader
//! keeps that allocation between passes ([`Allocation`]), so a pass for changed Services takes
//! only their addresses out, records them again from their status, releases and serves only
//! them, plus the pending Services when an address was freed. A changed Service claiming an
//! address another Service holds turns the pass into a full one (the older keeps it).
//!
//! Every Service write is a PUT carrying the resourceVersion it was computed from; the
//! finalizer first, then the status computed from the copy that write returned (one pass). A
//! 409 refetches the Service and looks at it again in the next pass. Events and the pools'
//! status counts are written by tasks of their own ([`Writers`]), so the next Service does not
//! wait for them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use switchyard_api::{IPPool, IPPoolStatus};
use tokio::sync::{mpsc, watch};

use crate::allocator::{Allocator, Pool, SvcRequest};
use crate::lead::{Ctx, LeadError};
use crate::routes::Report;
use crate::service::{self as s, COND_ANNOUNCED, COND_ASSIGNED};
use crate::watched::Cache;

/// Which Services a pass looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every Service, the allocation rebuilt from their status.
    All,
    /// These Services (`ns/name`), changed since the last pass.
    Changed(BTreeSet<String>),
}

/// What the leader keeps between the passes of one term.
#[derive(Debug, Default)]
pub(crate) struct Allocation {
    /// Who holds which address: rebuilt by every full pass, kept up to date by the passes over
    /// changed Services. `None` until the term's first full pass.
    alloc: Option<Allocator>,
    /// Services waiting for an address.
    pending: BTreeSet<String>,
}

/// Where a pass hands the writes that need not hold up the next Service.
#[derive(Debug)]
pub(crate) struct Writers {
    /// Events to create.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Each pool's used/free counts and conflicts, as the last pass left them.
    pub(crate) pool_status: watch::Sender<BTreeMap<String, IPPoolStatus>>,
}

/// Route mode's outcome per Service, from the route syncer.
pub(crate) struct Announce<'a> {
    pub(crate) report: &'a Report,
    pub(crate) route_mode: &'a BTreeSet<String>,
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

/// What a pass reads besides the Services.
pub(crate) struct Inputs<'a> {
    pub(crate) pools: &'a Store<IPPool>,
    pub(crate) namespaces: &'a Store<Namespace>,
    pub(crate) announce: Announce<'a>,
    pub(crate) writers: &'a Writers,
}

impl Inputs<'_> {
    fn namespace_labels(&self, svc: &Service) -> BTreeMap<String, String> {
        svc.namespace()
            .and_then(|ns| self.namespaces.get(&ObjectRef::new(&ns)))
            .map(|n| n.labels().clone())
            .unwrap_or_default()
    }

    /// The Service's request, or (unparsable) one that only names it.
    fn request_or_key(&self, svc: &Service) -> SvcRequest {
        s::request(svc, &self.namespace_labels(svc)).unwrap_or_else(|_| SvcRequest {
            key: s::key(svc),
            ..Default::default()
        })
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

fn event(ctx: &Ctx, svc: &Service, warning: bool, reason: &str, note: &str) -> Event {
    let ns = svc.namespace().unwrap_or_default();
    Event {
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
    }
}

/// Creates the Events a pass hands over, in order, while this replica leads.
pub(crate) async fn write_events(ctx: Ctx, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(event) = events.recv().await {
        if !ctx.fence.valid() {
            continue;
        }
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, "could not record an Event");
        }
    }
}

/// Writes each pool's used/free counts and conflicts when they differ from what it holds and
/// from what this task last wrote (a merge patch of the status without a resourceVersion: the
/// counts are the leader's own, so a write racing the pool watch must not fail and be
/// repeated). A failed write is tried again after a second.
pub(crate) async fn write_pool_status(
    ctx: Ctx,
    pools: Store<IPPool>,
    mut want: watch::Receiver<BTreeMap<String, IPPoolStatus>>,
) {
    let mut written: BTreeMap<String, IPPoolStatus> = BTreeMap::new();
    loop {
        let wants = want.borrow_and_update().clone();
        let mut failed = false;
        for (name, status) in &wants {
            let Some(obj) = pools.get(&ObjectRef::new(name)) else {
                continue;
            };
            if obj.status.as_ref() == Some(status) || written.get(name) == Some(status) {
                continue;
            }
            if !ctx.fence.valid() {
                failed = true;
                break;
            }
            let api: Api<IPPool> = Api::all(ctx.client.clone());
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    written.insert(name.clone(), status.clone());
                }
                Err(e) => {
                    tracing::debug!(pool = %name, error = %e, "pool status not written (retrying)");
                    failed = true;
                }
            }
        }
        let changed = async {
            if failed {
                tokio::select! {
                    r = want.changed() => r.is_ok(),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => true,
                }
            } else {
                want.changed().await.is_ok()
            }
        };
        if !changed.await {
            return;
        }
    }
}

/// `keys` ordered oldest first (on a duplicate, another controller's bug, the older Service
/// keeps the address; a freed address goes to the oldest pending Service).
fn oldest_first<'a>(cache: &Cache, keys: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<(Option<k8s_openapi::jiff::Timestamp>, String)> = keys
        .into_iter()
        .filter_map(|k| {
            let svc = cache.services.get(k).filter(|svc| s::is_ours(svc))?;
            Some((svc.creation_timestamp().map(|t| t.0), k.clone()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, k)| k).collect()
}

/// Whether any of `ips` is held by nobody now.
fn any_freed(alloc: &Allocator, ips: &[IpAddr]) -> bool {
    ips.iter().any(|ip| !alloc.is_held(*ip))
}

/// The start of a full pass: the allocation rebuilt from every Service's status (oldest
/// first); the Services it must look at, and those that hold an address an older one holds.
fn rebuild(cache: &Cache, inputs: &Inputs<'_>) -> (Allocator, Vec<String>, BTreeSet<String>) {
    let pools: Vec<Pool> = inputs
        .pools
        .state()
        .iter()
        // Egress pools hold namespace SNAT addresses (`namespaces`), never Services'.
        .filter(|p| p.spec.usage == switchyard_api::PoolUsage::LoadBalancer)
        .map(|p| Pool::new(&p.name_any(), &p.spec))
        .collect();
    let mut alloc = Allocator::new(pools);
    let keys = oldest_first(cache, cache.services.keys());
    let mut refused = BTreeSet::new();
    for k in &keys {
        let svc = &cache.services[k];
        let ips = s::ingress_ips(svc);
        if ips.is_empty() {
            continue;
        }
        let r = alloc.hold(&inputs.request_or_key(svc), &ips);
        if !r.is_empty() {
            tracing::warn!(service = %k, addresses = ?r, "address held twice; the newer Service gives it up");
            refused.insert(k.clone());
        }
    }
    (alloc, keys, refused)
}

/// The start of a pass over `changed` Services: their addresses taken out of the kept
/// allocation and recorded again from their status. `None` when one claims an address
/// another Service holds (a full pass decides who keeps it). Sets `freed` when an address
/// is held by nobody any more.
fn update(
    alloc: &mut Allocator,
    cache: &Cache,
    inputs: &Inputs<'_>,
    changed: &BTreeSet<String>,
    freed: &mut bool,
) -> Option<Vec<String>> {
    for k in changed {
        let before = alloc.addresses_of(k).to_vec();
        alloc.release(k);
        if let Some(svc) = cache.services.get(k).filter(|svc| s::is_ours(svc)) {
            let ips = s::ingress_ips(svc);
            if !ips.is_empty() && !alloc.hold(&inputs.request_or_key(svc), &ips).is_empty() {
                tracing::info!(service = %k, addresses = ?ips, "claims an address held by another Service; full pass");
                return None;
            }
        }
        *freed |= any_freed(alloc, &before);
    }
    Some(oldest_first(cache, changed))
}

/// One pass; returns the Services to look at again soon (a stale write, or an address freed
/// after older pending Services were served), and whether it was a full pass.
pub(crate) async fn pass(
    ctx: &Ctx,
    cache: &mut Cache,
    state: &mut Allocation,
    scope: Scope,
    inputs: &Inputs<'_>,
) -> Result<(BTreeSet<String>, bool), LeadError> {
    let mut freed = false;
    let kept = match (&scope, state.alloc.take()) {
        (Scope::Changed(changed), Some(mut alloc)) => {
            for k in changed {
                if !cache.services.get(k).is_some_and(s::is_ours) {
                    state.pending.remove(k);
                }
            }
            update(&mut alloc, cache, inputs, changed, &mut freed).map(|keys| (alloc, keys))
        }
        _ => None,
    };
    let full = kept.is_none();
    let (mut alloc, keys, refused) = match kept {
        Some((alloc, keys)) => (alloc, keys, BTreeSet::new()),
        None => {
            state
                .pending
                .retain(|k| cache.services.get(k).is_some_and(s::is_ours));
            rebuild(cache, inputs)
        }
    };
    tracing::debug!(full, services = keys.len(), "pass");
    let mut again = BTreeSet::new();
    // 1. Release: deleted Services, and Services no longer of type LoadBalancer.
    for k in &keys {
        let Some(svc) = cache.services.get(k) else {
            continue;
        };
        if !s::is_deleting(svc) && s::is_load_balancer(svc) {
            continue;
        }
        state.pending.remove(k);
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
                    refetch(ctx, cache, k).await;
                    again.insert(k.clone());
                    continue;
                }
            }
        }
        let held = alloc.addresses_of(k).to_vec();
        if !held.is_empty() {
            ctx.metrics.releases.inc();
        }
        alloc.release(k);
        freed |= any_freed(&alloc, &held);
        if s::has_finalizer(&new) {
            s::set_finalizer(&mut new, false);
            match write_service(ctx, &new, false).await? {
                Wrote::Ok(w) => {
                    cache.apply(*w);
                }
                Wrote::Conflict => {
                    refetch(ctx, cache, k).await;
                    again.insert(k.clone());
                }
            }
        } else {
            // The status write's copy (a no-op for a copy the cache holds).
            cache.apply(new);
        }
    }
    // 2. Serve: finalizer first, then an address (or the reason there is none). After a
    // release, the pending Services too (oldest first with the changed ones).
    let serve = if !full && freed && !state.pending.is_empty() {
        let both: BTreeSet<&String> = keys.iter().chain(state.pending.iter()).collect();
        oldest_first(cache, both)
    } else {
        keys
    };
    let mut freed_late = false;
    for k in &serve {
        let Some(svc) = cache.services.get(k) else {
            continue;
        };
        if s::is_deleting(svc) || !s::is_load_balancer(svc) {
            continue;
        }
        if !s::has_finalizer(svc) {
            let mut with = svc.clone();
            s::set_finalizer(&mut with, true);
            match write_service(ctx, &with, false).await? {
                Wrote::Ok(w) => {
                    cache.apply(*w);
                }
                Wrote::Conflict => {
                    refetch(ctx, cache, k).await;
                    again.insert(k.clone());
                    continue;
                }
            }
        }
        // The copy the finalizer write returned (the status is computed from it and carries
        // its resourceVersion), or the cached one.
        let cur = &cache.services[k];
        let current = s::ingress_ips(cur);
        let request = s::request(cur, &inputs.namespace_labels(cur));
        let outcome = match &request {
            Err(msg) => Err(("InvalidRequest", msg.clone())),
            Ok(req) => {
                let keep = !current.is_empty()
                    && !refused.contains(k)
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
                    let held = alloc.addresses_of(k).to_vec();
                    alloc.release(k);
                    let got = alloc.allocate(req).map_err(|p| (p.reason(), p.to_string()));
                    freed_late |= any_freed(&alloc, &held);
                    got
                }
            }
        };
        let was_pending = s::condition(cur, COND_ASSIGNED)
            .map(|c| (c.status == "False").then(|| c.reason.clone()))
            .unwrap_or(None);
        // The new status, on a copy of the status only (most passes write nothing).
        let mut next = Service {
            metadata: ObjectMeta {
                generation: cur.metadata.generation,
                ..Default::default()
            },
            status: cur.status.clone(),
            ..Default::default()
        };
        let event = match &outcome {
            Ok(ips) => {
                state.pending.remove(k);
                s::set_ingress(&mut next, ips);
                let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                let pool = ips
                    .first()
                    .and_then(|ip| alloc.pool_of(*ip))
                    .map_or("none".to_string(), |p| p.name.clone());
                s::set_condition(
                    &mut next,
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
                state.pending.insert(k.clone());
                s::set_ingress(&mut next, &[]);
                s::set_condition(&mut next, COND_ASSIGNED, false, reason, msg);
                (was_pending.as_deref() != Some(*reason))
                    .then(|| (true, reason.to_string(), msg.clone()))
            }
        };
        inputs.announce.apply(k, outcome.is_ok(), &mut next);
        if next.status == cur.status {
            continue;
        }
        let mut new = cur.clone();
        new.status = next.status;
        match write_service(ctx, &new, true).await? {
            Wrote::Ok(w) => {
                if outcome.as_ref().is_ok_and(|ips| ips != &current) {
                    ctx.metrics.allocations.inc();
                    tracing::info!(service = %k, addresses = ?outcome.as_ref().ok(), "assigned");
                }
                if let Some((warning, reason, note)) = event {
                    let _ = inputs
                        .writers
                        .events
                        .send(self::event(ctx, &w, warning, &reason, &note));
                }
                cache.apply(*w);
            }
            Wrote::Conflict => {
                // Computed from a stale copy: forget what it would have taken.
                alloc.release(k);
                if !current.is_empty() {
                    alloc.hold(&request.unwrap_or_default(), &current);
                }
                refetch(ctx, cache, k).await;
                again.insert(k.clone());
            }
        }
    }
    // An address freed after older pending Services were served: they try again at once.
    if freed_late {
        again.extend(state.pending.iter().cloned());
    }
    ctx.metrics.pending.set(state.pending.len() as i64);
    pool_status(&alloc, inputs.writers);
    state.alloc = Some(alloc);
    Ok((again, full))
}

/// Hands each pool's used/free counts and conflicts to the pool status writer.
fn pool_status(alloc: &Allocator, writers: &Writers) {
    let conflicts = alloc.pool_conflicts();
    let want: BTreeMap<String, IPPoolStatus> = alloc
        .pools()
        .iter()
        .map(|pool| {
            let used = alloc.used_in(pool) as i64;
            let total = i64::try_from(pool.addresses.len()).unwrap_or(i64::MAX);
            let status = IPPoolStatus {
                used,
                free: total.saturating_sub(used),
                conflicts: conflicts.get(&pool.name).cloned().unwrap_or_default(),
            };
            (pool.name.clone(), status)
        })
        .collect();
    writers.pool_status.send_if_modified(|old| {
        let changed = *old != want;
        if changed {
            *old = want;
        }
        changed
    });
}
