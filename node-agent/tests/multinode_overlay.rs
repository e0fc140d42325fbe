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

/// A `vlan` segment on an in-process agent: its uplink becomes a trunk of exactly the
/// segment's VLAN with the uplink flows; a pod's address is recorded in the segment's
/// ConfigMap under this node, released by DEL, and an allocation whose attachment the runtime
/// no longer lists is released by GC.
#[test]
fn vlan_segment_uplink_trunk_and_cluster_addresses_released_by_del_and_gc() {
    node_test(
        "vlan_segment_uplink_trunk_and_cluster_addresses_released_by_del_and_gc",
        |lab| async move {
            // The uplink NIC: one end of a veth pair inside the node namespace.
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &lab.node_netns, "ip", "link", "add", "up0"])
                .args(["type", "veth", "peer", "name", "up0peer"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            for dev in ["up0", "up0peer"] {
                let out = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &lab.node_netns,
                        "ip",
                        "link",
                        "set",
                        dev,
                        "up",
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
            let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
                serde_json::json!({"metadata": {"name": switchyard_agent::vlan_pool::IPAM_NAMESPACE}}),
            )
            .unwrap();
            Api::<k8s_openapi::api::core::v1::Namespace>::all(lab.kube.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            let segments = "segments:\n- name: default\n  kind: overlay\n- name: blue\n  kind: vlan\n  vlan: 100\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  uplink: up0\n";
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::start(lab.agent_config(Some(segments))),
            )
            .await
            .expect("agent start timed out")
            .expect("agent start");
            assert_eq!(lab.vsctl(&["get", "Port", "up0", "trunks"]).trim(), "[100]");
            assert_eq!(
                lab.vsctl(&["get", "Interface", "up0", "ofport"]).trim(),
                "3"
            );
            let flows = lab.dump_flows();
            assert!(
                flows.lines().any(|l| l.contains("in_port=3")
                    && l.contains("dl_vlan=100")
                    && l.contains("pop_vlan")),
                "{flows}"
            );
            assert!(flows.contains("push_vlan:0x8100"), "{flows}");

            lab.create_pod("default", "v1", &[("switchyard.io/segment", "blue")])
                .await;
            lab.create_pod("default", "v2", &[("switchyard.io/segment", "blue")])
                .await;
            let v1 = PodNs::new("default", "v1");
            let v2 = PodNs::new("default", "v2");
            let a1 = cni_add(&lab, &v1).await;
            assert!(a1.success, "{}", a1.stdout);
            let a2 = cni_add(&lab, &v2).await;
            assert!(a2.success, "{}", a2.stdout);
            assert!(a1.ip().starts_with("10.20.0.") && a1.ip() != a2.ip());
            let pools = switchyard_agent::vlan_pool::ClusterPools::new(lab.kube.clone(), "x");
            let recorded = |all: &[(
                std::net::Ipv4Addr,
                String,
                switchyard_agent::ipam::AttachmentKey,
            )]| {
                all.iter()
                    .map(|(ip, node, k)| (ip.to_string(), node.clone(), k.container_id.clone()))
                    .collect::<Vec<_>>()
            };
            let all = recorded(&pools.allocations("blue").await.unwrap());
            assert_eq!(all.len(), 2, "{all:?}");
            assert!(
                all.iter().any(|(ip, node, c)| *ip == a1.ip()
                    && node == NODE_NAME
                    && *c == v1.container_id),
                "{all:?}"
            );
            // Same-segment pods on this node talk (ARP answered by OVS with the pod's MAC).
            assert!(v1.ping(&a2.ip()).await, "v1 cannot reach v2");

            // DEL releases v1's address.
            assert!(cni_del(&lab, &v1).await.success);
            let all = recorded(&pools.allocations("blue").await.unwrap());
            assert_eq!(all.len(), 1, "{all:?}");
            assert_eq!(all[0].0, a2.ip());
            // GC with an empty valid list releases v2's.
            let mut conf = lab.conflist();
            conf["cniVersion"] = serde_json::json!("1.1.0");
            conf["cni.dev/valid-attachments"] = serde_json::json!([]);
            let gc = run_cni("GC", "", None, "", "", &conf).await;
            assert!(gc.success, "{} {}", gc.stdout, gc.stderr);
            assert!(pools.allocations("blue").await.unwrap().is_empty());
            agent.shutdown().await;
        },
    );
}
