//! The JSON-RPC client against a real ovsdb-server: every transact
//! operation, monitor/monitor_cond notifications, monitor_cancel, locks, TCP.
//! Needs root and OVS (the harness says so clearly otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_ovs::ovsdb::{
    Client, Condition, Error, Function, LockEvent, MonitorRequest, Mutation, Mutator, Operation,
    OvsdbErrorKind, Row, RowUpdate2, Updates, Value, WaitUntil,
};
use switchyard_ovs_harness::{OvsInstance, require_privileges};
use tokio::time::timeout;

const DB: &str = "Open_vSwitch";
const STEP: Duration = Duration::from_secs(10);

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_dbs_get_schema_and_rpc_errors() {
    if !require_privileges("list_dbs_get_schema_and_rpc_errors") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let dbs = client.list_dbs().await.unwrap();
    assert!(dbs.contains(&"Open_vSwitch".to_string()), "{dbs:?}");
    let schema = client.get_schema(DB).await.unwrap();
    assert_eq!(schema.name, "Open_vSwitch");
    assert!(schema.column("Port", "tag").unwrap().is_set());
    assert!(schema.column("Interface", "external_ids").unwrap().is_map());
    assert!(schema.column("Bridge", "name").unwrap().is_scalar());
    match client.get_schema("NoSuchDb").await {
        Err(Error::Rpc { method, error, .. }) => {
            assert_eq!(method, "get_schema");
            assert_eq!(error, "unknown database");
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    client.echo().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_every_operation() {
    if !require_privileges("transact_every_operation") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();

    // insert with named-uuid references, comment, durable commit.
    let ops = vec![
        Operation::Comment("switchyard test".into()),
        Operation::insert(
            "Interface",
            row(&[("name", "i1".into()), ("type", "internal".into())]),
            Some("i1"),
        ),
        Operation::insert(
            "Port",
            row(&[
                ("name", "i1".into()),
                ("interfaces", Value::named_uuid("i1")),
                ("tag", Value::from(10)),
                ("external_ids", Value::string_map([("a", "1")])),
            ]),
            Some("p1"),
        ),
        Operation::insert(
            "Bridge",
            row(&[("name", "b1".into()), ("ports", Value::named_uuid("p1"))]),
            Some("b1"),
        ),
        Operation::mutate(
            "Open_vSwitch",
            vec![],
            vec![Mutation::new(
                "bridges",
                Mutator::Insert,
                Value::Set(vec![switchyard_ovs::ovsdb::Atom::NamedUuid(
                    switchyard_ovs::ovsdb::NamedUuid::new("b1"),
                )]),
            )],
        ),
        Operation::Commit { durable: true },
    ];
    let results = client.transact(DB, &ops).await.unwrap();
    let port_uuid = results[2].uuid.unwrap();
    assert_eq!(results[4].count, Some(1));
    assert_eq!(
        ovs.vsctl(&["get", "Port", "i1", "_uuid"]).unwrap().trim(),
        port_uuid.to_string()
    );

    // select with conditions and columns.
    let results = client
        .transact(
            DB,
            &[Operation::select_columns(
                "Port",
                vec![
                    Condition::eq("name", "i1"),
                    Condition::new("tag", Function::GreaterOrEqual, 10),
                    Condition::includes("external_ids", Value::string_map([("a", "1")])),
                ],
                &["name", "tag"],
            )],
        )
        .await
        .unwrap();
    let rows = results[0].rows.as_ref().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["tag"].as_integer(), Some(10));
    assert!(!rows[0].contains_key("external_ids"));

    // update and mutate (arithmetic and map insert).
    let results = client
        .transact(
            DB,
            &[
                Operation::update(
                    "Port",
                    vec![Condition::eq("name", "i1")],
                    row(&[("tag", 20.into())]),
                ),
                Operation::mutate(
                    "Port",
                    vec![Condition::eq("name", "i1")],
                    vec![
                        Mutation::new("tag", Mutator::Add, 5),
                        Mutation::new(
                            "external_ids",
                            Mutator::Insert,
                            Value::string_map([("b", "2")]),
                        ),
                    ],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!((results[0].count, results[1].count), (Some(1), Some(1)));
    assert_eq!(
        ovs.vsctl(&["get", "Port", "i1", "tag"]).unwrap().trim(),
        "25"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Port", "i1", "external_ids"])
            .unwrap()
            .trim(),
        r#"{a="1", b="2"}"#
    );

    // wait: satisfied at once, and timing out with a typed error.
    let wait = |until, timeout_ms| Operation::Wait {
        table: "Port".into(),
        conditions: vec![Condition::eq("name", "i1")],
        columns: vec!["tag".into()],
        until,
        rows: vec![row(&[("tag", 25.into())])],
        timeout_ms: Some(timeout_ms),
    };
    client
        .transact(DB, &[wait(WaitUntil::Equal, 0)])
        .await
        .unwrap();
    match client.transact(DB, &[wait(WaitUntil::NotEqual, 0)]).await {
        Err(Error::Transaction(err)) => {
            assert_eq!(err.kind, OvsdbErrorKind::TimedOut);
            assert_eq!(err.op_index, 0);
        }
        other => panic!("expected timed out, got {other:?}"),
    }

    // abort: nothing of the transaction stays.
    match client
        .transact(
            DB,
            &[
                Operation::update(
                    "Port",
                    vec![Condition::eq("name", "i1")],
                    row(&[("tag", 99.into())]),
                ),
                Operation::Abort,
            ],
        )
        .await
    {
        Err(Error::Transaction(err)) => {
            assert_eq!(err.kind, OvsdbErrorKind::Aborted);
            assert_eq!(err.op_index, 1);
        }
        other => panic!("expected aborted, got {other:?}"),
    }
    assert_eq!(
        ovs.vsctl(&["get", "Port", "i1", "tag"]).unwrap().trim(),
        "25"
    );

    // a constraint violation at commit (duplicate index: two referenced bridges named b1).
    match client
        .transact(
            DB,
            &[
                Operation::insert("Bridge", row(&[("name", "b1".into())]), Some("dup")),
                Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::new(
                        "bridges",
                        Mutator::Insert,
                        Value::named_uuid("dup"),
                    )],
                ),
            ],
        )
        .await
    {
        Err(Error::Transaction(err)) => {
            assert_eq!(err.kind, OvsdbErrorKind::ConstraintViolation);
            assert_eq!(err.op_index, err.op_count, "error belongs to the commit");
        }
        other => panic!("expected a constraint violation, got {other:?}"),
    }
    // range error: tag out of the column's range.
    match client
        .transact(
            DB,
            &[Operation::update(
                "Port",
                vec![Condition::eq("name", "i1")],
                row(&[("tag", 5000.into())]),
            )],
        )
        .await
    {
        Err(Error::Transaction(err)) => assert_eq!(err.kind, OvsdbErrorKind::ConstraintViolation),
        other => panic!("expected a constraint violation, got {other:?}"),
    }

    // assert without holding the lock, then with it.
    match client
        .transact(
            DB,
            &[Operation::Assert {
                lock: "sy_lock".into(),
            }],
        )
        .await
    {
        Err(Error::Transaction(err)) => assert_eq!(err.kind, OvsdbErrorKind::NotOwner),
        other => panic!("expected not owner, got {other:?}"),
    }
    assert!(client.lock("sy_lock").await.unwrap());
    client
        .transact(
            DB,
            &[Operation::Assert {
                lock: "sy_lock".into(),
            }],
        )
        .await
        .unwrap();

    // delete: the bridge goes, and with it (garbage collection) its port.
    let results = client
        .transact(
            DB,
            &[
                Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::new(
                        "bridges",
                        Mutator::Delete,
                        Value::set([results_uuid(&client, "b1").await]),
                    )],
                ),
                Operation::delete("Bridge", vec![Condition::eq("name", "b1")]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results[1].count, Some(1));
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), "");
    assert!(ovs.vsctl(&["get", "Port", "i1", "tag"]).is_err());
}

async fn results_uuid(client: &Client, bridge: &str) -> switchyard_ovs::ovsdb::Uuid {
    client.bridge(bridge).await.unwrap().unwrap().uuid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_v1_update_and_cancel() {
    if !require_privileges("monitor_v1_update_and_cancel") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    ovs.vsctl(&["add-br", "br0"]).unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let requests = BTreeMap::from([(
        "Bridge".to_string(),
        MonitorRequest::columns(&["name", "external_ids"]),
    )]);
    let mut monitor = client.monitor(DB, &requests).await.unwrap();
    let initial = timeout(STEP, monitor.events.recv()).await.unwrap().unwrap();
    assert!(initial.reset);
    let Updates::V1(tables) = &initial.updates else {
        panic!("v1 expected")
    };
    let (uuid, change) = tables["Bridge"].iter().next().unwrap();
    assert_eq!(change.new.as_ref().unwrap()["name"], Value::from("br0"));
    assert!(!change.new.as_ref().unwrap().contains_key("datapath_type"));

    ovs.vsctl(&["set", "Bridge", "br0", "external_ids:k=v"])
        .unwrap();
    let event = timeout(STEP, monitor.events.recv()).await.unwrap().unwrap();
    assert!(!event.reset);
    let Updates::V1(tables) = &event.updates else {
        panic!("v1 expected")
    };
    let change = &tables["Bridge"][uuid];
    assert_eq!(
        change.new.as_ref().unwrap()["external_ids"].to_string_map()["k"],
        "v"
    );
    assert!(change.old.as_ref().unwrap().contains_key("external_ids"));

    ovs.vsctl(&["del-br", "br0"]).unwrap();
    let event = timeout(STEP, monitor.events.recv()).await.unwrap().unwrap();
    let Updates::V1(tables) = &event.updates else {
        panic!("v1 expected")
    };
    assert!(tables["Bridge"][uuid].new.is_none());

    client.monitor_cancel(&monitor).await.unwrap();
    assert!(
        timeout(STEP, monitor.events.recv())
            .await
            .unwrap()
            .is_none(),
        "stream ends after cancel"
    );
    // The server forgot it too: cancelling again is an RPC error.
    assert!(matches!(
        client.monitor_cancel(&monitor).await,
        Err(Error::Rpc { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_cond_update2_with_condition() {
    if !require_privileges("monitor_cond_update2_with_condition") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    ovs.vsctl(&[
        "add-br", "br0", "--", "add-port", "br0", "keep", "--", "add-port", "br0", "skip",
    ])
    .unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let requests = BTreeMap::from([(
        "Port".to_string(),
        MonitorRequest {
            conditions: Some(vec![Condition::eq("name", "keep")]),
            ..MonitorRequest::columns(&["name", "tag"])
        },
    )]);
    let mut monitor = client.monitor_cond(DB, &requests).await.unwrap();
    let initial = timeout(STEP, monitor.events.recv()).await.unwrap().unwrap();
    let Updates::V2(tables) = &initial.updates else {
        panic!("v2 expected")
    };
    assert_eq!(
        tables["Port"].len(),
        1,
        "only the row matching the condition"
    );
    let (uuid, change) = tables["Port"].iter().next().unwrap();
    assert!(matches!(change, RowUpdate2::Initial(r) if r["name"] == Value::from("keep")));

    ovs.vsctl(&["set", "Port", "skip", "tag=7"]).unwrap();
    ovs.vsctl(&["set", "Port", "keep", "tag=9"]).unwrap();
    let event = timeout(STEP, monitor.events.recv()).await.unwrap().unwrap();
    let Updates::V2(tables) = &event.updates else {
        panic!("v2 expected")
    };
    assert_eq!(tables["Port"].len(), 1);
    assert!(
        matches!(&tables["Port"][uuid], RowUpdate2::Modify(r) if r["tag"].as_integer() == Some(9))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_steal_and_notifications() {
    if !require_privileges("locks_steal_and_notifications") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let a = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let b = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let mut a_events = a.lock_events();
    let mut b_events = b.lock_events();
    assert!(a.lock("leader").await.unwrap());
    assert!(!b.lock("leader").await.unwrap(), "b must queue behind a");
    // a releases: b gets a `locked` notification.
    a.unlock("leader").await.unwrap();
    assert_eq!(
        timeout(STEP, b_events.recv()).await.unwrap().unwrap(),
        LockEvent::Locked("leader".into())
    );
    // a steals it back: b gets `stolen`.
    a.steal("leader").await.unwrap();
    assert_eq!(
        timeout(STEP, b_events.recv()).await.unwrap().unwrap(),
        LockEvent::Stolen("leader".into())
    );
    a.transact(
        DB,
        &[Operation::Assert {
            lock: "leader".into(),
        }],
    )
    .await
    .unwrap();
    assert!(matches!(
        b.transact(DB, &[Operation::Assert { lock: "leader".into() }]).await,
        Err(Error::Transaction(e)) if e.kind == OvsdbErrorKind::NotOwner
    ));
    assert!(
        a_events.try_recv().is_err(),
        "a got no notification of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_endpoint() {
    if !require_privileges("tcp_endpoint") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    ovs.appctl_ovsdb(&["ovsdb-server/add-remote", &format!("ptcp:{port}:127.0.0.1")])
        .unwrap();
    let endpoint = format!("tcp:127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + STEP;
    let client = loop {
        match Client::connect(&endpoint).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("TCP remote never came up: {e}"),
        }
    };
    assert!(client.list_dbs().await.unwrap().contains(&DB.to_string()));
    client
        .ensure_bridge(&switchyard_ovs::ovsdb::BridgeSpec::netdev("br-tcp"))
        .await
        .unwrap();
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), "br-tcp\n");
}

fn server_monitors(ovs: &OvsInstance) -> usize {
    let out = ovs.appctl_ovsdb(&["memory/show"]).unwrap();
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("monitors:"))
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_monitors_are_cancelled_on_the_server() {
    if !require_privileges("dropped_monitors_are_cancelled_on_the_server") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    assert_eq!(server_monitors(&ovs), 0);
    let requests = BTreeMap::from([("Bridge".to_string(), MonitorRequest::all())]);
    let monitor = client.monitor_cond(DB, &requests).await.unwrap();
    let requests = BTreeMap::from([("Interface".to_string(), MonitorRequest::all())]);
    let other = client.monitor(DB, &requests).await.unwrap();
    assert_eq!(server_monitors(&ovs), 2);
    drop(monitor);
    drop(other);
    // The next update to each finds no subscriber; the client cancels them.
    ovs.vsctl(&["add-br", "br0"]).unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while server_monitors(&ovs) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "monitors not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_all_clones() {
    if !require_privileges("close_ends_all_clones") {
        return;
    }
    let ovs = OvsInstance::builder().start().unwrap();
    let client = Client::connect(&ovs.db_endpoint()).await.unwrap();
    let other = client.clone();
    let requests = BTreeMap::from([("Bridge".to_string(), MonitorRequest::all())]);
    let mut monitor = client.monitor(DB, &requests).await.unwrap();
    assert!(monitor.events.recv().await.unwrap().reset);
    client.close();
    assert!(
        timeout(STEP, monitor.events.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(other.list_dbs().await, Err(Error::Closed)));
    assert!(!other.is_connected());
}
