//! CNI STATUS: whether the agent can serve ADD now.

use std::sync::atomic::Ordering;

use crate::attach_error::AttachError;
use crate::state::NodeState;

pub(super) fn status(state: &NodeState) -> Result<(), AttachError> {
    let mut problems = Vec::new();
    if !state.ready.load(Ordering::Acquire) {
        problems.push("the agent is not ready");
    }
    if !state.io.ports.is_connected() {
        problems.push("OVSDB is not connected");
    }
    if !state.io.flows.is_connected() {
        problems.push("the OpenFlow connection to the bridge is down");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AttachError::Unavailable { problems })
    }
}
