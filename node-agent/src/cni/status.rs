//! CNI STATUS: whether the agent can serve ADD now: the same readiness as
//! `/readyz` (OVSDB and OpenFlow answer, reconciliation done).

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
    if let Err(failing) = state.metrics.health.readiness() {
        use crate::metrics::{READY_OPENFLOW, READY_OVSDB, READY_RECONCILED};
        for (name, problem) in [
            (READY_OVSDB, "ovsdb-server does not answer"),
            (
                READY_OPENFLOW,
                "ovs-vswitchd does not answer on the bridge's OpenFlow socket",
            ),
            (READY_RECONCILED, "reconciliation with OVS has not finished"),
        ] {
            if failing.iter().any(|f| f.starts_with(&format!("{name}:")))
                && !problems.contains(&problem)
            {
                problems.push(problem);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AttachError::Unavailable { problems })
    }
}
