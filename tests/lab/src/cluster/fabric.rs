//! The optional `fabric` and `internet` namespaces (`up --fabric`).
//!
//! ```text
//!  <lab>-node1: trunk0 ---- node1 ]                     [ vlan100 10.100.0.1/24 (internal, tag 100)
//!  <lab>-node2: trunk0 ---- node2 ]  br-fabric (OVS,    [ vlan200 10.101.0.1/24 (internal, tag 200)
//!                    (veth, trunks)  netdev, NORMAL)     ip_forward=1, default via 198.51.100.2
//!                                   <lab>-fabric: internet 198.51.100.1/24 ---- eth0 198.51.100.2/24
//!                                                                  <lab>-internet, lo 203.0.113.1/32
//! ```
//!
//! The fabric is the VLAN-aware router of `vlan` segments: an OVS bridge (own `ovsdb-server` and
//! `ovs-vswitchd`, userspace datapath) with one trunk port per node (the peer of the node's
//! `trunk0`) and one internal port per VLAN holding the segment's gateway address; the kernel
//! of the fabric namespace routes between the VLANs and to the `internet` namespace. The agents
//! get one `vlan` segment per VLAN with `uplink: trunk0` in their configuration.
//!
//! The fabric also sits on the underlay (`underlay` in the fabric, address
//! [`underlay_address`]) and is every node's default route, so overlay pods reach the internet
//! through their node (SNATed to the node address by the agent) and the internet routes the
//! underlay back through the fabric.

use std::fs;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::LabError;
use super::node;
use super::state::{Entry, LabInfo, NodeInfo, StateDir};
use super::sys;
use crate::fabric_api::pki::{self, PkiFiles};

/// Name of the fabric's pseudo-node (its OVS directory under `<state>/nodes/`).
pub const FABRIC_NODE: &str = "fabric";
/// The node end of a node's trunk.
pub const NODE_TRUNK: &str = "trunk0";
/// Fabric end of the internet link.
pub const FABRIC_INTERNET_ADDR: &str = "198.51.100.1/24";
/// Internet end of the internet link.
pub const INTERNET_ADDR: &str = "198.51.100.2/24";
/// An "internet host" address on the internet namespace's loopback.
pub const INTERNET_HOST: &str = "203.0.113.1";

/// One VLAN of the fabric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VlanInfo {
    /// Segment name in the agent configuration (`vlan<N>`).
    pub segment: String,
    /// 802.1Q tag.
    pub vlan: u16,
    /// Subnet of the segment.
    pub subnet: Ipv4Net,
    /// Gateway (on the fabric).
    pub gateway: Ipv4Addr,
}

/// The fabric of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricInfo {
    /// Fabric namespace.
    pub netns: String,
    /// Internet namespace.
    pub internet_netns: String,
    /// VLANs.
    pub vlans: Vec<VlanInfo>,
    /// The fabric API (`switchyard-lab fabric-api`), once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<FabricApiInfo>,
}

/// Where the fabric API serves and the certificates to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricApiInfo {
    /// Base URL, `https://<fabric underlay address>:8443`.
    pub endpoint: String,
    /// Tier-1 id the lab's routes go under (the fabric API accepts any).
    pub tier1: String,
    /// CA, server and client certificates (PEM files).
    pub pki: PkiFiles,
}

/// The plan for VLAN tags: VLAN i (0-based) gets `10.(100+i).0.0/24`, gateway `.1`.
pub fn plan(lab_name: &str, vlans: &[u16]) -> Result<FabricInfo, LabError> {
    if vlans.is_empty() || vlans.len() > 50 {
        return Err(LabError::Other("give 1..=50 VLANs to the fabric".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, &vlan) in vlans.iter().enumerate() {
        if !(1..=4094).contains(&vlan) || !seen.insert(vlan) {
            return Err(LabError::Other(format!(
                "VLAN {vlan} is out of 1..=4094 or given twice"
            )));
        }
        let second = 100 + u8::try_from(i).unwrap_or(0);
        out.push(VlanInfo {
            segment: format!("vlan{vlan}"),
            vlan,
            subnet: Ipv4Net::new(Ipv4Addr::new(10, second, 0, 0), 24)
                .map_err(|e| LabError::Other(e.to_string()))?,
            gateway: Ipv4Addr::new(10, second, 0, 1),
        });
    }
    Ok(FabricInfo {
        netns: format!("{lab_name}-fabric"),
        internet_netns: format!("{lab_name}-internet"),
        vlans: out,
        api: None,
    })
}

/// The agent's `segments:` YAML for a fabric (the default overlay segment plus one `vlan`
/// segment per VLAN trunked on `trunk0`).
pub fn agent_segments_yaml(fabric: &FabricInfo) -> String {
    let mut s = String::from("segments:\n- name: default\n  kind: overlay\n");
    for v in &fabric.vlans {
        s.push_str(&format!(
            "- name: {}\n  kind: vlan\n  vlan: {}\n  subnet: {}\n  gateway: {}\n  uplink: {NODE_TRUNK}\n",
            v.segment, v.vlan, v.subnet, v.gateway
        ));
    }
    s
}

fn vsctl(state: &StateDir, fabric: &FabricInfo, args: &[&str]) -> Result<String, LabError> {
    node::vsctl(state, &pseudo_node(fabric), args)
}

/// The fabric as a node of its own (its OVS directory is `<state>/nodes/fabric/ovs`).
fn pseudo_node(fabric: &FabricInfo) -> NodeInfo {
    NodeInfo {
        name: FABRIC_NODE.into(),
        netns: fabric.netns.clone(),
        address: Ipv4Addr::UNSPECIFIED,
    }
}

/// Creates the fabric and internet namespaces, the fabric's OVS, its VLAN gateways and the
/// internet link (before the nodes exist).
pub fn create(state: &StateDir, fabric: &FabricInfo) -> Result<(), LabError> {
    let ns = &fabric.netns;
    state.record(&Entry::Netns(ns.clone()))?;
    sys::ip(&["netns", "add", ns])?;
    sys::ip_in(ns, &["link", "set", "lo", "up"])?;
    sys::sysctl_in(ns, "net.ipv4.ip_forward=1")?;
    fs::create_dir_all(state.node_dir(FABRIC_NODE))
        .map_err(|e| LabError::io("creating the fabric directory", e))?;
    node::start_ovs(state, &pseudo_node(fabric))?;
    vsctl(
        state,
        fabric,
        &[
            "add-br",
            "br-fabric",
            "--",
            "set",
            "bridge",
            "br-fabric",
            "datapath_type=netdev",
            "fail_mode=standalone",
        ],
    )?;
    for v in &fabric.vlans {
        let port = format!("vlan{}", v.vlan);
        let tag = format!("tag={}", v.vlan);
        vsctl(
            state,
            fabric,
            &[
                "add-port",
                "br-fabric",
                &port,
                &tag,
                "--",
                "set",
                "interface",
                &port,
                "type=internal",
            ],
        )?;
        let gw = format!("{}/{}", v.gateway, v.subnet.prefix_len());
        // The internal port's tap appears in the fabric namespace once vswitchd made it.
        sys::poll_until(std::time::Duration::from_secs(10), || {
            sys::ip_in(ns, &["link", "show", &port]).ok()
        })
        .ok_or_else(|| LabError::Other(format!("fabric port {port} did not appear")))?;
        sys::ip_in(ns, &["addr", "add", &gw, "dev", &port])?;
        sys::ip_in(ns, &["link", "set", &port, "up"])?;
    }
    let inet = &fabric.internet_netns;
    state.record(&Entry::Netns(inet.clone()))?;
    sys::ip(&["netns", "add", inet])?;
    sys::ip_in(inet, &["link", "set", "lo", "up"])?;
    sys::ip_in(
        ns,
        &[
            "link", "add", "internet", "type", "veth", "peer", "name", "eth0", "netns", inet,
        ],
    )?;
    sys::ip_in(
        ns,
        &["addr", "add", FABRIC_INTERNET_ADDR, "dev", "internet"],
    )?;
    sys::ip_in(ns, &["link", "set", "internet", "up"])?;
    sys::ip_in(inet, &["addr", "add", INTERNET_ADDR, "dev", "eth0"])?;
    sys::ip_in(inet, &["link", "set", "eth0", "up"])?;
    sys::ip_in(
        inet,
        &["addr", "add", &format!("{INTERNET_HOST}/32"), "dev", "lo"],
    )?;
    let fabric_side = FABRIC_INTERNET_ADDR.split('/').next().unwrap_or_default();
    let internet_side = INTERNET_ADDR.split('/').next().unwrap_or_default();
    for v in &fabric.vlans {
        sys::ip_in(
            inet,
            &["route", "add", &v.subnet.to_string(), "via", fabric_side],
        )?;
    }
    sys::ip_in(ns, &["route", "add", "default", "via", internet_side])?;
    Ok(())
}

/// Adds a VLAN gateway to a running lab's fabric, as `--vlans` does at `up`, for a VLAN given
/// out later (e.g. a namespace network's Segment): the internal port `vlan<N>` of `br-fabric`
/// tagged `vlan`, holding `gateway` (the gateway address with the subnet's prefix, e.g.
/// `10.30.0.1/26`), and `vlan` added to every node's trunk port on `br-fabric`. Repeating it
/// is harmless. It is not recorded in the lab's info (the agents learn the VLAN from the
/// Segment, not from the lab) and goes with the fabric at `down`. The internet namespace gets
/// no route to the subnet: its traffic reaches the internet only through an SNAT rule.
pub fn add_vlan_gateway(
    state: &StateDir,
    info: &LabInfo,
    vlan: u16,
    gateway: Ipv4Net,
) -> Result<(), LabError> {
    let fabric = of(info).ok_or_else(|| LabError::Other("the lab has no fabric".into()))?;
    if !(1..=4094).contains(&vlan) {
        return Err(LabError::Other(format!("VLAN {vlan} is out of 1..=4094")));
    }
    let port = format!("vlan{vlan}");
    let tag = format!("tag={vlan}");
    vsctl(
        state,
        fabric,
        &[
            "--may-exist",
            "add-port",
            "br-fabric",
            &port,
            &tag,
            "--",
            "set",
            "interface",
            &port,
            "type=internal",
        ],
    )?;
    for node in &info.nodes {
        vsctl(
            state,
            fabric,
            &["add", "port", &node.name, "trunks", &vlan.to_string()],
        )?;
    }
    let ns = &fabric.netns;
    sys::poll_until(std::time::Duration::from_secs(10), || {
        sys::ip_in(ns, &["link", "show", &port]).ok()
    })
    .ok_or_else(|| LabError::Other(format!("fabric port {port} did not appear")))?;
    sys::ip_in(ns, &["addr", "replace", &gateway.to_string(), "dev", &port])?;
    sys::ip_in(ns, &["link", "set", &port, "up"]).map(drop)
}

/// Connects a node to the fabric: `trunk0` in the node, a trunk port of `br-fabric` in the fabric.
pub fn attach_node(state: &StateDir, fabric: &FabricInfo, node: &NodeInfo) -> Result<(), LabError> {
    sys::ip_in(
        &fabric.netns,
        &[
            "link",
            "add",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            NODE_TRUNK,
            "netns",
            &node.netns,
        ],
    )?;
    sys::ip_in(&fabric.netns, &["link", "set", &node.name, "up"])?;
    sys::ip_in(&node.netns, &["link", "set", NODE_TRUNK, "up"])?;
    let trunks = format!(
        "trunks={}",
        fabric
            .vlans
            .iter()
            .map(|v| v.vlan.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    vsctl(
        state,
        fabric,
        &["add-port", "br-fabric", &node.name, &trunks],
    )
    .map(drop)
}

/// Name of the fabric's interface on the underlay.
pub const FABRIC_UNDERLAY_LINK: &str = "underlay";

/// The fabric's address on the underlay: the one before the host's (the last).
pub fn underlay_address(underlay: Ipv4Net) -> Option<Ipv4Addr> {
    let hosts: Vec<Ipv4Addr> = underlay.hosts().collect();
    hosts.len().checked_sub(2).map(|i| hosts[i])
}

/// Puts the fabric on the underlay bridge (`br0` in `underlay_netns`) with `address`, and
/// routes the underlay from the internet through the fabric.
pub fn attach_underlay(
    fabric: &FabricInfo,
    underlay_netns: &str,
    underlay: Ipv4Net,
    address: Ipv4Addr,
) -> Result<(), LabError> {
    let ns = &fabric.netns;
    let mtu = super::up::UNDERLAY_MTU;
    sys::ip_in(
        ns,
        &[
            "link",
            "add",
            FABRIC_UNDERLAY_LINK,
            "mtu",
            mtu,
            "type",
            "veth",
            "peer",
            "name",
            "fabric",
            "mtu",
            mtu,
            "netns",
            underlay_netns,
        ],
    )?;
    sys::ip_in(
        underlay_netns,
        &["link", "set", "fabric", "master", "br0", "up"],
    )?;
    sys::ip_in(
        ns,
        &[
            "addr",
            "add",
            &format!("{address}/{}", underlay.prefix_len()),
            "dev",
            FABRIC_UNDERLAY_LINK,
        ],
    )?;
    sys::ip_in(ns, &["link", "set", FABRIC_UNDERLAY_LINK, "up"])?;
    node::tx_checksum_off(Some(ns), FABRIC_UNDERLAY_LINK)?;
    node::tx_checksum_off(Some(underlay_netns), "fabric")?;
    let fabric_side = FABRIC_INTERNET_ADDR.split('/').next().unwrap_or_default();
    sys::ip_in(
        &fabric.internet_netns,
        &["route", "add", &underlay.to_string(), "via", fabric_side],
    )
    .map(drop)
}

/// Tier-1 id of the lab's routes.
pub const LAB_TIER1: &str = "lab";

/// Starts the fabric API in the fabric namespace on `address:8443`: generates the lab CA, a
/// server certificate for `address` and a client certificate under `<state>/fabric-api/`,
/// turns on L4 hashing of ECMP routes (so connections of one client spread over next hops),
/// and waits until it listens.
pub fn start_api(
    state: &StateDir,
    lab_binary: &std::path::Path,
    fabric: &FabricInfo,
    address: Ipv4Addr,
) -> Result<FabricApiInfo, LabError> {
    let dir = state.root().join("fabric-api");
    let files = pki::generate(
        &dir,
        &[std::net::IpAddr::V4(address)],
        &["fabric-api"],
        "switchyard-controller",
    )
    .map_err(|e| LabError::Other(e.to_string()))?;
    sys::sysctl_in(&fabric.netns, "net.ipv4.fib_multipath_hash_policy=1")?;
    let ready = dir.join("ready");
    let _ = fs::remove_file(&ready);
    let log = dir.join("fabric-api.log");
    let listen = format!("{address}:{}", crate::fabric_api::DEFAULT_PORT);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &fabric.netns])
        .arg(lab_binary)
        .arg("fabric-api")
        .args(["--listen", &listen])
        .arg("--cert")
        .arg(&files.server_cert)
        .arg("--key")
        .arg(&files.server_key)
        .arg("--client-ca")
        .arg(&files.ca)
        .arg("--ready-file")
        .arg(&ready);
    let mut child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), "fabric-api")?;
    sys::poll_until(std::time::Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(LabError::Other(format!(
                "the fabric API exited ({status}):\n{}",
                sys::tail(&log, 10)
            ))));
        }
        ready.exists().then_some(Ok(()))
    })
    .unwrap_or_else(|| {
        Err(LabError::Other(format!(
            "the fabric API did not start; log {}",
            log.display()
        )))
    })?;
    Ok(FabricApiInfo {
        endpoint: format!("https://{listen}"),
        tier1: LAB_TIER1.into(),
        pki: files,
    })
}

/// The fabric of a lab, if it has one.
pub fn of(info: &LabInfo) -> Option<&FabricInfo> {
    info.fabric.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlans_get_subnets_in_order() {
        let f = plan("sy", &[100, 200]).unwrap();
        assert_eq!(f.netns, "sy-fabric");
        assert_eq!(f.internet_netns, "sy-internet");
        assert_eq!(f.vlans[0].subnet.to_string(), "10.100.0.0/24");
        assert_eq!(f.vlans[1].gateway.to_string(), "10.101.0.1");
        assert!(plan("sy", &[100, 100]).is_err());
        assert!(plan("sy", &[0]).is_err());
        assert!(plan("sy", &[4095]).is_err());
        assert!(plan("sy", &[]).is_err());
    }

    #[test]
    fn agent_segments_are_exact() {
        let f = plan("sy", &[100]).unwrap();
        assert_eq!(
            agent_segments_yaml(&f),
            "segments:\n- name: default\n  kind: overlay\n- name: vlan100\n  kind: vlan\n  vlan: 100\n  subnet: 10.100.0.0/24\n  gateway: 10.100.0.1\n  uplink: trunk0\n"
        );
    }
}
