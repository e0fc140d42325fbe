//! The real `switchyard-proxy` binary's log lines on stderr (a pipe, as in a
//! container): plain text without ANSI colour codes, or one JSON object per
//! line with `--log-format json`. The proxy runs against an API server
//! address nothing listens on, so it logs its start and then its retries; no
//! root, no OVS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the proxy with `extra` flags until a stderr line contains `until`
/// (or 60 s pass); returns stderr so far.
fn proxy_stderr(extra: &[&str], until: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
         users:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-proxy"))
        .args([
            "--node-name=logs-test",
            "--metrics-address=127.0.0.1:0",
            "--healthz-bind-address=",
        ])
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--ovs-rundir={}", dir.path().display()))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchyard-proxy");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = String::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push_str(&line);
        out.push('\n');
        if line.contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.contains(until),
        "no {until:?} in the agent's stderr:\n{out}"
    );
    out
}

#[test]
fn text_logs_carry_no_colour_codes_on_a_pipe() {
    let out = proxy_stderr(&[], "cannot reach the bridge yet");
    assert!(!out.contains('\u{1b}'), "ANSI escape in:\n{out}");
    assert!(out.contains(" INFO "), "{out}");
    assert!(out.contains("serving /metrics"), "{out}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = proxy_stderr(&["--log-format=json"], "cannot reach the bridge yet");
    let mut messages = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_string());
        if v["fields"]["message"]
            == "no Node object with an InternalIP: NodePorts are not served on node addresses"
        {
            assert_eq!(v["fields"]["node"], "logs-test", "{line}");
        }
    }
    assert!(
        messages.iter().any(|m| m.starts_with("serving /metrics")),
        "{messages:?}"
    );
}
