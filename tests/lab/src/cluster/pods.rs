//! The lab's side of `kubectl exec` and `kubectl logs` ([`crate::apiserver::pods`]): the API
//! server (started by `up` with `--lab-state-dir`) runs an exec'd command in the pod's network
//! namespace (`ip netns exec <lab>-pod-NS-NAME CMD`; a `hostNetwork` pod's is its node's) and
//! serves a pod's log from the file its process writes (`<state>/pods/NS_NAME/process.log`).
//!
//! The lab reads `lab.json` at each request, so it follows nodes added later.

use std::path::PathBuf;

use serde_json::Value;

use super::state::StateDir;
use super::sys;
use super::system::{DAEMON_LABEL, DAEMONS};
use crate::apiserver::pods::PodRuntime;

/// The netns lab as the API server's pod runtime.
#[derive(Debug, Clone)]
pub struct LabPods {
    state: StateDir,
}

impl LabPods {
    /// The lab whose state directory is `state`.
    pub fn new(state: StateDir) -> LabPods {
        LabPods { state }
    }
}

fn meta<'a>(pod: &'a Value, key: &str) -> &'a str {
    pod["metadata"][key].as_str().unwrap_or_default()
}

impl PodRuntime for LabPods {
    fn exec_command(
        &self,
        pod: &Value,
        _container: &str,
        argv: &[String],
    ) -> Result<std::process::Command, String> {
        let (ns, name) = (meta(pod, "namespace"), meta(pod, "name"));
        let info = self.state.load_info().map_err(|e| e.to_string())?;
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let node = info
            .node(node_name)
            .ok_or_else(|| format!("pod {ns}/{name} is on {node_name:?}, not a lab node"))?;
        let host_network = pod
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let netns = if host_network {
            node.netns.clone()
        } else {
            info.pod_netns(ns, name)
        };
        if !sys::netns_exists(&netns) {
            return Err(format!(
                "pod {ns}/{name} has no network namespace {netns} (it is not running)"
            ));
        }
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| "no command given".to_string())?;
        let mut cmd = sys::netns_exec(&netns, program);
        cmd.args(args);
        Ok(cmd)
    }

    fn log_file(&self, pod: &Value, _container: &str) -> Result<PathBuf, String> {
        let (ns, name) = (meta(pod, "namespace"), meta(pod, "name"));
        // A system pod stands for a node daemon: its log ([`super::system`]).
        let daemon = pod["metadata"]["labels"][DAEMON_LABEL].as_str();
        let host_network = pod
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(d) = daemon.filter(|d| host_network && DAEMONS.contains(d)) {
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Ok(self.state.node_dir(node).join(format!("{d}.log")));
        }
        Ok(self.state.pod_dir(ns, name).join("process.log"))
    }
}
