//! The connection to ovs-vswitchd: handshake, request/reply correlation,
//! bundles, packet-in delivery and reconnection.
//!
//! Reads are framed by `OpenFlowFrames` (in `conn`) (the 16-bit length at offset 2 of
//! the header, which counts the header; a length below 8 drops the
//! connection). Writes never truncate a length: a message over 65,535 bytes
//! is refused before anything of its batch is sent ([`Error::Encode`]).
//! A request that times out drops the connection too: its outcome is unknown
//! and the stream may be stuck, so the client reconnects and the new
//! connection generation ([`Client::connection_events`]) tells callers to
//! reinstall their state.
//! Writes go through a per-connection writer task so that a large batch
//! (100k bundle adds) streams while the reader keeps draining replies.

mod conn;
mod error;
mod txn;

use conn::{Conn, encode_control, establish, lock, supervise};
pub use error::Error;
pub use txn::TxMessage;
use txn::{Queued, Reply, alloc_xids, confirmed, encode_batch, inner_kind, refuse_unencodable};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use super::flow::{Flow, FlowMod, FlowStats, FlowStatsRequest};
use super::group::{Group, GroupMod, GroupStats};
use super::message::{
    BundleCtrlType, Message, MeterMod, MultipartReply, MultipartRequest, PacketIn, PacketOut,
    PortStatus, TlvMap, TlvTableCommand, bundle_flags,
};

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

/// Port status messages kept for a slow subscriber (one per port added,
/// removed or changed; a subscriber that lags loses the oldest).
const PORT_STATUS_CAPACITY: usize = 1024;

/// Where the switch's asynchronous messages go.
#[derive(Debug, Clone)]
struct AsyncTx {
    packet_in: broadcast::Sender<PacketIn>,
    port_status: broadcast::Sender<PortStatus>,
}

#[derive(Debug)]
struct Inner {
    cfg: ClientConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    state_tx: watch::Sender<ConnectionEvent>,
    async_tx: AsyncTx,
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
        let (packet_in, _) = broadcast::channel(cfg.packet_in_capacity.max(1));
        let (port_status, _) = broadcast::channel(PORT_STATUS_CAPACITY);
        let inner = Arc::new(Inner {
            cfg,
            conn: Mutex::new(None),
            state_tx,
            async_tx: AsyncTx {
                packet_in,
                port_status,
            },
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

    /// The OpenFlow version of the current connection ([`OFP15_VERSION`](super::OFP15_VERSION) or
    /// [`OFP13_VERSION`](super::OFP13_VERSION)), `None` while disconnected.
    pub fn version(&self) -> Option<u8> {
        lock(&self.inner.conn).as_ref().map(|c| c.version)
    }

    /// Subscribes to packet-ins (NXT_PACKET_IN2: with userdata and metadata).
    pub fn packet_ins(&self) -> broadcast::Receiver<PacketIn> {
        self.inner.async_tx.packet_in.subscribe()
    }

    /// Subscribes to port status messages: `ovs-vswitchd` sends one as it
    /// attaches a port, before it writes the port's `ofport` to OVSDB.
    /// Nothing is replayed: subscribe before adding the port.
    pub fn port_status(&self) -> broadcast::Receiver<PortStatus> {
        self.inner.async_tx.port_status.subscribe()
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
