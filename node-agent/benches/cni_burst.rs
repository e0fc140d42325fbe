//! 100 pods started at once on one node, through the REAL binaries: the
//! `switchyard-agent` process (release) and the `switchyard` CNI binary as
//! libcni runs it, against Debian's reference `bridge` + `host-local` doing
//! the same 100 ADDs at once in the same run. Then the agent's memory once
//! the pods are up and it is idle.
//!
//! `cargo bench -p switchyard-agent --bench cni_burst` (as root, with
//! openvswitch-switch and containernetworking-plugins installed).
//! `SY_BENCH_PODS` overrides the 100 pods; `SY_BENCH_IDLE_SECS` the 10 s
//! the agent idles before its memory is read.
//!
//! Prints per plugin: ADDs that failed (the bench never retries: a failed
//! ADD is counted, not hidden), ADD p50/p99/max and p99/p50, DEL likewise;
//! the agent's log lines at WARN or ERROR and those naming a retry; the
//! agent's RSS (VmRSS), peak (VmHWM) and threads before the pods, after
//! the ADDs once idle, and after the DELs.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support_cni/mod.rs"]
mod support_cni;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::Value;
use support::*;
use support_cni::{Invocation, build_release_cni, load, pct, reference_conf};

#[derive(Clone)]
struct PodRef {
    container_id: String,
    netns: String,
    args: String,
}

/// Runs `command` for every pod at once (one thread each, released
/// together); returns the sorted latencies and the failures.
fn burst(
    bin: &Path,
    conf: &Value,
    run_in: Option<PathBuf>,
    ifname: &'static str,
    command: &'static str,
    pods: &[PodRef],
) -> (Vec<Duration>, Vec<String>) {
    let barrier = Arc::new(Barrier::new(pods.len()));
    let threads: Vec<_> = pods
        .iter()
        .cloned()
        .map(|pod| {
            let (bin, conf, run_in, barrier) = (
                bin.to_path_buf(),
                conf.clone(),
                run_in.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                if let Some(path) = run_in {
                    let f = std::fs::File::open(path).unwrap();
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                }
                barrier.wait();
                Invocation {
                    bin: &bin,
                    command,
                    container_id: &pod.container_id,
                    netns: &pod.netns,
                    ifname,
                    args: &pod.args,
                    conf: &conf,
                }
                .try_run()
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for t in threads {
        match t.join().unwrap() {
            Ok(d) => ok.push(d),
            Err(e) => failed.push(e),
        }
    }
    ok.sort();
    (ok, failed)
}

/// VmRSS, VmHWM (MiB) and threads of a process.
fn memory(pid: u32) -> (f64, f64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:") as f64 / 1024.0,
        field("VmHWM:") as f64 / 1024.0,
        field("Threads:"),
    )
}

fn row(name: &str, verb: &str, sorted: &[Duration], failed: usize) -> String {
    if sorted.is_empty() {
        return format!("| {name} | {verb} | {failed} failed | - | - | - | - |");
    }
    let (p50, p99) = (pct(sorted, 0.5), pct(sorted, 0.99));
    format!(
        "| {name} | {verb} | {} ok, {failed} failed | {p50:.1} | {p99:.1} | {:.1} | {:.2} |",
        sorted.len(),
        pct(sorted, 1.0),
        p99 / p50
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env_num = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let pods_n = usize::try_from(env_num("SY_BENCH_PODS", 100)).unwrap();
    let idle = Duration::from_secs(env_num("SY_BENCH_IDLE_SECS", 10));
    let cni = build_release_cni();
    node_test("cni_burst", move |lab| async move {
        let agent = AgentProcess::start(&lab, "agent.log").await;
        let pid = agent.child.id();
        let mut pods = Vec::new();
        for i in 0..pods_n {
            let name = format!("burst{i}");
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
        // Let the agent settle (its watches listed the pods) before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mem_start = memory(pid);
        let scratch = switchyard_ovs_harness::Netns::new("syref").unwrap();
        let ref_conf = reference_conf(&lab.dir.path().join("host-local"));
        let sy_conf = lab.conflist();
        let scratch_path = scratch.path();
        let load_before = load();
        let (sy_add, ref_add) = {
            let (refs, cni, sy_conf, ref_conf, scratch_path) = (
                refs.clone(),
                cni.clone(),
                sy_conf.clone(),
                ref_conf.clone(),
                scratch_path.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let sy = burst(&cni, &sy_conf, None, "eth0", "ADD", &refs);
                let reference = burst(
                    Path::new("/usr/lib/cni/bridge"),
                    &ref_conf,
                    Some(scratch_path),
                    "net1",
                    "ADD",
                    &refs,
                );
                (sy, reference)
            })
            .await
            .unwrap()
        };
        let load_adds = load();
        tokio::time::sleep(idle).await;
        let mem_idle = memory(pid);
        let (sy_del, ref_del) = {
            let (refs, cni, scratch_path) = (refs.clone(), cni.clone(), scratch_path.clone());
            tokio::task::spawn_blocking(move || {
                let sy = burst(&cni, &sy_conf, None, "eth0", "DEL", &refs);
                let reference = burst(
                    Path::new("/usr/lib/cni/bridge"),
                    &ref_conf,
                    Some(scratch_path),
                    "net1",
                    "DEL",
                    &refs,
                );
                (sy, reference)
            })
            .await
            .unwrap()
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mem_after = memory(pid);
        drop(scratch);
        let log = std::fs::read_to_string(lab.dir.path().join("agent.log")).unwrap_or_default();
        let warn = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        let retries = log
            .lines()
            .filter(|l| l.to_lowercase().contains("retry"))
            .count();

        println!(
            "\n{pods_n} pods at once on one node (ms, plugin process start to exit); load average {load_before} before, {load_adds} after the ADDs, {} at the end:",
            load()
        );
        println!("| plugin | verb | outcome | p50 | p99 | max | p99/p50 |");
        println!("|---|---|---|---|---|---|---|");
        let sy = "switchyard (agent process + OVS netdev)";
        let reference = "reference bridge + host-local";
        println!("{}", row(sy, "ADD", &sy_add.0, sy_add.1.len()));
        println!("{}", row(reference, "ADD", &ref_add.0, ref_add.1.len()));
        println!("{}", row(sy, "DEL", &sy_del.0, sy_del.1.len()));
        println!("{}", row(reference, "DEL", &ref_del.0, ref_del.1.len()));
        if !sy_add.0.is_empty() && !ref_add.0.is_empty() {
            println!(
                "switchyard/reference: ADD p50 {:.2}x, p99 {:.2}x",
                pct(&sy_add.0, 0.5) / pct(&ref_add.0, 0.5),
                pct(&sy_add.0, 0.99) / pct(&ref_add.0, 0.99)
            );
        }
        for e in sy_add.1.iter().chain(&sy_del.1).take(5) {
            println!("failure: {e}");
        }
        println!("agent log: {warn} lines at WARN/ERROR, {retries} naming a retry");
        // What they say, once each (timestamps and fields cut).
        let mut seen = std::collections::BTreeMap::new();
        for l in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            let message: String = l
                .split_once(": ")
                .map_or(l, |(_, m)| m)
                .chars()
                .take(110)
                .collect();
            *seen.entry(message).or_insert(0) += 1;
        }
        for (message, n) in seen {
            println!("  {n} x {message}");
        }
        println!("agent memory (VmRSS MiB / VmHWM MiB / threads):");
        println!(
            "  started, no pods: {:.1} / {:.1} / {}",
            mem_start.0, mem_start.1, mem_start.2
        );
        println!(
            "  {pods_n} pods up, idle {} s: {:.1} / {:.1} / {}",
            idle.as_secs(),
            mem_idle.0,
            mem_idle.1,
            mem_idle.2
        );
        println!(
            "  after the DELs: {:.1} / {:.1} / {}",
            mem_after.0, mem_after.1, mem_after.2
        );
        drop(agent);
    });
}
