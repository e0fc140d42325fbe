//! `up --control-planes N`: the first N nodes are control planes of the control-plane VIP
//! (`switchyard-cpvip`, docs/control-plane-vip.md).
//!
//! ```text
//!  <lab>-internet ---- <lab>-fabric: VIP/32 via node1, node2, node3 (ECMP, written by the
//!  (VIP via fabric)    cpvip leader through the fabric API)
//!                           |  underlay
//!  <lab>-nodeN (N <= control planes): apiserver relay on 0.0.0.0:6443 (TLS, the VIP and the
//!     node address in its certificate; relays to the lab API server), its switches on :6444,
//!     switchyard-cpvip (VIP on lo while the local relay's /readyz passes)
//! ```
//!
//! The lab API server then keeps `default/kubernetes` from endpoint Leases the relays renew
//! (15 s), as kube-apiserver's lease endpoint reconciler does
//! (`controllers::KubernetesService::endpoint_leases`), instead of pointing it at itself.
//! `up` installs the CRDs, a Secret with the fabric API's client certificate, the
//! RouteTarget [`ROUTE_TARGET`] and the ControlPlaneVIP [`CPVIP_NAME`], routes the VIP from
//! the internet namespace to the fabric, and waits until the fabric routes the VIP over the
//! control planes.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::LabError;
use super::state::{LabInfo, NodeInfo, StateDir};
use super::sys;
use crate::fabric_api::pki;

/// Default VIP (TEST-NET-1: outside every lab network).
pub const DEFAULT_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// Port of the apiserver relays (and of the VIP).
pub const APISERVER_PORT: u16 = 6443;
/// Port of a relay's switches (`PUT /mode`, plain HTTP on every address of the node).
pub const RELAY_CONTROL_PORT: u16 = 6444;
/// Port of `switchyard-cpvip`'s metrics (on the node's loopback).
pub const CPVIP_METRICS_PORT: u16 = 9467;
/// Name of the ControlPlaneVIP `up` creates.
pub const CPVIP_NAME: &str = "api";
/// Name of the RouteTarget (the fabric API) `up` creates.
pub const ROUTE_TARGET: &str = "lab-fabric";
/// Secret (in [`NAMESPACE`]) with the fabric API's client certificate.
pub const CREDENTIALS_SECRET: &str = "lab-fabric-cred";
/// Namespace of `switchyard-cpvip` (Leases, the Secret).
pub const NAMESPACE: &str = "switchyard-system";
/// How long `up` waits for the fabric to route the VIP over every control plane.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(90);

/// nftables table of the fabric's flow pinning ([`pin_flows`]).
pub const FLOW_PIN_TABLE: &str = "lab-flow-pin";
/// First routing table (and fwmark) of the flow pinning: node i gets `FLOW_PIN_BASE + i`.
pub const FLOW_PIN_BASE: u32 = 0x5900;

/// The control planes of a lab (`lab.json`: `control_planes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneInfo {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The fabric keeps an established connection on the next hop it started on
    /// ([`pin_flows`]); false: plain stateless ECMP (`--no-flow-pinning`).
    #[serde(default)]
    pub flow_pinning: bool,
    /// The control-plane nodes (the first N).
    pub nodes: Vec<String>,
    /// CA of the relays' certificate (`--apiserver-ca` of the daemons, kubectl's CA).
    pub ca: PathBuf,
    /// The relays' certificate (SANs: the VIP, every control-plane address, 127.0.0.1,
    /// `kubernetes`, `kubernetes.default.svc`, `localhost`).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ControlPlaneInfo {
    /// `https://VIP:6443`.
    pub fn vip_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.vip)
    }
}

/// Directory of the control planes' certificates.
pub fn dir(state: &StateDir) -> PathBuf {
    state.root().join("control-planes")
}

/// Checks the options and plans the control planes (nothing made yet).
pub fn plan(
    state: &StateDir,
    count: usize,
    vip: Ipv4Addr,
    nodes: &[NodeInfo],
    fabric: bool,
    flow_pinning: bool,
) -> Result<ControlPlaneInfo, LabError> {
    if count == 0 || count > nodes.len() {
        return Err(LabError::Other(format!(
            "--control-planes {count} is out of range: use 1..={} (the number of nodes)",
            nodes.len()
        )));
    }
    if !fabric {
        return Err(LabError::Other(
            "--control-planes needs --fabric (the fabric router holds the VIP's route)".into(),
        ));
    }
    if vip.is_loopback() || vip.is_unspecified() || vip.is_multicast() {
        return Err(LabError::Other(format!(
            "--control-plane-vip {vip} is not usable"
        )));
    }
    let files = pki::PkiFiles::in_dir(&dir(state));
    Ok(ControlPlaneInfo {
        vip,
        flow_pinning,
        nodes: nodes[..count].iter().map(|n| n.name.clone()).collect(),
        ca: files.ca,
        cert: files.server_cert,
        key: files.server_key,
    })
}

/// A VIP inside a lab network would be answered there instead of routed.
pub fn check_vip(info: &LabInfo, vip: Ipv4Addr) -> Result<(), LabError> {
    let mut nets = vec![info.underlay];
    if let Some(f) = &info.fabric {
        nets.extend(f.vlans.iter().map(|v| v.subnet));
        nets.extend(
            [
                super::fabric::FABRIC_INTERNET_ADDR,
                super::fabric::INTERNET_ADDR,
            ]
            .iter()
            .filter_map(|a| a.parse::<ipnet::Ipv4Net>().ok())
            .map(|n| n.trunc()),
        );
    }
    match nets.iter().find(|n| n.contains(&vip)) {
        Some(n) => Err(LabError::Other(format!(
            "--control-plane-vip {vip} is inside the lab network {n}; pick an address outside it"
        ))),
        None => Ok(()),
    }
}

/// Writes the CA and the relays' certificate.
pub fn write_pki(state: &StateDir, cp: &ControlPlaneInfo, info: &LabInfo) -> Result<(), LabError> {
    let mut ips = vec![IpAddr::V4(cp.vip), IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(
        info.nodes
            .iter()
            .filter(|n| cp.nodes.contains(&n.name))
            .map(|n| IpAddr::V4(n.address)),
    );
    pki::generate(
        &dir(state),
        &ips,
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "localhost",
        ],
        "switchyard-lab-admin",
    )
    .map(drop)
    .map_err(|e| LabError::Other(e.to_string()))
}

fn upstream(info: &LabInfo) -> Result<SocketAddr, LabError> {
    let url = info
        .api_url
        .as_deref()
        .ok_or_else(|| LabError::Other("the lab API server is not running".into()))?;
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| LabError::Other(format!("API server URL {url}: {e}")))
}

/// The ready file of a node's relay.
pub fn relay_ready_file(state: &StateDir, node: &str) -> PathBuf {
    state.node_dir(node).join("relay.ready")
}

/// Starts (or restarts) a node's apiserver relay in its namespace: TLS on
/// `0.0.0.0:6443`, switches on `0.0.0.0:6444`, renewing the endpoint Lease of the node's
/// address; waits until it listens and records its pid. Log: `nodes/<node>/relay.log`.
pub fn start_relay(state: &StateDir, info: &LabInfo, node: &NodeInfo) -> Result<u32, LabError> {
    let cp = info
        .control_planes
        .as_ref()
        .ok_or_else(|| LabError::Other("the lab has no control planes".into()))?;
    let ready = relay_ready_file(state, &node.name);
    let _ = fs::remove_file(&ready);
    let log = state.node_dir(&node.name).join("relay.log");
    let mut cmd = sys::netns_exec(&node.netns, &info.binaries.lab);
    cmd.arg("apiserver-relay")
        .arg(format!("--listen=0.0.0.0:{APISERVER_PORT}"))
        .arg(format!("--upstream={}", upstream(info)?))
        .arg("--cert")
        .arg(&cp.cert)
        .arg("--key")
        .arg(&cp.key)
        .arg(format!("--control=0.0.0.0:{RELAY_CONTROL_PORT}"))
        .arg("--ready-file")
        .arg(&ready)
        .arg(format!("--lease-address={}", node.address));
    let mut child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), &format!("relay {}", node.name))?;
    sys::poll_until(Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(LabError::Other(format!(
                "the apiserver relay of {} exited ({status}):\n{}",
                node.name,
                sys::tail(&log, 10)
            ))));
        }
        ready.exists().then_some(Ok(child.id()))
    })
    .unwrap_or_else(|| {
        Err(LabError::Other(format!(
            "the apiserver relay of {} did not start; log {}",
            node.name,
            log.display()
        )))
    })
}

/// The kubeconfig of a node's `switchyard-cpvip`: its own relay (`https://127.0.0.1:6443`,
/// verified against the lab's apiserver CA), never the VIP.
pub fn cpvip_kubeconfig(cp: &ControlPlaneInfo) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{APISERVER_PORT}\n    certificate-authority: {}\nusers:\n- name: cpvip\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: cpvip\ncurrent-context: local\n",
        cp.ca.display()
    )
}

/// A kubeconfig reaching the lab API server through `https://VIP:6443`, verified against the
/// lab's apiserver CA (`<state>/control-planes/vip.kubeconfig`).
pub fn vip_kubeconfig(cp: &ControlPlaneInfo) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: vip\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: lab\ncontexts:\n- name: vip\n  context:\n    cluster: vip\n    user: admin\n    namespace: default\ncurrent-context: vip\n",
        cp.vip_url(),
        cp.ca.display()
    )
}

/// Path of [`vip_kubeconfig`].
pub fn vip_kubeconfig_path(state: &StateDir) -> PathBuf {
    dir(state).join("vip.kubeconfig")
}

/// Starts `switchyard-cpvip` in a control-plane node (after `--only-arp-sysctls`, its init
/// container's job); records its pid. Log: `nodes/<node>/cpvip.log`.
pub fn start_cpvip(
    state: &StateDir,
    info: &LabInfo,
    node: &NodeInfo,
    program: &Path,
) -> Result<u32, LabError> {
    start_cpvip_with(state, info, node, program, &[])
}

/// [`start_cpvip`] with the daemon run by `wrapper` (e.g. `setpriv` dropping
/// `CAP_NET_ADMIN`: a node that cannot put the VIP on `lo`); the init step runs unwrapped.
pub fn start_cpvip_with(
    state: &StateDir,
    info: &LabInfo,
    node: &NodeInfo,
    program: &Path,
    wrapper: &[&str],
) -> Result<u32, LabError> {
    let cp = info
        .control_planes
        .as_ref()
        .ok_or_else(|| LabError::Other("the lab has no control planes".into()))?;
    sys::run(sys::netns_exec(&node.netns, program).arg("--only-arp-sysctls"))?;
    let kubeconfig = state.node_dir(&node.name).join("cpvip.kubeconfig");
    fs::write(&kubeconfig, cpvip_kubeconfig(cp))
        .map_err(|e| LabError::io(format!("writing {}", kubeconfig.display()), e))?;
    let log = state.node_dir(&node.name).join("cpvip.log");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = sys::netns_exec(&node.netns, first);
            c.args(rest).arg(program);
            c
        }
        None => sys::netns_exec(&node.netns, program),
    };
    cmd.arg("--node-name")
        .arg(&node.name)
        .arg("--node-address")
        .arg(node.address.to_string())
        .arg("--namespace")
        .arg(NAMESPACE)
        .arg("--cluster-name")
        .arg(&info.name)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--apiserver-ca")
        .arg(&cp.ca)
        .arg(format!("--metrics-address=127.0.0.1:{CPVIP_METRICS_PORT}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), &format!("cpvip {}", node.name))?;
    Ok(child.id())
}

/// The objects `switchyard-cpvip` needs: CRDs, the fabric API's credentials Secret, the
/// RouteTarget and the ControlPlaneVIP.
async fn install(url: &str, info: &LabInfo, cp: &ControlPlaneInfo) -> Result<(), LabError> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    let api = info
        .fabric
        .as_ref()
        .and_then(|f| f.api.clone())
        .ok_or_else(|| LabError::Other("the fabric API is not running".into()))?;
    let client = super::up::client(url)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in switchyard_api::crds() {
        // `up` installs some itself (SegmentAddress for the vlan segments' addresses).
        match crds.create(&PostParams::default(), &crd).await {
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            other => {
                other?;
            }
        }
    }
    let read =
        |p: &Path| fs::read(p).map_err(|e| LabError::io(format!("reading {}", p.display()), e));
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": k8s_openapi::ByteString(read(&api.pki.client_cert)?),
            "tls.key": k8s_openapi::ByteString(read(&api.pki.client_key)?),
            "ca.crt": k8s_openapi::ByteString(read(&api.pki.ca)?),
        },
    }))
    .map_err(|e| LabError::Other(e.to_string()))?;
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;
    let target: switchyard_api::RouteTarget = serde_json::from_value(json!({
        "apiVersion": "switchyard.io/v1alpha1", "kind": "RouteTarget",
        "metadata": {"name": ROUTE_TARGET},
        "spec": {"driver": "lab", "endpoint": api.endpoint,
                 "credentialsSecretRef": {"namespace": NAMESPACE, "name": CREDENTIALS_SECRET}},
    }))
    .map_err(|e| LabError::Other(e.to_string()))?;
    Api::<switchyard_api::RouteTarget>::all(client.clone())
        .create(&PostParams::default(), &target)
        .await?;
    let vip: switchyard_api::ControlPlaneVIP = serde_json::from_value(json!({
        "apiVersion": "switchyard.io/v1alpha1", "kind": "ControlPlaneVIP",
        "metadata": {"name": CPVIP_NAME},
        "spec": {"vip": cp.vip.to_string(), "routeTarget": ROUTE_TARGET,
                 "apiserverPort": APISERVER_PORT},
    }))
    .map_err(|e| LabError::Other(e.to_string()))?;
    Api::<switchyard_api::ControlPlaneVIP>::all(client)
        .create(&PostParams::default(), &vip)
        .await?;
    Ok(())
}

/// The nftables script of [`pin_flows`] for the node addresses `nodes` (node i, 1-based:
/// mark and table `FLOW_PIN_BASE + i`).
pub fn flow_pin_script(nodes: &[Ipv4Addr]) -> String {
    let elements = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a} : {:#x}", FLOW_PIN_BASE + i as u32 + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {FLOW_PIN_TABLE} {{}}\n\
         delete table ip {FLOW_PIN_TABLE}\n\
         table ip {FLOW_PIN_TABLE} {{\n\
         \tmap nexthop_mark {{\n\
         \t\ttype ipv4_addr : mark\n\
         \t\telements = {{ {elements} }}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tct direction original ct mark != 0 meta mark set ct mark\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype filter hook postrouting priority mangle; policy accept;\n\
         \t\tct direction original ct mark 0 ct mark set rt ip nexthop map @nexthop_mark\n\
         \t}}\n\
         }}\n"
    )
}

/// Flow pinning in the fabric, as a router with flow-aware ECMP (or a stateful load
/// balancer) has it: the first packet of a connection is routed by the ECMP route; the node
/// it went to is remembered in the connection's conntrack mark (`postrouting`, `rt ip
/// nexthop`), and the connection's later packets follow that mark (`fwmark` rules, one
/// table per node with a default route to it) even when the route changed since. Without
/// it, Linux's hash-threshold ECMP moves in-flight connections of other next hops whenever
/// one is added or removed, and they are reset by their new node.
pub fn pin_flows(info: &LabInfo) -> Result<(), LabError> {
    let Some(f) = &info.fabric else {
        return Ok(());
    };
    let nodes: Vec<Ipv4Addr> = info.nodes.iter().map(|n| n.address).collect();
    let script = flow_pin_script(&nodes);
    let mut child = sys::netns_exec(&f.netns, "nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io("running nft", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| LabError::io("writing to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io("running nft", e))?;
    if !out.status.success() {
        return Err(LabError::Other(format!(
            "nft in {}: {}",
            f.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for (i, a) in nodes.iter().enumerate() {
        let id = (FLOW_PIN_BASE + i as u32 + 1).to_string();
        sys::ip_in(
            &f.netns,
            &[
                "route",
                "replace",
                "default",
                "via",
                &a.to_string(),
                "dev",
                super::fabric::FABRIC_UNDERLAY_LINK,
                "table",
                &id,
            ],
        )?;
        sys::ip_in(
            &f.netns,
            &[
                "rule", "add", "fwmark", &id, "table", &id, "priority", "100",
            ],
        )?;
    }
    Ok(())
}

/// The next hops of the fabric's route to the VIP (sorted; empty: no route).
pub fn fabric_next_hops(info: &LabInfo, vip: Ipv4Addr) -> Vec<Ipv4Addr> {
    let Some(f) = &info.fabric else {
        return Vec::new();
    };
    let out = sys::ip_in(
        &f.netns,
        &["-4", "route", "show", "exact", &format!("{vip}/32")],
    )
    .unwrap_or_default();
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut hops: Vec<Ipv4Addr> = words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    hops.sort();
    hops
}

/// Brings up the control planes of a lab whose nodes are registered: certificates, relays,
/// `switchyard-cpvip` on each, the objects, the internet's route to the VIP; waits until
/// the fabric routes the VIP over every control plane.
pub fn up(state: &StateDir, info: &LabInfo) -> Result<(), LabError> {
    let cp = info
        .control_planes
        .clone()
        .ok_or_else(|| LabError::Other("the lab has no control planes".into()))?;
    let program = info.binaries.cpvip.clone().ok_or_else(|| {
        LabError::Other(
            "switchyard-cpvip binary not found (cargo build -p switchyard-cpvip)".into(),
        )
    })?;
    check_vip(info, cp.vip)?;
    write_pki(state, &cp, info)?;
    fs::write(vip_kubeconfig_path(state), vip_kubeconfig(&cp))
        .map_err(|e| LabError::io("writing the VIP kubeconfig", e))?;
    let url = info
        .api_url
        .clone()
        .ok_or_else(|| LabError::Other("the lab API server is not running".into()))?;
    super::up::block_on(install(&url, info, &cp))??;
    let nodes: Vec<&NodeInfo> = info
        .nodes
        .iter()
        .filter(|n| cp.nodes.contains(&n.name))
        .collect();
    for node in &nodes {
        start_relay(state, info, node)?;
    }
    for node in &nodes {
        start_cpvip(state, info, node, &program)?;
    }
    if cp.flow_pinning {
        pin_flows(info)?;
    }
    if let Some(f) = &info.fabric {
        let via = super::fabric::FABRIC_INTERNET_ADDR
            .split('/')
            .next()
            .unwrap_or_default();
        sys::ip_in(
            &f.internet_netns,
            &["route", "replace", &format!("{}/32", cp.vip), "via", via],
        )?;
    }
    let mut want: Vec<Ipv4Addr> = nodes.iter().map(|n| n.address).collect();
    want.sort();
    sys::poll_until(ROUTE_DEADLINE, || {
        (fabric_next_hops(info, cp.vip) == want).then_some(())
    })
    .ok_or_else(|| {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| {
                let log = state.node_dir(&n.name).join("cpvip.log");
                format!("{}:\n{}", log.display(), sys::tail(&log, 8))
            })
            .collect();
        LabError::Other(format!(
            "the fabric did not route the VIP {} over {want:?} within {ROUTE_DEADLINE:?} (now {:?}):\n{}",
            cp.vip,
            fabric_next_hops(info, cp.vip),
            logs.join("\n")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfigs_name_the_local_relay_and_the_vip() {
        let cp = ControlPlaneInfo {
            vip: DEFAULT_VIP,
            flow_pinning: true,
            nodes: vec!["node1".into()],
            ca: "/s/control-planes/ca.crt".into(),
            cert: "/s/control-planes/server.crt".into(),
            key: "/s/control-planes/server.key".into(),
        };
        let local = cpvip_kubeconfig(&cp);
        assert!(
            local.contains("server: https://127.0.0.1:6443\n"),
            "{local}"
        );
        assert!(local.contains("certificate-authority: /s/control-planes/ca.crt\n"));
        let vip = vip_kubeconfig(&cp);
        assert!(vip.contains("server: https://192.0.2.10:6443\n"), "{vip}");
    }

    #[test]
    fn flow_pinning_marks_by_next_hop() {
        let s = flow_pin_script(&["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()]);
        assert!(
            s.contains("elements = { 10.0.0.1 : 0x5901, 10.0.0.2 : 0x5902 }"),
            "{s}"
        );
        assert!(s.starts_with("table ip lab-flow-pin {}\ndelete table ip lab-flow-pin\n"));
        assert!(s.contains("ct direction original ct mark != 0 meta mark set ct mark"));
    }
}
