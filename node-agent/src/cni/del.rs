//! CNI DEL: tears the attachment down ([`NodeState::teardown`]). Idempotent:
//! a part already gone (or the whole attachment, or its netns) is fine.
//! DELs the binary queued while the agent was unreachable
//! ([`switchyard_cni::pending`]) run at start ([`run_queued_dels`]).

use switchyard_cni::CniRequest;

use crate::attach_error::AttachError;
use crate::ipam::AttachmentKey;
use crate::state::NodeState;

pub(super) async fn del(state: &NodeState, req: &CniRequest) -> Result<(), AttachError> {
    detach(state, &super::attachment_key(req, "DEL")?).await
}

/// Removes the attachment under its lock.
pub(crate) async fn detach(state: &NodeState, key: &AttachmentKey) -> Result<(), AttachError> {
    let _guard = state.locks.lock(key).await;
    state.teardown_for_del(key).await?;
    tracing::info!("pod detached");
    Ok(())
}

/// Runs the DELs the binary queued beside `socket` while the agent was
/// unreachable, oldest first, removing each file once its DEL succeeded (a
/// failed one stays for the next start). Files that do not hold a valid DEL
/// are removed with a warning. Returns how many DELs ran successfully.
pub(crate) async fn run_queued_dels(state: &NodeState, socket: &std::path::Path) -> usize {
    let queued = match switchyard_cni::pending::queued_dels(socket) {
        Ok(queued) => queued,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queued DELs");
            return 0;
        }
    };
    let mut done = 0;
    for (file, request) in queued {
        let key = match request.map_err(|e| e.to_string()).and_then(|r| {
            r.attachment()
                .map(|(c, i)| AttachmentKey::new(c, i))
                .ok_or_else(|| "no container id or interface name".to_owned())
        }) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "dropping a queued DEL that cannot be read");
                let _ = std::fs::remove_file(&file);
                continue;
            }
        };
        let span =
            tracing::info_span!("queued DEL", container = %key.container_id, ifname = %key.ifname);
        match tracing::Instrument::instrument(detach(state, &key), span).await {
            Ok(()) => {
                done += 1;
                if let Err(e) = std::fs::remove_file(&file) {
                    tracing::warn!(file = %file.display(), error = %e, "queued DEL done but its file stays");
                }
            }
            Err(e) => {
                tracing::warn!(container = %key.container_id, ifname = %key.ifname, error = %e, "queued DEL failed; kept for the next start");
            }
        }
    }
    if done > 0 {
        tracing::info!(done, "queued DELs run");
    }
    done
}
