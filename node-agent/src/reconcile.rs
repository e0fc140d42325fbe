//! Reconciliation: the attachments rebuilt from OVSDB (on start and after
//! every reconnect), the stale ones removed, and every flow re-installed
//! under a new cookie generation.
//!
//! An attachment found in OVSDB is stale when its netns is gone (or is no
//! netns), or its pod is gone from the API server or was recreated with
//! another uid. When either cannot be checked (a netns error other than
//! those, an API server error) the attachment is kept: removing a working
//! pod's port is worse than keeping a dead one until the next pass.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_ovs::openflow::{self, FlowMod, FlowStatsRequest};
use switchyard_ovs::ovsdb;
use switchyard_ovs::pipeline::{self, Cookie, Owner};

use crate::apiserver::{ApiError, PodInfo};
use crate::attachment::{self, Attachment};
use crate::flows;
use crate::gateway::{self, GatewayError};
use crate::ipam::AttachmentKey;
use crate::netns::{Netns, NetnsError};
use crate::overlay::{Overlay, OverlayError};
use crate::reserved_port::OFPORT_TIMEOUT;
use crate::state::{NodeState, lock};
use crate::uplink::UplinkError;

/// Why reconciliation failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The bridge or gateway could not be re-ensured.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The tunnel port could not be re-ensured.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// An uplink could not be re-ensured.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// Listing the agent's ports failed.
    #[error("listing the agent's ports: {0}")]
    ListPorts(#[source] ovsdb::Error),
    /// Reading the interfaces (their ofports) failed.
    #[error("reading the interfaces: {0}")]
    ReadInterfaces(#[source] ovsdb::Error),
    /// Dumping the agent's flows failed.
    #[error("dumping the agent's flows: {0}")]
    DumpFlows(#[source] openflow::Error),
    /// The flow bundle was refused.
    #[error("installing flows: {0}")]
    InstallFlows(#[source] openflow::Error),
}

/// After OVSDB or ovs-vswitchd came back: the bridge, the gateway, the
/// tunnel port and the uplinks again (a restarted vswitchd recreates the
/// gateway device without its address).
async fn ensure_switch(state: &NodeState) -> Result<(), ReconcileError> {
    gateway::ensure_bridge(&state.ovsdb, &state.config).await?;
    let gw =
        gateway::ensure_gateway(&state.ovsdb, &state.host, &state.config, state.pod_cidr).await?;
    *state.gateway.write().unwrap_or_else(|p| p.into_inner()) = gw;
    crate::overlay::ensure_tunnel_port(
        &state.ovsdb,
        &state.config.bridge,
        state.config.tunnel_type,
    )
    .await?;
    let uplinks = crate::uplink::ensure_uplinks(&state.ovsdb, &state.config).await?;
    *state.uplinks.write().unwrap_or_else(|p| p.into_inner()) = uplinks;
    Ok(())
}

/// Rebuilds attachments and pools from OVSDB, removes stale ports,
/// re-installs every flow under a new generation. `after_reconnect` also
/// re-ensures the bridge, gateway, tunnel port and uplinks first.
pub(crate) async fn reconcile(
    state: &NodeState,
    overlay: &Overlay,
    after_reconnect: bool,
) -> Result<(), ReconcileError> {
    state.metrics.reconcile_runs.inc();
    if after_reconnect {
        ensure_switch(state).await?;
    }
    reconcile_attachments(state).await?;
    resync_flows(state, overlay).await
}

/// The ofport OVSDB reports for each interface (0 while it has none), read
/// in one transaction.
async fn interface_ofports(state: &NodeState) -> Result<BTreeMap<String, u32>, ovsdb::Error> {
    let select = ovsdb::Operation::select_columns("Interface", vec![], &["name", "ofport"]);
    let results = state.ovsdb.transact("Open_vSwitch", &[select]).await?;
    Ok(results
        .first()
        .and_then(|r| r.rows.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|row| {
            let name = row.get("name")?.as_str()?.to_string();
            let ofport = row
                .get("ofport")
                .and_then(ovsdb::Value::as_integer)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0);
            Some((name, ofport))
        })
        .collect())
}

/// The attachment half of [`reconcile`]: the agent's ports listed, each
/// judged, stale ones torn down, the rest recorded (pools, ofports).
pub(crate) async fn reconcile_attachments(state: &NodeState) -> Result<(), ReconcileError> {
    let ports = state
        .ovsdb
        .find_ports_by_external_id(attachment::KEY_OWNER, attachment::OWNER_VALUE)
        .await
        .map_err(ReconcileError::ListPorts)?;
    let ofports = if ports.is_empty() {
        BTreeMap::new()
    } else {
        interface_ofports(state)
            .await
            .map_err(ReconcileError::ReadInterfaces)?
    };
    let mut live = Vec::new();
    for port in ports {
        let ofport = ofports
            .get(&port.name)
            .copied()
            .filter(|p| *p > 0 && *p < 0xff00)
            .unwrap_or(0);
        let ofport = if ofport == 0 {
            // vswitchd may still be attaching it.
            state
                .ovsdb
                .interface_ofport(&port.name, OFPORT_TIMEOUT)
                .await
                .map(u32::from)
                .unwrap_or(0)
        } else {
            ofport
        };
        match Attachment::from_external_ids(&port.name, &port.external_ids, ofport) {
            Err(reason) => {
                tracing::warn!(port = %port.name, %reason, "removing a port with unusable Switchyard external_ids");
                state.remove_port_quietly(&port.name).await;
            }
            Ok(a) => match stale_reason(state, &a).await {
                Some(reason) => {
                    tracing::info!(port = %a.host_ifname, container = %a.key.container_id, pod = %format!("{}/{}", a.pod_namespace, a.pod_name), %reason, "removing stale attachment");
                    if let Err(e) = state.teardown(&a.key, Some(&a)).await {
                        tracing::warn!(port = %a.host_ifname, error = %e, "removing stale attachment failed");
                    }
                }
                None => live.push(a),
            },
        }
    }
    // Attachments known in memory whose port is gone from OVSDB (removed
    // behind the agent's back while it was disconnected): forget them.
    // Checked port by port now, so an ADD that finished meanwhile stays.
    let live_keys: BTreeSet<AttachmentKey> = live.iter().map(|a| a.key.clone()).collect();
    let unseen: Vec<Attachment> = lock(&state.attachments)
        .values()
        .filter(|a| !live_keys.contains(&a.key))
        .cloned()
        .collect();
    for a in unseen {
        if let Ok(None) = state.ovsdb.port(&a.host_ifname).await {
            tracing::info!(port = %a.host_ifname, container = %a.key.container_id, "port vanished from OVSDB; forgetting the attachment");
            if let Err(e) = state.teardown(&a.key, Some(&a)).await {
                tracing::warn!(port = %a.host_ifname, error = %e, "cleaning up a vanished attachment failed");
            }
        }
    }
    {
        let mut pools = lock(&state.pools);
        for a in &live {
            let name = state.pool_name(&a.segment);
            let Some(pool) = pools.get_mut(&name) else {
                continue;
            };
            if let Err(e) = pool.restore([(a.key.clone(), a.address.addr())]) {
                tracing::warn!(port = %a.host_ifname, error = %e, "cannot restore address");
            }
        }
        let mut map = lock(&state.attachments);
        let mut ofports = lock(&state.ofports);
        for a in live {
            ofports.insert(a.ofport);
            map.insert(a.key.clone(), a);
        }
    }
    reserve_foreign_ofports(state).await;
    state.update_gauge();
    Ok(())
}

/// Reserves the ofports of every other port on the switch, so a pod
/// never requests (and gets early flows for) a number in use.
async fn reserve_foreign_ofports(state: &NodeState) {
    match interface_ofports(state).await {
        Ok(found) => {
            let mut ofports = lock(&state.ofports);
            ofports.extend(
                found
                    .into_values()
                    .filter(|p| *p >= pipeline::ofport::FIRST_POD),
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the switch's ofports"),
    }
}

/// What one piece of evidence says about an attachment found in OVSDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// It is stale, for this reason.
    Stale(String),
    /// It is live as far as this evidence goes.
    Live,
    /// This evidence could not be read: keep the attachment.
    CannotTell,
}

/// What opening the attachment's netns says.
pub(crate) fn judge_netns(a: &Attachment, opened: Result<(), NetnsError>) -> Evidence {
    match opened {
        Ok(()) => Evidence::Live,
        Err(NetnsError::NotFound(_)) => {
            Evidence::Stale(format!("netns {} no longer exists", a.netns.display()))
        }
        Err(e @ (NetnsError::NotNetns { .. } | NetnsError::OwnNamespace(_))) => {
            Evidence::Stale(e.to_string())
        }
        Err(e) => {
            tracing::warn!(netns = %a.netns.display(), error = %e, "cannot check netns; keeping attachment");
            Evidence::CannotTell
        }
    }
}

/// What the API server's answer for the attachment's pod says.
pub(crate) fn judge_pod(a: &Attachment, pod: Result<Option<PodInfo>, ApiError>) -> Evidence {
    match pod {
        Ok(None) => Evidence::Stale(format!(
            "pod {}/{} no longer exists",
            a.pod_namespace, a.pod_name
        )),
        Ok(Some(pod)) if !a.pod_uid.is_empty() && !pod.uid.is_empty() && pod.uid != a.pod_uid => {
            Evidence::Stale(format!(
                "pod {}/{} was recreated (uid {} != {})",
                a.pod_namespace, a.pod_name, pod.uid, a.pod_uid
            ))
        }
        Ok(Some(_)) => Evidence::Live,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check pod in the API server; keeping attachment");
            Evidence::CannotTell
        }
    }
}

/// Why an attachment found in OVSDB is stale, or `None` if it is live (or
/// cannot be told). The API server is asked only when the netns is there.
async fn stale_reason(state: &NodeState, a: &Attachment) -> Option<String> {
    let opened = Netns::open(&a.netns, &state.policy).map(drop);
    match judge_netns(a, opened) {
        Evidence::Stale(reason) => return Some(reason),
        Evidence::CannotTell => return None,
        Evidence::Live => {}
    }
    match judge_pod(a, state.api.pod(&a.pod_namespace, &a.pod_name).await) {
        Evidence::Stale(reason) => Some(reason),
        Evidence::Live | Evidence::CannotTell => None,
    }
}

/// Installs base flows and every live pod's flows under a new cookie
/// generation and deletes older generations, in one atomic bundle:
/// identical flows are replaced in place, so traffic is not disturbed.
pub(crate) async fn resync_flows(
    state: &NodeState,
    overlay: &Overlay,
) -> Result<(), ReconcileError> {
    let mut gate = state.flow_gate.write().await;
    let overlay = overlay.lock_for_resync().await;
    let (owner_cookie, owner_mask) = Cookie::owner_mask(Owner::Agent);
    let present: BTreeSet<u8> = state
        .openflow
        .dump_flows(FlowStatsRequest::cookie(owner_cookie, owner_mask))
        .await
        .map_err(ReconcileError::DumpFlows)?
        .iter()
        .filter_map(|s| Cookie::from_value(s.flow.cookie))
        .map(|c| c.generation)
        .collect();
    let mut next = gate
        .or(present.iter().next_back().copied())
        .map_or(1, |g| g.wrapping_add(1));
    while present.contains(&next) {
        next = next.wrapping_add(1);
    }
    let gw = state.gateway();
    let mut mods: Vec<FlowMod> = flows::base_flows(next, &gw)
        .into_iter()
        .map(FlowMod::add)
        .collect();
    let pods: Vec<Attachment> = lock(&state.attachments).values().cloned().collect();
    for a in pods.iter().filter(|a| a.ofport > 0) {
        mods.extend(
            flows::pod_flows(next, &gw, &a.pod_port())
                .into_iter()
                .chain(crate::uplink::pod_flows(
                    next,
                    &a.pod_port(),
                    state.config.segment(&a.segment),
                ))
                .map(FlowMod::add),
        );
    }
    mods.extend(overlay.flows(next).into_iter().map(FlowMod::add));
    let uplinks = state
        .uplinks
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    mods.extend(
        crate::uplink::uplink_flows(next, &uplinks, state.gateway().ip)
            .into_iter()
            .map(FlowMod::add),
    );
    for old in present.iter().filter(|g| **g != next) {
        let (c, m) = Cookie::generation_mask(Owner::Agent, *old);
        mods.push(FlowMod::delete_cookie(c, m));
    }
    let count = mods.len();
    state
        .openflow
        .bundle_flow_mods(mods)
        .await
        .map_err(ReconcileError::InstallFlows)?;
    tracing::info!(generation = next, flow_mods = count, pods = pods.len(), old_generations = ?present, "flows installed");
    *gate = Some(next);
    overlay.installed(next);
    Ok(())
}
