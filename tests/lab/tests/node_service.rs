//! A node (host network) reaches ClusterIP Services: the agent routes the Service CIDR through
//! `sy-gw0` into `br-int`, where the real `switchyard-proxy` load-balances it like pod traffic
//! and conntrack un-DNATs the replies back to the node.
//!
//! Two-node lab with the real CNI binary, agent and proxy (`switchyard-lab up`); needs root,
//! OVS and kubectl, and the binaries built (`cargo build -p switchyard-cni -p switchyard-agent
//! -p switchyard-proxy -p switchyard-lab`); fails with the reason otherwise, unless
//! SWITCHYARD_SKIP_PRIVILEGED=1.

mod lab_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lab_support::*;

fn pod_manifest(namespace: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: both\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

fn vlan_pod_manifest(namespace: &str, name: &str, node: &str, segment: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    switchyard.io/segment: \"{segment}\"\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

/// Creates pods `near` (node1) and `far` (node2) behind Service `both` (plus `extra`
/// manifests) in `ns`, waits for them; returns the ClusterIP.
fn backends_and_service(lab: &Lab, ns: &str, extra: &str) -> String {
    // The `vlan` segment pods of `extra` choose their segment: allowed in this namespace.
    let mut m = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  annotations:\n    switchyard.io/pod-placement: allow\n---\n"
    );
    m.push_str(&pod_manifest(ns, "near", "node1"));
    m.push_str(&pod_manifest(ns, "far", "node2"));
    m.push_str(extra);
    m.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: both\n  namespace: {ns}\nspec:\n  selector:\n    app: both\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n"
    ));
    lab.apply(&m);
    let pods = lab.kubectl_ok(&["-n", ns, "get", "pods", "-o", "name"]);
    for pod in pods.lines().filter_map(|l| l.strip_prefix("pod/")) {
        eventually(
            &format!("pod {ns}/{pod} Running and Ready"),
            Duration::from_secs(60),
            || {
                let out = lab.kubectl(&["-n", ns, "get", "pod", pod, "-o", "json"]);
                let p: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let ready = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (p["status"]["phase"] == "Running" && ready).then_some(())
            },
        );
    }
    eventually("the ClusterIP of both", Duration::from_secs(10), || {
        let ip = lab
            .kubectl_ok(&[
                "-n",
                ns,
                "get",
                "service",
                "both",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .trim()
            .to_string();
        (!ip.is_empty()).then_some(ip)
    })
}

/// From `netns`, 20 TCP and 20 UDP requests to the ClusterIP are all answered, by both
/// backends (polled until a deadline).
fn reaches_both_backends(netns: &str, vip: &str, context: &dyn Fn() -> String) {
    for (proto, port) in [("http", 80), ("udp", 53)] {
        let target = format!("{vip}:{port}");
        let end = Instant::now() + Duration::from_secs(20);
        let answers = loop {
            let answers = echo_client(netns, proto, &target, 20);
            let ok = answers.len() == 20
                && answers.iter().all(|a| a == "near" || a == "far")
                && answers.iter().collect::<BTreeSet<_>>().len() == 2;
            if ok {
                break answers;
            }
            assert!(
                Instant::now() < end,
                "{netns} -> {proto} {target}: answers {answers:?}, expected near and far; {}",
                context()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("{netns} -> {proto} {target}: {answers:?}");
    }
}

#[test]
fn node_reaches_cluster_ip_backends_on_both_nodes() {
    if !privileged("node_reaches_cluster_ip_backends_on_both_nodes") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::up(2, &[]);
    let vip = backends_and_service(&lab, "node-svc", "");
    for node in &lab.info().nodes {
        // The route the agent installed (the lab's service CIDR is 10.96.0.0/16).
        let routes = String::from_utf8_lossy(
            &in_netns(&node.netns, &["ip", "route", "show", "10.96.0.0/16"]).stdout,
        )
        .to_string();
        reaches_both_backends(&node.netns, &vip, &|| format!("routes: {routes}"));
        assert!(
            routes.contains("via 169.254.169.253 dev sy-gw0") && routes.contains("onlink"),
            "{}: {routes}",
            node.name
        );
    }
}

/// A pod of a `vlan` segment reaches a ClusterIP whose backends are overlay pods on its own and
/// on the other node: the proxy DNATs, the agent routes the connection as the node's own
/// (SNATed to the node's gateway address) and un-SNATs the replies.
#[test]
fn vlan_segment_pod_reaches_cluster_ip_backends_on_both_nodes() {
    if !privileged("vlan_segment_pod_reaches_cluster_ip_backends_on_both_nodes") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    let ns = "vlan-svc";
    let vip = backends_and_service(
        &lab,
        ns,
        &vlan_pod_manifest(ns, "vclient", "node1", "vlan100"),
    );
    let netns = lab.info().pod_netns(ns, "vclient");
    let flows = || {
        let out = std::process::Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", "dump-flows"])
            .arg(format!(
                "unix:{}",
                lab.state.ovs_dir("node1").join("br-int.mgmt").display()
            ))
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
            Err(e) => e.to_string(),
        }
    };
    reaches_both_backends(&netns, &vip, &|| format!("node1 flows:\n{}", flows()));
}
