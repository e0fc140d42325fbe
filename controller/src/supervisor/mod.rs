//! Supervisor mode (`--provider supervisor`): the guest-cluster path of NSX-T's paravirtual
//! cloud provider. For each LoadBalancer Service of this (guest) cluster the leader keeps a
//! selector-less LoadBalancer Service and its EndpointSlice in a supervisor cluster (the
//! guest's node addresses and node ports), waits for the supervisor to give it an address
//! and copies the address into the guest Service's status.
//!
//! - Credentials only from the kubeconfig Secret ([`credentials`]); TLS always verified.
//! - Watch-driven: guest Services, Nodes and EndpointSlices, and the supervisor's Services
//!   and EndpointSlices carrying this cluster's label; a pass runs on every change (and every
//!   `--resync`, which also rereads the Secret: a changed Secret starts a new session).
//! - Ownership by labels ([`plan::owner_labels`]): supervisor objects whose guest UID is not
//!   a served guest Service are deleted (after a restart too); objects without this
//!   cluster's labels are never read for ownership, changed or deleted.
//! - Deletes cascade through the guest Service's `load-balancer-cleanup` finalizer: it is
//!   removed only once the supervisor has no object of that guest Service left.

pub mod credentials;
pub mod plan;
pub mod remote;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use switchyard_api::TAG_CLUSTER;

use crate::lead::LeadError;
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::service as s;
use plan::GuestStatus;

/// Supervisor mode's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Secret (in the controller's namespace) holding the supervisor kubeconfig.
    pub secret: String,
    /// The supervisor namespace objects are made in (`None`: the kubeconfig context's).
    pub namespace: Option<String>,
}

/// What the leader needs in supervisor mode.
#[derive(Clone)]
pub struct Ctx {
    /// Guest API client.
    pub client: Client,
    /// Leadership check before each write.
    pub fence: Fence,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The controller's namespace (the Secret is there).
    pub namespace: String,
    /// Cluster name (the `switchyard.io/cluster` label in the supervisor).
    pub cluster: String,
    /// Pass period without changes (and how often the Secret is reread).
    pub resync: Duration,
    /// Settings.
    pub config: Config,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("cluster", &self.cluster)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A connection to the supervisor with its label-selected caches.
struct Session {
    remote: remote::Remote,
    server: String,
    secret_version: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    last_error: Arc<Mutex<Option<String>>>,
    _readers: Vec<crate::AbortOnDrop>,
}

impl Session {
    fn ready(&self) -> bool {
        use futures::FutureExt;
        [
            self.services.wait_until_ready().now_or_never(),
            self.slices.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))))
    }

    fn unavailable(&self) -> Option<String> {
        if self.ready() {
            return None;
        }
        Some(
            self.last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .map_or_else(
                    || format!("connecting to the supervisor {}", self.server),
                    |e| format!("supervisor {}: {e}", self.server),
                ),
        )
    }
}

/// Feeds a reflector stream into `tx` (one unit per change), recording its last error.
fn read<K, S>(
    stream: S,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    last_error: Option<Arc<Mutex<Option<String>>>>,
) -> crate::AbortOnDrop
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    crate::AbortOnDrop(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    if let Some(e) = &last_error
                        && let Ok(mut e) = e.lock()
                    {
                        *e = None;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "supervisor mode: watch error (retrying with backoff)");
                    if let Some(e) = &last_error
                        && let Ok(mut e) = e.lock()
                    {
                        *e = Some(chain(&err));
                    }
                }
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    }))
}

async fn connect(
    ctx: &Ctx,
    tx: &tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Session, String> {
    let (sup, version) = credentials::from_secret(&ctx.client, &ctx.namespace, &ctx.config.secret)
        .await
        .map_err(|e| e.to_string())?;
    let namespace = ctx
        .config
        .namespace
        .clone()
        .or(sup.namespace.clone())
        .ok_or_else(|| {
            "no supervisor namespace (--supervisor-namespace or the kubeconfig context's)"
                .to_string()
        })?;
    let client = Client::try_from(sup.config).map_err(|e| format!("supervisor client: {e}"))?;
    let remote = remote::Remote::new(client, &namespace);
    let selector = format!("{TAG_CLUSTER}={}", ctx.cluster);
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let last_error = Arc::new(Mutex::new(None));
    let readers = vec![
        read(
            reflector(services_w, remote.watch_services(&selector)),
            tx.clone(),
            Some(last_error.clone()),
        ),
        read(
            reflector(slices_w, remote.watch_slices(&selector)),
            tx.clone(),
            Some(last_error.clone()),
        ),
    ];
    tracing::info!(server = %sup.server, %namespace, "supervisor mode: connected");
    Ok(Session {
        remote,
        server: sup.server,
        secret_version: version,
        services,
        slices,
        last_error,
        _readers: readers,
    })
}

/// Leads in supervisor mode until an error or until the future is dropped.
pub async fn run(ctx: Ctx) -> Result<(), LeadError> {
    let c = ctx.client.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (guests, guests_w) = reflector::store::<Service>();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let _guest_readers = [
        read(
            reflector(
                guests_w,
                watcher(Api::<Service>::all(c.clone()), Default::default()).default_backoff(),
            ),
            tx.clone(),
            None,
        ),
        read(
            reflector(
                nodes_w,
                watcher(Api::<Node>::all(c.clone()), Default::default()).default_backoff(),
            ),
            tx.clone(),
            None,
        ),
        read(
            reflector(
                slices_w,
                watcher(Api::<EndpointSlice>::all(c.clone()), Default::default()).default_backoff(),
            ),
            tx.clone(),
            None,
        ),
    ];
    let mut session = connect(&ctx, &tx).await;
    let mut resync = tokio::time::interval(ctx.resync);
    loop {
        tokio::select! {
            ev = rx.recv() => if ev.is_none() { return Ok(()) },
            _ = resync.tick() => {
                // (Re)connect, or start over when the Secret changed.
                let current = credentials::from_secret(&ctx.client, &ctx.namespace, &ctx.config.secret).await;
                let stale = match (&session, &current) {
                    (Ok(s), Ok((_, v))) => &s.secret_version != v,
                    _ => true,
                };
                if stale {
                    session = connect(&ctx, &tx).await;
                    if let Err(e) = &session {
                        tracing::warn!(error = %e, "supervisor mode: no supervisor connection");
                        ctx.metrics
                            .driver_errors
                            .get_or_create(&vec![
                                ("driver".into(), "supervisor".into()),
                                ("kind".into(), "config".into()),
                            ])
                            .inc();
                    }
                }
            }
        }
        while rx.try_recv().is_ok() {}
        use futures::FutureExt;
        let guest_ready = [
            guests.wait_until_ready().now_or_never(),
            nodes.wait_until_ready().now_or_never(),
            slices.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))));
        if !guest_ready {
            continue;
        }
        let started = Instant::now();
        pass(&ctx, &guests, &nodes, &slices, &session).await?;
        ctx.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// An error with its causes (`a: b: c`): a TLS failure is named in the innermost one.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(a) if a.code >= 500 => "http_5xx",
        kube::Error::Api(_) => "http_4xx",
        kube::Error::HyperError(_) | kube::Error::Service(_) => "transport",
        _ => "bad_response",
    }
}

/// Counts a failed supervisor call and says it in the log.
fn failed(ctx: &Ctx, what: &str, e: &kube::Error) {
    tracing::warn!(error = %chain(e), "supervisor mode: {what} failed");
    ctx.metrics
        .driver_errors
        .get_or_create(&vec![
            ("driver".into(), "supervisor".into()),
            ("kind".into(), error_kind(e).into()),
        ])
        .inc();
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(a) if a.code == code)
}

/// One pass over every guest Service.
async fn pass(
    ctx: &Ctx,
    guests: &Store<Service>,
    nodes: &Store<Node>,
    slices: &Store<EndpointSlice>,
    session: &Result<Session, String>,
) -> Result<(), LeadError> {
    let guests = guests.state();
    let nodes: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
    let slices: Vec<EndpointSlice> = slices.state().iter().map(|e| (**e).clone()).collect();
    let local = plan::local_nodes(&slices);
    // Connecting without an error yet: wait for the supervisor's lists (no status flips on
    // every start).
    if let Ok(s) = session
        && !s.ready()
        && s.last_error.lock().map(|e| e.is_none()).unwrap_or(true)
    {
        return Ok(());
    }
    let sup = match session {
        Ok(s) => match s.unavailable() {
            None => Ok(s),
            Some(e) => Err(e),
        },
        Err(e) => Err(format!(
            "Secret {}/{}: {e}",
            ctx.namespace, ctx.config.secret
        )),
    };
    // 1. Orphans: tagged supervisor objects of no served guest Service.
    let served_uids: BTreeSet<String> = guests
        .iter()
        .filter(|g| plan::served(g))
        .filter_map(|g| g.uid())
        .collect();
    if let Ok(sup) = &sup {
        let services = sup.services.state();
        let orphan_services = plan::orphans(
            &ctx.cluster,
            &served_uids,
            services
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .map(|o| (o.metadata.name.as_deref().unwrap_or_default(), o.labels())),
        );
        let sup_slices = sup.slices.state();
        let orphan_slices = plan::orphans(
            &ctx.cluster,
            &served_uids,
            sup_slices
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .map(|o| (o.metadata.name.as_deref().unwrap_or_default(), o.labels())),
        );
        for name in orphan_services {
            fenced(ctx)?;
            match sup.remote.delete_service(&name).await {
                Ok(()) => {
                    tracing::info!(service = %name, "supervisor mode: deleted the supervisor Service (its guest Service is gone)")
                }
                Err(e) => failed(ctx, "deleting a supervisor Service", &e),
            }
        }
        for name in orphan_slices {
            fenced(ctx)?;
            match sup.remote.delete_slice(&name).await {
                Ok(()) => {}
                Err(e) => failed(ctx, "deleting a supervisor EndpointSlice", &e),
            }
        }
    }
    // 2. Each guest Service of Switchyard's class.
    let mut pending = 0;
    for guest in guests.iter().filter(|g| s::is_ours(g)) {
        if plan::served(guest) {
            if !serve(ctx, guest, &nodes, &local, &sup).await? {
                pending += 1;
            }
        } else if s::has_finalizer(guest) {
            release(ctx, guest, &sup).await?;
        }
    }
    ctx.metrics.pending.set(pending);
    Ok(())
}

fn fenced(ctx: &Ctx) -> Result<(), LeadError> {
    if ctx.fence.valid() {
        Ok(())
    } else {
        Err(LeadError::Fenced)
    }
}

/// Writes the guest Service (object or status) unless unchanged; `None` on a failed write
/// (a stale copy: the watch brings the fresh one and another pass).
async fn write_guest(
    ctx: &Ctx,
    old: &Service,
    new: &Service,
    status: bool,
) -> Result<Option<Service>, LeadError> {
    if (status && new.status == old.status) || (!status && new.metadata == old.metadata) {
        return Ok(Some(old.clone()));
    }
    fenced(ctx)?;
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &old.namespace().unwrap_or_default());
    let r = if status {
        api.replace_status(&old.name_any(), &PostParams::default(), new)
            .await
    } else {
        api.replace(&old.name_any(), &PostParams::default(), new)
            .await
    };
    match r {
        Ok(w) => Ok(Some(w)),
        Err(e) => {
            if is_code(&e, 409) {
                ctx.metrics.conflicts.inc();
            }
            tracing::debug!(service = %s::key(old), error = %e, "supervisor mode: guest write not done (next pass)");
            Ok(None)
        }
    }
}

/// Serves one guest Service; true when it has an address.
async fn serve(
    ctx: &Ctx,
    guest: &Service,
    nodes: &[Node],
    local: &std::collections::BTreeMap<String, BTreeSet<String>>,
    sup: &Result<&Session, String>,
) -> Result<bool, LeadError> {
    // The finalizer before anything exists in the supervisor.
    let mut cur = guest.clone();
    if !s::has_finalizer(&cur) {
        let mut new = cur.clone();
        s::set_finalizer(&mut new, true);
        match write_guest(ctx, &cur, &new, false).await? {
            Some(w) => cur = w,
            None => return Ok(false),
        }
    }
    let sup = match sup {
        Ok(sup) => *sup,
        Err(e) => {
            // Unreachable supervisor: an address already copied stays (the supervisor's
            // load balancer still serves it); a pending Service says why it waits.
            if s::ingress_ips(&cur).is_empty() {
                let st = GuestStatus {
                    ips: Vec::new(),
                    ok: false,
                    reason: "SupervisorUnavailable".into(),
                    message: e.clone(),
                };
                write_guest(ctx, &cur, &plan::with_status(&cur, &st), true).await?;
                return Ok(false);
            }
            return Ok(true);
        }
    };
    let Some(w) = plan::wanted(&ctx.cluster, &cur, nodes, local) else {
        // A port without a node port: the supervisor has nothing to send traffic to.
        let st = GuestStatus {
            ips: Vec::new(),
            ok: false,
            reason: "NoNodePort".into(),
            message: "supervisor mode sends traffic to the guest nodes' node ports: every port needs one (is spec.allocateLoadBalancerNodePorts false?)".into(),
        };
        write_guest(ctx, &cur, &plan::with_status(&cur, &st), true).await?;
        return Ok(false);
    };
    let ns = sup.remote.namespace();
    let remote = &sup.remote;
    let uid = cur.uid().unwrap_or_default();
    let existing = sup.services.get(&ObjectRef::new(&w.name).within(ns));
    let status = match existing.as_deref() {
        // An earlier guest Service of the same name: deleted as an orphan first.
        Some(e) if plan::guest_uid(e.labels()) != Some(uid.as_str()) => {
            plan::guest_status(ns, &w.name, None)
        }
        Some(e) => {
            let mut e = e.clone();
            if let Some(updated) = w.update_service(&e) {
                fenced(ctx)?;
                match remote.replace_service(&updated).await {
                    Ok(u) => e = u,
                    Err(err) if is_code(&err, 409) => {}
                    Err(err) => failed(ctx, "updating a supervisor Service", &err),
                }
            }
            match sup.slices.get(&ObjectRef::new(&w.name).within(ns)) {
                None => {
                    fenced(ctx)?;
                    match remote.create_slice(&w.slice(&e)).await {
                        Ok(()) => {}
                        Err(err) if is_code(&err, 409) => {
                            // Created a moment ago (not watched yet), or someone else's.
                            check_owned_slice(ctx, remote, &w.name).await;
                        }
                        Err(err) => failed(ctx, "creating a supervisor EndpointSlice", &err),
                    }
                }
                Some(slice) => {
                    if let Some(updated) = w.update_slice(&slice, &e) {
                        fenced(ctx)?;
                        match remote.replace_slice(&updated).await {
                            Ok(()) => {}
                            Err(err) if is_code(&err, 409) => {}
                            Err(err) => failed(ctx, "updating a supervisor EndpointSlice", &err),
                        }
                    }
                }
            }
            plan::guest_status(ns, &w.name, Some(&e))
        }
        None => {
            fenced(ctx)?;
            match remote.create_service(&w.service(ns)).await {
                Ok(created) => {
                    tracing::info!(service = %s::key(&cur), supervisor = %format!("{ns}/{}", w.name), "supervisor mode: created the supervisor Service");
                    fenced(ctx)?;
                    if let Err(err) = remote.create_slice(&w.slice(&created)).await
                        && !is_code(&err, 409)
                    {
                        failed(ctx, "creating a supervisor EndpointSlice", &err);
                    }
                    plan::guest_status(ns, &w.name, Some(&created))
                }
                Err(err) if is_code(&err, 409) => match remote.get_service(&w.name).await {
                    // Ours, created a moment ago and not watched yet.
                    Ok(Some(o)) if plan::is_owned(&ctx.cluster, o.labels()) => {
                        plan::guest_status(ns, &w.name, Some(&o))
                    }
                    Ok(_) => GuestStatus {
                        ips: Vec::new(),
                        ok: false,
                        reason: "NotOwned".into(),
                        message: format!(
                            "the supervisor has a Service {ns}/{} without this cluster's labels ({TAG_CLUSTER}={}); it is left alone",
                            w.name, ctx.cluster
                        ),
                    },
                    Err(err) => {
                        failed(ctx, "reading a supervisor Service", &err);
                        return Ok(false);
                    }
                },
                Err(err) => {
                    failed(ctx, "creating a supervisor Service", &err);
                    GuestStatus {
                        ips: Vec::new(),
                        ok: false,
                        reason: "SupervisorError".into(),
                        message: format!(
                            "creating Service {ns}/{} in the supervisor: {err}",
                            w.name
                        ),
                    }
                }
            }
        }
    };
    let has = status.ok;
    let new = plan::with_status(&cur, &status);
    if new.status != cur.status
        && let Some(_) = write_guest(ctx, &cur, &new, true).await?
        && has
        && s::ingress_ips(&cur) != status.ips
    {
        ctx.metrics.allocations.inc();
        tracing::info!(service = %s::key(&cur), addresses = ?status.ips, "supervisor mode: address copied from the supervisor");
    }
    Ok(has)
}

async fn check_owned_slice(ctx: &Ctx, remote: &remote::Remote, name: &str) {
    if let Ok(Some(o)) = remote.get_slice(name).await
        && !plan::is_owned(&ctx.cluster, o.labels())
    {
        tracing::warn!(
            slice = name,
            "supervisor mode: an EndpointSlice of that name without this cluster's labels exists; left alone"
        );
    }
}

/// Releases a guest Service no longer served: once the supervisor holds nothing of it (the
/// orphan step deleted it), its status is cleared and the finalizer removed.
async fn release(
    ctx: &Ctx,
    guest: &Service,
    sup: &Result<&Session, String>,
) -> Result<(), LeadError> {
    let Ok(sup) = sup else {
        // Cannot confirm the supervisor objects are gone: keep the finalizer.
        return Ok(());
    };
    let uid = guest.uid().unwrap_or_default();
    let left = sup
        .services
        .state()
        .iter()
        .any(|o| plan::guest_uid(o.labels()) == Some(uid.as_str()))
        || sup
            .slices
            .state()
            .iter()
            .any(|o| plan::guest_uid(o.labels()) == Some(uid.as_str()));
    if left {
        return Ok(());
    }
    let mut cur = guest.clone();
    if !s::is_deleting(&cur) {
        match write_guest(ctx, &cur, &plan::cleared(&cur), true).await? {
            Some(w) => cur = w,
            None => return Ok(()),
        }
    }
    let had = !s::ingress_ips(guest).is_empty();
    let mut new = cur.clone();
    s::set_finalizer(&mut new, false);
    if write_guest(ctx, &cur, &new, false).await?.is_some() {
        if had {
            ctx.metrics.releases.inc();
        }
        tracing::info!(service = %s::key(guest), "supervisor mode: released (the supervisor's objects are gone)");
    }
    Ok(())
}
