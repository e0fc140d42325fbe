//! Who owns a `vlan` segment address across agent restarts, on real OVS (userspace datapath)
//! with the lab API server: a restarted agent creates its running pods' allocation objects
//! (SegmentAddress) again, so objects lost while it was down hand out no duplicate, and so does
//! a running agent that sees them deleted; the addresses of a node whose Node object is deleted
//! are released. Needs root and openvswitch-switch.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use support::*;
use switchyard_agent::ipam::AttachmentKey;
use switchyard_agent::vlan_pool::ClusterPools;
use switchyard_agent::{Agent, AgentHandle};
use switchyard_api::SegmentAddress;

const SEGMENTS: &str = "segments:\n- name: default\n  kind: overlay\n- name: blue\n  kind: vlan\n  vlan: 100\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  uplink: upr\n";
const DEADLINE: Duration = Duration::from_secs(30);

/// An address of segment blue allocated by `node`'s agent for container `container`.
async fn allocate_as(lab: &NodeLab, node: &str, container: &str) -> String {
    ClusterPools::new(lab.kube.clone(), node)
        .allocate(
            "blue",
            "10.20.0.0/24".parse().unwrap(),
            Some("10.20.0.1".parse().unwrap()),
            &AttachmentKey::new(container, "eth0"),
            None,
        )
        .await
        .expect("allocate")
        .to_string()
}

/// The nodes holding addresses of segment blue, with how many each.
async fn holders(lab: &NodeLab) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (_, node, _) in ClusterPools::new(lab.kube.clone(), "reader")
        .allocations("blue")
        .await
        .expect("read allocations")
    {
        *out.entry(node).or_default() += 1;
    }
    out
}

/// Deletes every allocation object of segment blue (as an admin's `kubectl delete
/// segmentaddresses -l switchyard.io/segment=blue` or a lost etcd would); how many.
async fn delete_blue_objects(lab: &NodeLab) -> usize {
    let api: Api<SegmentAddress> = Api::all(lab.kube.clone());
    let list = api
        .list(&ListParams::default().labels("switchyard.io/segment=blue"))
        .await
        .expect("list the allocation objects");
    for o in &list.items {
        api.delete(
            o.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .expect("delete an allocation object");
    }
    list.items.len()
}

async fn start(lab: &NodeLab) -> AgentHandle {
    tokio::time::timeout(
        Duration::from_secs(30),
        Agent::start(lab.agent_config(Some(SEGMENTS))),
    )
    .await
    .expect("agent start timed out")
    .expect("agent start")
}

/// Three `vlan` segment pods run; the agent stops, the segment's allocation objects are
/// deleted (as deleting the CRD with `deploy/` does) and the agent starts again: before it
/// serves, the three objects exist again for this node, and three allocations by another node
/// get none of the addresses.
#[test]
fn a_restarted_agent_records_its_running_pods_addresses_again() {
    node_test(
        "a_restarted_agent_records_its_running_pods_addresses_again",
        |lab| async move {
            node_veth(&lab, "upr");
            create_ipam_namespace(&lab.kube).await;
            lab.create_namespace("blue", &[("switchyard.io/segment", "blue")])
                .await;
            let agent = start(&lab).await;
            let mut pods = Vec::new();
            let mut ips = BTreeSet::new();
            for name in ["p1", "p2", "p3"] {
                lab.create_pod("blue", name, &[]).await;
                let pod = PodNs::new("blue", name);
                let out = cni_add(&lab, &pod).await;
                assert!(out.success, "ADD {name}: {}", out.stdout);
                ips.insert(out.ip());
                pods.push(pod);
            }
            let other = ClusterPools::new(lab.kube.clone(), "node-other");
            let recorded = || async {
                other
                    .allocations("blue")
                    .await
                    .expect("read allocations")
                    .into_iter()
                    .map(|(ip, node, _)| (ip.to_string(), node))
                    .collect::<BTreeSet<_>>()
            };
            let mine: BTreeSet<(String, String)> = ips
                .iter()
                .map(|ip| (ip.clone(), NODE_NAME.to_string()))
                .collect();
            assert_eq!(recorded().await, mine);

            agent.shutdown().await;
            assert_eq!(delete_blue_objects(&lab).await, 3);
            assert!(recorded().await.is_empty());

            let agent = start(&lab).await;
            assert_eq!(
                recorded().await,
                mine,
                "the running pods' addresses are not recorded again"
            );
            assert_eq!(agent.allocations().len(), 3, "the pods were kept");
            for i in 0..3 {
                let ip = other
                    .allocate(
                        "blue",
                        "10.20.0.0/24".parse().unwrap(),
                        Some("10.20.0.1".parse().unwrap()),
                        &AttachmentKey::new(format!("other{i}"), "eth0"),
                        None,
                    )
                    .await
                    .expect("allocate on another node");
                assert!(
                    !ips.contains(&ip.to_string()),
                    "{ip} handed out twice ({ips:?})"
                );
            }
            agent.shutdown().await;
            drop(pods);
        },
    );
}

/// node2 holds three addresses (its pods run, its agent is gone) and node3 one; "ghost" (no
/// Node object) one. The agent starts and releases ghost's; node2's Node object is deleted:
/// its three are released (the API server's garbage collector and the agent both do), node3's
/// and this node's pod's are kept.
#[test]
fn a_deleted_nodes_addresses_are_released() {
    node_test("a_deleted_nodes_addresses_are_released", |lab| async move {
        node_veth(&lab, "upr");
        create_ipam_namespace(&lab.kube).await;
        let nodes: Api<Node> = Api::all(lab.kube.clone());
        for name in ["node2", "node3"] {
            let node: Node =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
        for i in 0..3 {
            allocate_as(&lab, "node2", &format!("n2c{i}")).await;
        }
        allocate_as(&lab, "node3", "n3c0").await;
        allocate_as(&lab, "ghost", "g0").await;
        assert_eq!(holders(&lab).await.get("ghost"), Some(&1));

        lab.create_namespace("blue", &[("switchyard.io/segment", "blue")])
            .await;
        let agent = start(&lab).await;
        lab.create_pod("blue", "mine", &[]).await;
        let mine = PodNs::new("blue", "mine");
        let out = cni_add(&lab, &mine).await;
        assert!(out.success, "{}", out.stdout);
        let want = |node2: usize| {
            let mut m = std::collections::BTreeMap::from([
                ("node3".to_string(), 1),
                (NODE_NAME.to_string(), 1),
            ]);
            if node2 > 0 {
                m.insert("node2".to_string(), node2);
            }
            m
        };
        eventually("ghost's address released", DEADLINE, || async {
            holders(&lab).await == want(3)
        })
        .await;

        nodes
            .delete("node2", &DeleteParams::default())
            .await
            .expect("delete node2");
        eventually("node2's addresses released", DEADLINE, || async {
            holders(&lab).await == want(0)
        })
        .await;
        agent.shutdown().await;
    });
}

/// Three `vlan` segment pods run and the segment's allocation objects are deleted while the
/// agent runs: its watch creates the three again, and three allocations by another node get
/// none of the addresses.
#[test]
fn deleted_allocation_objects_of_a_live_segment_are_rebuilt() {
    node_test(
        "deleted_allocation_objects_of_a_live_segment_are_rebuilt",
        |lab| async move {
            node_veth(&lab, "upr");
            create_ipam_namespace(&lab.kube).await;
            lab.create_namespace("blue", &[("switchyard.io/segment", "blue")])
                .await;
            let agent = start(&lab).await;
            let mut pods = Vec::new();
            let mut ips = BTreeSet::new();
            for name in ["p1", "p2", "p3"] {
                lab.create_pod("blue", name, &[]).await;
                let pod = PodNs::new("blue", name);
                let out = cni_add(&lab, &pod).await;
                assert!(out.success, "ADD {name}: {}", out.stdout);
                ips.insert(out.ip());
                pods.push(pod);
            }
            let mine = std::collections::BTreeMap::from([(NODE_NAME.to_string(), 3)]);
            assert_eq!(holders(&lab).await, mine);
            assert_eq!(delete_blue_objects(&lab).await, 3);
            eventually("the allocations rebuilt", DEADLINE, || async {
                holders(&lab).await == mine
            })
            .await;
            for i in 0..3 {
                let ip = allocate_as(&lab, "node-other", &format!("other{i}")).await;
                assert!(!ips.contains(&ip), "{ip} handed out twice ({ips:?})");
            }
            // A DEL's release is not undone by the watch.
            assert!(cni_del(&lab, &pods[0]).await.success);
            let after = std::collections::BTreeMap::from([
                (NODE_NAME.to_string(), 2),
                ("node-other".to_string(), 3),
            ]);
            eventually("p1's address released", DEADLINE, || async {
                holders(&lab).await == after
            })
            .await;
            agent.shutdown().await;
        },
    );
}

/// A DEL after a restart (this node's cache of the segment still empty) releases exactly the
/// attachment's own address, found among this node's objects (listed by the node label), and
/// leaves another node's object of the same container id and interface alone.
#[test]
fn a_release_before_any_allocation_finds_only_this_nodes_object() {
    node_test(
        "a_release_before_any_allocation_finds_only_this_nodes_object",
        |lab| async move {
            install_segment_address_crd(&lab.kube).await;
            let mine = allocate_as(&lab, "node-a", "c1").await;
            let theirs = allocate_as(&lab, "node-b", "c1").await;
            allocate_as(&lab, "node-b", "c2").await;
            assert_ne!(mine, theirs);
            // A fresh ClusterPools: what a restarted agent has before its first ADD.
            let restarted = ClusterPools::new(lab.kube.clone(), "node-a");
            let released = restarted
                .release("blue", &AttachmentKey::new("c1", "eth0"))
                .await
                .expect("release");
            assert_eq!(released.map(|ip| ip.to_string()), Some(mine));
            assert_eq!(
                holders(&lab).await,
                std::collections::BTreeMap::from([("node-b".to_string(), 2)])
            );
            // Releasing again finds nothing: DEL is idempotent.
            let again = restarted
                .release("blue", &AttachmentKey::new("c1", "eth0"))
                .await
                .expect("release again");
            assert_eq!(again, None);
        },
    );
}
