//! The cache of Services and EndpointSlices: which Services become dirty.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_proxy::cluster_cache::ClusterCache;
use switchyard_proxy::fixtures::{endpoint, service, slice};
use switchyard_proxy::{GroupIdAllocator, Protocol, Recomputer, ServiceKey, ServicePortName};

const NODE: &str = "node-a";

fn web() -> Arc<Service> {
    Arc::new(
        service("default", "web")
            .cluster_ip("10.96.0.20")
            .tcp("http", 80)
            .build(),
    )
}

fn web_slice(name: &str, service_name: &str, ips: &[&str]) -> Arc<EndpointSlice> {
    let mut builder = slice("default", name, service_name).tcp("http", 8080);
    for ip in ips {
        builder = builder.endpoint(endpoint(ip));
    }
    Arc::new(builder.build())
}

fn with_version<T>(mut object: T, meta: impl FnOnce(&mut T) -> &mut Option<String>, rv: &str) -> T {
    *meta(&mut object) = Some(rv.to_owned());
    object
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn backends(cache: &ClusterCache, service: &str) -> Vec<String> {
    cache
        .service_port_states(&key(service), NODE)
        .iter()
        .flat_map(|(_, state)| state.endpoints.iter().map(|e| e.ip.to_string()))
        .collect()
}

#[test]
fn changes_mark_their_service_dirty() {
    let mut cache = ClusterCache::new();
    cache.apply_service(web());
    cache.apply_slice(web_slice("web-1", "web", &["10.0.0.1"]));
    cache.apply_slice(web_slice("db-1", "db", &["10.0.0.9"]));
    assert_eq!(cache.take_dirty(), [key("db"), key("web")]);
    assert!(!cache.is_dirty());
    assert_eq!(backends(&cache, "web"), ["10.0.0.1"]);

    cache.delete_slice(&web_slice("web-1", "web", &[]));
    assert_eq!(cache.take_dirty(), [key("web")]);
    assert!(backends(&cache, "web").is_empty());

    cache.delete_service(&web());
    assert_eq!(cache.take_dirty(), [key("web")]);
    assert!(cache.service_port_states(&key("web"), NODE).is_empty());

    // Deleting what is not there changes nothing.
    cache.delete_service(&web());
    cache.delete_slice(&web_slice("nope", "web", &[]));
    assert!(!cache.is_dirty());
}

#[test]
fn same_resource_version_is_not_a_change() {
    let mut cache = ClusterCache::new();
    let v1 = with_version(
        service("default", "web")
            .cluster_ip("10.96.0.20")
            .tcp("http", 80)
            .build(),
        |s| &mut s.metadata.resource_version,
        "1",
    );
    cache.apply_service(Arc::new(v1.clone()));
    cache.take_dirty();
    cache.apply_service(Arc::new(v1.clone()));
    assert!(!cache.is_dirty());
    let v2 = with_version(v1, |s| &mut s.metadata.resource_version, "2");
    cache.apply_service(Arc::new(v2));
    assert_eq!(cache.take_dirty(), [key("web")]);

    // Without resource versions, equal contents are not a change either.
    cache.apply_slice(web_slice("web-1", "web", &["10.0.0.1"]));
    cache.take_dirty();
    cache.apply_slice(web_slice("web-1", "web", &["10.0.0.1"]));
    assert!(!cache.is_dirty());
}

#[test]
fn relabelled_slice_moves_between_services() {
    let mut cache = ClusterCache::new();
    cache.apply_slice(web_slice("shared-1", "web", &["10.0.0.1"]));
    cache.take_dirty();
    cache.apply_slice(web_slice("shared-1", "api", &["10.0.0.1"]));
    assert_eq!(cache.take_dirty(), [key("api"), key("web")]);
}

#[test]
fn relist_replaces_and_marks_only_differences() {
    let mut cache = ClusterCache::new();
    let db = Arc::new(
        service("default", "db")
            .cluster_ip("10.96.0.30")
            .tcp("pg", 5432)
            .build(),
    );
    cache.replace_services([web(), Arc::clone(&db)]);
    cache.replace_slices([
        web_slice("web-1", "web", &["10.0.0.1"]),
        web_slice("web-2", "web", &["10.0.0.2"]),
    ]);
    assert_eq!(cache.take_dirty(), [key("db"), key("web")]);

    // db is gone from the new list, web-2 too, web-1 unchanged.
    cache.replace_services([web()]);
    cache.replace_slices([web_slice("web-1", "web", &["10.0.0.1"])]);
    assert_eq!(cache.take_dirty(), [key("db"), key("web")]);
    assert_eq!(cache.len(), (1, 1));
    assert_eq!(backends(&cache, "web"), ["10.0.0.1"]);

    // The same list again: nothing is dirty.
    cache.replace_services([web()]);
    cache.replace_slices([web_slice("web-1", "web", &["10.0.0.1"])]);
    assert!(!cache.is_dirty());
}

#[test]
fn recomputer_emits_generations_only_for_switch_changes() {
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let mut recomputer = Recomputer::new(NODE, Arc::clone(&groups));
    let mut cache = ClusterCache::new();
    assert!(
        recomputer
            .recompute(&mut cache)
            .expect("recompute")
            .is_none()
    );

    cache.apply_service(web());
    cache.apply_slice(web_slice("web-1", "web", &["10.0.0.1"]));
    let first = recomputer
        .recompute(&mut cache)
        .expect("recompute")
        .expect("an update");
    assert_eq!(first.generation, 1);
    assert_eq!(first.changes.added.len(), 1);
    let name = ServicePortName::new("default", "web", "http", Protocol::Tcp);
    assert_eq!(first.state.get(&name).map(|s| s.endpoints.len()), Some(1));

    // A slice change that leaves the buckets equal: no update, no generation.
    let mut moved = (*web_slice("web-1", "web", &[])).clone();
    moved
        .endpoints
        .push(endpoint("10.0.0.1").node("node-z").build());
    cache.apply_slice(Arc::new(moved));
    assert!(
        recomputer
            .recompute(&mut cache)
            .expect("recompute")
            .is_none()
    );
    assert_eq!(recomputer.generation(), 1);

    cache.delete_service(&web());
    let second = recomputer
        .recompute(&mut cache)
        .expect("recompute")
        .expect("an update");
    assert_eq!(second.generation, 2);
    assert_eq!(second.changes.removed.len(), 1);
    assert!(second.state.is_empty());
    let retired: Vec<u32> = groups.lock().expect("lock").retired().collect();
    assert_eq!(retired, [1]);
}

#[test]
fn recomputer_keeps_services_dirty_when_ids_run_out() {
    let groups = Arc::new(Mutex::new(GroupIdAllocator::with_range(1, 1)));
    let mut recomputer = Recomputer::new(NODE, groups);
    let mut cache = ClusterCache::new();
    cache.apply_service(web());
    cache.apply_service(Arc::new(
        service("default", "db")
            .cluster_ip("10.96.0.30")
            .tcp("pg", 5432)
            .build(),
    ));
    assert!(recomputer.recompute(&mut cache).is_err());
    assert!(cache.is_dirty());
    assert!(recomputer.current().is_empty());
    assert_eq!(recomputer.generation(), 0);
}

#[test]
fn recomputer_publishes_health_checks_even_without_switch_changes() {
    use switchyard_proxy::HealthCheck;
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let mut recomputer = Recomputer::new(NODE, groups);
    let mut cache = ClusterCache::new();
    let lb = |health_check_node_port: Option<i32>| {
        let mut svc = (*web()).clone();
        let spec = svc.spec.as_mut().expect("spec");
        spec.type_ = Some("LoadBalancer".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = health_check_node_port;
        Arc::new(svc)
    };
    let local_slice = |ready: bool| {
        Arc::new(
            slice("default", "web-1", "web")
                .tcp("http", 8080)
                .endpoint(endpoint("10.0.0.1").node(NODE).ready(ready))
                .endpoint(endpoint("10.0.0.2").node("node-z"))
                .build(),
        )
    };
    cache.apply_service(web());
    cache.apply_slice(local_slice(true));
    recomputer.recompute(&mut cache).expect("recompute");
    assert_eq!(recomputer.take_health_checks(), None, "no health check yet");

    // ClusterIP -> LoadBalancer Local: no flow changes, a health check.
    cache.apply_service(lb(Some(31000)));
    assert!(
        recomputer
            .recompute(&mut cache)
            .expect("recompute")
            .is_none()
    );
    let checks = recomputer.take_health_checks().expect("published");
    let check = |local_endpoints| HealthCheck {
        port: 31000,
        local_endpoints,
    };
    assert_eq!(checks.get(&key("web")), Some(&check(1)));
    assert_eq!(recomputer.take_health_checks(), None, "taken");

    // The local endpoint not ready: the count follows.
    cache.apply_slice(local_slice(false));
    recomputer.recompute(&mut cache).expect("recompute");
    let checks = recomputer.take_health_checks().expect("published");
    assert_eq!(checks.get(&key("web")), Some(&check(0)));

    // An unrelated change publishes nothing; the port going away does.
    cache.apply_service(Arc::new(
        service("default", "db")
            .cluster_ip("10.96.0.30")
            .tcp("pg", 5432)
            .build(),
    ));
    recomputer.recompute(&mut cache).expect("recompute");
    assert_eq!(recomputer.take_health_checks(), None);
    cache.delete_service(&lb(Some(31000)));
    recomputer.recompute(&mut cache).expect("recompute");
    assert!(
        recomputer
            .take_health_checks()
            .expect("published")
            .is_empty()
    );
}
