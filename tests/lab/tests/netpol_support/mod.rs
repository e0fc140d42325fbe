//! The NetworkPolicy truth table in the lab: namespaces x, y, z with pods a, b, c each
//! (labels `ns=<ns>`, `pod=<pod>`), every pod serving TCP and UDP on ports 80 and 81 (named
//! `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`, `serve-81-udp`), placed round-robin on the
//! lab's nodes; probes from every pod to every pod run in parallel (one thread per probe, in
//! the source pod's netns), and a matrix is polled until it equals the expected one or a
//! deadline passes (policy flows are installed asynchronously), then printed as a truth table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::lab_support::*;

/// The namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// A pod of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct P {
    /// Namespace.
    pub ns: &'static str,
    /// Pod.
    pub pod: &'static str,
}

impl std::fmt::Display for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

/// Every pod of the table, in order.
pub fn all() -> Vec<P> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| P { ns, pod }))
        .collect()
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: connected (SYN answered).
    Tcp,
    /// UDP: a datagram answered.
    Udp,
}

/// One probe: protocol and port.
pub type Probe = (Proto, u16);

/// TCP 80 and UDP 80.
pub const PORT_80: [Probe; 2] = [(Proto::Tcp, 80), (Proto::Udp, 80)];

/// The table's lab: the pods' addresses and netns.
pub struct Table {
    /// The lab.
    pub lab: Lab,
    /// Pod addresses.
    pub ips: BTreeMap<P, String>,
}

/// The manifest of the namespaces and pods (`extra` manifest appended).
pub fn manifest(nodes: usize) -> String {
    let mut m = String::new();
    for ns in NAMESPACES {
        m.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{ns}\"\n  labels:\n    ns: \"{ns}\"\n---\n"
        ));
    }
    for (i, p) in all().into_iter().enumerate() {
        let node = i % nodes + 1;
        m.push_str(&pod_manifest(p.ns, p.pod, &format!("node{node}"), &[]));
    }
    m
}

/// A pod serving 80 and 81 on TCP and UDP, with `pod=<name>` and more labels/annotations.
pub fn pod_manifest(ns: &str, name: &str, node: &str, annotations: &[(&str, &str)]) -> String {
    let mut a = String::new();
    if !annotations.is_empty() {
        a.push_str("  annotations:\n");
        for (k, v) in annotations {
            a.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    let mut ports = String::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP"] {
            ports.push_str(&format!(
                "    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {proto}\n",
                proto.to_lowercase()
            ));
        }
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\n  namespace: \"{ns}\"\n  labels:\n    pod: \"{name}\"\n{a}spec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n{ports}---\n"
    )
}

impl Table {
    /// Brings up the namespaces and pods in `lab` and waits for them.
    pub fn new(lab: Lab, nodes: usize) -> Table {
        lab.apply(&manifest(nodes));
        let ips = all()
            .into_iter()
            .map(|p| {
                (
                    p,
                    wait_running_in(&lab, p.ns, p.pod, Duration::from_secs(120)),
                )
            })
            .collect();
        Table { lab, ips }
    }

    /// The netns of a pod.
    pub fn netns(&self, p: P) -> String {
        self.lab.info().pod_netns(p.ns, p.pod)
    }

    /// Probes every pair for every probe, in parallel.
    pub fn probe_all(&self, probes: &[Probe]) -> BTreeMap<(P, P, Probe), bool> {
        let info = self.lab.info();
        let mut handles = Vec::new();
        for from in all() {
            for to in all() {
                for probe in probes {
                    let netns = info.pod_netns(from.ns, from.pod);
                    let addr: SocketAddr =
                        format!("{}:{}", self.ips[&to], probe.1).parse().unwrap();
                    let probe = *probe;
                    handles.push((
                        (from, to, probe),
                        std::thread::spawn(move || probe_from(&netns, probe.0, addr)),
                    ));
                }
            }
        }
        handles
            .into_iter()
            .map(|(k, h)| (k, h.join().unwrap_or(false)))
            .collect()
    }

    /// Polls until the matrix equals `expect(from, to, probe)` (a pod always reaches itself);
    /// panics with the truth table after `deadline`.
    pub fn expect(
        &self,
        case: &str,
        probes: &[Probe],
        deadline: Duration,
        expect: impl Fn(P, P, Probe) -> bool,
    ) {
        let end = Instant::now() + deadline;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let got = self.probe_all(probes);
            let wrong: Vec<_> = got
                .iter()
                .filter(|((f, t, p), ok)| **ok != (f == t || expect(*f, *t, *p)))
                .collect();
            if wrong.is_empty() {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "case {case:?}: {} of {} probes differ after {rounds} rounds\n{}{}",
                    wrong.len(),
                    got.len(),
                    truth_table(&got, probes, &|f, t, p| f == t || expect(f, t, p)),
                    diagnostics(&self.lab)
                );
            }
        }
    }

    /// kubectl apply.
    pub fn apply(&self, manifest: &str) {
        self.lab.apply(manifest);
    }

    /// Deletes every NetworkPolicy and waits until every pair reaches every other.
    pub fn reset(&self, probes: &[Probe]) {
        for ns in NAMESPACES {
            self.lab
                .kubectl_ok(&["-n", ns, "delete", "networkpolicy", "--all"]);
        }
        self.expect(
            "reset: no policy",
            probes,
            Duration::from_secs(30),
            |_, _, _| true,
        );
    }
}

/// The upstream-style truth table: one block per probe, rows = from, columns = to, `.`
/// reached, `X` not reached, a mismatch marked `!` (reached, expected not) or `?` (not
/// reached, expected to).
pub fn truth_table(
    got: &BTreeMap<(P, P, Probe), bool>,
    probes: &[Probe],
    expect: &dyn Fn(P, P, Probe) -> bool,
) -> String {
    let mut out = String::new();
    for probe in probes {
        out.push_str(&format!(
            "\n{:?} {} (. reached, X blocked, ! reached but expected blocked, ? blocked but expected reached)\n     ",
            probe.0, probe.1
        ));
        for to in all() {
            out.push_str(&format!(" {to}"));
        }
        out.push('\n');
        for from in all() {
            out.push_str(&format!("{from}  "));
            for to in all() {
                let ok = got.get(&(from, to, *probe)).copied().unwrap_or(false);
                let want = expect(from, to, *probe);
                let c = match (ok, want) {
                    (true, true) => '.',
                    (false, false) => 'X',
                    (true, false) => '!',
                    (false, true) => '?',
                };
                out.push_str(&format!("  {c} "));
            }
            out.push('\n');
        }
    }
    out
}

/// One probe from inside `netns` (a thread of its own enters it; the caller's stays).
pub fn probe_from(netns: &str, proto: Proto, addr: SocketAddr) -> bool {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        if nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return false;
        }
        probe(proto, addr, Duration::from_millis(1500))
    })
    .join()
    .unwrap_or(false)
}

/// One probe in the calling thread's netns.
pub fn probe(proto: Proto, addr: SocketAddr, timeout: Duration) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&addr, timeout).is_ok(),
        Proto::Udp => {
            let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = sock.set_read_timeout(Some(timeout / 2));
            let mut buf = [0u8; 256];
            // Two tries: one lost datagram is not a policy.
            for _ in 0..2 {
                if sock.send_to(b"probe\n", addr).is_err() {
                    return false;
                }
                if sock.recv_from(&mut buf).is_ok() {
                    return true;
                }
            }
            false
        }
    }
}

/// Sends an HTTP request on `conn` and returns the answer's body (the server's name).
pub fn http_body(mut conn: TcpStream) -> Option<String> {
    use std::io::Write;
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    conn.read_to_string(&mut s).ok()?;
    s.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string())
}
