//! The proxy's switch programming at 1k / 10k / 30k Services x 10 endpoints
//! on one node, side by side with kube-proxy's iptables mode:
//!
//! - proxy full sync: Service and EndpointSlice objects (from
//!   `synthetic::cluster`, fed to the model directly, no API server) ->
//!   desired state -> change set -> flow and group mods -> one atomic bundle
//!   committed by a private `ovs-vswitchd` (userspace datapath);
//! - proxy single endpoint change: one Service's slice gets one endpoint
//!   replaced -> recompute that Service -> diff -> mods -> bundle commit;
//! - iptables full load: the nat table kube-proxy generates for the same
//!   Services (KUBE-SERVICES, KUBE-SVC-* with `statistic --mode random`
//!   probabilities, KUBE-SEP-* with DNAT, KUBE-MARK-MASQ) loaded with
//!   `iptables-restore --noflush` into a scratch network namespace;
//! - iptables single change: what kube-proxy (MinimizeIPTablesRestore)
//!   writes for one changed Service: the whole KUBE-SERVICES chain, the
//!   changed KUBE-SVC chain, the new KUBE-SEP chain and `-X` of the old one,
//!   with `iptables-restore --noflush`.
//!
//! Peak RSS is the bench process's (`VmHWM`, model + messages, cumulative
//! over the sizes run so far); vswitchd's RSS after the full sync is shown
//! for information.
//!
//! The baseline uses `iptables-legacy-restore` (`SY_BENCH_IPTABLES=nft` for
//! `iptables-nft-restore`, which needs minutes beyond a few thousand
//! Services on this machine).
//!
//! Needs root and Open vSwitch. `cargo bench -p switchyard-proxy --bench datapath`
//! (`SY_BENCH_SIZES=1000,10000` picks sizes, `SY_BENCH_CHANGES` the number
//! of single changes timed, default 200 for OVS and at most 30 for iptables).

#[path = "support/iptables.rs"]
mod iptables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_ovs::openflow::{Client, bundle_flags};
use switchyard_ovs_harness::{OvsInstance, require_privileges};
use switchyard_proxy::fixtures::endpoint;
use switchyard_proxy::groups::GroupLayout;
use switchyard_proxy::objects::Slice;
use switchyard_proxy::program::{self, HairpinRefs, SwitchInventory};
use switchyard_proxy::service_model::service_port_states;
use switchyard_proxy::{
    DesiredState, GroupIdAllocator, ServiceKey, build_desired_state, diff, diff_services,
};

const NODE: &str = "node-0";
const NAMESPACE: &str = "bench";
const ENDPOINTS: u32 = 10;
const BRIDGE: &str = "br-int";

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[index]
}

fn peak_rss_mb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = if pid == "self" { "VmHWM:" } else { "VmRSS:" };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One Service's slice with endpoint `index` replaced by a fresh address.
fn replace_endpoint(slice: &EndpointSlice, index: usize, fresh: u32) -> EndpointSlice {
    let mut slice = slice.clone();
    let ip = std::net::Ipv4Addr::from((11 << 24) + fresh);
    slice.endpoints[index] = endpoint(&ip.to_string()).node("node-3").build();
    slice
}

fn find_service<'a>(services: &'a [Service], key: &ServiceKey) -> &'a Service {
    services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&*key.name))
        .expect("service")
}

struct Row {
    count: u32,
    flows_groups: String,
    model: Duration,
    install: Duration,
    full: Duration,
    baseline: iptables::Baseline,
    change_p50: Duration,
    change_p99: Duration,
    rss: f64,
    vswitchd_rss: f64,
}

async fn bench_size(count: u32, change_rounds: usize, ipt_changes: usize) -> Row {
    let (services, mut slices) = switchyard_proxy::synthetic::cluster(NAMESPACE, count, ENDPOINTS);
    let ovs = OvsInstance::builder()
        .vswitchd(true)
        .start()
        .expect("OVS starts");
    ovs.vsctl(&[
        "add-br",
        BRIDGE,
        "--",
        "set",
        "bridge",
        BRIDGE,
        "datapath_type=netdev",
        "protocols=OpenFlow15",
        "fail_mode=secure",
    ])
    .expect("bridge");
    let client = Client::connect_bridge(ovs.rundir(), BRIDGE)
        .await
        .expect("OpenFlow client");

    // Full sync: objects -> model -> change set -> mods -> committed bundle.
    let started = Instant::now();
    let state = build_desired_state(&services, &slices, NODE);
    let mut groups = GroupIdAllocator::new();
    let initial = diff(&DesiredState::new(), &state, &mut groups).expect("ids");
    let (msgs, _) = program::full_sync(
        1,
        &state,
        &groups,
        &SwitchInventory::default(),
        GroupLayout::default(),
    );
    let model = started.elapsed();
    let n_msgs = msgs.len();
    client
        .bundle(msgs, bundle_flags::ATOMIC | bundle_flags::ORDERED)
        .await
        .expect("full sync bundle");
    let full = started.elapsed();
    let install = full - model;
    drop(initial);
    let flows = ovs
        .ofctl(&["-O", "OpenFlow15", "dump-aggregate", BRIDGE])
        .unwrap_or_default();
    let flow_count = flows
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .unwrap_or("?")
        .to_owned();
    let flows_groups = format!("{flow_count} flows, {n_msgs} mods");

    // Single endpoint changes on distinct Services, one bundle each.
    let mut state = Arc::new(state);
    let mut hairpin = HairpinRefs::of_state(&state);
    let mut times = Vec::with_capacity(change_rounds);
    for round in 0..change_rounds {
        let index = (round * 7919) % slices.len();
        let key = ServiceKey::new(NAMESPACE, format!("svc-{index}"));
        slices[index] = replace_endpoint(&slices[index], round % ENDPOINTS as usize, round as u32);
        let started = Instant::now();
        let mut next = DesiredState::clone(&state);
        let slice = Slice::from(&slices[index]);
        let slice_refs = [&slice];
        next.replace_service(
            &key,
            service_port_states(find_service(&services, &key), &slice_refs, NODE),
        );
        let changes = diff_services(&state, &next, [&key], &mut groups).expect("ids");
        assert_eq!(changes.changed.len(), 1);
        let msgs = program::incremental(1, &changes, &mut hairpin, GroupLayout::default());
        client
            .bundle(msgs, bundle_flags::ATOMIC | bundle_flags::ORDERED)
            .await
            .expect("change bundle");
        times.push(started.elapsed());
        state = Arc::new(next);
    }
    let change_p50 = percentile(&mut times, 0.5);
    let change_p99 = percentile(&mut times, 0.99);
    eprintln!(
        "{count} services: proxy full sync {:.0} ms (model {:.0} + install {:.0}), change p50 {:.2} ms p99 {:.2} ms; now iptables",
        ms(full),
        ms(model),
        ms(install),
        ms(change_p50),
        ms(change_p99)
    );
    let vswitchd_rss = ovs
        .vswitchd_pid()
        .map_or(0.0, |pid| peak_rss_mb(&pid.to_string()));
    let rss = peak_rss_mb("self");
    drop(client);
    drop(ovs);

    // iptables baseline in a scratch namespace.
    let baseline = iptables::run(&state, ipt_changes);

    Row {
        count,
        flows_groups,
        model,
        install,
        full,
        baseline,
        change_p50,
        change_p99,
        rss,
        vswitchd_rss,
    }
}

fn main() {
    if !require_privileges("datapath bench") {
        return;
    }
    let sizes: Vec<u32> = std::env::var("SY_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,30000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let changes: usize = std::env::var("SY_BENCH_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let ipt_changes = changes.min(30);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("baseline: {}", iptables::restore_binary());
    println!(
        "| services | OVS content | proxy full sync (model + install) | iptables-restore full | full ratio | proxy change p50 / p99 | iptables change p50 / p99 | p99 ratio | bench peak RSS | vswitchd RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for count in sizes {
        let row = runtime.block_on(bench_size(count, changes, ipt_changes));
        let [ipt_full, full_ratio, ipt_change, change_ratio] =
            row.baseline.cells(row.full, row.change_p99);
        println!(
            "| {} | {} | {:.0} ms ({:.0} + {:.0}) | {ipt_full} | {full_ratio} | {:.2} / {:.2} ms | {ipt_change} | {change_ratio} | {:.0} MB | {:.0} MB |",
            row.count,
            row.flows_groups,
            ms(row.full),
            ms(row.model),
            ms(row.install),
            ms(row.change_p50),
            ms(row.change_p99),
            row.rss,
            row.vswitchd_rss,
        );
    }
}
