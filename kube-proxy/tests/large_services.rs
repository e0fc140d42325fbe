//! Services with thousands of endpoints, on a real OVS with the real
//! `switchyard-proxy` binary (see `common`). Needs root.
//!
//! Before chained groups, a Service with about 800 endpoints was sent as one
//! group_mod past OpenFlow's 65,535-byte limit: the stream to ovs-vswitchd
//! was corrupted, the Service kept its reject action and no Service created
//! after it was ever programmed on the node.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use common::{BRIDGE, GATEWAY_MAC, Lab, Node, ProxyProcess, eventually};
use serde_json::json;
use switchyard_ovs_harness::require_privileges;

/// Endpoint `i` of the Service with range `range` (10.<range>.x.y).
fn fake_endpoint(range: u8, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, range, 0, 0)) + i)
}

/// A selectorless Service `name` (port 80 named http) and EndpointSlices
/// of at most 1,000 endpoints (the API's limit per slice) with `n`
/// endpoints 10.<range>.x.y on port 8080. Returns the cluster IP.
async fn create_large_service(
    lab: &Lab,
    name: &str,
    n: u32,
    range: u8,
    affinity: bool,
) -> Ipv4Addr {
    let mut spec = json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    let vip = lab
        .create_service(json!({"metadata": {"name": name}, "spec": spec}))
        .await;
    for (k, start) in (0..n).step_by(1_000).enumerate() {
        let endpoints: Vec<Ipv4Addr> = (start..n.min(start + 1_000))
            .map(|i| fake_endpoint(range, i))
            .collect();
        lab.create_slice(name, k, &endpoints, "node-2").await;
    }
    vip
}

/// The endpoints 10.<range>.x.y that the bridge's groups lead to: DNAT
/// targets, and for affinity groups the endpoint loaded into reg3.
fn programmed_endpoints(groups: &str, range: u8) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    for part in groups.split(',') {
        if let Some(rest) = part.strip_prefix("actions=ct(commit").or(Some(part))
            && let Some(at) = rest.find("nat(dst=")
        {
            let addr = &rest[at + 8..];
            let addr = addr.split(':').next().unwrap_or_default();
            if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                found.insert(ip);
            }
        }
        if let Some(value) = part
            .split("set_field:0x")
            .nth(1)
            .and_then(|v| v.strip_suffix("->reg3"))
            && let Ok(v) = u32::from_str_radix(value, 16)
        {
            found.insert(Ipv4Addr::from(v));
        }
    }
    found.retain(|ip| ip.octets()[1] == range);
    found
}

/// The endpoint ofproto/trace picks for a new TCP connection from the
/// client pod on `sport` to `vip:80`.
fn traced_endpoint(node: &Node, vip: Ipv4Addr, sport: u16) -> Option<Ipv4Addr> {
    let out = traced_output(node, vip, sport).ok()?;
    let at = out.rfind("nat(dst=")?;
    out[at + 8..].split(':').next()?.parse().ok()
}

/// ofproto/trace of a SYN from the client pod on `sport` to `vip:80`.
fn traced_output(node: &Node, vip: Ipv4Addr, sport: u16) -> Result<String, String> {
    let client = node.pod("client");
    let flow = format!(
        "in_port={},tcp,dl_src={},dl_dst={GATEWAY_MAC},nw_src={},nw_dst={vip},tp_src={sport},tp_dst=80,tcp_flags=syn",
        client.ofport, client.mac, client.ip
    );
    node.ovs
        .appctl_vswitchd(&["ofproto/trace", BRIDGE, &flow])
        .map_err(|e| e.to_string())
}

async fn web_backends(node: &mut Node, lab: &Lab, backends: &[(&str, u8)]) {
    for (name, host) in backends {
        let pod = node.add_pod(name, *host).await;
        pod.serve_tcp(8080);
        let ip = pod.ip;
        lab.create_pod(
            name,
            json!({"app": "web"}),
            common::NODE,
            ip,
            json!([{"name": "http", "containerPort": 8080}]),
        )
        .await;
    }
}

async fn create_web_service(lab: &Lab, name: &str) -> SocketAddr {
    let vip = lab
        .create_service(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .await;
    SocketAddr::from((vip, 80))
}

/// The lines of `text` in order (ovs-ofctl dumps groups in hash order).
fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().skip(1).collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_endpoints_are_all_programmed_and_other_services_keep_updating() {
    if !require_privileges(
        "thousands_of_endpoints_are_all_programmed_and_other_services_keep_updating",
    ) {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    web_backends(&mut node, &lab, &[("web-1", 11), ("web-2", 12)]).await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = || {
        format!(
            "--- groups (first 3000 bytes)\n{}\n--- proxy log\n{}",
            node.dump_groups().chars().take(3000).collect::<String>(),
            proxy.log_text()
        )
    };
    let all = BTreeSet::from(["web-1".to_owned(), "web-2".to_owned()]);
    for (n, range, affinity) in [(1_000, 201, false), (2_000, 202, true), (5_000, 203, false)] {
        let vip = create_large_service(&lab, &format!("big-{n}"), n, range, affinity).await;
        eventually(
            &format!("all {n} endpoints of big-{n} in the groups"),
            &debug,
            || async {
                (programmed_endpoints(&node.dump_groups(), range).len() == n as usize).then_some(())
            },
        )
        .await;
        // A Service created after it is programmed too.
        let web = create_web_service(&lab, &format!("web-after-{n}")).await;
        eventually(&format!("web-after-{n} answering"), &debug, || async {
            (node.backends_seen("client", web, 10).await == all).then_some(())
        })
        .await;
        if !affinity {
            // New connections spread over the whole range of endpoints.
            let picked: BTreeSet<Ipv4Addr> = (0..64)
                .filter_map(|i| traced_endpoint(&node, vip, 20_000 + i))
                .collect();
            let first_half = picked
                .iter()
                .filter(|ip| u32::from(**ip) - u32::from(fake_endpoint(range, 0)) < n / 2)
                .count();
            assert!(
                picked.len() >= 48,
                "{n}: only {} endpoints picked: {picked:?}\n{:?}",
                picked.len(),
                traced_output(&node, vip, 20_000)
            );
            assert!(
                first_half > 8 && picked.len() - first_half > 8,
                "{n}: {first_half} of {} picks in the first half",
                picked.len()
            );
        }
    }
    let metrics = proxy.get("/metrics").await.expect("metrics").1;
    assert!(
        metrics.contains("switchyard_proxy_bundle_failures_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_groups_carry_traffic_to_every_endpoint_and_survive_a_restart() {
    if !require_privileges("chained_groups_carry_traffic_to_every_endpoint_and_survive_a_restart") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let backends = [
        ("web-1", 11),
        ("web-2", 12),
        ("web-3", 13),
        ("web-4", 14),
        ("web-5", 15),
    ];
    web_backends(&mut node, &lab, &backends).await;
    // Two endpoints per group: five backends are three chained groups.
    let mut proxy = ProxyProcess::start(&lab, &node, "main", &["--buckets-per-group=2"]);
    let web = create_web_service(&lab, "web").await;
    let debug = debug_of!(node, proxy);
    let all: BTreeSet<String> = backends.iter().map(|(n, _)| (*n).to_owned()).collect();
    eventually("every backend through chained groups", &debug, || async {
        (node.backends_seen("client", web, 30).await == all).then_some(())
    })
    .await;
    let groups = sorted_lines(&node.dump_groups());
    // Four for web, one for the API server's `default/kubernetes` Service.
    assert_eq!(groups.matches("type=select").count(), 5, "{}", debug());
    assert_eq!(groups.matches("actions=group:").count(), 3, "{}", debug());

    // Restart: the groups are read back and adopted, service goes on.
    proxy.kill();
    let proxy = ProxyProcess::start(&lab, &node, "second", &["--buckets-per-group=2"]);
    let debug = debug_of!(node, proxy);
    proxy.wait_synced(&debug).await;
    // web's port and `default/kubernetes`'s.
    assert!(proxy.log_text().contains("adopted=2"), "{}", debug());
    assert_eq!(sorted_lines(&node.dump_groups()), groups, "{}", debug());

    // Down to two backends: one plain group, the sub-groups are gone.
    for (name, _) in &backends[2..] {
        lab.delete_pod(name).await;
    }
    let two = BTreeSet::from(["web-1".to_owned(), "web-2".to_owned()]);
    eventually("one plain group (and kubernetes's)", &debug, || async {
        let groups = node.dump_groups();
        (groups.matches("type=select").count() == 2 && !groups.contains("actions=group:"))
            .then_some(())
    })
    .await;
    assert_eq!(
        node.backends_seen("client", web, 20).await,
        two,
        "{}",
        debug()
    );
}
