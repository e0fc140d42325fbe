//! Random sequences of watch events (seeded, reproducible): the incremental
//! path (cache -> recompute of dirty Services -> scoped diff) must always
//! agree with a full rebuild, and replaying the change sets on a model of
//! the switch must reproduce the desired state with unique group ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_proxy::cluster_cache::ClusterCache;
use switchyard_proxy::fixtures::{endpoint, service, slice};
use switchyard_proxy::{
    GroupId, GroupIdAllocator, Protocol, Recomputer, ServicePortName, ServicePortState,
    build_desired_state,
};

const NODE: &str = "node-a";

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn maybe_bool(&mut self) -> Option<bool> {
        match self.below(3) {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const SERVICE_NAMES: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

fn random_service(rng: &mut Rng, namespace: &str, name: &str) -> Service {
    let mut builder = service(namespace, name);
    builder = match rng.below(10) {
        0 => builder.headless(),
        1 => builder.external_name("example.com"),
        2 => builder.cluster_ips(&["fd00::1", "10.96.1.1"]),
        _ => builder.cluster_ip(&format!("10.96.0.{}", rng.below(4) + 1)),
    };
    if rng.chance(70) {
        builder = builder.tcp("http", 80);
    }
    if rng.chance(50) {
        builder = builder.udp("dns", 53).tcp("dns-tcp", 53);
    }
    if rng.chance(30) {
        builder = builder.client_ip_affinity(if rng.chance(50) { None } else { Some(60) });
    }
    if rng.chance(30) {
        builder = builder.internal_local();
    }
    builder.build()
}

fn random_slice(rng: &mut Rng, namespace: &str, name: &str) -> EndpointSlice {
    let service_name = *rng.pick(&SERVICE_NAMES);
    let mut builder = slice(namespace, name, service_name);
    if rng.chance(10) {
        builder = builder.without_service_label();
    }
    if rng.chance(10) {
        builder = builder.ipv6();
    }
    if rng.chance(70) {
        builder = builder.tcp("http", if rng.chance(80) { 8080 } else { 8081 });
    }
    if rng.chance(50) {
        builder = builder.udp("dns", 5353).tcp("dns-tcp", 5353);
    }
    for _ in 0..rng.below(5) {
        let mut ep = endpoint(&format!("10.0.0.{}", rng.below(8) + 1));
        match rng.below(3) {
            0 => ep = ep.node("node-a"),
            1 => ep = ep.node("node-b"),
            _ => {}
        }
        if let Some(ready) = rng.maybe_bool() {
            ep = ep.ready(ready);
        }
        if let Some(serving) = rng.maybe_bool() {
            ep = ep.serving(serving);
        }
        if let Some(terminating) = rng.maybe_bool() {
            ep = ep.terminating(terminating);
        }
        builder = builder.endpoint(ep);
    }
    builder.build()
}

/// What the switch would hold after replaying every change set.
#[derive(Default)]
struct SwitchModel {
    ports: HashMap<ServicePortName, (GroupId, Arc<ServicePortState>)>,
}

impl SwitchModel {
    fn apply(&mut self, update: &switchyard_proxy::Update, groups: &Mutex<GroupIdAllocator>) {
        let changes = &update.changes;
        for removed in &changes.removed {
            let (id, state) = self
                .ports
                .remove(&removed.name)
                .unwrap_or_else(|| panic!("removed {} was not installed", removed.name));
            assert_eq!(id, removed.group_id, "{}", removed.name);
            // Flag-only differences are never sent, so compare what the switch uses.
            assert!(
                state.same_frontend(&removed.state) && state.same_buckets(&removed.state),
                "{}",
                removed.name
            );
        }
        for changed in &changes.changed {
            let entry = self
                .ports
                .get_mut(&changed.name)
                .unwrap_or_else(|| panic!("changed {} was not installed", changed.name));
            assert_eq!(entry.0, changed.group_id, "{}", changed.name);
            assert!(entry.1.same_frontend(&changed.old) && entry.1.same_buckets(&changed.old));
            assert_eq!(
                changed.frontend_changed,
                !changed.old.same_frontend(&changed.new)
            );
            assert_eq!(
                changed.endpoints_changed,
                !changed.old.same_buckets(&changed.new)
            );
            entry.1 = Arc::clone(&changed.new);
        }
        for added in &changes.added {
            assert!(
                !self.ports.contains_key(&added.name),
                "added {} twice",
                added.name
            );
            self.ports.insert(
                added.name.clone(),
                (added.group_id, Arc::clone(&added.state)),
            );
        }
        for stale in &changes.stale_udp_endpoints {
            assert_eq!(stale.name.protocol, Protocol::Udp);
        }
        // The switch deleted the removed groups: their ids may be reused.
        let mut groups = groups.lock().expect("lock");
        for removed in &changes.removed {
            groups.release(removed.group_id);
        }
        // Group ids are unique among installed ports.
        let ids: HashSet<GroupId> = self.ports.values().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), self.ports.len(), "duplicate group ids");
    }
}

fn run_sequence(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    let mut slices: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
    let mut cache = ClusterCache::new();
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let mut recomputer = Recomputer::new(NODE, Arc::clone(&groups));
    let mut switch = SwitchModel::default();

    for step in 0..steps {
        let namespace = *rng.pick(&NAMESPACES);
        match rng.below(100) {
            0..40 => {
                let name = format!("{}-{}", rng.pick(&SERVICE_NAMES), rng.below(3));
                let object = random_slice(&mut rng, namespace, &name);
                slices.insert((namespace.to_owned(), name), object.clone());
                cache.apply_slice(Arc::new(object));
            }
            40..60 => {
                let name = *rng.pick(&SERVICE_NAMES);
                let object = random_service(&mut rng, namespace, name);
                services.insert((namespace.to_owned(), name.to_owned()), object.clone());
                cache.apply_service(Arc::new(object));
            }
            60..70 => {
                let name = *rng.pick(&SERVICE_NAMES);
                if let Some(object) = services.remove(&(namespace.to_owned(), name.to_owned())) {
                    cache.delete_service(&object);
                }
            }
            70..80 => {
                let key = slices
                    .keys()
                    .nth(rng.below(slices.len() as u64 + 1) as usize)
                    .cloned();
                if let Some(object) = key.and_then(|key| slices.remove(&key)) {
                    cache.delete_slice(&object);
                }
            }
            80..85 => {
                // Relist: some objects vanished, one changed meanwhile.
                services.retain(|_, _| rng.chance(80));
                let name = *rng.pick(&SERVICE_NAMES);
                let object = random_service(&mut rng, namespace, name);
                services.insert((namespace.to_owned(), name.to_owned()), object);
                cache.replace_services(services.values().cloned().map(Arc::new));
            }
            85..90 => {
                slices.retain(|_, _| rng.chance(80));
                cache.replace_slices(slices.values().cloned().map(Arc::new));
            }
            _ => {}
        }
        if step % 3 == 0 || step + 1 == steps {
            let before = Arc::clone(recomputer.current());
            if let Some(update) = recomputer.recompute(&mut cache).expect("recompute") {
                switch.apply(&update, &groups);
                for stale in &update.changes.stale_udp_endpoints {
                    let endpoint = (stale.endpoint_ip, stale.endpoint_port);
                    let old = before.get(&stale.name).expect("stale port existed");
                    assert!(old.serving.contains(&endpoint), "seed {seed} step {step}");
                    let still_served = update.state.get(&stale.name).is_some_and(|new| {
                        new.cluster_ip == old.cluster_ip
                            && new.port == old.port
                            && new.serving.contains(&endpoint)
                    });
                    assert!(
                        !still_served,
                        "seed {seed} step {step}: {stale:?} still served"
                    );
                }
            }
            let full = build_desired_state(services.values(), slices.values(), NODE);
            assert_eq!(
                **recomputer.current(),
                full,
                "seed {seed} step {step}: incremental state differs from a full build"
            );
            assert_eq!(switch.ports.len(), full.len(), "seed {seed} step {step}");
            for (name, want) in full.iter() {
                let (_, have) = switch
                    .ports
                    .get(name)
                    .unwrap_or_else(|| panic!("seed {seed} step {step}: {name} not on the switch"));
                assert!(
                    have.same_frontend(want) && have.same_buckets(want),
                    "seed {seed} step {step}: {name} differs on the switch"
                );
            }
        }
    }
}

#[test]
fn incremental_recompute_agrees_with_full_build() {
    for seed in 1..=40u64 {
        run_sequence(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 300);
    }
}
