//! The leader: computes the route of each ControlPlaneVIP and keeps it on the router.
//!
//! Every probe period: read the `default/kubernetes` EndpointSlices, the nodes' report
//! Leases, probe every candidate's `/readyz` over verified TLS, [`decide`], and write the
//! route when it must change (then wait until the router reports it realized before the
//! status says a node left the route: the node removes its VIP only then). Every
//! `drift_period` the route is read back and repaired. Router errors back off (1 s doubling
//! to 16 s) and show in the status (`lastError`, Degraded). A deleted ControlPlaneVIP loses
//! its route first, then its VIPs (the nodes see the status), then its finalizer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use switchyard_api::leader::Fence;
use switchyard_api::{
    CPVIP_FINALIZER, CPVIP_OWNER, ControlPlaneVIP, ControlPlaneVIPStatus, RouteTarget,
};
use switchyard_router::target::{self, Built};
use switchyard_router::{RouterError, StaticRoute};
use tokio::sync::watch;

use crate::decide::{Candidate, Decision, decide, node_rows};
use crate::health::Health;
use crate::metrics::{Metrics, labels};
use crate::probe::Prober;
use crate::{KUBERNETES_NAMESPACE, Options};

/// How long the leader waits for the router to report a written route realized.
const REALIZE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest backoff after router errors.
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// The status is rewritten at least this often (its lastReconcileTime).
pub(crate) const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// The leader's memory of one ControlPlaneVIP (lost with leadership: a new leader starts
/// from the router's route).
pub(crate) struct Vip {
    pub(crate) built: Option<Built>,
    pub(crate) prober: Option<(IpAddr, Prober)>,
    pub(crate) health: BTreeMap<IpAddr, Health>,
    /// Next hops on the router as last written or read (None: not read yet).
    pub(crate) route: Option<Vec<IpAddr>>,
    pub(crate) last_read: Option<Instant>,
    pub(crate) backoff: Duration,
    pub(crate) retry_at: Option<Instant>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_ok: Option<Instant>,
    pub(crate) degraded: Option<(&'static str, String)>,
    pub(crate) status_written: Option<(ControlPlaneVIPStatus, Instant)>,
    /// The last API view (the ControlPlaneVIP, the slice's readiness, the reports), used
    /// while the leader's own apiserver does not answer (see [`pass`]).
    pub(crate) seen: Option<Seen>,
}

/// What the leader last read from the API for one ControlPlaneVIP.
#[derive(Clone)]
pub(crate) struct Seen {
    cr: ControlPlaneVIP,
    slice_seen: bool,
    ready: BTreeMap<IpAddr, bool>,
    reports: BTreeMap<IpAddr, crate::node::Report>,
}

impl Vip {
    fn new() -> Vip {
        Vip {
            built: None,
            prober: None,
            health: BTreeMap::new(),
            route: None,
            last_read: None,
            backoff: Duration::from_secs(1),
            retry_at: None,
            last_error: None,
            last_ok: None,
            degraded: None,
            status_written: None,
            seen: None,
        }
    }
}

/// Runs forever: leads while `leading` is true.
pub async fn run(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    mut leading: watch::Receiver<bool>,
    fence: Fence,
) {
    loop {
        while !*leading.borrow_and_update() {
            metrics.leader.set(0);
            if leading.changed().await.is_err() {
                return;
            }
        }
        metrics.leader.set(1);
        tracing::info!("leading: reconciling ControlPlaneVIP routes");
        let mut state: BTreeMap<String, Vip> = BTreeMap::new();
        while *leading.borrow() && fence.valid() {
            let tick = tokio::time::Instant::now();
            let period = pass(&client, &opts, &metrics, &fence, &mut state).await;
            tokio::select! {
                _ = tokio::time::sleep_until(tick + period) => {}
                _ = leading.changed() => {}
            }
        }
        tracing::info!("no longer leading");
    }
}

/// One pass over every ControlPlaneVIP; returns the period until the next.
async fn pass(
    client: &Client,
    opts: &Options,
    metrics: &Metrics,
    fence: &Fence,
    state: &mut BTreeMap<String, Vip>,
) -> Duration {
    let cpvips: Api<ControlPlaneVIP> = Api::all(client.clone());
    let list = match cpvips.list(&ListParams::default()).await {
        Ok(l) => {
            let names: Vec<String> = l.items.iter().map(|c| c.name_any()).collect();
            state.retain(|n, _| names.contains(n));
            l.items
        }
        Err(e) => {
            // Our own apiserver does not answer (it is usually the one that failed): while
            // we still hold the lease, keep probing and routing from the last view, so that
            // a failed node (this one included) leaves the route before its VIP goes.
            tracing::warn!(%e, "listing ControlPlaneVIPs; routing from the last view");
            state
                .values()
                .filter_map(|v| v.seen.as_ref().map(|s| s.cr.clone()))
                .collect()
        }
    };
    let mut period = Duration::from_secs(1);
    for cr in list {
        let mut p = Duration::from_millis(cr.spec.probe.period_ms.clamp(100, 10_000));
        let vip = state.entry(cr.name_any()).or_insert_with(Vip::new);
        if let Err(e) = reconcile(client, opts, metrics, fence, &cr, vip).await {
            tracing::warn!(cpvip = %cr.name_any(), %e, "reconcile");
        }
        if vip.health.values().any(Health::failing) {
            p /= 10;
        }
        period = period.min(p);
    }
    period
}

/// Errors that end one reconcile early (retried next pass).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no longer the leader")]
    Fenced,
}

fn route_id(cr: &ControlPlaneVIP) -> String {
    cr.spec
        .route_id
        .clone()
        .unwrap_or_else(|| format!("cpvip-{}", cr.name_any()))
}

pub(crate) fn now_text() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn reconcile(
    client: &Client,
    opts: &Options,
    metrics: &Metrics,
    fence: &Fence,
    cr: &ControlPlaneVIP,
    vip: &mut Vip,
) -> Result<(), Error> {
    let name = cr.name_any();
    let cpvips: Api<ControlPlaneVIP> = Api::all(client.clone());
    let deleting = cr.metadata.deletion_timestamp.is_some();
    let has_finalizer = cr.finalizers().iter().any(|f| f == CPVIP_FINALIZER);
    if !deleting && !has_finalizer {
        let mut with = cr.clone();
        with.finalizers_mut().push(CPVIP_FINALIZER.to_string());
        if !fence.valid() {
            return Err(Error::Fenced);
        }
        cpvips.replace(&name, &PostParams::default(), &with).await?;
        return Ok(());
    }
    if deleting && !has_finalizer {
        return Ok(());
    }
    let net = match cr.spec.network() {
        Ok(n) => n,
        Err(e) => {
            vip.degraded = Some(("InvalidSpec", e));
            return crate::status::write_status(client, opts, cr, vip, Vec::new(), Vec::new())
                .await;
        }
    };
    // The driver (rebuilt when the RouteTarget or its Secret changes; the last one while
    // the API does not answer).
    let targets: Api<RouteTarget> = Api::all(client.clone());
    let built = match targets.get_opt(&cr.spec.route_target).await {
        Err(e) => match vip.built.clone() {
            Some(b) if vip.seen.is_some() => Ok(b),
            _ => return Err(e.into()),
        },
        Ok(None) => Err(target::TargetError::Missing(cr.spec.route_target.clone()).to_string()),
        Ok(Some(t)) => target::driver(
            client,
            &opts.namespace,
            &opts.cluster,
            &t,
            vip.built.as_ref(),
        )
        .await
        .map_err(|e| e.to_string()),
    };
    let driver = match built {
        Ok(b) => {
            vip.built = Some(b.clone());
            b.driver
        }
        Err(e) => {
            vip.last_error = Some(e.clone());
            vip.degraded = Some(("RouteTargetUnusable", e));
            let rows = Vec::new();
            let hops = vip.route.clone().unwrap_or_default();
            return crate::status::write_status(client, opts, cr, vip, hops, rows).await;
        }
    };
    let id = route_id(cr);
    let vip_label = net.addr().to_string();

    if deleting {
        // Route first, then the VIPs (the nodes see routed=false), then the finalizer.
        if !fence.valid() {
            return Err(Error::Fenced);
        }
        match driver.delete(&id).await {
            Ok(()) => {
                vip.route = Some(Vec::new());
                set_route_metrics(metrics, &vip_label, &[]);
            }
            Err(e) => {
                router_error(metrics, vip, &e);
                return crate::status::write_status(client, opts, cr, vip, Vec::new(), Vec::new())
                    .await;
            }
        }
        crate::status::write_status(client, opts, cr, vip, Vec::new(), Vec::new()).await?;
        let holders = crate::node::reports(client, opts, &name).await?;
        let still: Vec<&String> = holders
            .values()
            .filter(|r| r.fresh && r.vip_present)
            .map(|r| &r.node)
            .collect();
        if !still.is_empty() {
            tracing::info!(cpvip = %name, nodes = ?still, "route deleted; waiting for the nodes to drop the VIP");
            return Ok(());
        }
        let mut without = cr.clone();
        without.finalizers_mut().retain(|f| f != CPVIP_FINALIZER);
        if !fence.valid() {
            return Err(Error::Fenced);
        }
        cpvips
            .replace(&name, &PostParams::default(), &without)
            .await?;
        tracing::info!(cpvip = %name, "route and VIPs removed; finalizer released");
        return Ok(());
    }

    // What the nodes and the slice say (the last view while the API does not answer).
    let (slice_seen, ready, reports) = match read_view(client, opts, &name).await {
        Ok(view) => {
            vip.seen = Some(Seen {
                cr: cr.clone(),
                slice_seen: view.0,
                ready: view.1.clone(),
                reports: view.2.clone(),
            });
            view
        }
        Err(e) => match &vip.seen {
            Some(seen) => {
                tracing::debug!(%e, "API unreachable: the last view of the slice and reports");
                (seen.slice_seen, seen.ready.clone(), seen.reports.clone())
            }
            None => return Err(e.into()),
        },
    };
    // Probes of every candidate, concurrently.
    if vip.prober.as_ref().is_none_or(|(a, _)| *a != net.addr()) {
        match Prober::new(
            &opts.apiserver_ca,
            net.addr(),
            Duration::from_millis(cr.spec.probe.timeout_ms.max(50)),
        ) {
            Ok(p) => vip.prober = Some((net.addr(), p)),
            Err(e) => {
                vip.degraded = Some(("ApiserverCA", e.to_string()));
                let hops = vip.route.clone().unwrap_or_default();
                return crate::status::write_status(client, opts, cr, vip, hops, Vec::new()).await;
            }
        }
    }
    let prober = vip.prober.as_ref().map(|(_, p)| p.clone());
    let addrs: Vec<IpAddr> = ready
        .keys()
        .chain(reports.keys())
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let port = cr.spec.apiserver_port;
    let results = join_all(addrs.iter().map(|a| {
        let p = prober.clone();
        let addr = SocketAddr::new(*a, port);
        async move {
            match p {
                Some(p) => p.readyz(addr).await.map_err(|e| e.to_string()),
                None => Err("no prober".to_string()),
            }
        }
    }))
    .await;
    let p = &cr.spec.probe;
    vip.health.retain(|a, _| addrs.contains(a));
    let mut candidates = BTreeMap::new();
    for (a, result) in addrs.iter().zip(results) {
        let h = vip
            .health
            .entry(*a)
            .or_insert_with(|| Health::new(p.failure_threshold, p.success_threshold));
        if let Err(e) = &result {
            tracing::debug!(address = %a, %e, "leader /readyz probe failed");
        }
        if h.observe(result.is_ok()) {
            tracing::info!(cpvip = %name, address = %a, state = ?h.state(), "apiserver probe");
        }
        let report = reports.get(a);
        let l = labels(&[
            ("vip", &vip_label),
            ("address", &a.to_string()),
            ("probe", "leader"),
        ]);
        metrics
            .probe_ok
            .get_or_create(&l)
            .set(i64::from(result.is_ok()));
        metrics
            .probe_healthy
            .get_or_create(&l)
            .set(i64::from(h.up()));
        candidates.insert(
            *a,
            Candidate {
                node: report.map_or_else(|| a.to_string(), |r| r.node.clone()),
                endpoint_ready: ready.get(a).copied().unwrap_or(false),
                vip_present: report.is_some_and(|r| r.fresh && r.vip_present && r.healthy),
                probe: h.state(),
            },
        );
    }
    let decision = decide(slice_seen, &candidates);
    tracing::debug!(cpvip = %name, ?candidates, ?decision, "decision");

    // The router, unless backing off.
    if vip.retry_at.is_some_and(|t| Instant::now() < t) {
        let hops = vip.route.clone().unwrap_or_default();
        let rows = node_rows(&candidates, &hops);
        return crate::status::write_status(client, opts, cr, vip, hops, rows).await;
    }
    let drift_due = vip
        .last_read
        .is_none_or(|t| t.elapsed() >= opts.drift_period);
    let want = match &decision {
        Decision::Route(hops) => Some(hops.clone()),
        Decision::Keep { .. } => None,
    };
    let result = sync_route(
        driver.as_ref(),
        fence,
        metrics,
        &id,
        net,
        &vip_label,
        want,
        drift_due,
        vip,
    )
    .await;
    match result {
        Ok(()) => {
            vip.last_error = None;
            vip.backoff = Duration::from_secs(1);
            vip.retry_at = None;
            vip.last_ok = Some(Instant::now());
            vip.degraded = match &decision {
                Decision::Keep {
                    reason,
                    message,
                    degraded: true,
                } => Some((reason, message.clone())),
                _ => None,
            };
        }
        Err(SyncError::Router(e)) => router_error(metrics, vip, &e),
        Err(SyncError::Fenced) => return Err(Error::Fenced),
    }
    if let Some(t) = vip.last_ok {
        metrics
            .seconds_since_reconcile
            .get_or_create(&labels(&[("vip", &vip_label)]))
            .set(t.elapsed().as_secs_f64());
    }
    let hops = vip.route.clone().unwrap_or_default();
    let rows = node_rows(&candidates, &hops);
    crate::status::write_status(client, opts, cr, vip, hops, rows).await
}

/// The `default/kubernetes` slices (seen at all, readiness by address) and the node reports.
async fn read_view(
    client: &Client,
    opts: &Options,
    name: &str,
) -> Result<
    (
        bool,
        BTreeMap<IpAddr, bool>,
        BTreeMap<IpAddr, crate::node::Report>,
    ),
    kube::Error,
> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), KUBERNETES_NAMESPACE);
    let lp = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    let slice_list = slices.list(&lp).await?.items;
    let slice_seen = !slice_list.is_empty();
    let mut ready: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for s in &slice_list {
        for ep in &s.endpoints {
            let r = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    *ready.entry(ip).or_insert(false) |= r;
                }
            }
        }
    }
    let reports = crate::node::reports(client, opts, name).await?;
    Ok((slice_seen, ready, reports))
}

fn router_error(metrics: &Metrics, vip: &mut Vip, e: &RouterError) {
    metrics
        .router_errors
        .get_or_create(&labels(&[("kind", e.kind())]))
        .inc();
    tracing::warn!(%e, retry_in = ?vip.backoff, "router");
    vip.last_error = Some(e.to_string());
    vip.degraded = Some(("RouterError", e.to_string()));
    vip.retry_at = Some(Instant::now() + vip.backoff);
    vip.backoff = (vip.backoff * 2).min(MAX_BACKOFF);
    // Read the route again before trusting what we believe is there.
    vip.last_read = None;
}

enum SyncError {
    Router(RouterError),
    Fenced,
}

impl From<RouterError> for SyncError {
    fn from(e: RouterError) -> Self {
        SyncError::Router(e)
    }
}

fn set_route_metrics(metrics: &Metrics, vip: &str, hops: &[IpAddr]) {
    metrics
        .route_next_hops
        .get_or_create(&labels(&[("vip", vip)]))
        .set(hops.len() as i64);
    metrics.route_next_hop.clear();
    for h in hops {
        metrics
            .route_next_hop
            .get_or_create(&labels(&[("vip", vip), ("address", &h.to_string())]))
            .set(1);
    }
}

/// Brings the router's route to `want` (None: keep what was last written, or adopt what is
/// there). Reads it back when `drift_due` or before the first write.
#[allow(clippy::too_many_arguments)]
async fn sync_route(
    driver: &dyn switchyard_router::RouterDriver,
    fence: &Fence,
    metrics: &Metrics,
    id: &str,
    net: ipnet::IpNet,
    vip_label: &str,
    want: Option<Vec<IpAddr>>,
    drift_due: bool,
    vip: &mut Vip,
) -> Result<(), SyncError> {
    let mut on_router: Option<Option<Vec<IpAddr>>> = None;
    if drift_due || vip.route.is_none() {
        let current = driver.get(id).await?;
        vip.last_read = Some(Instant::now());
        let hops = current.as_ref().and_then(|r| {
            (r.network == net && r.owner == CPVIP_OWNER).then(|| r.next_hops.clone())
        });
        if vip.route.is_none() {
            // A new leader starts from what is installed.
            vip.route = Some(hops.clone().unwrap_or_default());
        }
        on_router = Some(hops);
    }
    let target = match want {
        Some(w) => w,
        None => match vip.route.clone() {
            Some(r) if !r.is_empty() => r,
            // Nothing to keep: fail static means not writing at all.
            _ => return Ok(()),
        },
    };
    let believed = vip.route.clone().unwrap_or_default();
    let differs_on_router = on_router
        .as_ref()
        .is_some_and(|h| h.as_deref() != Some(&target[..]));
    if believed == target && !differs_on_router {
        set_route_metrics(metrics, vip_label, &target);
        return Ok(());
    }
    if target.is_empty() {
        return Ok(());
    }
    if !fence.valid() {
        return Err(SyncError::Fenced);
    }
    let route = StaticRoute::new(
        id,
        net,
        target.clone(),
        CPVIP_OWNER,
        format!("switchyard control-plane VIP {}", net.addr()),
    );
    if differs_on_router && believed == target {
        tracing::warn!(route = id, on_router = ?on_router, "route changed on the router: repairing");
    } else {
        tracing::info!(route = id, from = ?believed, to = ?target, "route next hops");
    }
    driver.put(&route).await?;
    metrics
        .route_writes
        .get_or_create(&labels(&[("vip", vip_label)]))
        .inc();
    // The route on the router now; a node leaving it may drop its VIP only once the route
    // is realized (the status says so after this returns).
    vip.route = Some(route.next_hops.clone());
    set_route_metrics(metrics, vip_label, &route.next_hops);
    let deadline = Instant::now() + REALIZE_TIMEOUT;
    loop {
        if driver.realized(id).await? {
            break;
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Router(RouterError::Timeout {
                method: "GET".into(),
                path: format!("realized-state of {id}"),
                secs: REALIZE_TIMEOUT.as_secs_f64(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
