//! Requests in flight: the messages of a batch, their xids, the pending
//! transaction a reply completes, and how a batch's outcome is judged.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::super::flow::FlowMod;
use super::super::group::GroupMod;
use super::super::message::{Message, OfpError};
use super::Error;
use super::conn::{Conn, lock};

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

#[derive(Debug)]
pub(super) enum Outcome {
    Done {
        replies: Vec<Message>,
        errors: Vec<(u32, OfpError)>,
        final_error: Option<OfpError>,
    },
    Err(Error),
}

/// What a transaction produced.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) start: u32,
    pub(super) replies: Vec<Message>,
    pub(super) errors: Vec<(u32, OfpError)>,
    pub(super) final_error: Option<OfpError>,
}

#[derive(Debug)]
pub(super) struct TxnState {
    pub(super) replies: Vec<Message>,
    pub(super) errors: Vec<(u32, OfpError)>,
    pub(super) done: Option<oneshot::Sender<Outcome>>,
    /// Told the errors so far when the checkpoint barrier is answered.
    pub(super) checkpoint: Option<oneshot::Sender<Vec<(u32, OfpError)>>>,
}

#[derive(Debug)]
pub(super) struct Txn {
    pub(super) start: u32,
    pub(super) count: u32,
    pub(super) final_xid: u32,
    pub(super) checkpoint_xid: Option<u32>,
    pub(super) state: Mutex<TxnState>,
}

impl Txn {
    pub(super) fn complete(&self, o: Outcome) {
        let tx = lock(&self.state).done.take();
        if let Some(tx) = tx {
            let _ = tx.send(o);
        }
    }
}

/// Refuses a whole batch before any of it is sent if one message cannot
/// be encoded in the connection's version.
pub(super) fn refuse_unencodable(
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
pub(super) fn encode_batch(conn: &Conn, msgs: &[TxMessage], start: u32) -> Result<BytesMut, Error> {
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
pub(super) fn confirmed(msgs: &[TxMessage], r: Reply) -> Result<(), Error> {
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

/// A request queued on a connection (`Client::enqueue`) whose reply is
/// still to come; dropping it forgets the request (the switch still
/// applies it).
pub(super) struct Queued {
    pub(super) conn: Arc<Conn>,
    start: u32,
    rx: oneshot::Receiver<Outcome>,
    what: String,
    after: Duration,
}

impl Queued {
    /// Registers a request of `count` xids from `start` (sent by the
    /// caller), whose last message's reply ends it; with `checkpoint_xid`,
    /// the receiver is told the errors so far when that barrier is answered.
    pub(super) fn register(
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
    pub(super) async fn reply(mut self) -> Result<Reply, Error> {
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

pub(super) fn inner_kind(m: &Message) -> &'static str {
    match m {
        Message::BundleAdd { inner, .. } => inner.kind(),
        m => m.kind(),
    }
}

pub(super) fn alloc_xids(next: &AtomicU32, count: u32) -> u32 {
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
