//! A client for the unixctl (`ovs-appctl`) control socket of an OVS daemon.
//!
//! The socket speaks JSON-RPC 1.0 with the same framing as OVSDB (JSON
//! values back to back, [`JsonCodec`]): a request
//! `{"id":N,"method":"revalidator/wait","params":[]}` gets one reply
//! `{"id":N,"result":"...","error":null}` (or a string `error`). Every
//! parameter is a string, as `ovs-appctl` sends them.
//!
//! The socket of `ovs-vswitchd` is `<rundir>/ovs-vswitchd.<pid>.ctl` with the
//! pid read from `<rundir>/ovs-vswitchd.pid` (the daemon's default), or
//! `<rundir>/ovs-vswitchd.ctl` when it was started with that `--unixctl` path;
//! [`Unixctl::for_daemon`] tries both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::ovsdb::{CodecError, JsonCodec};

/// Largest reply accepted (the output of a dump command can be long).
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Errors of a unixctl call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No control socket was found for the daemon.
    #[error("no unixctl socket for {daemon} in {rundir} (tried {tried:?}); is the daemon running?")]
    NotFound {
        /// The daemon's name, e.g. `ovs-vswitchd`.
        daemon: String,
        /// The run directory searched.
        rundir: PathBuf,
        /// The paths tried.
        tried: Vec<PathBuf>,
    },
    /// Connecting to the socket failed.
    #[error("cannot connect to unixctl socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// Sending, receiving or framing failed.
    #[error("unixctl {method} on {path}: {source}")]
    Codec {
        /// The command.
        method: String,
        /// The socket.
        path: PathBuf,
        /// The reason.
        source: CodecError,
    },
    /// The daemon closed the connection before it replied.
    #[error("unixctl {method} on {path}: connection closed before the reply")]
    Closed {
        /// The command.
        method: String,
        /// The socket.
        path: PathBuf,
    },
    /// No reply within the deadline.
    #[error("unixctl {method} on {path}: no reply within {timeout:?}")]
    Timeout {
        /// The command.
        method: String,
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// The daemon answered with an error (e.g. an unknown command).
    #[error("unixctl {method} failed: {message}")]
    Command {
        /// The command.
        method: String,
        /// The daemon's error text.
        message: String,
    },
    /// The reply is not a JSON-RPC reply to the request.
    #[error("unixctl {method}: malformed reply {reply}")]
    Malformed {
        /// The command.
        method: String,
        /// The reply as received.
        reply: String,
    },
}

/// The control socket of one OVS daemon.
#[derive(Debug, Clone)]
pub struct Unixctl {
    path: PathBuf,
}

impl Unixctl {
    /// The control socket at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Finds the control socket of `daemon` (e.g. `ovs-vswitchd`) in `rundir`:
    /// `<daemon>.<pid>.ctl` with the pid from `<daemon>.pid`, else
    /// `<daemon>.ctl`. Looked up on each call, so a restarted daemon is found.
    pub fn for_daemon(rundir: &Path, daemon: &str) -> Result<Self, Error> {
        let mut tried = Vec::new();
        if let Ok(pid) = std::fs::read_to_string(rundir.join(format!("{daemon}.pid"))) {
            let pid = pid.trim();
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                let path = rundir.join(format!("{daemon}.{pid}.ctl"));
                if path.exists() {
                    return Ok(Self::at(path));
                }
                tried.push(path);
            }
        }
        let path = rundir.join(format!("{daemon}.ctl"));
        if path.exists() {
            return Ok(Self::at(path));
        }
        tried.push(path);
        Err(Error::NotFound {
            daemon: daemon.to_string(),
            rundir: rundir.to_path_buf(),
            tried,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one command (what `ovs-appctl <method> <params...>` runs) and
    /// returns its output text.
    pub async fn call(
        &self,
        method: &str,
        params: &[&str],
        timeout: Duration,
    ) -> Result<String, Error> {
        tokio::time::timeout(timeout, self.call_inner(method, params))
            .await
            .map_err(|_| Error::Timeout {
                method: method.to_string(),
                path: self.path.clone(),
                timeout,
            })?
    }

    async fn call_inner(&self, method: &str, params: &[&str]) -> Result<String, Error> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| Error::Connect {
                path: self.path.clone(),
                source,
            })?;
        let codec_err = |source| Error::Codec {
            method: method.to_string(),
            path: self.path.clone(),
            source,
        };
        let mut framed = Framed::new(stream, JsonCodec::new(MAX_REPLY));
        framed
            .send(request(method, params))
            .await
            .map_err(codec_err)?;
        let reply = framed
            .next()
            .await
            .ok_or_else(|| Error::Closed {
                method: method.to_string(),
                path: self.path.clone(),
            })?
            .map_err(codec_err)?;
        parse_reply(method, &reply)
    }
}

/// The request message of one command.
pub fn request(method: &str, params: &[&str]) -> Value {
    json!({"id": 0, "method": method, "params": params})
}

/// The output of a reply, or the daemon's error.
pub fn parse_reply(method: &str, reply: &Value) -> Result<String, Error> {
    let malformed = || Error::Malformed {
        method: method.to_string(),
        reply: reply.to_string(),
    };
    if reply.get("id") != Some(&json!(0)) {
        return Err(malformed());
    }
    match (reply.get("error"), reply.get("result")) {
        (Some(Value::String(message)), _) => Err(Error::Command {
            method: method.to_string(),
            message: message.trim_end().to_string(),
        }),
        (Some(Value::Null) | None, Some(Value::String(output))) => Ok(output.clone()),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_json_rpc_with_string_params() {
        assert_eq!(
            request("revalidator/wait", &[]).to_string(),
            r#"{"id":0,"method":"revalidator/wait","params":[]}"#
        );
        assert_eq!(
            request("dpctl/flush-conntrack", &["zone=1"]).to_string(),
            r#"{"id":0,"method":"dpctl/flush-conntrack","params":["zone=1"]}"#
        );
    }

    #[test]
    fn replies_give_output_or_the_daemons_error() {
        let ok = json!({"id": 0, "result": "ovs-vswitchd (Open vSwitch) 3.1.0\n", "error": null});
        assert_eq!(
            parse_reply("version", &ok).unwrap(),
            "ovs-vswitchd (Open vSwitch) 3.1.0\n"
        );
        let err = json!({"id": 0, "result": null, "error": "\"nope\" is not a valid command\n"});
        let e = parse_reply("nope", &err).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unixctl nope failed: \"nope\" is not a valid command"
        );
        for bad in [
            json!({"id": 1, "result": "x", "error": null}),
            json!({"id": 0, "result": 3, "error": null}),
            json!([1, 2]),
        ] {
            assert!(
                matches!(parse_reply("m", &bad), Err(Error::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_daemon_names_the_paths_tried() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "4242\n").unwrap();
        let e = Unixctl::for_daemon(dir.path(), "ovs-vswitchd").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ovs-vswitchd.4242.ctl"), "{text}");
        assert!(text.contains("ovs-vswitchd.ctl"), "{text}");
    }
}
