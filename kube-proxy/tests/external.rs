//! NodePort, external IP and LoadBalancer frontends: the model from Service
//! objects, the flows of SERVICE_EXTERNAL_FRONTEND, the local-endpoints
//! group, the change sets of type changes, and the host's nftables script
//! (checked by the real `nft` in a scratch network namespace) and routes.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use switchyard_proxy::external::{
    NODEPORT_VIP_CLUSTER, NODEPORT_VIP_LOCAL, NodeContext, frontend_addresses, frontend_flows,
};
use switchyard_proxy::fixtures::{ServiceBuilder, endpoint, service, slice};
use switchyard_proxy::flows::port_flows;
use switchyard_proxy::groups::{GroupLayout, local_group_id};
use switchyard_proxy::host::HostRules;
use switchyard_proxy::program::{self, HairpinRefs};
use switchyard_proxy::{
    DesiredState, GroupIdAllocator, ServicePortState, build_desired_state, diff,
};

const NODE: &str = "node-1";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

fn node() -> Arc<NodeContext> {
    Arc::new(NodeContext {
        addresses: vec![NODE_IP],
        gateway: Some(GATEWAY),
        external_ip_cidrs: Vec::new(),
    })
}

/// `type`, node ports (one per port, in order), external IPs, ETP and LB ingress.
fn external(
    builder: ServiceBuilder,
    kind: &str,
    node_ports: &[i32],
    external_ips: &[&str],
    etp_local: bool,
    ingress: &[(&str, Option<&str>)],
) -> Service {
    let mut svc = builder.build();
    let spec = svc.spec.as_mut().unwrap();
    spec.type_ = Some(kind.to_owned());
    for (port, np) in spec.ports.iter_mut().flatten().zip(node_ports) {
        port.node_port = Some(*np);
    }
    if !external_ips.is_empty() {
        spec.external_ips = Some(external_ips.iter().map(|s| (*s).to_owned()).collect());
    }
    spec.external_traffic_policy = Some(if etp_local { "Local" } else { "Cluster" }.to_owned());
    if !ingress.is_empty() {
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|(ip, mode)| LoadBalancerIngress {
                            ip: Some((*ip).to_owned()),
                            ip_mode: mode.map(str::to_owned),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
    }
    svc
}

fn web() -> ServiceBuilder {
    service("default", "web")
        .cluster_ip("10.96.0.10")
        .tcp("http", 80)
}

/// One local endpoint (10.244.0.7) and one on node-2 (10.244.1.5).
fn state_of(svc: &Service) -> DesiredState {
    let slice = slice("default", "web-abc", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.244.1.5").node("node-2"))
        .endpoint(endpoint("10.244.0.7").node(NODE))
        .build();
    let mut state = build_desired_state([svc], [&slice], NODE);
    // What the recompute does: the node context of every external frontend.
    let key = state.iter().next().unwrap().0.service();
    let ports: Vec<_> = state
        .iter()
        .map(|(name, port)| {
            let mut port = ServicePortState::clone(port);
            if !port.external.is_empty() {
                port.external.complete(name, &node());
            }
            (name.clone(), port)
        })
        .collect();
    state.replace_service(&key, ports);
    state
}

fn only(state: &DesiredState) -> &ServicePortState {
    assert_eq!(state.len(), 1);
    state.iter().next().unwrap().1
}

fn flow_text(state: &DesiredState) -> Vec<String> {
    let (name, port) = state.iter().next().unwrap();
    frontend_flows(3, 7, name, port)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn lb_local() -> Service {
    external(
        web(),
        "LoadBalancer",
        &[30080],
        &["192.0.2.10"],
        true,
        &[("192.0.2.20", None), ("192.0.2.30", Some("Proxy"))],
    )
}

#[test]
fn the_model_follows_type_policy_and_ip_mode() {
    let state = state_of(&lb_local());
    let ext = &only(&state).external;
    assert_eq!(ext.node_port, Some(30080));
    // ipMode Proxy gets no frontend.
    assert_eq!(
        ext.ips,
        [
            "192.0.2.10".parse::<Ipv4Addr>().unwrap(),
            "192.0.2.20".parse().unwrap()
        ]
    );
    assert!(ext.local && ext.has_local_group());
    let local: Vec<Ipv4Addr> = ext.local_endpoints.iter().map(|e| e.ip).collect();
    assert_eq!(local, ["10.244.0.7".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(
        frontend_addresses(only(&state)),
        [
            ("10.96.0.10".parse().unwrap(), 80),
            (NODEPORT_VIP_CLUSTER, 30080),
            (NODEPORT_VIP_LOCAL, 30080),
            (NODE_IP, 30080),
            ("192.0.2.10".parse().unwrap(), 80),
            ("192.0.2.20".parse().unwrap(), 80),
        ]
    );
    // A ClusterIP Service keeps a stale nodePort in its spec: no frontend.
    let state = state_of(&external(web(), "ClusterIP", &[30080], &[], false, &[]));
    assert!(only(&state).external.is_empty());
    // LB ingress counts only for type LoadBalancer; externalIPs for any type.
    let state = state_of(&external(
        web(),
        "NodePort",
        &[30080],
        &["192.0.2.10"],
        false,
        &[("192.0.2.20", None)],
    ));
    let ext = &only(&state).external;
    assert_eq!(ext.ips, ["192.0.2.10".parse::<Ipv4Addr>().unwrap()]);
    assert!(!ext.local && !ext.has_local_group());
}

#[test]
fn local_endpoints_fall_back_to_serving_terminating_ones() {
    let svc = lb_local();
    let terminating = slice("default", "web-abc", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.244.1.5").node("node-2"))
        .endpoint(endpoint("10.244.0.7").node(NODE).serving_terminating())
        .build();
    let state = build_desired_state([&svc], [&terminating], NODE);
    let port = only(&state);
    let local: Vec<Ipv4Addr> = port.external.local_endpoints.iter().map(|e| e.ip).collect();
    assert_eq!(local, ["10.244.0.7".parse::<Ipv4Addr>().unwrap()]);
    // No local endpoint at all: no local group, the ETP-Local frontends drop.
    let remote = slice("default", "web-abc", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.244.1.5").node("node-2"))
        .build();
    let state = build_desired_state([&svc], [&remote], NODE);
    assert!(!only(&state).external.has_local_group());
}

#[test]
fn flows_of_an_etp_local_load_balancer_golden() {
    let gl = local_group_id(7);
    assert_eq!(gl, 0x7f00_0007);
    let c = "table=29,cookie=0x5359020300000007";
    let to_g = "actions=set_field:0x10000/0x30000->reg4,group:7";
    let to_gl = "actions=set_field:0x10000/0x30000->reg4,group:2130706439";
    let s = "reg4=0x0/0x30000";
    assert_eq!(
        flow_text(&state_of(&lb_local())),
        [
            format!("{c},priority=200,tcp,nw_dst=169.254.169.250,tcp_dst=30080,{s} {to_g}"),
            format!("{c},priority=200,tcp,nw_dst=169.254.169.249,tcp_dst=30080,{s} {to_gl}"),
            format!("{c},priority=200,tcp,nw_dst=192.168.10.1,tcp_dst=30080,{s} {to_g}"),
            format!("{c},priority=200,tcp,nw_dst=192.0.2.10,tcp_dst=80,{s} {to_g}"),
            format!("{c},priority=205,tcp,nw_dst=192.0.2.10,tcp_dst=80,{s},reg0=0x2/0xf {to_gl}"),
            format!(
                "{c},priority=210,tcp,nw_dst=192.0.2.10,tcp_dst=80,{s},reg0=0x2/0xf,nw_src=10.244.0.1 {to_g}"
            ),
            format!("{c},priority=200,tcp,nw_dst=192.0.2.20,tcp_dst=80,{s} {to_g}"),
            format!("{c},priority=205,tcp,nw_dst=192.0.2.20,tcp_dst=80,{s},reg0=0x2/0xf {to_gl}"),
            format!(
                "{c},priority=210,tcp,nw_dst=192.0.2.20,tcp_dst=80,{s},reg0=0x2/0xf,nw_src=10.244.0.1 {to_g}"
            ),
        ]
    );
    // The local group holds the local endpoint only.
    let state = state_of(&lb_local());
    let groups = GroupLayout::default().port_groups(7, only(&state));
    assert_eq!(
        groups.iter().map(|g| g.group_id).collect::<Vec<_>>(),
        [7, gl]
    );
    assert_eq!(groups[0].buckets.len(), 2);
    assert_eq!(groups[1].buckets.len(), 1);
}

#[test]
fn etp_local_without_local_endpoints_drops_and_without_any_rejects() {
    let svc = external(web(), "NodePort", &[30080], &[], true, &[]);
    let remote_only = slice("default", "web-abc", "web")
        .tcp("http", 8080)
        .endpoint(endpoint("10.244.1.5").node("node-2"))
        .build();
    let state = build_desired_state([&svc], [&remote_only], NODE);
    let (name, port) = state.iter().next().unwrap();
    let text: Vec<String> = frontend_flows(3, 7, name, port)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text[0].contains("nw_dst=169.254.169.250") && text[0].ends_with("group:7"),
        "{text:?}"
    );
    assert!(
        text[1].contains("nw_dst=169.254.169.249") && text[1].ends_with("actions=drop"),
        "{text:?}"
    );
    let state = build_desired_state([&svc], [], NODE);
    let (name, port) = state.iter().next().unwrap();
    let text: Vec<String> = frontend_flows(3, 7, name, port)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(text.iter().all(|l| l.contains("controller")), "{text:?}");
}

/// The change set of NodePort (ETP Local, with a local group) -> ClusterIP:
/// every flow of the port goes by cookie, the local group is deleted, the
/// ClusterIP frontend comes back alone.
#[test]
fn type_change_to_cluster_ip_leaves_no_external_frontend_or_group() {
    let old = state_of(&external(web(), "NodePort", &[30080], &[], true, &[]));
    let new = state_of(&external(web(), "ClusterIP", &[], &[], false, &[]));
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), &old, &mut groups).unwrap();
    let mut hairpin = HairpinRefs::of_state(&old);
    let changes = diff(&old, &new, &mut groups).unwrap();
    assert_eq!(changes.changed.len(), 1);
    assert!(changes.changed[0].frontend_changed);
    let text: Vec<String> = program::incremental(3, &changes, &mut hairpin, GroupLayout::default())
        .iter()
        .map(|m| m.describe())
        .collect();
    let joined = text.join("\n");
    assert!(
        joined.contains("cookie=0x5359020000000001/0xffffff00ffffffff"),
        "{joined}"
    );
    assert!(joined.contains("delete group_id=2130706433"), "{joined}");
    assert!(!joined.contains("table=29"), "{joined}");
    // And back: the external frontends and the local group return.
    let changes = diff(&new, &old, &mut groups).unwrap();
    let joined: String = program::incremental(3, &changes, &mut hairpin, GroupLayout::default())
        .iter()
        .map(|m| m.describe() + "\n")
        .collect();
    assert!(joined.contains("add group_id=2130706433"), "{joined}");
    assert_eq!(joined.matches("table=29").count(), 3, "{joined}");
    // port_flows carries the external frontends (full syncs install them too).
    let (name, port) = old.iter().next().unwrap();
    assert_eq!(
        port_flows(3, 1, name, port)
            .iter()
            .filter(|f| f.table == 29)
            .count(),
        3
    );
}

#[test]
fn host_rules_and_nft_script_golden() {
    let mut state = state_of(&lb_local());
    let mut ranged = external(
        service("default", "api")
            .cluster_ip("10.96.0.11")
            .udp("dns", 53),
        "LoadBalancer",
        &[30053],
        &[],
        false,
        &[("192.0.2.40", None)],
    );
    ranged.spec.as_mut().unwrap().load_balancer_source_ranges =
        Some(vec!["203.0.113.0/24".into(), "198.51.100.7/32".into()]);
    let cluster = state_of(&ranged);
    for (name, port) in cluster.iter() {
        state.replace_service(
            &name.service(),
            vec![(name.clone(), ServicePortState::clone(port))],
        );
    }
    let rules = HostRules::of(&state, &node());
    assert_eq!(
        rules
            .routes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "169.254.169.249",
            "169.254.169.250",
            "169.254.169.251",
            "192.0.2.10",
            "192.0.2.20",
            "192.0.2.40"
        ]
    );
    assert_eq!(rules.nft_script(), GOLDEN_NFT);
}

const GOLDEN_NFT: &str = r#"add table ip switchyard-proxy
delete table ip switchyard-proxy
table ip switchyard-proxy {
	set nodeport_addresses {
		type ipv4_addr
		elements = { 192.168.10.1 }
	}
	set nodeports_cluster {
		type inet_proto . inet_service
		elements = { udp . 30053 }
	}
	set nodeports_local {
		type inet_proto . inet_service
		elements = { tcp . 30080 }
	}
	set external_masquerade {
		type ipv4_addr . inet_proto . inet_service
		elements = { 192.0.2.40 . udp . 53 }
	}
	set source_range_targets {
		type ipv4_addr . inet_proto . inet_service
		elements = { 192.0.2.40 . udp . 53 }
	}
	set source_ranges_allowed {
		type ipv4_addr . inet_proto . inet_service . ipv4_addr
		flags interval
		elements = { 192.0.2.40 . udp . 53 . 198.51.100.7/32, 192.0.2.40 . udp . 53 . 203.0.113.0/24 }
	}
	chain source_ranges {
		type filter hook prerouting priority dstnat - 10; policy accept;
		iifname != "sy-gw0" ip daddr . meta l4proto . th dport @source_range_targets ip daddr . meta l4proto . th dport . ip saddr != @source_ranges_allowed drop
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr @nodeport_addresses meta l4proto . th dport @nodeports_local dnat to 169.254.169.249
		ip daddr @nodeport_addresses meta l4proto . th dport @nodeports_cluster dnat to 169.254.169.250
	}
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr @nodeport_addresses meta l4proto . th dport @nodeports_local dnat to 169.254.169.250
		ip daddr @nodeport_addresses meta l4proto . th dport @nodeports_cluster dnat to 169.254.169.250
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "sy-gw0" iifname != "sy-gw0" ip daddr 169.254.169.250 masquerade
		oifname "sy-gw0" iifname != "sy-gw0" ip daddr . meta l4proto . th dport @external_masquerade masquerade
		ip saddr 169.254.169.251 masquerade
	}
}
"#;

/// Runs `sh -c script` in a new network namespace (`unshare --net`); its
/// stdout, or the failure.
fn in_scratch_netns(script: &str, stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The real `nft` accepts every script (empty sets included), replacing the
/// table twice in a row works, and another table of the host is left alone.
#[test]
fn nft_accepts_the_scripts_and_touches_no_other_table() {
    if !switchyard_ovs_harness::require_privileges(
        "nft_accepts_the_scripts_and_touches_no_other_table",
    ) {
        return;
    }
    let empty = HostRules::of(&DesiredState::new(), &NodeContext::default()).nft_script();
    let full = HostRules::of(&state_of(&lb_local()), &node()).nft_script();
    for script in [&empty, &full, &GOLDEN_NFT.to_string()] {
        in_scratch_netns("nft -c -f -", script)
            .unwrap_or_else(|e| panic!("nft -c refused:\n{script}\n{e}"));
    }
    let listed = in_scratch_netns(
        "nft add table ip other && nft add chain ip other c && cat > /tmp/.sy-nft-$$ && \
         nft -f /tmp/.sy-nft-$$ && nft -f /tmp/.sy-nft-$$; rc=$?; rm -f /tmp/.sy-nft-$$; \
         [ $rc -eq 0 ] && nft list tables && nft list set ip switchyard-proxy nodeports_cluster",
        GOLDEN_NFT,
    )
    .unwrap();
    assert!(listed.contains("table ip other"), "{listed}");
    assert!(listed.contains("table ip switchyard-proxy"), "{listed}");
    assert!(listed.contains("udp . 30053"), "{listed}");
}

fn udp_node_port(node_port: i32, endpoints: &[&str]) -> DesiredState {
    let svc = external(
        service("default", "dns")
            .cluster_ip("10.96.0.53")
            .udp("dns", 53),
        "NodePort",
        &[node_port],
        &[],
        false,
        &[],
    );
    let mut builder = slice("default", "dns-abc", "dns").udp("dns", 5353);
    for ip in endpoints {
        builder = builder.endpoint(endpoint(ip).node("node-2"));
    }
    let state = build_desired_state([&svc], [&builder.build()], NODE);
    let mut out = DesiredState::new();
    for (name, port) in state.iter() {
        let mut port = ServicePortState::clone(port);
        port.external.complete(name, &node());
        out.replace_service(&name.service(), vec![(name.clone(), port)]);
    }
    out
}

/// UDP conntrack flushes cover every frontend address: an endpoint leaving
/// a NodePort Service is flushed at the ClusterIP, the node-port VIP and the
/// node address; after a restart, what the switch served (its external
/// frontends read back too) is judged, not an empty state.
#[test]
fn udp_flushes_cover_the_external_frontends() {
    let two = udp_node_port(30053, &["10.244.1.5", "10.244.1.6"]);
    let one = udp_node_port(30053, &["10.244.1.5"]);
    let mut groups = GroupIdAllocator::new();
    diff(&DesiredState::new(), &two, &mut groups).unwrap();
    let changes = diff(&two, &one, &mut groups).unwrap();
    let stale: Vec<String> = changes
        .stale_udp_endpoints
        .iter()
        .map(|s| format!("{}:{}>{}", s.cluster_ip, s.port, s.endpoint_ip))
        .collect();
    assert_eq!(
        stale,
        [
            "10.96.0.53:53>10.244.1.6",
            "169.254.169.250:30053>10.244.1.6",
            "192.168.10.1:30053>10.244.1.6"
        ]
    );

    // Read back from the flows and groups a proxy installed.
    let (name, port) = two.iter().next().unwrap();
    let flows = port_flows(7, 9, name, port);
    let group_list = GroupLayout::default().port_groups(9, port);
    let served = switchyard_proxy::served::ServedBefore::read(
        &[(name.clone(), 9)],
        &flows,
        &group_list,
        |f| switchyard_pipeline::Cookie::from_value(f.cookie).map(|c| c.object),
    );
    assert_eq!(served.ports()[name].frontends.len(), 3);
    // Nothing changed while down: nothing to flush.
    assert_eq!(served.stale_in(&two), (vec![], vec![]));
    // The node port changed while down: the old node port's entries go,
    // and the new node port's addresses are flushed as new frontends.
    let (endpoints, frontends) =
        served.stale_in(&udp_node_port(30054, &["10.244.1.5", "10.244.1.6"]));
    assert!(endpoints.iter().all(|s| s.port == 30053), "{endpoints:?}");
    assert_eq!(endpoints.len(), 4);
    let new: Vec<String> = frontends
        .iter()
        .map(|f| format!("{}:{}", f.cluster_ip, f.port))
        .collect();
    assert_eq!(new, ["169.254.169.250:30054", "192.168.10.1:30054"]);
}

/// `loadBalancerSourceRanges` restrict the LoadBalancer ingress address
/// only (not the external IP, not the node port): pods outside the ranges
/// are dropped at priority 201, sources inside a range (aggregated: a
/// range inside another is not repeated) and the gateway (filtered by the
/// host) are served at 202.
#[test]
fn source_ranges_restrict_the_load_balancer_address_only() {
    let mut svc = external(
        web(),
        "LoadBalancer",
        &[30080],
        &["192.0.2.10"],
        false,
        &[("192.0.2.20", None)],
    );
    svc.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec![
        "203.0.113.0/24".into(),
        " 203.0.113.128/25".into(),
        "10.244.0.0/16".into(),
    ]);
    let state = state_of(&svc);
    let ext = &only(&state).external;
    assert_eq!(
        ext.source_ranges,
        [
            "10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap(),
            "203.0.113.0/24".parse().unwrap()
        ]
    );
    assert_eq!(ext.ranged_ips, ["192.0.2.20".parse::<Ipv4Addr>().unwrap()]);
    let text = flow_text(&state);
    let on = |prio: u16, ip: &str| {
        text.iter()
            .filter(|f| {
                f.contains(&format!("priority={prio},")) && f.contains(&format!("nw_dst={ip},"))
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let deny = on(201, "192.0.2.20");
    assert_eq!(deny.len(), 1, "{text:#?}");
    assert!(deny[0].ends_with("actions=drop"), "{deny:?}");
    let allow = on(202, "192.0.2.20");
    assert_eq!(allow.len(), 3, "{text:#?}");
    assert!(
        allow.iter().any(|f| f.contains("nw_src=203.0.113.0/24")),
        "{allow:?}"
    );
    assert!(
        allow.iter().any(|f| f.contains("nw_src=10.244.0.0/16")),
        "{allow:?}"
    );
    assert!(
        allow.iter().any(|f| f.contains("reg0=0x2/0xf")),
        "{allow:?}"
    );
    assert!(allow.iter().all(|f| f.ends_with("group:7")), "{allow:?}");
    // The external IP and the node port are not restricted.
    assert!(on(201, "192.0.2.10").is_empty() && on(202, "192.0.2.10").is_empty());
    assert!(
        !text
            .iter()
            .any(|f| f.contains("priority=201") && f.contains("tp_dst=30080"))
    );
    // Without LoadBalancer ingress addresses the ranges restrict nothing.
    let mut no_lb = external(web(), "LoadBalancer", &[30080], &["192.0.2.10"], false, &[]);
    no_lb.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into()]);
    let state = state_of(&no_lb);
    assert!(only(&state).external.source_ranges.is_empty());
    assert!(
        HostRules::of(&state, &node())
            .source_range_targets
            .is_empty()
    );
}

/// `--external-ip-cidrs`: an external IP outside them gets no frontend, no
/// route and no masquerade element; one inside and the LoadBalancer
/// ingress address (not an external IP) are served.
#[test]
fn external_ip_cidrs_refuse_other_external_ips() {
    let svc = external(
        web(),
        "LoadBalancer",
        &[30080],
        &["192.0.2.10", "198.18.0.1"],
        false,
        &[("203.0.113.9", None)],
    );
    let allowlist = Arc::new(NodeContext {
        external_ip_cidrs: vec!["192.0.2.0/28".parse().unwrap()],
        ..NodeContext::clone(&node())
    });
    let state = build_desired_state([&svc], std::iter::empty(), NODE);
    let (name, port) = state.iter().next().unwrap();
    let mut port = ServicePortState::clone(port);
    assert_eq!(port.external.ips.len(), 3);
    port.external.complete(name, &allowlist);
    let served: Vec<String> = port.external.ips.iter().map(ToString::to_string).collect();
    assert_eq!(served, ["192.0.2.10", "203.0.113.9"]);
    let mut state = DesiredState::new();
    state.replace_service(&name.service(), vec![(name.clone(), port)]);
    let rules = HostRules::of(&state, &allowlist);
    assert!(!rules.routes.contains(&"198.18.0.1".parse().unwrap()));
    assert!(
        rules
            .external_masquerade
            .iter()
            .all(|(ip, _, _)| ip.to_string() != "198.18.0.1")
    );
    assert!(!flow_text(&state).iter().any(|f| f.contains("198.18.0.1")));
    // Only external IPs were refused: with all of them gone, an external
    // IP-only Service has no external frontend at all.
    let only_external = external(web(), "ClusterIP", &[], &["198.18.0.1"], false, &[]);
    let state = build_desired_state([&only_external], std::iter::empty(), NODE);
    let (name, port) = state.iter().next().unwrap();
    let mut port = ServicePortState::clone(port);
    port.external.complete(name, &allowlist);
    assert!(port.external.is_empty());
}

/// `sessionAffinity: ClientIP` on external frontends: each balancing frontend is a lookup
/// (reg6 = the group it balances through, then SESSION_AFFINITY and a second pass through
/// this table) plus a copy for state NeedsEndpoint that balances; the ETP-Local frontends use
/// the local group `GL`, which gets its own ENDPOINT_DNAT flows for the local endpoints.
#[test]
fn affinity_on_external_frontends_looks_up_then_balances() {
    let mut svc = lb_local();
    let spec = svc.spec.as_mut().unwrap();
    spec.session_affinity = Some("ClientIP".into());
    let state = state_of(&svc);
    let text = flow_text(&state);
    let gl = local_group_id(7);
    let lookups = |group: u32| {
        text.iter()
            .filter(|f| {
                f.contains("reg4=0x0/0x30000")
                    && f.contains(&format!("set_field:{group:#x}->reg6,"))
                    && f.ends_with("resubmit(,30),resubmit(,29)")
            })
            .count()
    };
    let balances = |group: u32| {
        text.iter()
            .filter(|f| {
                f.contains("reg4=0x10000/0x30000") && f.ends_with(&format!("actions=group:{group}"))
            })
            .count()
    };
    // To G: the cluster VIP, the node address and the two ingress addresses for
    // everyone, and the node itself on the two addresses (priority 210).
    assert_eq!(lookups(7), 6, "{text:#?}");
    assert_eq!(balances(7), 6, "{text:#?}");
    // To GL: the local VIP, and the two addresses from the gateway (priority 205).
    assert_eq!(lookups(gl), 3, "{text:#?}");
    assert_eq!(balances(gl), 3, "{text:#?}");
    assert!(
        !text
            .iter()
            .any(|f| f.contains("reg4=0x0/0x30000") && f.contains("group:"))
    );

    let (_, port) = state.iter().next().unwrap();
    let dnat: Vec<String> = switchyard_proxy::flows::affinity_dnat_flows(3, 7, port)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        dnat.len(),
        3,
        "two endpoints for G, the local one for GL: {dnat:#?}"
    );
    assert_eq!(
        dnat.iter()
            .filter(|f| f.contains(&format!("reg6={gl:#x},")))
            .count(),
        1
    );
    assert!(
        dnat.iter().all(|f| f.contains("NXM_NX_REG6[]")),
        "{dnat:#?}"
    );
}

/// `internalTrafficPolicy: Local` with `externalTrafficPolicy: Cluster`: the port's group
/// holds the local endpoint only (the ClusterIP), the external frontends balance over every
/// endpoint through the cluster-endpoints group `GC`; without any endpoint they reject.
#[test]
fn internal_policy_local_keeps_every_endpoint_for_external_frontends() {
    let mut svc = external(web(), "NodePort", &[30080], &[], false, &[]);
    svc.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    let state = state_of(&svc);
    let port = only(&state);
    let local: Vec<String> = port.endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(local, ["10.244.0.7"]);
    let cluster: Vec<String> = port
        .external
        .cluster_endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(cluster, ["10.244.0.7", "10.244.1.5"]);
    let gc = switchyard_proxy::groups::cluster_group_id(7);
    assert_eq!(gc, 0x7e00_0007);
    let text = flow_text(&state);
    assert!(
        text.iter().all(|f| f.ends_with(&format!("group:{gc}"))),
        "{text:#?}"
    );
    let groups = GroupLayout::default().port_groups(7, port);
    let ids: Vec<u32> = groups.iter().map(|g| g.group_id).collect();
    assert_eq!(ids, [7, gc]);
    assert_eq!(groups[1].buckets.len(), 2);
    // The remote endpoint is in the serving set (UDP flushes on its removal).
    assert!(
        port.serving
            .iter()
            .any(|(ip, _)| ip.to_string() == "10.244.1.5")
    );

    // No endpoint anywhere: the external frontends reject, no GC.
    let empty = build_desired_state([&svc], std::iter::empty(), NODE);
    let (name, port) = empty.iter().next().unwrap();
    let mut port = ServicePortState::clone(port);
    port.external.complete(name, &node());
    assert!(!port.external.has_cluster_group());
    let flows = frontend_flows(3, 7, name, &port);
    assert!(!flows.is_empty());
    assert!(
        flows
            .iter()
            .all(|f| f.to_string().contains("controller(userdata=53.59.52.4a)")),
        "{flows:#?}"
    );
}
