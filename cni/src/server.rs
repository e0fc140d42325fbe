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

/// [`serve`] that returns `Ok` once `shutdown` completes (connections already
/// accepted finish on their own).
pub async fn serve_until<H: CniHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, handler).await {
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
            Err(e) => return Err(e),
        }
    }
}

/// Answers every request on one connection (the binary sends one).
async fn serve_connection<H: CniHandler>(
    stream: UnixStream,
    handler: Arc<H>,
) -> Result<(), crate::protocol::FrameError> {
    let mut framed = Framed::new(stream, CniServerCodec::default());
    while let Some(frame) = framed.next().await {
        let reply = match frame? {
            Err(e) => {
                tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "bad CNI request");
                CniReply::failure(e)
            }
            Ok(req) => dispatch(handler.clone(), req).await,
        };
        framed.send(reply).await?;
    }
    Ok(())
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
