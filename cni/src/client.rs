//! The binary side: send one request to the agent and wait for the reply, all
//! under one deadline.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::error::{CniError, ErrorCode};
use crate::protocol::{CniClientCodec, CniRequest};
use crate::result::CniResult;

fn unreachable_agent(socket: &Path, e: &std::io::Error) -> CniError {
    CniError::new(
        ErrorCode::TryAgainLater,
        "switchyard-agent is not reachable",
        format!(
            "cannot connect to {}: {e}; check that the switchyard-agent pod is running on this node (the runtime retries)",
            socket.display()
        ),
    )
}

/// Sends `request` to the agent at `socket` and returns its outcome.
///
/// Everything (connect, send, wait) must finish within `timeout`, else error 11.
/// A missing socket or refused connection is error 11; a connection closed
/// without a reply is 11 (the agent restarted); a reply that does not decode is
/// 107; a protocol version mismatch is 106.
pub async fn call_agent(
    socket: &Path,
    request: &CniRequest,
    timeout: Duration,
) -> Result<Option<CniResult>, CniError> {
    call_agent_marked(socket, request, timeout, |_| {}).await
}

/// [`call_agent`], calling `mark` with the name of each step as it is done
/// (`connected`, `sent`, `replied`): the binary's step timing.
pub async fn call_agent_marked(
    socket: &Path,
    request: &CniRequest,
    timeout: Duration,
    mark: impl FnMut(&'static str),
) -> Result<Option<CniResult>, CniError> {
    match tokio::time::timeout(timeout, exchange(socket, request, mark)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            "switchyard-agent did not answer in time",
            format!(
                "no reply from {} within {} s (timeoutSeconds); the agent may be overloaded or stuck, see its log (the runtime retries)",
                socket.display(),
                timeout.as_secs_f64()
            ),
        )),
    }
}

async fn exchange(
    socket: &Path,
    request: &CniRequest,
    mut mark: impl FnMut(&'static str),
) -> Result<Option<CniResult>, CniError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                unreachable_agent(socket, &e)
            }
            _ => CniError::new(
                ErrorCode::IoFailure,
                "cannot connect to switchyard-agent",
                format!("connecting to {}: {e}", socket.display()),
            ),
        })?;
    mark("connected");
    let mut framed = Framed::new(stream, CniClientCodec::default());
    framed.send(request).await.map_err(|e| {
        if e.0.kind() == std::io::ErrorKind::InvalidInput {
            // The frame is over the protocol's limit: permanent, not 11.
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "the request is too large for the agent protocol",
                e.to_string(),
            )
        } else {
            CniError::new(
                ErrorCode::TryAgainLater,
                "sending the request to switchyard-agent failed",
                format!("{e}; the agent may have restarted (the runtime retries)"),
            )
        }
    })?;
    mark("sent");
    let reply = framed.next().await;
    mark("replied");
    match reply {
        Some(Ok(Ok(reply))) => {
            let outcome = reply.into_outcome()?;
            if let Some(result) = &outcome {
                result.validate().map_err(|e| {
                    CniError::new(
                        ErrorCode::InvalidAgentReply,
                        "switchyard-agent returned an invalid result",
                        e.to_string(),
                    )
                })?;
            }
            Ok(outcome)
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(CniError::new(
            ErrorCode::InvalidAgentReply,
            "invalid reply from switchyard-agent",
            e.to_string(),
        )),
        None => Err(CniError::new(
            ErrorCode::TryAgainLater,
            "switchyard-agent closed the connection without a reply",
            "the agent may have restarted; see its log (the runtime retries)",
        )),
    }
}
