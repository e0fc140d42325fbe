//! `/readyz` and `/healthz` of the real `switchyard-proxy` binary on a real
//! OVS: ready once OVSDB and the bridge answer and the first sync reached the
//! switch; not ready within 2 s (asserted with a 10 s deadline, the measured
//! time printed) of ovsdb-server stopping (SIGSTOP: the socket stays open,
//! only an unanswered echo shows it; then SIGTERM); ready again once it is
//! back. Liveness does not follow OVSDB. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, Node, ProxyProcess};
use switchyard_ovs_harness::require_privileges;

/// Generous deadline for a readiness change (the target is 2 s).
const FLIP: Duration = Duration::from_secs(10);

/// Polls `/readyz` until its status is `want`; returns how long it took and
/// that answer's body.
async fn readyz_becomes(proxy: &ProxyProcess, want: u16, within: Duration) -> (Duration, String) {
    let start = Instant::now();
    let mut last = None;
    loop {
        last = proxy.get("/readyz").await.or(last);
        if let Some((status, body)) = &last
            && *status == want
        {
            return (start.elapsed(), body.clone());
        }
        assert!(
            start.elapsed() < within,
            "/readyz not {want} within {within:?}: {last:?}\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGCONT to a stopped ovsdb-server when dropped (a failing test must
/// not leave it stopped: the harness could not stop it).
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_ovsdb_server() {
    if !require_privileges("readyz_follows_ovsdb_server") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let (_, body) = readyz_becomes(&proxy, 200, Duration::from_secs(60)).await;
    for condition in ["ovsdb", "openflow", "initial-sync"] {
        assert!(body.contains(&format!("[+]{condition} ok")), "{body}");
    }

    // SIGSTOP: connections stay open, nothing answers.
    let pid = node.ovs.ovsdb_pid().expect("ovsdb-server pid");
    signal(pid, "STOP");
    let resume = Continue(pid);
    let (took, body) = readyz_becomes(&proxy, 503, FLIP).await;
    println!("proxy /readyz false {took:?} after SIGSTOP of ovsdb-server");
    assert!(body.contains("[-]ovsdb:"), "{body}");
    // Liveness is about the proxy's own loops, not OVSDB.
    assert_eq!(proxy.get("/healthz").await.map(|r| r.0), Some(200));
    drop(resume);
    let (took, _) = readyz_becomes(&proxy, 200, FLIP).await;
    println!("proxy /readyz true {took:?} after SIGCONT");

    // Stopped for good, then started again on the same database.
    node.ovs.stop_ovsdb();
    let (took, _) = readyz_becomes(&proxy, 503, FLIP).await;
    println!("proxy /readyz false {took:?} after ovsdb-server exited");
    node.ovs.start_ovsdb().expect("ovsdb-server starts again");
    let (took, _) = readyz_becomes(&proxy, 200, Duration::from_secs(30)).await;
    println!("proxy /readyz true {took:?} after ovsdb-server started again");
}
