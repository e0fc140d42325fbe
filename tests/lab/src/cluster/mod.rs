//! The multi-node lab: network-namespace nodes, each with its own Open vSwitch, agent and
//! proxy, an underlay joining them, the lab API server, and a runtime driver for pods.
//!
//! ```text
//!   host netns                      <lab>-underlay netns              <lab>-node1 netns
//!   API server on <lab>-host  ----  host ] br0 [ node1  ----  eth0 in OVS br-ul, 192.168.100.1
//!   192.168.100.254  (veth)               (Linux bridge)   (veth)     ovsdb-server, ovs-vswitchd,
//!   runtime driver                                     [ node2 ---    switchyard-agent, -proxy
//!                                                                     pod netns <lab>-pod-NS-NAME
//! ```
//!
//! Node namespaces cannot reach the host's loopback, so the API server listens on the host end
//! of a veth into the underlay bridge (`<lab>-host`, the underlay's last host address); the
//! same URL works from the host (kubectl) and from every node (agent, proxy). Nothing else of
//! the lab is in the host namespace.
//!
//! [`up::up`] records everything it makes in the state directory before making it
//! ([`state`]); [`up::down`] removes it by pid and name, also after a crash of `up`.

pub mod cni_exec;
pub mod control_plane;
pub mod demo;
pub mod demo_lb;
pub mod demo_outside;
pub mod dns;
pub mod echo;
pub mod fabric;
pub mod node;
pub mod ops;
pub mod pods;
pub mod runtime;
pub mod state;
pub mod status;
pub mod sys;
pub mod system;
pub mod up;

/// A lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// Command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// The API server refused or failed a request.
    #[error("API server: {0}")]
    Api(String),
    /// Anything else, with a message saying what to do.
    #[error("{0}")]
    Other(String),
}

impl LabError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<kube::Error> for LabError {
    fn from(e: kube::Error) -> Self {
        LabError::Api(e.to_string())
    }
}
