//! Operations on a running lab, for tests: kill a node daemon and start it again the way `up`
//! starts it ([`restart`]), and remove a node ([`remove_node`]). Every process started here is
//! recorded in the journal first, so `down` still removes everything.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};

use super::LabError;
use super::state::{LabInfo, NodeInfo, StateDir, UnderlayMode};
use super::{fabric, node, sys, up};

/// How long a restarted daemon gets to be ready again.
pub const RESTART_DEADLINE: Duration = Duration::from_secs(30);

/// A daemon of a lab node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `switchyard-agent`; ready when its CNI socket exists.
    Agent,
    /// `switchyard-proxy`; ready when it has installed a full sync.
    Proxy,
    /// `ovs-vswitchd`; ready when the node's underlay is back on `br-ul`.
    Vswitchd,
    /// `ovsdb-server` (the node's database, kept on disk); ready when it serves.
    Ovsdb,
}

impl Daemon {
    /// Name of the daemon as the journal records it (`<name> <node>`).
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Agent => "agent",
            Daemon::Proxy => "proxy",
            Daemon::Vswitchd => "ovs-vswitchd",
            Daemon::Ovsdb => "ovsdb-server",
        }
    }
}

/// The log line the proxy writes after each full sync.
const PROXY_SYNCED: &str = "full sync installed";

fn not_found(what: &str) -> LabError {
    LabError::Other(format!("no running {what} in the lab"))
}

fn node_of<'a>(info: &'a LabInfo, name: &str) -> Result<&'a NodeInfo, LabError> {
    info.node(name)
        .ok_or_else(|| LabError::Other(format!("the lab has no node {name:?}")))
}

/// The pid of the node's running daemon: the newest journal entry that is still that process
/// (`ovs-vswitchd` from its pid file).
pub fn daemon_pid(state: &StateDir, node: &str, daemon: Daemon) -> Option<u32> {
    if daemon == Daemon::Vswitchd {
        let pid: u32 = std::fs::read_to_string(state.ovs_dir(node).join("ovs-vswitchd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        return sys::start_time(pid).map(|_| pid);
    }
    let what = format!("{} {node}", daemon.name());
    state.journal().into_iter().rev().find_map(|e| match e {
        super::state::Entry::Pid {
            pid,
            start,
            what: w,
        } if w == what && sys::is_same_process(pid, start) => Some(pid),
        _ => None,
    })
}

/// SIGKILLs the node's daemon and waits until it is gone; returns its pid.
pub fn kill_daemon(state: &StateDir, node: &str, daemon: Daemon) -> Result<u32, LabError> {
    let what = format!("{} {node}", daemon.name());
    let pid = daemon_pid(state, node, daemon).ok_or_else(|| not_found(&what))?;
    let start = sys::start_time(pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(
            i32::try_from(pid).map_err(|_| LabError::Other(format!("pid {pid}")))?,
        ),
        nix::sys::signal::Signal::SIGKILL,
    );
    // Gone, and so are its sockets: a restart binds the same ports.
    sys::poll_until(Duration::from_secs(10), || {
        (!sys::is_same_process(pid, start) && sys::all_threads_exited(pid)).then_some(())
    })
    .ok_or_else(|| LabError::Other(format!("{what} (pid {pid}) survived SIGKILL")))?;
    Ok(pid)
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// Starts the node's daemon as `up` does (recorded in the journal) and waits until it is ready
/// ([`Daemon`] says what ready means). The daemon must not be running.
pub fn start_daemon(state: &StateDir, node_name: &str, daemon: Daemon) -> Result<(), LabError> {
    let info = state.load_info()?;
    let node = node_of(&info, node_name)?;
    match daemon {
        Daemon::Agent => {
            let program =
                info.binaries.agent.clone().ok_or_else(|| {
                    LabError::Other("the lab has no switchyard-agent binary".into())
                })?;
            let _ = std::fs::remove_file(state.cni_socket(node_name));
            let (mut child, log) = node::start_agent(state, node, &program, info.fabric.as_ref())?;
            sys::poll_until(RESTART_DEADLINE, || {
                if state.cni_socket(node_name).exists() {
                    return Some(Ok(()));
                }
                match child.try_wait() {
                    Ok(Some(status)) => Some(Err(LabError::Other(format!(
                        "switchyard-agent on {node_name} exited ({status}):\n{}",
                        sys::tail(&log, 10)
                    )))),
                    _ => None,
                }
            })
            .unwrap_or_else(|| {
                Err(LabError::Other(format!(
                    "switchyard-agent on {node_name} did not serve within {RESTART_DEADLINE:?}"
                )))
            })
        }
        Daemon::Proxy => {
            let program =
                info.binaries.proxy.clone().ok_or_else(|| {
                    LabError::Other("the lab has no switchyard-proxy binary".into())
                })?;
            let log = state.node_dir(node_name).join("proxy.log");
            let before = count_in(&log, PROXY_SYNCED);
            let (mut child, log) = node::start_proxy(state, node, &program)?;
            sys::poll_until(RESTART_DEADLINE, || {
                if count_in(&log, PROXY_SYNCED) > before {
                    return Some(Ok(()));
                }
                match child.try_wait() {
                    Ok(Some(status)) => Some(Err(LabError::Other(format!(
                        "switchyard-proxy on {node_name} exited ({status}):\n{}",
                        sys::tail(&log, 10)
                    )))),
                    _ => None,
                }
            })
            .unwrap_or_else(|| {
                Err(LabError::Other(format!(
                    "switchyard-proxy on {node_name} did not sync within {RESTART_DEADLINE:?}"
                )))
            })
        }
        Daemon::Vswitchd => start_vswitchd(state, &info, node),
        Daemon::Ovsdb => node::start_ovsdb_server(state, node).map(|_| ()),
    }
}

/// SIGKILLs the node's daemon and starts it again ([`kill_daemon`], [`start_daemon`]).
pub fn restart(state: &StateDir, node: &str, daemon: Daemon) -> Result<(), LabError> {
    kill_daemon(state, node, daemon)?;
    start_daemon(state, node, daemon)
}

/// Starts `ovs-vswitchd` again against the node's running `ovsdb-server`. With the userspace
/// datapath the taps of internal ports go with the old process, so the node's underlay
/// address on `br-ul`, its MTU, fixed neighbours, the default route to the fabric and the
/// tunnel neighbour cache are put back (the lab's part; pod ports, flows and the gateway are
/// the agent's and the proxy's to repair).
fn start_vswitchd(state: &StateDir, info: &LabInfo, node: &NodeInfo) -> Result<(), LabError> {
    let dir = state.ovs_dir(&node.name);
    let db = format!("unix:{}", state.ovsdb_socket(&node.name).display());
    let mut cmd = node::ovs_command_in(state, node, "ovs-vswitchd");
    cmd.arg(&db)
        .args(["--pidfile", "--detach", "--no-chdir", "--log-file"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::run(&mut cmd)?;
    let pid: u32 = std::fs::read_to_string(dir.join("ovs-vswitchd.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LabError::Other(format!("ovs-vswitchd of {} has no pid", node.name)))?;
    state.record_pid(pid, &format!("ovs-vswitchd {}", node.name))?;
    if info.underlay_mode != UnderlayMode::Ovs {
        return Ok(());
    }
    sys::poll_until(Duration::from_secs(10), || {
        sys::ip_in(&node.netns, &["link", "show", "br-ul"]).ok()
    })
    .ok_or_else(|| LabError::Other(format!("br-ul did not come back in {}", node.netns)))?;
    let addr = format!("{}/{}", node.address, info.underlay.prefix_len());
    sys::ip_in(&node.netns, &["addr", "replace", &addr, "dev", "br-ul"])?;
    sys::ip_in(
        &node.netns,
        &["link", "set", "br-ul", "mtu", up::UNDERLAY_MTU, "up"],
    )?;
    node::tx_checksum_off(Some(&node.netns), "br-ul")?;
    let peers = up::underlay_peers(info);
    up::set_underlay_neighbours(node, "br-ul", &peers)?;
    if info.fabric.is_some()
        && let Some(via) = fabric::underlay_address(info.underlay)
    {
        sys::ip_in(
            &node.netns,
            &["route", "replace", "default", "via", &via.to_string()],
        )?;
    }
    node::set_tunnel_neighbours(state, node, &peers)
}

/// Removes a node: deletes its Node object, stops every process in its namespace and deletes
/// the namespace (its underlay and trunk links go with it). Pods bound to it stay in the API
/// as they would on a real cluster until something deletes them.
pub fn remove_node(state: &StateDir, node_name: &str) -> Result<(), LabError> {
    let info = state.load_info()?;
    let node = node_of(&info, node_name)?;
    let url = info
        .api_url
        .clone()
        .ok_or_else(|| LabError::Other("the lab has no API server".into()))?;
    let name = node_name.to_string();
    up::block_on(async move {
        let nodes: Api<Node> = Api::all(up::client(&url)?);
        match nodes.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(LabError::from(e)),
        }
    })??;
    for pid in sys::netns_pids(&node.netns) {
        sys::stop_pid(pid, sys::start_time(pid));
    }
    if sys::netns_exists(&node.netns) {
        sys::run(Command::new("ip").args(["netns", "del", &node.netns]))?;
    }
    Ok(())
}
