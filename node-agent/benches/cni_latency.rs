//! CNI ADD and DEL latency of Switchyard against Debian's reference
//! `bridge` + `host-local` plugins, side by side in one run.
//!
//! `cargo bench -p switchyard-agent --bench cni_latency` (as root, with
//! openvswitch-switch and containernetworking-plugins installed).
//! `SY_BENCH_PODS` overrides the 200 pods.
//!
//! Switchyard: the agent in-process (release build) in a node network
//! namespace running a private ovsdb-server + ovs-vswitchd (userspace
//! datapath), the lab API server, and the REAL `switchyard` binary
//! (release, built by this bench) executed as libcni does. Reference:
//! `/usr/lib/cni/bridge` with `host-local` IPAM in a scratch namespace of its
//! own. Both plug the same 200 pod namespaces (as eth0 and net1), taking
//! turns on chunks of 20 pods so load changes hit both alike: first
//! sequentially (ADD every pod, then DEL every pod), then 8-way parallel.
//! Latency is process start to exit of the plugin, as a runtime sees it.
//!
//! `SY_BENCH_STEPS=1` also runs the `switchyard` binary with
//! `SWITCHYARD_CNI_TIMING` and prints where its time goes (p50 of each
//! step: process start, reading the input, the I/O runtime, connecting,
//! sending, waiting for the agent's reply, printing, exit).

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support_cni/mod.rs"]
mod support_cni;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;
use support_cni::{Invocation, Steps, build_release_cni, load, pct, reference_conf};
use switchyard_agent::Agent;

const PARALLEL: usize = 8;

#[derive(Clone)]
struct Target {
    name: &'static str,
    bin: PathBuf,
    conf: Value,
    /// Network namespace the plugin process runs in (None = the caller's).
    run_in: Option<PathBuf>,
    /// CNI_IFNAME (the two plugins plug the same pods side by side).
    ifname: &'static str,
}

#[derive(Clone)]
struct PodRef {
    container_id: String,
    netns: String,
    args: String,
}

fn enter(netns: &Option<PathBuf>) {
    if let Some(path) = netns {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

/// Runs `command` for every pod with `workers` threads; returns latencies
/// (sorted) and the binary's steps (empty unless `SY_BENCH_STEPS` is set).
fn run_all(
    target: &Target,
    command: &str,
    pods: &[PodRef],
    round: &str,
    workers: usize,
) -> (Vec<Duration>, Vec<Steps>) {
    let timing = std::env::var_os("SY_BENCH_STEPS").is_some();
    let queue = Arc::new(Mutex::new(pods.to_vec()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            let results = results.clone();
            let target = target.clone();
            let command = command.to_string();
            let round = round.to_string();
            std::thread::spawn(move || {
                enter(&target.run_in);
                loop {
                    let Some(pod) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let id = format!("{}{round}", pod.container_id);
                    let invocation = Invocation {
                        bin: &target.bin,
                        command: &command,
                        container_id: &id,
                        netns: &pod.netns,
                        ifname: target.ifname,
                        args: &pod.args,
                        conf: &target.conf,
                    };
                    let (t, steps): (Duration, Steps) = if timing {
                        invocation.run_with_steps()
                    } else {
                        (invocation.run(), Vec::new())
                    };
                    results.lock().unwrap().push((t, steps));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = std::mem::take(&mut *results.lock().unwrap());
    let (mut times, steps): (Vec<Duration>, Vec<Steps>) = v.into_iter().unzip();
    times.sort();
    (times, steps.into_iter().filter(|s| !s.is_empty()).collect())
}

/// One row per step: its p50 and p99 over the invocations (ms).
fn print_steps(title: &str, all: &[Steps]) {
    let Some(first) = all.first() else { return };
    println!("\n{title}, {} invocations (ms):", all.len());
    println!("| step | p50 | p99 |");
    println!("|---|---|---|");
    for (i, (name, _)) in first.iter().enumerate() {
        let mut v: Vec<Duration> = all.iter().filter_map(|s| s.get(i).map(|x| x.1)).collect();
        v.sort();
        println!("| {name} | {:.2} | {:.2} |", pct(&v, 0.5), pct(&v, 0.99));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pods_n: usize = std::env::var("SY_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cni = build_release_cni();
    node_test("cni_latency", move |lab| async move {
        let agent = Agent::start(lab.agent_config(None)).await.expect("agent");
        let mut pods = Vec::new();
        for i in 0..pods_n {
            let name = format!("bench{i}");
            lab.create_pod("default", &name, &[]).await;
            pods.push(PodNs::new("default", &name));
        }
        let refs: Vec<PodRef> = pods
            .iter()
            .map(|p| PodRef {
                container_id: p.container_id.clone(),
                netns: p.netns_path(),
                args: p.cni_args(),
            })
            .collect();
        let scratch = switchyard_ovs_harness::Netns::new("syref").unwrap();
        let ipam_dir = lab.dir.path().join("host-local");
        let targets = [
            Target {
                name: "switchyard (agent + OVS netdev)",
                bin: cni.clone(),
                conf: lab.conflist(),
                run_in: None,
                ifname: "eth0",
            },
            Target {
                name: "reference bridge + host-local",
                bin: PathBuf::from("/usr/lib/cni/bridge"),
                conf: reference_conf(&ipam_dir),
                run_in: Some(scratch.path()),
                ifname: "net1",
            },
        ];
        let load_before = load();
        let runs = tokio::task::spawn_blocking(move || {
            // The two plugins take turns on chunks of pods, so changes in
            // the machine's load hit both alike.
            let chunk = 20;
            let mut rows = Vec::new();
            for (mode, workers) in [("sequential", 1usize), ("8-way parallel", PARALLEL)] {
                let round = if workers == 1 { "s" } else { "p" };
                let mut adds = [Vec::new(), Vec::new()];
                let mut dels = [Vec::new(), Vec::new()];
                let (mut add_steps, mut del_steps) = (Vec::new(), Vec::new());
                for part in refs.chunks(chunk) {
                    for (i, t) in targets.iter().enumerate() {
                        let (times, steps) = run_all(t, "ADD", part, round, workers);
                        adds[i].extend(times);
                        add_steps.extend(steps);
                    }
                }
                for part in refs.chunks(chunk) {
                    for (i, t) in targets.iter().enumerate() {
                        let (times, steps) = run_all(t, "DEL", part, round, workers);
                        dels[i].extend(times);
                        del_steps.extend(steps);
                    }
                }
                print_steps(
                    &format!("switchyard binary's steps, {mode} ADD"),
                    &add_steps,
                );
                print_steps(
                    &format!("switchyard binary's steps, {mode} DEL"),
                    &del_steps,
                );
                for (i, t) in targets.iter().enumerate() {
                    let (mut add, mut del) = (adds[i].clone(), dels[i].clone());
                    add.sort();
                    del.sort();
                    rows.push((mode, t.name, add, del));
                }
            }
            drop(scratch);
            rows
        })
        .await
        .unwrap();
        println!(
            "\nCNI latency, {pods_n} pods (ms), process start to exit; load average {load_before} before, {} after:",
            load()
        );
        println!("| mode | plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
        println!("|---|---|---|---|---|---|");
        for (mode, name, add, del) in &runs {
            println!(
                "| {mode} | {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                pct(add, 0.5),
                pct(add, 0.99),
                pct(del, 0.5),
                pct(del, 0.99)
            );
        }
        for pair in runs.chunks(2) {
            let (mode, _, sa, sd) = &pair[0];
            let (_, _, ra, rd) = &pair[1];
            println!(
                "{mode}: switchyard/reference ADD p50 {:.2}x, p99 {:.2}x; DEL p50 {:.2}x, p99 {:.2}x (below 1 = switchyard faster)",
                pct(sa, 0.5) / pct(ra, 0.5),
                pct(sa, 0.99) / pct(ra, 0.99),
                pct(sd, 0.5) / pct(rd, 0.5),
                pct(sd, 0.99) / pct(rd, 0.99),
            );
        }
        agent.shutdown().await;
    });
}
