//! Cluster-wide address allocation for `vlan` segments, without a central
//! allocator: one ConfigMap per segment (`switchyard-ipam-<segment>` in
//! [`IPAM_NAMESPACE`]) whose `data` maps each allocated address to its
//! holder (`<node>/<container id>/<ifname>`). Every change is a read, a
//! local decision (the same [`Pool`] rules as node-local pools: network,
//! broadcast and gateway reserved, static requests checked) and a `replace`
//! carrying the read `resourceVersion`; the API server refuses it with 409
//! Conflict when another node wrote in between, and the change is retried
//! on the fresh object. Two nodes allocating at the same moment therefore
//! never get the same address. A missing ConfigMap is created (409
//! AlreadyExists when another node won the race: retried the same way).
//!
//! Who owns an entry: the node named in it. A restarted agent records its
//! running pods' addresses again ([`reassert_for_pods`]), so a lost or
//! restored ConfigMap hands out no duplicate, and so does a running agent
//! that sees its segment's ConfigMap deleted or replaced without them; the
//! entries of a node whose Node object is gone are released by the other
//! agents ([`keep_ownership`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::ipam::{AttachmentKey, IpamError, Pool};

/// Namespace of the allocation ConfigMaps (the one the DaemonSet runs in).
pub const IPAM_NAMESPACE: &str = "switchyard-system";
/// Prefix of the allocation ConfigMaps' names.
pub const CONFIGMAP_PREFIX: &str = "switchyard-ipam-";
/// Attempts of one change before giving up on conflicts.
const MAX_ATTEMPTS: u32 = 64;
/// Time limit of one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a cluster-wide allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterIpamError {
    /// The pool refused (exhausted, address outside or in use).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// No answer in time.
    #[error("{0}: no answer from the API server within {REQUEST_TIMEOUT:?}")]
    Timeout(String),
    /// Other writers kept winning.
    #[error(
        "ConfigMap {namespace}/{name} kept changing under this node ({MAX_ATTEMPTS} conflicting writes); retry"
    )]
    Contended {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// The holder recorded for an address: `<node>/<container id>/<ifname>`.
pub fn holder(node: &str, key: &AttachmentKey) -> String {
    format!("{node}/{}/{}", key.container_id, key.ifname)
}

/// Parses a holder back into node and key; `None` if malformed.
pub fn parse_holder(value: &str) -> Option<(String, AttachmentKey)> {
    let mut parts = value.splitn(3, '/');
    let (node, container, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    if node.is_empty() || container.is_empty() || ifname.is_empty() {
        return None;
    }
    Some((node.to_string(), AttachmentKey::new(container, ifname)))
}

/// The segment's pool with every recorded allocation restored (malformed
/// or foreign entries keep their address reserved under a placeholder key).
fn pool_from(base: &Pool, data: &BTreeMap<String, String>) -> Pool {
    let mut pool = base.clone();
    for (ip, value) in data {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let key = parse_holder(value)
            .map(|(_, k)| k)
            .unwrap_or_else(|| AttachmentKey::new(format!("unparsable:{value}"), ip.to_string()));
        // Addresses outside the subnets (a changed configuration) are ignored.
        let _ = pool.restore([(key, ip)]);
    }
    pool
}

/// The cluster-wide pools of `vlan` segments, seen from one node.
#[derive(Clone)]
pub struct ClusterPools {
    client: kube::Client,
    namespace: String,
    node: String,
}

impl std::fmt::Debug for ClusterPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPools")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterIpamError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ClusterIpamError::Api {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(ClusterIpamError::Timeout(what.to_string())),
    }
}

fn is_conflict(e: &ClusterIpamError) -> bool {
    matches!(e, ClusterIpamError::Api { source: kube::Error::Api(s), .. } if s.code == 409)
}

impl ClusterPools {
    /// Pools in [`IPAM_NAMESPACE`] for node `node`.
    pub fn new(client: kube::Client, node: &str) -> ClusterPools {
        Self::in_namespace(client, IPAM_NAMESPACE, node)
    }

    /// Pools in another namespace (tests).
    pub fn in_namespace(client: kube::Client, namespace: &str, node: &str) -> ClusterPools {
        ClusterPools {
            client,
            namespace: namespace.to_string(),
            node: node.to_string(),
        }
    }

    fn name(segment: &str) -> String {
        format!("{CONFIGMAP_PREFIX}{segment}")
    }

    /// Applies `change` to the segment's allocation map until the write
    /// wins (409 Conflict/AlreadyExists: read again and retry). `change`
    /// returns `false` (and the result) when nothing needs writing.
    async fn update<T>(
        &self,
        segment: &str,
        mut change: impl FnMut(&mut BTreeMap<String, String>) -> Result<(bool, T), ClusterIpamError>,
    ) -> Result<T, ClusterIpamError> {
        let name = Self::name(segment);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Spread the retries of nodes that collided.
                let jitter = u64::from(attempt.min(10)) * 3 + u64::from(std::process::id() % 7);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let current = bounded(&format!("reading ConfigMap {name}"), api.get_opt(&name)).await?;
            let (mut data, existing) = match current {
                Some(cm) => (cm.data.clone().unwrap_or_default(), Some(cm)),
                None => (BTreeMap::new(), None),
            };
            let (write, result) = change(&mut data)?;
            if !write {
                return Ok(result);
            }
            let outcome = match existing {
                Some(mut cm) => {
                    cm.data = Some(data);
                    bounded(
                        &format!("updating ConfigMap {name}"),
                        api.replace(&name, &PostParams::default(), &cm),
                    )
                    .await
                    .map(drop)
                }
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/name".to_string(),
                                "switchyard".to_string(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        data: Some(data),
                        ..ConfigMap::default()
                    };
                    bounded(
                        &format!("creating ConfigMap {name}"),
                        api.create(&PostParams::default(), &cm),
                    )
                    .await
                    .map(drop)
                }
            };
            match outcome {
                Ok(()) => return Ok(result),
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(configmap = %name, attempt, "allocation write lost a race; retrying");
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClusterIpamError::Contended {
            namespace: self.namespace.clone(),
            name,
        })
    }

    /// Allocates an address of `segment` for `key` (the one it already
    /// holds, if any), `requested` if given (an error if taken or outside
    /// the subnet).
    pub async fn allocate(
        &self,
        segment: &str,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        key: &AttachmentKey,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ClusterIpamError> {
        let base = Pool::new(subnet, gateway)?;
        self.allocate_in(segment, &base, key, requested).await
    }

    /// [`ClusterPools::allocate`] from `base`, an empty pool of the segment's subnets (the
    /// first subnet's addresses before an appended one's).
    pub async fn allocate_in(
        &self,
        segment: &str,
        base: &Pool,
        key: &AttachmentKey,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ClusterIpamError> {
        let value = holder(&self.node, key);
        self.update(segment, |data| {
            let mut pool = pool_from(base, data);
            if let Some(held) = pool.lookup(key) {
                if requested.is_none_or(|r| r == held) {
                    return Ok((false, held));
                }
                pool.release(key);
                data.retain(|_, v| *v != value);
            }
            let ip = match requested {
                Some(ip) => pool.allocate_specific(key, ip)?,
                None => pool.allocate(key)?,
            };
            data.insert(ip.to_string(), value.clone());
            Ok((true, ip))
        })
        .await
    }

    /// Releases whatever `key` holds in `segment`; returns the address.
    pub async fn release(
        &self,
        segment: &str,
        key: &AttachmentKey,
    ) -> Result<Option<Ipv4Addr>, ClusterIpamError> {
        let value = holder(&self.node, key);
        self.update(segment, |data| {
            let held: Vec<String> = data
                .iter()
                .filter(|(_, v)| **v == value)
                .map(|(k, _)| k.clone())
                .collect();
            let ip = held.first().and_then(|s| s.parse().ok());
            if held.is_empty() {
                return Ok((false, None));
            }
            for k in held {
                data.remove(&k);
            }
            Ok((true, ip))
        })
        .await
    }

    /// Releases every address this node holds in `segment` whose key
    /// `keep` rejects (garbage collection); returns how many.
    pub async fn release_unless(
        &self,
        segment: &str,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Result<usize, ClusterIpamError> {
        let node = self.node.clone();
        self.update(segment, |data| {
            let before = data.len();
            data.retain(|_, v| match parse_holder(v) {
                Some((n, k)) => n != node || keep(&k),
                None => true,
            });
            let removed = before - data.len();
            Ok((removed > 0, removed))
        })
        .await
    }

    /// Records again the addresses this node's running attachments hold in
    /// `segment`: an entry lost with its ConfigMap (deleted, restored from
    /// an old copy) is written back, so the address is not handed out
    /// twice. One write for all that are missing. `held` is asked after
    /// each read of the ConfigMap: an attachment DEL removes before it
    /// releases the address, so an entry a DEL has released is never
    /// written back. Returns the addresses another holder has meanwhile (a
    /// duplicate already handed out), left as they are.
    pub async fn reassert(
        &self,
        segment: &str,
        held: impl Fn() -> Vec<(AttachmentKey, Ipv4Addr)>,
    ) -> Result<Vec<(Ipv4Addr, String)>, ClusterIpamError> {
        let node = self.node.clone();
        self.update(segment, |data| {
            let mut conflicts = Vec::new();
            let mut write = false;
            for (key, ip) in held() {
                let mine = holder(&node, &key);
                match data.get(&ip.to_string()) {
                    Some(v) if *v == mine => {}
                    Some(other) => conflicts.push((ip, other.clone())),
                    None => {
                        data.insert(ip.to_string(), mine);
                        write = true;
                    }
                }
            }
            Ok((write, conflicts))
        })
        .await
    }

    /// Releases every address of `segment` recorded for `node` (a node
    /// whose Node object is gone); returns how many.
    pub async fn release_node(&self, segment: &str, node: &str) -> Result<usize, ClusterIpamError> {
        self.update(segment, |data| {
            let before = data.len();
            data.retain(|_, v| parse_holder(v).is_none_or(|(n, _)| n != node));
            let removed = before - data.len();
            Ok((removed > 0, removed))
        })
        .await
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Every allocation of `segment` with its holder's node and key.
    pub async fn allocations(
        &self,
        segment: &str,
    ) -> Result<Vec<(Ipv4Addr, String, AttachmentKey)>, ClusterIpamError> {
        let name = Self::name(segment);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = bounded(&format!("reading ConfigMap {name}"), api.get_opt(&name)).await?;
        Ok(cm
            .and_then(|c| c.data)
            .unwrap_or_default()
            .iter()
            .filter_map(|(ip, v)| {
                let (n, k) = parse_holder(v)?;
                Some((ip.parse().ok()?, n, k))
            })
            .collect())
    }
}

/// A `vlan` segment's cluster-wide allocation for a pod failed.
#[derive(Debug, thiserror::Error)]
#[error("segment {segment}: {source}")]
pub struct ClusterAllocationError {
    /// The segment.
    pub segment: String,
    /// Why.
    #[source]
    pub source: ClusterIpamError,
}

/// The agent's side: a pod ADD in a `vlan` segment gets its address here
/// (then recorded in the node's local pool like a static request);
/// `Ok(None)` for other segments.
pub async fn allocate_for_pod(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
    segment: &str,
    key: &AttachmentKey,
    requested: Option<Ipv4Addr>,
) -> Result<Option<Ipv4Addr>, ClusterAllocationError> {
    let Some(seg) = segments
        .iter()
        .find(|s| s.name == segment)
        .filter(|s| s.kind == crate::config::SegmentKind::Vlan)
    else {
        return Ok(None);
    };
    let failed = |source| ClusterAllocationError {
        segment: seg.name.clone(),
        source,
    };
    let Some(base) = seg.pool().map_err(|e| failed(e.into()))? else {
        return Ok(None);
    };
    pools
        .allocate_in(&seg.name, &base, key, requested)
        .await
        .map(Some)
        .map_err(failed)
}

/// Releases `key`'s cluster-wide address in `segment` (every `vlan`
/// segment when unknown). Failures are logged, not returned: DEL must
/// succeed without the API server, and GC reclaims what is left.
pub async fn release_for_pod(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
    segment: Option<&str>,
    key: &AttachmentKey,
) {
    let vlan_segments = segments
        .iter()
        .filter(|s| s.kind == crate::config::SegmentKind::Vlan)
        .filter(|s| segment.is_none_or(|name| name == s.name));
    for seg in vlan_segments {
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

/// The agent's side of [`ClusterPools::reassert`]: the addresses this
/// node's running pods hold in each `vlan` segment (`held(segment)`, from
/// the live attachments) recorded again. Failures and addresses held by
/// someone else are logged, not returned: the pods keep running either way,
/// and the next reconciliation tries again.
pub async fn reassert_for_pods(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
    held: &(dyn Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)> + Send + Sync),
) {
    for seg in segments
        .iter()
        .filter(|s| s.kind == crate::config::SegmentKind::Vlan)
    {
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

/// Whether an allocation ConfigMap as watched lacks an address this node's
/// pods hold in its segment (the segment's name if so): `deleted` (the
/// event carries the last state, which had them), or changed to a copy
/// without it.
fn lacks_held(
    cm: &ConfigMap,
    deleted: bool,
    node: &str,
    held: &dyn Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)>,
) -> Option<String> {
    let segment = cm
        .metadata
        .name
        .as_deref()?
        .strip_prefix(CONFIGMAP_PREFIX)?;
    let data = if deleted {
        BTreeMap::new()
    } else {
        cm.data.clone().unwrap_or_default()
    };
    held(segment)
        .iter()
        .any(|(key, ip)| data.get(&ip.to_string()) != Some(&holder(node, key)))
        .then(|| segment.to_string())
}

/// Releases the cluster-wide addresses of nodes whose Node object is gone:
/// every other node named in a `vlan` segment's allocations is read afresh
/// (a cache may not have seen a new node yet) and its entries are released
/// only when the API server answers that it does not exist. Every agent
/// does this (after its start-up reconciliation and on each Node deletion
/// it sees); the first writes, the others find nothing left. Failures are
/// logged: the next deletion or restart tries again.
pub async fn release_departed_nodes(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
) {
    let nodes: Api<Node> = Api::all(pools.client.clone());
    let mut gone: BTreeMap<String, bool> = BTreeMap::new();
    for seg in segments
        .iter()
        .filter(|s| s.kind == crate::config::SegmentKind::Vlan)
    {
        let holders: BTreeSet<String> = match pools.allocations(&seg.name).await {
            Ok(all) => all
                .into_iter()
                .map(|(_, node, _)| node)
                .filter(|n| n != pools.node())
                .collect(),
            Err(e) => {
                tracing::warn!(segment = %seg.name, error = %e, "cannot read the cluster-wide addresses to release those of deleted nodes");
                continue;
            }
        };
        for node in holders {
            let departed = match gone.get(&node) {
                Some(d) => *d,
                None => {
                    let read = bounded(&format!("reading Node {node}"), nodes.get_opt(&node)).await;
                    let departed = matches!(read, Ok(None));
                    if let Err(e) = read {
                        tracing::warn!(%node, error = %e, "cannot tell whether the node still exists; its addresses are kept");
                    }
                    gone.insert(node.clone(), departed);
                    departed
                }
            };
            if !departed {
                continue;
            }
            match pools.release_node(&seg.name, &node).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(segment = %seg.name, %node, released = n, "released the cluster-wide addresses of a deleted node")
                }
                Err(e) => {
                    tracing::warn!(segment = %seg.name, %node, error = %e, "releasing a deleted node's addresses failed")
                }
            }
        }
    }
}

/// [`reassert_for_pods`] for the segment of `cm` if it lacks an address
/// this node's pods hold there ([`lacks_held`]).
async fn reassert_if_lacking(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
    held: &(dyn Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)> + Send + Sync),
    cm: &ConfigMap,
    deleted: bool,
) {
    let Some(segment) = lacks_held(cm, deleted, pools.node(), held) else {
        return;
    };
    tracing::warn!(%segment, "the segment's allocation ConfigMap lost addresses of this node's running pods; recording them again");
    let only: Vec<crate::config::SegmentConfig> = segments
        .iter()
        .filter(|s| s.name == segment)
        .cloned()
        .collect();
    reassert_for_pods(pools, &only, held).await;
}

/// Keeps the cluster-wide allocations true to who holds what, until `stop`:
/// [`release_departed_nodes`] whenever a Node object is deleted (and once
/// the Node watch has listed); the running pods' addresses recorded again
/// ([`reassert_for_pods`]) whenever a segment's ConfigMap is deleted or
/// changes without one of them. `segments` gives the segments in effect,
/// `held(segment)` the addresses this node's pods hold in one.
pub async fn keep_ownership(
    pools: ClusterPools,
    segments: impl Fn() -> std::sync::Arc<Vec<crate::config::SegmentConfig>>,
    held: impl Fn(&str) -> Vec<(AttachmentKey, Ipv4Addr)> + Send + Sync,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::TryStreamExt;
    use kube::runtime::watcher;
    let nodes: Api<Node> = Api::all(pools.client.clone());
    let maps: Api<ConfigMap> = Api::namespaced(pools.client.clone(), &pools.namespace);
    let mut node_events = std::pin::pin!(watcher(nodes, watcher::Config::default()));
    let mut map_events = std::pin::pin!(watcher(maps, watcher::Config::default()));
    loop {
        // The events first, handled after the select (nothing of it is held
        // across the awaits below).
        enum Seen {
            Stop,
            Node(Box<Result<Option<watcher::Event<Node>>, watcher::Error>>),
            Map(Box<Result<Option<watcher::Event<ConfigMap>>, watcher::Error>>),
        }
        let seen = tokio::select! {
            _ = stop.wait_for(|s| *s) => Seen::Stop,
            ev = node_events.try_next() => Seen::Node(Box::new(ev)),
            ev = map_events.try_next() => Seen::Map(Box::new(ev)),
        };
        let (what, failed) = match seen {
            Seen::Stop => return,
            Seen::Node(ev) => match *ev {
                Ok(None) => return,
                Ok(Some(watcher::Event::Delete(_) | watcher::Event::InitDone)) => {
                    release_departed_nodes(&pools, &segments()).await;
                    continue;
                }
                Ok(Some(_)) => continue,
                Err(e) => ("Nodes", e),
            },
            Seen::Map(ev) => match *ev {
                Ok(None) => return,
                Ok(Some(watcher::Event::Delete(cm))) => {
                    reassert_if_lacking(&pools, &segments(), &held, &cm, true).await;
                    continue;
                }
                Ok(Some(watcher::Event::Apply(cm))) => {
                    reassert_if_lacking(&pools, &segments(), &held, &cm, false).await;
                    continue;
                }
                Ok(Some(_)) => continue,
                Err(e) => ("the allocation ConfigMaps", e),
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
/// rejects, in every `vlan` segment. `keep` is asked per entry while the
/// ConfigMap is rewritten (again on a conflict), so it can consult live
/// state: the agent keeps ADDs in flight there (see
/// [`crate::adds_in_flight`]).
pub async fn gc(
    pools: &ClusterPools,
    segments: &[crate::config::SegmentConfig],
    keep: impl Fn(&AttachmentKey) -> bool,
) {
    for seg in segments
        .iter()
        .filter(|s| s.kind == crate::config::SegmentKind::Vlan)
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_round_trips() {
        let k = AttachmentKey::new("abc123", "eth0");
        assert_eq!(holder("node2", &k), "node2/abc123/eth0");
        assert_eq!(parse_holder("node2/abc123/eth0"), Some(("node2".into(), k)));
        assert_eq!(parse_holder("node2/abc123"), None);
        assert_eq!(parse_holder("//eth0"), None);
    }

    #[test]
    fn pool_from_reserves_recorded_addresses_even_malformed_ones() {
        let data = BTreeMap::from([
            ("10.100.0.2".to_string(), "node1/c1/eth0".to_string()),
            ("10.100.0.3".to_string(), "garbage".to_string()),
            ("10.200.0.9".to_string(), "node1/c9/eth0".to_string()),
        ]);
        let base = Pool::new(
            "10.100.0.0/24".parse().unwrap(),
            Some("10.100.0.1".parse().unwrap()),
        )
        .unwrap();
        let mut pool = pool_from(&base, &data);
        let ip = pool.allocate(&AttachmentKey::new("c2", "eth0")).unwrap();
        assert_eq!(ip, "10.100.0.4".parse::<Ipv4Addr>().unwrap());
    }
}
