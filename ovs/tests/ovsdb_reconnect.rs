//! Server restarts mid-session against a real ovsdb-server/ovs-vswitchd: the
//! in-flight transaction errors, requests while down are refused, the client
//! reconnects, re-establishes its monitor (whose reset event carries the
//! server's contents, including a change made while the client was away) and
//! its locks. Needs root and OVS.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use switchyard_ovs::ovsdb::{
    BridgeSpec, Client, ClientConfig, Condition, ConnectionEvent, Error, LockEvent, Monitor,
    MonitorEvent, MonitorRequest, Operation, PortRow, PortSpec, Row, RowUpdate2, Updates, Value,
    WaitUntil,
};
use switchyard_ovs_harness::{OvsInstance, require_privileges};
use tokio::time::{Instant, timeout};

const STEP: Duration = Duration::from_secs(10);

/// The Port rows of a `monitor_cond` event that carry full contents
/// (initial rows and inserts), and the modify diffs, by port uuid.
fn port_rows(event: &MonitorEvent) -> Vec<(bool, PortRow)> {
    let Updates::V2(tables) = &event.updates else {
        panic!("expected update2 contents, got {event:?}");
    };
    tables
        .get("Port")
        .into_iter()
        .flatten()
        .filter_map(|(uuid, update)| match update {
            RowUpdate2::Initial(row) | RowUpdate2::Insert(row) => {
                Some((true, PortRow::from_row(*uuid, row)))
            }
            RowUpdate2::Modify(row) => Some((false, PortRow::from_row(*uuid, row))),
            RowUpdate2::Delete(_) => None,
        })
        .collect()
}

/// Reads monitor events until `found` returns `Some`, for up to [`STEP`].
async fn wait_event<T>(
    monitor: &mut Monitor,
    what: &str,
    mut found: impl FnMut(&MonitorEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        let event = tokio::time::timeout_at(deadline, monitor.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("monitor ended waiting for {what}"));
        if let Some(value) = found(&event) {
            return value;
        }
    }
}

/// The port named `name` in a reset event (full contents after a reconnect).
fn port_in_reset(event: &MonitorEvent, name: &str) -> Option<PortRow> {
    if !event.reset {
        return None;
    }
    port_rows(event)
        .into_iter()
        .find(|(full, port)| *full && port.name == name)
        .map(|(_, port)| port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_session() {
    if !require_privileges("server_restart_mid_session") {
        return;
    }
    let mut ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    let mut config = ClientConfig::new(ovs.db_endpoint().parse().unwrap());
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    let client = Client::connect_with(config).await.unwrap();
    assert_eq!(client.generation(), Some(1));
    let mut events = client.connection_events();
    let mut locks = client.lock_events();

    client
        .ensure_bridge(&BridgeSpec::netdev("br-int"))
        .await
        .unwrap();
    let requests = BTreeMap::from([("Port".to_string(), MonitorRequest::all())]);
    let mut ports = client
        .monitor_cond("Open_vSwitch", &requests)
        .await
        .unwrap();
    client
        .add_port(
            "br-int",
            &PortSpec::new("sy-before").with_type("internal").with_tag(7),
        )
        .await
        .unwrap();
    client.interface_ofport("sy-before", STEP).await.unwrap();
    assert!(client.lock("agent").await.unwrap());

    // A transaction the server holds (a wait that is not satisfied).
    let blocked = Operation::Wait {
        table: "Port".into(),
        conditions: vec![Condition::eq("name", "sy-never")],
        columns: vec!["name".into()],
        until: WaitUntil::NotEqual,
        rows: vec![],
        timeout_ms: Some(60_000),
    };
    // Polled once here, not spawned: the first poll queues the request to the
    // client's worker, so it is sent before the echo below. (A spawned task
    // may run only after the echo returned and the server was killed, and
    // then gets NotConnected.)
    let blocked = [blocked];
    let mut in_flight = std::pin::pin!(client.transact("Open_vSwitch", &blocked));
    assert!(futures::poll!(in_flight.as_mut()).is_pending());
    // Replies come in order: once this echo returns, the server has the transaction.
    client.echo().await.unwrap();
    assert!(futures::poll!(in_flight.as_mut()).is_pending());

    // Crash the server.
    tokio::task::block_in_place(|| ovs.kill_ovsdb());
    match timeout(STEP, in_flight).await.unwrap() {
        Err(Error::Disconnected { method, .. }) => assert_eq!(method, "transact"),
        other => panic!("in-flight transaction must fail, got {other:?}"),
    }
    match timeout(STEP, events.recv()).await.unwrap().unwrap() {
        ConnectionEvent::Disconnected { generation, .. } => assert_eq!(generation, 1),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(
        timeout(STEP, locks.recv()).await.unwrap().unwrap(),
        LockEvent::Lost("agent".into())
    );
    assert!(!client.is_connected());
    assert!(matches!(client.list_dbs().await, Err(Error::NotConnected)));

    // While the client is away, change the database file directly.
    let offline_change = serde_json::json!([
        "Open_vSwitch",
        {"op": "mutate", "table": "Port", "where": [["name", "==", "sy-before"]],
         "mutations": [["external_ids", "insert", ["map", [["changed", "offline"]]]]]}
    ]);
    let out = Command::new("ovsdb-tool")
        .arg("transact")
        .arg(ovs.db_file())
        .arg(offline_change.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    tokio::task::block_in_place(|| ovs.start_ovsdb()).unwrap();
    assert_eq!(
        timeout(STEP, events.recv()).await.unwrap().unwrap(),
        ConnectionEvent::Connected { generation: 2 }
    );
    assert_eq!(client.generation(), Some(2));
    assert_eq!(
        timeout(STEP, locks.recv()).await.unwrap().unwrap(),
        LockEvent::Locked("agent".into())
    );

    // The monitor was re-issued: its reset event holds the server's
    // contents, offline change included.
    let port = wait_event(&mut ports, "the monitor's reset after the reconnect", |e| {
        port_in_reset(e, "sy-before")
    })
    .await;
    assert_eq!(
        port.external_ids.get("changed").map(String::as_str),
        Some("offline")
    );
    assert_eq!(port.tag, Some(7));
    assert!(client.bridge("br-int").await.unwrap().is_some());

    // And it keeps following: a port added after the reconnect is reported
    // and gets an ofport (vswitchd reconnected on its own).
    client
        .add_port("br-int", &PortSpec::new("sy-after").with_type("internal"))
        .await
        .unwrap();
    wait_event(&mut ports, "the insert of sy-after", |e| {
        port_rows(e)
            .into_iter()
            .any(|(full, p)| full && p.name == "sy-after")
            .then_some(())
    })
    .await;
    let ofport = client.interface_ofport("sy-after", STEP).await.unwrap();
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "sy-after", "ofport"])
            .unwrap()
            .trim(),
        ofport.to_string()
    );
    client
        .transact(
            "Open_vSwitch",
            &[Operation::Assert {
                lock: "agent".into(),
            }],
        )
        .await
        .unwrap();

    // A graceful restart works the same way.
    tokio::task::block_in_place(|| ovs.restart_ovsdb()).unwrap();
    client.wait_connected(STEP).await.unwrap();
    let after = wait_event(&mut ports, "the monitor's second reset", |e| {
        port_in_reset(e, "sy-after")
    })
    .await;
    let mut row = Row::new();
    row.insert("tag".into(), Value::from(8));
    let results = client
        .transact(
            "Open_vSwitch",
            &[Operation::update(
                "Port",
                vec![Condition::eq("name", "sy-after")],
                row,
            )],
        )
        .await
        .unwrap();
    assert_eq!(results[0].count, Some(1));
    wait_event(&mut ports, "the tag update after the reconnect", |e| {
        port_rows(e)
            .into_iter()
            .any(|(_, p)| p.uuid == after.uuid && p.tag == Some(8))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_the_client_stays_down() {
    if !require_privileges("without_reconnect_the_client_stays_down") {
        return;
    }
    let mut ovs = OvsInstance::builder().start().unwrap();
    let mut config = ClientConfig::new(ovs.db_endpoint().parse().unwrap());
    config.reconnect = false;
    let client = Client::connect_with(config).await.unwrap();
    let mut events = client.connection_events();
    tokio::task::block_in_place(|| ovs.restart_ovsdb()).unwrap();
    // Subscribed after `connect_with` returned: the first connection's
    // `Connected` is not delivered, the drop is the first event.
    match timeout(STEP, events.recv()).await.unwrap().unwrap() {
        ConnectionEvent::Disconnected { generation, .. } => assert_eq!(generation, 1),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(client.list_dbs().await, Err(Error::Closed)));
}
