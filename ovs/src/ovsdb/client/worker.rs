//! The task that owns a [`Client`](super::Client)'s socket: it matches
//! replies to requests, answers and sends `echo`, routes notifications,
//! and reconnects, re-issuing monitors and locks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::super::codec::JsonCodec;
use super::super::error::Error;
use super::super::monitor::MonitorEvent;
use super::super::types::short_json;
use super::{
    BoxedStream, ClientConfig, Command, ConnectionEvent, LockEvent, MonitorSpec, Pending, Shared,
    open,
};

enum Exit {
    Shutdown,
    Lost(String),
}

enum Event {
    Command(Option<Command>),
    Message(Option<std::result::Result<Json, super::super::codec::CodecError>>),
    Probe,
}

pub(super) struct Worker {
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
    pub(super) fn new(
        config: ClientConfig,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
    ) -> Worker {
        Worker {
            config,
            cmd_rx,
            shared,
            monitors: BTreeMap::new(),
            locks: BTreeSet::new(),
            next_id: 0,
            generation: 0,
        }
    }

    pub(super) async fn run(mut self, first: BoxedStream) {
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
            return Err(format!(
                "message is not a JSON object: {}",
                short_json(&message)
            ));
        };
        if let Some(method) = object.get("method") {
            let method = method
                .as_str()
                .ok_or_else(|| format!("method is not a string: {}", short_json(&message)))?;
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
                short_json(&message)
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
