//! Namespace networks against the lab API server: a Segment per opted-in namespace, the
//! namespace annotated, in-use finalizers, release on deletion, and crash safety (replicas
//! killed while namespaces are created: one VLAN, subnet and SNAT address each in the API,
//! one SNAT rule each on the router, the in-process fabric API).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{LEASE_NS, eventually, lab, timings};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use switchyard_api::{IPPool, IPPoolSpec, RouteTarget, Segment, SegmentSpec};
use switchyard_controller::metrics::Metrics;
use switchyard_controller::namespaces::Config;
use switchyard_controller::{Options, run};
use switchyard_lab::fabric_api::in_process::InProcess;

const IPAM_NS: &str = "switchyard-system";
const LONG: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config::from_flags("label", "1000-1999", "10.64.0.0/16", 26, "trunk0").unwrap()
}

fn replica(client: &Client, identity: &str) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    replica_with(client, identity, config())
}

fn replica_with(
    client: &Client,
    identity: &str,
    config: Config,
) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let opts = Options {
        namespace: LEASE_NS.into(),
        lease_name: "switchyard-controller".into(),
        identity: identity.into(),
        timings: timings(),
        resync: Duration::from_secs(10),
        route_resync: Duration::from_secs(5),
        cluster: "test".into(),
        namespace_networks: Some(config),
        ipam_namespace: IPAM_NS.into(),
        supervisor: None,
    };
    let task = tokio::spawn(run(
        client.clone(),
        opts,
        metrics.clone(),
        std::future::pending(),
    ));
    (task, metrics)
}

async fn setup(client: &Client) {
    let nss: Api<Namespace> = Api::all(client.clone());
    for name in [IPAM_NS, LEASE_NS] {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let _ = nss.create(&PostParams::default(), &ns).await;
    }
    let pools: Api<IPPool> = Api::all(client.clone());
    let spec: IPPoolSpec = serde_json::from_value(
        serde_json::json!({"cidrs": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"], "usage": "Egress", "announce": {"mode": "None"}}),
    )
    .unwrap();
    pools
        .create(&PostParams::default(), &IPPool::new("egress", spec))
        .await
        .unwrap();
}

async fn namespace(client: &Client, name: &str, dedicated: bool) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let labels = if dedicated {
        serde_json::json!({"switchyard.io/network": "dedicated"})
    } else {
        serde_json::json!({})
    };
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
}

async fn segments(client: &Client) -> BTreeMap<String, Segment> {
    let api: Api<Segment> = Api::all(client.clone());
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect()
}

async fn ns_get(client: &Client, name: &str) -> Option<Namespace> {
    Api::<Namespace>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
}

/// Every opted-in namespace of `names` has exactly one Segment, tagged with its UID, with
/// distinct VLAN, subnet and SNAT address, and is annotated with it; no other tagged
/// Segment exists. Returns None (not yet) or Some(()).
async fn one_network_each(client: &Client, names: &[String]) -> Option<()> {
    let segs = segments(client).await;
    let tagged: Vec<&Segment> = segs
        .values()
        .filter(|s| s.labels().contains_key("switchyard.io/namespace-uid"))
        .collect();
    if tagged.len() != names.len() {
        return None;
    }
    let mut vlans = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    let mut snats = BTreeSet::new();
    for name in names {
        let ns = ns_get(client, name).await?;
        let seg = segs.get(&format!("ns-{name}"))?;
        assert_eq!(
            seg.labels().get("switchyard.io/namespace-uid"),
            ns.metadata.uid.as_ref()
        );
        assert_eq!(
            seg.labels()
                .get("switchyard.io/cluster")
                .map(String::as_str),
            Some("test")
        );
        let ann = ns.annotations();
        if ann.get("switchyard.io/segment") != Some(&seg.name_any())
            || ann.get("switchyard.io/snat-address") != seg.spec.snat_address.as_ref()
        {
            return None;
        }
        assert!(
            vlans.insert(seg.spec.vlan),
            "VLAN {} given twice",
            seg.spec.vlan
        );
        assert!(
            subnets.insert(seg.spec.subnets[0].cidr.clone()),
            "subnet given twice"
        );
        assert!(
            snats.insert(seg.spec.snat_address.clone()?),
            "SNAT given twice"
        );
    }
    Some(())
}

#[tokio::test]
async fn a_dedicated_namespace_gets_a_segment_that_is_released_when_it_goes() {
    let (_server, client) = lab().await;
    setup(&client).await;
    // A Segment someone else made: gets the in-use finalizer, is never deleted.
    let seg_api: Api<Segment> = Api::all(client.clone());
    let manual: SegmentSpec = serde_json::from_value(serde_json::json!({
        "vlan": 1000, "uplink": "trunk0",
        "subnets": [{"cidr": "10.64.0.0/26", "gateway": "10.64.0.1"}]
    }))
    .unwrap();
    seg_api
        .create(&PostParams::default(), &Segment::new("manual", manual))
        .await
        .unwrap();
    let (_r, metrics) = replica(&client, "a");
    namespace(&client, "blue", true).await;
    namespace(&client, "plain", false).await;

    let seg = eventually(LONG, "blue's segment", || async {
        let s = segments(&client).await.remove("ns-blue")?;
        s.status.is_some().then_some(s)
    })
    .await;
    // The manual Segment's VLAN and subnet are taken: the next free ones.
    assert_eq!(seg.spec.vlan, 1001);
    assert_eq!(seg.spec.subnets[0].cidr, "10.64.0.64/26");
    assert_eq!(seg.spec.subnets[0].gateway, "10.64.0.65");
    assert_eq!(seg.spec.snat_address.as_deref(), Some("192.0.2.1"));
    assert_eq!(seg.spec.uplink.as_deref(), Some("trunk0"));
    assert_eq!(seg.status.as_ref().unwrap().capacity, 61);
    one_network_each(&client, &["blue".to_string()]).await;
    let blue = eventually(LONG, "blue annotated", || async {
        let ns = ns_get(&client, "blue").await?;
        (ns.annotations()
            .get("switchyard.io/segment")
            .map(String::as_str)
            == Some("ns-blue"))
        .then_some(ns)
    })
    .await;
    assert!(
        blue.finalizers()
            .iter()
            .any(|f| f == "switchyard.io/namespace-network")
    );
    let plain = ns_get(&client, "plain").await.unwrap();
    assert!(!plain.annotations().contains_key("switchyard.io/segment"));
    let manual = eventually(LONG, "manual segment finalized", || async {
        let s = segments(&client).await.remove("manual")?;
        (!s.finalizers().is_empty()).then_some(s)
    })
    .await;
    assert!(manual.labels().is_empty());

    // A pod address is still allocated (an agent's SegmentAddress object, and an entry of
    // the previous design's ConfigMap not migrated yet): deleting the namespace waits for it.
    let addresses: Api<switchyard_api::SegmentAddress> = Api::all(client.clone());
    let address: switchyard_api::SegmentAddress = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchyard.io/v1alpha1", "kind": "SegmentAddress",
        "metadata": {"name": "ns-blue.10.64.0.67"},
        "spec": {"segment": "ns-blue", "address": "10.64.0.67", "node": "node-a",
                 "containerID": "def", "interface": "eth0"}
    }))
    .unwrap();
    addresses
        .create(&PostParams::default(), &address)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), IPAM_NS);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "switchyard-ipam-ns-blue"},
        "data": {"10.64.0.66": "node-a/abc/eth0"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .delete("blue", &DeleteParams::default())
        .await
        .unwrap();
    eventually(LONG, "segment terminating", || async {
        let s = segments(&client).await.remove("ns-blue")?;
        s.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;
    // Still there a while later (in use), and so is the namespace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(segments(&client).await.contains_key("ns-blue"));
    assert!(ns_get(&client, "blue").await.is_some());
    // The last addresses are released: the Segment goes, then the namespace.
    addresses
        .delete("ns-blue.10.64.0.67", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        segments(&client).await.contains_key("ns-blue"),
        "the ConfigMap entry still holds it"
    );
    cms.patch(
        "switchyard-ipam-ns-blue",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": null})),
    )
    .await
    .unwrap();
    eventually(LONG, "blue released", || async {
        let gone = !segments(&client).await.contains_key("ns-blue")
            && ns_get(&client, "blue").await.is_none();
        gone.then_some(())
    })
    .await;
    assert!(segments(&client).await.contains_key("manual"));
    assert!(metrics.ns_deleted.get() >= 1);

    // Recreated: a fresh Segment with the new UID.
    namespace(&client, "blue", true).await;
    let blue = vec!["blue".to_string()];
    eventually(LONG, "blue again", || one_network_each(&client, &blue)).await;
}

/// The in-process fabric API as the namespaces' router: its credentials Secret and the
/// RouteTarget `fabric` (lab driver); the replicas then get `--namespace-route-target
/// fabric`.
async fn fabric_router(client: &Client, dir: &std::path::Path) -> InProcess {
    let fabric = InProcess::start(dir, "controller").await;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("fabric-cred".into()),
            namespace: Some(LEASE_NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            fabric
                .credentials()
                .into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), LEASE_NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let target: RouteTarget = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchyard.io/v1alpha1", "kind": "RouteTarget",
        "metadata": {"name": "fabric"},
        "spec": {"driver": "lab", "endpoint": format!("https://{}", fabric.api.addr()),
                 "credentialsSecretRef": {"namespace": LEASE_NS, "name": "fabric-cred"}}
    }))
    .unwrap();
    Api::<RouteTarget>::all(client.clone())
        .create(&PostParams::default(), &target)
        .await
        .unwrap();
    fabric
}

/// The router holds exactly one SNAT rule of this cluster per namespace of `names`, for its
/// Segment's subnets and SNAT address, tagged with its UID, and no other (no orphan).
async fn one_nat_rule_each(client: &Client, names: &[String]) -> Option<()> {
    let target = Api::<RouteTarget>::all(client.clone())
        .get("fabric")
        .await
        .ok()?;
    let built = switchyard_router::target::driver(client, LEASE_NS, "test", &target, None)
        .await
        .ok()?;
    let rules = built.driver.nat()?.list_nat().await.ok()?;
    if rules.len() != names.len() {
        return None;
    }
    let segs = segments(client).await;
    for name in names {
        let seg = segs.get(&format!("ns-{name}"))?;
        let rule = rules.iter().find(|r| r.id == format!("test-ns-{name}"))?;
        let sources: Vec<String> = rule.source_networks.iter().map(|n| n.to_string()).collect();
        let want: Vec<String> = seg.spec.subnets.iter().map(|s| s.cidr.clone()).collect();
        if sources != want
            || Some(rule.translated.to_string()) != seg.spec.snat_address
            || rule.namespace_uid.as_ref() != seg.labels().get("switchyard.io/namespace-uid")
        {
            return None;
        }
    }
    Some(())
}

async fn kill_during_creation(count: usize, kills: usize) {
    let (_server, client) = lab().await;
    setup(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let _fabric = fabric_router(&client, dir.path()).await;
    let routed = || Config {
        route_target: Some("fabric".into()),
        ..config()
    };
    let names: Vec<String> = (0..count).map(|i| format!("team-{i}")).collect();
    let mut replica_task = replica_with(&client, "r0", routed()).0;
    let per_kill = count.div_ceil(kills);
    for (i, chunk) in names.chunks(per_kill).enumerate() {
        for n in chunk {
            namespace(&client, n, true).await;
        }
        // Let the leader start writing, then crash it mid-way (the Lease is not released).
        tokio::time::sleep(Duration::from_millis(150)).await;
        replica_task.abort();
        replica_task = replica_with(&client, &format!("r{}", i + 1), routed()).0;
    }
    eventually(Duration::from_secs(90), "one network per namespace", || {
        one_network_each(&client, &names)
    })
    .await;
    eventually(LONG, "one SNAT rule per namespace on the router", || {
        one_nat_rule_each(&client, &names)
    })
    .await;
    // Idle restart: a new leader reads everything and writes nothing.
    replica_task.abort();
    let (_t, metrics) = replica_with(&client, "idle", routed());
    eventually(LONG, "a pass of the new leader", || async {
        (metrics.ns_passes.get() >= 1).then_some(())
    })
    .await;
    assert_eq!(metrics.ns_writes.get(), 0, "an idle restart wrote");
    one_network_each(&client, &names).await.unwrap();
    one_nat_rule_each(&client, &names).await.unwrap();
}

#[tokio::test]
async fn killing_the_controller_while_namespaces_are_created_leaves_one_network_each() {
    kill_during_creation(12, 3).await;
}

/// The figure: 50 namespaces, 10 kills. `cargo test -p switchyard-controller
/// --test namespace_networks -- --ignored`.
#[tokio::test]
#[ignore]
async fn killing_the_controller_ten_times_during_fifty_namespaces() {
    kill_during_creation(50, 10).await;
}
