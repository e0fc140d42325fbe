//! The service proxy through its real path, at 1k / 10k (/ 30k) Services x
//! 10 endpoints on one node, side by side with kube-proxy's iptables mode
//! (issue 8):
//!
//! - setup (not timed): the lab's in-memory API server in-process (no
//!   controllers), the proxy's Node (with an InternalIP, as in a cluster:
//!   the proxy waits up to 3 s for it at start), N Services and N
//!   EndpointSlices from `synthetic::cluster` created through its HTTP
//!   API, 16 requests in flight;
//! - proxy full sync: the release `switchyard-proxy` binary started with a
//!   kubeconfig for the lab server and a private `ovs-vswitchd` (userspace
//!   datapath); timed from the process start (objects already in the API)
//!   until its `switchyard_proxy_service_ports_programmed` metric equals N
//!   (the gauge is set once the full-sync bundle is committed), polled every
//!   2 ms; the flow and group counts are then checked over OpenFlow;
//!   `SY_BENCH_FULL_SYNCS` (default 3) full syncs, each with a fresh
//!   `ovs-vswitchd` and proxy, median shown; the proxy's log gives the part
//!   until both initial lists were in its cache;
//! - proxy single endpoint change: one Service's EndpointSlice gets one
//!   endpoint replaced with a PUT; timed from before the PUT until the
//!   Service's select group on the bridge has the new endpoint and not the
//!   old one (group desc over OpenFlow, polled every 0.2 ms), on different
//!   Services, on the last full sync's proxy; this includes the proxy's
//!   debounce window, so each size runs with every debounce in
//!   `SY_BENCH_DEBOUNCE_MS` (default `50,0`: the default and none); in
//!   brackets the proxy's own share, from its debug log (watch event taken
//!   in -> switch confirmed);
//! - the lab API server sets TCP_NODELAY on its connections, as
//!   kube-apiserver has it (with Nagle a watch event now and then waited for
//!   the proxy's delayed ACK, about 40 ms);
//! - proxy peak RSS: `VmHWM` of the proxy process after the changes;
//! - iptables baseline: the same code as the `datapath` bench
//!   (`support/iptables.rs`): kube-proxy's nat table for the same Services
//!   with `iptables-restore --noflush` into a scratch namespace, and what it
//!   writes for one changed endpoint.
//!
//! - `SY_BENCH_EXTERNAL=1` (issue 13): every Service is a LoadBalancer
//!   with a node port and an ingress IP (set through the status
//!   subresource), every tenth `externalTrafficPolicy: Local` with a
//!   `healthCheckNodePort`; the baseline's table then has kube-proxy's
//!   `KUBE-NODEPORTS`, `KUBE-EXT-*` and `KUBE-SVL-*` chains too. The
//!   proxy's log must show no nftables table replacement during the
//!   endpoint changes (column "nft rewrites"), and ETP-Local Services lose
//!   and regain their local endpoints: time from the PUT until the health
//!   check node port answers 503, then 200 (up to 40 Services, p50/p99 of
//!   both directions). The proxy runs in the host's namespace: its
//!   nftables table (node ports on the Node's TEST-NET address only) is
//!   deleted at the end unless it was there before the bench started;
//! - `SY_BENCH_BEFORE=/path/to/switchyard-proxy`: an earlier build of the
//!   proxy is run the same way, against the same objects, in the same run
//!   (rows "before").
//!
//! Needs root and Open vSwitch.
//! `cargo bench -p switchyard-proxy --bench datapath_api`
//! (`SY_BENCH_SIZES=1000,10000` picks sizes, `SY_BENCH_CHANGES` the number
//! of single changes timed per run, default 100, at most 30 for iptables;
//! `SY_BENCH_IPTABLES=nft` as in `datapath`; `SY_BENCH_VERBOSE=1` prints
//! each change's latency).

#[path = "support/iptables.rs"]
mod iptables;

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
use switchyard_ovs::openflow::{self, Action, Client, Group};
use switchyard_ovs_harness::{OvsInstance, require_privileges};
use switchyard_proxy::build_desired_state;
use switchyard_proxy::fixtures::endpoint;
use switchyard_proxy::service_model::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "node-0";
const NAMESPACE: &str = "default";
const ENDPOINTS: u32 = 10;
const BRIDGE: &str = "br-int";
/// Create requests in flight during setup.
const PARALLEL_CREATES: usize = 16;
/// Longest wait for a sync or a change before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(600);
const FULL_SYNC_POLL: Duration = Duration::from_millis(2);
/// How long the change loop sleeps between two group reads: a blocking
/// sleep, as tokio's timer would round it up to its 1 ms tick (the
/// figures until 2026-12-05 10:25 polled with `tokio::time::sleep(1 ms)`,
/// 1-2 ms a poll).
const CHANGE_POLL: Duration = Duration::from_micros(200);
const PROGRAMMED: &str = "switchyard_proxy_service_ports_programmed";
/// High byte of an ETP-Local port's local group id.
const LOCAL_GROUP_TAG: u32 = 127;
/// `SY_BENCH_EXTERNAL`: node port of Service i, health check port of the
/// i-th ETP-Local Service, LoadBalancer IP of Service i (198.18.0.0/15).
const FIRST_NODE_PORT: i32 = 20_000;
const FIRST_HEALTH_PORT: i32 = 50_000;
const FIRST_LB_IP: u32 = 198 << 24 | 18 << 16;
/// Every tenth Service is `externalTrafficPolicy: Local`.
const LOCAL_EVERY: usize = 10;

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// A `/proc/PID/status` memory line (`VmHWM:`, `VmRSS:`) in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The release `switchyard-proxy` binary, killed (by pid) on drop.
struct Proxy {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn start(
        binary: &Path,
        kubeconfig: &Path,
        ovs: &OvsInstance,
        debounce_ms: u64,
        log: PathBuf,
    ) -> Proxy {
        let metrics = free_local_addr();
        let child = Command::new(binary)
            .arg("--node-name")
            .arg(NODE)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--ovs-rundir")
            .arg(ovs.rundir())
            .arg("--bridge")
            .arg(BRIDGE)
            .arg("--metrics-address")
            .arg(metrics.to_string())
            // Not measured here; the default 0.0.0.0:10256 may be taken.
            .arg("--healthz-bind-address=")
            .arg("--debounce-ms")
            .arg(debounce_ms.to_string())
            // The switch writer's debug line per change set gives the
            // proxy's own share of a change.
            .env("RUST_LOG", "info,switchyard_proxy::switch=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("proxy log file"))
            .spawn()
            .expect("switchyard-proxy starts");
        Proxy {
            child,
            metrics,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the proxy's log if it exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "switchyard-proxy exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// One value of the proxy's /metrics (None while it is not serving).
    async fn metric(&self, name: &str) -> Option<f64> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since midnight UTC of an RFC 3339 timestamp
/// (`2026-11-22T02:43:06.123456Z`, as the proxy's log lines start).
fn seconds_of_day(timestamp: &str) -> Option<f64> {
    let time = timestamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn now_seconds_of_day() -> f64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    since_epoch.as_secs_f64() % 86_400.0
}

/// When (seconds of day) the proxy logged its last "list complete": both
/// initial lists are in its cache.
fn lists_complete_at(log: &Path) -> Option<f64> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .filter(|line| line.contains("list complete"))
        .filter_map(|line| seconds_of_day(line.split_whitespace().next()?))
        .reduce(f64::max)
}

/// The endpoint addresses a select group DNATs to.
fn group_endpoints(group: &Group) -> Vec<Ipv4Addr> {
    group
        .buckets
        .iter()
        .flat_map(|bucket| &bucket.actions)
        .filter_map(|action| match action {
            Action::Ct(ct) => match ct.nat.as_ref()?.addrs? {
                (IpAddr::V4(ip), _) => Some(ip),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn endpoint_ip(slice: &EndpointSlice, slot: usize) -> Ipv4Addr {
    slice.endpoints[slot].addresses[0]
        .parse()
        .expect("IPv4 endpoint")
}

/// A private ovs-vswitchd with an empty `br-int` (userspace datapath).
fn start_ovs() -> OvsInstance {
    let ovs = OvsInstance::builder()
        .vswitchd(true)
        .start()
        .expect("OVS starts");
    ovs.vsctl(&[
        "add-br",
        BRIDGE,
        "--",
        "set",
        "bridge",
        BRIDGE,
        "datapath_type=netdev",
        "protocols=OpenFlow15",
        "fail_mode=secure",
    ])
    .expect("bridge");
    ovs
}

struct Run {
    /// Which proxy binary ("switchyard", or "before" for `SY_BENCH_BEFORE`).
    label: String,
    debounce_ms: u64,
    /// Median of the full syncs, and (min, max).
    full: Duration,
    full_range: (Duration, Duration),
    /// Median time until the proxy had both lists (from its log).
    listed: Option<Duration>,
    flows: String,
    change_p50: Duration,
    change_p99: Duration,
    /// The proxy's own share of a change (its log): p50, p99.
    in_proxy: Option<(Duration, Duration)>,
    rss: f64,
    /// Health check node port flips (ETP Local, `SY_BENCH_EXTERNAL`): p50, p99.
    flips: Option<(Duration, Duration)>,
    /// Times the proxy replaced its nftables table during the changes.
    nft_rewrites: usize,
}

/// The API objects as stored (with their resourceVersions).
struct Cluster {
    client: kube::Client,
    kubeconfig: PathBuf,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// Source of fresh endpoint addresses (11.0.0.0/8).
    fresh: u32,
    /// Every Service is a LoadBalancer (`SY_BENCH_EXTERNAL`).
    external: bool,
}

/// The proxy's Node with an InternalIP (TEST-NET-1): the proxy waits up
/// to 3 s for it at start, as in a cluster, where it exists.
async fn create_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let status = serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": "192.0.2.10"}
    ]}});
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node address");
}

/// Makes every Service a LoadBalancer with node port and (after creation)
/// an ingress IP; every [`LOCAL_EVERY`]th gets `externalTrafficPolicy:
/// Local` and a `healthCheckNodePort`.
fn make_external(services: &mut [Service]) {
    for (index, service) in services.iter_mut().enumerate() {
        let spec = service.spec.get_or_insert_with(Default::default);
        spec.type_ = Some("LoadBalancer".into());
        for port in spec.ports.iter_mut().flatten() {
            port.node_port = Some(FIRST_NODE_PORT + index as i32);
        }
        if index % LOCAL_EVERY == 0 {
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(FIRST_HEALTH_PORT + (index / LOCAL_EVERY) as i32);
        } else {
            spec.external_traffic_policy = Some("Cluster".into());
        }
    }
}

/// Sets each Service's LoadBalancer ingress IP through the status
/// subresource; returns them as stored.
async fn set_ingress(api: &Api<Service>, services: Vec<Service>) -> Vec<Service> {
    futures::stream::iter(services.into_iter().enumerate())
        .map(|(index, service)| {
            let api = api.clone();
            async move {
                let ip = Ipv4Addr::from(FIRST_LB_IP + index as u32);
                let patch = serde_json::json!({
                    "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}
                });
                let name = service.metadata.name.clone().expect("name");
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        })
        .buffered(PARALLEL_CREATES)
        .try_collect()
        .await
        .expect("set ingress IPs")
}

/// How often the proxy's log says it replaced its nftables table.
fn nft_replacements(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("nftables table") && line.contains("replaced"))
        .count()
}

/// The proxy's log lines that say a change set was installed.
fn change_set_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("change set installed"))
        .map(str::to_string)
        .collect()
}

/// How many change sets the proxy's log says it installed.
fn change_sets_logged(log: &Path) -> usize {
    change_set_lines(log).len()
}

/// The proxy's own share of the last `count` changes: the `took` of its
/// "change set installed" log lines (from the watch event's arrival in
/// the proxy to the switch's confirmation).
fn in_proxy_times(log: &Path, count: usize) -> Vec<Duration> {
    let took: Vec<Duration> = change_set_lines(log)
        .iter()
        .filter_map(|line| parse_took(line.split("took=").nth(1)?.split_whitespace().next()?))
        .collect();
    took[took.len().saturating_sub(count)..].to_vec()
}

/// A `Debug`-formatted `Duration` (`1.234567ms`, `850.2µs`, `1.5s`).
fn parse_took(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

/// The HTTP status a health check node port answers (None: no answer).
async fn health_status(port: u16) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// ETP-Local Services lose their local endpoints (moved to another node,
/// same addresses) and get them back: time from before the PUT until the
/// Service's health check node port answers 503, then 200 again. Returns
/// p50 and p99 over both directions.
async fn health_flips(
    cluster: &mut Cluster,
    proxy: &mut Proxy,
    services: usize,
) -> (Duration, Duration) {
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let mut times = Vec::with_capacity(services * 2);
    let candidates: Vec<usize> = (0..cluster.slices.len())
        .step_by(LOCAL_EVERY)
        .filter(|index| {
            cluster.slices[*index]
                .endpoints
                .iter()
                .any(|e| e.node_name.as_deref() == Some(NODE))
        })
        .take(services)
        .collect();
    for index in candidates {
        let port = (FIRST_HEALTH_PORT + (index / LOCAL_EVERY) as i32) as u16;
        let local = cluster.slices[index].clone();
        let mut moved = local.clone();
        for endpoint in &mut moved.endpoints {
            if endpoint.node_name.as_deref() == Some(NODE) {
                endpoint.node_name = Some("node-3".into());
            }
        }
        let name = local.metadata.name.clone().expect("slice name");
        for (next, want) in [(moved, 503), (local, 200)] {
            let mut next = next;
            next.metadata.resource_version =
                cluster.slices[index].metadata.resource_version.clone();
            let started = Instant::now();
            let stored = api
                .replace(&name, &PostParams::default(), &next)
                .await
                .expect("replace slice");
            loop {
                let status = health_status(port).await;
                if status == Some(want) {
                    break;
                }
                proxy.check_alive();
                assert!(
                    started.elapsed() < DEADLINE,
                    "health check port {port} answers {status:?}, not {want}"
                );
                tokio::time::sleep(CHANGE_POLL).await;
            }
            times.push(started.elapsed());
            cluster.slices[index] = stored;
        }
    }
    assert!(
        !times.is_empty(),
        "no ETP-Local Service with a local endpoint"
    );
    (percentile(&mut times, 0.5), percentile(&mut times, 0.99))
}

/// Creates the objects through the API; returns them as stored.
async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> Vec<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned,
{
    futures::stream::iter(objects)
        .map(|object| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &object).await }
        })
        .buffered(PARALLEL_CREATES)
        .try_collect()
        .await
        .expect("create objects")
}

/// A proxy that has installed the full state on a fresh bridge.
struct Synced {
    proxy: Proxy,
    ovs: OvsInstance,
    full: Duration,
    listed: Option<Duration>,
}

/// Full sync: a fresh `ovs-vswitchd`, then proxy process start -> every
/// Service port programmed.
async fn start_and_sync(
    cluster: &Cluster,
    binary: &Path,
    debounce_ms: u64,
    dir: &Path,
    attempt: usize,
) -> Synced {
    let count = cluster.slices.len();
    let ovs = start_ovs();
    let tag = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let log = dir.join(format!("proxy-{tag}-{count}-{debounce_ms}-{attempt}.log"));
    let started = Instant::now();
    let started_at = now_seconds_of_day();
    let mut proxy = Proxy::start(binary, &cluster.kubeconfig, &ovs, debounce_ms, log.clone());
    loop {
        if proxy.metric(PROGRAMMED).await == Some(count as f64) {
            break;
        }
        proxy.check_alive();
        assert!(
            started.elapsed() < DEADLINE,
            "full sync of {count} timed out"
        );
        tokio::time::sleep(FULL_SYNC_POLL).await;
    }
    let full = started.elapsed();
    // From the proxy's log: process start -> both lists in its cache; the
    // rest is the model, the debounce window and the bundle.
    let listed = lists_complete_at(&log)
        .map(|at| Duration::from_secs_f64((at - started_at).clamp(0.0, full.as_secs_f64())));
    Synced {
        proxy,
        ovs,
        full,
        listed,
    }
}

/// Lists every object of `api` matching `selector` in pages of 500, as
/// the proxy's watchers do; returns how many.
async fn list_paged<K>(api: &Api<K>, selector: &str) -> usize
where
    K: kube::Resource + Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned,
{
    let mut params = ListParams::default().labels(selector).limit(500);
    let mut count = 0;
    loop {
        let page = api.list(&params).await.expect("list");
        count += page.items.len();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return count,
        }
    }
}

/// Time for this bench to list the Services and EndpointSlices the way the
/// proxy does (both at once, paged, same selectors): what the lab API
/// server and the decoding alone take of the proxy's "lists in cache".
async fn list_time(client: &kube::Client, count: usize) -> Duration {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let service_selector = format!("!{SERVICE_PROXY_NAME_LABEL}");
    let slice_selector = format!("!{HEADLESS_LABEL}");
    let started = Instant::now();
    let (listed_services, listed_slices) = tokio::join!(
        list_paged(&services, &service_selector),
        list_paged(&slices, &slice_selector),
    );
    let elapsed = started.elapsed();
    assert_eq!((listed_services, listed_slices), (count, count));
    elapsed
}

/// One proxy configuration: `repeats` full syncs from the API (each on a
/// fresh bridge), then `changes` endpoint changes on the last one.
async fn run_proxy(
    cluster: &mut Cluster,
    (label, binary): (&str, &Path),
    debounce_ms: u64,
    repeats: usize,
    changes: usize,
    dir: &Path,
) -> Run {
    let count = cluster.slices.len();
    let mut fulls = Vec::with_capacity(repeats);
    let mut listeds = Vec::with_capacity(repeats);
    let mut last: Option<Synced> = None;
    for attempt in 0..repeats.max(1) {
        // The previous proxy and vswitchd stop first.
        drop(last.take());
        let synced = start_and_sync(cluster, binary, debounce_ms, dir, attempt).await;
        fulls.push(synced.full);
        listeds.extend(synced.listed);
        last = Some(synced);
    }
    let Synced { mut proxy, ovs, .. } = last.expect("one full sync at least");
    let full = percentile(&mut fulls, 0.5);
    let full_range = (fulls[0], fulls[fulls.len() - 1]);
    let listed = (!listeds.is_empty()).then(|| percentile(&mut listeds, 0.5));

    let client = Client::connect_bridge(ovs.rundir(), BRIDGE)
        .await
        .expect("OpenFlow client");
    let groups = client
        .dump_groups(openflow::ALL_GROUPS)
        .await
        .expect("dump groups");
    // ETP-Local ports also have a local group (`G | 127 << 24`).
    let cluster_groups = groups
        .iter()
        .filter(|g| g.group_id >> 24 != LOCAL_GROUP_TAG);
    assert_eq!(
        cluster_groups.clone().count(),
        count,
        "one select group per Service"
    );
    let mut group_of: HashMap<Ipv4Addr, u32> = HashMap::new();
    for group in cluster_groups {
        for ip in group_endpoints(group) {
            group_of.insert(ip, group.group_id);
        }
    }
    let aggregate = ovs
        .ofctl(&["-O", "OpenFlow15", "dump-aggregate", BRIDGE])
        .unwrap_or_default();
    let flow_count = aggregate
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .unwrap_or("?");
    let flows = format!("{flow_count} flows, {} groups", groups.len());

    // Single endpoint changes on distinct Services.
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    // The host side installs its table after the full sync's update, on
    // its own: count from its first replacement on.
    let waiting = Instant::now();
    while cluster.external && nft_replacements(&proxy.log) == 0 {
        proxy.check_alive();
        assert!(waiting.elapsed() < DEADLINE, "no nftables table installed");
        tokio::time::sleep(FULL_SYNC_POLL).await;
    }
    let nft_before = nft_replacements(&proxy.log);
    let installed_before = change_sets_logged(&proxy.log);
    let mut times = Vec::with_capacity(changes);
    for round in 0..changes {
        let index = (round * 7919) % count;
        let slot = round % ENDPOINTS as usize;
        let old_ip = endpoint_ip(&cluster.slices[index], slot);
        let group_id = group_of[&old_ip];
        cluster.fresh += 1;
        let new_ip = Ipv4Addr::from((11 << 24) + cluster.fresh);
        let mut next = cluster.slices[index].clone();
        next.endpoints[slot] = endpoint(&new_ip.to_string()).node("node-3").build();
        let name = next.metadata.name.clone().expect("slice name");

        let started = Instant::now();
        let stored = api
            .replace(&name, &PostParams::default(), &next)
            .await
            .expect("replace slice");
        loop {
            let installed = client.dump_groups(group_id).await.expect("group desc");
            let ips = installed.first().map(group_endpoints).unwrap_or_default();
            if ips.contains(&new_ip) && !ips.contains(&old_ip) {
                break;
            }
            proxy.check_alive();
            assert!(
                started.elapsed() < DEADLINE,
                "change of {name} timed out: group {group_id} has {ips:?}"
            );
            tokio::task::block_in_place(|| std::thread::sleep(CHANGE_POLL));
        }
        times.push(started.elapsed());
        if std::env::var_os("SY_BENCH_VERBOSE").is_some() {
            eprintln!("change {round}: {:.1} ms", ms(started.elapsed()));
        }
        cluster.slices[index] = stored;
        group_of.insert(new_ip, group_id);
    }
    let change_p50 = percentile(&mut times, 0.5);
    let change_p99 = percentile(&mut times, 0.99);
    // The bench sees a group change as soon as vswitchd has it; the proxy
    // logs it once the confirmation is back, which may be a little later.
    let waiting = Instant::now();
    while change_sets_logged(&proxy.log) < installed_before + changes
        && waiting.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(FULL_SYNC_POLL).await;
    }
    let mut in_proxy = in_proxy_times(&proxy.log, changes);
    let in_proxy = (in_proxy.len() == changes && changes > 0).then(|| {
        (
            percentile(&mut in_proxy, 0.5),
            percentile(&mut in_proxy, 0.99),
        )
    });
    let nft_rewrites = nft_replacements(&proxy.log) - nft_before;
    let flips = if cluster.external {
        Some(health_flips(cluster, &mut proxy, changes.min(40)).await)
    } else {
        None
    };
    let rss = peak_rss_mb(proxy.pid());
    let rss_now = status_mb(proxy.pid(), "VmRSS:");
    eprintln!(
        "{label}: {count} services, debounce {debounce_ms} ms: full sync median {:.0} ms of {} ({:.0}..{:.0}; lists in {:.0} ms; {flows}), change p50 {:.1} ms p99 {:.1} ms (in the proxy p50 / p99 {}), proxy peak RSS {rss:.0} MB (RSS now {rss_now:.0} MB), {nft_rewrites} nft table replacements during the changes, health check flips {flips:?}",
        ms(full),
        fulls.len(),
        ms(full_range.0),
        ms(full_range.1),
        listed.map_or(f64::NAN, ms),
        ms(change_p50),
        ms(change_p99),
        in_proxy.map_or("?".to_owned(), |(p50, p99)| format!(
            "{:.2} / {:.2} ms",
            ms(p50),
            ms(p99)
        )),
    );
    drop(client);
    drop(proxy);
    drop(ovs);
    Run {
        label: label.to_owned(),
        debounce_ms,
        full,
        full_range,
        listed,
        flows,
        change_p50,
        change_p99,
        in_proxy,
        rss,
        flips,
        nft_rewrites,
    }
}

async fn bench_size(
    count: u32,
    binaries: &[(String, PathBuf)],
    debounces: &[u64],
    repeats: usize,
    changes: usize,
    ipt_changes: usize,
    external: bool,
) -> (Vec<Run>, Duration, iptables::Baseline) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ApiServer::start(ApiServerOptions::without_controllers())
        .await
        .expect("lab API server starts");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let client = kube::Client::try_from(kube::Config::new(
        server.url().parse().expect("server URL parses"),
    ))
    .expect("kube client");

    let setup = Instant::now();
    create_node(&client).await;
    let (mut services, slices) = switchyard_proxy::synthetic::cluster(NAMESPACE, count, ENDPOINTS);
    if external {
        make_external(&mut services);
    }
    let service_api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let mut services = create_all(&service_api, services).await;
    if external {
        services = set_ingress(&service_api, services).await;
    }
    let slices = create_all(&Api::namespaced(client.clone(), NAMESPACE), slices).await;
    eprintln!(
        "{count} services: created {} objects through the API in {:.1} s (setup)",
        services.len() + slices.len(),
        setup.elapsed().as_secs_f64()
    );
    let mut cluster = Cluster {
        client,
        kubeconfig,
        services,
        slices,
        fresh: 0,
        external,
    };
    let mut lists: Vec<Duration> = Vec::with_capacity(3);
    for _ in 0..3 {
        lists.push(list_time(&cluster.client, count as usize).await);
    }
    let list = percentile(&mut lists, 0.5);
    eprintln!(
        "{count} services: the bench lists them as the proxy does in {:.0} ms (median of 3)",
        ms(list)
    );
    let mut runs = Vec::new();
    for &debounce_ms in debounces {
        for (label, binary) in binaries {
            runs.push(
                run_proxy(
                    &mut cluster,
                    (label, binary),
                    debounce_ms,
                    repeats,
                    changes,
                    dir.path(),
                )
                .await,
            );
        }
    }

    // iptables baseline for the same (current) objects.
    let state = build_desired_state(&cluster.services, &cluster.slices, NODE);
    let baseline = iptables::run(&state, ipt_changes);
    server.shutdown().await;
    (runs, list, baseline)
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn main() {
    if !require_privileges("datapath_api bench") {
        return;
    }
    let sizes: Vec<u32> = env_list("SY_BENCH_SIZES", "1000,10000");
    let debounces: Vec<u64> = env_list("SY_BENCH_DEBOUNCE_MS", "50,0");
    let changes: usize = std::env::var("SY_BENCH_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let repeats: usize = std::env::var("SY_BENCH_FULL_SYNCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let ipt_changes = changes.min(30);
    let external = std::env::var_os("SY_BENCH_EXTERNAL").is_some_and(|v| v != "0");
    // The proxy under test, and (`SY_BENCH_BEFORE=/path/to/switchyard-proxy`)
    // an earlier build run the same way in the same run.
    let mut binaries = vec![(
        "switchyard".to_owned(),
        PathBuf::from(env!("CARGO_BIN_EXE_switchyard-proxy")),
    )];
    if let Some(before) = std::env::var_os("SY_BENCH_BEFORE") {
        binaries.push(("before".to_owned(), PathBuf::from(before)));
    }
    let table_before = proxy_table_exists();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "baseline: {}; Services: {}",
        iptables::restore_binary(),
        if external {
            "LoadBalancer with node port and ingress IP, every 10th ETP Local with healthCheckNodePort"
        } else {
            "ClusterIP"
        }
    );
    println!(
        "| proxy | services | debounce | OVS content | proxy full sync (API -> flows), median (min-max) [lists in cache / bench lists alone] | iptables-restore full | full ratio | proxy change p50 / p99 (API -> group) [in the proxy] | iptables change p50 / p99 | p99 ratio | full ratio vs list + iptables-restore | proxy peak RSS | nft rewrites per change | health check flip p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for count in sizes {
        let (runs, list, baseline) = runtime.block_on(bench_size(
            count,
            &binaries,
            &debounces,
            repeats,
            changes,
            ipt_changes,
            external,
        ));
        for run in runs {
            let [ipt_full, full_ratio, ipt_change, change_ratio] =
                baseline.cells(run.full, run.change_p99);
            println!(
                "| {} | {count} | {} ms | {} | {:.0} ms ({:.0}-{:.0}) [{} / {:.0} ms] | {ipt_full} | {full_ratio} | {:.1} / {:.1} ms [{}] | {ipt_change} | {change_ratio} | {} | {:.0} MB | {} in {changes} | {} |",
                run.label,
                run.debounce_ms,
                run.flows,
                ms(run.full),
                ms(run.full_range.0),
                ms(run.full_range.1),
                run.listed
                    .map_or("?".to_owned(), |t| format!("{:.0}", ms(t))),
                ms(list),
                ms(run.change_p50),
                ms(run.change_p99),
                run.in_proxy.map_or("?".to_owned(), |(p50, p99)| format!(
                    "{:.2} / {:.2}",
                    ms(p50),
                    ms(p99)
                )),
                baseline
                    .full
                    .as_ref()
                    .map_or("-".to_owned(), |restore| format!(
                        "{:.1}x",
                        (*restore + list).as_secs_f64() / run.full.as_secs_f64()
                    )),
                run.rss,
                run.nft_rewrites,
                run.flips.map_or("-".to_owned(), |(p50, p99)| format!(
                    "{:.1} / {:.1} ms",
                    ms(p50),
                    ms(p99)
                )),
            );
        }
    }
    if !table_before && proxy_table_exists() {
        // Left by the proxies this bench ran in the host's namespace.
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", switchyard_proxy::host::TABLE])
            .status();
    }
}

/// The proxy's nftables table exists in this namespace.
fn proxy_table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", switchyard_proxy::host::TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
