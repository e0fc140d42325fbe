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

/// `switchyard-lab echo-client` from `netns`: the answer of each request (`-` for none).
fn echo_client(netns: &str, proto: &str, target: &str, count: u32) -> Vec<String> {
    let out = in_netns(
        netns,
        &[
            LAB,
            "echo-client",
            &format!("--{proto}"),
            target,
            "--count",
            &count.to_string(),
            "--timeout",
            "2",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
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
    let ns = "node-svc";
    let mut m = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n");
    m.push_str(&pod_manifest(ns, "near", "node1"));
    m.push_str(&pod_manifest(ns, "far", "node2"));
    m.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: both\n  namespace: {ns}\nspec:\n  selector:\n    app: both\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: 5353\n---\n"
    ));
    lab.apply(&m);
    for pod in ["near", "far"] {
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
    let vip = eventually("the ClusterIP of both", Duration::from_secs(10), || {
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
    });
    let info = lab.info();
    for node in &info.nodes {
        // The route the agent installed (the lab's service CIDR is 10.96.0.0/16).
        let routes = String::from_utf8_lossy(
            &in_netns(&node.netns, &["ip", "route", "show", "10.96.0.0/16"]).stdout,
        )
        .to_string();
        for (proto, port) in [("http", 80), ("udp", 53)] {
            let target = format!("{vip}:{port}");
            let end = Instant::now() + Duration::from_secs(20);
            let answers = loop {
                let answers = echo_client(&node.netns, proto, &target, 20);
                let ok = answers.len() == 20
                    && answers.iter().all(|a| a == "near" || a == "far")
                    && answers.iter().collect::<BTreeSet<_>>().len() == 2;
                if ok {
                    break answers;
                }
                assert!(
                    Instant::now() < end,
                    "{} -> {proto} {target}: answers {answers:?}, expected near and far; routes: {routes}",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            eprintln!("{} -> {proto} {target}: {answers:?}", node.name);
        }
        assert!(
            routes.contains("via 169.254.169.253 dev sy-gw0") && routes.contains("onlink"),
            "{}: {routes}",
            node.name
        );
    }
}
