//! What the CNI benches share: one plugin invocation as libcni runs it,
//! percentiles, the release `switchyard` binary, the reference plugin's
//! configuration and the machine's load.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The steps of one invocation of the `switchyard` binary with
/// `SWITCHYARD_CNI_TIMING` set: each step's name and the time since the
/// step before it (the first since the spawn; `exit` last, the time from
/// `printed` until the caller saw the process end).
pub type Steps = Vec<(String, Duration)>;

/// One plugin invocation as libcni does it (environment, configuration on
/// stdin); timed from process start to exit.
#[derive(Clone, Copy)]
pub struct Invocation<'a> {
    pub bin: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub conf: &'a Value,
}

impl Invocation<'_> {
    /// The elapsed time, or the plugin's output when it failed.
    pub fn try_run(&self) -> Result<Duration, String> {
        self.run_plugin(false).map(|(t, _)| t)
    }

    /// [`Invocation::try_run`], panicking on failure.
    pub fn run(&self) -> Duration {
        self.try_run().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Invocation::run`] with the binary's step timing (empty for a
    /// binary that prints none, such as the reference plugin).
    pub fn run_with_steps(&self) -> (Duration, Steps) {
        self.run_plugin(true).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run_plugin(&self, timing: bool) -> Result<(Duration, Steps), String> {
        let Invocation {
            bin,
            command,
            container_id,
            netns,
            ifname,
            args,
            conf,
        } = *self;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if timing {
            cmd.env("SWITCHYARD_CNI_TIMING", "1");
        }
        let spawned_at = SystemTime::now();
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(conf).unwrap().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let elapsed = started.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{} {command} {container_id}: {} {}",
                bin.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let exited_at = spawned_at + elapsed;
        Ok((elapsed, steps(&out.stderr, spawned_at, exited_at)))
    }
}

/// The intervals of a `switchyard-timing` line (see [`Steps`]).
fn steps(stderr: &[u8], spawned_at: SystemTime, exited_at: SystemTime) -> Steps {
    let text = String::from_utf8_lossy(stderr);
    let Some(line) = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard-timing "))
    else {
        return Vec::new();
    };
    let at = |us: u64| UNIX_EPOCH + Duration::from_micros(us);
    let mut out = Vec::new();
    let mut before = spawned_at;
    for field in line.split_whitespace() {
        let Some((step, us)) = field.split_once('=') else {
            continue;
        };
        let Ok(us) = us.parse::<u64>() else { continue };
        let t = at(us);
        out.push((
            step.to_string(),
            t.duration_since(before).unwrap_or_default(),
        ));
        before = t;
    }
    out.push((
        "exit".to_string(),
        exited_at.duration_since(before).unwrap_or_default(),
    ));
    out
}

/// The `p` percentile of sorted latencies, in ms.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Builds the release `switchyard` binary (another package's binary, so
/// there is no `CARGO_BIN_EXE_switchyard`) and returns its path.
pub fn build_release_cni() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "switchyard-cni",
            "--bin",
            "switchyard",
        ])
        .current_dir(workspace)
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the release switchyard binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("release").join("switchyard")
}

/// Debian's reference `bridge` + `host-local` configuration.
pub fn reference_conf(ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge",
        "bridge": "cni-ref0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.99.0.0/16",
                 "dataDir": ipam_dir.display().to_string()}
    })
}

/// The 1-minute load average and the number of cores, as "1.52 on 2 cores".
pub fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = avg.split_whitespace().next().unwrap_or("?").to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{one} on {cores} cores")
}
