//! CNI GC: tears down every attachment the runtime's valid list omits and
//! releases this node's cluster-wide `vlan` addresses held for them,
//! except for attachments whose ADD is in flight or returned after the GC
//! started (the list cannot name those; see [`crate::adds_in_flight`]).

use std::collections::BTreeSet;

use switchyard_cni::CniRequest;
use tracing::Instrument;

use crate::attach_error::AttachError;
use crate::attachment;
use crate::ipam::AttachmentKey;
use crate::state::{NodeState, lock};

pub(super) async fn gc(state: &NodeState, req: &CniRequest) -> Result<(), AttachError> {
    let valid: BTreeSet<AttachmentKey> = req
        .config
        .valid_attachments
        .iter()
        .flatten()
        .map(|v| AttachmentKey::new(v.container_id.clone(), v.ifname.clone()))
        .collect();
    collect_garbage(state, &valid).await
}

/// Every attachment the node knows of, wherever it is recorded: in
/// memory, as an OVS port of the agent, or as an address in a local pool.
async fn known_attachments(state: &NodeState) -> Result<BTreeSet<AttachmentKey>, AttachError> {
    let mut known: BTreeSet<AttachmentKey> = lock(&state.attachments).keys().cloned().collect();
    let ports = state
        .io
        .ports
        .agent_ports()
        .await
        .map_err(AttachError::ovsdb("listing ports"))?;
    for port in &ports {
        if let (Some(c), Some(i)) = (
            port.external_ids.get(attachment::KEY_CONTAINER_ID),
            port.external_ids.get(attachment::KEY_IFNAME),
        ) {
            known.insert(AttachmentKey::new(c.clone(), i.clone()));
        }
    }
    for pool in lock(&state.pools).values() {
        known.extend(pool.allocations().map(|(_, k)| k.clone()));
    }
    Ok(known)
}

/// Removes every known attachment `valid` omits, except those an ADD in
/// flight (or newer than this GC) protects.
pub(crate) async fn collect_garbage(
    state: &NodeState,
    valid: &BTreeSet<AttachmentKey>,
) -> Result<(), AttachError> {
    // First, before anything is listed.
    let view = state.adds.begin_gc();
    let candidates = known_attachments(state).await?;
    let mut removed = 0usize;
    let mut skipped = 0usize;
    let mut failures = Vec::new();
    for key in candidates.difference(valid) {
        // Checked before waiting for the lock (an ADD in flight holds it)
        // and again after (one may have run meanwhile).
        if view.protects(key) {
            skipped += 1;
            continue;
        }
        let _guard = state.locks.lock(key).await;
        if view.protects(key) {
            tracing::debug!(container = %key.container_id, ifname = %key.ifname, "ADD in flight or newer than the GC; kept");
            skipped += 1;
            continue;
        }
        let span = tracing::info_span!("gc", container = %key.container_id, ifname = %key.ifname);
        // One attachment that cannot be removed does not keep GC from
        // removing the others; every failure is reported at the end.
        match state.teardown(key, None).instrument(span).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(container = %key.container_id, ifname = %key.ifname, error = %e, "GC could not remove the attachment; going on");
                failures.push((key.clone(), e));
            }
        }
    }
    // Cluster-wide addresses: decided per allocation object after a fresh
    // list, from live state. An object there was created by an ADD
    // that is either still in flight (protected) or, having ended, has
    // recorded it in a local pool (kept): the view is asked first, so an
    // ADD ending in between is seen by the pool check.
    let keep = |k: &AttachmentKey| {
        valid.contains(k)
            || view.protects(k)
            || lock(&state.pools)
                .values()
                .any(|pool| pool.allocations().any(|(_, held)| held == k))
    };
    crate::vlan_pool::gc(&state.cluster_pools, &state.segments(), keep).await;
    tracing::info!(
        removed,
        skipped,
        failed = failures.len(),
        valid = valid.len(),
        "garbage collected"
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(AttachError::GcIncomplete { failures })
    }
}
