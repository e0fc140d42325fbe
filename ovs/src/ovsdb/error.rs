//! Errors of the OVSDB client.

use std::time::Duration;

pub use super::codec::CodecError;
pub use super::ops::{OvsdbErrorKind, TransactionError};
pub use super::schema::SchemaError;

/// Errors of [`super::Client`] and the typed helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint string is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("invalid OVSDB endpoint {0:?} (expected unix:PATH or tcp:HOST:PORT)")]
    InvalidEndpoint(String),
    /// Connecting failed.
    #[error("connecting to OVSDB at {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection is down (the client is reconnecting); nothing was sent.
    #[error("not connected to OVSDB (reconnecting)")]
    NotConnected,
    /// The connection dropped after the request was sent and before its reply:
    /// the request may or may not have taken effect.
    #[error("OVSDB connection lost before the reply to {method} arrived: {reason}")]
    Disconnected {
        /// The request's method.
        method: String,
        /// Why the connection ended.
        reason: String,
    },
    /// The client was shut down (all handles dropped or `close` called).
    #[error("OVSDB client is shut down")]
    Closed,
    /// The server's reply does not have the expected shape.
    #[error("malformed OVSDB reply to {method}: {reason}")]
    MalformedReply {
        /// The request's method.
        method: String,
        /// What is wrong.
        reason: String,
    },
    /// The server answered a request with a JSON-RPC error.
    #[error("OVSDB {method} failed: {error}{}", .details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rpc {
        /// The request's method.
        method: String,
        /// The error string, e.g. `unknown database`.
        error: String,
        /// Details, if any.
        details: Option<String>,
    },
    /// A transaction failed; says which operation and why.
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    /// The schema could not be parsed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A deadline passed.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// What was awaited.
        what: String,
    },
    /// Bad argument to a helper; nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No bridge with this name.
    #[error("bridge {0:?} does not exist")]
    BridgeNotFound(String),
    /// No port with this name.
    #[error("port {0:?} does not exist")]
    PortNotFound(String),
    /// A port with this name exists already.
    #[error("port {0:?} already exists")]
    PortExists(String),
    /// No interface with this name.
    #[error("interface {0:?} does not exist")]
    InterfaceNotFound(String),
    /// ovs-vswitchd could not set up the interface (ofport -1).
    #[error("interface {name:?} failed: {error}")]
    InterfaceFailed {
        /// Interface name.
        name: String,
        /// The `error` column.
        error: String,
    },
    /// The `Open_vSwitch` table has no row.
    #[error("the Open_vSwitch table has no root row")]
    NoRootRow,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
