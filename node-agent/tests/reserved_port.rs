//! The agent's reserved ports (tunnel, gateway, uplinks) set up by
//! `reserved_port::ReservedPort::ensure` against a real ovsdb-server and
//! ovs-vswitchd (userspace datapath, private network namespace); every
//! result is checked with `ovs-vsctl`. Needs root and openvswitch-switch.

use switchyard_agent::reserved_port::{Found, Ofport, ReservedPort, ReservedPortError};
use switchyard_ovs::ovsdb::{BridgeSpec, Client, PortSpec};
use switchyard_ovs_harness::{OvsInstance, require_privileges};

const BRIDGE: &str = "br-int";

fn vsctl(ovs: &OvsInstance, args: &[&str]) -> String {
    ovs.vsctl(args)
        .unwrap_or_else(|e| panic!("ovs-vsctl {args:?}: {e}"))
        .trim()
        .to_string()
}

/// OVS with the bridge, or `None` when privileged tests are skipped.
async fn bridge(test: &str) -> Option<(OvsInstance, Client)> {
    if !require_privileges(test) {
        return None;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    client
        .ensure_bridge(&BridgeSpec::netdev(BRIDGE))
        .await
        .unwrap();
    Some((ovs, client))
}

/// Adds an internal port with `ovs-vsctl`, as an administrator would.
fn add_internal_port(ovs: &OvsInstance, name: &str, ofport_request: u16) {
    let request = format!("ofport_request={ofport_request}");
    vsctl(
        ovs,
        &[
            "add-port",
            BRIDGE,
            name,
            "--",
            "set",
            "Interface",
            name,
            "type=internal",
            &request,
        ],
    );
}

fn internal(role: &'static str, name: &str, ofport: Ofport) -> ReservedPort {
    ReservedPort {
        role,
        spec: PortSpec::new(name).with_type("internal"),
        ofport,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_port_is_added_once_and_found_again() {
    let Some((ovs, client)) = bridge("pinned_port_is_added_once_and_found_again").await else {
        return;
    };
    let gw = internal("gateway port", "sy-gw0", Ofport::Pinned(2));
    assert_eq!(gw.ensure(&client, BRIDGE, Found::Nothing).await.unwrap(), 2);
    assert_eq!(vsctl(&ovs, &["get", "Interface", "sy-gw0", "ofport"]), "2");
    // Added concurrently since the caller looked: it counts as added.
    assert_eq!(gw.ensure(&client, BRIDGE, Found::Nothing).await.unwrap(), 2);
    assert_eq!(
        gw.ensure(&client, BRIDGE, Found::AsWanted).await.unwrap(),
        2
    );
    assert_eq!(vsctl(&ovs, &["list-ports", BRIDGE]), "sy-gw0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_port_is_re_created_with_its_pinned_ofport() {
    let Some((ovs, client)) = bridge("different_port_is_re_created_with_its_pinned_ofport").await
    else {
        return;
    };
    // An old tunnel port of another type, with another number.
    add_internal_port(&ovs, "sy-tun0", 9);
    let tunnel = ReservedPort {
        role: "tunnel port",
        spec: PortSpec::new("sy-tun0")
            .with_type("geneve")
            .with_option("remote_ip", "flow")
            .with_option("key", "flow"),
        ofport: Ofport::Pinned(1),
    };
    assert_eq!(
        tunnel
            .ensure(&client, BRIDGE, Found::Different)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        vsctl(&ovs, &["get", "Interface", "sy-tun0", "type"]),
        "geneve"
    );
    assert_eq!(vsctl(&ovs, &["get", "Interface", "sy-tun0", "ofport"]), "1");
    assert_eq!(
        vsctl(&ovs, &["get", "Interface", "sy-tun0", "options"]),
        r#"{key=flow, remote_ip=flow}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_pinned_ofport_is_a_clear_error_and_a_requested_one_is_not() {
    let Some((ovs, client)) =
        bridge("taken_pinned_ofport_is_a_clear_error_and_a_requested_one_is_not").await
    else {
        return;
    };
    // Another port holds the gateway's number.
    add_internal_port(&ovs, "squatter", 2);
    let squatter = internal("other port", "squatter", Ofport::Requested(7));
    assert_eq!(
        squatter
            .ensure(&client, BRIDGE, Found::AsWanted)
            .await
            .unwrap(),
        2
    );

    let gw = internal("gateway port", "sy-gw0", Ofport::Pinned(2));
    let err = gw
        .ensure(&client, BRIDGE, Found::Nothing)
        .await
        .unwrap_err();
    let got = vsctl(&ovs, &["get", "Interface", "sy-gw0", "ofport"]);
    assert_ne!(got, "2");
    assert!(
        matches!(&err, ReservedPortError::WrongOfport { expected: 2, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "gateway port sy-gw0 has ofport {got}, expected 2; remove the port (ovs-vsctl del-port sy-gw0) and restart the agent"
        )
    );

    // An uplink only asks for its number: it takes what vswitchd gives.
    let uplink = internal("uplink", "trunk0", Ofport::Requested(2));
    let taken = uplink
        .ensure(&client, BRIDGE, Found::Nothing)
        .await
        .unwrap();
    assert_ne!(taken, 2);
    assert_eq!(
        vsctl(&ovs, &["get", "Interface", "trunk0", "ofport"]),
        taken.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_uplink_device_names_the_likely_cause() {
    let Some((_ovs, client)) = bridge("missing_uplink_device_names_the_likely_cause").await else {
        return;
    };
    let uplink = ReservedPort {
        role: "uplink",
        spec: PortSpec::new("sy-no-nic").with_trunks(&[100]),
        ofport: Ofport::Requested(3),
    };
    let err = uplink
        .ensure(&client, BRIDGE, Found::Nothing)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "uplink sy-no-nic: waiting for its ofport (does the interface exist on the node?): "
        ),
        "{err}"
    );
}
