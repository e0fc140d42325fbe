//! Times the pure service model at 1k / 10k / 30k Services x 10 endpoints:
//! full build, initial diff, one-Service incremental update (what the
//! watcher does per burst: clone state, recompute the Service, diff it; the
//! clone of the group allocator is bench scaffolding), and a full rebuild +
//! diff after 1% of Services scaled.
//! `MODEL_BENCH_PARTS=1` also prints the cost of the clones alone.
//!
//! `cargo bench -p switchyard-proxy --bench model`
//! (no baseline yet: prints absolute times only).

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard_proxy::fixtures::endpoint;
use switchyard_proxy::objects::Slice;
use switchyard_proxy::service_model::{group_slices, service_port_states};
use switchyard_proxy::{
    DesiredState, GroupIdAllocator, ServiceKey, build_desired_state, diff, diff_services,
};

const NODE: &str = "node-0";
const ENDPOINTS_PER_SERVICE: u32 = 10;

/// Median of `runs` timings of `f`.
fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    println!(
        "{:>7} {:>12} {:>12} {:>14} {:>16}",
        "services", "build", "diff(empty)", "1-svc update", "rebuild+diff 1%"
    );
    for count in [1_000u32, 10_000, 30_000] {
        let (services, mut slices) =
            switchyard_proxy::synthetic::cluster("bench", count, ENDPOINTS_PER_SERVICE);
        let runs = if count >= 10_000 { 5 } else { 11 };

        let build = median(runs, || build_desired_state(&services, &slices, NODE));
        let state = build_desired_state(&services, &slices, NODE);

        let initial_diff = median(runs, || {
            let mut groups = GroupIdAllocator::new();
            diff(&DesiredState::new(), &state, &mut groups)
        });
        let mut groups = GroupIdAllocator::new();
        diff(&DesiredState::new(), &state, &mut groups).expect("initial diff");

        // One Service gains an endpoint: recompute only it, then diff.
        let mut one = slices[count as usize / 2].clone();
        one.endpoints
            .push(endpoint("10.255.0.1").node("node-1").build());
        let one = Slice::from(&one);
        let key = ServiceKey::of_service(&services[count as usize / 2]);
        let incremental = median(runs, || {
            let mut next = state.clone();
            let ports = service_port_states(&services[count as usize / 2], &[&one], NODE);
            next.replace_service(&key, ports);
            let mut groups = groups.clone();
            let changes = diff_services(&state, &next, [&key], &mut groups).expect("diff");
            assert_eq!(changes.changed.len(), 1);
            changes
        });

        if std::env::var_os("MODEL_BENCH_PARTS").is_some() {
            let clone_state = median(runs, || state.clone());
            let clone_groups = median(runs, || groups.clone());
            let same = state.clone();
            let diff_same = median(runs, || {
                let mut groups = groups.clone();
                diff(&state, &same, &mut groups).expect("diff")
            });
            println!(
                "  parts: clone state {clone_state:.2?}, clone groups {clone_groups:.2?}, diff(shared)+clone groups {diff_same:.2?}"
            );
        }

        // 1% of Services gain an endpoint: full rebuild, then diff.
        for (index, slice) in slices.iter_mut().enumerate() {
            if index % 100 == 0 {
                slice
                    .endpoints
                    .push(endpoint("10.255.0.2").node("node-1").build());
            }
        }
        let rebuild = median(runs, || {
            let next = build_desired_state(&services, &slices, NODE);
            let mut groups = groups.clone();
            diff(&state, &next, &mut groups).expect("diff")
        });
        let slim: Vec<Slice> = slices.iter().map(Slice::from).collect();
        black_box(group_slices(&slim).len());

        println!(
            "{:>7} {:>12.2?} {:>12.2?} {:>14.2?} {:>16.2?}",
            count, build, initial_diff, incremental, rebuild
        );
    }
}
