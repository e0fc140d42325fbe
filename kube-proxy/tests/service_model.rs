//! The service model against kube-proxy's rules, one table or case per rule.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_proxy::fixtures::{EndpointBuilder, endpoint, service, slice};
use switchyard_proxy::service_model::DEFAULT_CLIENT_IP_TIMEOUT_SECS;
use switchyard_proxy::{
    DesiredState, HealthCheck, NoEndpointsAction, Protocol, ServiceKey, ServicePortName,
    ServicePortState, ServiceType, build_desired_state,
};

const NODE: &str = "node-a";

fn build(services: &[Service], slices: &[EndpointSlice]) -> DesiredState {
    build_desired_state(services, slices, NODE)
}

fn port_name(name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("default", name, port, protocol)
}

fn tcp(name: &str, port: &str) -> ServicePortName {
    port_name(name, port, Protocol::Tcp)
}

fn get<'a>(state: &'a DesiredState, name: &ServicePortName) -> &'a ServicePortState {
    state
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing; state has {:?}", names(state)))
}

fn names(state: &DesiredState) -> Vec<String> {
    state.iter().map(|(name, _)| name.to_string()).collect()
}

/// Endpoints as "ip:port", in the model's order.
fn backends(state: &ServicePortState) -> Vec<String> {
    state
        .endpoints
        .iter()
        .map(|e| format!("{}:{}", e.ip, e.port))
        .collect()
}

/// A one-port TCP Service "web" (80 -> 8080) with one slice holding `endpoints`.
fn web_with(endpoints: Vec<EndpointBuilder>, local_policy: bool) -> DesiredState {
    let mut svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80);
    if local_policy {
        svc = svc.internal_local();
    }
    let mut eps = slice("default", "web-1", "web").tcp("http", 8080);
    for e in endpoints {
        eps = eps.endpoint(e);
    }
    build(&[svc.build()], &[eps.build()])
}

#[test]
fn basic_service_port_state() {
    let state = web_with(vec![endpoint("10.0.0.2").node("node-b")], false);
    assert_eq!(names(&state), ["default/web:http/TCP"]);
    let web = get(&state, &tcp("web", "http"));
    assert_eq!(web.cluster_ip.to_string(), "10.96.0.10");
    assert_eq!(web.port, 80);
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.session_affinity, None);
    assert!(!web.internal_traffic_policy_local);
    assert_eq!(backends(web), ["10.0.0.2:8080"]);
    let ep = &web.endpoints[0];
    assert_eq!(ep.node_name.as_deref(), Some("node-b"));
    assert!(ep.ready && ep.serving && !ep.terminating && !ep.is_local);
    assert_eq!(web.no_endpoints_action(), None);
}

#[test]
fn condition_defaults_follow_the_api() {
    // (description, endpoint, expected ready, serving, terminating)
    let table: Vec<(&str, EndpointBuilder, bool, bool, bool)> = vec![
        ("all unset", endpoint("10.0.0.1"), true, true, false),
        (
            "ready false only: serving unset reads true",
            endpoint("10.0.0.1").ready(false).terminating(true),
            false,
            true,
            true,
        ),
        (
            "explicit all",
            endpoint("10.0.0.1")
                .ready(true)
                .serving(true)
                .terminating(false),
            true,
            true,
            false,
        ),
    ];
    for (what, ep, ready, serving, terminating) in table {
        let state = web_with(vec![ep], false);
        let web = get(&state, &tcp("web", "http"));
        let e = web
            .endpoints
            .first()
            .unwrap_or_else(|| panic!("{what}: endpoint not chosen"));
        assert_eq!(
            (e.ready, e.serving, e.terminating),
            (ready, serving, terminating),
            "{what}"
        );
    }
}

#[test]
fn endpoint_choice_table() {
    struct Case {
        what: &'static str,
        local_policy: bool,
        endpoints: Vec<EndpointBuilder>,
        chosen: Vec<&'static str>,
        when_empty: Option<NoEndpointsAction>,
    }
    let ready = |ip: &str, node: &str| endpoint(ip).node(node).ready(true);
    let not_ready = |ip: &str, node: &str| endpoint(ip).node(node).ready(false).serving(false);
    let terminating = |ip: &str, node: &str| endpoint(ip).node(node).serving_terminating();
    let terminating_not_serving = |ip: &str, node: &str| {
        endpoint(ip)
            .node(node)
            .ready(false)
            .serving(false)
            .terminating(true)
    };
    let cases = vec![
        Case {
            what: "ready endpoints only, not-ready dropped",
            local_policy: false,
            endpoints: vec![ready("10.0.0.1", "node-a"), not_ready("10.0.0.2", "node-b")],
            chosen: vec!["10.0.0.1:8080"],
            when_empty: None,
        },
        Case {
            what: "ready wins over serving-terminating",
            local_policy: false,
            endpoints: vec![
                ready("10.0.0.1", "node-b"),
                terminating("10.0.0.2", "node-a"),
            ],
            chosen: vec!["10.0.0.1:8080"],
            when_empty: None,
        },
        Case {
            what: "no ready: fall back to serving-terminating",
            local_policy: false,
            endpoints: vec![
                terminating("10.0.0.2", "node-a"),
                terminating_not_serving("10.0.0.3", "node-b"),
                not_ready("10.0.0.4", "node-b"),
            ],
            chosen: vec!["10.0.0.2:8080"],
            when_empty: None,
        },
        Case {
            what: "nothing usable: empty, reject",
            local_policy: false,
            endpoints: vec![
                not_ready("10.0.0.4", "node-b"),
                terminating_not_serving("10.0.0.3", "node-a"),
            ],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Reject),
        },
        Case {
            what: "serving but not terminating is no fallback",
            local_policy: false,
            endpoints: vec![
                endpoint("10.0.0.5")
                    .node("node-a")
                    .ready(false)
                    .serving(true)
                    .terminating(false),
            ],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Reject),
        },
        Case {
            what: "no slices' endpoints at all: reject",
            local_policy: false,
            endpoints: vec![],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Reject),
        },
        Case {
            what: "local policy: only this node's ready endpoints",
            local_policy: true,
            endpoints: vec![
                ready("10.0.0.1", "node-a"),
                ready("10.0.0.2", "node-b"),
                ready("10.0.0.3", "node-a"),
            ],
            chosen: vec!["10.0.0.1:8080", "10.0.0.3:8080"],
            when_empty: None,
        },
        Case {
            what: "local policy: endpoints only elsewhere: empty, drop",
            local_policy: true,
            endpoints: vec![ready("10.0.0.2", "node-b")],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Drop),
        },
        Case {
            what: "local policy: remote serving-terminating also means drop",
            local_policy: true,
            endpoints: vec![terminating("10.0.0.2", "node-b")],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Drop),
        },
        Case {
            what: "local policy: no local ready, local serving-terminating used even with remote ready",
            local_policy: true,
            endpoints: vec![
                ready("10.0.0.2", "node-b"),
                terminating("10.0.0.1", "node-a"),
            ],
            chosen: vec!["10.0.0.1:8080"],
            when_empty: None,
        },
        Case {
            what: "local policy: nothing usable anywhere: reject",
            local_policy: true,
            endpoints: vec![not_ready("10.0.0.1", "node-a")],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Reject),
        },
        Case {
            what: "local policy: endpoint without node name is not local",
            local_policy: true,
            endpoints: vec![endpoint("10.0.0.1")],
            chosen: vec![],
            when_empty: Some(NoEndpointsAction::Drop),
        },
    ];
    for case in cases {
        let state = web_with(case.endpoints, case.local_policy);
        let web = get(&state, &tcp("web", "http"));
        assert_eq!(backends(web), case.chosen, "{}", case.what);
        assert_eq!(web.no_endpoints_action(), case.when_empty, "{}", case.what);
        assert_eq!(
            web.internal_traffic_policy_local, case.local_policy,
            "{}",
            case.what
        );
    }
}

#[test]
fn is_local_marks_this_nodes_endpoints() {
    let state = web_with(
        vec![
            endpoint("10.0.0.1").node("node-a"),
            endpoint("10.0.0.2").node("node-b"),
            endpoint("10.0.0.3"),
        ],
        false,
    );
    let web = get(&state, &tcp("web", "http"));
    let local: Vec<bool> = web.endpoints.iter().map(|e| e.is_local).collect();
    assert_eq!(local, [true, false, false]);

    // An empty node name never makes anything local.
    let svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
        .build();
    let eps = slice("default", "web-1", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.1").node(""))
        .build();
    let state = build_desired_state([&svc], [&eps], "");
    assert!(!get(&state, &tcp("web", "http")).endpoints[0].is_local);
}

#[test]
fn multi_port_service_with_named_target_ports() {
    // targetPort "web" / "metrics" are container port names; the slice
    // carries the numbers the endpoint controller resolved.
    let svc = service("default", "app")
        .cluster_ip("10.96.0.20")
        .tcp("http", 80)
        .named_target("web")
        .tcp("metrics", 9090)
        .named_target("metrics")
        .build();
    let eps = slice("default", "app-1", "app")
        .tcp("http", 8080)
        .tcp("metrics", 9102)
        .endpoint(endpoint("10.0.0.1"))
        .endpoint(endpoint("10.0.0.2"))
        .build();
    let state = build(&[svc], &[eps]);
    assert_eq!(
        names(&state),
        ["default/app:http/TCP", "default/app:metrics/TCP"]
    );
    let http = get(&state, &tcp("app", "http"));
    assert_eq!(http.port, 80);
    assert_eq!(backends(http), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let metrics = get(&state, &tcp("app", "metrics"));
    assert_eq!(metrics.port, 9090);
    assert_eq!(backends(metrics), ["10.0.0.1:9102", "10.0.0.2:9102"]);
}

#[test]
fn service_port_without_matching_slice_port_has_no_endpoints() {
    let svc = service("default", "app")
        .cluster_ip("10.96.0.20")
        .tcp("http", 80)
        .tcp("admin", 81)
        .build();
    let eps = slice("default", "app-1", "app")
        .tcp("http", 8080)
        .udp("admin", 8081) // protocol differs: not the admin TCP port
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let state = build(&[svc], &[eps]);
    assert_eq!(
        backends(get(&state, &tcp("app", "http"))),
        ["10.0.0.1:8080"]
    );
    let admin = get(&state, &tcp("app", "admin"));
    assert!(admin.endpoints.is_empty());
    assert_eq!(admin.no_endpoints_action(), Some(NoEndpointsAction::Reject));
}

#[test]
fn same_port_tcp_and_udp_are_distinct() {
    let svc = service("kube-system", "dns")
        .cluster_ip("10.96.0.10")
        .udp("dns", 53)
        .tcp("dns-tcp", 53)
        .build();
    let eps = slice("kube-system", "dns-1", "dns")
        .udp("dns", 5353)
        .tcp("dns-tcp", 5354)
        .endpoint(endpoint("10.0.0.9"))
        .build();
    let state = build(&[svc], &[eps]);
    let udp = get(
        &state,
        &ServicePortName::new("kube-system", "dns", "dns", Protocol::Udp),
    );
    let tcp = get(
        &state,
        &ServicePortName::new("kube-system", "dns", "dns-tcp", Protocol::Tcp),
    );
    assert_eq!((udp.port, udp.protocol), (53, Protocol::Udp));
    assert_eq!((tcp.port, tcp.protocol), (53, Protocol::Tcp));
    assert_eq!(backends(udp), ["10.0.0.9:5353"]);
    assert_eq!(backends(tcp), ["10.0.0.9:5354"]);
}

#[test]
fn same_port_name_with_two_protocols() {
    // Two ports may share a name only in the key's protocol part.
    let svc = service("default", "dual")
        .cluster_ip("10.96.0.30")
        .port("", 53, "UDP")
        .build();
    let eps = slice("default", "dual-1", "dual")
        .port("", 53, "UDP")
        .port("", 53, "TCP")
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let state = build(&[svc], &[eps]);
    assert_eq!(names(&state), ["default/dual:/UDP"]);
    assert_eq!(
        backends(get(&state, &port_name("dual", "", Protocol::Udp))),
        ["10.0.0.1:53"]
    );
}

#[test]
fn session_affinity_table() {
    /// `None`: no affinity; `Some(timeout)`: ClientIP with that timeoutSeconds.
    type Affinity = Option<Option<i32>>;
    // (description, affinity set on the Service, expected timeout)
    let table: Vec<(&str, Affinity, Option<u32>)> = vec![
        ("no affinity", None, None),
        (
            "ClientIP without timeout: default",
            Some(None),
            Some(DEFAULT_CLIENT_IP_TIMEOUT_SECS),
        ),
        ("ClientIP with timeout", Some(Some(60)), Some(60)),
        (
            "ClientIP with invalid timeout: default",
            Some(Some(0)),
            Some(10_800),
        ),
    ];
    for (what, affinity, expected) in table {
        let mut svc = service("default", "web")
            .cluster_ip("10.96.0.10")
            .tcp("http", 80);
        if let Some(timeout) = affinity {
            svc = svc.client_ip_affinity(timeout);
        }
        let state = build(&[svc.build()], &[]);
        assert_eq!(
            get(&state, &tcp("web", "http")).session_affinity,
            expected,
            "{what}"
        );
    }
}

#[test]
fn ignored_services_table() {
    let eps = |name: &str| {
        slice("default", &format!("{name}-1"), name)
            .tcp("http", 8080)
            .endpoint(endpoint("10.0.0.1"))
            .build()
    };
    let table: Vec<(&str, Service)> = vec![
        (
            "headless",
            service("default", "h").headless().tcp("http", 80).build(),
        ),
        (
            "ExternalName",
            service("default", "x")
                .external_name("db.example.com")
                .tcp("http", 80)
                .build(),
        ),
        (
            "no cluster IP allocated",
            service("default", "n").tcp("http", 80).build(),
        ),
        (
            "belongs to another proxy",
            service("default", "other-proxy")
                .cluster_ip("10.96.0.99")
                .label("service.kubernetes.io/service-proxy-name", "foo")
                .tcp("http", 80)
                .build(),
        ),
        (
            "IPv6 only",
            service("default", "v6")
                .cluster_ip("fd00::10")
                .tcp("http", 80)
                .build(),
        ),
    ];
    for (what, svc) in table {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let state = build(&[svc], &[eps(&name)]);
        assert!(state.is_empty(), "{what}: {:?}", names(&state));
    }
}

#[test]
fn dual_stack_uses_the_ipv4_cluster_ip() {
    let svc = service("default", "ds")
        .cluster_ips(&["fd00::10", "10.96.0.40"])
        .tcp("http", 80)
        .build();
    let state = build(&[svc], &[]);
    assert_eq!(
        get(&state, &tcp("ds", "http")).cluster_ip.to_string(),
        "10.96.0.40"
    );
}

#[test]
fn ipv6_slices_are_skipped() {
    let svc = service("default", "web")
        .cluster_ips(&["10.96.0.10", "fd00::10"])
        .tcp("http", 80)
        .build();
    let v4 = slice("default", "web-v4", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let v6 = slice("default", "web-v6", "web")
        .ipv6()
        .tcp("http", 8080)
        .endpoint(endpoint("fd00::1"))
        .build();
    let state = build(&[svc], &[v4, v6]);
    assert_eq!(
        backends(get(&state, &tcp("web", "http"))),
        ["10.0.0.1:8080"]
    );
}

#[test]
fn selectorless_service_uses_hand_made_slice() {
    let svc = service("default", "external-db")
        .no_selector()
        .cluster_ip("10.96.0.50")
        .tcp("pg", 5432)
        .build();
    let eps = slice("default", "external-db-manual", "external-db")
        .tcp("pg", 5432)
        .endpoint(endpoint("192.168.10.5"))
        .build();
    let state = build(&[svc], &[eps]);
    assert_eq!(
        backends(get(&state, &tcp("external-db", "pg"))),
        ["192.168.10.5:5432"]
    );
}

#[test]
fn duplicates_across_slices_are_merged() {
    let svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
        .build();
    // 10.0.0.2 moved between slices: listed in both, not ready in the older copy.
    let a = slice("default", "web-a", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.1"))
        .endpoint(endpoint("10.0.0.2").ready(false).serving(false))
        .build();
    let b = slice("default", "web-b", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.2").node("node-a"))
        .endpoint(endpoint("10.0.0.3"))
        .build();
    let state = build(std::slice::from_ref(&svc), &[a.clone(), b.clone()]);
    let web = get(&state, &tcp("web", "http"));
    assert_eq!(
        backends(web),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    // The ready, local copy won.
    assert!(web.endpoints[1].ready && web.endpoints[1].is_local);
    // Slice order does not matter.
    assert_eq!(build(&[svc], &[b, a]), state);
}

#[test]
fn same_ip_with_different_ports_across_slices_are_both_kept() {
    // During a targetPort change the old and new slices name different ports.
    let svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
        .build();
    let old = slice("default", "web-a", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let new = slice("default", "web-b", "web")
        .tcp("http", 9090)
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let state = build(&[svc], &[old, new]);
    assert_eq!(
        backends(get(&state, &tcp("web", "http"))),
        ["10.0.0.1:8080", "10.0.0.1:9090"]
    );
}

#[test]
fn slices_for_unknown_or_unlabelled_services_are_ignored() {
    let svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
        .build();
    let unknown = slice("default", "ghost-1", "ghost")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let other_namespace = slice("other", "web-1", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.2"))
        .build();
    let unlabelled = slice("default", "web-x", "web")
        .without_service_label()
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.3"))
        .build();
    let state = build(&[svc], &[unknown, other_namespace, unlabelled]);
    assert_eq!(names(&state), ["default/web:http/TCP"]);
    assert!(get(&state, &tcp("web", "http")).endpoints.is_empty());
}

#[test]
fn invalid_inputs_are_skipped_not_fatal() {
    let svc = service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
        .port("weird", 81, "QUIC")
        .port("big", 70_000, "TCP")
        .build();
    let eps = slice("default", "web-1", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("not-an-ip"))
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let mut no_port_number = slice("default", "web-2", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.0.0.2"))
        .build();
    if let Some(ports) = no_port_number.ports.as_mut() {
        ports[0].port = None;
    }
    let state = build(&[svc], &[eps, no_port_number]);
    assert_eq!(names(&state), ["default/web:http/TCP"]);
    assert_eq!(
        backends(get(&state, &tcp("web", "http"))),
        ["10.0.0.1:8080"]
    );
}

#[test]
fn build_is_deterministic_in_input_order() {
    let services = [
        service("default", "b")
            .cluster_ip("10.96.0.2")
            .tcp("", 80)
            .build(),
        service("default", "a")
            .cluster_ip("10.96.0.1")
            .tcp("", 80)
            .build(),
    ];
    let slices = [
        slice("default", "a-1", "a")
            .tcp("", 8080)
            .endpoint(endpoint("10.0.0.9"))
            .endpoint(endpoint("10.0.0.1"))
            .build(),
        slice("default", "b-1", "b")
            .tcp("", 8080)
            .endpoint(endpoint("10.0.0.5"))
            .build(),
    ];
    let forward = build(&services, &slices);
    let reversed_services: Vec<Service> = services.iter().rev().cloned().collect();
    let reversed_slices: Vec<EndpointSlice> = slices.iter().rev().cloned().collect();
    assert_eq!(build(&reversed_services, &reversed_slices), forward);
    assert_eq!(names(&forward), ["default/a:/TCP", "default/b:/TCP"]);
    assert_eq!(
        backends(get(&forward, &tcp("a", ""))),
        ["10.0.0.1:8080", "10.0.0.9:8080"]
    );
}

/// A two-port Service "lb" (http 80, https 443) of `type` with the given
/// external policy, health check node port and node ports 30080/30443.
fn external(service_type: &str, etp: &str, health_check_node_port: Option<i32>) -> Service {
    let mut svc = service("default", "lb")
        .cluster_ip("10.96.0.40")
        .tcp("http", 80)
        .tcp("https", 443)
        .build();
    let spec = svc.spec.as_mut().expect("spec");
    spec.type_ = Some(service_type.to_owned());
    spec.external_traffic_policy = Some(etp.to_owned());
    spec.health_check_node_port = health_check_node_port;
    for (port, node_port) in spec
        .ports
        .as_mut()
        .expect("ports")
        .iter_mut()
        .zip([30080, 30443])
    {
        port.node_port = Some(node_port);
    }
    svc
}

/// Endpoints of "lb" on both ports: 10.0.0.1 local and ready; 10.0.0.2 local
/// not ready; 10.0.0.3 ready on another node; 10.0.0.4 local, terminating but
/// serving; 10.0.0.5 ready without a node.
fn external_slices(local_ready: bool) -> Vec<EndpointSlice> {
    vec![
        slice("default", "lb-1", "lb")
            .tcp("http", 8080)
            .tcp("https", 8443)
            .endpoint(endpoint("10.0.0.1").node(NODE).ready(local_ready))
            .endpoint(endpoint("10.0.0.2").node(NODE).ready(false))
            .endpoint(endpoint("10.0.0.3").node("node-b"))
            .endpoint(endpoint("10.0.0.4").node(NODE).serving_terminating())
            .endpoint(endpoint("10.0.0.5"))
            .build(),
    ]
}

#[test]
fn external_fields_and_the_health_check_count_local_ready_endpoints_by_address() {
    let lb = ServiceKey::new("default", "lb");
    let state = build(
        &[external("LoadBalancer", "Local", Some(31000))],
        &external_slices(true),
    );
    let http = get(&state, &tcp("lb", "http"));
    assert_eq!(http.service_type, ServiceType::LoadBalancer);
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(get(&state, &tcp("lb", "https")).node_port, Some(30443));
    assert!(http.external_traffic_policy_local);
    assert_eq!(http.health_check_node_port, Some(31000));
    assert_eq!(
        http.local_ready,
        ["10.0.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // One local ready pod serving two ports is one endpoint, as kube-proxy counts.
    assert_eq!(
        state.health_check(&lb),
        Some(HealthCheck {
            port: 31000,
            local_endpoints: 1
        })
    );
    // Not ready (only the terminating and the unready ones left locally): 0.
    let state = build(
        &[external("LoadBalancer", "Local", Some(31000))],
        &external_slices(false),
    );
    assert_eq!(
        state.health_check(&lb),
        Some(HealthCheck {
            port: 31000,
            local_endpoints: 0
        })
    );
    // Health checks exist for LoadBalancer + Local only.
    for (service_type, etp) in [("LoadBalancer", "Cluster"), ("NodePort", "Local")] {
        let state = build(
            &[external(service_type, etp, Some(31000))],
            &external_slices(true),
        );
        assert_eq!(state.health_check(&lb), None, "{service_type} {etp}");
        assert_eq!(get(&state, &tcp("lb", "http")).health_check_node_port, None);
    }
    let state = build(
        &[external("LoadBalancer", "Local", None)],
        &external_slices(true),
    );
    assert_eq!(state.health_check(&lb), None);
}

#[test]
fn becoming_a_load_balancer_changes_the_frontends_not_the_endpoints() {
    let mut plain = external("ClusterIP", "", None);
    let spec = plain.spec.as_mut().expect("spec");
    spec.external_traffic_policy = None;
    for port in spec.ports.as_mut().expect("ports") {
        port.node_port = None;
    }
    let before = build(&[plain], &external_slices(true));
    let after = build(
        &[external("LoadBalancer", "Local", Some(31000))],
        &external_slices(true),
    );
    let (a, b) = (
        get(&before, &tcp("lb", "http")),
        get(&after, &tcp("lb", "http")),
    );
    assert_eq!(a.service_type, ServiceType::ClusterIp);
    assert_eq!((a.node_port, a.health_check_node_port), (None, None));
    assert_ne!(a, b);
    // The node port (and any LB address) is a new external frontend; the
    // ClusterIP's endpoints stay.
    assert!(!a.same_frontend(b));
    assert_eq!(a.endpoints, b.endpoints);
    assert_eq!(a.serving, b.serving);
}
