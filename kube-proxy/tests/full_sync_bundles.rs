//! A full sync larger than one bundle (`switch::PORTS_PER_BUNDLE` Service
//! ports each; the next bundle is built while vswitchd applies the one
//! before) on a real OVS with the real `switchyard-proxy` binary (see
//! `common`): every Service is programmed, and after a restart with fewer
//! Services the new generation's last bundle leaves nothing of the old one.
//! Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{Lab, Node, ProxyProcess, eventually};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use switchyard_ovs_harness::require_privileges;

/// Services created: three bundles' worth at 1,000 ports each.
const SERVICES: u32 = 2_300;
/// Services deleted while the proxy is down.
const DELETED: u32 = 400;

/// Selectorless Service `svc-<i>` (port 80) with one endpoint on another node.
async fn create_service(lab: &Lab, i: u32) -> Ipv4Addr {
    let name = format!("svc-{i}");
    let vip = lab
        .create_service(json!({"metadata": {"name": name},
                               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .await;
    let endpoint = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)) + i);
    lab.create_slice(&name, 0, &[endpoint], "node-2").await;
    vip
}

/// The VIPs of the bridge's Service frontends (the flows that send to a
/// group); the lab's `kubernetes` Service is one of them.
fn frontend_vips(node: &Node) -> BTreeSet<Ipv4Addr> {
    node.dump_flows()
        .lines()
        .filter(|line| line.contains("group:"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("nw_dst=")?;
            rest.split([',', ' ']).next()?.parse().ok()
        })
        .collect()
}

/// How many groups the bridge holds.
fn group_count(node: &Node) -> usize {
    node.dump_groups()
        .lines()
        .filter(|l| l.contains("group_id="))
        .count()
}

/// The generations (cookie bits 32..40) of the proxy's flows on the bridge.
fn proxy_generations(node: &Node) -> BTreeSet<u64> {
    node.dump_flows()
        .lines()
        .filter_map(|l| {
            let c = l.split("cookie=").nth(1)?.split(',').next()?;
            u64::from_str_radix(c.trim_start_matches("0x"), 16).ok()
        })
        .filter(|c| c >> 40 == 0x0053_5902)
        .map(|c| (c >> 32) & 0xff)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_of_several_bundles_programs_every_service_and_replaces_the_last_generation() {
    if !require_privileges("a_full_sync_of_several_bundles") {
        return;
    }
    let node = Node::start().await;
    let lab = Lab::start().await;
    let vips: Vec<Ipv4Addr> = futures::stream::iter(0..SERVICES)
        .map(|i| create_service(&lab, i))
        .buffered(16)
        .collect()
        .await;
    let all: BTreeSet<Ipv4Addr> = vips.iter().copied().collect();
    assert_eq!(all.len(), vips.len(), "cluster IPs given twice");

    let mut proxy = ProxyProcess::start(&lab, &node, "first", &[]);
    let debug = || {
        format!(
            "{} frontends, {} groups on the bridge",
            frontend_vips(&node).len(),
            group_count(&node)
        )
    };
    let others = eventually("every Service's frontend", debug, || async {
        let on_bridge = frontend_vips(&node);
        on_bridge
            .is_superset(&all)
            .then(|| on_bridge.difference(&all).copied().collect::<BTreeSet<_>>())
    })
    .await;
    assert_eq!(group_count(&node), all.len() + others.len(), "{}", debug());
    let first = proxy_generations(&node);
    assert_eq!(
        first.len(),
        1,
        "one generation after the first sync: {first:?}"
    );

    // While the proxy is down some Services go; the next proxy's full sync
    // (a new generation, three bundles) must leave exactly the others.
    proxy.kill();
    for i in 0..DELETED {
        lab.services()
            .delete(&format!("svc-{i}"), &DeleteParams::default())
            .await
            .expect("delete Service");
        Api::<EndpointSlice>::namespaced(lab.client.clone(), "default")
            .delete(&format!("svc-{i}-0"), &DeleteParams::default())
            .await
            .expect("delete slice");
    }
    let kept: BTreeSet<Ipv4Addr> = vips[DELETED as usize..].iter().copied().collect();
    let proxy = ProxyProcess::start(&lab, &node, "second", &[]);
    proxy.wait_synced(debug).await;
    let expected: BTreeSet<Ipv4Addr> = kept.union(&others).copied().collect();
    eventually("only the kept Services' frontends", debug, || async {
        (frontend_vips(&node) == expected).then_some(())
    })
    .await;
    assert_eq!(group_count(&node), expected.len(), "{}", debug());
    let second = proxy_generations(&node);
    assert_eq!(second.len(), 1, "old generation left: {second:?}");
    assert_ne!(
        second, first,
        "the restart's full sync used the same generation"
    );
}
