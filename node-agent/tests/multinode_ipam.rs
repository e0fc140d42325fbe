//! Cluster-wide allocation of `vlan` segment addresses through the API server (the lab's
//! in-memory one, which answers 409 to a write with a stale resourceVersion): nodes allocating
//! at the same moment never get the same address; static requests; release; GC.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use switchyard_agent::ipam::AttachmentKey;
use switchyard_agent::vlan_pool::{ClusterIpamError, ClusterPools, IPAM_NAMESPACE};
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};

fn subnet() -> Ipv4Net {
    "10.100.0.0/24".parse().unwrap()
}

fn gateway() -> Option<Ipv4Addr> {
    Some("10.100.0.1".parse().unwrap())
}

async fn server() -> (ApiServerHandle, kube::Client) {
    let server = ApiServer::start(ApiServerOptions::default()).await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    // The namespace the DaemonSet runs in (deploy/ creates it).
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let ns =
        serde_json::from_value(serde_json::json!({"metadata": {"name": IPAM_NAMESPACE}})).unwrap();
    namespaces
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_allocating_at_once_never_share_an_address() {
    let (server, client) = server().await;
    let nodes: Vec<ClusterPools> = (1..=3)
        .map(|n| ClusterPools::new(client.clone(), &format!("node{n}")))
        .collect();
    let mut tasks = Vec::new();
    for (n, pools) in nodes.iter().enumerate() {
        for i in 0..25 {
            let pools = pools.clone();
            tasks.push(tokio::spawn(async move {
                let key = AttachmentKey::new(format!("c{n}-{i}"), "eth0");
                let ip = pools
                    .allocate("vlan100", subnet(), gateway(), &key, None)
                    .await
                    .unwrap();
                (key, ip)
            }));
        }
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        let (key, ip) = t.await.unwrap();
        assert!(seen.insert(ip), "{ip} given twice (second to {key})");
        assert_ne!(Some(ip), gateway());
        assert!(subnet().contains(&ip));
    }
    assert_eq!(seen.len(), 75);
    let recorded = nodes[0].allocations("vlan100").await.unwrap();
    assert_eq!(recorded.len(), 75);
    assert_eq!(recorded.iter().filter(|(_, n, _)| n == "node2").count(), 25);
    // Idempotent: the same key gets its address again.
    let key = AttachmentKey::new("c0-0", "eth0");
    let again = nodes[0]
        .allocate("vlan100", subnet(), gateway(), &key, None)
        .await
        .unwrap();
    assert!(recorded.iter().any(|(ip, _, k)| *ip == again && *k == key));
    server.shutdown().await;
}

#[tokio::test]
async fn static_requests_release_and_gc() {
    let (server, client) = server().await;
    let n1 = ClusterPools::new(client.clone(), "node1");
    let n2 = ClusterPools::new(client.clone(), "node2");
    let a = AttachmentKey::new("a", "eth0");
    let b = AttachmentKey::new("b", "eth0");
    let want: Ipv4Addr = "10.100.0.50".parse().unwrap();
    assert_eq!(
        n1.allocate("vlan100", subnet(), gateway(), &a, Some(want))
            .await
            .unwrap(),
        want
    );
    // Taken on another node: a clear error, nothing recorded for b.
    let err = n2
        .allocate("vlan100", subnet(), gateway(), &b, Some(want))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterIpamError::Ipam(_)), "{err}");
    assert!(err.to_string().contains("10.100.0.50"), "{err}");
    let outside = n2
        .allocate(
            "vlan100",
            subnet(),
            gateway(),
            &b,
            Some("10.7.0.5".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(outside.to_string().contains("10.7.0.5"), "{outside}");
    assert_eq!(n1.allocations("vlan100").await.unwrap().len(), 1);
    // Released on DEL, then free for b.
    assert_eq!(n1.release("vlan100", &a).await.unwrap(), Some(want));
    assert_eq!(
        n2.allocate("vlan100", subnet(), gateway(), &b, Some(want))
            .await
            .unwrap(),
        want
    );
    // GC removes only this node's entries that are not kept.
    let c = AttachmentKey::new("c", "eth0");
    n1.allocate("vlan100", subnet(), gateway(), &c, None)
        .await
        .unwrap();
    assert_eq!(n1.release_unless("vlan100", |_| false).await.unwrap(), 1);
    let left = n1.allocations("vlan100").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, "node2");
    // The ConfigMap is where the docs say.
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, IPAM_NAMESPACE);
    assert!(
        cms.get_opt("switchyard-ipam-vlan100")
            .await
            .unwrap()
            .is_some()
    );
    server.shutdown().await;
}
