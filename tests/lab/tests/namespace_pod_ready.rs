//! Issue 16's figure "namespace created -> first pod Ready: overhead over a plain
//! namespace" (goal: < 1 s at p99), measured on the multi-node lab (`switchyard-lab up
//! --fabric`, real OVS, agents and CNI binary, `switchyard-controller` on the host).
//!
//! One sample: a namespace and a pod in it applied together (`kubectl apply` of both),
//! then the time until the pod is Running and Ready (polled with kubectl, about 0.1 s
//! resolution). Plain namespaces and dedicated ones (`switchyard.io/network: dedicated`:
//! the controller must create the Segment and annotate the namespace, every agent must
//! apply the Segment, before the pod's CNI ADD can finish) alternate, on alternating
//! nodes. Printed: p50, p99 and max of each and the dedicated minus plain overhead.
//!
//! A measurement, not a CI test: `cargo test -p switchyard-lab --test
//! namespace_pod_ready -- --ignored --nocapture` (`SWITCHYARD_BENCH_SAMPLES`, default 20
//! of each; figures in docs/benchmarks.md). Needs what `namespace_isolation.rs` needs.

mod lab_support;
mod nsnet_support;

use std::time::{Duration, Instant};

use lab_support::*;
use nsnet_support::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
#[ignore = "a measurement: see the module docs"]
fn namespace_network_overhead_on_the_first_pod_ready() {
    if !privileged("namespace_network_overhead_on_the_first_pod_ready") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let samples: usize = std::env::var("SWITCHYARD_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    let _diag = DiagnosticsOnPanic(&lab, "this measurement");
    apply_crds(&lab);
    let _controller = start_controller(
        &lab,
        &[
            "--namespace-vlans",
            "1000-1999",
            "--namespace-supernet",
            "10.64.0.0/16",
            "--namespace-subnet-prefix",
            "26",
        ],
    );
    // One dedicated namespace first, so the controller is leading before sampling.
    lab.apply(&(namespace("warmup") + &pod("warmup", "w", "node1")));
    wait_running_in(&lab, "warmup", "w", Duration::from_secs(120));

    let mut plain = Vec::new();
    let mut dedicated = Vec::new();
    for i in 0..samples {
        let node = ["node1", "node2"][i % 2];
        for kind in ["plain", "dedicated"] {
            let ns = format!("{kind}-{i}");
            let manifest = if kind == "plain" {
                format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n")
            } else {
                namespace(&ns)
            } + &pod(&ns, "p", node);
            let started = Instant::now();
            lab.apply(&manifest);
            wait_running_in(&lab, &ns, "p", Duration::from_secs(120));
            let took = started.elapsed();
            if kind == "plain" {
                plain.push(took);
            } else {
                dedicated.push(took);
            }
        }
    }
    plain.sort();
    dedicated.sort();
    let row = |name: &str, v: &[Duration]| {
        println!(
            "{name:>9}: p50 {:.2?}  p99 {:.2?}  max {:.2?}  ({} samples)",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1],
            v.len()
        );
    };
    row("plain", &plain);
    row("dedicated", &dedicated);
    let over = |p| percentile(&dedicated, p).saturating_sub(percentile(&plain, p));
    println!(
        "namespace network overhead on the first pod Ready: p50 {:.2?}, p99 {:.2?} (goal < 1 s at p99); ratio of p99s {:.2}",
        over(0.5),
        over(0.99),
        percentile(&dedicated, 0.99).as_secs_f64() / percentile(&plain, 0.99).as_secs_f64()
    );
}
