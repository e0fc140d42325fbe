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
use switchyard_pipeline::{Cookie, cookie_object};

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
/// allocation objects under this node, released by DEL, and an allocation whose attachment the runtime
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
            create_ipam_namespace(&lab.kube).await;
            // These pods choose their segment: the cluster admin lets `default`'s pods choose.
            lab.annotate_namespace("default", &[("switchyard.io/pod-placement", "allow")])
                .await;
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

            // CHECK covers the uplink flows ADD installs for a `vlan` segment
            // pod: fine as added, 105 naming the flow once one is deleted.
            let check = |pod: &PodNs, added: &CniOutput| {
                let mut conf = lab.conflist();
                conf["prevResult"] = added.json();
                let (id, netns, args) =
                    (pod.container_id.clone(), pod.netns_path(), pod.cni_args());
                async move { run_cni("CHECK", &id, Some(&netns), "eth0", &args, &conf).await }
            };
            let ok = check(&v1, &a1).await;
            assert!(ok.success, "{} {}", ok.stdout, ok.stderr);
            let service_to_pod = format!(
                "table={},ip,nw_dst={},ct_mark={:#x}/{:#x}",
                switchyard_pipeline::table::L3_FORWARDING.id(),
                a1.ip(),
                switchyard_pipeline::ct_mark::SERVICE.value(),
                switchyard_pipeline::ct_mark::SERVICE.value(),
            );
            lab.ovs
                .ofctl(&["-O", "OpenFlow15", "del-flows", BRIDGE, &service_to_pod])
                .expect("del-flows");
            let failed = check(&v1, &a1).await;
            assert_eq!(failed.code(), 105, "{}", failed.stdout);
            assert!(
                failed.stdout.contains(&format!("nw_dst={}", a1.ip())),
                "{}",
                failed.stdout
            );
            assert!(check(&v2, &a2).await.success, "v2 is intact");

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

/// Two `vlan` segments on two uplinks: each uplink gets its own reserved ofport (3 and 4) and
/// its flows use it. Then GCs run while ADDs are in flight, each with the valid list a runtime
/// would send (the ADDs that had returned when the GC was issued): every ADDed pod keeps its
/// port and its address in the segment's allocation objects, and no two pods share an address.
#[test]
fn two_uplinks_and_gc_concurrent_with_adds_keeps_their_addresses() {
    node_test(
        "two_uplinks_and_gc_concurrent_with_adds_keeps_their_addresses",
        |lab| async move {
            node_veth(&lab, "upa");
            node_veth(&lab, "upb");
            create_ipam_namespace(&lab.kube).await;
            // These pods choose their segment: the cluster admin lets `default`'s pods choose.
            lab.annotate_namespace("default", &[("switchyard.io/pod-placement", "allow")])
                .await;
            let segments = "segments:\n- name: default\n  kind: overlay\n\
                - name: blue\n  kind: vlan\n  vlan: 100\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  uplink: upa\n\
                - name: green\n  kind: vlan\n  vlan: 200\n  subnet: 10.21.0.0/24\n  gateway: 10.21.0.1\n  uplink: upb\n";
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::start(lab.agent_config(Some(segments))),
            )
            .await
            .expect("agent start timed out")
            .expect("agent start");
            assert_eq!(
                lab.vsctl(&["get", "Interface", "upa", "ofport"]).trim(),
                "3"
            );
            assert_eq!(
                lab.vsctl(&["get", "Interface", "upb", "ofport"]).trim(),
                "4"
            );
            assert_eq!(lab.vsctl(&["get", "Port", "upb", "trunks"]).trim(), "[200]");
            let flows = lab.dump_flows();
            for (port, vlan) in [(3, 100), (4, 200)] {
                assert!(
                    flows
                        .lines()
                        .any(|l| l.contains(&format!("in_port={port},"))
                            && l.contains(&format!("dl_vlan={vlan}"))
                            && l.contains("pop_vlan")),
                    "no classification of VLAN {vlan} on ofport {port}: {flows}"
                );
                assert!(
                    flows.lines().any(|l| l.contains(&format!("reg5={vlan:#x}"))
                        && l.contains("push_vlan:0x8100")
                        && l.contains(&format!("output:{port}"))),
                    "no output of VLAN {vlan} to ofport {port}: {flows}"
                );
            }

            const PODS: usize = 16;
            let mut pods = Vec::new();
            for i in 0..PODS {
                let segment = if i % 2 == 0 { "blue" } else { "green" };
                let name = format!("g{i}");
                lab.create_pod("default", &name, &[("switchyard.io/segment", segment)])
                    .await;
                pods.push((segment, PodNs::new("default", &name)));
            }
            // Container ids whose ADD has returned (what the runtime's GC list is made from).
            let returned = std::sync::Mutex::new(Vec::<String>::new());
            let adds_done = std::sync::atomic::AtomicBool::new(false);
            let adds = async {
                let results = futures::future::join_all(pods.iter().map(|(_, pod)| async {
                    let out = cni_add(&lab, pod).await;
                    returned.lock().unwrap().push(pod.container_id.clone());
                    out
                }))
                .await;
                adds_done.store(true, std::sync::atomic::Ordering::SeqCst);
                results
            };
            let gcs = async {
                let mut runs = 0usize;
                // Bounded: the ADDs end (or the test times out) well before.
                while !adds_done.load(std::sync::atomic::Ordering::SeqCst) && runs < 1000 {
                    let valid: Vec<serde_json::Value> = returned
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|c| serde_json::json!({"containerID": c, "ifname": "eth0"}))
                        .collect();
                    let mut conf = lab.conflist();
                    conf["cni.dev/valid-attachments"] = serde_json::json!(valid);
                    let gc = run_cni("GC", "", None, "", "", &conf).await;
                    assert!(gc.success, "{} {}", gc.stdout, gc.stderr);
                    runs += 1;
                }
                runs
            };
            let (results, runs) = tokio::join!(adds, gcs);
            assert!(runs > 0, "no GC ran during the ADDs");
            // A GC may rightly remove a pod whose ADD ended before the GC reached the agent
            // (the runtime's list was older); what it must never do is release the address
            // of a pod that stays: the node's pods and this node's allocation objects agree,
            // and each surviving pod holds the address its ADD returned, unshared.
            let pools = switchyard_agent::vlan_pool::ClusterPools::new(lab.kube.clone(), "x");
            let mut cluster = std::collections::BTreeSet::new();
            for seg in ["blue", "green"] {
                for (ip, node, key) in pools.allocations(seg).await.unwrap() {
                    assert_eq!(node, NODE_NAME);
                    assert!(cluster.insert((ip, key.container_id)), "{ip} held twice");
                }
            }
            let local: std::collections::BTreeSet<_> = agent
                .allocations()
                .into_iter()
                .filter(|(ip, _)| ip.octets()[..2] == [10, 20] || ip.octets()[..2] == [10, 21])
                .map(|(ip, key)| (ip, key.container_id))
                .collect();
            assert_eq!(
                local, cluster,
                "({runs} GCs ran) the node's vlan pods and the allocation objects disagree"
            );
            let mut survivors = 0;
            for ((_, pod), add) in pods.iter().zip(&results) {
                assert!(
                    add.success,
                    "{}: {} {}",
                    pod.container_id, add.stdout, add.stderr
                );
                if let Some((ip, _)) = local.iter().find(|(_, c)| *c == pod.container_id) {
                    assert_eq!(ip.to_string(), add.ip(), "{}", pod.container_id);
                    survivors += 1;
                }
            }
            assert_eq!(lab.pod_ports().len(), survivors, "{runs} GCs ran");
            tracing::info!(runs, survivors, "GCs during ADDs");
            // A GC naming them all removes nothing; one naming none removes everything.
            let mut conf = lab.conflist();
            conf["cni.dev/valid-attachments"] = serde_json::json!(
                pods.iter()
                    .map(|(_, p)| serde_json::json!({"containerID": p.container_id, "ifname": "eth0"}))
                    .collect::<Vec<_>>()
            );
            assert!(run_cni("GC", "", None, "", "", &conf).await.success);
            assert_eq!(lab.pod_ports().len(), survivors);
            conf["cni.dev/valid-attachments"] = serde_json::json!([]);
            assert!(run_cni("GC", "", None, "", "", &conf).await.success);
            assert!(lab.pod_ports().is_empty());
            for seg in ["blue", "green"] {
                assert!(pools.allocations(seg).await.unwrap().is_empty());
            }
            agent.shutdown().await;
        },
    );
}

/// Sends SIGCONT to a stopped process when dropped (also on panic).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let out = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .output();
    }
}

/// A GC issued while an ADD is in flight (held after its cluster-wide allocation: ovs-vswitchd
/// is stopped, so the ADD waits for its port's ofport) with a valid list that cannot name it
/// (the ADD has not returned) neither releases its address (its allocation object) nor tears the pod
/// down once the ADD finishes; a later GC with the same list does.
#[test]
fn gc_while_an_add_is_in_flight_keeps_its_address() {
    node_test(
        "gc_while_an_add_is_in_flight_keeps_its_address",
        |lab| async move {
            node_veth(&lab, "upc");
            create_ipam_namespace(&lab.kube).await;
            // These pods choose their segment: the cluster admin lets `default`'s pods choose.
            lab.annotate_namespace("default", &[("switchyard.io/pod-placement", "allow")])
                .await;
            let segments = "segments:\n- name: default\n  kind: overlay\n\
            - name: blue\n  kind: vlan\n  vlan: 100\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  uplink: upc\n";
            let agent = tokio::time::timeout(
                Duration::from_secs(30),
                Agent::start(lab.agent_config(Some(segments))),
            )
            .await
            .expect("agent start timed out")
            .expect("agent start");
            lab.create_pod("default", "inflight", &[("switchyard.io/segment", "blue")])
                .await;
            let pod = PodNs::new("default", "inflight");
            let pools = switchyard_agent::vlan_pool::ClusterPools::new(lab.kube.clone(), "x");
            let mut gc_conf = lab.conflist();
            gc_conf["cni.dev/valid-attachments"] = serde_json::json!([]);

            let stopped = Stopped::new(lab.ovs.vswitchd_pid().expect("vswitchd pid"));
            let add = cni_add(&lab, &pod);
            let gc_during_add = async {
                // Wait (bounded) until the ADD has allocated cluster-wide.
                let deadline = tokio::time::Instant::now() + DEADLINE;
                loop {
                    let all = pools.allocations("blue").await.unwrap();
                    if all
                        .iter()
                        .any(|(_, _, k)| k.container_id == pod.container_id)
                    {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the ADD never allocated"
                    );
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // The GC must not wait for the ADD; if it does, let the ADD finish after a bound.
                let gc = run_cni("GC", "", None, "", "", &gc_conf);
                let gc = match tokio::time::timeout(Duration::from_secs(5), gc).await {
                    Ok(gc) => {
                        drop(stopped);
                        gc
                    }
                    Err(_) => panic!("the GC waited for the in-flight ADD"),
                };
                assert!(gc.success, "{} {}", gc.stdout, gc.stderr);
            };
            let (added, ()) = tokio::join!(add, gc_during_add);
            assert!(added.success, "{} {}", added.stdout, added.stderr);
            let held: Vec<_> = pools
                .allocations("blue")
                .await
                .unwrap()
                .into_iter()
                .map(|(ip, node, k)| (ip.to_string(), node, k.container_id))
                .collect();
            assert_eq!(
                held,
                [(added.ip(), NODE_NAME.to_string(), pod.container_id.clone())],
                "the GC released the in-flight ADD's address"
            );
            assert_eq!(lab.pod_ports().len(), 1, "the GC tore the pod down");
            assert!(
                agent
                    .allocations()
                    .iter()
                    .any(|(ip, k)| ip.to_string() == added.ip()
                        && k.container_id == pod.container_id)
            );
            // Now the ADD has returned: the same list removes it.
            let gc = run_cni("GC", "", None, "", "", &gc_conf).await;
            assert!(gc.success, "{} {}", gc.stdout, gc.stderr);
            assert!(pools.allocations("blue").await.unwrap().is_empty());
            assert!(lab.pod_ports().is_empty());
            agent.shutdown().await;
        },
    );
}
