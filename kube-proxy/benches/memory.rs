//! What holds the proxy's memory at N Services x 10 endpoints, counted by
//! a counting global allocator (this bench only): heap bytes live after
//! each stage of the proxy's path, and the peak while building one
//! full-sync bundle.
//!
//! - decode: the API's JSON of every Service and EndpointSlice decoded
//!   into the proxy's slim types (`SlimService`, `Slice`), as its watcher
//!   does;
//! - cache: those objects in the `ClusterCache` (the decoded vectors
//!   moved in);
//! - desired state + group ids: the first recompute (every Service dirty),
//!   with the `Update` it returns;
//! - one full-sync bundle: the flow and group mods of
//!   `switch::PORTS_PER_BUNDLE` ports, and their encoded bytes.
//!
//! Heap only: the process's RSS also has the binary, thread stacks, the
//! runtime and what the allocator keeps. No OVS, no API server, no root.
//! `cargo bench -p switchyard-proxy --bench memory` (`SY_BENCH_SIZES`,
//! default `10000`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_ovs::openflow::TxMessage;
use switchyard_proxy::cluster_cache::ClusterCache;
use switchyard_proxy::groups::GroupLayout;
use switchyard_proxy::objects::{Slice, SlimService};
use switchyard_proxy::program::{FullSync, SwitchInventory};
use switchyard_proxy::switch::PORTS_PER_BUNDLE;
use switchyard_proxy::{GroupIdAllocator, Recomputer};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

// The one `unsafe` here: a global allocator is an unsafe trait. This one
// only counts (bench only; the proxy uses the system allocator).
// SAFETY: forwards to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes and blocks.
fn live() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed))
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn report(what: &str, before: (usize, usize), after: (usize, usize), count: u32) {
    let bytes = after.0.saturating_sub(before.0);
    let blocks = after.1.saturating_sub(before.1);
    println!(
        "| {what} | {:.1} MiB | {} B | {blocks} |",
        mib(bytes),
        bytes / count as usize,
    );
}

fn main() {
    let sizes: Vec<u32> = std::env::var("SY_BENCH_SIZES")
        .unwrap_or_else(|_| "10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for count in sizes {
        run(count);
    }
}

fn run(count: u32) {
    use std::mem::size_of;
    println!(
        "\nsizes: Service {} B (ObjectMeta {} B, ServiceSpec {} B, ServicePort {} B), Slice {} B, SliceEndpoint {} B, ServicePortState {} B, Endpoint {} B, ServicePortName {} B, ServiceKey {} B",
        size_of::<k8s_openapi::api::core::v1::Service>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
        size_of::<k8s_openapi::api::core::v1::ServiceSpec>(),
        size_of::<k8s_openapi::api::core::v1::ServicePort>(),
        size_of::<Slice>(),
        size_of::<switchyard_proxy::objects::SliceEndpoint>(),
        size_of::<switchyard_proxy::ServicePortState>(),
        size_of::<switchyard_proxy::Endpoint>(),
        size_of::<switchyard_proxy::ServicePortName>(),
        size_of::<switchyard_proxy::ServiceKey>(),
    );
    println!("\n{count} Services x 10 endpoints (heap bytes live after each stage)\n");
    println!("| stage | heap | per Service | blocks |");
    println!("|---|---|---|---|");
    let (services, slices) = switchyard_proxy::synthetic::cluster("default", count, 10);
    let service_json: Vec<String> = services
        .iter()
        .map(|s| serde_json::to_string(s).expect("service json"))
        .collect();
    let slice_json: Vec<String> = slices
        .iter()
        .map(|s| serde_json::to_string(s).expect("slice json"))
        .collect();
    drop((services, slices));

    let start = live();
    let decoded_services: Vec<SlimService> = service_json
        .iter()
        .map(|json| serde_json::from_str(json).expect("slim service"))
        .collect();
    let after_services = live();
    report(
        "Services decoded (SlimService)",
        start,
        after_services,
        count,
    );
    let decoded_slices: Vec<Slice> = slice_json
        .iter()
        .map(|json| serde_json::from_str(json).expect("slice"))
        .collect();
    let after_slices = live();
    report(
        "EndpointSlices decoded (Slice)",
        after_services,
        after_slices,
        count,
    );

    let mut cache = ClusterCache::new();
    for service in decoded_services {
        cache.apply_service(service);
    }
    let after_cache_services = live();
    report("cache with Services", start, after_cache_services, count);
    for slice in decoded_slices {
        cache.apply_slice(slice);
    }
    let after_cache = live();
    report("cache with Services and slices", start, after_cache, count);

    let groups = Arc::new(std::sync::Mutex::new(GroupIdAllocator::new()));
    let mut recomputer = Recomputer::new("node-0", Arc::clone(&groups));
    let update = recomputer
        .recompute(&mut cache)
        .expect("recompute")
        .expect("an update");
    let after_recompute = live();
    report(
        "+ desired state, group ids, first change set",
        after_cache,
        after_recompute,
        count,
    );
    let changes = update.changes;
    let state = update.state;
    drop(changes);
    let after_drop_changes = live();
    report(
        "+ desired state and group ids (change set dropped)",
        after_cache,
        after_drop_changes,
        count,
    );

    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let before_bundle = live();
    let msgs: Vec<TxMessage> = {
        let ids = groups.lock().expect("ids");
        let mut sync = FullSync::new(1, GroupLayout::default());
        sync.ports(
            state.iter().take(PORTS_PER_BUNDLE),
            &ids,
            &SwitchInventory::default(),
        )
    };
    let after_bundle = live();
    let mut buf = bytes::BytesMut::new();
    for (xid, msg) in msgs.iter().enumerate() {
        msg.msg
            .encode_as(
                switchyard_ovs::openflow::OFP15_VERSION,
                xid as u32,
                &mut buf,
            )
            .expect("encode");
    }
    let after_encode = live();
    println!(
        "| one full-sync bundle of {PORTS_PER_BUNDLE} ports: {} mods | {:.1} MiB (+ {:.1} MiB encoded) | - | - |",
        msgs.len(),
        mib(after_bundle.0 - before_bundle.0),
        mib(after_encode.0 - after_bundle.0),
    );
    drop(buf);
    drop(msgs);
    println!(
        "\ntotal live after the sync: {:.1} MiB; peak while building the bundle {:.1} MiB",
        mib(live().0 - start.0),
        mib(PEAK.load(Ordering::Relaxed) - start.0),
    );
    drop(state);
    drop(recomputer);
    drop(cache);
    drop((service_json, slice_json));
}
