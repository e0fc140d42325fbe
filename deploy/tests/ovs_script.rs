//! deploy/ovs.sh (the bundled `ovs` container's entry point) run for real
//! against a private Open vSwitch: it starts ovsdb-server and ovs-vswitchd,
//! reports health, and across a stop/start keeps the bridge's flows and
//! groups (saved on SIGTERM, restored under flow-restore-wait). Userspace
//! datapath, in a network namespace made for the test; needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard_ovs_harness::{Netns, require_privileges};

const DEADLINE: Duration = Duration::from_secs(30);

/// A private OVS managed by the script: directories, namespace, process.
struct ScriptOvs {
    dir: tempfile::TempDir,
    netns: Netns,
    child: Option<Child>,
}

impl ScriptOvs {
    fn new() -> ScriptOvs {
        let dir = tempfile::Builder::new()
            .prefix("sy-ovs-script-")
            .tempdir()
            .unwrap();
        for sub in ["run", "db", "log", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        ScriptOvs {
            dir,
            netns: Netns::new("sy-ovsscript").expect("creating a network namespace"),
            child: None,
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn with_env(&self, mut cmd: Command) -> Command {
        cmd.env("OVS_RUNDIR", self.path("run"))
            .env("OVS_DBDIR", self.path("db"))
            .env("OVS_LOGDIR", self.path("log"))
            .env("SWITCHYARD_STATE_DIR", self.path("state"));
        cmd
    }

    fn script(&self) -> PathBuf {
        common::repo_root().join("deploy/ovs.sh")
    }

    /// `ovs.sh run` in the namespace, its stderr to log/script.log.
    fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`ScriptOvs::start`] with extra environment variables.
    fn start_with(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("log/script.log"))
            .unwrap();
        let mut cmd = self.with_env(self.netns.command(self.script().to_str().unwrap()));
        cmd.arg("run")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("starting deploy/ovs.sh run"));
        self.poll("both daemons healthy", || self.health());
    }

    fn health(&self) -> bool {
        let mut cmd = self.with_env(Command::new(self.script()));
        cmd.arg("health")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn ready(&self) -> bool {
        let mut cmd = self.with_env(Command::new(self.script()));
        cmd.arg("ready")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM to the script (`ip netns exec` execs in place); its exit status.
    fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "ovs.sh did not stop: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn poll(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; script log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log/script.log")).unwrap_or_default()
    }

    fn tool(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.with_env(Command::new(program));
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ofctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-O", "OpenFlow15"];
        all.extend_from_slice(args);
        String::from_utf8(self.tool("ovs-ofctl", &all).stdout).unwrap()
    }

    /// Flows and groups of br-int, sorted, without statistics.
    fn snapshot(&self) -> (Vec<String>, Vec<String>) {
        let lines = |text: String| {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| !l.contains(" reply (") && !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .collect();
            v.sort();
            v
        };
        (
            lines(self.ofctl(&["dump-flows", "--no-stats", "br-int"])),
            lines(self.ofctl(&["dump-groups", "br-int"])),
        )
    }

    fn other_config(&self) -> String {
        let out = self.tool(
            "ovs-vsctl",
            &["--no-wait", "get", "Open_vSwitch", ".", "other_config"],
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for ScriptOvs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < DEADLINE {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever daemon is left, by its pid file.
        for name in ["ovs-vswitchd", "ovsdb-server"] {
            let pidfile = self.path("run").join(format!("{name}.pid"));
            if let Ok(pid) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn gone(pidfile: &Path) -> bool {
    match std::fs::read_to_string(pidfile) {
        Ok(pid) => pid
            .trim()
            .parse::<i32>()
            .is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_err()),
        Err(_) => true,
    }
}

#[test]
fn ovs_container_restart_keeps_flows_and_groups() {
    if !require_privileges("ovs_container_restart_keeps_flows_and_groups") {
        return;
    }
    let mut ovs = ScriptOvs::new();
    ovs.start();
    ovs.tool(
        "ovs-vsctl",
        &[
            "add-br",
            "br-int",
            "--",
            "set",
            "Bridge",
            "br-int",
            "datapath_type=netdev",
            "fail_mode=secure",
            "protocols=OpenFlow10,OpenFlow13,OpenFlow15",
        ],
    );
    let mgmt = ovs.path("run/br-int.mgmt");
    ovs.poll("br-int.mgmt", || mgmt.exists());
    // Flows and a group like the agent's and the proxy's (cookies, ct, nat).
    ovs.ofctl(&[
        "add-group",
        "br-int",
        "group_id=7,type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst),\
         bucket=bucket_id:0,actions=ct(commit,zone=65520,nat(dst=10.244.0.5:8080),table=35),\
         bucket=bucket_id:1,actions=ct(commit,zone=65520,nat(dst=10.244.0.6:8080),table=35)",
    ]);
    for flow in [
        "cookie=0x5359010100000000,table=20,priority=100,ip,actions=ct(zone=65520,nat,table=21)",
        "cookie=0x5359020100000007,table=31,priority=200,tcp,nw_dst=10.96.0.10,tp_dst=80,actions=group:7",
        "cookie=0x5359010100000010,table=0,priority=200,in_port=16,actions=load:0x3->NXM_NX_REG0[0..3],goto_table:10",
        "cookie=0x5359010100000000,table=70,priority=0,actions=drop",
    ] {
        ovs.ofctl(&["add-flow", "br-int", flow]);
    }
    let before = ovs.snapshot();
    assert_eq!(before.0.len(), 4, "{:?}", before.0);
    assert_eq!(before.1.len(), 1, "{:?}", before.1);

    assert_eq!(ovs.stop(), 0, "ovs.sh exits 0 on SIGTERM: {}", ovs.log());
    assert!(!ovs.health(), "daemons stopped");
    assert!(gone(&ovs.path("run/ovs-vswitchd.pid")) && gone(&ovs.path("run/ovsdb-server.pid")));
    let saved = ovs.path("state/saved-flows/br-int.flows");
    let text = std::fs::read_to_string(&saved).expect("flows saved on stop");
    assert!(
        text.contains("group:7") && !text.contains("reply"),
        "{text}"
    );
    assert!(ovs.path("state/saved-flows/br-int.groups").is_file());

    ovs.start();
    // The restore ends by clearing flow-restore-wait and the saved files;
    // only then is the container ready (its startup probe).
    ovs.poll("ready", || ovs.ready());
    assert!(!ovs.other_config().contains("flow-restore-wait"));
    assert!(!saved.exists());
    assert!(
        ovs.log().contains("restored 4 flows of br-int"),
        "{}",
        ovs.log()
    );
    assert_eq!(ovs.snapshot(), before, "flows and groups after the restart");

    // Not ready while a restore is pending.
    ovs.tool(
        "ovs-vsctl",
        &[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:flow-restore-wait=true",
        ],
    );
    assert!(ovs.health() && !ovs.ready());

    // A restart without saved flows (the container was killed) starts clean,
    // and clears a flow-restore-wait left behind.
    assert_eq!(ovs.stop(), 0);
    std::fs::remove_dir_all(ovs.path("state/saved-flows")).unwrap();
    ovs.start();
    ovs.poll("ready", || ovs.ready());
    assert!(!ovs.other_config().contains("flow-restore-wait"));
    assert_eq!(
        ovs.snapshot().0.len(),
        0,
        "nothing restored without saved flows"
    );
}

#[test]
fn ovs_container_refuses_a_node_that_runs_its_own_ovs() {
    if !require_privileges("ovs_container_refuses_a_node_that_runs_its_own_ovs") {
        return;
    }
    let mut first = ScriptOvs::new();
    first.start();
    // A second container on the same run directory finds a live ovsdb-server.
    let mut cmd = first.with_env(Command::new(first.script()));
    let out = cmd.arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already answers") && stderr.contains("switchyard-host-ovs.yaml"),
        "{stderr}"
    );
    assert!(first.health(), "the running instance is untouched");
}

#[test]
fn ovs_container_rotates_the_daemons_logs_by_size() {
    if !require_privileges("ovs_container_rotates_the_daemons_logs_by_size") {
        return;
    }
    let mut ovs = ScriptOvs::new();
    ovs.start_with(&[
        ("SWITCHYARD_OVS_LOG_MAX_BYTES", "4000"),
        ("SWITCHYARD_OVS_LOG_KEEP", "2"),
    ]);
    // Debug logging to the file, and requests to log: each request writes a few lines.
    ovs.tool(
        "ovs-appctl",
        &["-t", "ovs-vswitchd", "vlog/set", "file:dbg"],
    );
    let busy = || {
        for _ in 0..5 {
            ovs.tool("ovs-appctl", &["-t", "ovs-vswitchd", "vlog/list"]);
        }
    };
    let log = ovs.path("log/ovs-vswitchd.log");
    let rotated = |n: u32| ovs.path(&format!("log/ovs-vswitchd.log.{n}"));
    ovs.poll("ovs-vswitchd.log rotated twice", || {
        busy();
        rotated(2).exists()
    });
    assert!(
        ovs.log().contains("rotated ovs-vswitchd.log"),
        "{}",
        ovs.log()
    );
    // The daemon reopened its log: the current file is written again.
    ovs.poll("ovs-vswitchd writing its log again", || {
        busy();
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    });
    // Never more than SWITCHYARD_OVS_LOG_KEEP old files.
    ovs.poll("a third rotation", || {
        busy();
        ovs.log().matches("rotated ovs-vswitchd.log").count() >= 3
    });
    assert!(!rotated(3).exists(), "more than 2 rotated logs kept");
    for n in [1, 2] {
        let size = std::fs::metadata(rotated(n)).unwrap().len();
        assert!(size > 4000, "log.{n} rotated at {size} bytes");
    }
    assert_eq!(ovs.stop(), 0);
}
