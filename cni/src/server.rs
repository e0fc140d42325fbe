//! The agent side: a handler trait for the verbs and [`serve`], which owns the
//! socket, the framing and one task per connection.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

use crate::error::{CniError, ErrorCode};
use crate::protocol::{CniReply, CniRequest, CniServerCodec, Verb};
use crate::result::CniResult;

/// What the agent implements: one method per verb.
///
/// Each call runs in its own tokio task; a panic becomes error 199 for that
/// request only. A call keeps running if the binary gives up waiting (its
/// deadline passed), so every verb must be idempotent: the runtime retries ADD
/// after DEL, and retries DEL until it succeeds.
pub trait CniHandler: Send + Sync + 'static {
    /// ADD: create the pod's interface and return what was created (host
    /// interface, pod interface with `sandbox` = `CNI_NETNS`, IPs, routes, DNS).
    /// Do not merge `config.prev_result`: the binary appends this result to it.
    fn add(&self, req: CniRequest) -> impl Future<Output = Result<CniResult, CniError>> + Send;
    /// DEL: remove everything ADD created; succeed if it is already gone.
    fn del(&self, req: CniRequest) -> impl Future<Output = Result<(), CniError>> + Send;
    /// CHECK: compare the attachment with `config.prev_result` (error 105 if it differs).
    fn check(&self, req: CniRequest) -> impl Future<Output = Result<(), CniError>> + Send;
    /// STATUS: `Ok` if ADD can be served; else error 50 or 51.
    fn status(&self, req: CniRequest) -> impl Future<Output = Result<(), CniError>> + Send;
    /// GC: release everything not in `config.valid_attachments` (always `Some` for GC).
    fn gc(&self, req: CniRequest) -> impl Future<Output = Result<(), CniError>> + Send;
}

/// Binds the agent's socket at `path` (call inside a tokio runtime): creates the
/// parent directory, replaces a stale socket left by a previous agent (one
/// nobody answers on), refuses if another agent is serving or if `path` is not
/// a socket, and makes the socket accessible to root only (mode 0600; the
/// runtime executes the plugin as root).
pub fn bind_agent_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AddrInUse,
                        format!(
                            "{} is served by another process (another switchyard-agent?)",
                            path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale CNI socket");
                    std::fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not touching it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves CNI requests on `listener` until accepting fails; one task per connection.
pub async fn serve<H: CniHandler>(listener: UnixListener, handler: Arc<H>) -> std::io::Result<()> {
    serve_until(listener, handler, std::future::pending::<()>()).await
}

/// Limits of the agent socket against misbehaving clients.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// User ids allowed to make requests (checked with `SO_PEERCRED`); the
    /// socket's mode already keeps others out, this is the second fence.
    /// Default: root and the serving process's own user.
    pub allowed_uids: Vec<u32>,
    /// A connection must deliver its request within this time, else it is
    /// closed.
    pub request_deadline: std::time::Duration,
    /// At most this many connections may wait for their request at once;
    /// a new connection beyond it closes the one waiting longest (a real
    /// CNI binary sends its request right after connecting, so a flood of
    /// idle connections cannot keep pods from starting).
    pub max_waiting: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        use std::os::unix::fs::MetadataExt;
        let mut allowed_uids = vec![0];
        // /proc/self belongs to the process's effective user.
        if let Ok(me) = std::fs::metadata("/proc/self")
            && me.uid() != 0
        {
            allowed_uids.push(me.uid());
        }
        Self {
            allowed_uids,
            request_deadline: std::time::Duration::from_secs(10),
            max_waiting: 128,
        }
    }
}

/// Connections that have not delivered their request yet, oldest first.
#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    queue: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

impl Waiting {
    fn lock(this: &std::sync::Mutex<Self>) -> std::sync::MutexGuard<'_, Self> {
        this.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Registers a new waiting connection, closing the oldest ones beyond `max`.
    fn add(this: &std::sync::Mutex<Self>, max: usize) -> (u64, Arc<tokio::sync::Notify>) {
        let mut w = Self::lock(this);
        while w.queue.len() >= max.max(1) {
            if let Some((id, evicted)) = w.queue.pop_front() {
                tracing::warn!(
                    connection = id,
                    "too many CNI connections waiting for their request; closing the oldest"
                );
                evicted.notify_one();
            }
        }
        w.next_id += 1;
        let id = w.next_id;
        let notify = Arc::new(tokio::sync::Notify::new());
        w.queue.push_back((id, notify.clone()));
        (id, notify)
    }
    fn remove(this: &std::sync::Mutex<Self>, id: u64) {
        Self::lock(this).queue.retain(|(i, _)| *i != id);
    }
}

/// [`serve`] that returns `Ok` once `shutdown` completes (connections already
/// accepted finish on their own), with the default [`ServeLimits`].
pub async fn serve_until<H: CniHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_limits(listener, handler, ServeLimits::default(), shutdown).await
}

/// [`serve_until`] with explicit [`ServeLimits`].
pub async fn serve_with_limits<H: CniHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let limits = Arc::new(limits);
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let handler = handler.clone();
                let limits = limits.clone();
                let waiting = waiting.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler, &limits, &waiting).await {
                        tracing::warn!(error = %e, "CNI connection failed");
                    }
                });
            }
            // Per-connection failures (the peer went away before accept
            // completed): keep serving.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                tracing::debug!(error = %e, "accept");
            }
            // Out of file descriptors: connections close as they finish or
            // time out, so wait a little instead of giving up the socket.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!(error = %e, "cannot accept CNI connections for now");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Answers the request of one connection (the binary sends one; further
/// requests on the same connection are served too, each under the deadline).
async fn serve_connection<H: CniHandler>(
    stream: UnixStream,
    handler: Arc<H>,
    limits: &ServeLimits,
    waiting: &std::sync::Mutex<Waiting>,
) -> Result<(), crate::protocol::FrameError> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let mut framed = Framed::new(stream, CniServerCodec::default());
    if !uid.is_some_and(|uid| limits.allowed_uids.contains(&uid)) {
        tracing::warn!(
            ?uid,
            "CNI request from a user that may not make one; refused"
        );
        let refusal = CniError::new(
            ErrorCode::IoFailure,
            "permission denied",
            format!(
                "switchyard-agent serves CNI requests from uid {:?} only; this client runs as uid {}",
                limits.allowed_uids,
                uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
            ),
        );
        framed.send(CniReply::failure(refusal)).await?;
        return Ok(());
    }
    loop {
        let (id, evicted) = Waiting::add(waiting, limits.max_waiting);
        let next = tokio::select! {
            next = tokio::time::timeout(limits.request_deadline, framed.next()) => next,
            () = evicted.notified() => Ok(None),
        };
        Waiting::remove(waiting, id);
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) => {
                tracing::debug!(
                    connection = id,
                    "no CNI request within the deadline; closing"
                );
                return Ok(());
            }
        };
        let received = std::time::Instant::now();
        let reply = match frame? {
            Err(e) => {
                tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "bad CNI request");
                CniReply::failure(e)
            }
            Ok(req) => match req.validate_identifiers() {
                Ok(()) => dispatch(handler.clone(), req).await,
                Err(e) => {
                    tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "CNI request with invalid identifiers refused");
                    CniReply::failure(e)
                }
            },
        };
        framed.send(reply).await?;
        tracing::debug!(connection = id, elapsed = ?received.elapsed(), "CNI reply sent");
    }
}

async fn dispatch<H: CniHandler>(handler: Arc<H>, req: CniRequest) -> CniReply {
    let verb = req.verb;
    let container = req.env.container_id.clone().unwrap_or_default();
    tracing::info!(?verb, %container, "CNI request");
    let task = tokio::spawn(async move {
        match req.verb {
            Verb::Add => handler.add(req).await.map(Some),
            Verb::Del => handler.del(req).await.map(|()| None),
            Verb::Check => handler.check(req).await.map(|()| None),
            Verb::Status => handler.status(req).await.map(|()| None),
            Verb::Gc => handler.gc(req).await.map(|()| None),
        }
    });
    let outcome = match task.await {
        Ok(outcome) => outcome,
        Err(e) => Err(CniError::new(
            ErrorCode::AgentInternal,
            "switchyard-agent failed unexpectedly",
            format!("the agent's {verb:?} handler did not finish ({e}); see the agent's log"),
        )),
    };
    match outcome {
        Ok(result) => {
            tracing::info!(?verb, %container, "CNI request done");
            CniReply::success(result)
        }
        Err(e) => {
            tracing::warn!(?verb, %container, code = e.code, msg = %e.msg, "CNI request failed");
            CniReply::failure(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/switchyard/cni.sock");
        let live = bind_agent_socket(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            bind_agent_socket(&path).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        drop(live);
        // The socket file stays behind, nobody answers: stale, replaced.
        assert!(path.exists());
        let _again = bind_agent_socket(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_agent_socket(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
