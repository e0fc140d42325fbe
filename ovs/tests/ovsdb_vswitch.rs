//! The typed helpers against a real ovsdb-server and
//! ovs-vswitchd (userspace datapath) with veth-backed ports; every result is
//! checked with `ovs-vsctl` as an independent oracle. Needs root and OVS.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use switchyard_ovs::ovsdb::{BridgeSpec, Client, Error, PortSpec};
use switchyard_ovs_harness::{OvsInstance, VethPair, require_privileges};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `read` (a round trip to the server) until it returns `Some`, for
/// up to [`TIMEOUT`]; `what` names the condition in the panic.
async fn poll<T, F: Future<Output = Option<T>>>(what: &str, mut read: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = read().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn vsctl(ovs: &OvsInstance, args: &[&str]) -> String {
    ovs.vsctl(args)
        .unwrap_or_else(|e| panic!("ovs-vsctl {args:?}: {e}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_ports_with_vlans_and_external_ids_round_trip() {
    if !require_privileges("veth_ports_with_vlans_and_external_ids_round_trip") {
        return;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();

    let mut spec = BridgeSpec::netdev("br-int");
    spec.external_ids
        .insert("owner".into(), "switchyard".into());
    spec.other_config
        .insert("datapath-id".into(), "00000000000000a1".into());
    spec.fail_mode = Some("secure".into());
    spec.protocols = vec!["OpenFlow13".into(), "OpenFlow15".into()];
    let bridge_uuid = client.ensure_bridge(&spec).await.unwrap();
    // Idempotent: same uuid, settings merged, nothing duplicated.
    spec.external_ids.insert("extra".into(), "1".into());
    assert_eq!(client.ensure_bridge(&spec).await.unwrap(), bridge_uuid);
    assert_eq!(vsctl(&ovs, &["list-br"]), "br-int");
    assert_eq!(
        vsctl(&ovs, &["get", "Bridge", "br-int", "datapath_type"]),
        "netdev"
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Bridge", "br-int", "fail_mode"]),
        "secure"
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Bridge", "br-int", "external_ids"]),
        r#"{extra="1", owner=switchyard}"#
    );
    assert_eq!(
        vsctl(
            &ovs,
            &["get", "Bridge", "br-int", "other_config:datapath-id"]
        ),
        r#""00000000000000a1""#
    );
    // vswitchd applies the datapath id; the typed read sees it arrive.
    let bridge = poll("datapath_id on br-int", || async {
        let bridge = client.bridge("br-int").await.unwrap()?;
        (bridge.datapath_id.as_deref() == Some("00000000000000a1")).then_some(bridge)
    })
    .await;
    assert_eq!(
        vsctl(&ovs, &["get", "Bridge", "br-int", "datapath_id"]),
        r#""00000000000000a1""#
    );
    assert_eq!(bridge.uuid, bridge_uuid);
    assert!(
        client
            .open_vswitch()
            .await
            .unwrap()
            .bridges
            .contains(&bridge_uuid)
    );

    let veths: Vec<VethPair> = (0..3)
        .map(|_| VethPair::new("syv", ovs.netns()).unwrap())
        .collect();
    let pod = |i: usize| format!("default/pod-{i}");
    // One port alone (access VLAN), two in one transaction (VLAN + trunk).
    let first = PortSpec::new(veths[0].name())
        .with_tag(100)
        .with_external_id("k8s-pod", &pod(0))
        .with_external_id("owner", "switchyard");
    client.add_port("br-int", &first).await.unwrap();
    let batch = vec![
        PortSpec::new(veths[1].name())
            .with_tag(200)
            .with_external_id("k8s-pod", &pod(1))
            .with_external_id("owner", "switchyard"),
        PortSpec::new(veths[2].name())
            .with_trunks(&[100, 200])
            .with_external_id("owner", "uplink"),
    ];
    let added = client.add_ports("br-int", &batch).await.unwrap();
    assert_eq!(added.len(), 2);

    // Oracle: ovs-vsctl sees exactly what we asked for.
    assert_eq!(vsctl(&ovs, &["get", "Port", veths[0].name(), "tag"]), "100");
    assert_eq!(vsctl(&ovs, &["get", "Port", veths[1].name(), "tag"]), "200");
    assert_eq!(
        vsctl(&ovs, &["get", "Port", veths[2].name(), "trunks"]),
        "[100, 200]"
    );
    assert_eq!(
        vsctl(
            &ovs,
            &["get", "Interface", veths[1].name(), "external_ids:k8s-pod"]
        ),
        format!("\"{}\"", pod(1))
    );
    assert_eq!(
        vsctl(
            &ovs,
            &["get", "Port", veths[0].name(), "external_ids:owner"]
        ),
        "switchyard"
    );
    let mut listed: Vec<String> = vsctl(&ovs, &["list-ports", "br-int"])
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut expected: Vec<String> = veths.iter().map(|v| v.name().to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    // vswitchd's ofports: the server-side wait returns what vsctl reads.
    for veth in &veths {
        let ofport = client.interface_ofport(veth.name(), TIMEOUT).await.unwrap();
        let oracle: u16 = vsctl(&ovs, &["get", "Interface", veth.name(), "ofport"])
            .parse()
            .unwrap();
        assert_eq!(ofport, oracle, "{}", veth.name());
        let interface = client.interface(veth.name()).await.unwrap().unwrap();
        assert_eq!(interface.ofport, Some(i64::from(oracle)));
    }
    // The typed reads.
    let port0 = client.port(veths[0].name()).await.unwrap().unwrap();
    assert_eq!(port0.tag, Some(100));
    assert_eq!(
        client.port(veths[2].name()).await.unwrap().unwrap().trunks,
        vec![100, 200]
    );
    let bridge = client.bridge("br-int").await.unwrap().unwrap();
    assert!(bridge.ports.contains(&port0.uuid));
    assert_eq!(bridge.ports.len(), 4); // + the bridge's internal port
    let mut want = vec![veths[0].name().to_string(), veths[1].name().to_string()];
    want.sort();
    assert_eq!(
        client
            .find_interfaces_by_external_id("k8s-pod", &pod(1))
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect::<Vec<_>>(),
        vec![veths[1].name().to_string()]
    );

    // Server-side search by external id.
    let mut found: Vec<String> = client
        .find_ports_by_external_id("owner", "switchyard")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    found.sort();
    assert_eq!(found, want);

    // Errors that change nothing.
    match client.add_port("br-int", &first).await {
        Err(Error::PortExists(name)) => assert_eq!(name, veths[0].name()),
        other => panic!("expected PortExists, got {other:?}"),
    }
    match client.add_port("br-missing", &PortSpec::new("nope0")).await {
        Err(Error::BridgeNotFound(name)) => assert_eq!(name, "br-missing"),
        other => panic!("expected BridgeNotFound, got {other:?}"),
    }
    assert!(matches!(
        client
            .add_port("br-int", &PortSpec::new("nope1").with_tag(5000))
            .await,
        Err(Error::InvalidArgument(_))
    ));
    // A batch with one bad port adds none of them.
    let mixed = vec![PortSpec::new("nope2"), PortSpec::new(veths[1].name())];
    assert!(matches!(
        client.add_ports("br-int", &mixed).await,
        Err(Error::PortExists(_))
    ));
    assert!(ovs.vsctl(&["get", "Port", "nope2", "name"]).is_err());
    assert_eq!(vsctl(&ovs, &["list-ports", "br-int"]).lines().count(), 3);

    // Removal: by name, from its bridge; the typed reads and vsctl follow.
    client.remove_port(veths[0].name()).await.unwrap();
    client
        .remove_ports(&[veths[1].name(), veths[2].name()])
        .await
        .unwrap();
    assert_eq!(vsctl(&ovs, &["list-ports", "br-int"]), "");
    assert!(
        ovs.vsctl(&["get", "Interface", veths[0].name(), "ofport"])
            .is_err()
    );
    assert_eq!(
        client.bridge("br-int").await.unwrap().unwrap().ports.len(),
        1
    );
    assert!(client.interface(veths[0].name()).await.unwrap().is_none());
    assert!(client.port(veths[0].name()).await.unwrap().is_none());
    assert!(matches!(
        client.remove_port(veths[0].name()).await,
        Err(Error::PortNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_port_ofport_and_failed_interface() {
    if !require_privileges("internal_port_ofport_and_failed_interface") {
        return;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    client
        .ensure_bridge(&BridgeSpec::netdev("br0"))
        .await
        .unwrap();
    let gw = format!("sygw{}", std::process::id() % 100_000);
    let mut spec = PortSpec::new(&gw).with_type("internal");
    spec.ofport_request = Some(42);
    client.add_port("br0", &spec).await.unwrap();
    assert_eq!(client.interface_ofport(&gw, TIMEOUT).await.unwrap(), 42);
    assert_eq!(vsctl(&ovs, &["get", "Interface", &gw, "ofport"]), "42");

    // A system port whose device does not exist: vswitchd reports ofport -1.
    client
        .add_port("br0", &PortSpec::new("sy-no-such-dev"))
        .await
        .unwrap();
    match client.interface_ofport("sy-no-such-dev", TIMEOUT).await {
        Err(Error::InterfaceFailed { name, error }) => {
            assert_eq!(name, "sy-no-such-dev");
            assert!(!error.is_empty());
        }
        other => panic!("expected InterfaceFailed, got {other:?}"),
    }
    assert!(matches!(
        client.interface_ofport("sy-absent", TIMEOUT).await,
        Err(Error::InterfaceNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ofport_wait_times_out_without_vswitchd() {
    if !require_privileges("ofport_wait_times_out_without_vswitchd") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    client
        .ensure_bridge(&BridgeSpec::netdev("br0"))
        .await
        .unwrap();
    client
        .add_port("br0", &PortSpec::new("p0").with_type("internal"))
        .await
        .unwrap();
    // ovsdb-server's `wait` ends it (no wall-clock check here: the server's cached clock may
    // end it a little early, which is not ours to assert).
    match client
        .interface_ofport("p0", Duration::from_millis(300))
        .await
    {
        Err(Error::Timeout { timeout, what }) => {
            assert_eq!(timeout, Duration::from_millis(300));
            assert!(what.contains("p0"), "{what}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_bridge_creates_root_row_in_empty_db() {
    if !require_privileges("ensure_bridge_creates_root_row_in_empty_db") {
        return;
    }
    let ovs = OvsInstance::builder().empty_db(true).start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    assert!(matches!(client.open_vswitch().await, Err(Error::NoRootRow)));
    assert!(matches!(
        client.set_other_config("flow-restore-wait", "true").await,
        Err(Error::NoRootRow)
    ));
    let uuid = client
        .ensure_bridge(&BridgeSpec::netdev("br-int"))
        .await
        .unwrap();
    let root = client.open_vswitch().await.unwrap();
    assert_eq!(root.bridges, vec![uuid]);
    // Oracle that does not create the root row by itself.
    let dump = ovs
        .ovsdb_client("dump", &["Open_vSwitch", "Open_vSwitch", "bridges"])
        .unwrap();
    assert!(dump.contains(&uuid.to_string()), "{dump}");
    let bridges = ovs
        .ovsdb_client("dump", &["Open_vSwitch", "Bridge", "name", "ports"])
        .unwrap();
    assert!(bridges.contains("br-int"), "{bridges}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_vswitch_other_config() {
    if !require_privileges("open_vswitch_other_config") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    client
        .set_other_config("flow-restore-wait", "true")
        .await
        .unwrap();
    client.set_other_config("other", "x").await.unwrap();
    client.set_other_config("other", "y").await.unwrap();
    assert_eq!(
        vsctl(&ovs, &["get", "Open_vSwitch", ".", "other_config"]),
        r#"{flow-restore-wait="true", other=y}"#
    );
    client
        .remove_other_config("flow-restore-wait")
        .await
        .unwrap();
    assert_eq!(
        vsctl(&ovs, &["get", "Open_vSwitch", ".", "other_config"]),
        "{other=y}"
    );
    let root = client.open_vswitch().await.unwrap();
    assert_eq!(
        root.other_config,
        BTreeMap::from([("other".into(), "y".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlan_mode_mtu_external_ids_and_applied_config() {
    if !require_privileges("vlan_mode_mtu_external_ids_and_applied_config") {
        return;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    client
        .ensure_bridge(&BridgeSpec::netdev("br0"))
        .await
        .unwrap();
    let veth = VethPair::new("sym", ovs.netns()).unwrap();
    let mut spec = PortSpec::new(veth.name())
        .with_tag(30)
        .with_trunks(&[30, 40])
        .with_external_id("k", "v");
    spec.vlan_mode = Some("native-untagged".into());
    spec.mtu_request = Some(1400);
    client.add_port("br0", &spec).await.unwrap();

    // Wait like ovs-vsctl does: vswitchd has applied everything up to here.
    let cfg = client.increment_next_cfg().await.unwrap();
    poll("ovs-vswitchd to apply the configuration", || async {
        (client.open_vswitch().await.unwrap().cur_cfg >= cfg).then_some(())
    })
    .await;
    assert_eq!(
        vsctl(&ovs, &["get", "Open_vSwitch", ".", "cur_cfg"]),
        cfg.to_string()
    );
    assert_ne!(
        vsctl(&ovs, &["get", "Interface", veth.name(), "ofport"]),
        "[]"
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Port", veth.name(), "vlan_mode"]),
        "native-untagged"
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Interface", veth.name(), "mtu_request"]),
        "1400"
    );

    client
        .set_external_ids(
            "Interface",
            veth.name(),
            &BTreeMap::from([("attached-mac".into(), "02:00:00:00:00:01".into())]),
        )
        .await
        .unwrap();
    assert_eq!(
        vsctl(&ovs, &["get", "Interface", veth.name(), "external_ids"]),
        r#"{attached-mac="02:00:00:00:00:01", k=v}"#
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Port", veth.name(), "external_ids"]),
        "{k=v}"
    );
    assert!(matches!(
        client
            .set_external_ids(
                "Port",
                "sy-absent",
                &BTreeMap::from([("a".into(), "b".into())])
            )
            .await,
        Err(Error::PortNotFound(_))
    ));
    assert!(matches!(
        client
            .set_external_ids("Open_vSwitch", "x", &BTreeMap::new())
            .await,
        Err(Error::InvalidArgument(_))
    ));
}
