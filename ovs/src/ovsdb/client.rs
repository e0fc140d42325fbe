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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::codec::{DEFAULT_MAX_MESSAGE_SIZE, JsonCodec};
use super::error::{Error, Result};
use super::monitor::{Monitor, MonitorEvent, MonitorRequest, MonitorVersion};
use super::ops::{Operation, OperationResult, parse_transact_reply};
use super::schema::Schema;

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
        let worker = Worker {
            config,
            cmd_rx,
            shared: shared.clone(),
            monitors: BTreeMap::new(),
            locks: BTreeSet::new(),
            next_id: 0,
            generation: 0,
        };
        tokio::spawn(worker.run(stream));
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

enum Exit {
    Shutdown,
    Lost(String),
}

enum Event {
    Command(Option<Command>),
    Message(Option<std::result::Result<Json, super::codec::CodecError>>),
    Probe,
}

struct Worker {
    config: ClientConfig,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    monitors: BTreeMap<String, MonitorSpec>,
    locks: BTreeSet<String>,
    next_id: u64,
    generation: u64,
}

type Conn = Framed<BoxedStream, JsonCodec>;

impl Worker {
    async fn run(mut self, first: BoxedStream) {
        let mut stream = Some(first);
        let mut backoff = self.config.backoff_initial;
        loop {
            let conn = match stream.take() {
                Some(s) => s,
                None => match self.reconnect(&mut backoff).await {
                    Some(s) => s,
                    None => return,
                },
            };
            backoff = self.config.backoff_initial;
            self.generation += 1;
            let generation = self.generation;
            tracing::debug!(endpoint = %self.config.endpoint, generation, "OVSDB connected");
            match self.serve(conn).await {
                Exit::Shutdown => {
                    self.shared.publish(None, None);
                    return;
                }
                Exit::Lost(reason) => {
                    tracing::warn!(endpoint = %self.config.endpoint, %reason, "OVSDB connection lost");
                    self.shared.publish(
                        None,
                        Some(ConnectionEvent::Disconnected { generation, reason }),
                    );
                    for lock in &self.locks {
                        let _ = self.shared.locks.send(LockEvent::Lost(lock.clone()));
                    }
                    if !self.config.reconnect {
                        return;
                    }
                }
            }
        }
    }

    /// Fails a command received while disconnected.
    fn refuse(&mut self, cmd: Command) {
        match cmd {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(Error::NotConnected));
            }
            Command::Monitor { reply, .. } => {
                let _ = reply.send(Err(Error::NotConnected));
            }
            Command::CancelMonitor { id, reply } => {
                self.monitors.remove(&id);
                let _ = reply.send(Ok(Json::Null));
            }
            Command::Shutdown => {}
        }
    }

    async fn reconnect(&mut self, backoff: &mut Duration) -> Option<BoxedStream> {
        loop {
            let wake = Instant::now() + *backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(Command::Shutdown) | None => return None,
                        Some(cmd) => self.refuse(cmd),
                    },
                }
            }
            match open(&self.config.endpoint).await {
                Ok(stream) => return Some(stream),
                Err(err) => {
                    tracing::debug!(%err, backoff = ?*backoff, "OVSDB reconnect failed");
                    *backoff = (*backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    fn request_json(&mut self, method: &str, params: Json) -> (u64, Json) {
        let id = self.next_id;
        self.next_id += 1;
        (id, json!({"id": id, "method": method, "params": params}))
    }

    async fn serve(&mut self, stream: BoxedStream) -> Exit {
        let mut conn = Framed::new(stream, JsonCodec::new(self.config.max_message_size));
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let exit = self.serve_inner(&mut conn, &mut pending).await;
        let reason = match &exit {
            Exit::Shutdown => "client shut down".to_string(),
            Exit::Lost(reason) => reason.clone(),
        };
        for (_, p) in pending.drain() {
            match p {
                Pending::User { method, reply, .. } => {
                    let _ = reply.send(Err(Error::Disconnected {
                        method,
                        reason: reason.clone(),
                    }));
                }
                Pending::MonitorStart { reply, .. } => {
                    let _ = reply.send(Err(Error::Disconnected {
                        method: "monitor".into(),
                        reason: reason.clone(),
                    }));
                }
                Pending::MonitorRestart { .. } | Pending::LockRestart { .. } | Pending::Ignore => {}
            }
        }
        exit
    }

    async fn send(conn: &mut Conn, message: Json) -> std::result::Result<(), String> {
        conn.send(message)
            .await
            .map_err(|e| format!("sending failed: {e}"))
    }

    async fn serve_inner(&mut self, conn: &mut Conn, pending: &mut HashMap<u64, Pending>) -> Exit {
        // Re-establish monitors and locks of a previous connection.
        let mut restarts = 0usize;
        let restart_monitors: Vec<(String, &'static str, Json)> = self
            .monitors
            .values()
            .map(|m| (m.id.clone(), m.version.method(), m.params()))
            .collect();
        for (mon_id, method, params) in restart_monitors {
            let (id, message) = self.request_json(method, params);
            pending.insert(id, Pending::MonitorRestart { id: mon_id });
            restarts += 1;
            if let Err(reason) = Self::send(conn, message).await {
                return Exit::Lost(reason);
            }
        }
        let locks: Vec<String> = self.locks.iter().cloned().collect();
        for name in locks {
            let (id, message) = self.request_json("lock", json!([name]));
            pending.insert(id, Pending::LockRestart { name });
            if let Err(reason) = Self::send(conn, message).await {
                return Exit::Lost(reason);
            }
        }
        if restarts == 0 {
            self.announce_connected();
        }

        let probe_interval = self.config.inactivity_probe;
        let far_future = Duration::from_secs(86400 * 365);
        let mut probe_at = Instant::now() + probe_interval.unwrap_or(far_future);
        let mut probe_outstanding = false;
        loop {
            let event = tokio::select! {
                cmd = self.cmd_rx.recv() => Event::Command(cmd),
                msg = conn.next() => Event::Message(msg),
                _ = tokio::time::sleep_until(probe_at) => Event::Probe,
            };
            match event {
                Event::Command(None | Some(Command::Shutdown)) => return Exit::Shutdown,
                Event::Command(Some(cmd)) => {
                    if let Err(reason) = self.handle_command(cmd, conn, pending).await {
                        return Exit::Lost(reason);
                    }
                }
                Event::Message(None) => {
                    return Exit::Lost("connection closed by the server".into());
                }
                Event::Message(Some(Err(err))) => return Exit::Lost(err.to_string()),
                Event::Message(Some(Ok(message))) => {
                    probe_outstanding = false;
                    probe_at = Instant::now() + probe_interval.unwrap_or(far_future);
                    match self
                        .handle_message(message, conn, pending, &mut restarts)
                        .await
                    {
                        Ok(()) => {}
                        Err(reason) => return Exit::Lost(reason),
                    }
                }
                Event::Probe => {
                    if probe_outstanding {
                        return Exit::Lost("no reply to the inactivity probe".into());
                    }
                    let (id, message) = self.request_json("echo", json!([]));
                    pending.insert(id, Pending::Ignore);
                    if let Err(reason) = Self::send(conn, message).await {
                        return Exit::Lost(reason);
                    }
                    probe_outstanding = true;
                    probe_at = Instant::now() + probe_interval.unwrap_or(far_future);
                }
            }
        }
    }

    fn announce_connected(&self) {
        self.shared.publish(
            Some(self.generation),
            Some(ConnectionEvent::Connected {
                generation: self.generation,
            }),
        );
    }

    async fn handle_command(
        &mut self,
        cmd: Command,
        conn: &mut Conn,
        pending: &mut HashMap<u64, Pending>,
    ) -> std::result::Result<(), String> {
        let (id, message, entry) = match cmd {
            Command::Request {
                method,
                params,
                reply,
            } => {
                let name = params.get(0).and_then(Json::as_str).map(str::to_string);
                let mut lock = None;
                match (method.as_str(), name) {
                    ("lock" | "steal", Some(name)) => {
                        self.locks.insert(name.clone());
                        lock = Some(name);
                    }
                    ("unlock", Some(name)) => {
                        self.locks.remove(&name);
                    }
                    _ => {}
                }
                let (id, message) = self.request_json(&method, params);
                (
                    id,
                    message,
                    Pending::User {
                        method,
                        reply,
                        lock,
                    },
                )
            }
            Command::Monitor { spec, reply } => {
                let (id, message) = self.request_json(spec.version.method(), spec.params());
                (id, message, Pending::MonitorStart { spec, reply })
            }
            Command::CancelMonitor { id: mon_id, reply } => {
                self.monitors.remove(&mon_id);
                let (id, message) = self.request_json("monitor_cancel", json!([mon_id]));
                (
                    id,
                    message,
                    Pending::User {
                        method: "monitor_cancel".into(),
                        reply,
                        lock: None,
                    },
                )
            }
            Command::Shutdown => return Ok(()),
        };
        pending.insert(id, entry);
        Self::send(conn, message).await
    }

    async fn handle_message(
        &mut self,
        message: Json,
        conn: &mut Conn,
        pending: &mut HashMap<u64, Pending>,
        restarts: &mut usize,
    ) -> std::result::Result<(), String> {
        let Json::Object(object) = &message else {
            return Err(format!("message is not a JSON object: {}", short(&message)));
        };
        if let Some(method) = object.get("method") {
            let method = method
                .as_str()
                .ok_or_else(|| format!("method is not a string: {}", short(&message)))?;
            let params = object.get("params").cloned().unwrap_or(Json::Null);
            let id = object.get("id").cloned().unwrap_or(Json::Null);
            if !id.is_null() {
                // A request from the server.
                let reply = if method == "echo" {
                    json!({"id": id, "result": params, "error": null})
                } else {
                    tracing::warn!(method, "unknown request from OVSDB server");
                    json!({"id": id, "result": null, "error": "unknown method"})
                };
                return Self::send(conn, reply).await;
            }
            if let Some(abandoned) = self.handle_notification(method, &params)? {
                // Its subscriber is gone: tell the server to stop sending.
                let (id, message) = self.request_json("monitor_cancel", json!([abandoned]));
                pending.insert(id, Pending::Ignore);
                return Self::send(conn, message).await;
            }
            return Ok(());
        }
        let Some(id) = object.get("id") else {
            return Err(format!(
                "message is neither request nor reply: {}",
                short(&message)
            ));
        };
        let Some(entry) = id.as_u64().and_then(|id| pending.remove(&id)) else {
            tracing::warn!(%id, "OVSDB reply to an unknown request id; ignored");
            return Ok(());
        };
        let result = match (object.get("error"), object.get("result")) {
            (Some(error), _) if !error.is_null() => Err(rpc_error(error)),
            (_, Some(result)) => Ok(result.clone()),
            _ => Err((
                "malformed".to_string(),
                Some("reply without result or error".into()),
            )),
        };
        match entry {
            Pending::User {
                method,
                reply,
                lock,
            } => {
                if let (Some(lock), Err(_)) = (&lock, &result) {
                    self.locks.remove(lock);
                }
                let outcome = result.map_err(|(error, details)| {
                    if error == "malformed" {
                        Error::MalformedReply {
                            method: method.clone(),
                            reason: details.clone().unwrap_or_default(),
                        }
                    } else {
                        Error::Rpc {
                            method: method.clone(),
                            error,
                            details,
                        }
                    }
                });
                let _ = reply.send(outcome);
            }
            Pending::MonitorStart { spec, reply } => {
                let method = spec.version.method().to_string();
                let outcome = match result {
                    Err((error, details)) => Err(Error::Rpc {
                        method,
                        error,
                        details,
                    }),
                    Ok(result) => match spec.version.parse(&result) {
                        Err(reason) => Err(Error::MalformedReply { method, reason }),
                        Ok(updates) => {
                            let _ = spec.tx.send(MonitorEvent {
                                reset: true,
                                updates,
                            });
                            self.monitors.insert(spec.id.clone(), spec);
                            Ok(())
                        }
                    },
                };
                let _ = reply.send(outcome);
            }
            Pending::MonitorRestart { id } => {
                *restarts = restarts.saturating_sub(1);
                match result {
                    Err((error, details)) => {
                        tracing::error!(monitor = %id, error, ?details, "re-establishing OVSDB monitor failed; dropping it");
                        self.monitors.remove(&id);
                    }
                    Ok(result) => {
                        if let Some(spec) = self.monitors.get(&id) {
                            let updates = spec.version.parse(&result).map_err(|reason| {
                                format!("malformed reply to re-issued monitor: {reason}")
                            })?;
                            let _ = spec.tx.send(MonitorEvent {
                                reset: true,
                                updates,
                            });
                        }
                    }
                }
                if *restarts == 0 {
                    self.announce_connected();
                }
            }
            Pending::LockRestart { name } => {
                if let Ok(result) = result
                    && result.get("locked").and_then(Json::as_bool) == Some(true)
                {
                    let _ = self.shared.locks.send(LockEvent::Locked(name));
                }
            }
            Pending::Ignore => {}
        }
        Ok(())
    }

    /// Dispatches a notification. Returns the id of a monitor whose
    /// subscriber has gone away (to be cancelled).
    fn handle_notification(
        &mut self,
        method: &str,
        params: &Json,
    ) -> std::result::Result<Option<String>, String> {
        match method {
            "update" | "update2" => {
                let (Some(mon_id), Some(updates)) = (params.get(0), params.get(1)) else {
                    return Err(format!("{method} notification without [id, updates]"));
                };
                let mon_id = mon_id.as_str().unwrap_or_default();
                let Some(spec) = self.monitors.get(mon_id) else {
                    tracing::debug!(monitor = %mon_id, "update for an unknown monitor; ignored");
                    return Ok(None);
                };
                if spec.version.notification() != method {
                    return Err(format!(
                        "{method} notification for a {} monitor",
                        spec.version.method()
                    ));
                }
                let updates = spec
                    .version
                    .parse(updates)
                    .map_err(|reason| format!("malformed {method} notification: {reason}"))?;
                if spec
                    .tx
                    .send(MonitorEvent {
                        reset: false,
                        updates,
                    })
                    .is_err()
                {
                    self.monitors.remove(mon_id);
                    return Ok(Some(mon_id.to_string()));
                }
                Ok(None)
            }
            "locked" | "stolen" => {
                let Some(name) = params.get(0).and_then(Json::as_str) else {
                    return Err(format!("{method} notification without a lock name"));
                };
                let event = if method == "locked" {
                    LockEvent::Locked(name.to_string())
                } else {
                    self.locks.remove(name);
                    LockEvent::Stolen(name.to_string())
                };
                let _ = self.shared.locks.send(event);
                Ok(None)
            }
            other => {
                tracing::debug!(method = other, "unknown OVSDB notification; ignored");
                Ok(None)
            }
        }
    }
}

fn rpc_error(error: &Json) -> (String, Option<String>) {
    match error {
        Json::String(s) => (s.clone(), None),
        Json::Object(o) => (
            o.get("error")
                .and_then(Json::as_str)
                .unwrap_or("unknown error")
                .to_string(),
            o.get("details").map(|d| match d {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            }),
        ),
        other => (other.to_string(), None),
    }
}

fn short(json: &Json) -> String {
    let mut text = json.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
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
