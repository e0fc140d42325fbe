//! `/readyz`, `/healthz` and CNI STATUS of the agent on a real OVS: ready once
//! reconciled with OVSDB and the bridge; not ready within 2 s (asserted with a
//! 10 s deadline, the measured time printed) of ovsdb-server stopping
//! (SIGSTOP: the socket stays open, only an unanswered echo shows it; then
//! SIGTERM), STATUS failing with 50 meanwhile; ready again once it is back.
//! Liveness does not follow OVSDB. Needs root and openvswitch-switch.

mod support;

use std::time::{Duration, Instant};

use support::*;
use switchyard_agent::Agent;

/// Generous deadline for a readiness change (the target is 2 s).
const FLIP: Duration = Duration::from_secs(10);

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    (status, body.to_string())
}

/// Polls `/readyz` until its status is `want`; returns how long it took and
/// that answer's body.
async fn readyz_becomes(
    addr: std::net::SocketAddr,
    want: u16,
    within: Duration,
) -> (Duration, String) {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, "/readyz").await;
        if status == want {
            return (start.elapsed(), body);
        }
        assert!(
            start.elapsed() < within,
            "/readyz not {want} within {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGCONT to a stopped ovsdb-server when dropped.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    sh_ok(&["kill", &format!("-{sig}"), &pid.to_string()]);
}

async fn cni_status(lab: &NodeLab) -> CniOutput {
    run_cni("STATUS", "", None, "", "", &lab.conflist()).await
}

#[test]
fn readyz_and_status_follow_ovsdb_server() {
    node_test(
        "readyz_and_status_follow_ovsdb_server",
        |mut lab| async move {
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::start(lab.agent_config(None)),
            )
            .await
            .expect("agent start timed out")
            .expect("agent start");
            let addr = agent.metrics_addr();
            let (_, body) = readyz_becomes(addr, 200, FLIP).await;
            for condition in ["ovsdb", "openflow", "reconciled"] {
                assert!(body.contains(&format!("[+]{condition} ok")), "{body}");
            }
            let status = cni_status(&lab).await;
            assert!(status.success, "{} {}", status.stdout, status.stderr);

            let pid = lab.ovs.ovsdb_pid().expect("ovsdb-server pid");
            signal(pid, "STOP");
            let resume = Continue(pid);
            let (took, body) = readyz_becomes(addr, 503, FLIP).await;
            println!("agent /readyz false {took:?} after SIGSTOP of ovsdb-server");
            assert!(body.contains("[-]ovsdb:"), "{body}");
            let status = cni_status(&lab).await;
            assert!(!status.success);
            assert_eq!(status.code(), 50, "{}", status.stdout);
            assert!(
                status.stdout.contains("ovsdb-server does not answer"),
                "{}",
                status.stdout
            );
            assert_eq!(get(addr, "/healthz").await.0, 200);
            drop(resume);
            let (took, _) = readyz_becomes(addr, 200, FLIP).await;
            println!("agent /readyz true {took:?} after SIGCONT");
            let status = cni_status(&lab).await;
            assert!(status.success, "{}", status.stdout);

            lab.ovs.stop_ovsdb();
            let (took, _) = readyz_becomes(addr, 503, FLIP).await;
            println!("agent /readyz false {took:?} after ovsdb-server exited");
            lab.ovs.start_ovsdb().expect("ovsdb-server starts again");
            let (took, _) = readyz_becomes(addr, 200, Duration::from_secs(30)).await;
            println!("agent /readyz true {took:?} after ovsdb-server started again");
            agent.shutdown().await;
        },
    );
}
