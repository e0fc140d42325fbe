//! The ControlPlaneVIP status the leader writes (conditions `Ready` and `Degraded`, per-node
//! rows, next hops, last error) and the Event raised when it turns Degraded.

use std::net::IpAddr;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use switchyard_api::{ControlPlaneVIP, ControlPlaneVIPStatus, VIPCondition};

use crate::lead::{Error, STATUS_REFRESH, Vip, now_text};
use crate::{KUBERNETES_NAMESPACE, Options};

fn condition(
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    prev: &[VIPCondition],
) -> VIPCondition {
    let status = if on { "True" } else { "False" };
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now_text);
    VIPCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: Some(since),
    }
}

/// Writes the status when it changed (or is due), and an Event when Degraded turns on.
pub(crate) async fn write_status(
    client: &Client,
    opts: &Options,
    cr: &ControlPlaneVIP,
    vip: &mut Vip,
    hops: Vec<IpAddr>,
    nodes: Vec<switchyard_api::NodeVIPStatus>,
) -> Result<(), Error> {
    let prev = cr.status.clone().unwrap_or_default();
    let (degraded, reason, message) = match &vip.degraded {
        Some((r, m)) => (true, *r, m.clone()),
        None => (false, "Healthy", String::new()),
    };
    let hop_text: Vec<String> = hops.iter().map(IpAddr::to_string).collect();
    let mut status = ControlPlaneVIPStatus {
        next_hops_text: (!hop_text.is_empty()).then(|| hop_text.join(",")),
        next_hops: hop_text,
        nodes,
        last_error: vip.last_error.clone(),
        last_reconcile_time: prev.last_reconcile_time.clone(),
        leader: Some(opts.node.clone()),
        conditions: vec![
            condition(
                "Ready",
                !degraded && !hops.is_empty(),
                if degraded { reason } else { "Routed" },
                &message,
                &prev.conditions,
            ),
            condition("Degraded", degraded, reason, &message, &prev.conditions),
        ],
    };
    let due = vip
        .status_written
        .as_ref()
        .is_none_or(|(_, at)| at.elapsed() >= STATUS_REFRESH);
    let mut compare = prev.clone();
    compare.last_reconcile_time = None;
    let mut mine = status.clone();
    mine.last_reconcile_time = None;
    if compare == mine && !due {
        return Ok(());
    }
    if vip.last_error.is_none() {
        status.last_reconcile_time = Some(now_text());
    }
    let was_degraded = prev
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "True");
    let mut with = cr.clone();
    with.status = Some(status.clone());
    let cpvips: Api<ControlPlaneVIP> = Api::all(client.clone());
    cpvips
        .replace_status(&cr.name_any(), &PostParams::default(), &with)
        .await?;
    vip.status_written = Some((status, Instant::now()));
    if degraded && !was_degraded {
        event(client, opts, cr, reason, &message).await;
    }
    Ok(())
}

/// An Event about `cr` (cluster-scoped: the Event lives in `default`).
async fn event(client: &Client, opts: &Options, cr: &ControlPlaneVIP, reason: &str, note: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), KUBERNETES_NAMESPACE);
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", cr.name_any())),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Route".into()),
        reason: Some(reason.into()),
        note: Some(note.chars().take(1000).collect()),
        type_: Some("Warning".into()),
        reporting_controller: Some("switchyard.io/cpvip".into()),
        reporting_instance: Some(opts.node.clone()),
        regarding: Some(ObjectReference {
            api_version: Some(ControlPlaneVIP::api_version(&()).into_owned()),
            kind: Some(ControlPlaneVIP::kind(&()).into_owned()),
            name: Some(cr.name_any()),
            uid: cr.uid(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = events.create(&PostParams::default(), &ev).await {
        tracing::debug!(%e, "creating an Event");
    }
}
