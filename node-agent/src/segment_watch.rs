//! Segments from the API: the agent watches `Segment` objects (switchyard.io/v1alpha1)
//! besides its configuration file's `segments:`, and applies every change without a
//! restart: the segment's address pool, the uplink's `trunks` (one OVSDB transaction per
//! uplink whose VLANs changed) and a flow resync (one atomic bundle).
//!
//! The file's segments come first: a `Segment` object with the name of a file segment,
//! or a VLAN already used by another segment on the same uplink, or an invalid spec, is
//! not applied, and the agent logs an error naming it (and counts it in
//! `switchyard_agent_segment_errors`); the file's segment keeps working. A `Segment` being
//! deleted stays in effect until it is gone (the controller holds it with a finalizer
//! while pod addresses of it are allocated).
//!
//! Every subnet of a `Segment` is in this agent's address pool, the first one's addresses
//! handed out first: a subnet appended by the namespace controller joins the pool live,
//! keeping the addresses in use (see `docs/namespace-networks.md`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{Event, watcher};
use kube::{Client, ResourceExt};
use switchyard_api::Segment;
use switchyard_ovs::ovsdb;
use tokio::sync::watch;

use crate::config::{SegmentConfig, SegmentKind, validate_segment};
use crate::overlay::Overlay;
use crate::state::{NodeState, lock};

/// A `Segment` object as the agent's segment configuration, or why it cannot be one.
pub fn from_api(seg: &Segment) -> Result<SegmentConfig, String> {
    let name = seg.name_any();
    let subnets = seg.spec.parsed_subnets(&name).map_err(|e| e.to_string())?;
    let config = match seg.spec.kind {
        switchyard_api::SegmentKind::Overlay => SegmentConfig {
            vlan: seg.spec.vlan,
            ..SegmentConfig::overlay(&name)
        },
        switchyard_api::SegmentKind::Vlan => SegmentConfig {
            name: name.clone(),
            kind: SegmentKind::Vlan,
            vlan: seg.spec.vlan,
            subnet: subnets.first().map(|s| s.cidr),
            gateway: subnets.first().map(|s| s.gateway),
            uplink: seg.spec.uplink.clone(),
            allow_untagged: false,
            more_subnets: subnets
                .iter()
                .skip(1)
                .map(|s| (s.cidr, s.gateway))
                .collect(),
        },
    };
    validate_segment(&config).map_err(|e| e.to_string())?;
    Ok(config)
}

/// The segments in effect: the file's, then each API segment (by name) that is valid and
/// clashes with none before it; with an error message per API segment left out.
pub fn merge(
    file: &[SegmentConfig],
    api: &BTreeMap<String, Segment>,
) -> (Vec<SegmentConfig>, Vec<String>) {
    let mut out: Vec<SegmentConfig> = file.to_vec();
    let mut errors = Vec::new();
    for (name, seg) in api {
        if file.iter().any(|f| &f.name == name) {
            errors.push(format!(
                "Segment {name:?} from the API has the name of a segment in this agent's configuration file; the file's segment is kept and the Segment object is ignored (rename one of them)"
            ));
            continue;
        }
        let config = match from_api(seg) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("Segment {name:?} is not applied: {e}"));
                continue;
            }
        };
        if config.kind == SegmentKind::Vlan
            && let Some(other) = out.iter().find(|o| {
                o.kind == SegmentKind::Vlan && o.vlan == config.vlan && o.uplink == config.uplink
            })
        {
            errors.push(format!(
                "Segment {name:?} is not applied: VLAN {} on uplink {:?} is already segment {:?}'s",
                config.vlan,
                config.uplink.as_deref().unwrap_or_default(),
                other.name
            ));
            continue;
        }
        out.push(config);
    }
    (out, errors)
}

/// The segments in effect at start: the file's and the API's as listed now, so that
/// reconciliation finds the pools and uplinks of pods attached to API segments before the
/// restart. Without the API (or the CRD) within 5 s: the file's alone, with a warning; the
/// watch applies the rest when it can.
pub async fn initial(client: Client, file: &[SegmentConfig]) -> Vec<SegmentConfig> {
    let api: Api<Segment> = Api::all(client);
    let listed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        api.list(&Default::default()),
    )
    .await;
    match listed {
        Ok(Ok(list)) => {
            let known: BTreeMap<String, Segment> =
                list.items.into_iter().map(|s| (s.name_any(), s)).collect();
            let (segments, errors) = merge(file, &known);
            for e in &errors {
                tracing::error!("{e}");
            }
            segments
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list Segment objects at start; the file's segments for now");
            file.to_vec()
        }
        Err(_) => {
            tracing::warn!("listing Segment objects timed out; the file's segments for now");
            file.to_vec()
        }
    }
}

/// Watches `Segment` objects and applies each change until `shutdown`.
pub(crate) async fn run(
    state: Arc<NodeState>,
    overlay: Arc<Overlay>,
    ovsdb: ovsdb::Client,
    client: Client,
    mut shutdown: watch::Receiver<bool>,
) {
    // Backoff: before the CRD is installed every list fails.
    let mut events = watcher(Api::<Segment>::all(client), Default::default())
        .default_backoff()
        .boxed();
    let mut known: BTreeMap<String, Segment> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, Segment>> = None;
    let mut listed = false;
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match ev {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Segment watch error (retrying)");
                continue;
            }
            Some(Ok(Event::Init)) => {
                init = Some(BTreeMap::new());
                continue;
            }
            Some(Ok(Event::InitApply(s))) => {
                init.get_or_insert_default().insert(s.name_any(), s);
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                known = init.take().unwrap_or_default();
                listed = true;
            }
            Some(Ok(Event::Apply(s))) => {
                known.insert(s.name_any(), s);
            }
            Some(Ok(Event::Delete(s))) => {
                known.remove(&s.name_any());
            }
        }
        if listed {
            apply(&state, &overlay, &ovsdb, &known).await;
        }
    }
}

/// Makes the segments of `known` (with the file's) the ones in effect, when they differ.
async fn apply(
    state: &NodeState,
    overlay: &Overlay,
    ovsdb: &ovsdb::Client,
    known: &BTreeMap<String, Segment>,
) {
    let (segments, errors) = merge(&state.config.segments, known);
    for e in &errors {
        tracing::error!("{e}");
    }
    state
        .metrics
        .segment_errors
        .set(i64::try_from(errors.len()).unwrap_or(i64::MAX));
    if *state.segments() == segments {
        return;
    }
    {
        let mut pools = lock(&state.pools);
        for seg in segments.iter().filter(|s| s.kind == SegmentKind::Vlan) {
            let Some(subnet) = seg.subnet else { continue };
            if let Some(pool) = pools.get_mut(&seg.name)
                && pool.network() == subnet
                && pool.gateway() == seg.gateway
            {
                // The same first subnet: appended subnets join, the addresses in use stay.
                for (more, gateway) in &seg.more_subnets {
                    if let Err(e) = pool.add_subnet(*more, Some(*gateway)) {
                        tracing::error!(segment = %seg.name, error = %e, "Segment's appended subnet refused");
                    }
                }
                continue;
            }
            if pools.get(&seg.name).is_some_and(|p| p.in_use() > 0) {
                continue;
            }
            match seg.pool() {
                Ok(Some(pool)) => {
                    pools.insert(seg.name.clone(), pool);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(segment = %seg.name, error = %e, "Segment's pool refused")
                }
            }
        }
    }
    let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(segments = ?names, "segments changed");
    *state.segments.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(segments.clone());
    match crate::uplink::ensure_uplinks(ovsdb, &state.config.bridge, &segments).await {
        Ok(uplinks) => *state.uplinks.write().unwrap_or_else(|p| p.into_inner()) = uplinks,
        Err(e) => tracing::error!(error = %e, "uplinks of the new segments not attached"),
    }
    if let Err(e) = crate::reconcile::resync_flows(state, overlay).await {
        tracing::error!(error = %e, "flows of the new segments not installed (next resync)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, vlan: u16, cidr: &str, gw: &str) -> Segment {
        Segment::new(
            name,
            serde_json::from_value(serde_json::json!({
                "vlan": vlan, "uplink": "trunk0",
                "subnets": [{"cidr": cidr, "gateway": gw}]
            }))
            .unwrap(),
        )
    }

    fn file_blue() -> SegmentConfig {
        "name=blue,kind=vlan,vlan=100,subnet=10.20.0.0/24,gateway=10.20.0.1,uplink=trunk0"
            .parse()
            .unwrap()
    }

    #[test]
    fn api_segments_join_the_files_and_clashes_are_named() {
        let api: BTreeMap<String, Segment> = [
            (
                "blue".to_string(),
                seg("blue", 300, "10.30.0.0/24", "10.30.0.1"),
            ),
            (
                "green".to_string(),
                seg("green", 200, "10.40.0.0/26", "10.40.0.1"),
            ),
            (
                "twin".to_string(),
                seg("twin", 100, "10.50.0.0/26", "10.50.0.1"),
            ),
            (
                "bad".to_string(),
                seg("bad", 201, "10.60.0.0/26", "10.61.0.1"),
            ),
        ]
        .into();
        let (segments, errors) = merge(&[SegmentConfig::overlay("default"), file_blue()], &api);
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default", "blue", "green"]);
        assert_eq!(segments[1], file_blue());
        assert_eq!(segments[2].subnet.unwrap().to_string(), "10.40.0.0/26");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("\"bad\" is not applied") && e.contains("gateway"))
        );
        assert!(errors.iter().any(|e| e.contains(
            "\"blue\" from the API has the name of a segment in this agent's configuration file"
        )));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("\"twin\"") && e.contains("already segment \"blue\"'s"))
        );
    }

    #[test]
    fn appended_subnets_join_the_pool_and_overlapping_ones_are_refused() {
        let two = |second: &str, gw: &str| {
            Segment::new(
                "ns-small",
                serde_json::from_value(serde_json::json!({
                    "vlan": 320, "uplink": "trunk0",
                    "subnets": [{"cidr": "10.32.0.0/29", "gateway": "10.32.0.1"},
                                {"cidr": second, "gateway": gw}]
                }))
                .unwrap(),
            )
        };
        let config = from_api(&two("10.32.0.8/29", "10.32.0.9")).unwrap();
        assert_eq!(
            config.more_subnets,
            [(
                "10.32.0.8/29".parse().unwrap(),
                "10.32.0.9".parse().unwrap()
            )]
        );
        let pool = config.pool().unwrap().unwrap();
        assert_eq!(pool.capacity(), 10);
        assert_eq!(
            pool.subnet_of("10.32.0.12".parse().unwrap()),
            Some((
                "10.32.0.8/29".parse().unwrap(),
                Some("10.32.0.9".parse().unwrap())
            ))
        );
        let err = from_api(&two("10.32.0.0/28", "10.32.0.9")).unwrap_err();
        assert!(err.contains("overlaps its subnet 10.32.0.0/29"), "{err}");
    }
}
