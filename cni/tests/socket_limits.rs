//! The agent socket against misbehaving clients: a flood of idle
//! connections does not keep a pod from starting, a connection that sends
//! nothing is closed at its deadline, and a non-root peer is refused.
//! Needs root (to raise the test's file limit and to run a client as
//! `nobody`). Requests carrying identifiers the binary would refuse are
//! refused by the server too.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchyard_cni::{CniResult, ServeLimits, serve_with_limits};

const LIMIT: Duration = Duration::from_secs(20);

fn add(agent: &Agent) -> Run {
    let netns = agent.dir.path().join("netns-pod");
    std::fs::write(&netns, b"").unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "switchyard", "type": "switchyard",
                      "agentSocket": agent.socket, "timeoutSeconds": 10});
    exec_plugin(
        &switchyard_bin(),
        &attachment_env("ADD", "c0ffee01", &netns.display().to_string(), "eth0"),
        Some(conf.to_string().as_bytes()),
        LIMIT,
    )
}

/// Reads until EOF or `deadline`; true when the peer closed the connection.
fn closed_by_peer(s: &mut UnixStream, deadline: Duration) -> bool {
    s.set_read_timeout(Some(deadline)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[test]
fn three_thousand_idle_connections_do_not_keep_a_pod_from_starting() {
    if !switchyard_ovs_harness::require_root_and(
        "three_thousand_idle_connections_do_not_keep_a_pod_from_starting",
        &["prlimit", "setpriv"],
    ) {
        return;
    }
    // The agent side (this process) has the usual soft limit of 1,024 open
    // files; the flood comes from another process. Before: the server ran
    // out of descriptors, accept failed and it stopped serving for good.
    let limited = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=1024:16384",
        ])
        .status()
        .unwrap();
    assert!(limited.success());
    let agent = Agent::start(CniResult::default());
    let flood = r#"
import socket, sys
held, failed = [], 0
for _ in range(3000):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        held.append(s)
    except OSError:
        failed += 1
print(len(held), failed, flush=True)
sys.stdin.read()
"#;
    let mut flooder = Command::new("prlimit")
        .args(["--nofile=8192:8192", "/usr/bin/python3", "-c", flood])
        .arg(&agent.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flooder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    // A pod starts as usual, under the binary's own deadline.
    let r = add(&agent);
    let _ = flooder.kill();
    let _ = flooder.wait();
    assert_eq!(r.status, Some(0), "flood: {line}; {r:?}");
    assert_eq!(line.split_whitespace().next(), Some("3000"), "{line}");
    assert_eq!(agent.seen().len(), 1);
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_its_deadline() {
    let agent = Agent::start(CniResult::default());
    let socket = agent.dir.path().join("limited.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(&socket).unwrap()
    };
    let limits = ServeLimits {
        allowed_uids: vec![nix_uid()],
        request_deadline: Duration::from_millis(300),
        max_waiting: 8,
    };
    runtime.spawn(serve_with_limits(
        listener,
        Arc::clone(&agent.stub),
        limits,
        std::future::pending(),
    ));
    let mut idle = UnixStream::connect(&socket).unwrap();
    let started = Instant::now();
    assert!(closed_by_peer(&mut idle, Duration::from_secs(10)));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

/// This process's user id, from `/proc/self/status`.
fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_is_not_root_is_refused_with_a_clear_error() {
    if !switchyard_ovs_harness::require_root_and(
        "a_client_that_is_not_root_is_refused_with_a_clear_error",
        &["setpriv", "python3"],
    ) {
        return;
    }
    let agent = Agent::start(CniResult::default());
    // Open the socket to everyone, so that only the peer check stands.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let client = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]
print(s.recv(n, socket.MSG_WAITALL).decode())
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            client,
        ])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["error"]["msg"], json!("permission denied"), "{reply}");
    assert!(
        reply["error"]["details"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
        "{reply}"
    );
    assert!(agent.seen().is_empty());
    // Root still gets through.
    let r = add(&agent);
    assert_eq!(r.status, Some(0), "{r:?}");
}

#[test]
fn identifiers_the_binary_would_refuse_are_refused_by_the_agent_too() {
    use switchyard_cni::{CniArgs, CniEnv, CniRequest, Verb, call_agent, parse_config};
    let agent = Agent::start(CniResult::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"switchyard"}"#;
    for (id, ifname) in [
        ("a/b", "eth0"),
        ("c0ffee01", "../x"),
        ("", "eth0"),
        ("c0ffee01", ""),
    ] {
        let request = CniRequest::new(
            Verb::Del,
            CniEnv {
                container_id: Some(id.into()),
                netns: None,
                ifname: Some(ifname.into()),
                args: CniArgs::default(),
                path: vec![],
            },
            parse_config(stdin.as_bytes()).unwrap(),
            stdin.into(),
        );
        let err = runtime
            .block_on(call_agent(&agent.socket, &request, Duration::from_secs(10)))
            .unwrap_err();
        assert_eq!(err.code, 4, "{id:?} {ifname:?}: {err:?}");
    }
    // A GC whose valid attachments hold a bad id changes nothing either.
    let gc = r#"{"cniVersion":"1.1.0","name":"n","type":"switchyard",
                 "cni.dev/valid-attachments":[{"containerID":"x/y","ifname":"eth0"}]}"#;
    let request = CniRequest::new(
        Verb::Gc,
        CniEnv::default(),
        parse_config(gc.as_bytes()).unwrap(),
        gc.into(),
    );
    let err = runtime
        .block_on(call_agent(&agent.socket, &request, Duration::from_secs(10)))
        .unwrap_err();
    assert_eq!(err.code, 4, "{err:?}");
    assert!(agent.seen().is_empty());
}
