//! The verbs' logic against in-memory fakes of the kernel, OVSDB, OpenFlow
//! and the API server (`crate::drivers::fake`): no root, no OVS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use switchyard_cni::{CniError, ErrorCode};

use super::add::{AddRequest, attach};
use super::check::verify;
use super::del::detach;
use super::gc::collect_garbage;
use crate::attach_error::AttachError;
use crate::attachment::Attachment;
use crate::drivers::fake::{FailAt, FakeNode, World};
use crate::ipam::AttachmentKey;
use crate::segment::ANNOTATION_IP;
use crate::state::{NodeState, lock};

fn key(container: &str) -> AttachmentKey {
    AttachmentKey::new(container, "eth0")
}

fn netns_of(container: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{container}"))
}

/// A pod `container` whose netns exists; the runtime passed its annotations.
fn pod(fake: &FakeNode, container: &str, annotations: &[(&str, &str)]) -> AddRequest {
    fake.world().netns.insert(netns_of(container));
    let mut runtime_annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Non-empty, so the Pod itself is not read.
    runtime_annotations.insert("test".into(), container.into());
    AddRequest {
        key: key(container),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{container}"),
        standalone_segment: None,
        pod_uid: format!("uid-{container}"),
        netns: Some(netns_of(container)),
        mtu: None,
        runtime_annotations,
    }
}

fn code(e: AttachError) -> u32 {
    CniError::from(e).code
}

/// Nothing of `container` is left: no veth, port, flows, address or record.
fn assert_nothing_left(state: &NodeState, world: &World, container: &str) {
    let k = key(container);
    let host = crate::netns::host_ifname(&k.container_id, &k.ifname);
    assert!(!world.veths.contains_key(&host), "veth left: {world:?}");
    assert!(!world.ports.contains_key(&host), "port left: {world:?}");
    assert!(
        lock(&state.pools)
            .values()
            .all(|p| p.allocations().all(|(_, held)| *held != k)),
        "address still held"
    );
    assert!(!lock(&state.attachments).contains_key(&k));
}

fn assert_empty(state: &NodeState, fake: &FakeNode) {
    let world = fake.world();
    assert!(world.veths.is_empty(), "veths left: {:?}", world.veths);
    assert!(world.ports.is_empty(), "ports left: {:?}", world.ports);
    assert!(world.flows.is_empty(), "flows left: {:?}", world.flows);
    assert!(state.allocations().is_empty(), "addresses held");
    assert!(lock(&state.attachments).is_empty());
    assert!(lock(&state.ofports).is_empty(), "ofports still reserved");
}

#[tokio::test]
async fn add_wires_veth_port_and_flows_and_del_removes_them() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let a = attach(&state, &pod(&fake, "c1", &[]))
        .await
        .unwrap()
        .attachment;
    assert_eq!(a.address.to_string(), "10.244.1.2/24");
    {
        let world = fake.world();
        assert!(world.veths.contains_key(&a.host_ifname));
        assert_eq!(world.ports[&a.host_ifname].1, a.ofport);
        assert!(!world.pod_flows(a.ofport).is_empty());
    }
    // A repeated ADD returns the recorded attachment.
    let again = attach(&state, &pod(&fake, "c1", &[])).await.unwrap();
    assert_eq!(again.attachment, a);
    verify(&state, &key("c1"), None).await.unwrap();

    detach(&state, &key("c1")).await.unwrap();
    assert_empty(&state, &fake);
}

#[tokio::test]
async fn failed_add_rolls_back_every_step() {
    for (step, want) in [
        (FailAt::CreateVeth, ErrorCode::InterfaceFailure),
        (FailAt::AddPort, ErrorCode::OvsFailure),
        (FailAt::WaitOfport, ErrorCode::OvsFailure),
        (FailAt::Flows, ErrorCode::OvsFailure),
    ] {
        let fake = FakeNode::default();
        let state = NodeState::for_tests(fake.drivers(), None);
        fake.world().fail.insert(step);
        let err = attach(&state, &pod(&fake, "c1", &[])).await.unwrap_err();
        assert_eq!(code(err), want as u32, "{step:?}");
        assert_empty(&state, &fake);
        // The next ADD works (on the ofport the failed one had reserved).
        fake.world().fail.clear();
        let a = attach(&state, &pod(&fake, "c1", &[])).await.unwrap();
        assert_eq!(
            a.attachment.ofport,
            switchyard_pipeline::ofport::FIRST_POD,
            "{step:?}"
        );
    }
}

#[tokio::test]
async fn failed_add_on_another_ofport_removes_the_flows_of_both() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    fake.world().refuse_requests = true;
    fake.world().fail.insert(FailAt::Flows);
    let err = attach(&state, &pod(&fake, "c1", &[])).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::OvsFailure as u32);
    assert_empty(&state, &fake);
}

#[tokio::test]
async fn failed_address_record_leaves_nothing_and_keeps_the_holder() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let first = attach(&state, &pod(&fake, "c1", &[])).await.unwrap();
    let taken = first.attachment.address.addr().to_string();
    let err = attach(&state, &pod(&fake, "c2", &[(ANNOTATION_IP, &taken)]))
        .await
        .unwrap_err();
    assert!(matches!(err, AttachError::Address(_)), "{err:?}");
    assert_eq!(code(err), ErrorCode::InvalidPodNetworkRequest as u32);
    assert_nothing_left(&state, &fake.world(), "c2");
    assert_eq!(
        state.allocations(),
        vec![(first.attachment.address.addr(), key("c1"))]
    );
}

#[tokio::test]
async fn failed_api_read_and_missing_netns_leave_nothing() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    fake.world().fail.insert(FailAt::Api);
    let err = attach(&state, &pod(&fake, "c1", &[])).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::ApiServerFailure as u32);
    assert_empty(&state, &fake);

    fake.world().fail.clear();
    let mut req = pod(&fake, "c2", &[]);
    req.netns = Some("/var/run/netns/gone".into());
    let err = attach(&state, &req).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::InterfaceFailure as u32);
    assert_empty(&state, &fake);
}

#[tokio::test]
async fn del_is_idempotent() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    // Unknown attachment.
    detach(&state, &key("never")).await.unwrap();
    // Twice.
    attach(&state, &pod(&fake, "c1", &[])).await.unwrap();
    detach(&state, &key("c1")).await.unwrap();
    detach(&state, &key("c1")).await.unwrap();
    assert_empty(&state, &fake);
}

#[tokio::test]
async fn del_after_a_half_add_removes_what_it_left() {
    // An ADD that died after the veth and the port (e.g. the agent was
    // killed): nothing in memory, the port's external_ids name it.
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let a = attach(&state, &pod(&fake, "c1", &[]))
        .await
        .unwrap()
        .attachment;
    lock(&state.attachments).clear();
    for p in lock(&state.pools).values_mut() {
        p.release(&a.key);
    }
    lock(&state.ofports).clear();
    detach(&state, &key("c1")).await.unwrap();
    assert_empty(&state, &fake);

    // Only a veth left (the port was never added).
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    fake.world().fail.insert(FailAt::AddPort);
    fake.world().veths.insert(
        crate::netns::host_ifname("c2", "eth0"),
        crate::drivers::fake::FakeVeth {
            netns: netns_of("c2"),
            pod_ifname: "eth0".into(),
            pod_mac: crate::mac::MacAddr([2, 0, 0, 0, 0, 2]),
            addresses: Vec::new(),
            gateway: None,
        },
    );
    detach(&state, &key("c2")).await.unwrap();
    assert_empty(&state, &fake);
}

/// An agent port in OVSDB for `a`, as a killed agent leaves it.
fn leftover_port(fake: &FakeNode, a: &Attachment) {
    let row = switchyard_ovs::ovsdb::PortRow {
        name: a.host_ifname.clone(),
        tag: (a.vlan != 0).then_some(a.vlan),
        external_ids: a.external_ids(),
        ..Default::default()
    };
    fake.world()
        .ports
        .insert(a.host_ifname.clone(), (row, a.ofport));
}

#[tokio::test]
async fn gc_removes_exactly_what_the_valid_list_omits() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let mut added = BTreeMap::new();
    for c in ["c1", "c2", "c3"] {
        added.insert(c, attach(&state, &pod(&fake, c, &[])).await.unwrap());
    }
    // c4: only a port in OVSDB (the agent forgot it); c5: only an address.
    let mut c4 = added["c3"].attachment.clone();
    c4.key = key("c4");
    c4.host_ifname = crate::netns::host_ifname("c4", "eth0");
    c4.ofport = 4000;
    leftover_port(&fake, &c4);
    lock(&state.pools)
        .get_mut(crate::state::NODE_POOL)
        .unwrap()
        .allocate(&key("c5"))
        .unwrap();

    let valid: BTreeSet<AttachmentKey> = [key("c1"), key("c3")].into();
    collect_garbage(&state, &valid).await.unwrap();

    let kept: BTreeSet<AttachmentKey> = lock(&state.attachments).keys().cloned().collect();
    assert_eq!(kept, valid);
    let held: BTreeSet<AttachmentKey> = state.allocations().into_iter().map(|(_, k)| k).collect();
    assert_eq!(held, valid);
    let world = fake.world();
    let ports: BTreeSet<&String> = world.ports.keys().collect();
    assert_eq!(
        ports,
        [
            &added["c1"].attachment.host_ifname,
            &added["c3"].attachment.host_ifname
        ]
        .into()
    );
    assert!(world.pod_flows(added["c2"].attachment.ofport).is_empty());
    assert!(!world.pod_flows(added["c1"].attachment.ofport).is_empty());
    for c in ["c2", "c4", "c5"] {
        assert_nothing_left(&state, &world, c);
    }
}

#[tokio::test]
async fn gc_with_an_empty_valid_list_removes_everything_and_an_add_in_flight_survives() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    attach(&state, &pod(&fake, "c1", &[])).await.unwrap();
    // c2's ADD is in flight: it holds its lock and its in-flight mark.
    let in_flight = state.adds.begin_add(&key("c2"));
    lock(&state.pools)
        .get_mut(crate::state::NODE_POOL)
        .unwrap()
        .allocate(&key("c2"))
        .unwrap();
    collect_garbage(&state, &BTreeSet::new()).await.unwrap();
    drop(in_flight);
    let held: Vec<AttachmentKey> = state.allocations().into_iter().map(|(_, k)| k).collect();
    assert_eq!(held, vec![key("c2")]);
    assert!(lock(&state.attachments).is_empty());
    assert!(fake.world().ports.is_empty());
}

#[tokio::test]
async fn check_names_each_difference() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let a = attach(&state, &pod(&fake, "c1", &[]))
        .await
        .unwrap()
        .attachment;
    verify(&state, &key("c1"), None).await.unwrap();

    fake.world()
        .veths
        .get_mut(&a.host_ifname)
        .unwrap()
        .addresses
        .clear();
    fake.world().ports.get_mut(&a.host_ifname).unwrap().0.tag = Some(7);
    let err = verify(&state, &key("c1"), None).await.unwrap_err();
    let AttachError::CheckFailed { differences } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(differences.len(), 2, "{differences:?}");
    assert!(differences[0].starts_with("address 10.244.1.2/24 missing on eth0"));
    assert!(differences[1].contains("has tag Some(7), recorded VLAN 0"));
    assert_eq!(code(err), ErrorCode::CheckFailed as u32);

    let err = verify(&state, &key("unknown"), None).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::CheckFailed as u32);
}

#[tokio::test]
async fn check_reports_a_missing_uplink_flow_of_a_vlan_segment_pod() {
    let segments = "segments:\n- name: default\n  kind: overlay\n- name: blue\n  kind: vlan\n  vlan: 100\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  uplink: up0\n";
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), Some(segments));
    // Recorded as ADD leaves a `vlan` segment pod (its cluster-wide
    // allocation needs the API server, so the record is made here).
    let mut a = attach(&state, &pod(&fake, "c1", &[]))
        .await
        .unwrap()
        .attachment;
    detach(&state, &key("c1")).await.unwrap();
    a.segment = "blue".into();
    a.vlan = 100;
    a.address = "10.20.0.5/24".parse().unwrap();
    a.gateway = Some("10.20.0.1".parse().unwrap());
    let segment = state.segment("blue");
    let uplink_flows = crate::uplink::pod_flows(1, &a.pod_port(), segment.as_ref());
    assert!(!uplink_flows.is_empty());
    {
        let mut w = fake.world();
        let mods = crate::flows::pod_flows(1, &state.gateway(), &a.pod_port())
            .into_iter()
            .chain(uplink_flows.clone());
        w.flows.extend(mods);
        w.veths.insert(
            a.host_ifname.clone(),
            crate::drivers::fake::FakeVeth {
                netns: a.netns.clone(),
                pod_ifname: "eth0".into(),
                pod_mac: a.mac,
                addresses: vec![a.address],
                gateway: a.gateway,
            },
        );
        let row = switchyard_ovs::ovsdb::PortRow {
            name: a.host_ifname.clone(),
            tag: Some(100),
            external_ids: a.external_ids(),
            ..Default::default()
        };
        w.ports.insert(a.host_ifname.clone(), (row, a.ofport));
    }
    lock(&state.attachments).insert(a.key.clone(), a.clone());
    verify(&state, &key("c1"), None).await.unwrap();

    // One uplink flow deleted: CHECK names it, code 105.
    let gone = uplink_flows[0].clone();
    fake.world().flows.retain(|f| {
        !(f.table == gone.table && f.priority == gone.priority && f.matches == gone.matches)
    });
    let err = verify(&state, &key("c1"), None).await.unwrap_err();
    let cni = CniError::from(err);
    assert_eq!(cni.code, ErrorCode::CheckFailed as u32);
    assert_eq!(
        cni.details,
        format!("flow missing: table={},{}", gone.table, gone.match_string())
    );
}

#[tokio::test]
async fn gc_goes_on_past_a_failed_teardown_and_reports_every_failure() {
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let mut added = BTreeMap::new();
    for c in ["c1", "c2", "c3", "c4"] {
        added.insert(c, attach(&state, &pod(&fake, c, &[])).await.unwrap());
    }
    // OVSDB refuses to remove c1's and c3's ports.
    for c in ["c1", "c3"] {
        fake.world()
            .stuck_ports
            .insert(added[c].attachment.host_ifname.clone());
    }
    let err = collect_garbage(&state, &BTreeSet::new()).await.unwrap_err();
    match &err {
        AttachError::GcIncomplete { failures } => {
            let keys: Vec<&AttachmentKey> = failures.iter().map(|(k, _)| k).collect();
            assert_eq!(keys, vec![&key("c1"), &key("c3")]);
        }
        other => panic!("{other}"),
    }
    // The others are gone all the same.
    let world = fake.world();
    for c in ["c2", "c4"] {
        assert_nothing_left(&state, &world, c);
    }
    drop(world);
    let cni = CniError::from(err);
    assert_eq!(cni.code, ErrorCode::OvsFailure.code());
    assert!(
        cni.details.contains("c1") && cni.details.contains("c3"),
        "{cni:?}"
    );
}

#[tokio::test]
async fn queued_dels_run_and_their_files_go_unless_they_fail() {
    use switchyard_cni::{CniEnv, CniRequest, Verb, parse_config, pending};
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let mut added = BTreeMap::new();
    for c in ["c1", "c2"] {
        added.insert(c, attach(&state, &pod(&fake, c, &[])).await.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"switchyard"}"#;
    for c in ["c1", "c2", "gone"] {
        let req = CniRequest::new(
            Verb::Del,
            CniEnv {
                container_id: Some(c.into()),
                ifname: Some("eth0".into()),
                ..CniEnv::default()
            },
            parse_config(stdin.as_bytes()).unwrap(),
            stdin.into(),
        );
        pending::queue_del(&socket, &req).unwrap();
    }
    std::fs::write(pending::queue_dir(&socket).join("junk.json"), b"{").unwrap();
    // c2's port cannot be removed this time.
    fake.world()
        .stuck_ports
        .insert(added["c2"].attachment.host_ifname.clone());
    assert_eq!(crate::cni::run_queued_dels(&state, &socket).await, 2);
    assert_nothing_left(&state, &fake.world(), "c1");
    let left: Vec<String> = pending::queued_dels(&socket)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["c2_eth0.json".to_owned()]);
    // Next start: it goes through.
    fake.world().stuck_ports.clear();
    assert_eq!(crate::cni::run_queued_dels(&state, &socket).await, 1);
    assert!(pending::queued_dels(&socket).unwrap().is_empty());
    assert_nothing_left(&state, &fake.world(), "c2");
}

#[tokio::test]
async fn a_static_mac_in_use_on_the_segment_or_an_address_outside_it_is_refused() {
    use crate::segment::{ANNOTATION_MAC, SegmentError};
    let fake = FakeNode::default();
    let state = NodeState::for_tests(fake.drivers(), None);
    let mac = [(ANNOTATION_MAC, "02:00:00:00:00:42")];
    let first = attach(&state, &pod(&fake, "c1", &mac)).await.unwrap();
    assert_eq!(first.attachment.mac.to_string(), "02:00:00:00:00:42");
    let err = attach(&state, &pod(&fake, "c2", &mac)).await.unwrap_err();
    assert!(
        matches!(err, AttachError::Placement(SegmentError::MacInUse { .. })),
        "{err:?}"
    );
    let cni = CniError::from(err);
    assert_eq!(cni.code, ErrorCode::InvalidPodNetworkRequest as u32);
    assert!(cni.details.contains("c1/eth0"), "{cni:?}");
    assert_nothing_left(&state, &fake.world(), "c2");
    // Free again once its holder is gone.
    detach(&state, &key("c1")).await.unwrap();
    attach(&state, &pod(&fake, "c2", &mac)).await.unwrap();

    // An overlay segment's static address is one of the node's pod CIDR.
    let err = attach(&state, &pod(&fake, "c3", &[(ANNOTATION_IP, "10.20.0.9")]))
        .await
        .unwrap_err();
    let cni = CniError::from(err);
    assert_eq!(cni.code, ErrorCode::InvalidPodNetworkRequest as u32);
    assert!(
        cni.details
            .contains("outside the pod's segment \"default\" (this node's pod CIDR 10.244.1.0/24)"),
        "{cni:?}"
    );
    assert_nothing_left(&state, &fake.world(), "c3");
}
