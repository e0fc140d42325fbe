//! Who holds a `vlan` segment address, kept true: the running pods'
//! objects created again ([`reassert_for_pods`], at start and whenever one
//! of them is deleted: [`keep_ownership`]), a deleted node's objects
//! released ([`release_departed_nodes`]), GC, and the one-time migration of
//! the previous design's ConfigMaps ([`migrate`]).
//!
//! Migration: the previous design kept a segment's allocations in the
//! ConfigMap `switchyard-ipam-<segment>` of [`IPAM_NAMESPACE`]. At start
//! each agent creates objects for the entries of its own node whose pod
//! still runs, removes every entry of its node (and of nodes whose Node
//! object is gone) from the ConfigMap, and deletes the ConfigMap once it is
//! empty. Until then, every node's allocations treat the addresses left in
//! it as taken ([`legacy_entries`]), so nodes upgraded first hand out none
//! of the addresses of nodes not upgraded yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use switchyard_api::{LABEL_ADDRESS_NODE, SegmentAddress};

use super::{
    CONFIGMAP_PREFIX, ClusterIpamError, ClusterPools, IPAM_NAMESPACE, PAGE, bounded, entry_of,
    holder, label_value, parse_holder,
};
use crate::config::{SegmentConfig, SegmentKind};
use crate::ipam::AttachmentKey;

type Held<'a> = dyn Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)> + Send + Sync + 'a;

fn vlan(segments: &[SegmentConfig]) -> impl Iterator<Item = &SegmentConfig> {
    segments.iter().filter(|s| s.kind == SegmentKind::Vlan)
}

/// The addresses still recorded in the previous design's ConfigMap of
/// `segment` (none when it is gone or unreadable).
pub(super) async fn legacy_entries(pools: &ClusterPools, segment: &str) -> Vec<Ipv4Addr> {
    let maps: Api<ConfigMap> = Api::namespaced(pools.client.clone(), IPAM_NAMESPACE);
    let name = format!("{CONFIGMAP_PREFIX}{segment}");
    match bounded("reading a previous-design ConfigMap", maps.get_opt(&name)).await {
        Ok(Some(cm)) => cm
            .data
            .unwrap_or_default()
            .keys()
            .filter_map(|k| k.parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Migrates this node's entries of `segment`'s previous-design ConfigMap
/// (see the module doc): objects for those its running attachments still
/// hold (`held`), then its entries and those of deleted nodes removed, the
/// ConfigMap deleted when empty. Retried on conflicting writes.
async fn migrate(pools: &ClusterPools, segment: &str, held: &[(AttachmentKey, Ipv4Addr)]) {
    let maps: Api<ConfigMap> = Api::namespaced(pools.client.clone(), IPAM_NAMESPACE);
    let nodes: Api<Node> = Api::all(pools.client.clone());
    let name = format!("{CONFIGMAP_PREFIX}{segment}");
    for _ in 0..16 {
        let cm = match bounded("reading a previous-design ConfigMap", maps.get_opt(&name)).await {
            Ok(Some(cm)) => cm,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%segment, error = %e, "cannot read the previous design's allocation ConfigMap; migrating at the next start");
                return;
            }
        };
        let mut data = cm.data.clone().unwrap_or_default();
        let mut departed: BTreeMap<String, bool> = BTreeMap::new();
        let mut drop = BTreeSet::new();
        for (ip, value) in &data {
            let Some((node, _)) = parse_holder(value) else {
                continue;
            };
            let gone = if node == pools.node {
                true
            } else if let Some(g) = departed.get(&node) {
                *g
            } else {
                let g = matches!(
                    bounded("reading a Node", nodes.get_opt(&node)).await,
                    Ok(None)
                );
                departed.insert(node.clone(), g);
                g
            };
            if gone {
                drop.insert(ip.clone());
            }
        }
        // This node's running pods' addresses get their objects first.
        let mine: BTreeMap<String, String> = data
            .iter()
            .filter(|(_, v)| parse_holder(v).is_some_and(|(n, _)| n == pools.node))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _ = pools
            .reassert(segment, || {
                held.iter()
                    .filter(|(k, ip)| mine.get(&ip.to_string()) == Some(&holder(&pools.node, k)))
                    .cloned()
                    .collect()
            })
            .await;
        data.retain(|k, _| !drop.contains(k));
        let result = if data.is_empty() {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: None,
                    resource_version: cm.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            bounded(
                "deleting a previous-design ConfigMap",
                maps.delete(&name, &dp),
            )
            .await
            .map(drop_value)
        } else {
            let mut cm = cm;
            cm.data = Some(data);
            bounded(
                "updating a previous-design ConfigMap",
                maps.replace(&name, &PostParams::default(), &cm),
            )
            .await
            .map(drop_value)
        };
        match result {
            Ok(()) => {
                tracing::info!(%segment, migrated = mine.len(), "migrated this node's addresses from the previous design's ConfigMap");
                return;
            }
            Err(e) if super::api_code(&e) == Some(409) => continue,
            Err(e) if super::api_code(&e) == Some(404) => return,
            Err(e) => {
                tracing::warn!(%segment, error = %e, "migrating the previous design's ConfigMap failed; again at the next start");
                return;
            }
        }
    }
}

fn drop_value<T>(_: T) {}

/// Releases `key`'s cluster-wide address in `segment` (every `vlan`
/// segment when unknown). Failures are logged, not returned: DEL must
/// succeed without the API server, and GC reclaims what is left.
pub async fn release_for_pod(
    pools: &ClusterPools,
    segments: &[SegmentConfig],
    segment: Option<&str>,
    key: &AttachmentKey,
) {
    for seg in vlan(segments).filter(|s| segment.is_none_or(|name| name == s.name)) {
        match pools.release(&seg.name, key).await {
            Ok(Some(ip)) => {
                tracing::debug!(segment = %seg.name, %ip, "cluster-wide address released")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(segment = %seg.name, error = %e, "cannot release the cluster-wide address now; GC will")
            }
        }
    }
}

/// The agent's side of [`ClusterPools::reassert`]: the objects of the
/// addresses this node's running pods hold in each `vlan` segment
/// (`held(segment)`, from the live attachments) created again where
/// missing, after migrating the previous design's ConfigMap. Failures and
/// addresses held by someone else are logged, not returned: the pods keep
/// running either way, and the next reconciliation tries again.
pub async fn reassert_for_pods(pools: &ClusterPools, segments: &[SegmentConfig], held: &Held<'_>) {
    for seg in vlan(segments) {
        migrate(pools, &seg.name, &held(&seg.name)).await;
        if held(&seg.name).is_empty() {
            continue;
        }
        match pools.reassert(&seg.name, || held(&seg.name)).await {
            Ok(conflicts) => {
                for (ip, other) in conflicts {
                    tracing::error!(segment = %seg.name, %ip, holder = %other, "a running pod's cluster-wide address is recorded for another holder: two pods may share it; delete one of them");
                }
            }
            Err(e) => {
                tracing::warn!(segment = %seg.name, error = %e, "cannot re-assert the running pods' cluster-wide addresses now; the next reconciliation will")
            }
        }
    }
}

/// Every allocation object of the cluster (all segments).
async fn list_all(pools: &ClusterPools) -> Result<Vec<SegmentAddress>, ClusterIpamError> {
    let addresses: Api<SegmentAddress> = Api::all(pools.client.clone());
    let mut lp = ListParams::default().limit(PAGE);
    let mut out = Vec::new();
    loop {
        let page = bounded("listing the SegmentAddresses", addresses.list(&lp)).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp.continue_token = Some(c),
            None => return Ok(out),
        }
    }
}

/// Releases the cluster-wide addresses of nodes whose Node object is gone
/// (for API servers without a garbage collector; with one, the objects
/// went with their owner): every other node named in an allocation object
/// is read afresh (a cache may not have seen a new node yet) and its
/// objects are deleted only when the API server answers that it does not
/// exist. Every agent does this (after its start-up reconciliation and on
/// each Node deletion it sees); the first deletes, the others find nothing
/// left. Failures are logged: the next deletion or restart tries again.
pub async fn release_departed_nodes(pools: &ClusterPools, _segments: &[SegmentConfig]) {
    let nodes: Api<Node> = Api::all(pools.client.clone());
    let all = match list_all(pools).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster-wide addresses to release those of deleted nodes");
            return;
        }
    };
    let mut by_node: BTreeMap<String, Vec<SegmentAddress>> = BTreeMap::new();
    for obj in all {
        if obj.spec.node != pools.node {
            by_node.entry(obj.spec.node.clone()).or_default().push(obj);
        }
    }
    for (node, objects) in by_node {
        let read = bounded(&format!("reading Node {node}"), nodes.get_opt(&node)).await;
        match read {
            Ok(None) => {}
            Ok(Some(_)) => continue,
            Err(e) => {
                tracing::warn!(%node, error = %e, "cannot tell whether the node still exists; its addresses are kept");
                continue;
            }
        }
        let mut released = 0;
        for obj in &objects {
            match pools.delete(obj).await {
                Ok(()) => released += 1,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "releasing a deleted node's address failed")
                }
            }
        }
        // This node's cache forgets them at its next list.
        tracing::info!(%node, released, "released the cluster-wide addresses of a deleted node");
    }
}

/// Whether a deleted allocation object held an address this node's pods
/// still hold (its segment if so).
fn still_held(obj: &SegmentAddress, node: &str, held: &Held<'_>) -> Option<String> {
    let (ip, n, key) = entry_of(obj)?;
    (n == node && held(&obj.spec.segment).contains(&(key, ip))).then(|| obj.spec.segment.clone())
}

/// Keeps the cluster-wide allocations true to who holds what, until `stop`:
/// [`release_departed_nodes`] whenever a Node object is deleted (and once
/// the Node watch has listed); the running pods' objects created again
/// ([`reassert_for_pods`]) whenever one of them is deleted. `segments`
/// gives the segments in effect, `held(segment)` the addresses this node's
/// pods hold in one.
pub async fn keep_ownership(
    pools: ClusterPools,
    segments: impl Fn() -> std::sync::Arc<Vec<SegmentConfig>>,
    held: impl Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)> + Send + Sync,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::TryStreamExt;
    use kube::runtime::watcher;
    let nodes: Api<Node> = Api::all(pools.client.clone());
    let mut objects_config = watcher::Config::default();
    if let Some(n) = label_value(&pools.node) {
        objects_config = objects_config.labels(&format!("{LABEL_ADDRESS_NODE}={n}"));
    }
    let mut node_events = std::pin::pin!(watcher(nodes, watcher::Config::default()));
    let addresses: Api<SegmentAddress> = Api::all(pools.client.clone());
    let mut object_events = std::pin::pin!(watcher(addresses, objects_config));
    loop {
        // The events first, handled after the select (nothing of it is held
        // across the awaits below).
        enum Seen {
            Stop,
            Node(Box<Result<Option<watcher::Event<Node>>, watcher::Error>>),
            Object(Box<Result<Option<watcher::Event<SegmentAddress>>, watcher::Error>>),
        }
        let seen = tokio::select! {
            _ = stop.wait_for(|s| *s) => Seen::Stop,
            ev = node_events.try_next() => Seen::Node(Box::new(ev)),
            ev = object_events.try_next() => Seen::Object(Box::new(ev)),
        };
        let (what, failed) = match seen {
            Seen::Stop => return,
            Seen::Node(ev) => match *ev {
                Ok(None) => return,
                Ok(Some(watcher::Event::Delete(n))) => {
                    if n.metadata.name.as_deref() == Some(pools.node()) {
                        // Objects owned by the old uid would be collected.
                        pools.set_node_uid(None);
                    }
                    release_departed_nodes(&pools, &segments()).await;
                    continue;
                }
                Ok(Some(watcher::Event::InitDone)) => {
                    release_departed_nodes(&pools, &segments()).await;
                    continue;
                }
                Ok(Some(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => {
                    if n.metadata.name.as_deref() == Some(pools.node()) {
                        pools.set_node_uid(n.metadata.uid.clone());
                    }
                    continue;
                }
                Ok(Some(_)) => continue,
                Err(e) => ("Nodes", e),
            },
            Seen::Object(ev) => match *ev {
                Ok(None) => return,
                Ok(Some(watcher::Event::Delete(obj))) => {
                    if let Some(segment) = still_held(&obj, &pools.node, &held) {
                        tracing::warn!(%segment, address = %obj.spec.address, "the allocation object of a running pod's address was deleted; creating it again");
                        let only: Vec<SegmentConfig> = segments()
                            .iter()
                            .filter(|s| s.name == segment)
                            .cloned()
                            .collect();
                        reassert_for_pods(&pools, &only, &held).await;
                    }
                    continue;
                }
                Ok(Some(_)) => continue,
                Err(e) => ("the SegmentAddresses", e),
            },
        };
        tracing::debug!(error = %failed, "watching {what} interrupted; retrying");
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// GC: releases this node's cluster-wide addresses whose attachment `keep`
/// rejects, in every `vlan` segment. `keep` is asked per object after a
/// fresh list, while this node's other allocation changes wait, so it can
/// consult live state: the agent keeps ADDs in flight there (see
/// [`crate::adds_in_flight`]).
pub async fn gc(
    pools: &ClusterPools,
    segments: &[SegmentConfig],
    keep: impl Fn(&AttachmentKey) -> bool,
) {
    for seg in vlan(segments) {
        match pools.release_unless(&seg.name, &keep).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(segment = %seg.name, released = n, "garbage-collected cluster-wide addresses")
            }
            Err(e) => {
                tracing::warn!(segment = %seg.name, error = %e, "cluster-wide address GC failed")
            }
        }
    }
}
