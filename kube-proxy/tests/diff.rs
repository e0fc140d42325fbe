//! Change sets between desired states, and group id stability.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_proxy::fixtures::{ServiceBuilder, endpoint, service, slice};
use switchyard_proxy::objects::Slice;
use switchyard_proxy::{
    ChangeSet, DesiredState, GroupIdAllocator, GroupIdsExhausted, Protocol, ServiceKey,
    ServicePortName, build_desired_state, diff,
};

const NODE: &str = "node-a";

/// A Service with one port (`protocol`, 80 -> 8080) and one slice with
/// endpoints 10.<net>.0.1 ..= 10.<net>.0.<count>.
struct Svc {
    service: ServiceBuilder,
    name: &'static str,
    protocol: &'static str,
    net: u8,
    endpoints: u8,
}

fn svc(name: &'static str, vip: &str, protocol: &'static str, net: u8, endpoints: u8) -> Svc {
    Svc {
        service: service("default", name)
            .cluster_ip(vip)
            .port("p", 80, protocol),
        name,
        protocol,
        net,
        endpoints,
    }
}

impl Svc {
    fn with(mut self, tweak: impl FnOnce(ServiceBuilder) -> ServiceBuilder) -> Self {
        self.service = tweak(self.service);
        self
    }

    fn endpoints(mut self, count: u8) -> Self {
        self.endpoints = count;
        self
    }

    fn objects(&self) -> (Service, EndpointSlice) {
        let mut eps =
            slice("default", &format!("{}-1", self.name), self.name).port("p", 8080, self.protocol);
        for host in 1..=self.endpoints {
            eps = eps.endpoint(endpoint(&format!("10.{}.0.{host}", self.net)));
        }
        (self.service.clone().build(), eps.build())
    }
}

fn state(services: &[&Svc]) -> DesiredState {
    let (services, slices): (Vec<Service>, Vec<EndpointSlice>) =
        services.iter().map(|s| s.objects()).unzip();
    build_desired_state(&services, &slices, NODE)
}

fn port(name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, "p", protocol)
}

fn added_names(changes: &ChangeSet) -> Vec<String> {
    changes.added.iter().map(|p| p.name.to_string()).collect()
}

fn changed_names(changes: &ChangeSet) -> Vec<String> {
    changes.changed.iter().map(|p| p.name.to_string()).collect()
}

fn stale_udp(changes: &ChangeSet) -> Vec<String> {
    changes
        .stale_udp_endpoints
        .iter()
        .map(|s| {
            format!(
                "{}:{}->{}:{}",
                s.cluster_ip, s.port, s.endpoint_ip, s.endpoint_port
            )
        })
        .collect()
}

/// Diffs from empty to `first`, then returns the allocator for further diffs.
fn installed(first: &DesiredState) -> GroupIdAllocator {
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), first, &mut groups).expect("initial diff");
    groups
}

#[test]
fn initial_sync_adds_everything_with_ids_in_name_order() {
    let dns = svc("dns", "10.96.0.10", "UDP", 1, 2);
    let web = svc("web", "10.96.0.20", "TCP", 2, 3);
    let empty_udp = svc("empty", "10.96.0.30", "UDP", 3, 0);
    let new = state(&[&web, &dns, &empty_udp]);
    let mut groups = GroupIdAllocator::new();
    let changes = diff(&DesiredState::new(), &new, &mut groups).expect("diff");
    assert_eq!(
        added_names(&changes),
        [
            "default/dns:p/UDP",
            "default/empty:p/UDP",
            "default/web:p/TCP"
        ]
    );
    let ids: Vec<u32> = changes.added.iter().map(|p| p.group_id).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(changes.removed.is_empty() && changes.changed.is_empty());
    // A new UDP frontend with endpoints flushes entries made while it had none.
    let frontends: Vec<String> = changes
        .stale_udp_frontends
        .iter()
        .map(|f| f.name.to_string())
        .collect();
    assert_eq!(frontends, ["default/dns:p/UDP"]);
    assert_eq!(groups.get(&port("web", Protocol::Tcp)), Some(3));
}

#[test]
fn identical_states_give_an_empty_change_set() {
    let web = svc("web", "10.96.0.20", "TCP", 2, 3);
    let old = state(&[&web]);
    let mut groups = installed(&old);
    // Rebuilt from scratch: equal contents, different Arcs.
    let changes = diff(&old, &state(&[&web]), &mut groups).expect("diff");
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn endpoint_scale_changes_only_that_service_group() {
    let web = svc("web", "10.96.0.20", "TCP", 2, 3);
    let other = svc("other", "10.96.0.21", "TCP", 3, 2);
    let old = state(&[&web, &other]);
    let mut groups = installed(&old);
    let web_group = groups.get(&port("web", Protocol::Tcp));

    for count in [5, 1] {
        let web_scaled = svc("web", "10.96.0.20", "TCP", 2, 3).endpoints(count);
        let new = state(&[&web_scaled, &other]);
        let changes = diff(&old, &new, &mut groups).expect("diff");
        assert_eq!(changed_names(&changes), ["default/web:p/TCP"], "to {count}");
        let change = &changes.changed[0];
        assert!(change.group_only(), "to {count}: {change:?}");
        assert_eq!(Some(change.group_id), web_group);
        assert_eq!(change.new.endpoints.len(), usize::from(count));
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        // TCP: no conntrack flushing.
        assert!(changes.stale_udp_endpoints.is_empty());
    }
}

#[test]
fn udp_scale_down_lists_the_removed_endpoints() {
    let dns = svc("dns", "10.96.0.10", "UDP", 1, 3);
    let old = state(&[&dns]);
    let mut groups = installed(&old);
    let new = state(&[&svc("dns", "10.96.0.10", "UDP", 1, 1)]);
    let changes = diff(&old, &new, &mut groups).expect("diff");
    assert!(changes.changed[0].group_only());
    assert_eq!(
        stale_udp(&changes),
        [
            "10.96.0.10:80->10.1.0.2:8080",
            "10.96.0.10:80->10.1.0.3:8080"
        ]
    );
    assert!(changes.stale_udp_frontends.is_empty());
}

#[test]
fn frontend_changes_table() {
    // (description, old service, new service, endpoints changed too)
    let base = || svc("web", "10.96.0.20", "TCP", 2, 2);
    let cases: Vec<(&str, Svc, Svc, bool)> = vec![
        (
            "affinity on",
            base(),
            base().with(|s| s.client_ip_affinity(None)),
            false,
        ),
        (
            "affinity off",
            base().with(|s| s.client_ip_affinity(Some(60))),
            base(),
            false,
        ),
        (
            "affinity timeout",
            base().with(|s| s.client_ip_affinity(Some(60))),
            base().with(|s| s.client_ip_affinity(Some(120))),
            false,
        ),
        (
            "internal traffic policy Local (no local endpoints: drop)",
            base(),
            base().with(ServiceBuilder::internal_local),
            true,
        ),
        (
            "first endpoint appears (reject -> balance)",
            base().endpoints(0),
            base(),
            true,
        ),
        (
            "last endpoint goes (balance -> reject)",
            base(),
            base().endpoints(0),
            true,
        ),
    ];
    for (what, before, after, endpoints_changed) in cases {
        let old = state(&[&before]);
        let mut groups = installed(&old);
        let changes = diff(&old, &state(&[&after]), &mut groups).expect("diff");
        assert_eq!(changed_names(&changes), ["default/web:p/TCP"], "{what}");
        let change = &changes.changed[0];
        assert!(change.frontend_changed, "{what}");
        assert_eq!(change.endpoints_changed, endpoints_changed, "{what}");
        assert_eq!(change.group_id, 1, "{what}: the group id is kept");
    }
}

#[test]
fn service_deleted_is_removed_and_udp_endpoints_are_stale() {
    let dns = svc("dns", "10.96.0.10", "UDP", 1, 2);
    let web = svc("web", "10.96.0.20", "TCP", 2, 2);
    let old = state(&[&dns, &web]);
    let mut groups = installed(&old);
    let changes = diff(&old, &DesiredState::new(), &mut groups).expect("diff");
    let removed: Vec<(String, u32)> = changes
        .removed
        .iter()
        .map(|p| (p.name.to_string(), p.group_id))
        .collect();
    assert_eq!(
        removed,
        [
            ("default/dns:p/UDP".to_owned(), 1),
            ("default/web:p/TCP".to_owned(), 2)
        ]
    );
    // The removed state is what was installed, so flows can be deleted.
    assert_eq!(
        changes.removed[0].state.cluster_ip.to_string(),
        "10.96.0.10"
    );
    assert_eq!(
        stale_udp(&changes),
        [
            "10.96.0.10:80->10.1.0.1:8080",
            "10.96.0.10:80->10.1.0.2:8080"
        ]
    );
    assert_eq!(groups.retired().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(groups.in_use(), 0);
}

#[test]
fn udp_vip_change_makes_all_old_endpoints_stale() {
    let old = state(&[&svc("dns", "10.96.0.10", "UDP", 1, 2)]);
    let mut groups = installed(&old);
    let new = state(&[&svc("dns", "10.96.0.11", "UDP", 1, 2)]);
    let changes = diff(&old, &new, &mut groups).expect("diff");
    let change = &changes.changed[0];
    assert!(change.frontend_changed && !change.endpoints_changed);
    assert_eq!(
        stale_udp(&changes),
        [
            "10.96.0.10:80->10.1.0.1:8080",
            "10.96.0.10:80->10.1.0.2:8080"
        ]
    );
}

#[test]
fn udp_first_endpoint_flushes_the_frontend() {
    let old = state(&[&svc("dns", "10.96.0.10", "UDP", 1, 0)]);
    let mut groups = installed(&old);
    let new = state(&[&svc("dns", "10.96.0.10", "UDP", 1, 1)]);
    let changes = diff(&old, &new, &mut groups).expect("diff");
    let frontends: Vec<String> = changes
        .stale_udp_frontends
        .iter()
        .map(|f| format!("{}:{}", f.cluster_ip, f.port))
        .collect();
    assert_eq!(frontends, ["10.96.0.10:80"]);
    assert!(changes.stale_udp_endpoints.is_empty());
}

#[test]
fn condition_flags_alone_are_not_a_switch_change() {
    // An endpoint's node name changes: the states differ, the buckets do not.
    let svc_obj = service("default", "web")
        .cluster_ip("10.96.0.20")
        .tcp("p", 80)
        .build();
    let with_node = |node: &str| {
        slice("default", "web-1", "web")
            .tcp("p", 8080)
            .endpoint(endpoint("10.2.0.1").node(node))
            .build()
    };
    let old = build_desired_state([&svc_obj], [&with_node("node-b")], NODE);
    let new = build_desired_state([&svc_obj], [&with_node("node-c")], NODE);
    assert_ne!(old, new);
    let mut groups = installed(&old);
    assert!(diff(&old, &new, &mut groups).expect("diff").is_empty());
}

#[test]
fn group_ids_are_stable_and_reused_only_after_release() {
    let a = svc("a", "10.96.0.1", "TCP", 1, 1);
    let b = svc("b", "10.96.0.2", "TCP", 2, 1);
    let c = svc("c", "10.96.0.3", "TCP", 3, 1);
    let d = svc("d", "10.96.0.4", "TCP", 4, 1);
    let e = svc("e", "10.96.0.5", "TCP", 5, 1);
    let s1 = state(&[&a, &b, &c]);
    let mut groups = installed(&s1);
    let id = |groups: &GroupIdAllocator, name: &str| groups.get(&port(name, Protocol::Tcp));
    assert_eq!(
        [id(&groups, "a"), id(&groups, "b"), id(&groups, "c")],
        [Some(1), Some(2), Some(3)]
    );

    // b goes away and d arrives in the same step: d must not take b's live id.
    let s2 = state(&[&a, &c, &d]);
    let changes = diff(&s1, &s2, &mut groups).expect("diff");
    assert_eq!(changes.removed[0].group_id, 2);
    assert_eq!(changes.added[0].group_id, 4);
    assert_eq!(id(&groups, "a"), Some(1));
    assert_eq!(id(&groups, "c"), Some(3));

    // Still not released: e gets a fresh id.
    let s3 = state(&[&a, &c, &d, &e]);
    let changes = diff(&s2, &s3, &mut groups).expect("diff");
    assert_eq!(changes.added[0].group_id, 5);

    // The switch deleted group 2: the next new port reuses it.
    groups.release(2);
    let f = svc("f", "10.96.0.6", "TCP", 6, 1);
    let s4 = state(&[&a, &c, &d, &e, &f]);
    let changes = diff(&s3, &s4, &mut groups).expect("diff");
    assert_eq!(changes.added[0].group_id, 2);
}

#[test]
fn exhausted_group_ids_fail_without_changing_the_allocator() {
    let a = svc("a", "10.96.0.1", "TCP", 1, 1);
    let b = svc("b", "10.96.0.2", "TCP", 2, 1);
    let c = svc("c", "10.96.0.3", "TCP", 3, 1);
    let mut groups = GroupIdAllocator::with_range(10, 11);
    let s1 = state(&[&a]);
    diff(&DesiredState::new(), &s1, &mut groups).expect("diff");
    let err = diff(&s1, &state(&[&b, &c]), &mut groups).expect_err("three ports, two ids");
    assert_eq!(
        err,
        GroupIdsExhausted {
            first: 10,
            last: 11
        }
    );
    // a was not retired, nothing was allocated.
    assert_eq!(groups.get(&port("a", Protocol::Tcp)), Some(10));
    assert_eq!(groups.in_use(), 1);
    assert_eq!(groups.retired().count(), 0);
    // One new port still fits.
    let changes = diff(&s1, &state(&[&a, &b]), &mut groups).expect("diff");
    assert_eq!(changes.added[0].group_id, 11);
}

#[test]
fn replace_service_keeps_unchanged_entries_shared() {
    let web = svc("web", "10.96.0.20", "TCP", 2, 2);
    let other = svc("other", "10.96.0.21", "TCP", 3, 2);
    let old = state(&[&web, &other]);
    let mut new = old.clone();

    let (web_svc, web_slice) = svc("web", "10.96.0.20", "TCP", 2, 3).objects();
    let key = ServiceKey::new("default", "web");
    new.replace_service(
        &key,
        switchyard_proxy::service_model::service_port_states(
            &web_svc,
            &[&Slice::from(&web_slice)],
            NODE,
        ),
    );
    let (other_svc, other_slice) = other.objects();
    new.replace_service(
        &ServiceKey::new("default", "other"),
        switchyard_proxy::service_model::service_port_states(
            &other_svc,
            &[&Slice::from(&other_slice)],
            NODE,
        ),
    );
    let other_port = port("other", Protocol::Tcp);
    assert!(Arc::ptr_eq(
        old.get(&other_port).expect("old other"),
        new.get(&other_port).expect("new other")
    ));
    let mut groups = installed(&old);
    let changes = diff(&old, &new, &mut groups).expect("diff");
    assert_eq!(changed_names(&changes), ["default/web:p/TCP"]);

    // Replacing with nothing removes the Service.
    new.replace_service(&key, Vec::new());
    assert!(new.get(&port("web", Protocol::Tcp)).is_none());
    assert_eq!(new.len(), 1);
}

#[test]
fn adopted_ids_are_kept_and_skipped_by_new_allocations() {
    let mut groups = GroupIdAllocator::with_range(1, 6);
    let a = port("a", Protocol::Tcp);
    let b = port("b", Protocol::Tcp);
    groups.adopt(&a, 5).expect("adopt a");
    groups.adopt(&b, 2).expect("adopt b");
    groups.adopt(&a, 5).expect("adopting again is a no-op");
    assert_eq!(groups.available(), 4);

    // Conflicts change nothing.
    assert_eq!(
        groups.adopt(&port("c", Protocol::Tcp), 5),
        Err(switchyard_proxy::GroupIdTaken::HeldBy {
            id: 5,
            holder: a.clone()
        })
    );
    assert_eq!(
        groups.adopt(&a, 3),
        Err(switchyard_proxy::GroupIdTaken::PortHasId {
            name: a.clone(),
            held: 5
        })
    );
    assert!(matches!(
        groups.adopt(&port("c", Protocol::Tcp), 7),
        Err(switchyard_proxy::GroupIdTaken::OutOfRange { id: 7, .. })
    ));
    assert_eq!(groups.in_use(), 2);

    let fresh: Vec<u32> = ["c", "d", "e", "f"]
        .iter()
        .map(|name| {
            groups
                .allocate(&port(name, Protocol::Tcp))
                .expect("allocate")
        })
        .collect();
    assert_eq!(fresh, [1, 3, 4, 6]);
    assert_eq!(groups.available(), 0);
    assert!(groups.allocate(&port("g", Protocol::Tcp)).is_err());

    // A retired adopted id is not adoptable until released.
    groups.retire(&b);
    assert_eq!(
        groups.adopt(&port("g", Protocol::Tcp), 2),
        Err(switchyard_proxy::GroupIdTaken::Retired { id: 2 })
    );
    groups.release(2);
    assert_eq!(groups.allocate(&port("g", Protocol::Tcp)), Ok(2));
}

#[test]
fn diff_services_matches_a_full_diff() {
    let (services, slices) = switchyard_proxy::synthetic::cluster("default", 50, 3);
    let old = build_desired_state(&services, &slices, NODE);
    // Change every 7th Service's endpoints, delete every 11th, add two.
    let mut new_services = services.clone();
    let mut new_slices = slices.clone();
    for (index, slice) in new_slices.iter_mut().enumerate() {
        if index % 7 == 0 {
            slice.endpoints.pop();
        }
    }
    let mut touched: Vec<ServiceKey> = Vec::new();
    for index in (0..50).step_by(7) {
        touched.push(ServiceKey::new("default", format!("svc-{index}")));
    }
    new_services.retain(|s| {
        let name = s.metadata.name.clone().unwrap_or_default();
        let index: usize = name.trim_start_matches("svc-").parse().unwrap_or(0);
        !index.is_multiple_of(11)
    });
    for index in (0..50).step_by(11) {
        touched.push(ServiceKey::new("default", format!("svc-{index}")));
    }
    for extra in ["new-a", "new-b"] {
        new_services.push(
            service("default", extra)
                .cluster_ip("10.97.0.1")
                .tcp("http", 80)
                .build(),
        );
        touched.push(ServiceKey::new("default", extra));
    }
    let new = build_desired_state(&new_services, &new_slices, NODE);

    let mut full_groups = installed(&old);
    let mut scoped_groups = full_groups.clone();
    let full = diff(&old, &new, &mut full_groups).expect("full diff");
    let scoped = switchyard_proxy::diff_services(&old, &new, &touched, &mut scoped_groups)
        .expect("scoped diff");
    assert_eq!(scoped, full);
    assert_eq!(full.removed.len(), 5);
    assert_eq!(full.added.len(), 2);
    // svc-0, 7, ..., 49 changed, but svc-0 is also deleted.
    assert_eq!(full.changed.len(), 7);
}

/// A UDP Service whose slice lists `endpoints` built by the caller.
fn udp_state(endpoints: Vec<switchyard_proxy::fixtures::EndpointBuilder>) -> DesiredState {
    let svc_obj = service("default", "dns")
        .cluster_ip("10.96.0.10")
        .udp("p", 53)
        .build();
    let mut eps = slice("default", "dns-1", "dns").udp("p", 5353);
    for e in endpoints {
        eps = eps.endpoint(e);
    }
    build_desired_state([&svc_obj], [&eps.build()], NODE)
}

#[test]
fn udp_draining_endpoint_is_flushed_only_when_it_stops_serving() {
    let ready = |ip: &str| endpoint(ip).ready(true);
    let draining = |ip: &str| endpoint(ip).serving_terminating();
    let stopped = |ip: &str| endpoint(ip).ready(false).serving(false).terminating(true);

    let s1 = udp_state(vec![ready("10.1.0.1"), ready("10.1.0.2")]);
    let mut groups = installed(&s1);

    // 10.1.0.2 starts terminating but still serves: it leaves the group,
    // its established flows are kept.
    let s2 = udp_state(vec![ready("10.1.0.1"), draining("10.1.0.2")]);
    let changes = diff(&s1, &s2, &mut groups).expect("diff");
    assert!(changes.changed[0].group_only());
    assert!(stale_udp(&changes).is_empty(), "{changes:?}");

    // It stops serving: nothing changes in the group, but its conntrack
    // entries go.
    let s3 = udp_state(vec![ready("10.1.0.1"), stopped("10.1.0.2")]);
    let changes = diff(&s2, &s3, &mut groups).expect("diff");
    assert!(changes.changed.is_empty());
    assert_eq!(stale_udp(&changes), ["10.96.0.10:53->10.1.0.2:5353"]);
    assert!(!changes.is_empty(), "the flush alone is worth an update");

    // Deleted while draining: flushed as well.
    let s4 = udp_state(vec![ready("10.1.0.1")]);
    let changes = diff(&s2, &s4, &mut groups).expect("diff");
    assert_eq!(stale_udp(&changes), ["10.96.0.10:53->10.1.0.2:5353"]);
}

#[test]
fn local_policy_serving_set_holds_only_this_nodes_endpoints() {
    let svc_obj = service("default", "dns")
        .cluster_ip("10.96.0.10")
        .udp("p", 53)
        .internal_local()
        .build();
    let eps = slice("default", "dns-1", "dns")
        .udp("p", 5353)
        .endpoint(endpoint("10.1.0.1").node(NODE))
        .endpoint(endpoint("10.1.0.2").node("node-b"))
        .build();
    let state = build_desired_state([&svc_obj], [&eps], NODE);
    let dns = state.get(&port("dns", Protocol::Udp)).expect("dns");
    let serving: Vec<String> = dns
        .serving
        .iter()
        .map(|(ip, p)| format!("{ip}:{p}"))
        .collect();
    assert_eq!(serving, ["10.1.0.1:5353"]);
}
