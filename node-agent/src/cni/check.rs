//! CNI CHECK: the attachment compared with its record (the pod's interface,
//! address, MAC and default route; the OVS port's tag and `external_ids`;
//! the pod's flows, and a `vlan` segment pod's uplink flows). Every
//! difference is named in one CNI error 105.

use std::path::PathBuf;

use switchyard_cni::CniRequest;
use switchyard_ovs::openflow::FlowStatsRequest;
use switchyard_pipeline::{Cookie, Owner};

use crate::attach_error::AttachError;
use crate::attachment::Attachment;
use crate::flows;
use crate::ipam::AttachmentKey;

use crate::state::{NodeState, lock};

pub(super) async fn check(state: &NodeState, req: &CniRequest) -> Result<(), AttachError> {
    let key = super::attachment_key(req, "CHECK")?;
    verify(state, &key, req.env.netns.clone()).await
}

/// Compares the attachment `key` with its record; `netns` overrides the
/// recorded namespace path (CNI_NETNS).
pub(crate) async fn verify(
    state: &NodeState,
    key: &AttachmentKey,
    netns: Option<PathBuf>,
) -> Result<(), AttachError> {
    let _guard = state.locks.lock(key).await;
    let a = lock(&state.attachments)
        .get(key)
        .cloned()
        .ok_or_else(|| AttachError::CheckFailed {
            differences: vec![format!("no attachment recorded for {key}")],
        })?;
    let mut differences = Vec::new();
    pod_side(state, &a, netns, &mut differences).await;
    ovs_port(state, &a, &mut differences).await?;
    pod_flows(state, &a, &mut differences).await?;
    if differences.is_empty() {
        Ok(())
    } else {
        Err(AttachError::CheckFailed { differences })
    }
}

/// The pod's interface in its namespace.
async fn pod_side(
    state: &NodeState,
    a: &Attachment,
    netns: Option<PathBuf>,
    diffs: &mut Vec<String>,
) {
    let ifname = &a.key.ifname;
    let netns_path = netns.unwrap_or_else(|| a.netns.clone());
    let ns = match state.io.links.open_netns(&netns_path) {
        Err(e) => return diffs.push(format!("netns: {e}")),
        Ok(ns) => ns,
    };
    let state = match state.io.links.inspect(&ns, ifname).await {
        Err(e) => return diffs.push(format!("pod interface: {e}")),
        Ok(state) => state,
    };
    if !state.addresses.contains(&a.address) {
        diffs.push(format!(
            "address {} missing on {} (has {:?})",
            a.address,
            ifname,
            state
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ));
    }
    if state.mac != Some(a.mac) {
        diffs.push(format!(
            "MAC of {} is {:?}, recorded {}",
            ifname, state.mac, a.mac
        ));
    }
    if let Some(gw) = a.gateway
        && !state
            .routes
            .iter()
            .any(|r| r.destination.prefix_len() == 0 && r.gateway == Some(gw))
    {
        diffs.push(format!("default route via {gw} missing"));
    }
    if !state.up {
        diffs.push(format!("{ifname} is down"));
    }
}

/// The OVS port: present, its tag, its `external_ids`.
async fn ovs_port(
    state: &NodeState,
    a: &Attachment,
    diffs: &mut Vec<String>,
) -> Result<(), AttachError> {
    let port = state
        .io
        .ports
        .port(&a.host_ifname)
        .await
        .map_err(AttachError::ovsdb("reading the OVS port"))?;
    let Some(port) = port else {
        diffs.push(format!("OVS port {} missing", a.host_ifname));
        return Ok(());
    };
    let want_tag = (a.vlan != 0).then_some(a.vlan);
    if port.tag != want_tag {
        diffs.push(format!(
            "OVS port {} has tag {:?}, recorded VLAN {}",
            a.host_ifname, port.tag, a.vlan
        ));
    }
    for (k, v) in a.external_ids() {
        if port.external_ids.get(&k) != Some(&v) {
            diffs.push(format!(
                "OVS port {} external_ids {k}={:?}, recorded {v:?}",
                a.host_ifname,
                port.external_ids.get(&k)
            ));
        }
    }
    Ok(())
}

/// The pod's flows (its cookie object), compared by table, priority and
/// match: the pod flows every pod has, and for a `vlan` segment pod the
/// uplink flows ADD installs for it (ARP towards the fabric, push and pop
/// of its VLAN).
async fn pod_flows(
    state: &NodeState,
    a: &Attachment,
    diffs: &mut Vec<String>,
) -> Result<(), AttachError> {
    let (c, m) = Cookie::object_mask(Owner::Agent, a.ofport);
    let installed = state
        .io
        .flows
        .dump(FlowStatsRequest::cookie(c, m))
        .await
        .map_err(AttachError::openflow("dumping flows"))?;
    let pod = a.pod_port();
    let expected = flows::pod_flows(0, &state.gateway(), &pod)
        .into_iter()
        .chain(crate::uplink::pod_flows(
            0,
            &pod,
            state.segment(&a.segment).as_ref(),
        ));
    for want in expected {
        let found = installed.iter().any(|s| {
            s.flow.table == want.table
                && s.flow.priority == want.priority
                && s.flow.matches.len() == want.matches.len()
                && want.matches.iter().all(|m| s.flow.matches.contains(m))
        });
        if !found {
            diffs.push(format!(
                "flow missing: table={},{}",
                want.table,
                want.match_string()
            ));
        }
    }
    Ok(())
}
