//! Running commands (`ip`, OVS tools), spawning background processes and stopping them by pid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::LabError;

/// How long a process gets after SIGTERM before SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Poll interval of every wait with a deadline.
pub const POLL: Duration = Duration::from_millis(20);

/// The command line of `cmd`, for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion (stdin closed) and returns its stdout; a failure carries stderr.
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let line = command_line(cmd);
    tracing::debug!(command = %line, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::io(format!("running `{line}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// `ip -n NETNS ARGS...`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// A command run inside `netns` with `ip netns exec` (which execs in place, so the child's pid
/// is the program's pid).
pub fn netns_exec(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.arg("netns").arg("exec").arg(netns).arg(program);
    cmd
}

/// `sysctl -qw KEY=VALUE` inside `netns`.
pub fn sysctl_in(netns: &str, key_value: &str) -> Result<(), LabError> {
    run(netns_exec(netns, "sysctl").args(["-qw", key_value])).map(drop)
}

/// `/etc/netns/NAME`: the files `ip netns exec NAME` mounts over `/etc` (a pod's
/// `resolv.conf`).
pub fn netns_etc_dir(name: &str) -> std::path::PathBuf {
    Path::new("/etc/netns").join(name)
}

/// Writes `/etc/netns/NAME/resolv.conf`.
pub fn write_netns_resolv_conf(name: &str, text: &str) -> Result<(), LabError> {
    let dir = netns_etc_dir(name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    std::fs::write(dir.join("resolv.conf"), text)
        .map_err(|e| LabError::io(format!("writing {}/resolv.conf", dir.display()), e))
}

/// Removes `/etc/netns/NAME` (with the namespace; `ip netns del` leaves it).
pub fn remove_netns_etc(name: &str) {
    let _ = std::fs::remove_dir_all(netns_etc_dir(name));
}

/// Whether the named network namespace exists (`ip netns add` made `/run/netns/NAME`).
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Names of every named network namespace.
pub fn netns_list() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an interface of this name exists in the caller's namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Pids of the processes inside a named namespace (`ip netns pids`).
pub fn netns_pids(name: &str) -> Vec<u32> {
    ip(&["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot), which tells a process
/// from a later one that reused its pid; `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): field 22 is index 19.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start` (ticks).
pub fn is_same_process(pid: u32, start: Option<u64>) -> bool {
    match (start_time(pid), start) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Whether every thread of `pid` has exited (the process is gone, or only its zombie leader is
/// left). A SIGKILLed multi-threaded daemon's leader turns zombie before its other threads have
/// exited, and those still hold its sockets (e.g. its listening port) until they do.
pub fn all_threads_exited(pid: u32) -> bool {
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Err(_) => true,
        Ok(tasks) => tasks.count() <= 1 && start_time(pid).is_none(),
    }
}

fn reap(pid: u32) {
    // Reaps it if it is our child (a zombie keeps its pid otherwise); ECHILD otherwise.
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// Stops a process by pid if it is still the recorded one: SIGTERM, then SIGKILL after
/// [`STOP_DEADLINE`]. Returns whether a process was signalled.
pub fn stop_pid(pid: u32, start: Option<u64>) -> bool {
    if pid <= 1 || !is_same_process(pid, start) {
        return false;
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        reap(pid);
        if !is_same_process(pid, start) {
            return true;
        }
        thread::sleep(POLL);
    }
    tracing::warn!(pid, "did not exit on SIGTERM; sending SIGKILL");
    let _ = kill(p, Signal::SIGKILL);
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline && is_same_process(pid, start) {
        reap(pid);
        thread::sleep(POLL);
    }
    true
}

/// Spawns a long-lived process detached from the caller's terminal and process group (it
/// outlives `switchyard-lab up`), stdin closed, stdout and stderr appended to `log`.
pub fn spawn_background(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    use std::os::unix::process::CommandExt;
    let line = command_line(cmd);
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    tracing::debug!(command = %line, log = %log.display(), "spawning");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::io(format!("starting `{line}`"), e))
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every [`POLL`] until it returns `Some` or `deadline` passes.
pub fn poll_until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// `program` found in `dir` (a sibling of the running binary) or in `PATH`.
pub fn find_binary(dir: Option<&Path>, program: &str) -> Option<PathBuf> {
    if let Some(dir) = dir {
        let p = dir.join(program);
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_a_killed_child_are_gone_once_it_is_a_zombie() {
        assert!(!all_threads_exited(std::process::id()), "this process runs");
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(!all_threads_exited(pid));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        // Not reaped yet: a zombie with no thread left.
        let gone = poll_until(Duration::from_secs(10), || {
            all_threads_exited(pid).then_some(())
        });
        assert!(gone.is_some(), "pid {pid} still has threads");
        child.wait().unwrap();
        assert!(all_threads_exited(pid), "reaped");
    }
}
