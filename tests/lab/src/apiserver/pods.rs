//! `pods/exec` and `pods/log`: what kube-apiserver hands to the kubelet, handed here to a
//! [`PodRuntime`] (the netns lab's: [`crate::cluster::pods::LabPods`]).
//!
//! Exec speaks kubectl's WebSocket protocol (`v5.channel.k8s.io`, or `v4`): one binary message
//! per chunk, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; in
//! v5, `255 <channel>` closes a channel). When the command ends, the error channel carries a
//! `metav1.Status`: `Success`, or `Failure` with reason `NonZeroExitCode` and the exit code
//! as the cause `ExitCode`, which kubectl exits with. SPDY (kubectl's fallback) is refused. A
//! TTY (`-t`) gets no terminal: the command runs with pipes, its stderr sent on stdout.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::http::HttpState;
use super::websocket::{self, Message, Outgoing};

/// What the API server asks of the node side ("kubelet") for a pod's exec and logs.
pub trait PodRuntime: Send + Sync + std::fmt::Debug {
    /// The command running `argv` in `container` of `pod` (the stored object): in the lab,
    /// inside the pod's network namespace. `Err` is the reason the pod cannot run one.
    fn exec_command(
        &self,
        pod: &Value,
        container: &str,
        argv: &[String],
    ) -> Result<std::process::Command, String>;

    /// The log file of `container` of `pod`; `Err` is the reason there is none.
    fn log_file(&self, pod: &Value, container: &str) -> Result<PathBuf, String>;
}

/// The exec subprotocols served, preferred first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// v5: `[CLOSE, channel]` half-closes a channel.
const CLOSE: u8 = 255;

/// How often a followed log file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long the server waits for the client's close frame after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `/api/v1/namespaces/NS/pods/NAME/{exec,log}`: namespace, name and subresource.
pub fn pod_subresource(path: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("exec" | "log"),
        ] => Some((ns, name, sub)),
        _ => None,
    }
}

/// The query as pairs (exec repeats `command`).
fn query_pairs(req: &Request) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default()
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == key && (v == "1" || v.eq_ignore_ascii_case("true")))
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The pod, its container (the first one unless named) and the runtime.
fn resolve(
    state: &HttpState,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(Value, String, Arc<dyn PodRuntime>), ApiError> {
    let rt = state
        .store
        .resource_type("", "v1", "pods")
        .ok_or_else(|| ApiError::no_route("pods"))?;
    let pod = state.store.get(&rt, ns, name)?;
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let container = match container {
        Some(c) if names.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => names
            .first()
            .map(|c| (*c).to_string())
            .ok_or_else(|| ApiError::bad_request(format!("pod {name} has no containers")))?,
    };
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let runtime = state.pods.clone().ok_or_else(|| {
        ApiError::bad_request(
            "this lab API server runs no pods (no pod runtime: `switchyard-lab up` starts it with one)",
        )
    })?;
    Ok((pod, container, runtime))
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

/// The subprotocol to answer with, from `Sec-WebSocket-Protocol`.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    EXEC_PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

/// `GET|POST .../pods/NAME/exec`: upgrades to WebSocket and runs the command.
pub async fn exec(
    state: &HttpState,
    ns: &str,
    name: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&req);
    let argv: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if argv.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let (stdin, stdout, stderr, tty) = (
        flag(&pairs, "stdin"),
        flag(&pairs, "stdout"),
        flag(&pairs, "stderr"),
        flag(&pairs, "tty"),
    );
    if !(stdin || stdout || stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let (pod, container, runtime) = resolve(state, ns, name, value(&pairs, "container"))?;
    let phase = phase(&pod);
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found (\"{container}\"): pod {name} is {phase}"
        )));
    }
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (true, Some(key), Some(protocol)) = (is_websocket, key, choose_protocol(headers)) else {
        return Err(ApiError::bad_request(format!(
            "the lab API server serves exec over WebSocket only, with subprotocol {}",
            EXEC_PROTOCOLS.join(" or ")
        )));
    };
    let cmd = runtime
        .exec_command(&pod, &container, &argv)
        .map_err(ApiError::bad_request)?;
    let upgrade = hyper::upgrade::on(&mut req);
    let what = format!("{ns}/{name} {argv:?}");
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let opts = Streams {
                    stdin,
                    stdout,
                    stderr,
                    tty,
                };
                session(TokioIo::new(upgraded), cmd, &argv, opts).await;
                tracing::debug!(exec = %what, "exec session ended");
            }
            Err(e) => tracing::warn!(exec = %what, error = %e, "exec upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, websocket::accept_key(&key))
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[derive(Debug, Clone, Copy)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The error channel's Status for an exit status.
pub fn exit_status(argv: &[String], status: std::process::ExitStatus) -> Value {
    if status.success() {
        return json!({"metadata": {}, "status": "Success"});
    }
    let code = status
        .code()
        .or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            status.signal().map(|s| 128 + s)
        })
        .unwrap_or(1);
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
    })
}

async fn pump<R: AsyncRead + Unpin>(mut r: R, channel: u8, tx: mpsc::Sender<Outgoing>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                if tx.send(Outgoing::Binary(buf[..=n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the command over the upgraded connection until it ends (or the client goes).
async fn session<S>(io: S, cmd: std::process::Command, argv: &[String], opts: Streams)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read_half, mut write_half) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let close = matches!(msg, Outgoing::Close(_));
            if websocket::write(&mut write_half, &msg).await.is_err() || close {
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(if opts.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("cannot start {argv:?}: {e}")});
            let mut msg = vec![ERROR];
            msg.extend(serde_json::to_vec(&status).unwrap_or_default());
            let _ = tx.send(Outgoing::Binary(msg)).await;
            let _ = tx.send(Outgoing::Close(websocket::CLOSE_NORMAL)).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    // The client side: stdin, stdin's close, pings, the client's close.
    let mut child_stdin = child.stdin.take();
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let ping_tx = tx.clone();
    let reader = tokio::spawn(async move {
        let mut reader = websocket::Reader::new(read_half);
        let mut gone = Some(gone_tx);
        loop {
            match reader.next().await {
                Ok(Message::Data(d)) => match d.as_slice() {
                    [STDIN, data @ ..] => {
                        if let Some(w) = child_stdin.as_mut()
                            && w.write_all(data).await.is_err()
                        {
                            child_stdin = None;
                        }
                    }
                    [CLOSE, STDIN] => child_stdin = None,
                    _ => {}
                },
                Ok(Message::Ping(p)) => {
                    let _ = ping_tx.send(Outgoing::Pong(p)).await;
                }
                Ok(Message::Pong) => {}
                Ok(Message::Close(_)) | Err(_) => {
                    if let Some(g) = gone.take() {
                        let _ = g.send(());
                    }
                    return;
                }
            }
        }
    });
    let out_channel = |ch: u8| if opts.tty { STDOUT } else { ch };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let sink = if opts.stdout { Some(tx.clone()) } else { None };
        pumps.push(tokio::spawn(drain(out, out_channel(STDOUT), sink)));
    }
    if let Some(err) = child.stderr.take() {
        let wanted = opts.stderr || opts.tty;
        let sink = if wanted { Some(tx.clone()) } else { None };
        pumps.push(tokio::spawn(drain(err, out_channel(STDERR), sink)));
    }
    let finished = async {
        for p in pumps {
            let _ = p.await;
        }
        child.wait().await
    };
    tokio::select! {
        status = finished => {
            let status = match status {
                Ok(s) => exit_status(argv, s),
                Err(e) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                    "message": format!("waiting for {argv:?}: {e}")}),
            };
            let mut msg = vec![ERROR];
            msg.extend(serde_json::to_vec(&status).unwrap_or_default());
            let _ = tx.send(Outgoing::Binary(msg)).await;
            let _ = tx.send(Outgoing::Close(websocket::CLOSE_NORMAL)).await;
            drop(tx);
            let _ = writer.await;
            // The client answers the close; then the connection goes.
            let _ = tokio::time::timeout(CLOSE_WAIT, reader).await;
        }
        _ = &mut gone_rx => {
            // The client left (Ctrl-C): the command goes too (kill_on_drop).
            tracing::debug!(?argv, "exec client closed before the command ended");
            drop(tx);
            writer.abort();
        }
    }
}

/// Forwards a pipe to a channel (or discards it, if the client did not ask for it).
async fn drain<R: AsyncRead + Unpin>(r: R, channel: u8, sink: Option<mpsc::Sender<Outgoing>>) {
    match sink {
        Some(tx) => pump(r, channel, tx).await,
        None => {
            let _ =
                tokio::io::copy(&mut tokio::io::BufReader::new(r), &mut tokio::io::sink()).await;
        }
    }
}

/// The last `n` lines of `text`.
fn tail_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// `GET .../pods/NAME/log`: the container's log file (`tailLines`, `limitBytes`, `follow`).
pub async fn log(
    state: &HttpState,
    ns: &str,
    name: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&req);
    let (pod, container, runtime) = resolve(state, ns, name, value(&pairs, "container"))?;
    if flag(&pairs, "previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let number = |key: &str| -> Result<Option<usize>, ApiError> {
        value(&pairs, key)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .and_then(|n| usize::try_from(n.max(0)).ok())
                    .ok_or_else(|| ApiError::bad_request(format!("{key}: {v:?} is not a number")))
            })
            .transpose()
    };
    let tail = number("tailLines")?;
    let limit = number("limitBytes")?;
    let path = runtime
        .log_file(&pod, &container)
        .map_err(ApiError::bad_request)?;
    let text = match tokio::fs::read(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if phase(&pod) != "Running" {
                return Err(ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
                )));
            }
            Vec::new()
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "reading the log of {ns}/{name}: {e}"
            )));
        }
    };
    let offset = text.len() as u64;
    let mut first = tail
        .map_or(text.as_slice(), |n| tail_lines(&text, n))
        .to_vec();
    if let Some(l) = limit {
        first.truncate(l);
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain");
    if !flag(&pairs, "follow") || limit.is_some() {
        return response
            .body(Body::from(first))
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    let follow = Follow {
        path,
        offset,
        first: Some(first),
        store: state.store.clone(),
        key: (ns.to_string(), name.to_string()),
        uid: pod.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        shutdown: state.shutdown.clone(),
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        f.next()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), f))
    });
    response
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A followed log: new bytes of the file until the pod (or the file) is gone.
struct Follow {
    path: PathBuf,
    offset: u64,
    first: Option<Vec<u8>>,
    store: Arc<super::store::Store>,
    key: (String, String),
    uid: Value,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Follow {
    async fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Some(first);
        }
        loop {
            if *self.shutdown.borrow() || !self.pod_exists() {
                return None;
            }
            match self.read_new().await {
                Ok(Some(chunk)) => return Some(chunk),
                Ok(None) => {}
                Err(_) => return None,
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    fn pod_exists(&self) -> bool {
        let Some(rt) = self.store.resource_type("", "v1", "pods") else {
            return false;
        };
        self.store
            .get(&rt, &self.key.0, &self.key.1)
            .is_ok_and(|p| p.pointer("/metadata/uid") == Some(&self.uid))
    }

    /// New bytes since the offset; `Ok(None)` when there are none yet (or no file yet).
    async fn read_new(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut f = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata().await?.len();
        if len < self.offset {
            // Truncated or replaced (the pod restarted): from the start.
            self.offset = 0;
        }
        if len == self.offset {
            return Ok(None);
        }
        f.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let mut buf = Vec::new();
        f.take(len - self.offset).read_to_end(&mut buf).await?;
        self.offset += buf.len() as u64;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn exit_codes_become_the_error_channel_status() {
        use std::os::unix::process::ExitStatusExt;
        let argv = vec!["sh".to_string()];
        let ok = exit_status(&argv, std::process::ExitStatus::from_raw(0));
        assert_eq!(ok["status"], "Success");
        let failed = exit_status(&argv, std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let killed = exit_status(&argv, std::process::ExitStatus::from_raw(9));
        assert_eq!(killed["details"]["causes"][0]["message"], "137");
    }

    #[test]
    fn only_exec_and_log_of_pods_are_taken() {
        assert_eq!(
            pod_subresource("/api/v1/namespaces/default/pods/web/exec"),
            Some(("default", "web", "exec"))
        );
        assert_eq!(
            pod_subresource("/api/v1/namespaces/default/pods/web/log"),
            Some(("default", "web", "log"))
        );
        assert_eq!(pod_subresource("/api/v1/namespaces/default/pods/web"), None);
        assert_eq!(
            pod_subresource("/api/v1/namespaces/default/services/web/log"),
            None
        );
    }
}
