//! Test harness that runs private Open vSwitch daemons.
//!
//! Each [`OvsInstance`] owns a fresh temporary run directory holding its own
//! database (created with `ovsdb-tool create` from the installed
//! `vswitch.ovsschema`), an `ovsdb-server` listening on `<dir>/db.sock` and,
//! when asked, an `ovs-vswitchd` connected to it. Every daemon gets its own
//! pid file, unixctl socket and log file inside that directory, and the
//! `OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR` variables point there so bridge
//! management sockets (`<dir>/<bridge>.mgmt`) never collide. Any number of
//! instances can run at once, optionally inside a network namespace
//! (`ip netns exec NAME ...`).
//!
//! Two `ovs-vswitchd` with netdev bridges cannot share a network namespace:
//! each creates the tap `ovs-netdev` (and a tap per bridge/internal port), so
//! the second fails with "Device or resource busy". Therefore, when
//! `ovs-vswitchd` is started and no namespace was given, the instance creates
//! a private one (named `sy-ovs-<pid>-<n>`, see [`OvsInstance::netns`]) and
//! deletes it on drop. Put the veths you attach into that namespace (e.g.
//! [`VethPair::new`] with `ovs.netns()`). Use
//! [`OvsInstanceBuilder::host_netns`] to run vswitchd in the caller's
//! namespace instead (only one such instance at a time on the machine).
//!
//! Dropping an instance stops its daemons by their own pid (SIGTERM, then
//! SIGKILL after a deadline) and removes the directory; this also happens
//! while unwinding from a panic. Set `SWITCHYARD_KEEP_OVS_DIR=1` to keep the
//! directory (logs) for debugging.
//!
//! The harness starts no datapath itself: callers create bridges with
//! `datapath_type=netdev` (the userspace datapath), since no OVS kernel module
//! is available.
//!
//! ```no_run
//! use switchyard_ovs_harness::{require_privileges, OvsInstance};
//! if require_privileges("my_test") {
//!     let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
//!     ovs.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"]).unwrap();
//!     println!("{}", ovs.ofctl(&["dump-flows", "br0"]).unwrap());
//! }
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Installed OVSDB schema the private databases are created from.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// How long to wait for a daemon to answer after start.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Poll interval while waiting for something with a deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Timeout passed to `ovs-vsctl`/`ovs-appctl` so a stuck daemon fails a test
/// instead of hanging it.
const CLI_TIMEOUT_SECS: &str = "20";

/// Binaries the harness needs.
const REQUIRED_BINARIES: &[&str] = &[
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
    "ovsdb-client",
    "ip",
];

/// Errors from the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// An I/O operation (spawning, file access) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A daemon did not answer before the deadline.
    #[error("{what} did not become ready within {deadline:?}; log tail:\n{log_tail}")]
    NotReady {
        /// Which daemon.
        what: String,
        /// The deadline that passed.
        deadline: Duration,
        /// Last lines of its log and stderr.
        log_tail: String,
    },
    /// A daemon exited while it was being started.
    #[error("{what} exited during start ({status}); log tail:\n{log_tail}")]
    Exited {
        /// Which daemon.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Last lines of its log and stderr.
        log_tail: String,
    },
    /// An operation needs a running `ovs-vswitchd` but none runs.
    #[error("ovs-vswitchd is not running in this instance")]
    VswitchdNotRunning,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// Checks that the current process can run privileged OVS tests: it runs as
/// root and the OVS binaries and `ip` are installed.
///
/// Returns `true` when the test should go on. When it cannot run, it panics
/// with a clear message, unless `SWITCHYARD_SKIP_PRIVILEGED=1` is set, in which
/// case it prints a skip line to stderr and returns `false`.
pub fn require_privileges(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Path::new(VSWITCH_SCHEMA).exists() {
        missing.push(format!("schema {VSWITCH_SCHEMA}"));
    }
    require(test, REQUIRED_BINARIES, missing)
}

/// Like [`require_privileges`] for tests that need root and `tools` on the
/// PATH but no Open vSwitch (network namespaces, veths, iptables).
pub fn require_root_and(test: &str, tools: &[&str]) -> bool {
    require(test, tools, Vec::new())
}

/// The one privilege guard: root, `binaries` and whatever else is
/// `missing`; skip (false) with `SWITCHYARD_SKIP_PRIVILEGED=1`, else panic
/// naming what is missing.
fn require(test: &str, binaries: &[&str], mut missing: Vec<String>) -> bool {
    if !nix::unistd::geteuid().is_root() {
        missing.insert(0, "root privileges (euid 0)".to_string());
    }
    for binary in binaries {
        if find_in_path(binary).is_none() {
            missing.push(format!("binary `{binary}` in PATH"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    if std::env::var("SWITCHYARD_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIP {test}: needs {reason} (SWITCHYARD_SKIP_PRIVILEGED=1)");
        false
    } else {
        panic!(
            "test {test} needs {reason}; run it as root on a machine with the packages of \
             scripts/install-deps.sh installed, or set SWITCHYARD_SKIP_PRIVILEGED=1 to skip it"
        );
    }
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Unique suffix for names: pid plus a process-wide counter.
fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command to completion; stdout on success, [`HarnessError::CommandFailed`] otherwise.
fn run(mut cmd: Command) -> Result<String, HarnessError> {
    let line = command_line(&cmd);
    tracing::debug!(command = %line, "running");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("spawning `{line}`")))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(HarnessError::CommandFailed {
            command: line,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }
}

/// Last `lines` lines of each existing file, labelled.
fn tail_files(files: &[PathBuf], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        if let Ok(text) = fs::read_to_string(file) {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            out.push_str(&format!("--- {}\n", file.display()));
            for line in &all[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Which daemon a [`Daemon`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonKind {
    OvsdbServer,
    Vswitchd,
}

impl DaemonKind {
    fn name(self) -> &'static str {
        match self {
            DaemonKind::OvsdbServer => "ovsdb-server",
            DaemonKind::Vswitchd => "ovs-vswitchd",
        }
    }
}

/// A running daemon we spawned (not detached, so its pid is the child's pid,
/// also through `ip netns exec`, which execs in place).
#[derive(Debug)]
struct Daemon {
    kind: DaemonKind,
    child: Child,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon by its pid: SIGTERM, then SIGKILL after a deadline; reaps it.
    fn stop(mut self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(pid, signal);
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => thread::sleep(POLL_INTERVAL),
            }
        }
        tracing::warn!(daemon = self.kind.name(), %pid, "did not exit on SIGTERM; killing");
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Builder for [`OvsInstance`].
#[derive(Debug, Clone, Default)]
pub struct OvsInstanceBuilder {
    netns: Option<String>,
    vswitchd: bool,
    skip_init: bool,
    host_netns: bool,
}

impl OvsInstanceBuilder {
    /// Runs the daemons inside this network namespace (`ip netns exec NAME`).
    pub fn netns(mut self, netns: Option<&str>) -> Self {
        self.netns = netns.map(str::to_string);
        self
    }

    /// Also starts `ovs-vswitchd` (default: only `ovsdb-server`).
    pub fn vswitchd(mut self, vswitchd: bool) -> Self {
        self.vswitchd = vswitchd;
        self
    }

    /// Runs `ovs-vswitchd` in the caller's namespace instead of a private one
    /// when no namespace is given. Only one such instance can have netdev
    /// bridges at a time on the machine.
    pub fn host_netns(mut self, host: bool) -> Self {
        self.host_netns = host;
        self
    }

    /// Leaves the database empty: no `ovs-vsctl init`, so no `Open_vSwitch`
    /// root row. By default the root row is created, as a packaged OVS does.
    pub fn empty_db(mut self, empty: bool) -> Self {
        self.skip_init = empty;
        self
    }

    /// Creates the run directory and database and starts the daemons; returns
    /// once they answer.
    pub fn start(self) -> Result<OvsInstance, HarnessError> {
        OvsInstance::start(self)
    }
}

/// A private `ovsdb-server` (and optionally `ovs-vswitchd`) in its own run directory.
pub struct OvsInstance {
    dir: Option<tempfile::TempDir>,
    rundir: PathBuf,
    netns: Option<String>,
    /// Private namespace created for vswitchd; deleted after the daemons stop.
    own_netns: Option<Netns>,
    host_netns: bool,
    ovsdb: Option<Daemon>,
    vswitchd: Option<Daemon>,
}

impl fmt::Debug for OvsInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvsInstance")
            .field("rundir", &self.rundir)
            .field("netns", &self.netns)
            .field("ovsdb_pid", &self.ovsdb_pid())
            .field("vswitchd_pid", &self.vswitchd_pid())
            .finish()
    }
}

impl OvsInstance {
    /// A builder; defaults: host namespace, no vswitchd, initialised database.
    pub fn builder() -> OvsInstanceBuilder {
        OvsInstanceBuilder::default()
    }

    fn start(builder: OvsInstanceBuilder) -> Result<Self, HarnessError> {
        // Short prefix: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix(&format!("sy-ovs-{}-", unique_suffix()))
            .tempdir()
            .map_err(io_err("creating OVS run directory"))?;
        let rundir = dir.path().to_path_buf();
        let mut instance = OvsInstance {
            dir: Some(dir),
            rundir,
            netns: builder.netns,
            own_netns: None,
            host_netns: builder.host_netns,
            ovsdb: None,
            vswitchd: None,
        };
        let mut create = Command::new("ovsdb-tool");
        create
            .arg("create")
            .arg(instance.db_file())
            .arg(VSWITCH_SCHEMA);
        run(create)?;
        instance.start_ovsdb()?;
        if !builder.skip_init {
            instance.vsctl(&["init"])?;
        }
        if builder.vswitchd {
            instance.start_vswitchd()?;
        }
        tracing::info!(rundir = %instance.rundir.display(), netns = ?instance.netns, "OVS instance started");
        Ok(instance)
    }

    /// The run directory (database, sockets, pid and log files).
    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// The network namespace `ovs-vswitchd` runs in: the one given to the
    /// builder, or the private one the instance created; `None` for the
    /// caller's namespace. `ovsdb-server` runs in the given namespace, or in
    /// the caller's when the instance created its own.
    pub fn netns(&self) -> Option<&str> {
        self.netns
            .as_deref()
            .or(self.own_netns.as_ref().map(Netns::name))
    }

    /// The database file.
    pub fn db_file(&self) -> PathBuf {
        self.rundir.join("conf.db")
    }

    /// The `ovsdb-server` Unix socket.
    pub fn db_socket(&self) -> PathBuf {
        self.rundir.join("db.sock")
    }

    /// The OVSDB endpoint as OVS tools spell it: `unix:<rundir>/db.sock`.
    pub fn db_endpoint(&self) -> String {
        format!("unix:{}", self.db_socket().display())
    }

    /// The OpenFlow management socket of a bridge: `<rundir>/<bridge>.mgmt`.
    pub fn mgmt_socket(&self, bridge: &str) -> PathBuf {
        self.rundir.join(format!("{bridge}.mgmt"))
    }

    /// The unixctl socket of `ovs-vswitchd`.
    pub fn vswitchd_ctl(&self) -> PathBuf {
        self.rundir.join("ovs-vswitchd.ctl")
    }

    /// The unixctl socket of `ovsdb-server`.
    pub fn ovsdb_ctl(&self) -> PathBuf {
        self.rundir.join("ovsdb-server.ctl")
    }

    /// Log file of a daemon (`ovsdb-server` or `ovs-vswitchd`).
    pub fn log_file(&self, daemon: &str) -> PathBuf {
        self.rundir.join(format!("{daemon}.log"))
    }

    /// Pid of the running `ovsdb-server`, if any.
    pub fn ovsdb_pid(&self) -> Option<u32> {
        self.ovsdb.as_ref().map(Daemon::pid)
    }

    /// Pid of the running `ovs-vswitchd`, if any.
    pub fn vswitchd_pid(&self) -> Option<u32> {
        self.vswitchd.as_ref().map(Daemon::pid)
    }

    /// Whether this instance runs `ovs-vswitchd` now.
    pub fn has_vswitchd(&self) -> bool {
        self.vswitchd.is_some()
    }

    /// A command with the OVS directory variables set, in the host namespace.
    fn ovs_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("OVS_RUNDIR", &self.rundir)
            .env("OVS_DBDIR", &self.rundir)
            .env("OVS_LOGDIR", &self.rundir)
            .env("OVS_SYSCONFDIR", &self.rundir)
            .env("OVS_PKGDATADIR", "/usr/share/openvswitch");
        cmd
    }

    /// A command for a daemon: inside the netns when there is one.
    fn daemon_command(&self, kind: DaemonKind) -> Command {
        let program = kind.name();
        let netns = match kind {
            DaemonKind::OvsdbServer => self.netns.as_deref(),
            DaemonKind::Vswitchd => self.netns(),
        };
        match netns {
            Some(netns) => {
                let mut cmd = self.ovs_command("ip");
                cmd.args(["netns", "exec", netns, program]);
                cmd
            }
            None => self.ovs_command(program),
        }
    }

    fn spawn_daemon(&self, kind: DaemonKind, args: &[String]) -> Result<Daemon, HarnessError> {
        let name = kind.name();
        let pidfile = self.rundir.join(format!("{name}.pid"));
        let _ = fs::remove_file(&pidfile);
        let stderr = fs::File::create(self.rundir.join(format!("{name}.stderr")))
            .map_err(io_err(format!("creating stderr file of {name}")))?;
        let mut cmd = self.daemon_command(kind);
        cmd.args(args)
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!(
                "--unixctl={}",
                self.rundir.join(format!("{name}.ctl")).display()
            ))
            .arg(format!("--log-file={}", self.log_file(name).display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let line = command_line(&cmd);
        tracing::debug!(command = %line, "starting daemon");
        let child = cmd.spawn().map_err(io_err(format!("spawning `{line}`")))?;
        Ok(Daemon { kind, child })
    }

    fn log_tail(&self, kind: DaemonKind) -> String {
        let name = kind.name();
        tail_files(
            &[
                self.log_file(name),
                self.rundir.join(format!("{name}.stderr")),
            ],
            20,
        )
    }

    /// Polls `ready` until it returns true, failing early if the daemon exits.
    fn wait_ready(
        &self,
        daemon: &mut Daemon,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(HarnessError::Exited {
                    what: daemon.kind.name().to_string(),
                    status,
                    log_tail: self.log_tail(daemon.kind),
                });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    what: daemon.kind.name().to_string(),
                    deadline: START_DEADLINE,
                    log_tail: self.log_tail(daemon.kind),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts `ovsdb-server` on the existing database file and socket path.
    /// Fails if it already runs.
    pub fn start_ovsdb(&mut self) -> Result<(), HarnessError> {
        if self.ovsdb.is_some() {
            return Ok(());
        }
        let socket = self.db_socket();
        // A SIGKILLed server leaves its socket behind.
        let _ = fs::remove_file(&socket);
        let args = vec![
            self.db_file().display().to_string(),
            format!("--remote=punix:{}", socket.display()),
        ];
        let mut daemon = self.spawn_daemon(DaemonKind::OvsdbServer, &args)?;
        let ready = self.wait_ready(&mut daemon, || UnixStream::connect(&socket).is_ok());
        if let Err(err) = ready {
            daemon.stop(Signal::SIGKILL);
            return Err(err);
        }
        self.ovsdb = Some(daemon);
        Ok(())
    }

    /// Stops `ovsdb-server` (SIGTERM; the socket file is removed by the server).
    pub fn stop_ovsdb(&mut self) {
        if let Some(daemon) = self.ovsdb.take() {
            daemon.stop(Signal::SIGTERM);
        }
    }

    /// Kills `ovsdb-server` with SIGKILL, as a crash would (connections drop
    /// without a goodbye).
    pub fn kill_ovsdb(&mut self) {
        if let Some(daemon) = self.ovsdb.take() {
            daemon.stop(Signal::SIGKILL);
        }
    }

    /// Restarts `ovsdb-server` on the same database file and socket path.
    pub fn restart_ovsdb(&mut self) -> Result<(), HarnessError> {
        self.stop_ovsdb();
        self.start_ovsdb()
    }

    /// Starts `ovs-vswitchd` connected to this instance's database; returns
    /// once its unixctl socket answers. No-op if it already runs.
    pub fn start_vswitchd(&mut self) -> Result<(), HarnessError> {
        if self.vswitchd.is_some() {
            return Ok(());
        }
        if self.netns.is_none() && self.own_netns.is_none() && !self.host_netns {
            self.own_netns = Some(Netns::new("sy-ovs")?);
        }
        let args = vec![
            self.db_endpoint(),
            // No kernel datapath here: only the userspace (netdev) datapath.
            "--disable-system".to_string(),
            "--disable-system-route".to_string(),
        ];
        let mut daemon = self.spawn_daemon(DaemonKind::Vswitchd, &args)?;
        let ctl = self.vswitchd_ctl();
        let ready = self.wait_ready(&mut daemon, || {
            ctl.exists() && {
                let mut cmd = self.ovs_command("ovs-appctl");
                cmd.arg("-t").arg(&ctl).arg("--timeout=2").arg("version");
                run(cmd).is_ok()
            }
        });
        if let Err(err) = ready {
            daemon.stop(Signal::SIGKILL);
            return Err(err);
        }
        self.vswitchd = Some(daemon);
        Ok(())
    }

    /// Stops `ovs-vswitchd` by its pid (SIGTERM, SIGKILL after a deadline).
    pub fn kill_vswitchd(&mut self) {
        if let Some(daemon) = self.vswitchd.take() {
            daemon.stop(Signal::SIGTERM);
        }
    }

    /// Runs `ovs-vsctl --db=<endpoint> ARGS` and returns its stdout. Without
    /// a running vswitchd it adds `--no-wait` (nothing would ever apply the change).
    pub fn vsctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = self.ovs_command("ovs-vsctl");
        cmd.arg(format!("--db={}", self.db_endpoint()))
            .arg(format!("--timeout={CLI_TIMEOUT_SECS}"));
        if self.vswitchd.is_none() {
            cmd.arg("--no-wait");
        }
        cmd.args(args);
        run(cmd)
    }

    /// Runs `ovs-ofctl ARGS` with `OVS_RUNDIR` set, so bridge names resolve to
    /// this instance's management sockets.
    pub fn ofctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = self.ovs_command("ovs-ofctl");
        cmd.args(args);
        run(cmd)
    }

    /// Runs `ovs-appctl -t <vswitchd ctl> ARGS`.
    pub fn appctl_vswitchd(&self, args: &[&str]) -> Result<String, HarnessError> {
        if self.vswitchd.is_none() {
            return Err(HarnessError::VswitchdNotRunning);
        }
        let mut cmd = self.ovs_command("ovs-appctl");
        cmd.arg("-t")
            .arg(self.vswitchd_ctl())
            .arg(format!("--timeout={CLI_TIMEOUT_SECS}"))
            .args(args);
        run(cmd)
    }

    /// Runs `ovsdb-client COMMAND <endpoint> ARGS` (e.g. `dump`, `transact`)
    /// and returns its stdout: an oracle that, unlike `ovs-vsctl`, never
    /// creates the `Open_vSwitch` root row by itself.
    pub fn ovsdb_client(&self, command: &str, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = self.ovs_command("ovsdb-client");
        cmd.arg(format!("--timeout={CLI_TIMEOUT_SECS}"))
            .arg(command)
            .arg(self.db_endpoint())
            .args(args);
        run(cmd)
    }

    /// Runs `ovs-appctl -t <ovsdb-server ctl> ARGS`.
    pub fn appctl_ovsdb(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = self.ovs_command("ovs-appctl");
        cmd.arg("-t")
            .arg(self.ovsdb_ctl())
            .arg(format!("--timeout={CLI_TIMEOUT_SECS}"))
            .args(args);
        run(cmd)
    }
}

impl Drop for OvsInstance {
    fn drop(&mut self) {
        if let Some(daemon) = self.vswitchd.take() {
            daemon.stop(Signal::SIGTERM);
        }
        if let Some(daemon) = self.ovsdb.take() {
            daemon.stop(Signal::SIGTERM);
        }
        // After the daemons: vswitchd's taps live in it.
        drop(self.own_netns.take());
        if let Some(dir) = self.dir.take() {
            if std::env::var("SWITCHYARD_KEEP_OVS_DIR").as_deref() == Ok("1") {
                let kept = dir.keep();
                eprintln!("keeping OVS run directory {}", kept.display());
            } else if let Err(err) = dir.close() {
                tracing::warn!(%err, "removing OVS run directory");
            }
        }
    }
}

/// A network namespace created for a test (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<counter>` with loopback up.
    pub fn new(prefix: &str) -> Result<Self, HarnessError> {
        let name = format!("{prefix}-{}", unique_suffix());
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        run(add)?;
        let netns = Netns { name };
        let mut lo = Command::new("ip");
        lo.args(["-n", &netns.name, "link", "set", "lo", "up"]);
        run(lo)?;
        Ok(netns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.name]);
        if let Err(err) = run(del) {
            tracing::warn!(%err, netns = %self.name, "deleting network namespace");
        }
    }
}

/// A veth pair created for a test with unique names, deleted on drop.
#[derive(Debug)]
pub struct VethPair {
    name: String,
    peer: String,
    netns: Option<String>,
}

impl VethPair {
    /// Creates `<prefix><n>a`/`<prefix><n>b` (at most 15 characters; keep
    /// `prefix` short) in the host namespace, or in `netns` when given, and
    /// sets both up.
    pub fn new(prefix: &str, netns: Option<&str>) -> Result<Self, HarnessError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Interface names are limited to 15 bytes: pid (up to 7 digits) and counter in hex.
        let id = format!(
            "{:x}{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let base: String = format!("{prefix}{id}").chars().take(14).collect();
        let pair = VethPair {
            name: format!("{base}a"),
            peer: format!("{base}b"),
            netns: netns.map(str::to_string),
        };
        let ip = |args: &[&str]| {
            let mut cmd = Command::new("ip");
            if let Some(ns) = &pair.netns {
                cmd.args(["-n", ns]);
            }
            cmd.args(args);
            run(cmd)
        };
        ip(&[
            "link", "add", &pair.name, "type", "veth", "peer", "name", &pair.peer,
        ])?;
        ip(&["link", "set", &pair.name, "up"])?;
        ip(&["link", "set", &pair.peer, "up"])?;
        Ok(pair)
    }

    /// The first end (usually attached to OVS).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The other end.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        if let Some(ns) = &self.netns {
            cmd.args(["-n", ns]);
        }
        cmd.args(["link", "del", &self.name]);
        // The pair may already be gone (e.g. its namespace was deleted).
        let _ = run(cmd);
    }
}
