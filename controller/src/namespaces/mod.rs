//! Namespace networks: every namespace that opts in gets its own `Segment` (a VLAN from a
//! configured range, a subnet carved from a configured supernet, an SNAT address from an
//! `IPPool` with `usage: Egress`), and is annotated with it so its pods land there.
//!
//! Crash safety comes from the API alone, not from memory: each pass lists Namespaces,
//! Segments, Egress pools, the agents' SegmentAddress objects and the previous-design IPAM ConfigMaps afresh, and [`plan::plan`]
//! decides from that. A namespace's Segment has a name derived from the namespace
//! (`ns-<namespace>`) and carries `switchyard.io/cluster` and `switchyard.io/namespace-uid`,
//! so a create repeated after a crash finds the first (409) instead of a second one; its
//! VLAN, subnet and SNAT address are in its spec, written in that one create, so they are
//! never half-allocated. Untagged Segments are never deleted or changed (beyond the
//! in-use finalizer every Segment gets, below), though their VLANs and subnets are
//! never handed out again.
//!
//! Every Segment (the controller's or a user's) carries the finalizer
//! `switchyard.io/segment-in-use` until no agent holds an address in it (no `SegmentAddress`
//! object of the segment, and no entry in the previous design's ConfigMap
//! `switchyard-ipam-<segment>` the agents migrate at start), so a segment still used by pods
//! cannot be deleted. An opted-in namespace
//! carries `switchyard.io/namespace-network` until its Segment is gone.
//!
//! With a RouteTarget configured (`--namespace-route-target`), every namespace network's SNAT
//! address is programmed as an SNAT rule on that router ([`nat`]).
//!
//! The task runs while this replica leads (beside `lead`), writes only while its Lease
//! fence is valid, and does nothing unless namespace networks are configured.

pub mod nat;
pub mod plan;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_api::{
    ANNOTATION_SEGMENT, ANNOTATION_SNAT, IPPool, NAMESPACE_FINALIZER, PoolUsage, RouteTarget,
    SEGMENT_FINALIZER, Segment, SegmentAddress, SegmentStatus, TAG_CLUSTER, TAG_NAMESPACE_UID,
};
use tokio::sync::watch;

use crate::leader::Fence;
use crate::metrics::Metrics;
use plan::{Action, Ns, Seg};
pub use plan::{Config, OptIn};

/// Prefix of the agents' per-segment IPAM ConfigMaps.
pub const IPAM_PREFIX: &str = "switchyard-ipam-";

/// Why a pass failed (the next one retries).
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The API server refused or failed a request.
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    /// The Lease is no longer held: stop writing.
    #[error("lost the lease; stopped writing")]
    Fenced,
}

/// What the namespace-network task needs.
#[derive(Clone)]
pub struct Ctx {
    /// API client.
    pub client: Client,
    /// Writes only while valid.
    pub fence: Fence,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The `switchyard.io/cluster` value.
    pub cluster: String,
    /// How networks are carved.
    pub config: Config,
    /// Namespace of the agents' IPAM ConfigMaps.
    pub ipam_namespace: String,
    /// Full pass period without changes.
    pub resync: Duration,
    /// The controller's namespace (the RouteTarget's credentials Secret is read there).
    pub namespace: String,
    /// Period of the router's read-compare-repair of the SNAT rules without changes.
    pub nat_resync: Duration,
}

/// The pass's side of the SNAT rule syncer.
#[derive(Debug)]
pub struct NatLink {
    /// Where each pass sends the rules.
    pub plans: watch::Sender<Option<nat::NatPlan>>,
    /// The errors per Segment the syncer reports.
    pub errors: watch::Receiver<nat::NatErrors>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("cluster", &self.cluster)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs passes whenever a Namespace, Segment, IPPool, SegmentAddress or IPAM ConfigMap changes, and every
/// `resync`, until the future is dropped (leadership lost) or the fence is lost; with a
/// RouteTarget configured, the SNAT rule syncer runs beside it.
pub async fn run(ctx: Ctx) {
    let Some(target) = ctx.config.route_target.clone() else {
        tracing::info!(
            "namespace networks: no --namespace-route-target: SNAT addresses are allocated, but no SNAT rule is written on a router"
        );
        passes(&ctx, None).await;
        return;
    };
    let (plans, plans_rx) = watch::channel(None);
    let (errors_tx, errors) = watch::channel(nat::NatErrors::new());
    let syncer = nat::NatSyncer {
        client: ctx.client.clone(),
        namespace: ctx.namespace.clone(),
        cluster: ctx.cluster.clone(),
        target,
        resync: ctx.nat_resync,
        fence: ctx.fence.clone(),
        metrics: ctx.metrics.clone(),
    };
    let link = NatLink { plans, errors };
    tokio::select! {
        _ = passes(&ctx, Some(link)) => {}
        _ = syncer.run(plans_rx, errors_tx) => {}
    }
}

async fn passes(ctx: &Ctx, mut nat: Option<NatLink>) {
    let c = ctx.client.clone();
    let ns = ctx.ipam_namespace.as_str();
    let cfg = watcher::Config::default;
    let mut events = futures::stream::select_all([
        watcher(Api::<Namespace>::all(c.clone()), Default::default())
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        watcher(Api::<Segment>::all(c.clone()), Default::default())
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        watcher(Api::<IPPool>::all(c.clone()), Default::default())
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        watcher(Api::<ConfigMap>::namespaced(c.clone(), ns), cfg())
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        watcher(Api::<SegmentAddress>::all(c.clone()), Default::default())
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
    ]);
    let mut resync = tokio::time::interval(ctx.resync);
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            let started = std::time::Instant::now();
            match pass(ctx, nat.as_ref()).await {
                Ok(0) => {}
                Ok(writes) => {
                    tracing::debug!(writes, "namespace networks: pass wrote");
                    // Our own writes come back as events; one more pass settles them.
                    dirty = true;
                }
                Err(NsError::Fenced) => return,
                Err(e) => tracing::warn!(error = %e, "namespace networks: pass failed (retrying)"),
            }
            ctx.metrics
                .ns_reconcile_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let nat_errors = async {
            match nat.as_mut() {
                Some(l) => l.errors.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(())) => dirty = true,
                Some(Err(e)) => tracing::debug!(error = %e, "namespace networks: watch error (retrying)"),
                None => return,
            },
            // The SNAT rules' errors changed: the Segments' status shows them.
            ok = nat_errors => if ok { dirty = true } else { return },
            _ = resync.tick() => dirty = true,
        }
        // Take the rest of a burst of events into the same pass.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(events.next()) {
            dirty = true;
        }
    }
}

/// One pass: read everything, plan, write. Returns the number of writes.
pub async fn pass(ctx: &Ctx, nat: Option<&NatLink>) -> Result<usize, NsError> {
    let c = &ctx.client;
    let ns_api: Api<Namespace> = Api::all(c.clone());
    let seg_api: Api<Segment> = Api::all(c.clone());
    let pool_api: Api<IPPool> = Api::all(c.clone());
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ctx.ipam_namespace);
    let lp = ListParams::default();
    let namespaces = ns_api.list(&lp).await?.items;
    let segments = seg_api.list(&lp).await?.items;
    let pools = pool_api.list(&lp).await?.items;
    let mut used: BTreeMap<String, usize> = cms
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|cm| {
            let seg = cm.name_any().strip_prefix(IPAM_PREFIX)?.to_string();
            Some((seg, cm.data.map(|d| d.len()).unwrap_or(0)))
        })
        .collect();
    // The agents' allocation objects (a cluster without the CRD has none).
    let addresses = match Api::<SegmentAddress>::all(c.clone()).list(&lp).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for a in addresses {
        *used.entry(a.spec.segment).or_default() += 1;
    }
    let mut writes = 0;
    let nat_errors = nat.map(|l| l.errors.borrow().clone()).unwrap_or_default();

    // Every Segment: the in-use finalizer and its counts.
    for s in &segments {
        let name = s.name_any();
        let n = used.get(&name).copied().unwrap_or(0);
        let deleting = s.metadata.deletion_timestamp.is_some();
        let has = s.finalizers().iter().any(|f| f == SEGMENT_FINALIZER);
        if !deleting && !has {
            let mut fins = s.finalizers().to_vec();
            fins.push(SEGMENT_FINALIZER.to_string());
            fence(ctx)?;
            gone_is_ok(
                seg_api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": fins}})),
                    )
                    .await,
            )?;
            writes += 1;
        } else if deleting && has && n == 0 {
            let fins: Vec<&String> = s
                .finalizers()
                .iter()
                .filter(|f| *f != SEGMENT_FINALIZER)
                .collect();
            fence(ctx)?;
            gone_is_ok(
                seg_api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": fins}})),
                    )
                    .await,
            )?;
            tracing::info!(segment = %name, "segment released (no pod address left)");
            writes += 1;
        } else if deleting && has {
            tracing::debug!(segment = %name, used = n, "segment deletion waits for its pods");
        }
        let want = SegmentStatus {
            used: n as i64,
            capacity: plan::capacity(&s.spec.subnets) as i64,
            message: match (s.spec.parsed_subnets(&name).err(), nat_errors.get(&name)) {
                (Some(e), _) => Some(e.to_string()),
                (None, Some(e)) => Some(e.clone()),
                (None, None) => None,
            },
        };
        if !deleting && s.status.as_ref() != Some(&want) {
            fence(ctx)?;
            // `message: null` explicitly: a merge patch leaves out a missing key, so a
            // cleared message (a router error gone) would otherwise stay.
            let body = json!({"status": {
                "used": want.used,
                "capacity": want.capacity,
                "message": want.message,
            }});
            match seg_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => writes += 1,
                Err(e) => {
                    tracing::debug!(segment = %name, error = %e, "status not written (next pass)")
                }
            }
        }
    }

    let nss: Vec<Ns> = namespaces
        .iter()
        .map(|n| {
            let ann = n.annotations();
            Ns {
                name: n.name_any(),
                uid: n.uid().unwrap_or_default(),
                opted_in: plan::opted_in(&ctx.config, &n.name_any(), n.labels()),
                deleting: n.metadata.deletion_timestamp.is_some(),
                has_finalizer: n.finalizers().iter().any(|f| f == NAMESPACE_FINALIZER),
                segment_annotation: ann.get(ANNOTATION_SEGMENT).cloned(),
                snat_annotation: ann.get(ANNOTATION_SNAT).cloned(),
            }
        })
        .collect();
    let segs: Vec<Seg> = segments
        .iter()
        .map(|s| Seg {
            name: s.name_any(),
            cluster: s.labels().get(TAG_CLUSTER).cloned(),
            namespace_uid: s.labels().get(TAG_NAMESPACE_UID).cloned(),
            deleting: s.metadata.deletion_timestamp.is_some(),
            spec: s.spec.clone(),
            used: used.get(&s.name_any()).copied().unwrap_or(0),
        })
        .collect();
    let mut egress_pools: Vec<&IPPool> = pools
        .iter()
        .filter(|p| p.spec.usage == PoolUsage::Egress)
        .filter(|p| {
            ctx.config
                .egress_pool
                .as_deref()
                .is_none_or(|n| n == p.name_any())
        })
        .collect();
    egress_pools.sort_by_key(|p| p.name_any());
    let egress: Vec<IpAddr> = egress_pools
        .iter()
        .flat_map(|p| p.spec.addresses().iter().collect::<Vec<_>>())
        .collect();

    if let (Some(link), Some(name)) = (nat, &ctx.config.route_target) {
        let targets = Api::<RouteTarget>::all(c.clone()).list(&lp).await?.items;
        let plan = nat::NatPlan {
            want: nat::desired(&ctx.cluster, &segs),
            target: nat::find_target(targets, name),
        };
        link.plans.send_replace(Some(plan));
    }

    let planned = plan::plan(&ctx.config, &ctx.cluster, &nss, &segs, &egress);
    ctx.metrics
        .ns_shortages
        .set(i64::try_from(planned.shortages.len()).unwrap_or(i64::MAX));
    for (ns, what) in &planned.shortages {
        tracing::warn!(namespace = %ns, ?what, "namespace network: nothing free to give");
    }
    for action in planned.actions {
        writes += 1;
        execute(ctx, action).await?;
    }
    ctx.metrics.ns_writes.inc_by(writes as u64);
    ctx.metrics.ns_passes.inc();
    ctx.metrics
        .ns_networks
        .set(i64::try_from(segs.iter().filter(|s| s.namespace_uid.is_some()).count()).unwrap_or(0));
    Ok(writes)
}

fn fence(ctx: &Ctx) -> Result<(), NsError> {
    if ctx.fence.valid() {
        Ok(())
    } else {
        Err(NsError::Fenced)
    }
}

/// A write's result, where the object being gone (404) is fine.
fn gone_is_ok<T>(r: Result<T, kube::Error>) -> Result<(), NsError> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn execute(ctx: &Ctx, action: Action) -> Result<(), NsError> {
    let seg_api: Api<Segment> = Api::all(ctx.client.clone());
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    match action {
        Action::Create {
            name,
            namespace,
            uid,
            spec,
        } => {
            fence(ctx)?;
            let mut seg = Segment::new(&name, spec);
            seg.metadata.labels = Some(BTreeMap::from([
                (TAG_CLUSTER.to_string(), ctx.cluster.clone()),
                (TAG_NAMESPACE_UID.to_string(), uid),
            ]));
            seg.metadata.finalizers = Some(vec![SEGMENT_FINALIZER.to_string()]);
            match seg_api.create(&PostParams::default(), &seg).await {
                Ok(_) => {
                    ctx.metrics.ns_created.inc();
                    tracing::info!(%namespace, segment = %name, vlan = seg.spec.vlan, subnet = %seg.spec.subnets[0].cidr, snat = ?seg.spec.snat_address, "namespace network created");
                }
                // Created by an earlier term that crashed before it saw it: the next pass
                // reads it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::Delete { name } => {
            fence(ctx)?;
            match seg_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    ctx.metrics.ns_deleted.inc();
                    tracing::info!(segment = %name, "namespace network deleted");
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::Append { name, subnet } => {
            fence(ctx)?;
            let Some(mut seg) = seg_api.get_opt(&name).await? else {
                return Ok(());
            };
            tracing::info!(segment = %name, subnet = %subnet.cidr, "segment nearly full: subnet appended");
            seg.spec.subnets.push(subnet);
            // A replace with the resourceVersion read: a concurrent change makes it 409 and
            // the next pass decides again.
            match seg_api.replace(&name, &PostParams::default(), &seg).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::Namespace {
            name,
            segment,
            snat,
            finalizer,
        } => {
            let Some(ns) = ns_api.get_opt(&name).await? else {
                return Ok(());
            };
            let mut fins: Vec<String> = ns
                .finalizers()
                .iter()
                .filter(|f| *f != NAMESPACE_FINALIZER)
                .cloned()
                .collect();
            if finalizer {
                fins.push(NAMESPACE_FINALIZER.to_string());
            }
            let body = json!({"metadata": {
                "finalizers": fins,
                "annotations": {ANNOTATION_SEGMENT: segment, ANNOTATION_SNAT: snat},
            }});
            fence(ctx)?;
            gone_is_ok(
                ns_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await,
            )?;
        }
    }
    Ok(())
}
