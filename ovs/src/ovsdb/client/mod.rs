//! The JSON-RPC connection: requests, notifications, echo, reconnect.
//!
//! A [`Client`] is a cheap handle (clone it freely) to a background task that
//! owns the socket. The task matches replies to requests by id, answers the
//! server's `echo`, probes an idle server with its own `echo`, routes
//! `update`/`update2` notifications to monitor subscribers and
//! `locked`/`stolen` to lock subscribers. When the connection drops, every
//! request waiting for a reply fails with [`Error::Disconnected`], the task
//! reconnects with exponential backoff, re-issues all monitors (subscribers
//! get a `reset` event with the full contents) and re-requests held locks, and
//! then announces [`ConnectionEvent::Connected`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value as Json, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::codec::DEFAULT_MAX_MESSAGE_SIZE;
use super::error::{Error, Result};
use super::monitor::{Monitor, MonitorEvent, MonitorRequest, MonitorVersion};
use super::ops::{Operation, OperationResult, parse_transact_reply};
use super::schema::Schema;
use worker::Worker;

mod worker;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `tcp:HOST:PORT`
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("unix:")
            && !path.is_empty()
        {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:")
            && let Some((host, port)) = addr.rsplit_once(':')
            && !host.is_empty()
            && port.parse::<u16>().is_ok()
        {
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        Err(Error::InvalidEndpoint(s.to_string()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address.
    pub endpoint: Endpoint,
    /// Reconnect after the connection drops (default true).
    pub reconnect: bool,
    /// First reconnect delay (default 50 ms); doubles per failed attempt.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 2 s).
    pub backoff_max: Duration,
    /// Largest accepted message (default 64 MiB).
    pub max_message_size: usize,
    /// Send an `echo` after this much silence and drop the connection if the
    /// next period stays silent too (default 10 s; `None` disables).
    pub inactivity_probe: Option<Duration>,
}

impl ClientConfig {
    /// Defaults for an endpoint.
    pub fn new(endpoint: Endpoint) -> Self {
        ClientConfig {
            endpoint,
            reconnect: true,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            inactivity_probe: Some(Duration::from_secs(10)),
        }
    }
}

/// Connection state changes, for [`Client::connection_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Connected and all monitors re-established (generation 1 is the first
    /// connection; higher numbers are reconnects).
    Connected {
        /// Count of successful connections.
        generation: u64,
    },
    /// The connection dropped; requests in flight failed.
    Disconnected {
        /// Generation of the connection that dropped.
        generation: u64,
        /// Why.
        reason: String,
    },
}

/// Lock notifications, for [`Client::lock_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// The lock was acquired (`locked` notification or a reply saying so after reconnect).
    Locked(String),
    /// Another client stole the lock (`stolen` notification).
    Stolen(String),
    /// The connection dropped while the lock was held or wanted.
    Lost(String),
}

type BoxedStream = Pin<Box<dyn AsyncReadWriteSend>>;
trait AsyncReadWriteSend: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWriteSend for T {}

async fn open(endpoint: &Endpoint) -> Result<BoxedStream> {
    let map = |source| Error::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => Ok(Box::pin(
            tokio::net::UnixStream::connect(path).await.map_err(map)?,
        )),
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(map)?;
            stream.set_nodelay(true).map_err(map)?;
            Ok(Box::pin(stream))
        }
    }
}

/// A monitor as the worker remembers it (to re-issue after reconnect).
#[derive(Debug)]
struct MonitorSpec {
    id: String,
    db: String,
    version: MonitorVersion,
    requests: Json,
    tx: mpsc::UnboundedSender<MonitorEvent>,
}

impl MonitorSpec {
    fn params(&self) -> Json {
        json!([self.db, self.id, self.requests])
    }
}

enum Command {
    Request {
        method: String,
        params: Json,
        reply: oneshot::Sender<Result<Json>>,
    },
    Monitor {
        spec: MonitorSpec,
        reply: oneshot::Sender<Result<()>>,
    },
    CancelMonitor {
        id: String,
        reply: oneshot::Sender<Result<Json>>,
    },
    Shutdown,
}

enum Pending {
    User {
        method: String,
        reply: oneshot::Sender<Result<Json>>,
        /// Lock requested by `lock`/`steal`: forgotten again if refused.
        lock: Option<String>,
    },
    MonitorStart {
        spec: MonitorSpec,
        reply: oneshot::Sender<Result<()>>,
    },
    MonitorRestart {
        id: String,
    },
    LockRestart {
        name: String,
    },
    Ignore,
}

struct Shared {
    connected: watch::Sender<Option<u64>>,
    events: broadcast::Sender<ConnectionEvent>,
    /// Held while the connection state changes and its event is sent, and
    /// while subscribing to `events`: a subscriber that can observe a state
    /// never receives the event that announced it (see [`Shared::publish`]).
    publishing: Mutex<()>,
    locks: broadcast::Sender<LockEvent>,
    next_monitor: AtomicU64,
}

impl Shared {
    /// Sets the connection state and sends its event as one step with
    /// respect to [`Shared::subscribe`]. Without the lock, a task woken by
    /// the state change (e.g. [`Client::connect_with`] returning) could
    /// subscribe before the event was sent and receive a stale `Connected`.
    fn publish(&self, state: Option<u64>, event: Option<ConnectionEvent>) {
        let _guard = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.connected.send_replace(state);
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<ConnectionEvent> {
        let _guard = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.events.subscribe()
    }
}

/// Handle to an OVSDB connection. Clone it freely; the connection closes
/// when the last clone is dropped (or on [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    cmd_tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    connected: watch::Receiver<Option<u64>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("generation", &*self.connected.borrow())
            .finish()
    }
}

impl Client {
    /// Connects to `endpoint` (`unix:PATH` or `tcp:HOST:PORT`) with default settings.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Self::connect_with(ClientConfig::new(endpoint.parse()?)).await
    }

    /// Connects with explicit settings. The first connection must succeed;
    /// later drops are handled by reconnecting (if enabled).
    pub async fn connect_with(config: ClientConfig) -> Result<Client> {
        let stream = open(&config.endpoint).await?;
        let (connected_tx, connected) = watch::channel(None);
        let shared = Arc::new(Shared {
            connected: connected_tx,
            events: broadcast::channel(64).0,
            publishing: Mutex::new(()),
            locks: broadcast::channel(64).0,
            next_monitor: AtomicU64::new(0),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        tokio::spawn(Worker::new(config, cmd_rx, shared.clone()).run(stream));
        let client = Client {
            cmd_tx,
            shared,
            connected,
        };
        client.wait_connected(Duration::from_secs(30)).await?;
        Ok(client)
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.connected.borrow().is_some()
    }

    /// Generation of the current connection (1 = first), `None` while down.
    pub fn generation(&self) -> Option<u64> {
        *self.connected.borrow()
    }

    /// Waits until connected (and monitors re-established).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<u64> {
        let mut rx = self.connected.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(generation)) => Ok(generation.unwrap_or_default()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                timeout,
                what: "the OVSDB connection".into(),
            }),
        }
    }

    /// Subscribes to connect/disconnect events: the receiver gets the events
    /// of the state changes after the state [`Client::generation`] shows now
    /// (so not the `Connected` of a connection already seen as up, e.g. the
    /// first one after [`Client::connect_with`] returned).
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.subscribe()
    }

    /// Subscribes to lock events.
    pub fn lock_events(&self) -> broadcast::Receiver<LockEvent> {
        self.shared.locks.subscribe()
    }

    /// Shuts the connection down for all clones: requests waiting for a
    /// reply fail with [`Error::Disconnected`], later ones with [`Error::Closed`],
    /// monitor streams end. (Dropping the last clone does the same.)
    pub fn close(&self) {
        let _ = self.cmd_tx.send(Command::Shutdown);
    }

    /// Sends a raw JSON-RPC request and returns its `result`.
    pub async fn request(&self, method: &str, params: Json) -> Result<Json> {
        let (reply, rx) = oneshot::channel();
        self.cmd_tx
            .send(Command::Request {
                method: method.to_string(),
                params,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// `list_dbs`.
    pub async fn list_dbs(&self) -> Result<Vec<String>> {
        let result = self.request("list_dbs", json!([])).await?;
        serde_json::from_value(result.clone()).map_err(|_| Error::MalformedReply {
            method: "list_dbs".into(),
            reason: format!("expected an array of strings, got {result}"),
        })
    }

    /// `get_schema`.
    pub async fn get_schema(&self, db: &str) -> Result<Schema> {
        let result = self.request("get_schema", json!([db])).await?;
        Schema::from_json(&result).map_err(|e| Error::MalformedReply {
            method: "get_schema".into(),
            reason: e.to_string(),
        })
    }

    /// `transact`: runs the operations atomically. A failed operation gives
    /// [`Error::Transaction`] naming it.
    pub async fn transact(&self, db: &str, ops: &[Operation]) -> Result<Vec<OperationResult>> {
        let mut params = Vec::with_capacity(ops.len() + 1);
        params.push(json!(db));
        params.extend(ops.iter().map(Operation::to_json));
        let result = self.request("transact", Json::Array(params)).await?;
        match parse_transact_reply(&result, ops.len()) {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(err)) => Err(Error::Transaction(err)),
            Err(reason) => Err(Error::MalformedReply {
                method: "transact".into(),
                reason,
            }),
        }
    }

    /// `echo`: a round trip to the server.
    pub async fn echo(&self) -> Result<()> {
        self.request("echo", json!(["ping"])).await.map(|_| ())
    }

    async fn start_monitor(
        &self,
        db: &str,
        version: MonitorVersion,
        requests: &BTreeMap<String, MonitorRequest>,
    ) -> Result<Monitor> {
        let conditional = version == MonitorVersion::V2;
        let requests: serde_json::Map<String, Json> = requests
            .iter()
            .map(|(table, r)| (table.clone(), r.to_json(conditional)))
            .collect();
        let id = format!(
            "sy-mon-{}",
            self.shared.next_monitor.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, events) = mpsc::unbounded_channel();
        let spec = MonitorSpec {
            id: id.clone(),
            db: db.to_string(),
            version,
            requests: Json::Object(requests),
            tx,
        };
        let (reply, rx) = oneshot::channel();
        self.cmd_tx
            .send(Command::Monitor { spec, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(Monitor { id, events })
    }

    /// `monitor` (protocol version 1, `update` notifications). The first event
    /// holds the initial contents.
    pub async fn monitor(
        &self,
        db: &str,
        requests: &BTreeMap<String, MonitorRequest>,
    ) -> Result<Monitor> {
        self.start_monitor(db, MonitorVersion::V1, requests).await
    }

    /// `monitor_cond` (`update2` notifications, conditions honoured).
    pub async fn monitor_cond(
        &self,
        db: &str,
        requests: &BTreeMap<String, MonitorRequest>,
    ) -> Result<Monitor> {
        self.start_monitor(db, MonitorVersion::V2, requests).await
    }

    /// `monitor_cancel`: stops the monitor; its event stream ends.
    pub async fn monitor_cancel(&self, monitor: &Monitor) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.cmd_tx
            .send(Command::CancelMonitor {
                id: monitor.id.clone(),
                reply,
            })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map(|_| ())
    }

    fn locked_reply(method: &str, result: &Json) -> Result<bool> {
        result
            .get("locked")
            .and_then(Json::as_bool)
            .ok_or_else(|| Error::MalformedReply {
                method: method.into(),
                reason: format!("expected {{\"locked\": bool}}, got {result}"),
            })
    }

    /// `lock`: true if acquired now; otherwise a [`LockEvent::Locked`]
    /// follows when it is. Re-requested after a reconnect.
    pub async fn lock(&self, name: &str) -> Result<bool> {
        let result = self.request("lock", json!([name])).await?;
        Self::locked_reply("lock", &result)
    }

    /// `steal`: takes the lock from its owner.
    pub async fn steal(&self, name: &str) -> Result<()> {
        let result = self.request("steal", json!([name])).await?;
        Self::locked_reply("steal", &result).map(|_| ())
    }

    /// `unlock`.
    pub async fn unlock(&self, name: &str) -> Result<()> {
        self.request("unlock", json!([name])).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/run/db.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/db.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6640".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:6640".into())
        );
        for bad in [
            "",
            "unix:",
            "tcp:host",
            "tcp::1",
            "ssl:1.2.3.4:6640",
            "/run/db.sock",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
