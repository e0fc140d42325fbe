//! `switchyard-lab up` and `down`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::LabError;
use super::control_plane;
use super::fabric;
use super::node::{self, Started};
use super::state::{Binaries, Entry, LabInfo, NodeInfo, StateDir, UnderlayMode};
use super::sys;

/// Underlay MTU: room for Geneve's 50 bytes over 1500-byte pod packets (lab notes).
pub const UNDERLAY_MTU: &str = "1600";
/// How long the API server and the runtime driver get to start.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// Default lab name (prefix of namespace and interface names).
pub const DEFAULT_NAME: &str = "sy";
/// Default underlay subnet.
pub const DEFAULT_UNDERLAY: &str = "192.168.100.0/24";

/// Options of [`up`].
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// State directory.
    pub state: StateDir,
    /// Prefix of names: namespaces `<name>-node1`, host interface `<name>-host`.
    pub name: String,
    /// Underlay subnet; the host end takes the last host address, node i the i-th.
    pub underlay: Ipv4Net,
    /// Run `switchyard-agent` on each node when its binary is found.
    pub agent: bool,
    /// Run `switchyard-proxy` on each node when its binary is found.
    pub proxy: bool,
    /// Where to look for `switchyard`, `switchyard-agent`, `switchyard-proxy` (default: the
    /// directory of the running `switchyard-lab`, then `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// VLANs of a `fabric` namespace (with an `internet` namespace behind it); `None`: no fabric.
    pub fabric_vlans: Option<Vec<u16>>,
    /// Where node underlay addresses live.
    pub underlay_mode: UnderlayMode,
    /// The first N nodes are control planes of the control-plane VIP (apiserver relay and
    /// `switchyard-cpvip`; needs the fabric); 0: none, and the lab is as without it.
    pub control_planes: usize,
    /// The control-plane VIP.
    pub control_plane_vip: Ipv4Addr,
    /// With control planes: the fabric pins established connections to their next hop
    /// (`control_plane::pin_flows`).
    pub flow_pinning: bool,
}

/// What [`up`] brought up, and what it could not.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// The lab.
    pub info: LabInfo,
    /// Per node: whether the agent runs, and why not.
    pub agents: Vec<(String, Result<u32, String>)>,
    /// Per node: whether the proxy runs, and why not.
    pub proxies: Vec<(String, Result<u32, String>)>,
}

fn validate(opts: &UpOptions) -> Result<(), LabError> {
    let name_ok = !opts.name.is_empty()
        && opts.name.len() <= 10
        && opts
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(LabError::Other(format!(
            "invalid lab name {:?}: use 1-10 lowercase letters, digits or '-' (it prefixes interface names, max 15 bytes)",
            opts.name
        )));
    }
    if opts.nodes == 0 || opts.nodes > 50 {
        return Err(LabError::Other(format!(
            "--nodes {} is out of range: use 1..=50",
            opts.nodes
        )));
    }
    let hosts = opts.underlay.hosts().count();
    if opts.underlay.prefix_len() > 29 || hosts < opts.nodes + 1 {
        return Err(LabError::Other(format!(
            "underlay {} has {hosts} host addresses; {} nodes and the host need {}",
            opts.underlay,
            opts.nodes,
            opts.nodes + 1
        )));
    }
    if !sys::is_root() {
        return Err(LabError::Other(
            "the lab creates network namespaces and runs Open vSwitch: run it as root".into(),
        ));
    }
    for tool in [
        "ip",
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "sysctl",
    ] {
        if sys::find_binary(Some(Path::new("/usr/sbin")), tool).is_none() {
            return Err(LabError::Other(format!(
                "`{tool}` is not installed (scripts/install-deps.sh installs iproute2 and openvswitch-switch)"
            )));
        }
    }
    Ok(())
}

/// Host routes overlapping `net` (the underlay must not shadow a real network).
fn overlapping_routes(net: Ipv4Net) -> Vec<String> {
    sys::ip(&["-4", "route", "show", "table", "all"])
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            let first = first
                .parse::<Ipv4Net>()
                .or_else(|_| first.parse::<Ipv4Addr>().map(Ipv4Net::from));
            first.is_ok_and(|r| r.prefix_len() > 0 && (r.contains(&net) || net.contains(&r)))
        })
        .map(str::to_string)
        .collect()
}

/// Finds the binaries.
pub fn find_binaries(bin_dir: Option<&Path>) -> Result<Binaries, LabError> {
    let exe = std::env::current_exe()
        .map_err(|e| LabError::io("locating the switchyard-lab binary", e))?;
    let own_dir = exe.parent().map(Path::to_path_buf);
    let dir = bin_dir.map(Path::to_path_buf).or(own_dir);
    Ok(Binaries {
        lab: exe,
        cni: sys::find_binary(dir.as_deref(), "switchyard"),
        agent: sys::find_binary(dir.as_deref(), "switchyard-agent"),
        proxy: sys::find_binary(dir.as_deref(), "switchyard-proxy"),
        cpvip: sys::find_binary(dir.as_deref(), "switchyard-cpvip"),
    })
}

/// Permanent kernel neighbour entries in `node` for every other node's underlay address on
/// `dev` (the lab's fixed underlay MACs), so no ARP is needed on the underlay.
pub fn set_underlay_neighbours(
    node: &NodeInfo,
    dev: &str,
    peers: &[(Ipv4Addr, String)],
) -> Result<(), LabError> {
    for (ip, mac) in peers.iter().filter(|(ip, _)| *ip != node.address) {
        sys::ip_in(
            &node.netns,
            &[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(())
}

/// Underlay addresses and MACs of the nodes and the host end.
pub fn underlay_peers(info: &LabInfo) -> Vec<(Ipv4Addr, String)> {
    let mut peers: Vec<(Ipv4Addr, String)> = info
        .nodes
        .iter()
        .map(|n| {
            let mac = match info.underlay_mode {
                UnderlayMode::Ovs => super::state::underlay_mac(n.address),
                UnderlayMode::Veth => String::new(),
            };
            (n.address, mac)
        })
        .collect();
    if let Ok(mac) = fs::read_to_string(format!("/sys/class/net/{}/address", info.host_link())) {
        peers.push((info.host_address, mac.trim().to_string()));
    }
    if info.underlay_mode == UnderlayMode::Veth {
        // eth0 keeps its random MAC: read it from each node.
        for (ip, mac) in peers.iter_mut() {
            if let Some(n) = info.nodes.iter().find(|n| n.address == *ip)
                && let Ok(out) = sys::ip_in(&n.netns, &["-br", "link", "show", "eth0"])
                && let Some(m) = out.split_whitespace().nth(2)
            {
                *mac = m.to_string();
            }
        }
    }
    peers.retain(|(_, m)| !m.is_empty());
    peers
}

/// A kube client for the lab API server (inside a tokio runtime).
pub fn client(url: &str) -> Result<kube::Client, LabError> {
    let uri = url
        .parse()
        .map_err(|e| LabError::Other(format!("API server URL {url:?}: {e}")))?;
    kube::Client::try_from(kube::Config::new(uri)).map_err(LabError::from)
}

/// A current-thread tokio runtime for the API calls of the synchronous commands.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, LabError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::io("starting the async runtime", e))?;
    Ok(rt.block_on(f))
}

/// Brings a lab up. On failure everything made so far is removed again.
pub fn up(opts: &UpOptions) -> Result<UpReport, LabError> {
    validate(opts)?;
    let state = &opts.state;
    if state.info_path().exists() || state.journal_path().exists() {
        return Err(LabError::Other(format!(
            "a lab is already up with state directory {} (or was not removed): run `switchyard-lab down --state-dir {}` first",
            state.root().display(),
            state.root().display()
        )));
    }
    let overlaps = overlapping_routes(opts.underlay);
    if !overlaps.is_empty() {
        return Err(LabError::Other(format!(
            "the underlay {} overlaps routes of this machine ({}); pick another with --underlay-cidr",
            opts.underlay,
            overlaps.join("; ")
        )));
    }
    let host_link = format!("{}-host", opts.name);
    if sys::link_exists(&host_link) {
        return Err(LabError::Other(format!(
            "interface {host_link} already exists: another lab named {:?} is up (use --name)",
            opts.name
        )));
    }
    fs::create_dir_all(state.root())
        .map_err(|e| LabError::io(format!("creating {}", state.root().display()), e))?;
    match up_inner(opts) {
        Ok(report) => Ok(report),
        Err(e) => {
            tracing::error!(error = %e, "lab start failed; removing what was made");
            let _ = down(state);
            Err(e)
        }
    }
}

fn up_inner(opts: &UpOptions) -> Result<UpReport, LabError> {
    let state = &opts.state;
    let binaries = find_binaries(opts.bin_dir.as_deref())?;
    let hosts: Vec<Ipv4Addr> = opts.underlay.hosts().collect();
    let host_address = *hosts
        .last()
        .expect("validated: the underlay has host addresses");
    let prefix = opts.underlay.prefix_len().to_string();
    let mut info = LabInfo {
        name: opts.name.clone(),
        underlay: opts.underlay,
        host_address,
        api_url: None,
        nodes: (1..=opts.nodes)
            .map(|i| NodeInfo {
                name: format!("node{i}"),
                netns: format!("{}-node{i}", opts.name),
                address: hosts[i - 1],
            })
            .collect(),
        binaries,
        underlay_mode: opts.underlay_mode,
        fabric: match &opts.fabric_vlans {
            Some(vlans) => Some(fabric::plan(&opts.name, vlans)?),
            None => None,
        },
        control_planes: None,
    };
    if opts.control_planes > 0 {
        let cp = control_plane::plan(
            state,
            opts.control_planes,
            opts.control_plane_vip,
            &info.nodes,
            info.fabric.is_some(),
            opts.flow_pinning,
        )?;
        control_plane::check_vip(&info, cp.vip)?;
        info.control_planes = Some(cp);
    }
    state.save_info(&info)?;

    // Underlay: a Linux bridge in its own namespace, the host end of a veth on it.
    let underlay = info.underlay_netns();
    state.record(&Entry::Netns(underlay.clone()))?;
    sys::ip(&["netns", "add", &underlay])?;
    sys::ip_in(&underlay, &["link", "set", "lo", "up"])?;
    sys::ip_in(&underlay, &["link", "add", "br0", "type", "bridge"])?;
    sys::ip_in(&underlay, &["link", "set", "br0", "up"])?;
    let host_link = info.host_link();
    state.record(&Entry::Link(host_link.clone()))?;
    sys::ip(&[
        "link",
        "add",
        &host_link,
        "mtu",
        UNDERLAY_MTU,
        "type",
        "veth",
        "peer",
        "name",
        "host",
        "mtu",
        UNDERLAY_MTU,
        "netns",
        &underlay,
    ])?;
    sys::ip_in(&underlay, &["link", "set", "host", "master", "br0", "up"])?;
    sys::ip(&[
        "addr",
        "add",
        &format!("{host_address}/{prefix}"),
        "dev",
        &host_link,
    ])?;
    sys::ip(&["link", "set", &host_link, "up"])?;
    node::tx_checksum_off(None, &host_link)?;
    node::tx_checksum_off(Some(&underlay), "host")?;

    // API server on the host end of the underlay.
    let url = start_apiserver(state, &info)?;
    info.api_url = Some(url.clone());
    state.save_info(&info)?;

    let fabric_underlay = match &info.fabric {
        Some(f) => {
            fabric::create(state, f)?;
            let address = fabric::underlay_address(opts.underlay)
                .filter(|a| !info.nodes.iter().any(|n| n.address == *a))
                .ok_or_else(|| {
                    LabError::Other(format!(
                        "the underlay {} has no address left for the fabric; use a larger one",
                        opts.underlay
                    ))
                })?;
            fabric::attach_underlay(f, &underlay, opts.underlay, address)?;
            Some(address)
        }
        None => None,
    };
    start_fabric_api(state, &mut info, fabric_underlay)?;

    // Node namespaces.
    for node in &info.nodes {
        fs::create_dir_all(state.node_dir(&node.name))
            .map_err(|e| LabError::io("creating the node directory", e))?;
        state.record(&Entry::Netns(node.netns.clone()))?;
        sys::ip(&["netns", "add", &node.netns])?;
        sys::ip_in(&node.netns, &["link", "set", "lo", "up"])?;
        // The node kernel must not answer ARP for pods through OVS-attached veths (lab notes).
        sys::sysctl_in(&node.netns, "net.ipv4.conf.all.arp_ignore=1")?;
        sys::sysctl_in(&node.netns, "net.ipv4.ip_forward=1")?;
        sys::ip_in(
            &underlay,
            &[
                "link",
                "add",
                &node.name,
                "mtu",
                UNDERLAY_MTU,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                UNDERLAY_MTU,
                "netns",
                &node.netns,
            ],
        )?;
        sys::ip_in(
            &underlay,
            &["link", "set", &node.name, "master", "br0", "up"],
        )?;
        sys::ip_in(&node.netns, &["link", "set", "eth0", "up"])?;
        node::tx_checksum_off(Some(&underlay), &node.name)?;
        node::tx_checksum_off(Some(&node.netns), "eth0")?;
        if let Some(f) = &info.fabric {
            fabric::attach_node(state, f, node)?;
        }
        node::start_ovs(state, node)?;
        match info.underlay_mode {
            UnderlayMode::Veth => {
                sys::ip_in(
                    &node.netns,
                    &[
                        "addr",
                        "add",
                        &format!("{}/{prefix}", node.address),
                        "dev",
                        "eth0",
                    ],
                )?;
            }
            UnderlayMode::Ovs => {
                node::create_underlay_bridge(state, node, opts.underlay.prefix_len())?;
            }
        }
        if let Some(via) = fabric_underlay {
            // Everything outside the lab goes to the fabric (egress of overlay pods).
            sys::ip_in(
                &node.netns,
                &["route", "add", "default", "via", &via.to_string()],
            )?;
        }
        node::write_cni_config(state, &info, node)?;
    }
    // Fixed neighbours on the underlay: permanent kernel entries in every node, and OVS's
    // tunnel neighbour cache (refreshed by the runtime driver).
    let peers = underlay_peers(&info);
    for node in &info.nodes {
        set_underlay_neighbours(node, info.underlay_mode.interface(), &peers)?;
        if info.underlay_mode == UnderlayMode::Ovs {
            node::set_tunnel_neighbours(state, node, &peers)?;
        }
    }

    block_on(register_nodes(&url, &info.nodes))??;
    if info.control_planes.is_some() {
        control_plane::up(state, &info)?;
    }

    let mut agents: Vec<(String, Result<u32, String>)> = Vec::new();
    let mut started = Vec::new();
    for n in &info.nodes {
        match (&info.binaries.agent, opts.agent) {
            (_, false) => agents.push((n.name.clone(), Err("not started (--no-agent)".into()))),
            (None, true) => agents.push((
                n.name.clone(),
                Err("switchyard-agent binary not found (cargo build -p switchyard-agent)".into()),
            )),
            (Some(bin), true) => {
                let (child, log) = node::start_agent(state, n, bin, info.fabric.as_ref())?;
                started.push((n.name.clone(), child, log));
            }
        }
    }
    for (name, outcome) in node::wait_agents(state, &mut started) {
        agents.push((
            name,
            match outcome {
                Started::Running(pid) => Ok(pid),
                Started::Exited(why) => Err(why),
            },
        ));
    }
    agents.sort_by(|a, b| a.0.cmp(&b.0));
    let mut proxies = Vec::new();
    for n in &info.nodes {
        let proxy = match (&info.binaries.proxy, opts.proxy) {
            (_, false) => Err("not started (--no-proxy)".to_string()),
            (None, true) => Err(
                "switchyard-proxy binary not found (cargo build -p switchyard-proxy)".to_string(),
            ),
            (Some(bin), true) => {
                let (child, _) = node::start_proxy(state, n, bin)?;
                Ok(child.id())
            }
        };
        proxies.push((n.name.clone(), proxy));
    }
    start_runtime(state, &info)?;
    let started = |list: &[(String, Result<u32, String>)]| -> Vec<String> {
        list.iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| n.clone())
            .collect()
    };
    block_on(super::system::start(
        state,
        &info,
        &url,
        &started(&agents),
        &started(&proxies),
    ))??;
    // A proxy that failed at once (e.g. bad flags) has exited by now or soon; report it.
    for (name, p) in &mut proxies {
        if let Ok(pid) = p
            && !sys::is_same_process(*pid, None)
        {
            *p = Err(format!(
                "switchyard-proxy exited; log {}",
                state.node_dir(name).join("proxy.log").display()
            ));
        }
    }
    Ok(UpReport {
        info,
        agents,
        proxies,
    })
}

/// With a fabric: the fabric API in its namespace (router of LoadBalancer `Route` mode).
fn start_fabric_api(
    state: &StateDir,
    info: &mut LabInfo,
    address: Option<Ipv4Addr>,
) -> Result<(), LabError> {
    let (Some(f), Some(address)) = (info.fabric.as_ref(), address) else {
        return Ok(());
    };
    let api = fabric::start_api(state, &info.binaries.lab, f, address)?;
    if let Some(f) = info.fabric.as_mut() {
        f.api = Some(api);
    }
    state.save_info(info)
}

fn start_apiserver(state: &StateDir, info: &LabInfo) -> Result<String, LabError> {
    let log = state.root().join("apiserver.log");
    let kubeconfig = state.kubeconfig();
    let mut cmd = Command::new(&info.binaries.lab);
    cmd.arg("apiserver")
        .arg("--address")
        .arg(info.host_address.to_string())
        .arg("--port")
        .arg("0")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--lab-state-dir")
        .arg(state.root());
    if info.control_planes.is_some() {
        // `default/kubernetes` lists the relays holding an endpoint Lease.
        cmd.arg(format!(
            "--endpoint-leases-port={}",
            control_plane::APISERVER_PORT
        ));
    }
    let mut child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), "apiserver")?;
    let url = sys::poll_until(START_DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(LabError::Other(format!(
                "the lab API server exited ({status}):\n{}",
                sys::tail(&log, 10)
            ))));
        }
        let text = fs::read_to_string(&kubeconfig).ok()?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .map(|u| Ok(u.to_string()))
    })
    .unwrap_or_else(|| {
        Err(LabError::Other(format!(
            "the lab API server did not write {} within {START_DEADLINE:?}",
            kubeconfig.display()
        )))
    })?;
    Ok(url)
}

fn start_runtime(state: &StateDir, info: &LabInfo) -> Result<(), LabError> {
    let log = state.root().join("runtime.log");
    let mut cmd = Command::new(&info.binaries.lab);
    cmd.arg("runtime").arg("--state-dir").arg(state.root());
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    let mut child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), "runtime")?;
    sys::poll_until(START_DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(LabError::Other(format!(
                "the runtime driver exited ({status}):\n{}",
                sys::tail(&log, 10)
            ))));
        }
        state.runtime_ready().exists().then_some(Ok(()))
    })
    .unwrap_or_else(|| {
        Err(LabError::Other(format!(
            "the runtime driver did not start within {START_DEADLINE:?}; log {}",
            log.display()
        )))
    })
}

async fn register_nodes(url: &str, nodes: &[NodeInfo]) -> Result<(), LabError> {
    let client = client(url)?;
    // The namespace Switchyard runs in on a real cluster (deploy/): the agents migrate the
    // previous design's allocation ConfigMaps of `vlan` segments there.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "switchyard-system"}}))
            .map_err(|e| LabError::Other(e.to_string()))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    // The CRD of those allocations (deploy/crds/), one object per address.
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &<switchyard_api::SegmentAddress as kube::CustomResourceExt>::crd(),
    )
    .await?;
    let api: Api<Node> = Api::all(client);
    for n in nodes {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"},
                "annotations": {"lab.switchyard.io/netns": n.netns}
            }
        }))
        .map_err(|e| LabError::Other(e.to_string()))?;
        api.create(&PostParams::default(), &node).await?;
        let now = chrono_like_now();
        api.patch_status(
            &n.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [
                    {"type": "InternalIP", "address": n.address.to_string()},
                    {"type": "Hostname", "address": n.name}
                ],
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "LabNodeReady",
                    "message": "switchyard-lab node namespace", "lastHeartbeatTime": now,
                    "lastTransitionTime": now
                }]
            }})),
        )
        .await?;
    }
    // The lab's node IPAM controller assigns pod CIDRs; wait for them.
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    loop {
        let mut missing = Vec::new();
        for n in nodes {
            let node = api.get(&n.name).await?;
            if node.spec.and_then(|s| s.pod_cidr).is_none() {
                missing.push(n.name.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LabError::Other(format!(
                "nodes {missing:?} got no podCIDR within {START_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(sys::POLL).await;
    }
}

/// RFC 3339 "now" in UTC (seconds), without a date library.
pub fn chrono_like_now() -> String {
    crate::apiserver::time::format_rfc3339(crate::apiserver::time::now_unix())
}

/// Files and directories the lab writes in its state directory.
const STATE_ENTRIES: &[&str] = &[
    "journal",
    "lab.json",
    "lab.json.tmp",
    "kubeconfig",
    "apiserver.log",
    "runtime.log",
    "runtime.ready",
    "nodes",
    "pods",
    "cni-bin",
    "demo",
    // The fabric API's certificates, log and ready file (`--fabric`).
    "fabric-api",
    // The apiserver relays' certificates and the VIP kubeconfig (`--control-planes`).
    "control-planes",
    // A switchyard-controller's log, when a test runs one against the lab.
    "controller.log",
];

/// Removes what the lab wrote in its state directory, then the directory if that left it
/// empty (a directory given by mistake keeps everything else).
fn remove_state(state: &StateDir) -> Result<(), LabError> {
    for entry in STATE_ENTRIES {
        let p = state.root().join(entry);
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else if p.exists() {
            fs::remove_file(&p)
        } else {
            Ok(())
        };
        r.map_err(|e| LabError::io(format!("removing {}", p.display()), e))?;
    }
    if fs::read_dir(state.root()).is_ok_and(|mut d| d.next().is_none()) {
        fs::remove_dir(state.root())
            .map_err(|e| LabError::io(format!("removing {}", state.root().display()), e))?;
    }
    Ok(())
}

/// Whether `state` holds a lab (its journal or `lab.json`).
pub fn has_lab(state: &StateDir) -> bool {
    state.journal_path().exists() || state.info_path().exists()
}

/// What [`down`] removed.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// Processes signalled.
    pub processes: usize,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Host interfaces deleted.
    pub links: usize,
}

/// Removes everything the journal lists: processes by pid (runtime driver first), every process
/// left in the lab's namespaces, the namespaces, the host interface; then the state directory.
pub fn down(state: &StateDir) -> Result<DownReport, LabError> {
    let entries = state.journal();
    let mut report = DownReport::default();
    let mut pids: Vec<(u32, Option<u64>, String)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Pid { pid, start, what } => Some((*pid, *start, what.clone())),
            _ => None,
        })
        .collect();
    // The runtime driver first (it would recreate pods), then the rest, newest first.
    pids.reverse();
    pids.sort_by_key(|(_, _, what)| what != "runtime");
    for (pid, start, what) in &pids {
        if sys::stop_pid(*pid, *start) {
            tracing::debug!(pid, what = %what, "stopped");
            report.processes += 1;
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut namespaces: Vec<&String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Netns(n) => Some(n),
            _ => None,
        })
        .filter(|n| seen.insert(n.to_string()))
        .collect();
    namespaces.reverse();
    // Anything still running inside the lab's namespaces is the lab's (e.g. a daemon whose pid
    // was not recorded because `up` crashed right after starting it).
    for ns in &namespaces {
        for pid in sys::netns_pids(ns) {
            if sys::stop_pid(pid, sys::start_time(pid)) {
                report.processes += 1;
            }
        }
    }
    for ns in &namespaces {
        sys::remove_netns_etc(ns);
        if sys::netns_exists(ns) {
            match sys::ip(&["netns", "del", ns]) {
                Ok(_) => report.namespaces += 1,
                Err(e) => tracing::warn!(netns = %ns, error = %e, "could not delete namespace"),
            }
        }
    }
    for e in &entries {
        if let Entry::Link(l) = e
            && sys::link_exists(l)
        {
            match sys::ip(&["link", "del", l]) {
                Ok(_) => report.links += 1,
                Err(e) => tracing::warn!(link = %l, error = %e, "could not delete interface"),
            }
        }
    }
    let leftovers: Vec<&String> = namespaces
        .iter()
        .copied()
        .filter(|n| sys::netns_exists(n))
        .collect();
    if !leftovers.is_empty() {
        return Err(LabError::Other(format!(
            "namespaces {leftovers:?} could not be deleted; state kept in {}",
            state.root().display()
        )));
    }
    remove_state(state)?;
    Ok(report)
}
