//! The daemon: start-up, the CNI verbs, reconciliation with OVS.
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
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use switchyard_cni::{
    CniError, CniHandler, CniRequest, CniResult, ErrorCode, Interface, IpConfig, Route,
};
use switchyard_ovs::openflow::{self, FlowMod, FlowStatsRequest};
use switchyard_ovs::ovsdb::{self, PortSpec};
use switchyard_pipeline::{self as pipeline, Cookie, Owner};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::adds_in_flight::AddsInFlight;
use crate::apiserver::{ApiClient, ApiError};
use crate::attachment::{self, Attachment};
use crate::config::{AgentConfig, DatapathType, SegmentKind};
use crate::flows::{self, Gateway};
use crate::gateway::{self, GatewayError, OFPORT_TIMEOUT};
use crate::ipam::{AttachmentKey, IpamError, Pool};
use crate::keylock::KeyLocks;
use crate::mac::MacAddr;
use crate::metrics::{self, HttpState, Metrics};
use crate::netns::{self, Netlink, Netns, NetnsError, NetnsPolicy, PodInterfaceSpec};
use crate::segment;

/// Name of the pool of overlay segments (the node's pod CIDR).
const NODE_POOL: &str = "@node";
/// Delay between start-up attempts that wait for something external.
const RETRY_DELAY: Duration = Duration::from_millis(500);

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
    Reconcile(String),
    /// The CNI socket could not be created.
    #[error("cannot serve the CNI socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn cni_err(code: ErrorCode, msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError::new(code, msg, details.to_string())
}

fn ovs_err(what: &str, e: impl std::fmt::Display) -> CniError {
    cni_err(ErrorCode::OvsFailure, format!("{what} failed"), e)
}

/// State shared by the CNI handlers and the background tasks.
#[derive(Debug)]
struct Shared {
    config: AgentConfig,
    ovsdb: ovsdb::Client,
    openflow: openflow::Client,
    api: ApiClient,
    host: Netlink,
    pod_cidr: Ipv4Net,
    gateway: RwLock<Gateway>,
    /// Remote nodes of the overlay (flows share the cookie generation).
    overlay: Arc<crate::overlay::Overlay>,
    /// Cluster-wide address pools of `vlan` segments (API server).
    cluster_pools: crate::vlan_pool::ClusterPools,
    /// Uplink trunks of `vlan` segments.
    uplinks: RwLock<Vec<crate::uplink::Uplink>>,
    pools: Mutex<BTreeMap<String, Pool>>,
    attachments: Mutex<BTreeMap<AttachmentKey, Attachment>>,
    /// ofports requested for pods (recorded or being added).
    ofports: Mutex<BTreeSet<u32>>,
    locks: KeyLocks,
    /// ADDs a GC's valid list cannot account for (see [`AddsInFlight`]).
    adds: AddsInFlight,
    /// Current cookie generation; written only by a full flow resync, read
    /// (held) by requests while they install or delete a pod's flows.
    flow_gate: tokio::sync::RwLock<Option<u8>>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    policy: NetnsPolicy,
}

/// The node agent.
#[derive(Debug)]
pub struct Agent;

/// A running agent; [`AgentHandle::shutdown`] stops it (OVS state stays).
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
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
        lock(&self.shared.pools)
            .values()
            .flat_map(|p| {
                p.allocations()
                    .map(|(ip, k)| (ip, k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connect_ovsdb(endpoint: &str) -> ovsdb::Client {
    let mut attempt = 0u32;
    loop {
        match ovsdb::Client::connect(endpoint).await {
            Ok(c) => return c,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(20) {
                    tracing::warn!(%endpoint, error = %e, attempt, "cannot reach OVSDB yet; retrying");
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// Settings of the OpenFlow connection: a short reconnect backoff, so the
/// flows are back soon after ovs-vswitchd restarts (the agent replays them on
/// every new connection generation, see `watch_reconnects`).
fn openflow_config(config: &AgentConfig) -> openflow::ClientConfig {
    openflow::ClientConfig {
        request_timeout: Duration::from_secs(30),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(250),
        ..openflow::ClientConfig::for_bridge(&config.ovs_rundir, &config.bridge)
    }
}

/// Connects to the bridge's OpenFlow socket, retrying until ovs-vswitchd is
/// there (the client needs its first attempt to succeed; it reconnects by
/// itself afterwards).
async fn connect_openflow(config: &AgentConfig) -> openflow::Client {
    let mut attempt = 0u32;
    loop {
        match openflow::Client::connect(openflow_config(config)).await {
            Ok(c) => return c,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(20) {
                    tracing::warn!(socket = %config.bridge_mgmt_socket().display(), error = %e, attempt, "cannot reach the bridge's OpenFlow socket yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn wait_pod_cidr(api: &ApiClient, node: &str) -> Ipv4Net {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let log = attempt == 1 || attempt.is_multiple_of(20);
        match api.node_pod_cidr(node).await {
            Ok(Some(cidr)) => return cidr,
            Ok(None) if log => {
                tracing::warn!(node, "Node has no spec.podCIDR yet; waiting")
            }
            Err(e) if log => {
                tracing::warn!(node, error = %e, "cannot read the Node's pod CIDR yet; retrying")
            }
            _ => {}
        }
        tokio::time::sleep(RETRY_DELAY).await;
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

        let (metrics_addr, server) = metrics::bind(
            config.listen_address,
            HttpState {
                metrics: metrics.clone(),
                ready: ready.clone(),
            },
        )
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
        let pod_cidr = wait_pod_cidr(&api, &config.node_name).await;
        tracing::info!(node = %config.node_name, %pod_cidr, "node pod CIDR");

        let ovsdb = connect_ovsdb(&config.ovsdb_endpoint).await;
        gateway::ensure_bridge(&ovsdb, &config).await?;
        let openflow = connect_openflow(&config).await;
        let host = Netlink::current()?;
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
        crate::overlay::ensure_tunnel_port(&ovsdb, &config.bridge, config.tunnel_type).await?;
        let overlay =
            crate::overlay::Overlay::new(&config.node_name, config.service_cidr, openflow.clone());
        let cluster_pools = crate::vlan_pool::ClusterPools::new(api.client(), &config.node_name);
        let uplinks = crate::uplink::ensure_uplinks(&ovsdb, &config).await?;

        let mut pools = BTreeMap::new();
        pools.insert(NODE_POOL.to_string(), Pool::for_node_cidr(pod_cidr));
        for seg in &config.segments {
            if seg.kind == SegmentKind::Vlan
                && let Some(subnet) = seg.subnet
            {
                let pool = Pool::new(subnet, seg.gateway).map_err(|source| StartError::Pool {
                    segment: seg.name.clone(),
                    source,
                })?;
                pools.insert(seg.name.clone(), pool);
            }
        }

        let shared = Arc::new(Shared {
            policy: config.netns_policy(),
            config,
            ovsdb,
            openflow,
            api,
            host,
            pod_cidr,
            gateway: RwLock::new(gw),
            overlay,
            cluster_pools,
            uplinks: RwLock::new(uplinks),
            pools: Mutex::new(pools),
            attachments: Mutex::new(BTreeMap::new()),
            ofports: Mutex::new(BTreeSet::new()),
            locks: KeyLocks::default(),
            adds: AddsInFlight::default(),
            flow_gate: tokio::sync::RwLock::new(None),
            ready: ready.clone(),
            metrics,
        });
        // Remote nodes first: the first resync then carries their flows.
        shared.overlay.seed(shared.api.client()).await;
        shared
            .reconcile(false)
            .await
            .map_err(StartError::Reconcile)?;

        let socket = shared.config.cni_socket.clone();
        let listener = prepare_socket_dir(&socket)
            .and_then(|()| switchyard_cni::bind_agent_socket(&socket))
            .map_err(|source| StartError::Socket {
                path: socket.clone(),
                source,
            })?;
        ready.store(true, Ordering::Release);
        tracing::info!(socket = %socket.display(), "serving CNI requests");

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
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(
            shared
                .overlay
                .clone()
                .run(shared.api.client(), shutdown.subscribe()),
        ));
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

/// Re-runs reconciliation whenever OVSDB or the OpenFlow connection comes
/// back (ovsdb-server or ovs-vswitchd restarted: flows may be gone, the
/// gateway tap recreated without its address).
async fn watch_reconnects(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ovsdb_events = shared.ovsdb.connection_events();
    let mut of_events = shared.openflow.connection_events();
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
        // Retry until it works (OVS may still be coming up).
        loop {
            match shared.reconcile(true).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}

/// A pod attachment's state as reported by CHECK.
fn describe_differences(diffs: &[String]) -> String {
    diffs.join("; ")
}

impl Shared {
    fn gateway(&self) -> Gateway {
        *self.gateway.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update_gauge(&self) {
        let n = lock(&self.attachments).len();
        self.metrics
            .pods_attached
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn pool_name(&self, segment: &str) -> String {
        match self.config.segment(segment) {
            Some(s) if s.kind == SegmentKind::Vlan => s.name.clone(),
            _ => NODE_POOL.to_string(),
        }
    }

    /// Rebuilds attachments and pools from OVSDB, removes stale ports,
    /// re-installs every flow under a new generation. `after_reconnect`
    /// also re-ensures the bridge and gateway.
    async fn reconcile(&self, after_reconnect: bool) -> Result<(), String> {
        self.metrics.reconcile_runs.inc();
        if after_reconnect {
            gateway::ensure_bridge(&self.ovsdb, &self.config)
                .await
                .map_err(|e| e.to_string())?;
            let gw = gateway::ensure_gateway(&self.ovsdb, &self.host, &self.config, self.pod_cidr)
                .await
                .map_err(|e| e.to_string())?;
            *self.gateway.write().unwrap_or_else(|p| p.into_inner()) = gw;
            crate::overlay::ensure_tunnel_port(
                &self.ovsdb,
                &self.config.bridge,
                self.config.tunnel_type,
            )
            .await
            .map_err(|e| e.to_string())?;
            let uplinks = crate::uplink::ensure_uplinks(&self.ovsdb, &self.config)
                .await
                .map_err(|e| e.to_string())?;
            *self.uplinks.write().unwrap_or_else(|p| p.into_inner()) = uplinks;
        }
        let ports = self
            .ovsdb
            .find_ports_by_external_id(attachment::KEY_OWNER, attachment::OWNER_VALUE)
            .await
            .map_err(|e| format!("listing the agent's ports: {e}"))?;
        let mut live = Vec::new();
        for port in ports {
            let ofport = match self.ovsdb.interface(&port.name).await {
                Ok(Some(iface)) => iface
                    .ofport
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 0 && *p < 0xff00)
                    .unwrap_or(0),
                Ok(None) => 0,
                Err(e) => return Err(format!("reading interface {}: {e}", port.name)),
            };
            let ofport = if ofport == 0 {
                // vswitchd may still be attaching it.
                self.ovsdb
                    .interface_ofport(&port.name, OFPORT_TIMEOUT)
                    .await
                    .map(u32::from)
                    .unwrap_or(0)
            } else {
                ofport
            };
            match Attachment::from_external_ids(&port.name, &port.external_ids, ofport) {
                Err(reason) => {
                    tracing::warn!(port = %port.name, %reason, "removing a port with unusable Switchyard external_ids");
                    self.remove_port_quietly(&port.name).await;
                }
                Ok(a) => match self.stale_reason(&a).await {
                    Some(reason) => {
                        tracing::info!(port = %a.host_ifname, container = %a.key.container_id, pod = %format!("{}/{}", a.pod_namespace, a.pod_name), %reason, "removing stale attachment");
                        if let Err(e) = self.teardown(&a.key, Some(&a)).await {
                            tracing::warn!(port = %a.host_ifname, error = %e.details, "removing stale attachment failed");
                        }
                    }
                    None => live.push(a),
                },
            }
        }
        // Attachments known in memory whose port is gone from OVSDB (removed
        // behind the agent's back while it was disconnected): forget them.
        // Checked port by port now, so an ADD that finished meanwhile stays.
        let live_keys: BTreeSet<AttachmentKey> = live.iter().map(|a| a.key.clone()).collect();
        let unseen: Vec<Attachment> = lock(&self.attachments)
            .values()
            .filter(|a| !live_keys.contains(&a.key))
            .cloned()
            .collect();
        for a in unseen {
            if let Ok(None) = self.ovsdb.port(&a.host_ifname).await {
                tracing::info!(port = %a.host_ifname, container = %a.key.container_id, "port vanished from OVSDB; forgetting the attachment");
                if let Err(e) = self.teardown(&a.key, Some(&a)).await {
                    tracing::warn!(port = %a.host_ifname, error = %e.details, "cleaning up a vanished attachment failed");
                }
            }
        }
        {
            let mut pools = lock(&self.pools);
            for a in &live {
                let name = self.pool_name(&a.segment);
                let Some(pool) = pools.get_mut(&name) else {
                    continue;
                };
                if let Err(e) = pool.restore([(a.key.clone(), a.address.addr())]) {
                    tracing::warn!(port = %a.host_ifname, error = %e, "cannot restore address");
                }
            }
            let mut map = lock(&self.attachments);
            let mut ofports = lock(&self.ofports);
            for a in live {
                ofports.insert(a.ofport);
                map.insert(a.key.clone(), a);
            }
        }
        self.reserve_foreign_ofports().await;
        self.update_gauge();
        self.resync_flows().await
    }

    /// Reserves the ofports of every other port on the switch, so a pod
    /// never requests (and gets early flows for) a number in use.
    async fn reserve_foreign_ofports(&self) {
        let select = ovsdb::Operation::select_columns("Interface", vec![], &["ofport"]);
        match self.ovsdb.transact("Open_vSwitch", &[select]).await {
            Ok(results) => {
                let mut ofports = lock(&self.ofports);
                for row in results
                    .first()
                    .and_then(|r| r.rows.as_ref())
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = row
                        .get("ofport")
                        .and_then(ovsdb::Value::as_integer)
                        .and_then(|p| u32::try_from(p).ok())
                        .filter(|p| *p >= pipeline::ofport::FIRST_POD)
                    {
                        ofports.insert(p);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the switch's ofports"),
        }
    }

    /// Why an attachment found in OVSDB is stale, or `None` if it is live.
    async fn stale_reason(&self, a: &Attachment) -> Option<String> {
        match Netns::open(&a.netns, &self.policy) {
            Err(NetnsError::NotFound(_)) => {
                return Some(format!("netns {} no longer exists", a.netns.display()));
            }
            Err(e @ (NetnsError::NotNetns { .. } | NetnsError::OwnNamespace(_))) => {
                return Some(e.to_string());
            }
            Err(e) => {
                tracing::warn!(netns = %a.netns.display(), error = %e, "cannot check netns; keeping attachment");
                return None;
            }
            Ok(_) => {}
        }
        match self.api.pod(&a.pod_namespace, &a.pod_name).await {
            Ok(None) => Some(format!(
                "pod {}/{} no longer exists",
                a.pod_namespace, a.pod_name
            )),
            Ok(Some(pod))
                if !a.pod_uid.is_empty() && !pod.uid.is_empty() && pod.uid != a.pod_uid =>
            {
                Some(format!(
                    "pod {}/{} was recreated (uid {} != {})",
                    a.pod_namespace, a.pod_name, pod.uid, a.pod_uid
                ))
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check pod in the API server; keeping attachment");
                None
            }
        }
    }

    /// Installs base flows and every live pod's flows under a new cookie
    /// generation and deletes older generations, in one atomic bundle:
    /// identical flows are replaced in place, so traffic is not disturbed.
    async fn resync_flows(&self) -> Result<(), String> {
        let mut gate = self.flow_gate.write().await;
        let overlay = self.overlay.lock_for_resync().await;
        let (owner_cookie, owner_mask) = Cookie::owner_mask(Owner::Agent);
        let present: BTreeSet<u8> = self
            .openflow
            .dump_flows(FlowStatsRequest::cookie(owner_cookie, owner_mask))
            .await
            .map_err(|e| format!("dumping the agent's flows: {e}"))?
            .iter()
            .filter_map(|s| Cookie::from_value(s.flow.cookie))
            .map(|c| c.generation)
            .collect();
        let mut next = gate
            .or(present.iter().next_back().copied())
            .map_or(1, |g| g.wrapping_add(1));
        while present.contains(&next) {
            next = next.wrapping_add(1);
        }
        let gw = self.gateway();
        let mut mods: Vec<FlowMod> = flows::base_flows(next, &gw)
            .into_iter()
            .map(FlowMod::add)
            .collect();
        let pods: Vec<Attachment> = lock(&self.attachments).values().cloned().collect();
        for a in pods.iter().filter(|a| a.ofport > 0) {
            mods.extend(
                flows::pod_flows(next, &gw, &a.pod_port())
                    .into_iter()
                    .chain(crate::uplink::pod_flows(
                        next,
                        &a.pod_port(),
                        self.config.segment(&a.segment),
                    ))
                    .map(FlowMod::add),
            );
        }
        mods.extend(overlay.flows(next).into_iter().map(FlowMod::add));
        let uplinks = self
            .uplinks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        mods.extend(
            crate::uplink::uplink_flows(next, &uplinks, self.gateway().ip)
                .into_iter()
                .map(FlowMod::add),
        );
        for old in present.iter().filter(|g| **g != next) {
            let (c, m) = Cookie::generation_mask(Owner::Agent, *old);
            mods.push(FlowMod::delete_cookie(c, m));
        }
        let count = mods.len();
        self.openflow
            .bundle_flow_mods(mods)
            .await
            .map_err(|e| format!("installing flows: {e}"))?;
        tracing::info!(generation = next, flow_mods = count, pods = pods.len(), old_generations = ?present, "flows installed");
        *gate = Some(next);
        overlay.installed(next);
        Ok(())
    }

    async fn remove_port_quietly(&self, name: &str) {
        match self.ovsdb.remove_port(name).await {
            Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
            Err(e) => tracing::warn!(port = name, error = %e, "removing port failed"),
        }
    }

    /// Removes everything of one attachment: flows, port, veth, address.
    /// Each part that is already gone is fine.
    async fn teardown(
        &self,
        key: &AttachmentKey,
        known: Option<&Attachment>,
    ) -> Result<(), CniError> {
        let host_ifname = netns::host_ifname(&key.container_id, &key.ifname);
        let recorded = match known {
            Some(a) => Some(a.clone()),
            None => self.recorded(key, &host_ifname).await?,
        };
        // Flows, port and veth go concurrently: each waits on another party
        // (vswitchd's main loop and reconfiguration, the kernel's RCU grace
        // periods). The ofport stays reserved until all three are done.
        let t0 = Instant::now();
        let gate = self.flow_gate.read().await;
        let flow_object = recorded.as_ref().map(|a| a.ofport).filter(|p| *p > 0);
        let (flows_done, (port, port_took), (veth, veth_took)) = tokio::join!(
            async {
                match flow_object {
                    Some(ofport) => {
                        let (c, m) = Cookie::object_mask(Owner::Agent, ofport);
                        self.openflow.flow_mod(FlowMod::delete_cookie(c, m)).await
                    }
                    None => Ok(()),
                }
            },
            async {
                let r = self.ovsdb.remove_port(&host_ifname).await;
                (r, t0.elapsed())
            },
            async {
                let r = delete_veth_on_own_socket(&key.container_id, &key.ifname).await;
                (r, t0.elapsed())
            }
        );
        tracing::debug!(?port_took, ?veth_took, flows_took = ?t0.elapsed(), "flows, port and veth removed");
        flows_done.map_err(|e| ovs_err("deleting the pod's flows", e))?;
        match port {
            Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
            Err(e) => return Err(ovs_err("removing the OVS port", e)),
        }
        veth.map_err(|e| {
            cni_err(
                ErrorCode::InterfaceFailure,
                "deleting the pod's veth failed",
                e,
            )
        })?;
        for pool in lock(&self.pools).values_mut() {
            pool.release(key);
        }
        if let Some(a) = lock(&self.attachments).remove(key) {
            lock(&self.ofports).remove(&a.ofport);
        }
        drop(gate);
        crate::vlan_pool::release_for_pod(
            &self.cluster_pools,
            &self.config,
            recorded.as_ref().map(|a| a.segment.as_str()),
            key,
        )
        .await;
        self.update_gauge();
        Ok(())
    }

    /// The attachment recorded for `key`: in memory, else in OVSDB.
    async fn recorded(
        &self,
        key: &AttachmentKey,
        host_ifname: &str,
    ) -> Result<Option<Attachment>, CniError> {
        if let Some(a) = lock(&self.attachments).get(key) {
            return Ok(Some(a.clone()));
        }
        let port = self
            .ovsdb
            .port(host_ifname)
            .await
            .map_err(|e| ovs_err("reading the OVS port", e))?;
        let Some(port) = port else { return Ok(None) };
        let ofport = match self.ovsdb.interface(host_ifname).await {
            Ok(Some(i)) => i.ofport.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            _ => 0,
        };
        Ok(Attachment::from_external_ids(host_ifname, &port.external_ids, ofport).ok())
    }

    async fn host_mac(&self, name: &str) -> Option<MacAddr> {
        let link = self.host.link_by_name(name).await.ok()??;
        netns::link_mac(&link)
    }

    fn result_for(&self, a: &Attachment, host_mac: Option<MacAddr>, req: &CniRequest) -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: a.host_ifname.clone(),
                    mac: host_mac.map(|m| m.to_string()),
                    ..Interface::default()
                },
                Interface {
                    name: a.key.ifname.clone(),
                    mac: Some(a.mac.to_string()),
                    mtu: Some(a.mtu),
                    sandbox: Some(a.netns.display().to_string()),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                interface: Some(1),
                address: IpNet::V4(a.address),
                gateway: a.gateway.map(std::net::IpAddr::V4),
            }],
            routes: a
                .gateway
                .map(|gw| Route {
                    dst: "0.0.0.0/0".parse().unwrap_or(IpNet::V4(Ipv4Net::default())),
                    gw: Some(std::net::IpAddr::V4(gw)),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                })
                .into_iter()
                .collect(),
            dns: req.config.dns.clone().unwrap_or_default(),
        }
    }

    async fn add(&self, req: &CniRequest) -> Result<CniResult, CniError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(cni_err(
                ErrorCode::TryAgainLater,
                "switchyard-agent is not ready",
                "the agent is still starting (bridge, flows, reconciliation); retry",
            ));
        }
        if !self.ovsdb.is_connected() || !self.openflow.state().connected {
            return Err(cni_err(
                ErrorCode::TryAgainLater,
                "Open vSwitch is not reachable right now",
                "the agent is reconnecting to ovsdb-server or ovs-vswitchd; retry",
            ));
        }
        let key = attachment_key(req, "ADD")?;
        let (pod_namespace, pod_name) = pod_identity(req)?;
        let _guard = self.locks.lock(&key).await;
        // Declared after the guard so it is dropped first: a GC waiting for
        // this lock sees the ADD's end (and the local record) once it has it.
        let _in_flight = self.adds.begin_add(&key);

        let existing = lock(&self.attachments).get(&key).cloned();
        if let Some(a) = existing {
            tracing::info!("attachment exists; returning its result");
            let mac = self.host_mac(&a.host_ifname).await;
            return Ok(self.result_for(&a, mac, req));
        }

        let netns_path = req.env.netns.clone().ok_or_else(|| {
            cni_err(
                ErrorCode::InvalidEnvironmentVariables,
                "CNI_NETNS is required",
                "ADD needs CNI_NETNS",
            )
        })?;
        let t0 = Instant::now();
        let pod_netns = Netns::open(&netns_path, &self.policy)
            .map_err(|e| cni_err(ErrorCode::InterfaceFailure, "unusable network namespace", e))?;

        // Segment and VLAN.
        // The pod (unless the runtime passed its annotations) and its
        // namespace, read concurrently.
        let from_runtime = !req.config.runtime_config.pod_annotations.is_empty();
        let pod_read = async {
            if from_runtime {
                Ok(None)
            } else {
                self.api.pod(&pod_namespace, &pod_name).await.map(Some)
            }
        };
        let (pod, namespace) =
            tokio::join!(pod_read, self.api.namespace_annotations(&pod_namespace));
        let pod_annotations = match pod {
            Ok(None) => req.config.runtime_config.pod_annotations.clone(),
            Ok(Some(Some(p))) => p.annotations,
            Ok(Some(None)) => {
                return Err(cni_err(
                    ErrorCode::ApiServerFailure,
                    format!("pod {pod_namespace}/{pod_name} not found"),
                    "the API server has no such pod (deleted while its sandbox was created?)",
                ));
            }
            Err(e) => {
                return Err(cni_err(
                    ErrorCode::ApiServerFailure,
                    "cannot read the pod from the API server",
                    e,
                ));
            }
        };
        let namespace_annotations = namespace.map_err(|e| {
            cni_err(
                ErrorCode::ApiServerFailure,
                "cannot read the pod's namespace from the API server",
                e,
            )
        })?;
        let placement = segment::decide(
            &pod_annotations,
            &namespace_annotations,
            &self.config.segments,
            &self.config.default_segment,
        )
        .map_err(|e| {
            cni_err(
                ErrorCode::InvalidPodNetworkRequest,
                "invalid pod network request",
                e,
            )
        })?;
        tracing::debug!(segment = %placement.segment, vlan = placement.vlan, elapsed = ?t0.elapsed(), "placement");

        // Address. `vlan` segments allocate cluster-wide first (API server,
        // optimistic concurrency); the local pool then records it.
        let static_ip = crate::vlan_pool::allocate_for_pod(
            &self.cluster_pools,
            &self.config,
            &placement.segment,
            &key,
            placement.static_ip,
        )
        .await?
        .or(placement.static_ip);
        let pool_name = self.pool_name(&placement.segment);
        let (address, gateway_ip) = {
            let mut pools = lock(&self.pools);
            let pool = pools.get_mut(&pool_name).ok_or_else(|| {
                cni_err(
                    ErrorCode::InvalidPodNetworkRequest,
                    format!("segment {} has no address pool", placement.segment),
                    "configure subnet and gateway for the segment",
                )
            })?;
            let ip = match static_ip {
                Some(ip) => pool.allocate_specific(&key, ip),
                None => pool.allocate(&key),
            }
            .map_err(|e| match e {
                IpamError::Exhausted { .. } => {
                    cni_err(ErrorCode::IpPoolExhausted, "IP pool exhausted", e)
                }
                other => cni_err(
                    ErrorCode::InvalidPodNetworkRequest,
                    "requested address unusable",
                    other,
                ),
            })?;
            let net =
                Ipv4Net::new(ip, pool.network().prefix_len()).unwrap_or_else(|_| Ipv4Net::from(ip));
            (net, pool.gateway())
        };
        let mut undo = Undo {
            key: key.clone(),
            host_ifname: None,
            port: None,
            flow_objects: Vec::new(),
            requested_ofport: None,
        };
        let outcome = self
            .wire(
                req,
                &key,
                &pod_netns,
                &placement,
                address,
                gateway_ip,
                (pod_namespace, pod_name),
                &mut undo,
            )
            .await;
        match outcome {
            Ok((result, built)) => {
                // Best effort and off the ADD's critical path: nothing on
                // br-int needs it (OVS answers every ARP and L3 forwarding
                // rewrites MACs by destination address; the pod's own
                // gratuitous ARP is dropped by the ARP responder), so it
                // only informs listeners outside the pipeline.
                tokio::spawn(
                    async move {
                        let (index, mac, ip) =
                            (built.pod_ifindex, built.pod_mac, built.address.addr());
                        let sent = netns::run_in_netns(&pod_netns, move || {
                            netns::arp::send_gratuitous_arp(index, mac, ip)
                        })
                        .await;
                        if let Ok(Err(e)) | Err(e) = sent.map_err(std::io::Error::other) {
                            tracing::debug!(error = %e, "gratuitous ARP not sent");
                        }
                    }
                    .in_current_span(),
                );
                Ok(result)
            }
            Err(e) => {
                self.roll_back(undo).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn wire(
        &self,
        req: &CniRequest,
        key: &AttachmentKey,
        pod_netns: &Netns,
        placement: &segment::Placement,
        address: Ipv4Net,
        gateway_ip: Option<Ipv4Addr>,
        (pod_namespace, pod_name): (String, String),
        undo: &mut Undo,
    ) -> Result<(CniResult, netns::PodInterface), CniError> {
        let mtu = req.config.mtu.unwrap_or(self.config.mtu);
        let spec = PodInterfaceSpec {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            address,
            gateway: gateway_ip,
            mtu,
            mac: placement.static_mac,
            disable_tx_checksum: self.config.datapath_type == DatapathType::Netdev,
            gratuitous_arp: false,
        };
        undo.host_ifname = Some(netns::host_ifname(&key.container_id, &key.ifname));
        let t0 = Instant::now();
        let built = netns::create_pod_interface(&self.host, pod_netns, &spec)
            .await
            .map_err(|e| {
                cni_err(
                    ErrorCode::InterfaceFailure,
                    "creating the pod interface failed",
                    e,
                )
            })?;
        tracing::debug!(elapsed = ?t0.elapsed(), "veth created");
        let t0 = Instant::now();
        let mut a = Attachment {
            key: key.clone(),
            pod_namespace,
            pod_name,
            pod_uid: req.env.args.k8s_pod_uid.clone().unwrap_or_default(),
            netns: pod_netns.path().to_path_buf(),
            address,
            gateway: gateway_ip,
            mac: built.pod_mac,
            segment: placement.segment.clone(),
            vlan: placement.vlan,
            mtu,
            host_ifname: built.host_ifname.clone(),
            ofport: 0,
        };
        let mut port = PortSpec::new(&a.host_ifname);
        let requested = self.reserve_ofport();
        undo.requested_ofport = requested;
        port.ofport_request = requested.and_then(|p| u16::try_from(p).ok());
        if a.vlan != 0 {
            port = port.with_tag(a.vlan);
        }
        for (k, v) in a.external_ids() {
            port = port.with_external_id(&k, &v);
        }
        undo.port = Some(a.host_ifname.clone());
        // The flows only need the ofport, which is the requested one unless
        // vswitchd could not honour the request: install them while the
        // port is added and vswitchd attaches it (checked below).
        let gate = self.flow_gate.read().await;
        let generation = gate.unwrap_or(1);
        let gateway = self.gateway();
        let pod_template = a.pod_port();
        let install = |ofport: u32| {
            let pod = flows::PodPort {
                ofport,
                ..pod_template
            };
            let mods = flows::pod_flows(generation, &gateway, &pod)
                .into_iter()
                .chain(crate::uplink::pod_flows(
                    generation,
                    &pod,
                    self.config.segment(&placement.segment),
                ))
                .map(FlowMod::add)
                .collect();
            self.openflow.bundle_flow_mods(mods)
        };
        if let Some(r) = requested {
            undo.flow_objects.push(r);
        }
        let flows_early = async {
            match requested {
                Some(r) => install(r).await.map(|()| true),
                None => Ok(false),
            }
        };
        let attach = async {
            match self.ovsdb.add_port(&self.config.bridge, &port).await {
                Ok(_) => {}
                Err(ovsdb::Error::PortExists(_)) => {
                    // Left over from an earlier attempt that died half-way.
                    tracing::info!(port = %a.host_ifname, "replacing a leftover OVS port");
                    self.remove_port_quietly(&a.host_ifname).await;
                    self.ovsdb
                        .add_port(&self.config.bridge, &port)
                        .await
                        .map_err(|e| ovs_err("adding the OVS port", e))?;
                }
                Err(e) => return Err(ovs_err("adding the OVS port", e)),
            }
            tracing::debug!(elapsed = ?t0.elapsed(), "port added");
            self.ovsdb
                .interface_ofport(&a.host_ifname, OFPORT_TIMEOUT)
                .await
                .map_err(|e| ovs_err("waiting for the port's ofport", e))
        };
        let (installed, ofport) = tokio::join!(flows_early, attach);
        let installed = installed.map_err(|e| ovs_err("installing the pod's flows", e))?;
        a.ofport = u32::from(ofport?);
        tracing::debug!(elapsed = ?t0.elapsed(), "ofport assigned, flows installed");
        if requested != Some(a.ofport) {
            tracing::info!(requested = ?requested, got = a.ofport, "vswitchd gave another ofport than requested");
            {
                let mut ofports = lock(&self.ofports);
                if let Some(r) = requested {
                    ofports.remove(&r);
                }
                ofports.insert(a.ofport);
            }
            undo.requested_ofport = Some(a.ofport);
            undo.flow_objects.push(a.ofport);
            if installed && let Some(r) = requested {
                let (c, m) = Cookie::object_mask(Owner::Agent, r);
                self.openflow
                    .flow_mod(FlowMod::delete_cookie(c, m))
                    .await
                    .map_err(|e| ovs_err("deleting flows of the requested ofport", e))?;
            }
            install(a.ofport)
                .await
                .map_err(|e| ovs_err("installing the pod's flows", e))?;
        }
        lock(&self.attachments).insert(key.clone(), a.clone());
        drop(gate);
        self.update_gauge();
        tracing::info!(ip = %a.address, mac = %a.mac, vlan = a.vlan, segment = %a.segment, port = %a.host_ifname, ofport = a.ofport, "pod attached");
        let result = self.result_for(&a, Some(built.host_mac), req);
        Ok((result, built))
    }

    /// The lowest free ofport at or above `FIRST_POD`, reserved.
    fn reserve_ofport(&self) -> Option<u32> {
        let mut ofports = lock(&self.ofports);
        let mut candidate = pipeline::ofport::FIRST_POD;
        for used in ofports.range(pipeline::ofport::FIRST_POD..) {
            if *used != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate >= 0xff00 {
            return None;
        }
        ofports.insert(candidate);
        Some(candidate)
    }

    async fn roll_back(&self, undo: Undo) {
        if let Some(p) = undo.requested_ofport {
            lock(&self.ofports).remove(&p);
        }
        for ofport in &undo.flow_objects {
            let (c, m) = Cookie::object_mask(Owner::Agent, *ofport);
            if let Err(e) = self.openflow.flow_mod(FlowMod::delete_cookie(c, m)).await {
                tracing::warn!(error = %e, "rollback: deleting flows failed");
            }
        }
        if let Some(port) = &undo.port {
            self.remove_port_quietly(port).await;
        }
        if undo.host_ifname.is_some()
            && let Err(e) =
                netns::delete_pod_interface(&self.host, &undo.key.container_id, &undo.key.ifname)
                    .await
        {
            tracing::warn!(error = %e, "rollback: deleting veth failed");
        }
        for pool in lock(&self.pools).values_mut() {
            pool.release(&undo.key);
        }
        crate::vlan_pool::release_for_pod(&self.cluster_pools, &self.config, None, &undo.key).await;
        tracing::info!("rolled back");
    }

    async fn del(&self, req: &CniRequest) -> Result<(), CniError> {
        let key = attachment_key(req, "DEL")?;
        let _guard = self.locks.lock(&key).await;
        self.teardown(&key, None).await?;
        tracing::info!("pod detached");
        Ok(())
    }

    async fn check(&self, req: &CniRequest) -> Result<(), CniError> {
        let key = attachment_key(req, "CHECK")?;
        let _guard = self.locks.lock(&key).await;
        let failed = |what: String| {
            cni_err(
                ErrorCode::CheckFailed,
                "attachment differs from its record",
                what,
            )
        };
        let a = lock(&self.attachments)
            .get(&key)
            .cloned()
            .ok_or_else(|| failed(format!("no attachment recorded for {key}")))?;
        let mut diffs = Vec::new();

        // The pod side.
        let netns_path = req.env.netns.clone().unwrap_or_else(|| a.netns.clone());
        match Netns::open(&netns_path, &self.policy) {
            Err(e) => diffs.push(format!("netns: {e}")),
            Ok(ns) => match netns::inspect_pod_interface(&ns, &key.ifname).await {
                Err(e) => diffs.push(format!("pod interface: {e}")),
                Ok(state) => {
                    if !state.addresses.contains(&a.address) {
                        diffs.push(format!(
                            "address {} missing on {} (has {:?})",
                            a.address,
                            key.ifname,
                            state
                                .addresses
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                        ));
                    }
                    if state.mac != Some(a.mac) {
                        diffs.push(format!(
                            "MAC of {} is {:?}, recorded {}",
                            key.ifname, state.mac, a.mac
                        ));
                    }
                    if let Some(gw) = a.gateway
                        && !state
                            .routes
                            .iter()
                            .any(|r| r.destination.prefix_len() == 0 && r.gateway == Some(gw))
                    {
                        diffs.push(format!("default route via {gw} missing"));
                    }
                    if !state.up {
                        diffs.push(format!("{} is down", key.ifname));
                    }
                }
            },
        }

        // The OVS port.
        match self.ovsdb.port(&a.host_ifname).await {
            Err(e) => return Err(ovs_err("reading the OVS port", e)),
            Ok(None) => diffs.push(format!("OVS port {} missing", a.host_ifname)),
            Ok(Some(port)) => {
                let want_tag = (a.vlan != 0).then_some(a.vlan);
                if port.tag != want_tag {
                    diffs.push(format!(
                        "OVS port {} has tag {:?}, recorded VLAN {}",
                        a.host_ifname, port.tag, a.vlan
                    ));
                }
                for (k, v) in a.external_ids() {
                    if port.external_ids.get(&k) != Some(&v) {
                        diffs.push(format!(
                            "OVS port {} external_ids {k}={:?}, recorded {v:?}",
                            a.host_ifname,
                            port.external_ids.get(&k)
                        ));
                    }
                }
            }
        }

        // The flows.
        let (c, m) = Cookie::object_mask(Owner::Agent, a.ofport);
        let installed = self
            .openflow
            .dump_flows(FlowStatsRequest::cookie(c, m))
            .await
            .map_err(|e| ovs_err("dumping flows", e))?;
        let expected = flows::pod_flows(0, &self.gateway(), &a.pod_port());
        for want in &expected {
            let found = installed.iter().any(|s| {
                s.flow.table == want.table
                    && s.flow.priority == want.priority
                    && s.flow.matches.len() == want.matches.len()
                    && want.matches.iter().all(|m| s.flow.matches.contains(m))
            });
            if !found {
                diffs.push(format!(
                    "flow missing: table={},{}",
                    want.table,
                    want.match_string()
                ));
            }
        }

        if diffs.is_empty() {
            Ok(())
        } else {
            Err(failed(describe_differences(&diffs)))
        }
    }

    /// CNI GC: tears down every attachment the runtime's valid list omits
    /// and releases this node's cluster-wide `vlan` addresses held for them,
    /// except for attachments whose ADD is in flight or returned after the
    /// GC started (the list cannot name those; see [`AddsInFlight`]).
    async fn gc(&self, req: &CniRequest) -> Result<(), CniError> {
        // First, before anything is listed.
        let view = self.adds.begin_gc();
        let valid: BTreeSet<AttachmentKey> = req
            .config
            .valid_attachments
            .iter()
            .flatten()
            .map(|v| AttachmentKey::new(v.container_id.clone(), v.ifname.clone()))
            .collect();
        let mut candidates: BTreeSet<AttachmentKey> =
            lock(&self.attachments).keys().cloned().collect();
        let ports = self
            .ovsdb
            .find_ports_by_external_id(attachment::KEY_OWNER, attachment::OWNER_VALUE)
            .await
            .map_err(|e| ovs_err("listing ports", e))?;
        for port in &ports {
            if let (Some(c), Some(i)) = (
                port.external_ids.get(attachment::KEY_CONTAINER_ID),
                port.external_ids.get(attachment::KEY_IFNAME),
            ) {
                candidates.insert(AttachmentKey::new(c.clone(), i.clone()));
            }
        }
        for pool in lock(&self.pools).values() {
            candidates.extend(pool.allocations().map(|(_, k)| k.clone()));
        }
        let mut removed = 0usize;
        let mut skipped = 0usize;
        for key in candidates.difference(&valid) {
            // Checked before waiting for the lock (an ADD in flight holds it)
            // and again after (one may have run meanwhile).
            if view.protects(key) {
                skipped += 1;
                continue;
            }
            let _guard = self.locks.lock(key).await;
            if view.protects(key) {
                tracing::debug!(container = %key.container_id, ifname = %key.ifname, "ADD in flight or newer than the GC; kept");
                skipped += 1;
                continue;
            }
            let span =
                tracing::info_span!("gc", container = %key.container_id, ifname = %key.ifname);
            self.teardown(key, None).instrument(span).await?;
            removed += 1;
        }
        // Cluster-wide addresses: decided per entry while the ConfigMap is
        // rewritten, from live state. An entry there was written by an ADD
        // that is either still in flight (protected) or, having ended, has
        // recorded it in a local pool (kept): the view is asked first, so an
        // ADD ending in between is seen by the pool check.
        let keep = |k: &AttachmentKey| {
            valid.contains(k)
                || view.protects(k)
                || lock(&self.pools)
                    .values()
                    .any(|pool| pool.allocations().any(|(_, held)| held == k))
        };
        crate::vlan_pool::gc(&self.cluster_pools, &self.config, keep).await;
        tracing::info!(removed, skipped, valid = valid.len(), "garbage collected");
        Ok(())
    }

    fn status(&self) -> Result<(), CniError> {
        let mut problems = Vec::new();
        if !self.ready.load(Ordering::Acquire) {
            problems.push("the agent is not ready");
        }
        if !self.ovsdb.is_connected() {
            problems.push("OVSDB is not connected");
        }
        if !self.openflow.state().connected {
            problems.push("the OpenFlow connection to the bridge is down");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(cni_err(
                ErrorCode::PluginNotAvailable,
                "switchyard-agent cannot serve ADD",
                problems.join("; "),
            ))
        }
    }
}

/// Deletes a pod's veth through a netlink socket of its own, on a blocking
/// thread. The kernel handles a link deletion synchronously inside the
/// sending call and waits for RCU grace periods (10-20 ms here); on the
/// agent's shared socket every deletion would queue behind the others and
/// stall a runtime worker meanwhile, so parallel DELs would serialise.
/// (The thread stays in the agent's own namespace: no setns.)
async fn delete_veth_on_own_socket(
    container_id: &str,
    ifname: &str,
) -> Result<bool, netns::InterfaceError> {
    let (container_id, ifname) = (container_id.to_string(), ifname.to_string());
    let io_err = |source: std::io::Error| netns::InterfaceError::Io {
        step: netns::Step::DeleteHostEnd,
        ifname: netns::host_ifname(&container_id, &ifname),
        netns: "node".to_string(),
        source,
    };
    let (c, i) = (container_id.clone(), ifname.clone());
    let joined = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok::<_, std::io::Error>(runtime.block_on(async {
            let netlink = Netlink::current()?;
            netns::delete_pod_interface(&netlink, &c, &i).await
        }))
    })
    .await;
    match joined {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(io_err(e)),
        Err(e) => Err(io_err(std::io::Error::other(e))),
    }
}

/// What an ADD has done so far, to undo on failure (the address is always
/// released).
#[derive(Debug)]
struct Undo {
    key: AttachmentKey,
    host_ifname: Option<String>,
    port: Option<String>,
    /// Ofports whose flows may have been installed.
    flow_objects: Vec<u32>,
    requested_ofport: Option<u32>,
}

fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn pod_identity(req: &CniRequest) -> Result<(String, String), CniError> {
    let args = &req.env.args;
    let (Some(ns), Some(name)) = (&args.k8s_pod_namespace, &args.k8s_pod_name) else {
        return Err(cni_err(
            ErrorCode::InvalidPodNetworkRequest,
            "pod identity missing",
            "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME (kubelet always sends them)",
        ));
    };
    for (what, v) in [("K8S_POD_NAMESPACE", ns), ("K8S_POD_NAME", name)] {
        if !valid_k8s_name(v) {
            return Err(cni_err(
                ErrorCode::InvalidPodNetworkRequest,
                format!("{what}={v:?} is not a Kubernetes name"),
                "use lowercase letters, digits, '-' and '.', at most 253 characters",
            ));
        }
    }
    Ok((ns.clone(), name.clone()))
}

/// The attachment a request names (CNI_CONTAINERID and CNI_IFNAME, which
/// `verb` needs).
fn attachment_key(req: &CniRequest, verb: &str) -> Result<AttachmentKey, CniError> {
    let (container_id, ifname) = req.attachment().ok_or_else(|| {
        cni_err(
            ErrorCode::InvalidEnvironmentVariables,
            "CNI_CONTAINERID and CNI_IFNAME are required",
            format!("{verb} needs CNI_CONTAINERID and CNI_IFNAME"),
        )
    })?;
    Ok(AttachmentKey::new(container_id, ifname))
}

fn request_span(req: &CniRequest) -> tracing::Span {
    let container = req.env.container_id.as_deref().unwrap_or("");
    let ifname = req.env.ifname.as_deref().unwrap_or("");
    let pod = match (&req.env.args.k8s_pod_namespace, &req.env.args.k8s_pod_name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => String::new(),
    };
    tracing::info_span!("cni", verb = ?req.verb, container, ifname, pod)
}

/// The CNI verbs on top of [`Shared`].
#[derive(Debug)]
struct CniServer(Arc<Shared>);

impl CniHandler for CniServer {
    async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> {
        let started = Instant::now();
        let out = self.0.add(&req).instrument(request_span(&req)).await;
        self.0.metrics.record_add(&out, started.elapsed());
        out
    }

    async fn del(&self, req: CniRequest) -> Result<(), CniError> {
        let started = Instant::now();
        let out = self.0.del(&req).instrument(request_span(&req)).await;
        tracing::debug!(elapsed = ?started.elapsed(), "DEL handled");
        self.0.metrics.record_del(&out, started.elapsed());
        out
    }

    async fn check(&self, req: CniRequest) -> Result<(), CniError> {
        self.0.check(&req).instrument(request_span(&req)).await
    }

    async fn status(&self, req: CniRequest) -> Result<(), CniError> {
        let _span = request_span(&req).entered();
        self.0.status()
    }

    async fn gc(&self, req: CniRequest) -> Result<(), CniError> {
        self.0.gc(&req).instrument(request_span(&req)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_cni::{CniEnv, NetworkConfig, Verb};

    #[test]
    fn attachment_key_needs_container_id_and_ifname() {
        let mut env = CniEnv {
            container_id: Some("c1".into()),
            ..CniEnv::default()
        };
        let req = |env: &CniEnv| {
            CniRequest::new(
                Verb::Del,
                env.clone(),
                NetworkConfig::default(),
                String::new(),
            )
        };
        let err = attachment_key(&req(&env), "DEL").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEnvironmentVariables as u32);
        assert_eq!(err.msg, "CNI_CONTAINERID and CNI_IFNAME are required");
        assert_eq!(err.details, "DEL needs CNI_CONTAINERID and CNI_IFNAME");
        env.ifname = Some("eth0".into());
        assert_eq!(
            attachment_key(&req(&env), "DEL").unwrap(),
            AttachmentKey::new("c1", "eth0")
        );
    }
}
