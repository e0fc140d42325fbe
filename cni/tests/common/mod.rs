//! Test harness: an in-test agent stub served with the crate's own `serve` over
//! a real Unix socket, and a runner that executes the real `switchyard` binary
//! the way libcni does (environment, stdin, stdout/exit status).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_cni::{CniError, CniHandler, CniRequest, CniResult, Verb, serve};

/// What the stub answers to a verb.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Success; ADD answers with the stub's result.
    Ok,
    /// This error.
    Err(CniError),
    /// Never answer.
    Hang,
    /// Panic inside the handler.
    Panic,
}

/// The in-test agent.
#[derive(Debug)]
pub struct Stub {
    pub result: Mutex<CniResult>,
    pub replies: Mutex<BTreeMap<&'static str, Reply>>,
    pub seen: Mutex<Vec<CniRequest>>,
}

fn verb_name(v: Verb) -> &'static str {
    match v {
        Verb::Add => "ADD",
        Verb::Del => "DEL",
        Verb::Check => "CHECK",
        Verb::Status => "STATUS",
        Verb::Gc => "GC",
    }
}

impl Stub {
    async fn answer(&self, req: CniRequest) -> Result<CniResult, CniError> {
        let reply = self
            .replies
            .lock()
            .unwrap()
            .get(verb_name(req.verb))
            .cloned()
            .unwrap_or(Reply::Ok);
        self.seen.lock().unwrap().push(req);
        match reply {
            Reply::Ok => Ok(self.result.lock().unwrap().clone()),
            Reply::Err(e) => Err(e),
            Reply::Hang => std::future::pending().await,
            Reply::Panic => panic!("stub handler panics on purpose"),
        }
    }
}

impl CniHandler for Stub {
    async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> {
        self.answer(req).await
    }
    async fn del(&self, req: CniRequest) -> Result<(), CniError> {
        self.answer(req).await.map(drop)
    }
    async fn check(&self, req: CniRequest) -> Result<(), CniError> {
        self.answer(req).await.map(drop)
    }
    async fn status(&self, req: CniRequest) -> Result<(), CniError> {
        self.answer(req).await.map(drop)
    }
    async fn gc(&self, req: CniRequest) -> Result<(), CniError> {
        self.answer(req).await.map(drop)
    }
}

/// A running stub agent on a socket in its own temporary directory.
#[derive(Debug)]
pub struct Agent {
    pub stub: Arc<Stub>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Agent {
    /// Starts the stub with `result` as its ADD answer.
    pub fn start(result: CniResult) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stub = Arc::new(Stub {
            result: Mutex::new(result),
            replies: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        runtime.spawn(serve(listener, stub.clone()));
        Agent {
            stub,
            socket,
            dir,
            runtime: Some(runtime),
        }
    }

    /// Makes the stub answer `verb` with `reply`.
    pub fn reply(&self, verb: &'static str, reply: Reply) {
        self.stub.replies.lock().unwrap().insert(verb, reply);
    }

    /// Requests the stub has received so far.
    pub fn seen(&self) -> Vec<CniRequest> {
        self.stub.seen.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What a plugin run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Stdout parsed as one JSON document (panics with the output otherwise).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// The CNI error code printed on stdout.
    pub fn error_code(&self) -> u64 {
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code: {self:?}"))
    }
}

/// Path of the binary under test.
pub fn switchyard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs `program` with exactly `env` (plus PATH) and `stdin`, as libcni does,
/// killing it if it has not finished within `limit`.
pub fn exec_plugin(
    program: &Path,
    env: &[(&str, String)],
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Run {
    exec_plugin_with_stdin(
        program,
        env,
        stdin.map(|b| StdinSource::Bytes(b.to_vec())),
        limit,
    )
}

/// Where the plugin's stdin comes from.
#[derive(Debug)]
pub enum StdinSource {
    Bytes(Vec<u8>),
    File(std::fs::File),
}

pub fn exec_plugin_with_stdin(
    program: &Path,
    env: &[(&str, String)],
    stdin: Option<StdinSource>,
    limit: Duration,
) -> Run {
    exec_command(Command::new(program), env, stdin, limit)
}

/// Runs `program` inside the network namespace `netns` (`ip netns exec`), the
/// way a runtime on a node whose root netns is `netns` would.
pub fn exec_plugin_in_netns(
    netns: &str,
    program: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
    limit: Duration,
) -> Run {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    exec_command(cmd, env, Some(StdinSource::Bytes(stdin.to_vec())), limit)
}

fn exec_command(
    mut cmd: Command,
    env: &[(&str, String)],
    stdin: Option<StdinSource>,
    limit: Duration,
) -> Run {
    let program = PathBuf::from(cmd.get_program());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let bytes = match stdin {
        Some(StdinSource::File(f)) => {
            cmd.stdin(Stdio::from(f));
            None
        }
        Some(StdinSource::Bytes(b)) => {
            cmd.stdin(Stdio::piped());
            Some(b)
        }
        None => {
            cmd.stdin(Stdio::null());
            None
        }
    };
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    if let Some(b) = bytes {
        let mut pipe = child.stdin.take().unwrap();
        // A plugin may exit before reading everything; that is its answer.
        let _ = pipe.write_all(&b);
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{} did not finish within {limit:?}", program.display());
        }
    };
    Run {
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Environment for an attachment verb.
pub fn attachment_env(
    command: &str,
    container: &str,
    netns: &str,
    ifname: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container.to_owned()),
        ("CNI_NETNS", netns.to_owned()),
        ("CNI_IFNAME", ifname.to_owned()),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=uid-1;K8S_POD_INFRA_CONTAINER_ID=abc123".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
    ]
}

/// A result the stub returns: host veth, pod eth0 in `netns`, one IPv4 and one
/// IPv6 address, a default route, DNS.
pub fn sample_result(netns: &str) -> CniResult {
    serde_json::from_value(serde_json::json!({
        "interfaces": [
            {"name": "vethsy0", "mac": "0a:58:0a:f4:01:01", "mtu": 1450},
            {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450, "sandbox": netns}
        ],
        "ips": [
            {"interface": 1, "address": "10.244.1.5/24", "gateway": "10.244.1.1"},
            {"interface": 1, "address": "fd00:10:244:1::5/64", "gateway": "fd00:10:244:1::1"}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
            {"dst": "::/0", "gw": "fd00:10:244:1::1"}
        ],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    }))
    .unwrap()
}

/// Runs a helper command that must succeed (setup and inspection).
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created for one test, deleted on drop (even on panic).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add` with a name unique to this process and call.
    pub fn new(role: &str) -> Netns {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("sy-cni-{role}-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    /// The path runtimes pass as CNI_NETNS.
    pub fn path(&self) -> String {
        for dir in ["/var/run/netns", "/run/netns"] {
            let p = format!("{dir}/{}", self.name);
            if Path::new(&p).exists() {
                return p;
            }
        }
        panic!("netns {} has no path", self.name);
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
