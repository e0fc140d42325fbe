//! Local adapter: the OpenFlow connection to `<rundir>/<bridge>.mgmt`.
//!
//! It uses the message types and their encoders/decoders from
//! `switchyard_ovs::openflow` and does only the connection work itself:
//! framing, HELLO, pipelined transactions matched to replies by xid, echo
//! replies, reconnect with
//! a published generation. It exists because the shared
//! `switchyard_ovs::openflow::Client` (still being finished) cut every frame
//! 4 bytes short when this was written (its `LengthDelimitedCodec` uses
//! `length_adjustment(-4)` with `num_skip(0)`, so the first HELLO fails to
//! decode: "bad length in OpenFlow message: 16"). The API mirrors that
//! client's (`bundle_flow_mods`, `flow_mod`, `dump_flows`, `state`,
//! `connection_events`), so switching back is a type change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard_ovs::openflow::{
    BundleCtrlType, ConnectionEvent, FlowMod, FlowStats, FlowStatsRequest, Message, MultipartReply,
    MultipartRequest, OFP15_VERSION, OfpError, bundle_flags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, watch};

/// Time limit of one transaction.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Delay between reconnect attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Why an OpenFlow operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OfError {
    /// Cannot connect.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No connection right now.
    #[error("not connected to ovs-vswitchd")]
    NotConnected,
    /// I/O on the connection.
    #[error("OpenFlow connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The switch rejected a message.
    #[error("switch rejected {desc}: {error}")]
    Rejected {
        /// The rejected message (ovs-ofctl syntax).
        desc: String,
        /// The OpenFlow error.
        error: OfpError,
    },
    /// No reply in time.
    #[error("no reply to {0} within {REQUEST_TIMEOUT:?}")]
    Timeout(String),
    /// Unexpected message or version.
    #[error("OpenFlow protocol error: {0}")]
    Protocol(String),
}

/// A transaction waiting for its replies: xids `start..start+count`, done
/// when `final_xid` is answered (the last part of a multipart reply).
#[derive(Debug)]
struct Pending {
    count: u32,
    final_xid: u32,
    replies: Vec<(u32, Message)>,
    done: Option<tokio::sync::oneshot::Sender<Vec<(u32, Message)>>>,
}

type PendingMap = Arc<std::sync::Mutex<std::collections::BTreeMap<u32, Pending>>>;

#[derive(Debug, Clone)]
struct Conn {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pending: PendingMap,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Option<Conn>>,
    state: watch::Sender<ConnectionEvent>,
    next_xid: AtomicU32,
    next_bundle: AtomicU32,
}

/// An OpenFlow 1.5 connection to one bridge. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OfConn {
    inner: Arc<Inner>,
}

async fn read_frame(rd: &mut OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 8];
    rd.read_exact(&mut header).await?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if len < 8 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("OpenFlow message length {len} < 8"),
        ));
    }
    let mut frame = vec![0u8; len];
    frame[..8].copy_from_slice(&header);
    rd.read_exact(&mut frame[8..]).await?;
    Ok(frame)
}

async fn handshake(path: &Path) -> Result<(OwnedReadHalf, OwnedWriteHalf), OfError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| OfError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&Message::Hello(1 << OFP15_VERSION).to_bytes(0))
        .await?;
    let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut rd))
        .await
        .map_err(|_| OfError::Timeout("HELLO".into()))??;
    match Message::decode(&frame) {
        Ok((_, _, Message::Hello(bitmap))) if bitmap & (1 << OFP15_VERSION) != 0 => Ok((rd, wr)),
        Ok((_, _, other)) => Err(OfError::Protocol(format!(
            "expected HELLO offering OpenFlow 1.5, got {other:?} (set the bridge's protocols to include OpenFlow15)"
        ))),
        Err(e) => Err(OfError::Protocol(format!("decoding HELLO: {e}"))),
    }
}

/// Reads frames until the connection ends; answers echo requests, hands
/// every other message to the transaction its xid belongs to.
async fn reader(mut rd: OwnedReadHalf, writer: Arc<Mutex<OwnedWriteHalf>>, pending: PendingMap) {
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "OpenFlow connection ended");
                // Dropping the senders fails every waiting transaction.
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return;
            }
        };
        match Message::decode(&frame) {
            Ok((_, xid, Message::EchoRequest(data))) => {
                let reply = Message::EchoReply(data).to_bytes(xid);
                if writer.lock().await.write_all(&reply).await.is_err() {
                    return;
                }
            }
            Ok((_, xid, msg)) => {
                let mut map = pending.lock().unwrap_or_else(|p| p.into_inner());
                let owner = map
                    .range(..=xid)
                    .next_back()
                    .filter(|(start, p)| xid.wrapping_sub(**start) < p.count)
                    .map(|(start, _)| *start);
                let Some(start) = owner else {
                    continue; // a late reply to a timed-out transaction
                };
                let done = {
                    let Some(p) = map.get_mut(&start) else {
                        continue;
                    };
                    let last = xid == p.final_xid
                        && !matches!(msg, Message::MultipartReply { more: true, .. });
                    p.replies.push((xid, msg));
                    last
                };
                if done
                    && let Some(mut p) = map.remove(&start)
                    && let Some(tx) = p.done.take()
                {
                    let _ = tx.send(std::mem::take(&mut p.replies));
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable OpenFlow message ignored"),
        }
    }
}

impl OfConn {
    /// Connects to `<rundir>/<bridge>.mgmt` (the first attempt must
    /// succeed); reconnects in the background whenever it drops.
    pub async fn connect_bridge(rundir: &Path, bridge: &str) -> Result<OfConn, OfError> {
        let path = rundir.join(format!("{bridge}.mgmt"));
        let (state, _) = watch::channel(ConnectionEvent {
            generation: 0,
            connected: false,
        });
        let inner = Arc::new(Inner {
            path,
            conn: Mutex::new(None),
            state,
            next_xid: AtomicU32::new(1),
            next_bundle: AtomicU32::new(1),
        });
        let (rd, wr) = handshake(&inner.path).await?;
        let ended = install(&inner, rd, wr).await;
        tokio::spawn(supervise(Arc::downgrade(&inner), ended));
        Ok(OfConn { inner })
    }

    /// Connection state; `generation` grows by one per (re)connection.
    pub fn state(&self) -> ConnectionEvent {
        *self.inner.state.borrow()
    }

    /// Watches the connection state.
    pub fn connection_events(&self) -> watch::Receiver<ConnectionEvent> {
        self.inner.state.subscribe()
    }

    fn xids(&self, n: u32) -> u32 {
        self.inner.next_xid.fetch_add(n, Ordering::Relaxed)
    }

    /// Sends `msgs` (with descriptions) followed by `last`; collects every
    /// reply whose xid is in the batch until `last` is answered. Several
    /// transactions may be in flight at once.
    async fn transact(
        &self,
        msgs: Vec<(Message, String)>,
        last: Message,
        what: &str,
    ) -> Result<Vec<Message>, OfError> {
        let conn = self
            .inner
            .conn
            .lock()
            .await
            .clone()
            .ok_or(OfError::NotConnected)?;
        let n = u32::try_from(msgs.len() + 1).unwrap_or(u32::MAX);
        let start = self.xids(n);
        let final_xid = start.wrapping_add(n - 1);
        let mut buf = Vec::new();
        for (i, (m, _)) in msgs.iter().enumerate() {
            buf.extend(m.to_bytes(start.wrapping_add(u32::try_from(i).unwrap_or(0))));
        }
        buf.extend(last.to_bytes(final_xid));
        let (tx, rx) = tokio::sync::oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                start,
                Pending {
                    count: n,
                    final_xid,
                    replies: Vec::new(),
                    done: Some(tx),
                },
            );
        let forget = || {
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&start);
        };
        if let Err(e) = conn.writer.lock().await.write_all(&buf).await {
            forget();
            return Err(e.into());
        }
        let replies = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => {
                forget();
                return Err(OfError::Timeout(what.to_string()));
            }
            Ok(Err(_)) => return Err(OfError::NotConnected),
            Ok(Ok(replies)) => replies,
        };
        for (xid, msg) in &replies {
            if let Message::Error(error) = msg {
                let offset = xid.wrapping_sub(start) as usize;
                let desc = msgs
                    .get(offset)
                    .map_or_else(|| what.to_string(), |(_, d)| d.clone());
                return Err(OfError::Rejected {
                    desc,
                    error: error.clone(),
                });
            }
        }
        Ok(replies.into_iter().map(|(_, m)| m).collect())
    }

    /// Applies flow mods atomically and in order in one bundle.
    pub async fn bundle_flow_mods(&self, fms: Vec<FlowMod>) -> Result<(), OfError> {
        let bundle_id = self.inner.next_bundle.fetch_add(1, Ordering::Relaxed);
        let flags = bundle_flags::ATOMIC | bundle_flags::ORDERED;
        let mut msgs = vec![(
            Message::BundleControl {
                bundle_id,
                ctrl: BundleCtrlType::OpenRequest,
                flags,
            },
            format!("open bundle {bundle_id}"),
        )];
        for fm in fms {
            let desc = fm.to_string();
            msgs.push((
                Message::BundleAdd {
                    bundle_id,
                    flags,
                    inner: Box::new(Message::FlowMod(fm)),
                },
                desc,
            ));
        }
        let commit = Message::BundleControl {
            bundle_id,
            ctrl: BundleCtrlType::CommitRequest,
            flags,
        };
        let replies = self
            .transact(msgs, commit, &format!("commit of bundle {bundle_id}"))
            .await?;
        match replies.last() {
            Some(Message::BundleControl {
                ctrl: BundleCtrlType::CommitReply,
                ..
            }) => Ok(()),
            other => Err(OfError::Protocol(format!(
                "expected bundle commit reply, got {other:?}"
            ))),
        }
    }

    /// One flow mod, confirmed by a barrier.
    pub async fn flow_mod(&self, fm: FlowMod) -> Result<(), OfError> {
        let desc = fm.to_string();
        self.transact(
            vec![(Message::FlowMod(fm), desc)],
            Message::BarrierRequest,
            "barrier",
        )
        .await
        .map(|_| ())
    }

    /// Flow statistics for the flows `req` selects.
    pub async fn dump_flows(&self, req: FlowStatsRequest) -> Result<Vec<FlowStats>, OfError> {
        let replies = self
            .transact(
                Vec::new(),
                Message::MultipartRequest(MultipartRequest::Flow(req)),
                "flow stats request",
            )
            .await?;
        let mut out = Vec::new();
        for r in replies {
            if let Message::MultipartReply {
                body: MultipartReply::Flow(stats),
                ..
            } = r
            {
                out.extend(stats);
            }
        }
        Ok(out)
    }
}

/// Installs a fresh connection; returns a receiver that fires when its
/// reader ends.
async fn install(
    inner: &Arc<Inner>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
) -> tokio::sync::oneshot::Receiver<()> {
    let writer = Arc::new(Mutex::new(wr));
    let pending: PendingMap = Arc::default();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let (w, p) = (writer.clone(), pending.clone());
    tokio::spawn(async move {
        reader(rd, w, p).await;
        let _ = ended_tx.send(());
    });
    *inner.conn.lock().await = Some(Conn { writer, pending });
    inner.state.send_modify(|s| {
        s.generation += 1;
        s.connected = true;
    });
    ended_rx
}

async fn supervise(inner: std::sync::Weak<Inner>, mut ended: tokio::sync::oneshot::Receiver<()>) {
    loop {
        let _ = (&mut ended).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        *strong.conn.lock().await = None;
        strong.state.send_modify(|s| s.connected = false);
        tracing::warn!(socket = %strong.path.display(), "OpenFlow connection lost; reconnecting");
        drop(strong);
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match handshake(&strong.path).await {
                Ok((rd, wr)) => {
                    ended = install(&strong, rd, wr).await;
                    tracing::info!(
                        generation = strong.state.borrow().generation,
                        "OpenFlow reconnected"
                    );
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "OpenFlow reconnect failed"),
            }
        }
    }
}
