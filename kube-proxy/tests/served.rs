//! After a restart, the conntrack flush is judged against what the switch
//! served: the flows and groups the previous proxy left, rendered here by the
//! same code that installs them and read back by `ServedBefore::read`.

use switchyard_ovs::openflow::{Flow, Group};
use switchyard_pipeline::Cookie;
use switchyard_proxy::fixtures::{EndpointBuilder, endpoint, service, slice};
use switchyard_proxy::flows::{port_flows, port_group};
use switchyard_proxy::served::ServedBefore;
use switchyard_proxy::{DesiredState, build_desired_state};

const NODE: &str = "node-a";

/// `dns` (UDP 53 -> 5353, VIP 10.96.0.10, optionally with ClientIP affinity) with
/// `endpoints`, plus `web` (TCP 80 -> 8080, VIP 10.96.0.20) with 10.2.0.1.
fn state(affinity: bool, endpoints: &[&str], with_dns: bool) -> DesiredState {
    let mut dns = service("default", "dns")
        .cluster_ip("10.96.0.10")
        .udp("p", 53);
    if affinity {
        dns = dns.client_ip_affinity(Some(60));
    }
    let dns = dns.build();
    let mut dns_slice = slice("default", "dns-1", "dns").udp("p", 5353);
    for ip in endpoints {
        dns_slice = dns_slice.endpoint(ready(ip));
    }
    let web = service("default", "web")
        .cluster_ip("10.96.0.20")
        .tcp("p", 80)
        .build();
    let web_slice = slice("default", "web-1", "web")
        .tcp("p", 8080)
        .endpoint(ready("10.2.0.1"))
        .build();
    let services = if with_dns {
        vec![&dns, &web]
    } else {
        vec![&web]
    };
    build_desired_state(services, [&dns_slice.build(), &web_slice], NODE)
}

fn ready(ip: &str) -> EndpointBuilder {
    endpoint(ip).ready(true)
}

/// What a proxy that installed `installed` leaves on the switch, read back.
fn served(installed: &DesiredState) -> ServedBefore {
    let mut ports = Vec::new();
    let mut flows: Vec<Flow> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for (index, (name, port_state)) in installed.iter().enumerate() {
        let group_id = 1000 + u32::try_from(index).unwrap();
        ports.push((name.clone(), group_id));
        flows.extend(port_flows(7, group_id, name, port_state));
        groups.push(port_group(group_id, port_state));
    }
    ServedBefore::read(&ports, &flows, &groups, |flow| {
        Cookie::from_value(flow.cookie).map(|c| c.object)
    })
}

/// (stale endpoints as `VIP:port->EP:port`, stale frontends as `VIP:port`).
fn stale(before: &DesiredState, after: &DesiredState) -> (Vec<String>, Vec<String>) {
    let (endpoints, frontends) = served(before).stale_in(after);
    (
        endpoints
            .iter()
            .map(|s| {
                format!(
                    "{}:{}->{}:{}",
                    s.cluster_ip, s.port, s.endpoint_ip, s.endpoint_port
                )
            })
            .collect(),
        frontends
            .iter()
            .map(|s| format!("{}:{}", s.cluster_ip, s.port))
            .collect(),
    )
}

const NONE: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());

#[test]
fn the_switch_is_read_back_with_the_udp_ports_and_their_endpoints() {
    for affinity in [false, true] {
        let s = state(affinity, &["10.1.0.1", "10.1.0.2"], true);
        let read = served(&s);
        let ports: Vec<String> = read
            .ports()
            .iter()
            .map(|(name, p)| {
                let eps: Vec<String> = p
                    .endpoints
                    .iter()
                    .map(|(ip, port)| format!("{ip}:{port}"))
                    .collect();
                format!("{name} {}:{} {eps:?}", p.cluster_ip, p.port)
            })
            .collect();
        assert_eq!(
            ports,
            [r#"default/dns:p/UDP 10.96.0.10:53 ["10.1.0.1:5353", "10.1.0.2:5353"]"#],
            "affinity {affinity}"
        );
    }
}

#[test]
fn a_restart_with_nothing_changed_flushes_nothing() {
    for affinity in [false, true] {
        let s = state(affinity, &["10.1.0.1", "10.1.0.2"], true);
        assert_eq!(stale(&s, &s), NONE, "affinity {affinity}");
    }
}

#[test]
fn an_endpoint_gone_while_down_is_flushed_and_the_live_flows_are_not() {
    for affinity in [false, true] {
        let before = state(affinity, &["10.1.0.1", "10.1.0.2"], true);
        let after = state(affinity, &["10.1.0.1", "10.1.0.3"], true);
        assert_eq!(
            stale(&before, &after),
            (vec!["10.96.0.10:53->10.1.0.2:5353".to_string()], vec![]),
            "affinity {affinity}"
        );
    }
}

#[test]
fn a_port_that_gained_its_first_endpoints_or_is_new_flushes_its_frontend() {
    // No endpoints on the switch (reject flows, empty group) -> some now.
    let before = state(false, &[], true);
    let after = state(false, &["10.1.0.1"], true);
    assert_eq!(
        stale(&before, &after),
        (vec![], vec!["10.96.0.10:53".to_string()])
    );
    // Not on the switch at all.
    let before = state(false, &[], false);
    assert_eq!(
        stale(&before, &after),
        (vec![], vec!["10.96.0.10:53".to_string()])
    );
}

#[test]
fn a_port_deleted_while_down_flushes_all_its_endpoints() {
    let before = state(false, &["10.1.0.1", "10.1.0.2"], true);
    let after = state(false, &[], false);
    assert_eq!(
        stale(&before, &after),
        (
            vec![
                "10.96.0.10:53->10.1.0.1:5353".to_string(),
                "10.96.0.10:53->10.1.0.2:5353".to_string()
            ],
            vec![]
        )
    );
}
