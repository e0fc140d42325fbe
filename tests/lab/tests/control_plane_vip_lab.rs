//! The control-plane VIP in the netns lab (issue 15's tests 1, 6 and 8): `switchyard-lab up
//! --control-planes 3` on 4 nodes with the fabric: an apiserver relay (TLS, the VIP in its
//! certificate) and `switchyard-cpvip` on node1..node3, the lab API server keeping
//! `default/kubernetes` from the relays' endpoint Leases, the cpvip leader writing the VIP's
//! ECMP route into the fabric through the fabric API.
//!
//! Needs root, OVS, curl, kubectl, setpriv and the binaries built (`cargo build --workspace
//! --bins`); fails with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1.
//! `cargo test -p switchyard-lab --test control_plane_vip_lab` (about 2 minutes); the
//! repeated rolling restart of docs/benchmarks.md: `-- --ignored --nocapture`.

mod lab_support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use switchyard_lab::cluster::control_plane::{self as cp, ControlPlaneInfo};
use switchyard_lab::cluster::state::LabInfo;

/// The internet namespace's address on its link to the fabric (the source of its connections).
const INTERNET_CLIENT: &str = "198.51.100.2";
const ROUTE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a relay fails `/readyz` before it stops (issue 15, test 8).
const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

struct CpLab {
    lab: Lab,
    info: LabInfo,
    cp: ControlPlaneInfo,
    internet: String,
}

fn up(nodes: usize, extra: &[&str]) -> CpLab {
    sibling_binary("switchyard-cpvip", "switchyard-cpvip");
    let started = Instant::now();
    let mut args = vec![
        "--fabric",
        "--vlans",
        "100",
        "--control-planes",
        "3",
        "--no-agent",
        "--no-proxy",
    ];
    args.extend_from_slice(extra);
    let lab = Lab::up(nodes, &args);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let info = lab.info();
    let cp = info.control_planes.clone().expect("control planes");
    let internet = info.fabric.as_ref().unwrap().internet_netns.clone();
    CpLab {
        lab,
        info,
        cp,
        internet,
    }
}

impl CpLab {
    fn addr(&self, node: &str) -> Ipv4Addr {
        self.info.node(node).unwrap().address
    }

    fn hops(&self) -> Vec<Ipv4Addr> {
        cp::fabric_next_hops(&self.info, self.cp.vip)
    }

    fn want(&self, nodes: &[&str]) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = nodes.iter().map(|n| self.addr(n)).collect();
        v.sort();
        v
    }

    /// Waits until the fabric routes the VIP over exactly `nodes`; returns how long it took.
    fn route(&self, nodes: &[&str], what: &str) -> Duration {
        let start = Instant::now();
        let want = self.want(nodes);
        eventually(what, ROUTE_DEADLINE, || (self.hops() == want).then_some(()));
        start.elapsed()
    }

    /// The route stays over exactly `nodes` for `how_long`.
    fn route_stays(&self, nodes: &[&str], how_long: Duration, what: &str) {
        let want = self.want(nodes);
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            assert_eq!(self.hops(), want, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `node` holds the VIP on `lo`.
    fn vip_on_lo(&self, node: &str) -> bool {
        let netns = &self.info.node(node).unwrap().netns;
        let out = in_netns(netns, &["ip", "-o", "addr", "show", "dev", "lo"]);
        let want = format!("{}/32", self.cp.vip);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w == want)
    }

    /// `PUT /mode` on a relay's switches (`die` ends it).
    fn relay_mode(&self, node: &str, mode: &str) {
        let out = Command::new("curl")
            .args(["-sS", "-X", "PUT", "--max-time", "5", "--data", mode])
            .arg(format!(
                "http://{}:{}/mode",
                self.addr(node),
                cp::RELAY_CONTROL_PORT
            ))
            .output()
            .unwrap();
        // `die` ends the process before it answers.
        assert!(
            out.status.success() || mode == "die",
            "PUT /mode {mode}: {out:?}"
        );
    }

    /// Connections from the internet client a relay accepted so far.
    fn relay_connections(&self, node: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!(
                "http://{}:{}/connections",
                self.addr(node),
                cp::RELAY_CONTROL_PORT
            ))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("GET /connections of {node}: {e}: {out:?}"));
        v[INTERNET_CLIENT].as_u64().unwrap_or(0)
    }

    /// Waits until the relay of `node` is stopped (its pid recorded as `relay NODE` gone).
    fn wait_relay_stopped(&self, node: &str) {
        let what = format!("relay {node}");
        eventually(&format!("{what} exits"), ROUTE_DEADLINE, || {
            self.lab
                .recorded_pids()
                .iter()
                .filter(|(_, w)| *w == what)
                .all(|(pid, _)| !alive(*pid))
                .then_some(())
        });
    }

    /// The last lines of every control plane's `switchyard-cpvip` log.
    fn cpvip_logs(&self) -> String {
        self.info
            .nodes
            .iter()
            .map(|n| {
                let log = self.lab.state.node_dir(&n.name).join("cpvip.log");
                format!(
                    "=== {} cpvip log\n{}\n",
                    n.name,
                    switchyard_lab::cluster::sys::tail(&log, 40)
                )
            })
            .collect()
    }

    fn restart_relay(&self, node: &str) {
        cp::start_relay(&self.lab.state, &self.info, self.info.node(node).unwrap())
            .unwrap_or_else(|e| panic!("restarting the relay of {node}: {e}"));
    }

    /// kubectl through `https://VIP:6443` from `netns`, the certificate verified.
    fn kubectl_via_vip(&self, netns: &str, args: &[&str]) -> std::process::Output {
        let kubeconfig = cp::vip_kubeconfig_path(&self.lab.state);
        let mut all = vec![
            "kubectl",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--request-timeout=10s",
        ];
        all.extend_from_slice(args);
        in_netns(netns, &all)
    }

    /// New TLS connections from the internet namespace to `https://VIP:6443/version`, each
    /// its own connection (`Connection: close`), `rate` per second, until killed.
    fn load(&self, rate: u32, count: u32) -> Load {
        let url = format!("{}/version?n=[1-{count}]", self.cp.vip_url());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.internet, "curl", "-s"])
            .arg("--rate")
            .arg(format!("{rate}/s"))
            .arg("--cacert")
            .arg(&self.cp.ca)
            .args(["--connect-timeout", "3", "--max-time", "5"])
            .args(["-H", "Connection: close", "-o", "/dev/null"])
            // One line per connection on stderr, which curl does not buffer (a stopped
            // load loses nothing).
            .args(["-w", "%{stderr}%{http_code} %{num_connects} %{errormsg}\\n"])
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load(Some(child))
    }
}

/// A running load (curl), killed on drop.
struct Load(Option<Child>);

/// What a load saw: connections made, and the failed ones (`code connects error`).
struct LoadResult {
    total: usize,
    failed: Vec<String>,
}

impl Load {
    /// Stops the load (SIGTERM) and reads what it saw.
    fn stop(self) -> LoadResult {
        let child = self.0.as_ref().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }

    /// Waits until the load has made all its connections and reads what it saw.
    fn wait(mut self) -> LoadResult {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        LoadResult {
            total: lines.len(),
            failed: lines
                .iter()
                .filter(|l| !l.starts_with("200 1"))
                .map(|l| l.to_string())
                .collect(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A rolling restart of the relays of `nodes` under the load: each fails `/readyz`, stops
/// [`SHUTDOWN_DELAY`] later (not before it left the route), is started again and is back in
/// the route before the next one. Returns, per relay, how long its leaving the route took.
fn rolling_restart(l: &CpLab, nodes: &[&str]) -> Vec<Duration> {
    let all = ["node1", "node2", "node3"];
    let mut took = Vec::new();
    for node in nodes {
        let rest: Vec<&str> = all.iter().copied().filter(|n| n != node).collect();
        let failed_at = Instant::now();
        l.relay_mode(node, "fail");
        took.push(l.route(&rest, &format!("{node} failing /readyz leaves the route")));
        if let Some(left) = SHUTDOWN_DELAY.checked_sub(failed_at.elapsed()) {
            // The scenario's shutdown delay (kube-apiserver's --shutdown-delay-duration).
            std::thread::sleep(left);
        }
        l.relay_mode(node, "die");
        l.wait_relay_stopped(node);
        l.restart_relay(node);
        l.route(&all, &format!("{node} back in the route after its restart"));
    }
    took
}

/// Issue 15, tests 1, 6 and 8 on one lab (4 nodes, node1..node3 control planes):
/// 1. `kubectl --server https://VIP:6443 get nodes` from the internet namespace (the
///    certificate verified); 300 new connections reach each relay at least 20% of the time.
/// 6. node4 runs a relay (so it is ready in `default/kubernetes` and passes the leader's
///    probe) and a `switchyard-cpvip` without CAP_NET_ADMIN, which cannot put the VIP on
///    `lo`: never routed. Stopping the relay of the cpvip leader (node1 in practice, the
///    first to start): the node leaves the route before its VIP goes (never the VIP gone
///    while routed), and its host still reaches the API through the VIP afterwards (over
///    the fabric to the other two).
/// 8. A rolling restart of the three relays, each failing `/readyz` 5 s before it stops,
///    under 20 new connections/s from the internet: no connection fails.
#[test]
fn control_plane_vip_in_the_netns_lab() {
    if !privileged("control_plane_vip_in_the_netns_lab") {
        return;
    }
    let l = up(4, &[]);
    let _diag = DiagnosticsOnPanic(&l.lab, "this test");
    let internet = l.internet.clone();

    // `default/kubernetes` lists the three relays (their endpoint Leases).
    let slice = |l: &CpLab| -> Vec<String> {
        let out = l.lab.kubectl_ok(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[0]}",
        ]);
        let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        v.sort();
        v
    };
    let addrs = |nodes: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = nodes.iter().map(|n| l.addr(n).to_string()).collect();
        v.sort();
        v
    };
    eventually("the slice lists the three relays", ROUTE_DEADLINE, || {
        (slice(&l) == addrs(&["node1", "node2", "node3"])).then_some(())
    });
    l.route(
        &["node1", "node2", "node3"],
        "route over the three control planes",
    );
    for n in ["node1", "node2", "node3"] {
        assert!(l.vip_on_lo(n), "{n} holds the VIP");
    }
    assert!(!l.vip_on_lo("node4"));

    // 1. kubectl through the VIP from the internet, certificate verified against the CA.
    let out = l.kubectl_via_vip(&internet, &["get", "nodes", "-o", "name"]);
    let text = check("kubectl get nodes through the VIP", out);
    for n in ["node1", "node2", "node3", "node4"] {
        assert!(text.contains(&format!("node/{n}")), "{text}");
    }
    let before: BTreeMap<&str, u64> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| (*n, l.relay_connections(n)))
        .collect();
    let spread = l.load(1000, 300).wait();
    assert_eq!(spread.total, 300);
    assert!(spread.failed.is_empty(), "failed: {:?}", spread.failed);
    let counts: BTreeMap<&str, u64> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| (*n, l.relay_connections(n) - before[n]))
        .collect();
    eprintln!("300 connections through the VIP: {counts:?}");
    for (n, c) in &counts {
        assert!(*c >= 60, "{n} got {c} of 300 connections: {counts:?}");
    }

    // 6a. node4: a relay (ready in the slice) and a daemon that cannot hold the VIP.
    let cpvip = sibling_binary("switchyard-cpvip", "switchyard-cpvip");
    let node4 = l.info.node("node4").unwrap().clone();
    cp::start_relay(&l.lab.state, &l.info, &node4).unwrap();
    cp::start_cpvip_with(
        &l.lab.state,
        &l.info,
        &node4,
        &cpvip,
        &[
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
        ],
    )
    .unwrap();
    eventually("node4 ready in default/kubernetes", ROUTE_DEADLINE, || {
        (slice(&l) == addrs(&["node1", "node2", "node3", "node4"])).then_some(())
    });
    let log = l.lab.state.node_dir("node4").join("cpvip.log");
    eventually(
        "node4's daemon fails to put the VIP on lo",
        ROUTE_DEADLINE,
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("adding the VIP to lo")
                .then_some(())
        },
    );
    l.route_stays(
        &["node1", "node2", "node3"],
        Duration::from_secs(8),
        "node4 cannot hold the VIP: never routed",
    );
    assert!(!l.vip_on_lo("node4"));

    // 6b. The relay of the cpvip leader stops (issue: node1's; the leader's is the harder
    // case: it reaches the API only through that relay): out of the route first, then its
    // VIP goes, and its host still reaches the API through the VIP.
    let leader = l
        .lab
        .kubectl_ok(&[
            "get",
            "controlplanevip",
            cp::CPVIP_NAME,
            "-o",
            "jsonpath={.status.leader}",
        ])
        .trim()
        .to_string();
    let victim: &str = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| *n == leader)
        .unwrap_or_else(|| panic!("the leader {leader:?} is not a control plane"));
    let rest: Vec<&str> = ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != victim)
        .collect();
    let addr = l.addr(victim);
    l.relay_mode(victim, "die");
    let stopped = Instant::now();
    let mut left_route = None;
    eventually(
        &format!("{victim} drops the VIP"),
        Duration::from_secs(40),
        || {
            // The VIP first: once gone it stays gone (the relay is dead), so a route still
            // over the node read afterwards is one over a node without the VIP.
            let holding = l.vip_on_lo(victim);
            let routed = l.hops().contains(&addr);
            assert!(
                holding || !routed,
                "{victim} lost the VIP while still routed: {:?}\n{}",
                l.hops(),
                l.cpvip_logs()
            );
            if !routed && left_route.is_none() {
                left_route = Some(stopped.elapsed());
            }
            (!holding).then_some(())
        },
    );
    eprintln!(
        "{victim}'s relay stopped ({victim} the leader): out of the route after {:?}, VIP removed after {:?}",
        left_route,
        stopped.elapsed()
    );
    l.route(&rest, "route over the other two");
    let victim_ns = l.info.node(victim).unwrap().netns.clone();
    let text = eventually(
        &format!("{victim}'s host reaches the API through the VIP"),
        ROUTE_DEADLINE,
        || {
            let out = l.kubectl_via_vip(&victim_ns, &["get", "nodes", "-o", "name"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert!(text.contains("node/node1"), "{text}");
    l.restart_relay(victim);
    l.route(
        &["node1", "node2", "node3"],
        "the stopped relay back after its restart",
    );

    // 8. Rolling restart under 20 new connections/s: no connection fails.
    let accepted = || -> u64 {
        ["node1", "node2", "node3"]
            .iter()
            .map(|n| l.relay_connections(n))
            .sum()
    };
    let before = accepted();
    let load = l.load(20, 100_000);
    eventually("the load runs", ROUTE_DEADLINE, || {
        (accepted() > before + 20).then_some(())
    });
    let took = rolling_restart(&l, &["node1", "node2", "node3"]);
    let result = load.stop();
    eprintln!(
        "rolling restart: {} connections, {} failed {:?}; failing /readyz to out of the route: {took:?}",
        result.total,
        result.failed.len(),
        result.failed
    );
    assert!(
        result.total > 100,
        "the load made {} connections",
        result.total
    );
    assert!(
        result.failed.is_empty(),
        "{} of {} connections failed during the rolling restart: {:?}",
        result.failed.len(),
        result.total,
        result.failed
    );
}

/// The figures of docs/benchmarks.md in the netns lab: `rounds` rolling restarts of the three
/// relays under 20 new connections/s (failed connections), and the time from a relay failing
/// `/readyz` to the fabric's route without it (p50/p99/max).
/// `[ROUNDS=5] [PINNING=0] cargo test -p switchyard-lab --test control_plane_vip_lab -- --ignored --nocapture`
#[test]
#[ignore = "benchmark (about 5 minutes)"]
fn rolling_restart_repeated() {
    if !privileged("rolling_restart_repeated") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    // PINNING=0: the fabric's plain stateless ECMP (in-flight connections move at route
    // changes), for comparison.
    let stateless = std::env::var("PINNING").is_ok_and(|v| v == "0");
    let l = up(
        3,
        if stateless {
            &["--no-flow-pinning"]
        } else {
            &[]
        },
    );
    let _diag = DiagnosticsOnPanic(&l.lab, "this test");
    l.route(
        &["node1", "node2", "node3"],
        "route over the three control planes",
    );
    let load = l.load(20, 1_000_000);
    let mut took = Vec::new();
    for round in 0..rounds {
        took.extend(rolling_restart(&l, &["node1", "node2", "node3"]));
        eprintln!("round {} done", round + 1);
    }
    let result = load.stop();
    took.sort();
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    eprintln!(
        "fabric flow pinning: {}\n{rounds} rolling restarts: {} connections, {} failed {:?}\nfailing /readyz to out of the route over {} restarts: p50 {:?} p99 {:?} max {:?}",
        !stateless,
        result.total,
        result.failed.len(),
        result.failed,
        took.len(),
        p(0.5),
        p(0.99),
        took.last().unwrap()
    );
}
