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
use switchyard_pipeline::{self as pipeline, Cookie, Owner};

use crate::apiserver::{ApiError, PodInfo};
use crate::attachment::Attachment;
use crate::flows;
use crate::gateway::{self, GatewayError};
use crate::ipam::AttachmentKey;
use crate::netns::{Netlink, NetnsError};
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

/// The concrete clients the bridge, gateway, tunnel and uplink set-up
/// take (the datapath modules use them as they are).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Switch<'a> {
    /// OVSDB.
    pub ovsdb: &'a ovsdb::Client,
    /// Netlink in the node namespace.
    pub host: &'a Netlink,
}

/// After OVSDB or ovs-vswitchd came back: the bridge, the gateway, the
/// tunnel port and the uplinks again (a restarted vswitchd recreates the
/// gateway device without its address).
async fn ensure_switch(state: &NodeState, switch: Switch<'_>) -> Result<(), ReconcileError> {
    gateway::ensure_bridge(switch.ovsdb, &state.config).await?;
    let gw =
        gateway::ensure_gateway(switch.ovsdb, switch.host, &state.config, state.pod_cidr).await?;
    *state.gateway.write().unwrap_or_else(|p| p.into_inner()) = gw;
    crate::overlay::ensure_tunnel_port(
        switch.ovsdb,
        &state.config.bridge,
        state.config.tunnel_type,
    )
    .await?;
    let uplinks =
        crate::uplink::ensure_uplinks(switch.ovsdb, &state.config.bridge, &state.segments())
            .await?;
    *state.uplinks.write().unwrap_or_else(|p| p.into_inner()) = uplinks;
    Ok(())
}

/// Rebuilds attachments and pools from OVSDB, removes stale ports,
/// re-installs every flow under a new generation. After a reconnect
/// (`reensure`) the bridge, gateway, tunnel port and uplinks come first.
pub(crate) async fn reconcile(
    state: &NodeState,
    overlay: &Overlay,
    reensure: Option<Switch<'_>>,
) -> Result<(), ReconcileError> {
    state.metrics.reconcile_runs.inc();
    if let Some(switch) = reensure {
        ensure_switch(state, switch).await?;
    }
    reconcile_attachments(state).await?;
    reassert_cluster_addresses(state).await;
    resync_flows(state, overlay).await
}

/// Deletes the host ends (named as the agent names them) that belong to no
/// OVS port and no attachment: what an ADD left when the agent died between
/// making the veth pair and adding its port. Only before the agent serves
/// requests (an ADD in flight has its veth before its port); a failure is
/// logged and the link left for the next start or the runtime's DEL.
pub(crate) async fn remove_orphan_host_ends(state: &NodeState) {
    let ends = match state.io.links.host_ends().await {
        Ok(ends) => ends,
        Err(e) => {
            tracing::warn!(error = %e, "listing the node's pod links failed; orphans left");
            return;
        }
    };
    let ports: BTreeSet<String> = match state.io.ports.agent_ports().await {
        Ok(ports) => ports.into_iter().map(|p| p.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing the agent's ports failed; orphan links left");
            return;
        }
    };
    let attached: BTreeSet<String> = lock(&state.attachments)
        .values()
        .map(|a| a.host_ifname.clone())
        .collect();
    for end in ends {
        if ports.contains(&end) || attached.contains(&end) {
            continue;
        }
        match state.io.links.delete_host_end(&end).await {
            Ok(_) => {
                tracing::info!(link = %end, "removed a pod link without OVS port (an ADD interrupted by the agent's end)");
            }
            Err(e) => tracing::warn!(link = %end, error = %e, "removing an orphan pod link failed"),
        }
    }
}

/// The running `vlan` segment pods' addresses recorded again in the
/// cluster-wide allocation (lost allocation objects must not hand them
/// out twice; the previous design's ConfigMap is migrated first); see [`crate::vlan_pool::reassert_for_pods`].
async fn reassert_cluster_addresses(state: &NodeState) {
    crate::vlan_pool::reassert_for_pods(&state.cluster_pools, &state.segments(), &|segment| {
        state.held_in(segment)
    })
    .await;
}

/// The attachment half of [`reconcile`]: the agent's ports listed, each
/// judged, stale ones torn down, the rest recorded (pools, ofports).
pub(crate) async fn reconcile_attachments(state: &NodeState) -> Result<(), ReconcileError> {
    let ports = state
        .io
        .ports
        .agent_ports()
        .await
        .map_err(ReconcileError::ListPorts)?;
    let ofports = if ports.is_empty() {
        BTreeMap::new()
    } else {
        state
            .io
            .ports
            .interface_ofports()
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
                .io
                .ports
                .wait_ofport(&port.name, OFPORT_TIMEOUT)
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
        if let Ok(None) = state.io.ports.port(&a.host_ifname).await {
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
    match state.io.ports.interface_ofports().await {
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

/// Annotation of a static pod's mirror pod: the uid kubelet gave the static
/// pod (and passed as `K8S_POD_UID`), which differs from the mirror's own.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What the API server's answer for the attachment's pod says.
pub(crate) fn judge_pod(a: &Attachment, pod: Result<Option<PodInfo>, ApiError>) -> Evidence {
    match pod {
        Ok(None) => Evidence::Stale(format!(
            "pod {}/{} no longer exists",
            a.pod_namespace, a.pod_name
        )),
        Ok(Some(pod)) => {
            // A static pod's attachment carries kubelet's uid, which its
            // mirror pod names in an annotation, not in metadata.uid.
            let uid = pod.annotations.get(MIRROR_ANNOTATION).unwrap_or(&pod.uid);
            if !a.pod_uid.is_empty() && !uid.is_empty() && *uid != a.pod_uid {
                Evidence::Stale(format!(
                    "pod {}/{} was recreated (uid {} != {})",
                    a.pod_namespace, a.pod_name, uid, a.pod_uid
                ))
            } else {
                Evidence::Live
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check pod in the API server; keeping attachment");
            Evidence::CannotTell
        }
    }
}

/// Why an attachment found in OVSDB is stale, or `None` if it is live (or
/// cannot be told). The API server is asked only when the netns is there.
async fn stale_reason(state: &NodeState, a: &Attachment) -> Option<String> {
    let opened = state.io.links.open_netns(&a.netns).map(drop);
    match judge_netns(a, opened) {
        Evidence::Stale(reason) => return Some(reason),
        Evidence::CannotTell => return None,
        Evidence::Live => {}
    }
    if a.is_standalone() {
        return None;
    }
    match judge_pod(
        a,
        state.io.api.pod_fresh(&a.pod_namespace, &a.pod_name).await,
    ) {
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
        .io
        .flows
        .dump(FlowStatsRequest::cookie(owner_cookie, owner_mask))
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
                    state.segment(&a.segment).as_ref(),
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
    // NetworkPolicy flows ride in the same bundle: never a moment without them.
    let (policy_mods, policy_flows) = state
        .policy
        .full(next, &crate::state::local_pods(pods.iter()))
        .await;
    mods.extend(policy_mods);
    for old in present.iter().filter(|g| **g != next) {
        let (c, m) = Cookie::generation_mask(Owner::Agent, *old);
        mods.push(FlowMod::delete_cookie(c, m));
    }
    let count = mods.len();
    state
        .io
        .flows
        .bundle(mods)
        .await
        .map_err(ReconcileError::InstallFlows)?;
    tracing::info!(generation = next, flow_mods = count, pods = pods.len(), old_generations = ?present, "flows installed");
    *gate = Some(next);
    overlay.installed(next);
    state.policy.resynced(policy_flows).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::drivers::fake::{FailAt, FakeNode};

    /// An attachment a killed agent left in OVSDB, its netns `netns`.
    fn recorded(fake: &FakeNode, container: &str, ip: &str, ofport: u32) -> Attachment {
        let a = Attachment {
            key: AttachmentKey::new(container, "eth0"),
            pod_namespace: "default".into(),
            pod_name: format!("pod-{container}"),
            pod_uid: format!("uid-{container}"),
            netns: PathBuf::from(format!("/var/run/netns/{container}")),
            address: ip.parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            mac: crate::mac::MacAddr([2, 0, 0, 0, 0, 9]),
            segment: "default".into(),
            vlan: 0,
            mtu: 1450,
            host_ifname: crate::netns::host_ifname(container, "eth0"),
            ofport,
        };
        let row = ovsdb::PortRow {
            name: a.host_ifname.clone(),
            external_ids: a.external_ids(),
            ..Default::default()
        };
        fake.world()
            .ports
            .insert(a.host_ifname.clone(), (row, ofport));
        a
    }

    fn live(fake: &FakeNode, a: &Attachment, uid: &str) {
        let mut w = fake.world();
        w.netns.insert(a.netns.clone());
        w.pods.insert(
            (a.pod_namespace.clone(), a.pod_name.clone()),
            PodInfo {
                uid: uid.into(),
                ..PodInfo::default()
            },
        );
    }

    #[tokio::test]
    async fn host_ends_without_a_port_are_removed_at_start() {
        let fake = FakeNode::default();
        let state = NodeState::for_tests(fake.drivers(), None);
        let kept = recorded(&fake, "kept", "10.244.1.7/24", 20);
        live(&fake, &kept, "uid-kept");
        let veth = || crate::drivers::fake::FakeVeth {
            netns: PathBuf::from("/var/run/netns/x"),
            pod_ifname: "eth0".into(),
            pod_mac: crate::mac::MacAddr([2, 0, 0, 0, 0, 1]),
            addresses: Vec::new(),
            gateway: None,
        };
        // The ADD that died between the veth pair and the OVS port.
        let orphan = crate::netns::host_ifname("interrupted", "eth0");
        {
            let mut w = fake.world();
            w.veths.insert(kept.host_ifname.clone(), veth());
            w.veths.insert(orphan.clone(), veth());
        }
        reconcile_attachments(&state).await.unwrap();
        remove_orphan_host_ends(&state).await;
        let veths: Vec<String> = fake.world().veths.keys().cloned().collect();
        assert_eq!(veths, vec![kept.host_ifname.clone()]);
    }

    #[tokio::test]
    async fn live_attachments_are_kept_and_stale_ones_removed() {
        let fake = FakeNode::default();
        let state = NodeState::for_tests(fake.drivers(), None);
        let kept = recorded(&fake, "kept", "10.244.1.7/24", 20);
        live(&fake, &kept, "uid-kept");
        let no_netns = recorded(&fake, "nonetns", "10.244.1.8/24", 21);
        live(&fake, &no_netns, "uid-nonetns");
        fake.world().netns.remove(&no_netns.netns);
        let no_pod = recorded(&fake, "nopod", "10.244.1.9/24", 22);
        live(&fake, &no_pod, "uid-nopod");
        fake.world()
            .pods
            .remove(&(no_pod.pod_namespace.clone(), no_pod.pod_name.clone()));
        let recreated = recorded(&fake, "recreated", "10.244.1.10/24", 23);
        live(&fake, &recreated, "another-uid");
        // A port whose external_ids do not describe an attachment.
        recorded(&fake, "broken", "10.244.1.11/24", 24);
        {
            let mut w = fake.world();
            let (mut row, p) = w
                .ports
                .remove(&crate::netns::host_ifname("broken", "eth0"))
                .unwrap();
            row.external_ids.remove(crate::attachment::KEY_IP);
            w.ports.insert(row.name.clone(), (row, p));
        }

        reconcile_attachments(&state).await.unwrap();

        let keys: Vec<AttachmentKey> = lock(&state.attachments).keys().cloned().collect();
        assert_eq!(keys, vec![kept.key.clone()]);
        assert_eq!(
            state.allocations(),
            vec![(kept.address.addr(), kept.key.clone())]
        );
        let ports: Vec<String> = fake.world().ports.keys().cloned().collect();
        assert_eq!(ports, vec![kept.host_ifname.clone()]);
        assert!(lock(&state.ofports).contains(&20));
    }

    #[tokio::test]
    async fn attachments_are_kept_when_the_api_server_cannot_tell() {
        let fake = FakeNode::default();
        let state = NodeState::for_tests(fake.drivers(), None);
        let a = recorded(&fake, "c1", "10.244.1.7/24", 20);
        fake.world().netns.insert(a.netns.clone());
        fake.world().fail.insert(FailAt::Api);
        reconcile_attachments(&state).await.unwrap();
        let keys: BTreeSet<AttachmentKey> = lock(&state.attachments).keys().cloned().collect();
        assert_eq!(keys, [a.key].into());
    }

    #[tokio::test]
    async fn attachments_whose_port_vanished_are_forgotten() {
        let fake = FakeNode::default();
        let state = NodeState::for_tests(fake.drivers(), None);
        let a = recorded(&fake, "c1", "10.244.1.7/24", 20);
        live(&fake, &a, "uid-c1");
        reconcile_attachments(&state).await.unwrap();
        assert_eq!(lock(&state.attachments).len(), 1);
        fake.world().ports.clear();
        reconcile_attachments(&state).await.unwrap();
        assert!(lock(&state.attachments).is_empty());
        assert!(state.allocations().is_empty());
    }

    #[test]
    fn evidence_from_netns_and_pod() {
        let fake = FakeNode::default();
        let a = recorded(&fake, "c1", "10.244.1.7/24", 20);
        assert_eq!(judge_netns(&a, Ok(())), Evidence::Live);
        assert_eq!(
            judge_netns(&a, Err(NetnsError::NotFound(a.netns.clone()))),
            Evidence::Stale("netns /var/run/netns/c1 no longer exists".into())
        );
        assert_eq!(
            judge_netns(&a, Err(NetnsError::Empty)),
            Evidence::CannotTell
        );
        let pod = |uid: &str| {
            Ok(Some(PodInfo {
                uid: uid.into(),
                ..PodInfo::default()
            }))
        };
        assert_eq!(judge_pod(&a, pod("uid-c1")), Evidence::Live);
        // A pod without a uid (or a record without one) is not compared.
        assert_eq!(judge_pod(&a, pod("")), Evidence::Live);
        assert_eq!(
            judge_pod(&a, pod("other")),
            Evidence::Stale("pod default/pod-c1 was recreated (uid other != uid-c1)".into())
        );
        assert_eq!(
            judge_pod(&a, Ok(None)),
            Evidence::Stale("pod default/pod-c1 no longer exists".into())
        );
        // A static pod: its mirror has its own uid and names kubelet's
        // (the one ADD recorded) in the mirror annotation. Before, every
        // static pod was torn down at each agent restart as "recreated".
        let mirror = |mirror_of: &str| {
            Ok(Some(PodInfo {
                uid: "mirror-uid".into(),
                annotations: [(MIRROR_ANNOTATION.to_owned(), mirror_of.to_owned())].into(),
            }))
        };
        assert_eq!(judge_pod(&a, mirror("uid-c1")), Evidence::Live);
        assert_eq!(
            judge_pod(&a, mirror("another-static-uid")),
            Evidence::Stale(
                "pod default/pod-c1 was recreated (uid another-static-uid != uid-c1)".into()
            )
        );
        assert_eq!(
            judge_pod(
                &a,
                Err(ApiError::Timeout {
                    what: "reading".into()
                })
            ),
            Evidence::CannotTell
        );
    }
}
