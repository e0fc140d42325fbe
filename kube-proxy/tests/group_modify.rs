//! An endpoint change goes to the switch as a lone group modify confirmed
//! by a barrier, not in a bundle (`SwitchWriter::send_changes`), on a real
//! OVS (userspace datapath) with pods in network namespaces and the real
//! `switchyard-proxy` binary watching the lab's API server. Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{Lab, Node, ProxyProcess, eventually};
use serde_json::json;
use switchyard_ovs_harness::require_privileges;

/// A backend pod on this bridge; `node_name` is the node its endpoint
/// names. Another node's endpoint gets no hairpin flow here (the datapath
/// still reaches it by its address), so adding it changes the group alone.
async fn add_backend(node: &mut Node, lab: &Lab, name: &str, host: u8, node_name: &str) {
    let pod = node.add_pod(name, host).await;
    pod.serve_tcp(8080);
    let ip = pod.ip;
    lab.create_pod(
        name,
        json!({"app": "web"}),
        node_name,
        ip,
        json!([{"name": "http", "containerPort": 8080}]),
    )
    .await;
}

/// The node the later backends' endpoints name.
const OTHER_NODE: &str = "node-2";

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The group the frontend of `vip` sends to (from the bridge's flows).
fn frontend_group(node: &Node, vip: SocketAddr) -> Option<String> {
    node.frontend_flows(vip.ip()).iter().find_map(|line| {
        let (_, rest) = line.split_once("group:")?;
        Some(rest.split(|c: char| !c.is_ascii_digit()).next()?.to_owned())
    })
}

/// How many endpoint changes the proxy's log says went without a bundle.
fn lone_modifies(proxy: &ProxyProcess) -> usize {
    proxy
        .log_text()
        .lines()
        .filter(|line| line.contains("change set installed") && line.contains("bundled=false"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_go_as_a_lone_group_modify_and_a_rejected_one_falls_back_to_a_full_sync() {
    if !require_privileges("endpoint_changes_go_as_a_lone_group_modify") {
        return;
    }
    let mut node = Node::start().await;
    let lab = Lab::start().await;
    node.add_pod("client", 2).await;
    let vip = lab
        .create_service(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .await;
    let vip = SocketAddr::from((vip, 80));
    add_backend(&mut node, &lab, "web-1", 11, common::NODE).await;
    let proxy = ProxyProcess::start(&lab, &node, "main", &[]);
    let debug = debug_of!(node, proxy);
    eventually("web-1 to answer", &debug, || async {
        (node.backends_seen("client", vip, 4).await == set(&["web-1"])).then_some(())
    })
    .await;

    // A second backend, named on another node: the port's group gets a
    // second bucket by a lone modify, and new connections reach both.
    let before = lone_modifies(&proxy);
    add_backend(&mut node, &lab, "web-2", 12, OTHER_NODE).await;
    let debug = debug_of!(node, proxy);
    eventually("web-1 and web-2 to answer", &debug, || async {
        (node.backends_seen("client", vip, 12).await == set(&["web-1", "web-2"])).then_some(())
    })
    .await;
    assert!(lone_modifies(&proxy) > before, "{}", debug());

    // The group vanishes behind the proxy's back (`ovs-vswitchd` deletes
    // the frontend flows that use it too): the next endpoint change's
    // modify is rejected (unknown group), and the proxy falls back to a
    // full sync, which puts the frontend and the group back.
    let group = frontend_group(&node, vip).expect("the frontend's group");
    node.ovs
        .ofctl(&[
            "-O",
            "OpenFlow15",
            "del-groups",
            common::BRIDGE,
            &format!("group_id={group}"),
        ])
        .expect("group deleted");
    assert_eq!(frontend_group(&node, vip), None, "{}", debug());
    add_backend(&mut node, &lab, "web-3", 13, OTHER_NODE).await;
    let debug = debug_of!(node, proxy);
    eventually("web-1, web-2 and web-3 to answer", &debug, || async {
        (node.backends_seen("client", vip, 16).await == set(&["web-1", "web-2", "web-3"]))
            .then_some(())
    })
    .await;
    assert!(
        proxy
            .log_text()
            .contains("change set not installed; a full sync follows"),
        "{}",
        debug()
    );
    assert_eq!(frontend_group(&node, vip), Some(group), "{}", debug());
}
