//! The overlay's reaction to Node objects on real OVS (userspace datapath), with the agent in
//! a node network namespace: a remote node added, re-addressed and removed changes only its own
//! flows (one cookie object per node) and its route via `sy-gw0`; `sy-tun0` is a flow-based
//! tunnel on ofport 1. Needs root and openvswitch-switch. Traffic across nodes is tested in the
//! multi-node lab (`tests/lab/tests/multinode.rs`).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::*;
use switchyard_agent::Agent;
use switchyard_ovs::pipeline::{Cookie, cookie_object};

const DEADLINE: Duration = Duration::from_secs(15);

async fn add_remote(kube: &kube::Client, name: &str, cidr: &str, ip: &str) {
    let api: Api<Node> = Api::all(kube.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDR": cidr}
    }))
    .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    set_ip(kube, name, ip).await;
}

async fn set_ip(kube: &kube::Client, name: &str, ip: &str) {
    let api: Api<Node> = Api::all(kube.clone());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": ip}
        ]}})),
    )
    .await
    .unwrap();
}

/// The flows (one line each) whose cookie object belongs to a remote node, as
/// `(object, line)`.
fn remote_flows(dump: &str) -> Vec<(u32, String)> {
    dump.lines()
        .filter_map(|l| {
            let c = l.split("cookie=").nth(1)?.split(',').next()?;
            let c = Cookie::from_value(u64::from_str_radix(c.trim_start_matches("0x"), 16).ok()?)?;
            (c.object >= cookie_object::REMOTE_NODE_FIRST && c.object < cookie_object::UPLINK)
                .then(|| (c.object, l.to_string()))
        })
        .collect()
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn remote_nodes_added_readdressed_and_removed_change_only_their_flows() {
    node_test(
        "remote_nodes_added_readdressed_and_removed_change_only_their_flows",
        |lab| async move {
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::start(lab.agent_config(None)),
            )
            .await
            .expect("agent start timed out")
            .expect("agent start");
            // sy-tun0: flow-based Geneve on ofport 1.
            let iface = lab.vsctl(&[
                "--columns=type,options,ofport",
                "list",
                "Interface",
                "sy-tun0",
            ]);
            assert!(iface.contains("geneve"), "{iface}");
            assert!(
                iface.contains("remote_ip=flow") && iface.contains("key=flow"),
                "{iface}"
            );
            assert!(iface.contains("ofport              : 1"), "{iface}");

            add_remote(&lab.kube, "n2", "10.244.20.0/24", "192.0.2.2").await;
            add_remote(&lab.kube, "n3", "10.244.30.0/24", "192.0.2.3").await;
            let flows = wait_for("flows of n2 and n3", || {
                let f = remote_flows(&lab.dump_flows());
                let both = f.iter().any(|(_, l)| l.contains("nw_dst=10.244.20.0/24"))
                    && f.iter().any(|(_, l)| l.contains("nw_dst=10.244.30.0/24"));
                both.then_some(f)
            })
            .await;
            let object_of = |flows: &[(u32, String)], cidr: &str| {
                flows
                    .iter()
                    .find(|(_, l)| l.contains(&format!("nw_dst={cidr}")))
                    .map(|(o, _)| *o)
                    .unwrap()
            };
            let (o2, o3) = (
                object_of(&flows, "10.244.20.0/24"),
                object_of(&flows, "10.244.30.0/24"),
            );
            assert_ne!(o2, o3, "one cookie object per node");
            let n3_lines: Vec<String> = flows
                .iter()
                .filter(|(o, _)| *o == o3)
                .map(|(_, l)| l.clone())
                .collect();
            assert_eq!(n3_lines.len(), 3, "{n3_lines:#?}");
            let n3_seen = std::time::Instant::now();
            let duration = |l: &str| -> f64 {
                l.split("duration=")
                    .nth(1)
                    .and_then(|r| r.split('s').next())
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0.0)
            };
            let routes = |lab: &NodeLab| {
                String::from_utf8_lossy(
                    &std::process::Command::new("ip")
                        .args(["netns", "exec", &lab.node_netns, "ip", "route"])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .into_owned()
            };
            wait_for("routes to n2 and n3", || {
                let r = routes(&lab);
                (r.contains("10.244.20.0/24 via 10.244.20.1 dev sy-gw0")
                    && r.contains("10.244.30.0/24 via 10.244.30.1 dev sy-gw0"))
                .then_some(())
            })
            .await;

            // n2 changes its address: its flows now tunnel to the new one.
            set_ip(&lab.kube, "n2", "192.0.2.22").await;
            wait_for("n2's flows with the new address", || {
                let f = remote_flows(&lab.dump_flows());
                let new = f.iter().any(|(_, l)| l.contains("192.0.2.22->tun_dst"));
                let old = f.iter().any(|(_, l)| l.contains("192.0.2.2->tun_dst"));
                (new && !old).then_some(())
            })
            .await;
            // n3's flows are the same flows (same object, same actions).
            let strip = |l: &str| {
                l.split(", ")
                    .filter(|p| {
                        !p.starts_with("duration=")
                            && !p.contains("n_packets")
                            && !p.contains("n_bytes")
                            && !p.contains("idle_age")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let now: Vec<String> = remote_flows(&lab.dump_flows())
                .into_iter()
                .filter(|(o, _)| *o == o3)
                .map(|(_, l)| strip(&l))
                .collect();
            assert_eq!(now, n3_lines.iter().map(|l| strip(l)).collect::<Vec<_>>());
            // ... and were not re-installed: each flow aged by the time that passed.
            let elapsed = n3_seen.elapsed().as_secs_f64();
            let after: Vec<(u32, String)> = remote_flows(&lab.dump_flows())
                .into_iter()
                .filter(|(o, _)| *o == o3)
                .collect();
            for ((_, line), before) in after.iter().zip(&n3_lines) {
                assert!(
                    duration(line) + 0.02 >= duration(before) + elapsed,
                    "n3's flow was replaced: {before} -> {line} ({elapsed:.3}s later)"
                );
            }

            // n2 goes: its flows and route go, n3's stay.
            Api::<Node>::all(lab.kube.clone())
                .delete("n2", &Default::default())
                .await
                .unwrap();
            wait_for("n2's flows and route to go", || {
                let f = remote_flows(&lab.dump_flows());
                let gone = !f.iter().any(|(o, _)| *o == o2);
                (gone && !routes(&lab).contains("10.244.20.0/24")).then_some(())
            })
            .await;
            assert_eq!(
                remote_flows(&lab.dump_flows())
                    .iter()
                    .filter(|(o, _)| *o == o3)
                    .count(),
                3
            );
            assert!(routes(&lab).contains("10.244.30.0/24 via 10.244.30.1 dev sy-gw0"));
            agent.shutdown().await;
        },
    );
}
