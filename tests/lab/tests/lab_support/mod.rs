//! Helpers of the multi-node lab tests: a lab brought up with the real `switchyard-lab` binary,
//! unique names, removed on drop (also when the test panics).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use switchyard_lab::cluster::state::{Entry, LabInfo, StateDir};

mod diagnostics;
mod procs;
#[allow(unused_imports)]
pub use diagnostics::*;
#[allow(unused_imports)]
pub use procs::*;

/// The lab binary under test.
pub const LAB: &str = env!("CARGO_BIN_EXE_switchyard-lab");

/// Whether a root-only test can run here; panics with the reason unless
/// SWITCHYARD_SKIP_PRIVILEGED=1 (then prints a SKIP line and returns false).
pub fn privileged(test: &str) -> bool {
    if !switchyard_ovs_harness::require_privileges(test) {
        return false;
    }
    for tool in ["curl", "kubectl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "test {test} needs `{tool}` in PATH (scripts/install-deps.sh)"
        );
    }
    true
}

/// A sibling binary of the lab binary (target/debug/NAME); panics with how to build it.
pub fn sibling_binary(name: &str, package: &str) -> PathBuf {
    let p = Path::new(LAB).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (cargo test --workspace does)",
        p.display()
    );
    p
}

fn unique() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A free /24 of 10.251.0.0/16 for the underlay (no route of this machine in it).
fn free_underlay(seed: u32) -> String {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for i in 0..250 {
        let x = (seed + i) % 250 + 1;
        let net = format!("10.251.{x}.");
        if !routes.contains(&net) {
            return format!("10.251.{x}.0/24");
        }
    }
    panic!("no free /24 in 10.251.0.0/16 for a test lab underlay");
}

/// A lab instance; `down` on drop.
pub struct Lab {
    pub name: String,
    pub state: StateDir,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lab({})", self.name)
    }
}

/// Output as text, panicking with stdout/stderr when the command failed.
pub fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    /// Unique names and a fresh state directory, nothing started.
    pub fn prepare() -> Lab {
        let n = unique();
        let pid = std::process::id();
        let name = format!("t{}{n}", pid % 100_000);
        let dir = tempfile::Builder::new().prefix("sylab").tempdir().unwrap();
        Lab {
            name,
            state: StateDir::new(dir.path().join("s")),
            _dir: dir,
        }
    }

    /// The `up` command for this lab (nodes, plus extra flags).
    pub fn up_command(&self, nodes: usize, extra: &[&str]) -> Command {
        self.command("up", nodes, extra)
    }

    /// `switchyard-lab SUBCOMMAND` with this lab's names, state dir and a free underlay.
    pub fn command(&self, subcommand: &str, nodes: usize, extra: &[&str]) -> Command {
        let seed = std::process::id()
            .wrapping_mul(7)
            .wrapping_add(unique() * 13);
        let mut cmd = Command::new(LAB);
        cmd.arg(subcommand)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--state-dir")
            .arg(self.state.root())
            .arg("--name")
            .arg(&self.name)
            .arg("--underlay-cidr")
            .arg(free_underlay(seed))
            .args(extra);
        cmd
    }

    /// Brings up a lab and returns it.
    pub fn up(nodes: usize, extra: &[&str]) -> Lab {
        let lab = Lab::prepare();
        let out = lab.up_command(nodes, extra).output().unwrap();
        check("switchyard-lab up", out);
        lab
    }

    /// [`Lab::up`] with the built CNI plugin, agent and proxy (`--no-proxy` in `extra`: no
    /// proxy); prints how long it took and asserts every node's agent serves its CNI socket.
    pub fn up_with_daemons(nodes: usize, extra: &[&str]) -> Lab {
        sibling_binary("switchyard", "switchyard-cni");
        sibling_binary("switchyard-agent", "switchyard-agent");
        if !extra.contains(&"--no-proxy") {
            sibling_binary("switchyard-proxy", "switchyard-proxy");
        }
        let started = Instant::now();
        let lab = Lab::up(nodes, extra);
        eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
        for n in &lab.info().nodes {
            assert!(
                lab.state.cni_socket(&n.name).exists(),
                "the agent on {} did not start{}",
                n.name,
                diagnostics(&lab)
            );
        }
        lab
    }

    pub fn info(&self) -> LabInfo {
        self.state.load_info().unwrap()
    }

    /// kubectl against the lab.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        Command::new(program)
            .arg("--kubeconfig")
            .arg(self.state.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }

    /// kubectl that must succeed.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        check(&format!("kubectl {}", args.join(" ")), self.kubectl(args))
    }

    /// Lets the pods of `namespace` choose their own segment and VLAN, as the cluster admin
    /// does (`switchyard.io/pod-placement: allow`; by default the namespace decides).
    pub fn allow_pod_placement(&self, namespace: &str) {
        self.kubectl_ok(&[
            "annotate",
            "--overwrite",
            "namespace",
            namespace,
            "switchyard.io/pod-placement=allow",
        ]);
    }

    /// kubectl apply of a manifest text.
    pub fn apply(&self, manifest: &str) {
        let path = self._dir.path().join(format!("m{}.yaml", unique()));
        std::fs::write(&path, manifest).unwrap();
        self.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// Pids recorded in the journal.
    pub fn recorded_pids(&self) -> Vec<(u32, String)> {
        self.state
            .journal()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Pid { pid, what, .. } => Some((pid, what)),
                _ => None,
            })
            .collect()
    }

    /// Namespaces of this lab that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// Runs `switchyard-lab down`.
    pub fn down(&self) -> Output {
        Command::new(LAB)
            .arg("down")
            .arg("--state-dir")
            .arg(self.state.root())
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if switchyard_lab::cluster::up::has_lab(&self.state) {
            let out = self.down();
            if !out.status.success() {
                eprintln!(
                    "cleanup of lab {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Whether a process exists (not a zombie).
pub fn alive(pid: u32) -> bool {
    switchyard_lab::cluster::sys::start_time(pid).is_some()
}

/// Whether an interface exists in the host namespace.
pub fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Polls `check` until it returns Some, panicking with `what` after `deadline`.
pub fn eventually<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pod's JSON from kubectl (None while it does not exist), in the default namespace.
pub fn pod_json(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    pod_json_in(lab, "default", name)
}

/// A pod's JSON from kubectl (None while it does not exist).
pub fn pod_json_in(lab: &Lab, namespace: &str, name: &str) -> Option<serde_json::Value> {
    let out = lab.kubectl(&["-n", namespace, "get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the pod (default namespace) is Running and Ready with an IP; returns the IP.
pub fn wait_running(lab: &Lab, name: &str, deadline: Duration) -> String {
    wait_running_in(lab, "default", name, deadline)
}

/// Waits until the pod is Running and Ready with an IP; returns the IP.
pub fn wait_running_in(lab: &Lab, namespace: &str, name: &str, deadline: Duration) -> String {
    eventually(
        &format!("pod {namespace}/{name} Running and Ready"),
        deadline,
        || {
            let p = pod_json_in(lab, namespace, name)?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (p["status"]["phase"] == "Running" && ready)
                .then(|| p["status"]["podIP"].as_str().map(str::to_string))
                .flatten()
        },
    )
}

/// Waits until the Service has a ClusterIP; returns it.
pub fn cluster_ip(lab: &Lab, namespace: &str, service: &str) -> String {
    eventually(
        &format!("ClusterIP of {namespace}/{service}"),
        Duration::from_secs(10),
        || {
            let ip = lab
                .kubectl_ok(&[
                    "-n",
                    namespace,
                    "get",
                    "service",
                    service,
                    "-o",
                    "jsonpath={.spec.clusterIP}",
                ])
                .trim()
                .to_string();
            (!ip.is_empty() && ip != "None").then_some(ip)
        },
    )
}

/// `ip netns exec NETNS ARGS...` output (success or not).
pub fn in_netns(netns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .unwrap()
}

/// `switchyard-lab echo-client` from `netns`: the answer of each request (`-` for none).
pub fn echo_client(netns: &str, proto: &str, target: &str, count: u32) -> Vec<String> {
    let out = in_netns(
        netns,
        &[
            LAB,
            "echo-client",
            &format!("--{proto}"),
            target,
            "--count",
            &count.to_string(),
            "--timeout",
            "2",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Writes `ip` (with `ipMode` if given) as `service`'s only LoadBalancer ingress through
/// `/status`, as a LoadBalancer controller would.
pub fn set_lb_ingress(lab: &Lab, service: &str, ip: &str, ip_mode: Option<&str>) {
    let mode = ip_mode
        .map(|m| format!(r#","ipMode":"{m}""#))
        .unwrap_or_default();
    lab.kubectl_ok(&[
        "patch",
        "service",
        service,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ip}"{mode}}}]}}}}}}"#),
    ]);
}

/// Routes `ip` in the lab's fabric to `via` (a node's address), and from the internet
/// namespace to the fabric (198.51.100.1), as an upstream network would.
pub fn route_from_internet(fabric_netns: &str, internet_netns: &str, ip: &str, via: &str) {
    check(
        "route in the fabric",
        in_netns(fabric_netns, &["ip", "route", "replace", ip, "via", via]),
    );
    check(
        "route in the internet",
        in_netns(
            internet_netns,
            &["ip", "route", "replace", ip, "via", "198.51.100.1"],
        ),
    );
}
