//! Helpers for tests that need root and real network namespaces.
//!
//! These tests create network namespaces with `ip netns add` and veths inside
//! them; they never touch the interfaces of the namespace they run in. They
//! need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2/ethtool/ping. Without
//! them they FAIL, unless SWITCHYARD_SKIP_PRIVILEGED=1 is set, in which case
//! they print a skip line and pass.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Returns false (after printing a skip line) when privileged tests are
/// skipped on purpose; panics when they cannot run and were not skipped.
pub fn privileged(test: &str) -> bool {
    switchyard_ovs_harness::require_root_and(test, &["ip", "ethtool", "ping"])
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name: `sy<role>-<pid>-<n>`.
pub fn unique(role: &str) -> String {
    format!(
        "sy{role}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, returns its output; panics if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The setup of the pod interface tests: a "node" and a "pod" namespace
/// (deleted on drop), opened with the default policy, and a netlink socket
/// in the node's.
pub struct NodeAndPod {
    pub host: switchyard_agent::netns::Netlink,
    pub pod_ns: switchyard_agent::netns::Netns,
    pub node_ns: switchyard_agent::netns::Netns,
    pub pod: NetnsGuard,
    pub node: NetnsGuard,
}

impl NodeAndPod {
    pub async fn new() -> NodeAndPod {
        use switchyard_agent::netns::{Netlink, Netns, NetnsPolicy};
        let node = NetnsGuard::new("node");
        let pod = NetnsGuard::new("pod");
        let policy = NetnsPolicy::default();
        let node_ns = Netns::open(node.path(), &policy).unwrap();
        let pod_ns = Netns::open(pod.path(), &policy).unwrap();
        let host = Netlink::open_in(&node_ns).await.unwrap();
        NodeAndPod {
            host,
            pod_ns,
            node_ns,
            pod,
            node,
        }
    }
}

/// A named network namespace, deleted on drop (also on panic).
pub struct NetnsGuard {
    pub name: String,
}

impl NetnsGuard {
    pub fn new(role: &str) -> NetnsGuard {
        let name = unique(role);
        ok("ip", &["netns", "add", &name]);
        let guard = NetnsGuard { name };
        guard.ip(&["link", "set", "lo", "up"]);
        guard
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n <name> args...`, must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ok("ip", &all)
    }

    /// `ip netns exec <name> program args...`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Names of all links in the namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A file or symlink removed on drop.
pub struct PathGuard(pub PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed and reaped on drop (also on panic).
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
