//! The daemon: [`Agent::start`] assembles the agent and [`AgentHandle`]
//! stops it; [`watch_reconnects`] reconciles again whenever OVSDB or the
//! OpenFlow connection comes back.
//!
//! Start-up order: metrics/health endpoint, API client and the node's pod
//! CIDR, OVSDB, the bridge, OpenFlow, the gateway port, reconciliation
//! (attachments and IP pools rebuilt from OVSDB, stale ports removed, flows
//! re-installed under a new cookie generation), and only then the CNI socket.
//! Before the socket exists the `switchyard` binary reports STATUS as 50 and
//! ADD as 11 (try again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ipnet::Ipv4Net;
use switchyard_ovs::{openflow, ovsdb};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adds_in_flight::AddsInFlight;
use crate::apiserver::{ApiClient, ApiError};
use crate::attachment::Attachment;
use crate::cni::CniServer;
use crate::config::{AgentConfig, SegmentKind};
use crate::drivers::{Drivers, NetnsLinks};
use crate::gateway::{self, GatewayError};
use crate::host_services::HostServices;
use crate::ipam::{AttachmentKey, IpamError, Pool};
use crate::keylock::KeyLocks;
use crate::metrics::{self, Metrics, READY_OPENFLOW, READY_OVSDB, READY_RECONCILED};
use crate::netns::{Netlink, NetnsError};
use crate::overlay::Overlay;
use crate::reconcile::{self, ReconcileError, Switch};
use crate::state::{NODE_POOL, NodeState, lock};
use crate::wait_for;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics endpoint could not listen.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The API client could not be built.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The bridge or gateway could not be set up.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Netlink in the node namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The overlay tunnel could not be set up.
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
    /// A `vlan` segment's uplink could not be attached.
    #[error(transparent)]
    Uplink(#[from] crate::uplink::UplinkError),
    /// A segment's pool is unusable.
    #[error("segment {segment}: {source}")]
    Pool {
        /// The segment.
        segment: String,
        /// The error.
        source: IpamError,
    },
    /// Reconciliation with OVS failed.
    #[error("reconciliation failed: {0}")]
    Reconcile(#[from] ReconcileError),
    /// The CNI socket could not be created.
    #[error("cannot serve the CNI socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The node agent.
#[derive(Debug)]
pub struct Agent;

/// A running agent; [`AgentHandle::shutdown`] stops it (OVS state stays).
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<NodeState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    metrics_addr: std::net::SocketAddr,
}

impl AgentHandle {
    /// Address the metrics/health endpoint listens on.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.metrics_addr
    }

    /// The node's pod CIDR.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.shared.pod_cidr
    }

    /// The attachments the agent knows now.
    pub fn attachments(&self) -> Vec<Attachment> {
        lock(&self.shared.attachments).values().cloned().collect()
    }

    /// Every allocated address with its holder, over all pools.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, AttachmentKey)> {
        self.shared.allocations()
    }

    /// Resolves when a shutdown was requested or a serving task ended.
    pub async fn wait(&mut self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Stops serving: closes the CNI socket (and removes it), stops the
    /// metrics endpoint and background tasks. Ports, flows and addresses
    /// stay as they are.
    pub async fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.shared.config.cni_socket);
    }
}

fn prepare_socket_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Agent {
    /// Starts the agent in the calling thread's network namespace, which
    /// must be the node's (the one `ovs-vswitchd` runs in). Returns once the
    /// CNI socket serves requests. Waits (with log lines) for the API
    /// server, the Node's pod CIDR, OVSDB and the bridge's OpenFlow socket;
    /// fails on errors that waiting cannot fix.
    pub async fn start(mut config: AgentConfig) -> Result<AgentHandle, StartError> {
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let (shutdown, _) = watch::channel(false);
        let mut tasks = Vec::new();

        let health = metrics.health.clone();
        for name in [READY_OVSDB, READY_OPENFLOW] {
            health.set(name, Err("not connected yet".into()));
        }
        health.set(READY_RECONCILED, Err("starting".into()));
        let (metrics_addr, server) = metrics::bind(config.listen_address, metrics.clone())
            .await
            .map_err(|source| StartError::Metrics {
                addr: config.listen_address,
                source,
            })?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        }));
        tracing::info!(%metrics_addr, "metrics and health endpoint listening");

        let api = ApiClient::new(&config.kube).await?;
        let pod_cidr = wait_for::pod_cidr(&api, &config.node_name).await;
        tracing::info!(node = %config.node_name, %pod_cidr, "node pod CIDR");

        let ovsdb = wait_for::ovsdb(&config.ovsdb_endpoint).await;
        gateway::ensure_bridge(&ovsdb, &config).await?;
        let openflow = wait_for::openflow(&config).await;
        tasks.push(tokio::spawn(switchyard_daemon::probe::run(
            health.clone(),
            readiness_checks(&ovsdb, &openflow),
        )));
        let host = Arc::new(Netlink::current()?);
        if !config.mtu_configured {
            // Pods (and sy-gw0) leave room for the encapsulation.
            match crate::overlay::pod_mtu_from_underlay(api.client(), &config.node_name, &host)
                .await
            {
                Some(mtu) if crate::config::MTU_RANGE.contains(&mtu) => config.mtu = mtu,
                other => {
                    tracing::warn!(derived = ?other, default = config.mtu, "cannot derive the pod MTU from the underlay; using the default")
                }
            }
        }
        let gw = gateway::ensure_gateway(&ovsdb, &host, &config, pod_cidr).await?;
        let policy = crate::policy::NetworkPolicies::start(api.client(), gw.ip);
        crate::overlay::ensure_tunnel_port(&ovsdb, &config.bridge, config.tunnel_type).await?;
        let overlay = Overlay::new(&config.node_name, openflow.clone());
        let host_services = HostServices::new(config.service_cidr);
        let cluster_pools = crate::vlan_pool::ClusterPools::new(api.client(), &config.node_name);
        // The file's segments and the API's Segment objects (segment_watch).
        let segments = crate::segment_watch::initial(api.client(), &config.segments).await;
        let uplinks = crate::uplink::ensure_uplinks(&ovsdb, &config.bridge, &segments).await?;

        let mut pools = BTreeMap::new();
        pools.insert(NODE_POOL.to_string(), Pool::for_node_cidr(pod_cidr));
        for seg in &segments {
            if seg.kind == SegmentKind::Vlan {
                let pool = seg.pool().map_err(|source| StartError::Pool {
                    segment: seg.name.clone(),
                    source,
                })?;
                if let Some(pool) = pool {
                    pools.insert(seg.name.clone(), pool);
                }
            }
        }

        let api_reads = Arc::new(crate::api_cache::CachedApi::start(
            api.clone(),
            &config.node_name,
        ));
        let io = Drivers {
            links: Arc::new(NetnsLinks::new(host.clone(), config.netns_policy())),
            ports: Arc::new(ovsdb.clone()),
            flows: Arc::new(openflow.clone()),
            api: api_reads.clone(),
        };
        let shared = Arc::new(NodeState {
            segments: RwLock::new(Arc::new(segments)),
            config,
            io,
            pod_cidr,
            gateway: RwLock::new(gw),
            cluster_pools,
            uplinks: RwLock::new(uplinks),
            pools: Mutex::new(pools),
            attachments: Mutex::new(BTreeMap::new()),
            ofports: Mutex::new(BTreeSet::new()),
            locks: KeyLocks::default(),
            adds: AddsInFlight::default(),
            mac_claims: Default::default(),
            flow_gate: tokio::sync::RwLock::new(None),
            ready: ready.clone(),
            metrics,
            policy,
        });
        // Every policy known before the first resync: it replaces the flows
        // of the agent before (policy flows included) in one bundle.
        shared.policy.wait_listed().await;
        // Remote nodes first: the first resync then carries their flows.
        overlay.seed(api.client()).await;
        reconcile::reconcile(&shared, &overlay, None).await?;
        reconcile::remove_orphan_host_ends(&shared).await;
        // DELs the binary queued while this agent was down, before new
        // requests (a pod whose DEL is queued may be ADDed again).
        crate::cni::run_queued_dels(&shared, &shared.config.cni_socket).await;

        let socket = shared.config.cni_socket.clone();
        let listener = prepare_socket_dir(&socket)
            .and_then(|()| switchyard_cni::bind_agent_socket(&socket))
            .map_err(|source| StartError::Socket {
                path: socket.clone(),
                source,
            })?;
        // ADDs read namespaces and pods from watch caches; give them a moment
        // to fill (reads fall back to the API server meanwhile).
        if !api_reads
            .wait_ready(std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(
                "namespace and pod caches not filled yet; ADDs ask the API server until they are"
            );
        }
        ready.store(true, Ordering::Release);
        health.set(READY_RECONCILED, Ok(()));
        tracing::info!(socket = %socket.display(), "serving CNI requests");

        let segment_ovsdb = ovsdb.clone();
        let handler = Arc::new(CniServer(shared.clone()));
        let mut stop = shutdown.subscribe();
        let stopper = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let result = switchyard_cni::serve_until(listener, handler, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "CNI socket failed");
                let _ = stopper.send(true);
            }
        }));
        tasks.push(tokio::spawn(watch_reconnects(
            shared.clone(),
            overlay.clone(),
            host_services.clone(),
            SwitchClients {
                ovsdb,
                openflow,
                host,
            },
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(
            overlay.clone().run(api.client(), shutdown.subscribe()),
        ));
        tasks.push(tokio::spawn(host_services.run(shutdown.subscribe())));
        let (segments_now, held_now) = (shared.clone(), shared.clone());
        tasks.push(tokio::spawn(crate::vlan_pool::keep_ownership(
            shared.cluster_pools.clone(),
            move || segments_now.segments(),
            move |segment| held_now.held_in(segment),
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(keep_policies(
            shared.clone(),
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(read_policy_counters(
            shared.clone(),
            shutdown.subscribe(),
        )));
        // Segments from the API (switchyard.io Segment objects), applied live.
        tasks.push(tokio::spawn(crate::segment_watch::run(
            shared.clone(),
            overlay.clone(),
            segment_ovsdb,
            api.client(),
            shutdown.subscribe(),
        )));
        // LoadBalancer addresses of L2 pools: ARP answers and heartbeats (announce/).
        tasks.push(tokio::spawn(crate::announce::run(
            api.client(),
            shared.config.node_name.clone(),
            shared.metrics.announce.clone(),
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(crate::egress::keep_masquerade(
            shared.pod_cidr,
            shutdown.subscribe(),
        )));

        Ok(AgentHandle {
            shared,
            shutdown,
            tasks,
            metrics_addr,
        })
    }
}

/// The readiness checks of [`READY_OVSDB`] and [`READY_OPENFLOW`]: an echo
/// round trip each (a stopped ovsdb-server keeps its socket open; only an
/// unanswered echo shows it).
fn readiness_checks(
    ovsdb: &ovsdb::Client,
    openflow: &openflow::Client,
) -> Vec<switchyard_daemon::probe::Check> {
    use switchyard_daemon::probe::Check;
    let (ovsdb, openflow) = (ovsdb.clone(), openflow.clone());
    vec![
        Check::new(READY_OVSDB, move || {
            let ovsdb = ovsdb.clone();
            async move { ovsdb.echo().await.map_err(|e| e.to_string()) }
        }),
        Check::new(READY_OPENFLOW, move || {
            let openflow = openflow.clone();
            async move { openflow.echo().await.map_err(|e| e.to_string()) }
        }),
    ]
}

/// The concrete clients the daemon keeps for its own jobs: watching the
/// connections and re-ensuring the switch after a reconnect.
#[derive(Debug)]
struct SwitchClients {
    ovsdb: ovsdb::Client,
    openflow: openflow::Client,
    host: Arc<Netlink>,
}

/// Re-runs reconciliation whenever OVSDB or the OpenFlow connection comes
/// back (ovsdb-server or ovs-vswitchd restarted: flows may be gone, the
/// gateway tap recreated without its address).
async fn watch_reconnects(
    shared: Arc<NodeState>,
    overlay: Arc<Overlay>,
    host_services: Arc<HostServices>,
    clients: SwitchClients,
    mut stop: watch::Receiver<bool>,
) {
    let mut ovsdb_events = clients.ovsdb.connection_events();
    let mut of_events = clients.openflow.connection_events();
    let mut of_seen = of_events.borrow().generation;
    loop {
        let trigger = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            ev = ovsdb_events.recv() => match ev {
                Ok(ovsdb::ConnectionEvent::Connected { generation }) if generation > 1 => "OVSDB reconnected",
                Ok(ovsdb::ConnectionEvent::Disconnected { reason, .. }) => {
                    tracing::warn!(%reason, "OVSDB connection lost");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                _ => continue,
            },
            changed = of_events.changed() => {
                if changed.is_err() { return; }
                let state = *of_events.borrow_and_update();
                if !state.connected {
                    tracing::warn!("OpenFlow connection lost");
                    continue;
                }
                if state.generation <= of_seen { continue; }
                of_seen = state.generation;
                "OpenFlow reconnected"
            }
        };
        tracing::info!(trigger, "reconciling after reconnect");
        let health = shared.metrics.health.clone();
        health.set(READY_RECONCILED, Err(format!("reconciling ({trigger})")));
        // Retry until it works (OVS may still be coming up).
        loop {
            let switch = Switch {
                ovsdb: &clients.ovsdb,
                host: &clients.host,
            };
            match reconcile::reconcile(&shared, &overlay, Some(switch)).await {
                Ok(()) => {
                    health.set(READY_RECONCILED, Ok(()));
                    // The overlay re-applies its routes after the resync;
                    // the Service route is re-applied here.
                    host_services.reconciled();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(wait_for::RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}

/// Re-compiles NetworkPolicy flows whenever a watched object changes; a
/// failed update is retried (the installed flows stay as they were).
async fn keep_policies(shared: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = shared.policy.changed() => {}
        }
        // Coalesce a burst of watch events into one bundle.
        tokio::time::sleep(POLICY_COALESCE).await;
        if let Err(e) = shared.sync_policies().await {
            tracing::warn!(error = %e, "NetworkPolicy flows not updated; retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(wait_for::RETRY_DELAY) => {}
            }
            shared.policy.poke();
        }
    }
}

/// How long a policy update waits for more watch events.
const POLICY_COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

/// How often the policy counters are read (and denied connections logged:
/// at most one line per isolated pod and period).
const POLICY_COUNTERS_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

async fn read_policy_counters(shared: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(POLICY_COUNTERS_PERIOD) => {}
        }
        if let Err(e) = shared
            .policy
            .read_counters(shared.io.flows.as_ref(), &shared.metrics)
            .await
        {
            tracing::debug!(error = %e, "NetworkPolicy counters not read");
        }
    }
}
