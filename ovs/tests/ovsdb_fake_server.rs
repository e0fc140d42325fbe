//! The client against a tiny fake OVSDB server on a Unix socket: malformed
//! replies give errors (never a panic), the server's echo is answered,
//! replies split or batched on the wire are matched to their requests.
//! Runs unprivileged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use switchyard_ovs::ovsdb::{
    Client, ClientConfig, ConnectionEvent, Endpoint, Error, JsonCodec, MonitorRequest, Operation,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const STEP: Duration = Duration::from_secs(10);

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Fake {
            _dir: dir,
            path,
            listener,
        }
    }

    fn config(&self, max_message_size: usize) -> ClientConfig {
        let mut config = ClientConfig::new(Endpoint::Unix(self.path.clone()));
        config.reconnect = false;
        config.max_message_size = max_message_size;
        config
    }

    /// Connects a client and returns the server side of the connection.
    async fn connect(&self, max_message_size: usize) -> (Client, Framed<UnixStream, JsonCodec>) {
        let (client, accepted) = tokio::join!(
            Client::connect_with(self.config(max_message_size)),
            self.listener.accept()
        );
        let (stream, _) = accepted.unwrap();
        (client.unwrap(), Framed::new(stream, JsonCodec::default()))
    }
}

async fn next_request(server: &mut Framed<UnixStream, JsonCodec>) -> Json {
    timeout(STEP, server.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// Runs `call` on the client while the server answers its request with `reply(id)`.
async fn reply_with<T: std::fmt::Debug>(
    fake: &Fake,
    call: impl AsyncFnOnce(Client) -> T,
    reply: impl FnOnce(&Json) -> Json,
) -> T {
    let (client, mut server) = fake.connect(1 << 20).await;
    let server_side = async {
        let request = next_request(&mut server).await;
        server.send(reply(&request["id"])).await.unwrap();
        server
    };
    let (result, _server) = tokio::join!(timeout(STEP, call(client)), server_side);
    result.unwrap()
}

#[tokio::test]
async fn malformed_replies_are_errors() {
    let fake = Fake::new();
    let r = reply_with(
        &fake,
        async |c| c.list_dbs().await,
        |id| json!({"id": id, "result": {"x": 1}, "error": null}),
    )
    .await;
    assert!(
        matches!(r, Err(Error::MalformedReply { ref method, .. }) if method == "list_dbs"),
        "{r:?}"
    );

    let r = reply_with(&fake, async |c| c.list_dbs().await, |id| json!({"id": id})).await;
    assert!(matches!(r, Err(Error::MalformedReply { .. })), "{r:?}");

    let r = reply_with(
        &fake,
        async |c| c.get_schema("Open_vSwitch").await,
        |id| json!({"id": id, "result": {"tables": 5}, "error": null}),
    )
    .await;
    assert!(matches!(r, Err(Error::MalformedReply { .. })), "{r:?}");

    let op = [Operation::select("Port", vec![])];
    for bad in [
        json!({"rows": 1}),
        json!([{"rows": [{"name": {"bad": "datum"}}]}]),
        json!([{"uuid": ["uuid", "not-a-uuid"]}]),
        json!([]),
        json!([{"error": 17}]),
    ] {
        let op = op.clone();
        let r = reply_with(
            &fake,
            async move |c| c.transact("Open_vSwitch", &op).await,
            |id| json!({"id": id, "result": bad, "error": null}),
        )
        .await;
        assert!(matches!(r, Err(Error::MalformedReply { .. })), "{r:?}");
    }

    let r = reply_with(
        &fake,
        async |c| c.lock("l").await,
        |id| json!({"id": id, "result": {"locked": "yes"}, "error": null}),
    )
    .await;
    assert!(matches!(r, Err(Error::MalformedReply { .. })), "{r:?}");

    let requests = BTreeMap::from([("Port".to_string(), MonitorRequest::all())]);
    let r = reply_with(
        &fake,
        async move |c| c.monitor_cond("Open_vSwitch", &requests).await.map(|_| ()),
        |id| json!({"id": id, "result": {"Port": {"nope": {"insert": {}}}}, "error": null}),
    )
    .await;
    assert!(matches!(r, Err(Error::MalformedReply { .. })), "{r:?}");

    // A JSON-RPC error with a non-standard shape still becomes a typed error.
    let r = reply_with(
        &fake,
        async |c| c.list_dbs().await,
        |id| json!({"id": id, "result": null, "error": 42}),
    )
    .await;
    assert!(
        matches!(r, Err(Error::Rpc { ref error, .. }) if error == "42"),
        "{r:?}"
    );
}

#[tokio::test]
async fn garbage_on_the_wire_drops_the_connection_with_an_error() {
    let fake = Fake::new();
    for (garbage, reason_part) in [
        (&b"this is not json"[..], "unexpected byte"),
        (b"{\"id\": 0, \"result\": [tru]}", "invalid JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (b"{\"hello\": 1}", "neither request nor reply"),
        (
            b"{\"method\": \"update2\", \"params\": [\"m\"], \"id\": null}",
            "without [id, updates]",
        ),
    ] {
        let (client, mut server) = fake.connect(1 << 20).await;
        let mut events = client.connection_events();
        let pending = tokio::spawn({
            let client = client.clone();
            async move { client.list_dbs().await }
        });
        next_request(&mut server).await;
        server.get_mut().write_all(garbage).await.unwrap();
        match timeout(STEP, pending).await.unwrap().unwrap() {
            Err(Error::Disconnected { reason, .. }) => {
                assert!(
                    reason.contains(reason_part),
                    "{reason:?} lacks {reason_part:?}"
                )
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert!(matches!(
            timeout(STEP, events.recv()).await.unwrap().unwrap(),
            ConnectionEvent::Disconnected { .. }
        ));
    }
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let fake = Fake::new();
    let (client, mut server) = fake.connect(64).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.list_dbs().await }
    });
    let request = next_request(&mut server).await;
    let big: Vec<String> = (0..100).map(|i| format!("db{i}")).collect();
    server
        .send(json!({"id": request["id"], "result": big, "error": null}))
        .await
        .unwrap();
    match timeout(STEP, pending).await.unwrap().unwrap() {
        Err(Error::Disconnected { reason, .. }) => {
            assert!(reason.contains("size limit of 64"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_batched_and_split_replies() {
    let fake = Fake::new();
    let (client, mut server) = fake.connect(1 << 20).await;

    // The server's echo is answered with the same params and id.
    server
        .send(json!({"method": "echo", "params": ["x", {"y": 1}], "id": "e1"}))
        .await
        .unwrap();
    let reply = next_request(&mut server).await;
    assert_eq!(
        reply,
        json!({"id": "e1", "result": ["x", {"y": 1}], "error": null})
    );

    // Three requests at once; replies out of order, two in one write, the
    // third split in two writes, plus a reply to an unknown id (ignored).
    let calls = tokio::spawn({
        let client = client.clone();
        async move {
            tokio::join!(
                client.list_dbs(),
                client.request("get_schema", json!(["A"])),
                client.request("echo", json!(["z"])),
            )
        }
    });
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = next_request(&mut server).await;
        ids.push((r["method"].as_str().unwrap().to_string(), r["id"].clone()));
    }
    let id_of = |m: &str| {
        ids.iter()
            .find(|(method, _)| method == m)
            .unwrap()
            .1
            .clone()
    };
    let both = format!(
        "{}\n{}",
        json!({"id": 999_999, "result": [], "error": null}),
        json!({"id": id_of("echo"), "result": ["z \"}\\"], "error": null})
    ) + &json!({"id": id_of("list_dbs"), "result": ["Open_vSwitch"], "error": null})
        .to_string();
    server.get_mut().write_all(both.as_bytes()).await.unwrap();
    let split =
        json!({"id": id_of("get_schema"), "result": {"name": "A\"}"}, "error": null}).to_string();
    let (a, b) = split.split_at(split.len() / 2);
    server.get_mut().write_all(a.as_bytes()).await.unwrap();
    server.get_mut().flush().await.unwrap();
    tokio::task::yield_now().await;
    server.get_mut().write_all(b.as_bytes()).await.unwrap();
    let (dbs, schema, echo) = timeout(STEP, calls).await.unwrap().unwrap();
    assert_eq!(dbs.unwrap(), vec!["Open_vSwitch".to_string()]);
    assert_eq!(schema.unwrap(), json!({"name": "A\"}"}));
    assert_eq!(echo.unwrap(), json!(["z \"}\\"]));
    assert!(client.is_connected());
}

#[tokio::test]
async fn server_closing_fails_pending_requests() {
    let fake = Fake::new();
    let (client, mut server) = fake.connect(1 << 20).await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.transact("Open_vSwitch", &[Operation::Abort]).await }
    });
    next_request(&mut server).await;
    drop(server);
    assert!(matches!(
        timeout(STEP, pending).await.unwrap().unwrap(),
        Err(Error::Disconnected { .. })
    ));
    assert!(matches!(client.list_dbs().await, Err(Error::Closed)));
}

#[tokio::test]
async fn inactivity_probe_detects_a_silent_server() {
    let fake = Fake::new();
    let mut config = fake.config(1 << 20);
    config.inactivity_probe = Some(Duration::from_millis(100));
    let (client, accepted) = tokio::join!(Client::connect_with(config), fake.listener.accept());
    let client = client.unwrap();
    let (stream, _) = accepted.unwrap();
    let mut server = Framed::new(stream, JsonCodec::default());
    let mut events = client.connection_events();
    // The client probes with an echo; this server never answers.
    let probe = next_request(&mut server).await;
    assert_eq!(probe["method"], "echo");
    match timeout(STEP, events.recv()).await.unwrap().unwrap() {
        ConnectionEvent::Disconnected { reason, .. } => {
            assert!(reason.contains("inactivity probe"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix:{}", dir.path().join("absent.sock").display());
    match Client::connect(&endpoint).await {
        Err(Error::Connect { endpoint: e, .. }) => assert_eq!(e, endpoint),
        other => panic!("expected Connect error, got {other:?}"),
    }
    assert!(matches!(
        Client::connect("bogus").await,
        Err(Error::InvalidEndpoint(_))
    ));
}
