//! CNI DEL: tears the attachment down ([`NodeState::teardown`]). Idempotent:
//! a part already gone (or the whole attachment, or its netns) is fine.

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
    state.teardown(key, None).await?;
    tracing::info!("pod detached");
    Ok(())
}
