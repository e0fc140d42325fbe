//! One connection: its pending requests, framing, handshake, the reader
//! that completes requests, and the supervisor that reconnects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use super::super::message::{Message, OFP13_VERSION, OFP15_VERSION};
use super::txn::{Outcome, TxMessage, Txn};
use super::{AsyncTx, Client, Error, Inner, SupervisorGuard};

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) tx: mpsc::UnboundedSender<Bytes>,
    /// Negotiated OpenFlow version ([`OFP15_VERSION`] or [`OFP13_VERSION`]).
    pub(super) version: u8,
    pub(super) pending: Mutex<BTreeMap<u32, Arc<Txn>>>,
    /// Wakes the supervisor to drop this connection and reconnect.
    pub(super) reset: tokio::sync::Notify,
}

impl Conn {
    pub(super) fn find(&self, xid: u32) -> Option<Arc<Txn>> {
        let p = lock(&self.pending);
        p.range(..=xid)
            .next_back()
            .filter(|(_, t)| xid.wrapping_sub(t.start) < t.count)
            .map(|(_, t)| t.clone())
    }
    pub(super) fn remove(&self, start: u32) {
        lock(&self.pending).remove(&start);
    }
    /// A request got no answer in time: what the switch did with it is
    /// unknown and the stream may be stuck, so the connection is dropped and
    /// re-established (callers resync on the new generation).
    pub(super) fn drop_after_timeout(&self, what: &str, after: Duration) {
        warn!(
            what,
            ?after,
            "OpenFlow request timed out; dropping the connection to reconnect"
        );
        self.reset.notify_one();
    }
    pub(super) fn fail_all(&self) {
        let all: Vec<Arc<Txn>> = std::mem::take(&mut *lock(&self.pending))
            .into_values()
            .collect();
        for t in all {
            t.complete(Outcome::Err(Error::Disconnected {
                what: format!("reply to xid {}", t.final_xid),
            }));
        }
    }
}

pub(super) type Frames = FramedRead<OwnedReadHalf, OpenFlowFrames>;

/// Splits the byte stream from the switch into OpenFlow messages by the
/// 16-bit length at offset 2 of each header, which counts the header itself.
/// A length below the 8-byte header is a framing error (the stream cannot be
/// resynchronised): the reader ends and the connection is dropped and
/// re-established, instead of yielding empty frames forever.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OpenFlowFrames;

/// Bytes of an OpenFlow header.
const HEADER_LEN: usize = 8;

impl Decoder for OpenFlowFrames {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([src[2], src[3]]));
        if len < HEADER_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "OpenFlow framing error: header says length {len}, below the {HEADER_LEN}-byte header (version {:#04x}, type {})",
                    src[0], src[1]
                ),
            ));
        }
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(len)))
    }
}

/// Connects, negotiates OpenFlow 1.5 (or 1.3), spawns the writer, installs the
/// connection and configures packet-ins. Returns the reader to run.
pub(super) async fn establish(inner: &Arc<Inner>) -> Result<Frames, Error> {
    let path = inner.cfg.path.clone();
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, OpenFlowFrames);
    let mut hello = BytesMut::new();
    encode_control(
        &Message::Hello((1 << OFP15_VERSION) | (1 << OFP13_VERSION)),
        OFP15_VERSION,
        0,
        &mut hello,
    )?;
    wr.write_all(&hello).await?;
    let deadline = inner.cfg.request_timeout.min(Duration::from_secs(10));
    let frame = tokio::time::timeout(deadline, frames.next())
        .await
        .map_err(|_| Error::Timeout {
            what: "HELLO".into(),
            after: deadline,
        })?
        .ok_or_else(|| Error::Protocol("connection closed before HELLO".into()))??;
    let (_, _, msg) = Message::decode(&frame)?;
    // The highest version both sides speak.
    let version = match msg {
        Message::Hello(bitmap) if bitmap & (1 << OFP15_VERSION) != 0 => OFP15_VERSION,
        Message::Hello(bitmap) if bitmap & (1 << OFP13_VERSION) != 0 => {
            warn!(
                path = %path.display(),
                "the bridge allows OpenFlow 1.3 but not 1.5: group mods, packet-out, meters, flow/group stats and bundles are unavailable"
            );
            OFP13_VERSION
        }
        Message::Hello(bitmap) => return Err(Error::Version { offered: bitmap }),
        other => {
            return Err(Error::Protocol(format!(
                "expected HELLO, got {}",
                other.kind()
            )));
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if let Err(e) = wr.write_all(&b).await {
                debug!(error = %e, "OpenFlow write failed");
                break;
            }
        }
    });
    let conn = Arc::new(Conn {
        tx,
        version,
        pending: Mutex::new(BTreeMap::new()),
        reset: tokio::sync::Notify::new(),
    });
    *lock(&inner.conn) = Some(conn.clone());
    // Run the reader while configuring async messages, then hand it back.
    let reader_conn = conn.clone();
    let pin_tx = inner.async_tx.clone();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return Ok(frames),
                f = frames.next() => match f {
                    Some(Ok(frame)) => handle_frame(&reader_conn, &pin_tx, &frame),
                    _ => return Err(Error::Disconnected { what: "connection setup".into() }),
                }
            }
        }
    });
    let client = Client {
        inner: inner.clone(),
        _supervisor: Arc::new(SupervisorGuard(Mutex::new(None))),
    };
    let setup = client
        .send(vec![
            TxMessage::new(
                Message::SetPacketInFormat(2),
                "set packet-in format NXT_PACKET_IN2",
            ),
            TxMessage::new(
                Message::SetAsync {
                    packet_in_mask: 0x3f,
                },
                "set async config (packet-in all reasons)",
            ),
        ])
        .await;
    let _ = stop_tx.send(());
    let frames = reader
        .await
        .map_err(|e| Error::Protocol(format!("reader task failed: {e}")))??;
    if let Err(e) = setup {
        *lock(&inner.conn) = None;
        return Err(e);
    }
    inner.state_tx.send_modify(|s| {
        s.generation += 1;
        s.connected = true;
    });
    info!(path = %inner.cfg.path.display(), generation = inner.state_tx.borrow().generation, version = if version == OFP15_VERSION { "1.5" } else { "1.3" }, "OpenFlow connection up");
    Ok(frames)
}

/// Encodes a control message of the client's own (hello, barrier, echo,
/// bundle control, multipart request): small and encodable in both versions,
/// so a failure is a bug reported as a protocol error, never a panic.
pub(super) fn encode_control(
    msg: &Message,
    version: u8,
    xid: u32,
    out: &mut BytesMut,
) -> Result<(), Error> {
    msg.encode_as(version, xid, out)
        .map_err(|e| Error::Protocol(format!("cannot encode {}: {e}", msg.kind())))
}

/// An echo request or reply in the connection's version.
fn echo_bytes(msg: Message, version: u8, xid: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    if let Err(e) = encode_control(&msg, version, xid, &mut b) {
        warn!(error = %e, "echo not sent");
    }
    b.to_vec()
}

fn handle_frame(conn: &Conn, pin_tx: &AsyncTx, frame: &[u8]) {
    let (_, xid, msg) = match Message::decode(frame) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "undecodable OpenFlow message");
            // Still complete a waiting transaction with the decode error.
            if frame.len() >= 8 {
                let xid = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                if let Some(t) = conn.find(xid).filter(|t| t.final_xid == xid) {
                    t.complete(Outcome::Err(Error::Decode(e)));
                }
            }
            return;
        }
    };
    match msg {
        Message::EchoRequest(d) => {
            let _ = conn.tx.send(Bytes::from(echo_bytes(
                Message::EchoReply(d),
                conn.version,
                xid,
            )));
        }
        Message::PacketIn(pi) => {
            let _ = pin_tx.packet_in.send(pi);
        }
        Message::PortStatus(ps) => {
            let _ = pin_tx.port_status.send(ps);
        }
        msg => {
            let Some(t) = conn.find(xid) else {
                debug!(xid, kind = msg.kind(), "unsolicited OpenFlow message");
                return;
            };
            let is_final = xid == t.final_xid;
            let mut st = lock(&t.state);
            match msg {
                Message::Error(e) if is_final => {
                    let o = Outcome::Done {
                        replies: std::mem::take(&mut st.replies),
                        errors: std::mem::take(&mut st.errors),
                        final_error: Some(e),
                    };
                    if let Some(tx) = st.done.take() {
                        let _ = tx.send(o);
                    }
                }
                Message::Error(e) => st.errors.push((xid, e)),
                Message::BarrierReply if Some(xid) == t.checkpoint_xid => {
                    let errors = st.errors.clone();
                    if let Some(tx) = st.checkpoint.take() {
                        let _ = tx.send(errors);
                    }
                }
                m if is_final => {
                    let more = matches!(m, Message::MultipartReply { more: true, .. });
                    st.replies.push(m);
                    if !more {
                        let o = Outcome::Done {
                            replies: std::mem::take(&mut st.replies),
                            errors: std::mem::take(&mut st.errors),
                            final_error: None,
                        };
                        if let Some(tx) = st.done.take() {
                            let _ = tx.send(o);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

pub(super) async fn supervise(inner: std::sync::Weak<Inner>, mut frames: Frames) {
    loop {
        // Read until the connection drops.
        {
            let Some(i) = inner.upgrade() else { return };
            let conn = lock(&i.conn).clone();
            let pin_tx = i.async_tx.clone();
            let probe = i.cfg.probe_interval;
            drop(i);
            let Some(conn) = conn else { return };
            let mut idle = 0u32;
            loop {
                // `None`: nothing from the switch for a probe interval.
                let wait = async {
                    match probe {
                        Some(p) => tokio::time::timeout(p, frames.next()).await.ok(),
                        None => Some(frames.next().await),
                    }
                };
                let next = tokio::select! {
                    () = conn.reset.notified() => break,
                    next = wait => next,
                };
                let next = match next {
                    Some(next) => next,
                    None if idle == 0 => {
                        idle = 1;
                        let probe =
                            echo_bytes(Message::EchoRequest(b"probe".to_vec()), conn.version, 0);
                        let _ = conn.tx.send(Bytes::from(probe));
                        continue;
                    }
                    None => {
                        warn!(
                            "ovs-vswitchd did not answer an echo request; dropping the connection"
                        );
                        break;
                    }
                };
                let frame = match next {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        warn!(error = %e, "unreadable OpenFlow stream; dropping the connection");
                        break;
                    }
                    None => break,
                };
                idle = 0;
                handle_frame(&conn, &pin_tx, &frame);
            }
            let Some(i) = inner.upgrade() else { return };
            *lock(&i.conn) = None;
            conn.fail_all();
            i.state_tx.send_modify(|s| s.connected = false);
            warn!(path = %i.cfg.path.display(), "OpenFlow connection lost; reconnecting");
        }
        // Reconnect with exponential backoff.
        let mut delay;
        {
            let Some(i) = inner.upgrade() else { return };
            delay = i.cfg.min_backoff;
        }
        loop {
            tokio::time::sleep(delay).await;
            let Some(i) = inner.upgrade() else { return };
            match establish(&i).await {
                Ok(f) => {
                    frames = f;
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "OpenFlow reconnect failed");
                    delay = (delay * 2).min(i.cfg.max_backoff);
                }
            }
        }
    }
}
