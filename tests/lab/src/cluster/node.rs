//! What runs on a node: its Open vSwitch daemons, `switchyard-agent`, `switchyard-proxy`, and
//! the CNI configuration the runtime driver uses for its pods.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::LabError;
use super::state::{LabInfo, NodeInfo, StateDir};
use super::sys;

/// The installed OVSDB schema.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// How long the agent gets to create its CNI socket.
pub const AGENT_START_DEADLINE: Duration = Duration::from_secs(20);
/// Network name in the conflist.
pub const NETWORK_NAME: &str = "switchyard";
/// CNI version of the conflist (GC and STATUS need 1.1.0).
pub const CNI_VERSION: &str = "1.1.0";

/// An OVS tool with `OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR` pointing at the node's OVS directory.
pub fn ovs_command(state: &StateDir, node: &str, program: &str) -> Command {
    let dir = state.ovs_dir(node);
    let mut cmd = Command::new(program);
    cmd.env("OVS_RUNDIR", &dir)
        .env("OVS_DBDIR", &dir)
        .env("OVS_LOGDIR", &dir);
    cmd
}

/// An OVS tool run inside the node's namespace (so that `down`, which stops every process in
/// the lab's namespaces, also ends one left waiting by a killed `up`), with the node's OVS
/// environment.
pub fn ovs_command_in(state: &StateDir, node: &NodeInfo, program: &str) -> Command {
    let mut cmd = ovs_command(state, &node.name, "ip");
    cmd.args(["netns", "exec", &node.netns, program]);
    cmd
}

/// `ovs-vsctl` against the node's database.
pub fn vsctl(state: &StateDir, node: &NodeInfo, args: &[&str]) -> Result<String, LabError> {
    let db = format!("unix:{}", state.ovsdb_socket(&node.name).display());
    sys::run(
        ovs_command_in(state, node, "ovs-vsctl")
            .arg(format!("--db={db}"))
            .arg("--timeout=10")
            .args(args),
    )
}

/// Starts the node's `ovsdb-server` and `ovs-vswitchd` inside its namespace, each detached with
/// its pid file, log and control socket in the node's OVS directory; records both pids.
pub fn start_ovs(state: &StateDir, node: &NodeInfo) -> Result<(), LabError> {
    let dir = state.ovs_dir(&node.name);
    fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let db = dir.join("conf.db");
    sys::run(
        Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(VSWITCH_SCHEMA),
    )?;
    start_ovsdb_server(state, node)?;
    vsctl(state, node, &["--no-wait", "init"])?;
    start_ovs_daemon(
        state,
        node,
        "ovs-vswitchd",
        vec![format!("unix:{}", state.ovsdb_socket(&node.name).display())],
    )?;
    Ok(())
}

/// Starts the node's `ovsdb-server` on its database (which must exist) and records its pid;
/// it serves once this returns.
pub fn start_ovsdb_server(state: &StateDir, node: &NodeInfo) -> Result<u32, LabError> {
    let db = state.ovs_dir(&node.name).join("conf.db");
    start_ovs_daemon(
        state,
        node,
        "ovsdb-server",
        vec![
            db.display().to_string(),
            format!(
                "--remote=punix:{}",
                state.ovsdb_socket(&node.name).display()
            ),
        ],
    )
}

/// Starts an OVS daemon detached inside the node's namespace, with its pid file, log and control
/// socket in the node's OVS directory; records its pid.
fn start_ovs_daemon(
    state: &StateDir,
    node: &NodeInfo,
    program: &str,
    args: Vec<String>,
) -> Result<u32, LabError> {
    let dir = state.ovs_dir(&node.name);
    let mut cmd = ovs_command(state, &node.name, "ip");
    cmd.args(["netns", "exec", &node.netns, program])
        .args(args)
        .args(["--pidfile", "--detach", "--no-chdir", "--log-file"]);
    // With --detach the parent returns once the daemon is ready; the daemon closes its
    // standard streams, so nothing here waits on a pipe it keeps open.
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| LabError::io(format!("starting {program}"), e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: sys::command_line(&cmd),
            status: out.status.to_string(),
            stderr: format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                sys::tail(&dir.join(format!("{program}.log")), 10)
            ),
        });
    }
    let pidfile = dir.join(format!("{program}.pid"));
    let pid = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LabError::Other(format!("{} has no pid", pidfile.display())))?;
    state.record_pid(pid, &format!("{program} {}", node.name))?;
    Ok(pid)
}

/// Puts the node's underlay address on the tap of a netdev bridge `br-ul` whose port is `eth0`
/// (fixed MAC [`super::state::underlay_mac`]), as the lab notes' recipe does for userspace
/// tunnels.
pub fn create_underlay_bridge(
    state: &StateDir,
    node: &NodeInfo,
    prefix_len: u8,
) -> Result<(), LabError> {
    let hwaddr = format!(
        "other_config:hwaddr=\"{}\"",
        super::state::underlay_mac(node.address)
    );
    vsctl(
        state,
        node,
        &[
            "add-br",
            "br-ul",
            "--",
            "set",
            "bridge",
            "br-ul",
            "datapath_type=netdev",
            &hwaddr,
            "--",
            "add-port",
            "br-ul",
            "eth0",
        ],
    )?;
    sys::poll_until(Duration::from_secs(10), || {
        sys::ip_in(&node.netns, &["link", "show", "br-ul"]).ok()
    })
    .ok_or_else(|| LabError::Other(format!("br-ul did not appear in {}", node.netns)))?;
    let addr = format!("{}/{prefix_len}", node.address);
    sys::ip_in(&node.netns, &["addr", "add", &addr, "dev", "br-ul"])?;
    sys::ip_in(
        &node.netns,
        &["link", "set", "br-ul", "mtu", super::up::UNDERLAY_MTU, "up"],
    )?;
    tx_checksum_off(Some(&node.netns), "br-ul")
}

/// `ethtool -K IF tx off` (in `netns`, or the caller's namespace): packets that cross the
/// userspace datapath must carry full checksums (lab notes).
pub fn tx_checksum_off(netns: Option<&str>, interface: &str) -> Result<(), LabError> {
    let mut cmd = match netns {
        Some(ns) => sys::netns_exec(ns, "ethtool"),
        None => Command::new("ethtool"),
    };
    sys::run(cmd.args(["-K", interface, "tx", "off"])).map(drop)
}

/// Tells a node's `ovs-vswitchd` the MAC of each underlay peer (`tnl/neigh/set`), so tunnel
/// packets never wait for (or lose) neighbour resolution; refreshed by the runtime driver.
pub fn set_tunnel_neighbours(
    state: &StateDir,
    node: &NodeInfo,
    peers: &[(std::net::Ipv4Addr, String)],
) -> Result<(), LabError> {
    for (ip, mac) in peers {
        if *ip == node.address {
            continue;
        }
        sys::run(
            ovs_command_in(state, node, "ovs-appctl")
                .args([
                    "--timeout=5",
                    "-t",
                    "ovs-vswitchd",
                    "tnl/neigh/set",
                    "br-ul",
                ])
                .arg(ip.to_string())
                .arg(mac),
        )?;
    }
    Ok(())
}

/// The agent's YAML configuration for a node: the one place that maps the lab onto
/// `switchyard-agent`'s settings (keys of `node-agent/src/config/file.rs`).
pub fn agent_config_yaml(
    state: &StateDir,
    node: &NodeInfo,
    fabric: Option<&super::fabric::FabricInfo>,
) -> String {
    let ovs_dir = state.ovs_dir(&node.name);
    let segments = fabric
        .map(super::fabric::agent_segments_yaml)
        .unwrap_or_default();
    format!(
        "# switchyard-agent configuration written by switchyard-lab\n\
         node-name: {name}\n\
         kubeconfig: {kubeconfig}\n\
         ovsdb-endpoint: unix:{db}\n\
         ovs-rundir: {rundir}\n\
         bridge: br-int\n\
         datapath-type: netdev\n\
         cni-socket: {sock}\n\
         listen-address: 127.0.0.1:9465\n\
         service-cidr: 10.96.0.0/16\n{segments}",
        name = node.name,
        kubeconfig = state.kubeconfig().display(),
        db = state.ovsdb_socket(&node.name).display(),
        rundir = ovs_dir.display(),
        sock = state.cni_socket(&node.name).display(),
    )
}

/// Argument vector of `switchyard-agent` (after the program) given its config file.
pub fn agent_args(config: &Path) -> Vec<String> {
    vec!["--config".into(), config.display().to_string()]
}

/// Argument vector of `switchyard-proxy` (after the program) for a node. Its environment
/// carries `NODE_NAME`, `KUBECONFIG` and `OVS_RUNDIR` (the node's OVS directory, where
/// `br-int.mgmt` is), which the proxy reads as defaults of its flags.
pub fn proxy_args(node: &NodeInfo) -> Vec<String> {
    vec!["--node-name".into(), node.name.clone()]
}

/// Outcome of starting a node component.
#[derive(Debug)]
pub enum Started {
    /// Running, with this pid.
    Running(u32),
    /// It exited during start; the message says how and where its log is.
    Exited(String),
}

fn spawn_in_node(
    state: &StateDir,
    node: &NodeInfo,
    program: &Path,
    args: &[String],
    what: &str,
) -> Result<(Child, std::path::PathBuf), LabError> {
    let log = state.node_dir(&node.name).join(format!("{what}.log"));
    let mut cmd = sys::netns_exec(&node.netns, program);
    cmd.args(args)
        .env("NODE_NAME", &node.name)
        .env("KUBECONFIG", state.kubeconfig())
        .env("OVS_RUNDIR", state.ovs_dir(&node.name))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let child = sys::spawn_background(&mut cmd, &log)?;
    state.record_pid(child.id(), &format!("{what} {}", node.name))?;
    Ok((child, log))
}

/// Starts `switchyard-agent` in the node namespace (see [`wait_agents`]).
pub fn start_agent(
    state: &StateDir,
    node: &NodeInfo,
    program: &Path,
    fabric: Option<&super::fabric::FabricInfo>,
) -> Result<(Child, std::path::PathBuf), LabError> {
    let config = state.node_dir(&node.name).join("agent.yaml");
    fs::write(&config, agent_config_yaml(state, node, fabric))
        .map_err(|e| LabError::io(format!("writing {}", config.display()), e))?;
    spawn_in_node(state, node, program, &agent_args(&config), "agent")
}

/// Waits until each started agent has created its CNI socket, or exited (reported, not an
/// error: the lab stays useful without agents), or [`AGENT_START_DEADLINE`] passed.
pub fn wait_agents(
    state: &StateDir,
    agents: &mut [(String, Child, std::path::PathBuf)],
) -> Vec<(String, Started)> {
    let mut outcome: Vec<Option<Started>> = agents.iter().map(|_| None).collect();
    sys::poll_until(AGENT_START_DEADLINE, || {
        for (i, (node, child, log)) in agents.iter_mut().enumerate() {
            if outcome[i].is_some() {
                continue;
            }
            if state.cni_socket(node).exists() {
                outcome[i] = Some(Started::Running(child.id()));
            } else if let Ok(Some(status)) = child.try_wait() {
                outcome[i] = Some(Started::Exited(format!(
                    "switchyard-agent exited during start ({status}); log {}:\n{}",
                    log.display(),
                    sys::tail(log, 5)
                )));
            }
        }
        outcome.iter().all(Option::is_some).then_some(())
    });
    agents
        .iter()
        .zip(outcome)
        .map(|((node, child, log), o)| {
            let o = o.unwrap_or_else(|| {
                Started::Exited(format!(
                    "switchyard-agent (pid {}) runs but did not create its CNI socket {} within {:?}; see its log {}",
                    child.id(),
                    state.cni_socket(node).display(),
                    AGENT_START_DEADLINE,
                    log.display()
                ))
            });
            (node.clone(), o)
        })
        .collect()
}

/// Starts `switchyard-proxy` in the node namespace.
pub fn start_proxy(
    state: &StateDir,
    node: &NodeInfo,
    program: &Path,
) -> Result<(Child, std::path::PathBuf), LabError> {
    spawn_in_node(state, node, program, &proxy_args(node), "proxy")
}

/// Starts the node's cluster DNS resolver (`switchyard-lab dns-server`, [`super::dns`]) on
/// UDP port 53 of the node's address.
pub fn start_dns(
    state: &StateDir,
    node: &NodeInfo,
    lab: &Path,
    api_url: &str,
) -> Result<(Child, std::path::PathBuf), LabError> {
    // On the node address, not 0.0.0.0: a UDP socket bound to any address answers from the
    // address of the route back (the pod gateway's), which conntrack cannot un-DNAT to the
    // Service address, and the pod's resolver drops it.
    let listen = format!("{}:53", node.address);
    let args: Vec<String> = ["dns-server", "--api-url", api_url, "--listen", &listen]
        .iter()
        .map(|s| s.to_string())
        .collect();
    spawn_in_node(state, node, lab, &args, "dns")
}

/// The node's conflist: the `switchyard` plugin with the node's agent socket, asking for pod
/// annotations as containerd passes them.
pub fn conflist(state: &StateDir, node: &str) -> serde_json::Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "switchyard",
            "agentSocket": state.cni_socket(node).display().to_string(),
            "logFile": state.node_dir(node).join("cni.log").display().to_string(),
            "logLevel": "info",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true}
        }]
    })
}

/// Writes the node's conflist and the shared plugin directory (a link to the `switchyard` binary).
pub fn write_cni_config(state: &StateDir, lab: &LabInfo, node: &NodeInfo) -> Result<(), LabError> {
    let dir = state.cni_conf_dir(&node.name);
    fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let text = serde_json::to_string_pretty(&conflist(state, &node.name))
        .map_err(|e| LabError::Other(e.to_string()))?;
    fs::write(state.conflist(&node.name), text + "\n")
        .map_err(|e| LabError::io("writing the conflist", e))?;
    let bin = state.cni_bin_dir();
    fs::create_dir_all(&bin).map_err(|e| LabError::io(format!("creating {}", bin.display()), e))?;
    let link = bin.join("switchyard");
    if let Some(cni) = &lab.binaries.cni
        && !link.exists()
    {
        std::os::unix::fs::symlink(cni, &link)
            .map_err(|e| LabError::io(format!("linking {}", link.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_config_is_exact() {
        let state = StateDir::new("/run/sl");
        let node = NodeInfo {
            name: "node1".into(),
            netns: "sy-node1".into(),
            address: "192.168.100.1".parse().unwrap(),
        };
        assert_eq!(
            agent_config_yaml(&state, &node, None),
            "# switchyard-agent configuration written by switchyard-lab\n\
             node-name: node1\n\
             kubeconfig: /run/sl/kubeconfig\n\
             ovsdb-endpoint: unix:/run/sl/nodes/node1/ovs/db.sock\n\
             ovs-rundir: /run/sl/nodes/node1/ovs\n\
             bridge: br-int\n\
             datapath-type: netdev\n\
             cni-socket: /run/sl/nodes/node1/cni.sock\n\
             listen-address: 127.0.0.1:9465\n\
             service-cidr: 10.96.0.0/16\n"
        );
        assert_eq!(
            agent_args(Path::new("/run/sl/nodes/node1/agent.yaml")),
            ["--config", "/run/sl/nodes/node1/agent.yaml"]
        );
    }

    #[test]
    fn conflist_names_the_node_socket() {
        let state = StateDir::new("/run/sl");
        let c = conflist(&state, "node2");
        assert_eq!(
            c["plugins"][0]["agentSocket"],
            "/run/sl/nodes/node2/cni.sock"
        );
        assert_eq!(c["cniVersion"], "1.1.0");
        assert_eq!(
            c["plugins"][0]["capabilities"]["io.kubernetes.cri.pod-annotations"],
            true
        );
    }
}
