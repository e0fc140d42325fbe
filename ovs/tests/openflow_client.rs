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
    s.write_all(&m.to_bytes(xid)).await.unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("br.mgmt");
    let l = UnixListener::bind(&path).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("br.mgmt");
    let l = UnixListener::bind(&path).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("br.mgmt");
    let l = UnixListener::bind(&path).unwrap();
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
