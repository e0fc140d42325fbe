//! The node side: probe the local apiserver, hold the VIP on `lo` only while it is healthy,
//! publish what this node holds in a Lease per (ControlPlaneVIP, node).
//!
//! Order: the VIP goes on `lo` before the node reports it (so the leader routes only nodes
//! that hold it); on the way out the node reports unhealthy, waits until the leader's status
//! shows it out of the route (written after the router confirmed the route realized), and
//! only then removes the VIP, or after `leave_timeout` if it cannot read that status (its
//! own apiserver is the one that failed: the leader's probe takes it out of the route).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use switchyard_api::{
    ANNOTATION_APISERVER_HEALTHY, ANNOTATION_CPVIP, ANNOTATION_NODE_ADDRESS,
    ANNOTATION_VIP_PRESENT, ControlPlaneVIP, LABEL_CPVIP,
};

use crate::health::Health;
use crate::metrics::{Metrics, labels};
use crate::probe::{Prober, endpoint_addr};
use crate::{Options, vip};

/// Lease duration of a node report: the leader ignores reports older than this.
pub const REPORT_SECONDS: i32 = 10;
/// A report is rewritten at least this often.
const REPORT_RENEW: Duration = Duration::from_secs(3);

/// Name of the report Lease of `cpvip` on `node`.
pub fn report_name(cpvip: &str, node: &str) -> String {
    format!("cpvip-{cpvip}-{node}")
}

struct Held {
    net: IpNet,
    prober: Prober,
    local: SocketAddr,
    health: Health,
    holding: bool,
    leaving_since: Option<Instant>,
    reported: Option<(bool, bool, Instant)>,
}

/// Runs forever.
pub async fn run(client: Client, opts: Options, metrics: Arc<Metrics>) {
    if opts.manage_vip
        && let Err(e) = vip::set_arp_sysctls()
    {
        tracing::error!(%e, "cannot set the ARP sysctls: the node might answer ARP for the VIP");
    }
    let cpvips: Api<ControlPlaneVIP> = Api::all(client.clone());
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut known: Vec<ControlPlaneVIP> = Vec::new();
    let mut period = Duration::from_secs(1);
    loop {
        let tick = tokio::time::Instant::now();
        let listed = cpvips.list(&ListParams::default()).await;
        let fresh = listed.is_ok();
        match listed {
            Ok(l) => known = l.items,
            Err(e) => tracing::debug!(%e, "listing ControlPlaneVIPs (using the last list)"),
        }
        for cr in &known {
            let name = cr.name_any();
            period = Duration::from_millis(cr.spec.probe.period_ms.clamp(100, 10_000));
            let entry = match held.get_mut(&name) {
                Some(h) => h,
                None => match new_held(cr, &opts) {
                    Ok(h) => held.entry(name.clone()).or_insert(h),
                    Err(e) => {
                        tracing::warn!(cpvip = %name, %e, "unusable ControlPlaneVIP");
                        continue;
                    }
                },
            };
            step(cr, entry, &opts, &metrics).await;
            if entry.health.failing() {
                period /= 10;
            }
            report(&client, cr, entry, &opts).await;
        }
        if fresh {
            // ControlPlaneVIPs gone without the finalizer (or never ours): drop their VIPs.
            let names: Vec<String> = known.iter().map(|c| c.name_any()).collect();
            held.retain(|name, h| {
                if names.contains(name) {
                    return true;
                }
                if h.holding && opts.manage_vip {
                    if let Err(e) = vip::remove(&h.net) {
                        tracing::warn!(cpvip = %name, %e, "removing the VIP");
                        return true;
                    }
                    tracing::info!(cpvip = %name, vip = %h.net, "ControlPlaneVIP gone: VIP removed");
                }
                false
            });
        }
        tokio::time::sleep_until(tick + period).await;
    }
}

fn new_held(cr: &ControlPlaneVIP, opts: &Options) -> Result<Held, String> {
    let net = cr.spec.network()?;
    let p = &cr.spec.probe;
    let prober = Prober::new(
        &opts.apiserver_ca,
        net.addr(),
        Duration::from_millis(p.timeout_ms.max(50)),
    )
    .map_err(|e| e.to_string())?;
    let local = match opts.local_endpoint {
        Some(a) => a,
        None => endpoint_addr(&cr.spec.local_endpoint)?,
    };
    // A restart rebuilds from what is installed.
    let holding = opts.manage_vip && vip::present(&net).unwrap_or(false);
    Ok(Held {
        net,
        prober,
        local,
        health: Health::new(p.failure_threshold, p.success_threshold),
        holding,
        leaving_since: None,
        reported: None,
    })
}

/// Whether the leader's status shows this node out of the route.
fn out_of_route(cr: &ControlPlaneVIP, node: &str, addr: &str) -> bool {
    let Some(status) = &cr.status else {
        return true;
    };
    !status.next_hops.iter().any(|h| h == addr)
        && !status
            .nodes
            .iter()
            .any(|n| n.routed && (n.node == node || n.address == addr))
}

async fn step(cr: &ControlPlaneVIP, h: &mut Held, opts: &Options, metrics: &Metrics) {
    let name = cr.name_any();
    let ok = match h.prober.readyz(h.local).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(cpvip = %name, %e, "local /readyz failed");
            false
        }
    };
    if h.health.observe(ok) {
        tracing::info!(cpvip = %name, state = ?h.health.state(), "local apiserver");
    }
    let l = labels(&[
        ("vip", &h.net.addr().to_string()),
        ("node", &opts.node),
        ("probe", "local"),
    ]);
    metrics.probe_ok.get_or_create(&l).set(i64::from(ok));
    metrics
        .probe_healthy
        .get_or_create(&l)
        .set(i64::from(h.health.up()));
    let deleting = cr.metadata.deletion_timestamp.is_some();
    let want = h.health.up() && !deleting;
    if want && !h.holding {
        if opts.manage_vip
            && let Err(e) = vip::add(&h.net)
        {
            tracing::warn!(cpvip = %name, %e, "adding the VIP to lo");
            return;
        }
        tracing::info!(cpvip = %name, vip = %h.net, "VIP on lo");
        h.holding = true;
        h.leaving_since = None;
    } else if !want && h.holding {
        let since = *h.leaving_since.get_or_insert_with(Instant::now);
        let confirmed = out_of_route(cr, &opts.node, &opts.node_address.to_string());
        if confirmed || since.elapsed() >= opts.leave_timeout {
            if opts.manage_vip
                && let Err(e) = vip::remove(&h.net)
            {
                tracing::warn!(cpvip = %name, %e, "removing the VIP from lo");
                return;
            }
            tracing::info!(cpvip = %name, vip = %h.net, confirmed, "VIP removed from lo");
            h.holding = false;
            h.leaving_since = None;
        }
    } else if want {
        h.leaving_since = None;
    }
    metrics
        .vip_present
        .get_or_create(&labels(&[("vip", &h.net.addr().to_string())]))
        .set(i64::from(h.holding));
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Writes this node's report when it changed or is due.
async fn report(client: &Client, cr: &ControlPlaneVIP, h: &mut Held, opts: &Options) {
    let healthy = h.health.up();
    if let Some((holding, up, at)) = h.reported
        && holding == h.holding
        && up == healthy
        && at.elapsed() < REPORT_RENEW
    {
        return;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let cpvip = cr.name_any();
    let name = report_name(&cpvip, &opts.node);
    let annotations = BTreeMap::from([
        (
            ANNOTATION_VIP_PRESENT.to_string(),
            if h.holding {
                h.net.addr().to_string()
            } else {
                String::new()
            },
        ),
        (
            ANNOTATION_APISERVER_HEALTHY.to_string(),
            healthy.to_string(),
        ),
        (
            ANNOTATION_NODE_ADDRESS.to_string(),
            opts.node_address.to_string(),
        ),
        (ANNOTATION_CPVIP.to_string(), cpvip.clone()),
    ]);
    let spec = LeaseSpec {
        holder_identity: Some(opts.node.clone()),
        lease_duration_seconds: Some(REPORT_SECONDS),
        renew_time: Some(now()),
        ..Default::default()
    };
    let result = match leases.get_opt(&name).await {
        Ok(Some(mut lease)) => {
            lease.metadata.annotations = Some(annotations);
            lease
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(LABEL_CPVIP.to_string(), cpvip.clone());
            lease.spec = Some(spec);
            leases
                .replace(&name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Ok(None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(LABEL_CPVIP.to_string(), cpvip.clone())])),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => h.reported = Some((h.holding, healthy, Instant::now())),
        Err(e) => tracing::debug!(%e, lease = %name, "writing the node report"),
    }
}

/// A node's report.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) node: String,
    pub(crate) vip_present: bool,
    pub(crate) healthy: bool,
    pub(crate) fresh: bool,
}

/// The fresh-or-not reports of `cpvip`, by node address.
pub(crate) async fn reports(
    client: &Client,
    opts: &Options,
    cpvip: &str,
) -> Result<BTreeMap<IpAddr, Report>, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let lp = ListParams::default().labels(&format!("{LABEL_CPVIP}={cpvip}"));
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = BTreeMap::new();
    for l in leases.list(&lp).await?.items {
        let ann = l.metadata.annotations.clone().unwrap_or_default();
        let Some(addr) = ann
            .get(ANNOTATION_NODE_ADDRESS)
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let spec = l.spec.clone().unwrap_or_default();
        let fresh = spec.renew_time.as_ref().is_some_and(|MicroTime(t)| {
            let age = now.duration_since(*t).as_secs_f64();
            age < f64::from(spec.lease_duration_seconds.unwrap_or(REPORT_SECONDS))
        });
        out.insert(
            addr,
            Report {
                node: spec.holder_identity.unwrap_or_default(),
                vip_present: ann
                    .get(ANNOTATION_VIP_PRESENT)
                    .is_some_and(|v| !v.is_empty()),
                healthy: ann
                    .get(ANNOTATION_APISERVER_HEALTHY)
                    .is_some_and(|v| v == "true"),
                fresh,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_api::{ControlPlaneVIPStatus, NodeVIPStatus};

    #[test]
    fn out_of_route_reads_the_status() {
        let mut cr = ControlPlaneVIP::new(
            "api",
            serde_json::from_value(
                serde_json::json!({"vip": "198.51.100.10", "routeTarget": "lab"}),
            )
            .unwrap(),
        );
        assert!(out_of_route(&cr, "node1", "10.0.0.1"));
        cr.status = Some(ControlPlaneVIPStatus {
            next_hops: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            nodes: vec![NodeVIPStatus {
                node: "node1".into(),
                address: "10.0.0.1".into(),
                routed: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(!out_of_route(&cr, "node1", "10.0.0.1"));
        assert!(out_of_route(&cr, "node3", "10.0.0.3"));
    }
}
