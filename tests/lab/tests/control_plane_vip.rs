//! The lab's apiserver relay (`switchyard-lab apiserver-relay`, `relay.rs`), the apiserver of
//! a control-plane node for `switchyard-cpvip`: kubectl reaches the lab API server through
//! it over TLS verified with the VIP as the server name; its `/readyz` answers 200, 500
//! (`fail`, still relaying), nothing (`hang`), and `die` ends the process (connections
//! refused). The netns lab with relays on the nodes (`up --control-planes`):
//! `control_plane_vip_lab.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};

const VIP: &str = "198.51.100.10";

fn pki(dir: &Path) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![VIP.to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("relay.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("relay.key"), key.serialize_pem()).unwrap();
}

/// What `GET /readyz` through the relay answers (kubectl, the VIP as the verified name):
/// Some(200), Some(500), or None when no answer came within 2 s.
fn readyz(dir: &Path, _addr: SocketAddr) -> Option<u16> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(["--request-timeout=2s", "get", "--raw", "/readyz"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Some(200)
    } else if err.contains("readyz check failed") || err.contains("500") {
        Some(500)
    } else {
        eprintln!("readyz: {err}");
        None
    }
}

fn kubectl_get_nodes(dir: &Path, addr: SocketAddr) -> std::process::Output {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\n    tls-server-name: {VIP}\nusers:\n- name: lab\n  user:\n    token: lab\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: lab}}\ncurrent-context: lab\n",
            dir.join("ca.pem").display()
        ),
    )
    .unwrap();
    Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["--request-timeout=10s", "get", "nodes"])
        .output()
        .unwrap()
}

/// Kills the relay process when the test ends, passed or not.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mode(control: SocketAddr, m: &str) {
    let out = Command::new("curl")
        .args(["-s", "-X", "PUT", "--max-time", "5", "--data", m])
        .arg(format!("http://{control}/mode"))
        .output()
        .unwrap();
    assert!(out.status.success() || m == "die", "PUT /mode {m}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_relay_serves_kubectl_and_switches_readyz_hang_and_die() {
    let server = ApiServer::start(ApiServerOptions::default()).await.unwrap();
    let upstream: SocketAddr = server
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control_addr = control.local_addr().unwrap();
    drop(control);
    let ready = dir.path().join("ready");
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_switchyard-lab"))
            .arg("apiserver-relay")
            .args(["--listen", "127.0.0.1:0"])
            .arg(format!("--upstream={upstream}"))
            .arg(format!("--cert={}", dir.path().join("relay.pem").display()))
            .arg(format!("--key={}", dir.path().join("relay.key").display()))
            .arg(format!("--control={control_addr}"))
            .arg(format!("--ready-file={}", ready.display()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = loop {
        if let Ok(t) = std::fs::read_to_string(&ready)
            && let Ok(a) = t.trim().parse()
        {
            break a;
        }
        assert!(Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = dir.path();
    tokio::task::block_in_place(|| {
        let out = kubectl_get_nodes(d, addr);
        assert!(out.status.success(), "kubectl through the relay: {out:?}");
        assert_eq!(readyz(d, addr), Some(200));

        mode(control_addr, "fail");
        assert_eq!(readyz(d, addr), Some(500));
        let out = kubectl_get_nodes(d, addr);
        assert!(
            out.status.success(),
            "still relaying while failing /readyz: {out:?}"
        );

        mode(control_addr, "hang");
        assert_eq!(readyz(d, addr), None, "a hung relay answers nothing");

        mode(control_addr, "ok");
        assert_eq!(readyz(d, addr), Some(200));

        mode(control_addr, "die");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert!(!status.success());
                break;
            }
            assert!(Instant::now() < deadline, "relay still running after die");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "connections refused after die"
        );
    });
}
