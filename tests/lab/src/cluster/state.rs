//! The lab's state directory.
//!
//! `lab.json` describes the lab (names, addresses, binaries); `journal` lists every network
//! namespace, host interface and process the lab made, one per line, appended *before* a
//! namespace or interface is created and right after a process is spawned. `down` reads the
//! journal, so it removes everything by name and pid even when `up` crashed half-way.
//!
//! ```text
//! netns sy-underlay
//! link sy-host
//! pid 4242 123456 apiserver
//! ```
//!
//! A pid line carries the process start time (`/proc/PID/stat` field 22) so that a pid reused
//! by an unrelated process after a crash is never signalled.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::LabError;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/switchyard-lab";

/// Where a node's underlay address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayMode {
    /// On the tap of an OVS bridge `br-ul` (netdev) whose port is `eth0`, with a fixed MAC:
    /// where OVS's userspace tunnels need their endpoint (lab notes).
    #[default]
    Ovs,
    /// Directly on `eth0`.
    Veth,
}

impl UnderlayMode {
    /// The node interface holding the underlay address.
    pub fn interface(self) -> &'static str {
        match self {
            UnderlayMode::Ovs => "br-ul",
            UnderlayMode::Veth => "eth0",
        }
    }
}

/// The fixed MAC of an underlay address: `02:00:` and the address bytes.
pub fn underlay_mac(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// One node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Kubernetes Node name (`node1`, ...).
    pub name: String,
    /// Network namespace (`<lab>-node1`).
    pub netns: String,
    /// Underlay address (Node InternalIP), on `br-ul` (or `eth0`) in the node namespace.
    pub address: Ipv4Addr,
}

/// Which external binaries the lab runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    /// `switchyard-lab` itself (API server, runtime driver and echo server subcommands).
    pub lab: PathBuf,
    /// The `switchyard` CNI plugin.
    pub cni: Option<PathBuf>,
    /// `switchyard-agent`, when it runs on the nodes.
    pub agent: Option<PathBuf>,
    /// `switchyard-proxy`, when it runs on the nodes.
    pub proxy: Option<PathBuf>,
    /// `switchyard-cpvip`, for the control planes (`up --control-planes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpvip: Option<PathBuf>,
}

/// `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// Prefix of every namespace and host interface name.
    pub name: String,
    /// Underlay subnet joining the host and the nodes.
    pub underlay: Ipv4Net,
    /// Address of the host end of the underlay (the API server listens there).
    pub host_address: Ipv4Addr,
    /// API server URL, once it runs.
    pub api_url: Option<String>,
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Binaries.
    pub binaries: Binaries,
    /// Where node underlay addresses live.
    #[serde(default)]
    pub underlay_mode: UnderlayMode,
    /// The fabric and internet namespaces (`up --fabric`).
    #[serde(default)]
    pub fabric: Option<super::fabric::FabricInfo>,
    /// The control planes of the control-plane VIP (`up --control-planes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_planes: Option<super::control_plane::ControlPlaneInfo>,
}

impl LabInfo {
    /// The underlay namespace.
    pub fn underlay_netns(&self) -> String {
        format!("{}-underlay", self.name)
    }

    /// The host end of the underlay (an interface in the caller's namespace).
    pub fn host_link(&self) -> String {
        format!("{}-host", self.name)
    }

    /// Network namespace of a pod.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}-pod-{namespace}-{pod}", self.name)
    }

    /// A node by Kubernetes name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A named network namespace.
    Netns(String),
    /// An interface in the host namespace.
    Link(String),
    /// A process: pid, start time, what it is.
    Pid {
        /// Process id.
        pid: u32,
        /// Start time (ticks since boot), if it could be read.
        start: Option<u64>,
        /// Description.
        what: String,
    },
}

impl Entry {
    /// The journal line (without newline).
    pub fn to_line(&self) -> String {
        match self {
            Entry::Netns(n) => format!("netns {n}"),
            Entry::Link(l) => format!("link {l}"),
            Entry::Pid { pid, start, what } => {
                format!("pid {pid} {} {what}", start.map_or(0, |s| s))
            }
        }
    }

    /// Parses a journal line; `None` for anything else (a torn last line after a crash).
    pub fn parse(line: &str) -> Option<Entry> {
        let mut parts = line.splitn(2, ' ');
        let kind = parts.next()?;
        let rest = parts.next()?.trim();
        if rest.is_empty() {
            return None;
        }
        match kind {
            "netns" => Some(Entry::Netns(rest.to_string())),
            "link" => Some(Entry::Link(rest.to_string())),
            "pid" => {
                let mut f = rest.splitn(3, ' ');
                let pid = f.next()?.parse().ok()?;
                let start: u64 = f.next()?.parse().ok()?;
                Some(Entry::Pid {
                    pid,
                    start: (start != 0).then_some(start),
                    what: f.next().unwrap_or("").to_string(),
                })
            }
            _ => None,
        }
    }
}

/// The state directory of one lab.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `lab.json`.
    pub fn info_path(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    /// The journal.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// The kubeconfig of the lab API server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    /// Directory of one node.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }

    /// OVS run/db/log directory of a node (`OVS_RUNDIR`).
    pub fn ovs_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ovs")
    }

    /// OVSDB socket of a node.
    pub fn ovsdb_socket(&self, node: &str) -> PathBuf {
        self.ovs_dir(node).join("db.sock")
    }

    /// The agent's CNI socket on a node (the conflist's `agentSocket`).
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni.sock")
    }

    /// The node's CNI configuration directory (its `/etc/cni/net.d`).
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("net.d")
    }

    /// The node's conflist.
    pub fn conflist(&self, node: &str) -> PathBuf {
        self.cni_conf_dir(node).join("10-switchyard.conflist")
    }

    /// The node's libcni cache directory (its `/var/lib/cni`).
    pub fn cni_cache_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni-cache")
    }

    /// Directory searched for CNI plugins (`CNI_PATH` entry holding a link to `switchyard`).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni-bin")
    }

    /// Directory of one pod (logs, ready file).
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root.join("pods").join(format!("{namespace}_{pod}"))
    }

    /// Written by the runtime driver once it watches pods.
    pub fn runtime_ready(&self) -> PathBuf {
        self.root.join("runtime.ready")
    }

    /// Reads `lab.json`.
    pub fn load_info(&self) -> Result<LabInfo, LabError> {
        let path = self.info_path();
        let text = fs::read_to_string(&path).map_err(|e| {
            LabError::io(
                format!(
                    "reading {} (is a lab up with this --state-dir?)",
                    path.display()
                ),
                e,
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Other(format!("{} is not valid: {e}", path.display())))
    }

    /// Writes `lab.json` (atomically).
    pub fn save_info(&self, info: &LabInfo) -> Result<(), LabError> {
        let path = self.info_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(info)
            .map_err(|e| LabError::Other(format!("encoding lab.json: {e}")))?;
        fs::write(&tmp, text).map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// Appends an entry to the journal (flushed before returning).
    pub fn record(&self, entry: &Entry) -> Result<(), LabError> {
        let path = self.journal_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
        f.write_all(format!("{}\n", entry.to_line()).as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// Records a spawned process by pid and start time.
    pub fn record_pid(&self, pid: u32, what: &str) -> Result<(), LabError> {
        self.record(&Entry::Pid {
            pid,
            start: super::sys::start_time(pid),
            what: what.to_string(),
        })
    }

    /// Every journal entry, in order.
    pub fn journal(&self) -> Vec<Entry> {
        fs::read_to_string(self.journal_path())
            .unwrap_or_default()
            .lines()
            .filter_map(Entry::parse)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_round_trip() {
        for e in [
            Entry::Netns("sy-node1".into()),
            Entry::Link("sy-host".into()),
            Entry::Pid {
                pid: 42,
                start: Some(7),
                what: "agent node1".into(),
            },
            Entry::Pid {
                pid: 43,
                start: None,
                what: "x".into(),
            },
        ] {
            assert_eq!(Entry::parse(&e.to_line()), Some(e.clone()));
        }
        assert_eq!(
            Entry::Pid {
                pid: 42,
                start: Some(7),
                what: "agent node1".into()
            }
            .to_line(),
            "pid 42 7 agent node1"
        );
    }

    #[test]
    fn torn_and_unknown_lines_are_ignored() {
        for line in ["", "netns", "netns ", "pid 12", "pid x 1 a", "bogus a"] {
            assert_eq!(Entry::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn journal_is_appended_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        s.record(&Entry::Netns("a".into())).unwrap();
        s.record(&Entry::Link("b".into())).unwrap();
        assert_eq!(
            s.journal(),
            vec![Entry::Netns("a".into()), Entry::Link("b".into())]
        );
    }
}
