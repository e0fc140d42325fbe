//! The OpenFlow client's errors.

use std::path::PathBuf;
use std::time::Duration;

use super::super::message::{EncodeError, OfpError};
use super::super::wire::DecodeError;

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
    /// sent. See [`Message::encodable_as`](crate::openflow::Message::encodable_as).
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
        /// Index of the rejected message within the batch given to [`Client::bundle`](super::Client::bundle).
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
        /// messages given to [`Client::bundle`](super::Client::bundle)).
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
