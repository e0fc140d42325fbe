//! Client behaviour against a scripted fake switch on a Unix socket (no OVS
//! needed): version negotiation, echo answered by the client, requests in
//! flight failing when the connection drops, reconnection reported through
//! the generation channel.

use std::time::Duration;

use switchyard_ovs::openflow::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

async fn read_msg(s: &mut UnixStream) -> Option<(u32, Message)> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.ok()?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let mut buf = h.to_vec();
    buf.resize(len, 0);
    s.read_exact(&mut buf[8..]).await.ok()?;
    let (_, xid, m) = Message::decode(&buf).unwrap();
    Some((xid, m))
}

async fn send(s: &mut UnixStream, xid: u32, m: Message) {
    s.write_all(&m.to_bytes(xid).unwrap()).await.unwrap();
}

/// A listening socket for a fake switch, in a directory removed on drop.
fn fake_switch_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("br.mgmt");
    let l = UnixListener::bind(&path).unwrap();
    (dir, path, l)
}

/// Client settings without echo probes (the fake switch answers none).
fn without_probes(path: &std::path::Path) -> ClientConfig {
    let mut cfg = ClientConfig::new(path);
    cfg.probe_interval = None;
    cfg
}

/// Accepts one connection and does what an OVS bridge does up to the
/// client's setup barrier; returns the stream.
async fn accept_and_setup(l: &UnixListener, versions: u32) -> UnixStream {
    let (mut s, _) = l.accept().await.unwrap();
    let (_, hello) = read_msg(&mut s).await.unwrap();
    assert!(matches!(hello, Message::Hello(b) if b & (1 << 6) != 0));
    send(&mut s, 1, Message::Hello(versions)).await;
    if versions & (1 << 6) == 0 {
        return s;
    }
    // Set packet-in format, set async, barrier.
    loop {
        let (xid, m) = read_msg(&mut s).await.unwrap();
        if m == Message::BarrierRequest {
            send(&mut s, xid, Message::BarrierReply).await;
            return s;
        }
    }
}

#[tokio::test]
async fn refuses_a_switch_without_openflow15_or_13() {
    let (_dir, path, l) = fake_switch_socket();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // OpenFlow 1.0 only (a 1.3-only switch is served: see openflow_ovs).
        let _s = accept_and_setup(&l, 1 << 1).await;
        let _ = done_rx.await;
    });
    let err = Client::connect(ClientConfig::new(&path)).await.unwrap_err();
    assert!(matches!(err, Error::Version { offered: 0x2 }), "{err}");
    assert!(
        err.to_string().contains("OpenFlow 1.5 or 1.3 required"),
        "{err}"
    );
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn connect_error_names_the_socket() {
    let err = Client::connect(ClientConfig::new("/nonexistent/br-int.mgmt"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/br-int.mgmt"),
        "{err}"
    );
}

#[tokio::test]
async fn answers_echo_fails_in_flight_requests_and_reconnects() {
    let (_dir, path, l) = fake_switch_socket();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut s = accept_and_setup(&l, 1 << 6).await;
        // The switch probes the client.
        send(&mut s, 0x77, Message::EchoRequest(b"ping".to_vec())).await;
        let (xid, m) = read_msg(&mut s).await.unwrap();
        assert_eq!((xid, m), (0x77, Message::EchoReply(b"ping".to_vec())));
        // An errored flow_mod: the error names its xid.
        let (fm_xid, m) = read_msg(&mut s).await.unwrap();
        assert!(matches!(m, Message::FlowMod(_)));
        let (b_xid, m) = read_msg(&mut s).await.unwrap();
        assert_eq!(m, Message::BarrierRequest);
        send(
            &mut s,
            fm_xid,
            Message::Error(OfpError {
                err_type: 5,
                code: 6,
                experimenter: None,
                data: Vec::new(),
            }),
        )
        .await;
        send(&mut s, b_xid, Message::BarrierReply).await;
        // Next request: drop the connection while it is in flight.
        let _ = read_msg(&mut s).await.unwrap();
        drop(s);
        // Second connection.
        let _s2 = accept_and_setup(&l, 1 << 6).await;
        let _ = done_rx.await;
    });
    let c = Client::connect(ClientConfig::new(&path)).await.unwrap();
    assert_eq!(
        c.state(),
        ConnectionEvent {
            generation: 1,
            connected: true
        }
    );
    let flow = Flow::new(0, 1).action(Action::Output(port::NORMAL));
    let err = c.flow_mod(FlowMod::add(flow.clone())).await.unwrap_err();
    match &err {
        Error::Rejected {
            kind, desc, error, ..
        } => {
            assert_eq!(*kind, "FLOW_MOD");
            assert_eq!(desc, &format!("add {flow}"));
            assert_eq!(error.name(), "OFPFMFC_BAD_COMMAND");
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string()
            .contains("table=0,priority=1 actions=NORMAL"),
        "{err}"
    );
    let err = c.barrier().await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let generation = c.wait_connected(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(generation, 2);
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn drops_a_switch_that_stops_answering_echo_and_reconnects() {
    let (_dir, path, l) = fake_switch_socket();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut s = accept_and_setup(&l, 1 << 6).await;
        // Hung switch: reads the probe, never answers.
        let (_, m) = read_msg(&mut s).await.unwrap();
        assert!(matches!(m, Message::EchoRequest(_)));
        let _s2 = accept_and_setup(&l, 1 << 6).await;
        let _ = done_rx.await;
        drop(s);
    });
    let mut cfg = ClientConfig::new(&path);
    cfg.probe_interval = Some(Duration::from_millis(200));
    let c = Client::connect(cfg).await.unwrap();
    let generation = c.wait_connected(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(generation, 2);
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn a_header_shorter_than_eight_bytes_is_a_framing_error_and_reconnects() {
    // Before: the length-delimited reader yielded empty frames forever on a
    // length of 0 and the client spun at 100% CPU on a dead stream.
    let (_dir, path, l) = fake_switch_socket();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut s = accept_and_setup(&l, 1 << 6).await;
        // The answer to the client's barrier: version 0, type 0, length 0.
        let (_, m) = read_msg(&mut s).await.unwrap();
        assert_eq!(m, Message::BarrierRequest);
        s.write_all(&[0, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
        let _s2 = accept_and_setup(&l, 1 << 6).await;
        let _ = done_rx.await;
        drop(s);
    });
    let c = Client::connect(without_probes(&path)).await.unwrap();
    let err = c.barrier().await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    let generation = c.wait_connected(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(generation, 2);
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn a_request_that_times_out_drops_the_connection_and_reconnects() {
    // A request without an answer leaves its outcome unknown and the stream
    // possibly stuck: the client reconnects, and callers see the new
    // generation (the proxy then reinstalls everything).
    let (_dir, path, l) = fake_switch_socket();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut s = accept_and_setup(&l, 1 << 6).await;
        // Reads the barrier, never answers it (keeps reading).
        let (_, m) = read_msg(&mut s).await.unwrap();
        assert_eq!(m, Message::BarrierRequest);
        let mut s2 = accept_and_setup(&l, 1 << 6).await;
        // The second connection answers.
        let (xid, m) = read_msg(&mut s2).await.unwrap();
        assert_eq!(m, Message::BarrierRequest);
        send(&mut s2, xid, Message::BarrierReply).await;
        let _ = done_rx.await;
        drop(s);
    });
    let mut cfg = without_probes(&path);
    cfg.request_timeout = Duration::from_millis(300);
    let c = Client::connect(cfg).await.unwrap();
    let err = c.barrier().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let generation = c.wait_connected(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(generation, 2);
    c.barrier().await.unwrap();
    let _ = done_tx.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn a_message_over_64k_is_refused_before_anything_of_its_batch_is_sent() {
    // Before: the 16-bit length fields saturated, the switch read garbage
    // ("received OpenFlow version 0x00") and the stream was corrupted.
    let (_dir, path, l) = fake_switch_socket();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<Message>>();
    let server = tokio::spawn(async move {
        let mut s = accept_and_setup(&l, 1 << 6).await;
        // Everything up to the barrier of the next request that is sent.
        let mut seen = Vec::new();
        loop {
            let (xid, m) = read_msg(&mut s).await.unwrap();
            if m == Message::BarrierRequest {
                send(&mut s, xid, Message::BarrierReply).await;
                break;
            }
            seen.push(m);
        }
        let _ = seen_tx.send(seen);
    });
    let c = Client::connect(without_probes(&path)).await.unwrap();
    let big = big_group(5_000);
    let small = FlowMod::add(Flow::new(0, 1).action(Action::Output(port::NORMAL)));
    let err = c
        .send(vec![small.clone().into(), GroupMod::add(big).into()])
        .await
        .unwrap_err();
    match &err {
        Error::Encode {
            index,
            source: EncodeError::TooLong { kind, len },
            ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(*kind, "GROUP_MOD");
            assert!(*len > MAX_MESSAGE_LEN, "{len}");
        }
        other => panic!("{other}"),
    }
    // The connection is intact: the next request is the first thing sent.
    c.barrier().await.unwrap();
    assert_eq!(seen_rx.await.unwrap(), Vec::<Message>::new());
    server.await.unwrap();
}

/// A select group with `n` DNAT buckets, as the proxy builds them.
fn big_group(n: u32) -> Group {
    Group::select(
        7,
        (0..n)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                (
                    100,
                    vec![Action::Ct(Ct {
                        commit: true,
                        zone: CtZone::Immediate(1),
                        table: Some(1),
                        nat: Some(Nat::dst(ip.into(), Some(8080))),
                        ..Ct::default()
                    })],
                )
            })
            .collect(),
    )
}
