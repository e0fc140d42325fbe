//! The connection to ovs-vswitchd: handshake, request/reply correlation,
//! bundles, packet-in delivery and reconnection.
//!
//! Reads are framed by [`OpenFlowFrames`] (the 16-bit length at offset 2 of
//! the header, which counts the header; a length below 8 drops the
//! connection). Writes never truncate a length: a message over 65,535 bytes
//! is refused before anything of its batch is sent ([`Error::Encode`]).
//! A request that times out drops the connection too: its outcome is unknown
//! and the stream may be stuck, so the client reconnects and the new
//! connection generation ([`Client::connection_events`]) tells callers to
//! reinstall their state.
//! Writes go through a per-connection writer task so that a large batch
//! (100k bundle adds) streams while the reader keeps draining replies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use super::flow::{Flow, FlowMod, FlowStats, FlowStatsRequest};
use super::group::{Group, GroupMod, GroupStats};
use super::message::{
    BundleCtrlType, EncodeError, Message, MeterMod, MultipartReply, MultipartRequest,
    OFP13_VERSION, OFP15_VERSION, OfpError, PacketIn, PacketOut, TlvMap, TlvTableCommand,
    bundle_flags,
};
use super::wire::DecodeError;

/// Errors of the OpenFlow client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to the management socket.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// I/O error on an established connection.
    #[error("OpenFlow connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The switch speaks neither OpenFlow 1.5 nor 1.3.
    #[error(
        "switch offers OpenFlow versions bitmap {offered:#x}, OpenFlow 1.5 or 1.3 required (set the bridge's protocols to include OpenFlow15)"
    )]
    Version {
        /// Version bitmap from the switch's HELLO.
        offered: u32,
    },
    /// The connection speaks OpenFlow 1.3 (the bridge's `protocols` allow
    /// no 1.5) and this message has no 1.3 form in this client; nothing was
    /// sent. See [`Message::encodable_as`].
    #[error(
        "{kind} is not supported on an OpenFlow 1.3 connection (group mods, packet-out, meters, flow/group stats and bundles need OpenFlow 1.5: set the bridge's protocols to include OpenFlow15)"
    )]
    UnsupportedOn13 {
        /// The message type.
        kind: &'static str,
    },
    /// No connection right now (ovs-vswitchd down, reconnecting).
    #[error("not connected to ovs-vswitchd")]
    NotConnected,
    /// The connection dropped while the request was in flight.
    #[error("connection lost while waiting for {what}")]
    Disconnected {
        /// What was being waited for.
        what: String,
    },
    /// No answer in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The time limit.
        after: Duration,
    },
    /// The switch rejected a request.
    #[error("switch rejected {kind} xid={xid} ({desc}): {error}{more}", more = if *others > 0 { format!(" (and {others} more rejected)") } else { String::new() })]
    Rejected {
        /// xid of the rejected message.
        xid: u32,
        /// Message type.
        kind: &'static str,
        /// The caller's description of the message (e.g. the flow in ofctl syntax).
        desc: String,
        /// OpenFlow error.
        error: OfpError,
        /// How many other messages of the same batch were rejected too.
        others: usize,
    },
    /// A bundle was not committed because one of its messages was rejected.
    #[error("bundle {bundle_id} not committed: message #{index} {kind} ({desc}) rejected: {error}; commit: {commit}", commit = commit_error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "-".into()))]
    BundleRejected {
        /// Bundle id.
        bundle_id: u32,
        /// Index of the rejected message within the batch given to [`Client::bundle`].
        index: usize,
        /// Its type.
        kind: &'static str,
        /// The caller's description of it.
        desc: String,
        /// Why it was rejected.
        error: OfpError,
        /// The error returned for the commit itself (`OFPBFC_MSG_FAILED`).
        commit_error: Option<Box<OfpError>>,
    },
    /// A message of the batch cannot be encoded (e.g. it is longer than
    /// OpenFlow's 65,535-byte limit); nothing of the batch was sent.
    #[error("message #{index} of the batch ({desc}) not sent: {source}")]
    Encode {
        /// Index of the message within the batch (for a bundle, within the
        /// messages given to [`Client::bundle`]).
        index: usize,
        /// The caller's description of it.
        desc: String,
        /// Why.
        source: EncodeError,
    },
    /// The switch sent something this client cannot decode.
    #[error("cannot decode reply: {0}")]
    Decode(#[from] DecodeError),
    /// Unexpected protocol behaviour.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One message of a batch, with an optional description for error reports.
#[derive(Debug, Clone)]
pub struct TxMessage {
    /// The message.
    pub msg: Message,
    /// Caller's description; `None` = the message's own ofctl-style text,
    /// computed only if the message is rejected.
    pub desc: Option<String>,
}

impl TxMessage {
    /// Wraps a message with a description (e.g. "service default/web:80").
    pub fn new(msg: Message, desc: impl Into<String>) -> Self {
        Self {
            msg,
            desc: Some(desc.into()),
        }
    }

    /// The description used in errors.
    pub fn describe(&self) -> String {
        match &self.desc {
            Some(d) => d.clone(),
            None => describe_message(&self.msg),
        }
    }
}

fn describe_message(m: &Message) -> String {
    match m {
        Message::FlowMod(fm) => fm.to_string(),
        Message::GroupMod(gm) => gm.to_string(),
        Message::BundleAdd { inner, .. } => describe_message(inner),
        m => m.kind().to_string(),
    }
}

impl From<FlowMod> for TxMessage {
    fn from(fm: FlowMod) -> Self {
        Self {
            msg: Message::FlowMod(fm),
            desc: None,
        }
    }
}

impl From<GroupMod> for TxMessage {
    fn from(gm: GroupMod) -> Self {
        Self {
            msg: Message::GroupMod(gm),
            desc: None,
        }
    }
}

/// Connection state published to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// Increases by one on every successful (re)connection; 1 = first.
    pub generation: u64,
    /// Whether a connection is up now.
    pub connected: bool,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Path of the bridge's management socket.
    pub path: PathBuf,
    /// Time limit for one request (a whole batch or bundle counts as one).
    pub request_timeout: Duration,
    /// First reconnect delay.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Capacity of the packet-in broadcast channel.
    pub packet_in_capacity: usize,
    /// After this long without any message from the switch the client sends
    /// an echo request; after twice this long it drops the connection and
    /// reconnects (`None` = never probe).
    pub probe_interval: Option<Duration>,
}

impl ClientConfig {
    /// Defaults for `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            request_timeout: Duration::from_secs(120),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            packet_in_capacity: 1024,
            probe_interval: Some(Duration::from_secs(15)),
        }
    }
    /// `<rundir>/<bridge>.mgmt`.
    pub fn for_bridge(rundir: &Path, bridge: &str) -> Self {
        Self::new(rundir.join(format!("{bridge}.mgmt")))
    }
}

#[derive(Debug)]
enum Outcome {
    Done {
        replies: Vec<Message>,
        errors: Vec<(u32, OfpError)>,
        final_error: Option<OfpError>,
    },
    Err(Error),
}

/// What a transaction produced.
#[derive(Debug)]
struct Reply {
    start: u32,
    replies: Vec<Message>,
    errors: Vec<(u32, OfpError)>,
    final_error: Option<OfpError>,
}

#[derive(Debug)]
struct TxnState {
    replies: Vec<Message>,
    errors: Vec<(u32, OfpError)>,
    done: Option<oneshot::Sender<Outcome>>,
    /// Told the errors so far when the checkpoint barrier is answered.
    checkpoint: Option<oneshot::Sender<Vec<(u32, OfpError)>>>,
}

#[derive(Debug)]
struct Txn {
    start: u32,
    count: u32,
    final_xid: u32,
    checkpoint_xid: Option<u32>,
    state: Mutex<TxnState>,
}

impl Txn {
    fn complete(&self, o: Outcome) {
        let tx = lock(&self.state).done.take();
        if let Some(tx) = tx {
            let _ = tx.send(o);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Bytes>,
    /// Negotiated OpenFlow version ([`OFP15_VERSION`] or [`OFP13_VERSION`]).
    version: u8,
    pending: Mutex<BTreeMap<u32, Arc<Txn>>>,
    /// Wakes the supervisor to drop this connection and reconnect.
    reset: tokio::sync::Notify,
}

impl Conn {
    fn find(&self, xid: u32) -> Option<Arc<Txn>> {
        let p = lock(&self.pending);
        p.range(..=xid)
            .next_back()
            .filter(|(_, t)| xid.wrapping_sub(t.start) < t.count)
            .map(|(_, t)| t.clone())
    }
    fn remove(&self, start: u32) {
        lock(&self.pending).remove(&start);
    }
    /// A request got no answer in time: what the switch did with it is
    /// unknown and the stream may be stuck, so the connection is dropped and
    /// re-established (callers resync on the new generation).
    fn drop_after_timeout(&self, what: &str, after: Duration) {
        warn!(
            what,
            ?after,
            "OpenFlow request timed out; dropping the connection to reconnect"
        );
        self.reset.notify_one();
    }
    fn fail_all(&self) {
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

#[derive(Debug)]
struct Inner {
    cfg: ClientConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    state_tx: watch::Sender<ConnectionEvent>,
    packet_in_tx: broadcast::Sender<PacketIn>,
    next_xid: AtomicU32,
    next_bundle: AtomicU32,
}

/// A native OpenFlow 1.5 client for one bridge. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _supervisor: Arc<SupervisorGuard>,
}

struct SupervisorGuard(Mutex<Option<JoinHandle<()>>>);

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.0).take() {
            h.abort();
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.cfg.path)
            .field("state", &*self.inner.state_tx.borrow())
            .finish()
    }
}

impl Client {
    /// Connects to `<rundir>/<bridge>.mgmt` with default settings.
    pub async fn connect_bridge(rundir: &Path, bridge: &str) -> Result<Self, Error> {
        Self::connect(ClientConfig::for_bridge(rundir, bridge)).await
    }

    /// Connects (the first attempt must succeed) and keeps reconnecting in
    /// the background whenever the connection drops.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, Error> {
        let (state_tx, _) = watch::channel(ConnectionEvent {
            generation: 0,
            connected: false,
        });
        let (packet_in_tx, _) = broadcast::channel(cfg.packet_in_capacity.max(1));
        let inner = Arc::new(Inner {
            cfg,
            conn: Mutex::new(None),
            state_tx,
            packet_in_tx,
            next_xid: AtomicU32::new(1),
            next_bundle: AtomicU32::new(1),
        });
        let reader = establish(&inner).await?;
        let sup = tokio::spawn(supervise(Arc::downgrade(&inner), reader));
        Ok(Self {
            inner,
            _supervisor: Arc::new(SupervisorGuard(Mutex::new(Some(sup)))),
        })
    }

    /// Watches connection state; `generation` increases on each reconnect,
    /// after which the caller should replay its flows and groups.
    pub fn connection_events(&self) -> watch::Receiver<ConnectionEvent> {
        self.inner.state_tx.subscribe()
    }

    /// Current connection state.
    pub fn state(&self) -> ConnectionEvent {
        *self.inner.state_tx.borrow()
    }

    /// The OpenFlow version of the current connection ([`OFP15_VERSION`] or
    /// [`OFP13_VERSION`]), `None` while disconnected.
    pub fn version(&self) -> Option<u8> {
        lock(&self.inner.conn).as_ref().map(|c| c.version)
    }

    /// Subscribes to packet-ins (NXT_PACKET_IN2: with userdata and metadata).
    pub fn packet_ins(&self) -> broadcast::Receiver<PacketIn> {
        self.inner.packet_in_tx.subscribe()
    }

    /// Waits until connected with a generation of at least `generation`.
    pub async fn wait_connected(&self, generation: u64, timeout: Duration) -> Result<u64, Error> {
        let mut rx = self.connection_events();
        let fut = async {
            loop {
                let s = *rx.borrow_and_update();
                if s.connected && s.generation >= generation {
                    return Ok(s.generation);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::NotConnected);
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("connection generation {generation}"),
                after: timeout,
            })?
    }

    fn conn(&self) -> Result<Arc<Conn>, Error> {
        lock(&self.inner.conn).clone().ok_or(Error::NotConnected)
    }

    /// Sends `msgs` (each with its own xid), then `last` whose reply ends the
    /// transaction; returns replies to `last` and errors for the others.
    async fn transact(
        &self,
        msgs: &[TxMessage],
        last: Option<Message>,
        what: &str,
    ) -> Result<Reply, Error> {
        self.enqueue(msgs, last, what)?.reply().await
    }

    /// The sending half of [`Client::transact`]: `msgs` and `last` are
    /// encoded and queued on the connection before this returns (so
    /// anything sent later reaches the switch after them); the returned
    /// [`Queued`] waits for the reply to `last`.
    fn enqueue(
        &self,
        msgs: &[TxMessage],
        last: Option<Message>,
        what: &str,
    ) -> Result<Queued, Error> {
        let conn = self.conn()?;
        refuse_unencodable(&conn, msgs, last.as_ref())?;
        let count = u32::try_from(msgs.len() + usize::from(last.is_some())).unwrap_or(u32::MAX);
        let start = alloc_xids(&self.inner.next_xid, count);
        let final_xid = start + count - 1;
        let mut buf = encode_batch(&conn, msgs, start)?;
        if let Some(l) = &last {
            encode_control(l, conn.version, final_xid, &mut buf)?;
        }
        let (queued, _) = Queued::register(
            conn,
            (start, count),
            None,
            what,
            self.inner.cfg.request_timeout,
        );
        if queued.conn.tx.send(buf.freeze()).is_err() {
            return Err(Error::NotConnected);
        }
        Ok(queued)
    }

    /// Like `transact`, with a barrier after `msgs`: `last` is only sent
    /// when no message before it was rejected (else the reply carries those
    /// errors and `last` was not sent).
    async fn transact_checked(
        &self,
        msgs: &[TxMessage],
        last: Message,
        what: &str,
    ) -> Result<Reply, Error> {
        let conn = self.conn()?;
        refuse_unencodable(&conn, msgs, Some(&last))?;
        let count = u32::try_from(msgs.len() + 2).unwrap_or(u32::MAX);
        let start = alloc_xids(&self.inner.next_xid, count);
        let final_xid = start + count - 1;
        let checkpoint_xid = start + u32::try_from(msgs.len()).unwrap_or(0);
        let mut buf = encode_batch(&conn, msgs, start)?;
        encode_control(
            &Message::BarrierRequest,
            conn.version,
            checkpoint_xid,
            &mut buf,
        )?;
        let after = self.inner.cfg.request_timeout;
        let (queued, checkpoint) =
            Queued::register(conn, (start, count), Some(checkpoint_xid), what, after);
        let conn = &queued.conn;
        if conn.tx.send(buf.split().freeze()).is_err() {
            return Err(Error::NotConnected);
        }
        let errors = match tokio::time::timeout(after, checkpoint).await {
            Err(_) => {
                let what = format!("barrier before {what}");
                conn.drop_after_timeout(&what, after);
                return Err(Error::Timeout { what, after });
            }
            Ok(Err(_)) => {
                return Err(Error::Disconnected {
                    what: what.to_string(),
                });
            }
            Ok(Ok(errors)) => errors,
        };
        if !errors.is_empty() {
            return Ok(Reply {
                start,
                replies: Vec::new(),
                errors,
                final_error: None,
            });
        }
        encode_control(&last, conn.version, final_xid, &mut buf)?;
        if conn.tx.send(buf.freeze()).is_err() {
            return Err(Error::NotConnected);
        }
        queued.reply().await
    }

    /// Sends a batch of messages followed by a barrier. Succeeds when every
    /// message was accepted; otherwise names the first rejected one.
    pub async fn send(&self, msgs: Vec<TxMessage>) -> Result<(), Error> {
        let r = self
            .transact(&msgs, Some(Message::BarrierRequest), "barrier reply")
            .await?;
        confirmed(&msgs, r)
    }

    /// One flow_mod, confirmed by a barrier.
    pub async fn flow_mod(&self, fm: FlowMod) -> Result<(), Error> {
        self.send(vec![fm.into()]).await
    }

    /// One flow_mod and a barrier, queued on the connection before this
    /// returns: whatever is sent on this client afterwards reaches the
    /// switch after it (one connection, one ordered stream). The returned
    /// future (which owns what it needs, so it can be spawned) is the
    /// barrier's confirmation, with the errors of [`Client::send`].
    /// Fails at once if there is no connection.
    pub fn flow_mod_queued(
        &self,
        fm: FlowMod,
    ) -> Result<impl std::future::Future<Output = Result<(), Error>> + Send + 'static, Error> {
        let msgs: Vec<TxMessage> = vec![fm.into()];
        let queued = self.enqueue(&msgs, Some(Message::BarrierRequest), "barrier reply")?;
        Ok(async move { confirmed(&msgs, queued.reply().await?) })
    }

    /// Adds flows (not atomic; see [`Client::bundle`] for all-or-nothing).
    pub async fn add_flows(&self, flows: &[Flow]) -> Result<(), Error> {
        self.send(
            flows
                .iter()
                .cloned()
                .map(|f| FlowMod::add(f).into())
                .collect(),
        )
        .await
    }

    /// One group_mod, confirmed by a barrier.
    pub async fn group_mod(&self, gm: GroupMod) -> Result<(), Error> {
        self.send(vec![gm.into()]).await
    }

    /// One meter_mod, confirmed by a barrier.
    pub async fn meter_mod(&self, mm: MeterMod) -> Result<(), Error> {
        let desc = mm.to_string();
        self.send(vec![TxMessage::new(Message::MeterMod(mm), desc)])
            .await
    }

    /// Maps Geneve options to `tun_metadata` fields (NXT_TLV_TABLE_MOD add),
    /// like `ovs-ofctl add-tlv-map`.
    pub async fn add_tlv_maps(&self, maps: Vec<TlvMap>) -> Result<(), Error> {
        let desc = format!("add TLV maps {maps:?}");
        self.send(vec![TxMessage::new(
            Message::TlvTableMod {
                command: TlvTableCommand::Add,
                maps,
            },
            desc,
        )])
        .await
    }

    /// Sends a packet-out, confirmed by a barrier.
    pub async fn packet_out(&self, po: PacketOut) -> Result<(), Error> {
        self.send(vec![TxMessage::new(Message::PacketOut(po), "packet-out")])
            .await
    }

    /// Flushes conntrack entries (NXT_CT_FLUSH, OVS 3.1+; see
    /// [`Message::CtFlush`]), confirmed by a barrier.
    pub async fn ct_flush(
        &self,
        zone: Option<u16>,
        ip_proto: u8,
        orig: super::message::CtTuple,
        reply: super::message::CtTuple,
    ) -> Result<(), Error> {
        self.send(vec![TxMessage::new(
            Message::CtFlush {
                zone,
                ip_proto,
                orig,
                reply,
            },
            "ct flush",
        )])
        .await
    }

    /// Barrier round trip.
    pub async fn barrier(&self) -> Result<(), Error> {
        self.send(Vec::new()).await
    }

    /// Echo round trip.
    pub async fn echo(&self) -> Result<(), Error> {
        let r = self
            .transact(
                &[],
                Some(Message::EchoRequest(b"switchyard".to_vec())),
                "echo reply",
            )
            .await?;
        match r.replies.last() {
            Some(Message::EchoReply(_)) => Ok(()),
            other => Err(Error::Protocol(format!(
                "expected echo reply, got {other:?}"
            ))),
        }
    }

    /// Applies `msgs` (flow and group mods) in one OpenFlow bundle with
    /// `flags` ([`bundle_flags::ATOMIC`] for all-or-nothing, plus
    /// [`bundle_flags::ORDERED`]). The adds are streamed without waiting for
    /// replies; only the commit is awaited. On failure of an atomic bundle
    /// nothing is applied and the error names the rejected message by its
    /// index in `msgs`, its description and the OpenFlow error.
    pub async fn bundle(&self, msgs: Vec<TxMessage>, flags: u16) -> Result<(), Error> {
        let bundle_id = self.inner.next_bundle.fetch_add(1, Ordering::Relaxed);
        let mut all = Vec::with_capacity(msgs.len() + 1);
        all.push(TxMessage::new(
            Message::BundleControl {
                bundle_id,
                ctrl: BundleCtrlType::OpenRequest,
                flags,
            },
            format!("open bundle {bundle_id}"),
        ));
        for m in msgs {
            all.push(TxMessage {
                msg: Message::BundleAdd {
                    bundle_id,
                    flags,
                    inner: Box::new(m.msg),
                },
                desc: m.desc,
            });
        }
        let commit = Message::BundleControl {
            bundle_id,
            ctrl: BundleCtrlType::CommitRequest,
            flags,
        };
        // OVS rejects some messages already when they are added and would
        // then commit the rest: a barrier after the adds tells us, and the
        // bundle is discarded instead of committed.
        let r = self
            .transact_checked(&all, commit, &format!("commit of bundle {bundle_id}"))
            .await
            .map_err(|e| match e {
                // Indexes count the caller's messages, not the open.
                Error::Encode {
                    index,
                    desc,
                    source,
                } => Error::Encode {
                    index: index.saturating_sub(1),
                    desc,
                    source,
                },
                e => e,
            })?;
        let committed = !r.replies.is_empty() || r.final_error.is_some();
        if !r.errors.is_empty() && !committed {
            let discard = Message::BundleControl {
                bundle_id,
                ctrl: BundleCtrlType::DiscardRequest,
                flags,
            };
            if let Err(e) = self.transact(&[], Some(discard), "bundle discard").await {
                warn!(bundle_id, error = %e, "discarding a rejected bundle failed");
            }
        }
        if let Some((xid, error)) = r.errors.first() {
            let i = usize::try_from(xid.wrapping_sub(r.start)).unwrap_or(0);
            let m = &all[i.min(all.len() - 1)];
            if i == 0 {
                // The open itself failed.
                return Err(Error::Rejected {
                    xid: *xid,
                    kind: "BUNDLE_CONTROL",
                    desc: m.describe(),
                    error: error.clone(),
                    others: r.errors.len() - 1,
                });
            }
            return Err(Error::BundleRejected {
                bundle_id,
                index: i.saturating_sub(1),
                kind: inner_kind(&m.msg),
                desc: m.describe(),
                error: error.clone(),
                commit_error: r.final_error.map(Box::new),
            });
        }
        if let Some(e) = r.final_error {
            return Err(Error::Rejected {
                xid: r.start + u32::try_from(all.len()).unwrap_or(0),
                kind: "BUNDLE_CONTROL",
                desc: format!("commit bundle {bundle_id}"),
                error: e,
                others: 0,
            });
        }
        match r.replies.last() {
            Some(Message::BundleControl {
                ctrl: BundleCtrlType::CommitReply,
                ..
            }) => Ok(()),
            other => Err(Error::Protocol(format!(
                "expected bundle commit reply, got {other:?}"
            ))),
        }
    }

    /// Applies flow mods atomically in one bundle.
    pub async fn bundle_flow_mods(&self, fms: Vec<FlowMod>) -> Result<(), Error> {
        self.bundle(
            fms.into_iter().map(TxMessage::from).collect(),
            bundle_flags::ATOMIC | bundle_flags::ORDERED,
        )
        .await
    }

    async fn multipart(&self, req: MultipartRequest) -> Result<Vec<MultipartReply>, Error> {
        let what = format!("{req:?} reply");
        let r = self
            .transact(&[], Some(Message::MultipartRequest(req)), &what)
            .await?;
        if let Some(e) = r.final_error {
            return Err(Error::Rejected {
                xid: r.start,
                kind: "MULTIPART_REQUEST",
                desc: what,
                error: e,
                others: 0,
            });
        }
        Ok(r.replies
            .into_iter()
            .filter_map(|m| match m {
                Message::MultipartReply { body, .. } => Some(body),
                _ => None,
            })
            .collect())
    }

    /// Flow statistics (`dump-flows`) for the flows selected by `req`.
    pub async fn dump_flows(&self, req: FlowStatsRequest) -> Result<Vec<FlowStats>, Error> {
        let mut v = Vec::new();
        for r in self.multipart(MultipartRequest::Flow(req)).await? {
            if let MultipartReply::Flow(f) = r {
                v.extend(f);
            }
        }
        Ok(v)
    }

    /// Group descriptions (`dump-groups`); `group_id` or [`super::group::ALL_GROUPS`].
    pub async fn dump_groups(&self, group_id: u32) -> Result<Vec<Group>, Error> {
        let mut v = Vec::new();
        for r in self
            .multipart(MultipartRequest::GroupDesc(group_id))
            .await?
        {
            if let MultipartReply::GroupDesc(g) = r {
                v.extend(g);
            }
        }
        Ok(v)
    }

    /// Group counters (`dump-group-stats`).
    pub async fn group_stats(&self, group_id: u32) -> Result<Vec<GroupStats>, Error> {
        let mut v = Vec::new();
        for r in self.multipart(MultipartRequest::Group(group_id)).await? {
            if let MultipartReply::Group(g) = r {
                v.extend(g);
            }
        }
        Ok(v)
    }
}

/// Unregisters a transaction however its wait ends (including cancellation).
/// Refuses a whole batch before any of it is sent if one message cannot
/// be encoded in the connection's version.
fn refuse_unencodable(
    conn: &Conn,
    msgs: &[TxMessage],
    last: Option<&Message>,
) -> Result<(), Error> {
    match msgs
        .iter()
        .map(|m| &m.msg)
        .chain(last)
        .find(|m| !m.encodable_as(conn.version))
    {
        Some(m) => Err(Error::UnsupportedOn13 { kind: m.kind() }),
        None => Ok(()),
    }
}

/// `msgs` encoded with consecutive xids from `start`.
fn encode_batch(conn: &Conn, msgs: &[TxMessage], start: u32) -> Result<BytesMut, Error> {
    let mut buf = BytesMut::with_capacity(msgs.len() * 128 + 64);
    for (i, m) in msgs.iter().enumerate() {
        m.msg
            .encode_as(
                conn.version,
                start + u32::try_from(i).unwrap_or(0),
                &mut buf,
            )
            .map_err(|source| Error::Encode {
                index: i,
                desc: m.describe(),
                source,
            })?;
    }
    Ok(buf)
}

/// The outcome of `msgs` sent with a barrier: fine when every message was
/// accepted, else the first rejected one named.
fn confirmed(msgs: &[TxMessage], r: Reply) -> Result<(), Error> {
    if let Some(e) = r.final_error {
        return Err(Error::Protocol(format!("barrier rejected: {e}")));
    }
    if let Some((xid, error)) = r.errors.first() {
        let i = usize::try_from(xid.wrapping_sub(r.start)).unwrap_or(0);
        let m = &msgs[i.min(msgs.len().saturating_sub(1))];
        return Err(Error::Rejected {
            xid: *xid,
            kind: m.msg.kind(),
            desc: m.describe(),
            error: error.clone(),
            others: r.errors.len() - 1,
        });
    }
    Ok(())
}

/// A request queued on a connection ([`Client::enqueue`]) whose reply is
/// still to come; dropping it forgets the request (the switch still
/// applies it).
struct Queued {
    conn: Arc<Conn>,
    start: u32,
    rx: oneshot::Receiver<Outcome>,
    what: String,
    after: Duration,
}

impl Queued {
    /// Registers a request of `count` xids from `start` (sent by the
    /// caller), whose last message's reply ends it; with `checkpoint_xid`,
    /// the receiver is told the errors so far when that barrier is answered.
    fn register(
        conn: Arc<Conn>,
        (start, count): (u32, u32),
        checkpoint_xid: Option<u32>,
        what: &str,
        after: Duration,
    ) -> (Queued, oneshot::Receiver<Vec<(u32, OfpError)>>) {
        let (tx, rx) = oneshot::channel();
        let (ctx, crx) = oneshot::channel();
        let txn = Arc::new(Txn {
            start,
            count,
            final_xid: start + count - 1,
            checkpoint_xid,
            state: Mutex::new(TxnState {
                replies: Vec::new(),
                errors: Vec::new(),
                done: Some(tx),
                checkpoint: Some(ctx),
            }),
        });
        lock(&conn.pending).insert(start, txn);
        let queued = Queued {
            conn,
            start,
            rx,
            what: what.to_string(),
            after,
        };
        (queued, crx)
    }

    /// Waits for the reply to the request's last message.
    async fn reply(mut self) -> Result<Reply, Error> {
        let res = tokio::time::timeout(self.after, &mut self.rx).await;
        match res {
            Err(_) => {
                self.conn.drop_after_timeout(&self.what, self.after);
                Err(Error::Timeout {
                    what: std::mem::take(&mut self.what),
                    after: self.after,
                })
            }
            Ok(Err(_)) => Err(Error::Disconnected {
                what: std::mem::take(&mut self.what),
            }),
            Ok(Ok(Outcome::Err(e))) => Err(e),
            Ok(Ok(Outcome::Done {
                replies,
                errors,
                final_error,
            })) => Ok(Reply {
                start: self.start,
                replies,
                errors,
                final_error,
            }),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.conn.remove(self.start);
    }
}

fn inner_kind(m: &Message) -> &'static str {
    match m {
        Message::BundleAdd { inner, .. } => inner.kind(),
        m => m.kind(),
    }
}

fn alloc_xids(next: &AtomicU32, count: u32) -> u32 {
    loop {
        let cur = next.load(Ordering::Relaxed);
        let (start, end) = match cur.checked_add(count) {
            Some(e) if e < u32::MAX - 1 => (cur, e),
            _ => (1, 1 + count),
        };
        if next
            .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return start;
        }
    }
}

type Frames = FramedRead<OwnedReadHalf, OpenFlowFrames>;

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
async fn establish(inner: &Arc<Inner>) -> Result<Frames, Error> {
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
    let pin_tx = inner.packet_in_tx.clone();
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
fn encode_control(msg: &Message, version: u8, xid: u32, out: &mut BytesMut) -> Result<(), Error> {
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

fn handle_frame(conn: &Conn, pin_tx: &broadcast::Sender<PacketIn>, frame: &[u8]) {
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
            let _ = pin_tx.send(pi);
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

async fn supervise(inner: std::sync::Weak<Inner>, mut frames: Frames) {
    loop {
        // Read until the connection drops.
        {
            let Some(i) = inner.upgrade() else { return };
            let conn = lock(&i.conn).clone();
            let pin_tx = i.packet_in_tx.clone();
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
