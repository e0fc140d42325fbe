//! Cluster-wide address allocation for `vlan` segments, without a central
//! allocator: one small `SegmentAddress` object (`switchyard.io/v1alpha1`,
//! cluster-scoped) per allocated address, named `<segment>.<address>`
//! ([`switchyard_api::segment_address_name`]), as Kubernetes' own
//! `IPAddress` objects are for Service addresses. Its spec names the holder
//! (node, container id, interface); it is labelled with its segment (and
//! node) and owned by its node's Node object.
//!
//! Uniqueness holds by construction: the API server refuses a second object
//! of the same name with 409 AlreadyExists. A node picks a free address from
//! what it knows of the segment (a cache filled by one labelled list, kept
//! up to date by its own creates and deletes, and by the 409s it meets),
//! creates the object and, on 409, marks the address taken and tries a
//! free one at a random place of the first subnet with one (others are
//! allocating where it was; after
//! 8 refusals in a row it lists afresh); when the cache shows the segment
//! full it lists afresh once. A
//! static request creates exactly its name. No object grows with the
//! segment: 20,000 addresses are 20,000 objects of a few hundred bytes
//! (node-agent/tests/multinode_ipam.rs).
//!
//! Who owns an object: the node in its spec. A restarted agent creates again
//! the objects of its running pods ([`reassert_for_pods`]), so lost objects
//! hand out no duplicate, and so does a running agent that sees one of them
//! deleted ([`keep_ownership`]). A deleted Node's objects go with it: the
//! API server's garbage collector deletes them (ownerReference), and the
//! other agents release them too ([`release_departed_nodes`], for API
//! servers without one). The ConfigMaps of the previous design are migrated
//! once ([`migrate`](ownership)).

mod known;
mod objects;
mod ownership;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use switchyard_api::SegmentAddress;

use crate::ipam::{AttachmentKey, IpamError, Pool};
use known::{Known, placeholder, seed};
use objects::{api_code, bounded, label_value};

pub use ownership::{
    gc, keep_ownership, reassert_for_pods, release_departed_nodes, release_for_pod,
};

/// Namespace of the previous design's allocation ConfigMaps (migrated and
/// deleted at start, [`ownership`]).
pub const IPAM_NAMESPACE: &str = "switchyard-system";
/// Prefix of the previous design's allocation ConfigMaps' names.
pub const CONFIGMAP_PREFIX: &str = "switchyard-ipam-";
/// Time limit of one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Creates refused in a row (409) after which the cache is listed afresh.
const STALE_AFTER: u32 = 8;
/// Objects per page when listing a segment.
const PAGE: u32 = 2000;

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
}

/// The holder recorded for an address: `<node>/<container id>/<ifname>`
/// (logs and the previous design's ConfigMap entries).
pub fn holder(node: &str, key: &AttachmentKey) -> String {
    format!("{node}/{}/{}", key.container_id, key.ifname)
}

/// Parses a previous-design holder back into node and key; `None` if malformed.
pub fn parse_holder(value: &str) -> Option<(String, AttachmentKey)> {
    let mut parts = value.splitn(3, '/');
    let (node, container, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    if node.is_empty() || container.is_empty() || ifname.is_empty() {
        return None;
    }
    Some((node.to_string(), AttachmentKey::new(container, ifname)))
}

/// Address, node and key of an allocation object; `None` if malformed.
pub fn entry_of(obj: &SegmentAddress) -> Option<(Ipv4Addr, String, AttachmentKey)> {
    let s = &obj.spec;
    if s.node.is_empty() || s.container_id.is_empty() || s.interface.is_empty() {
        return None;
    }
    Some((
        s.address.parse().ok()?,
        s.node.clone(),
        AttachmentKey::new(&s.container_id, &s.interface),
    ))
}

/// The cluster-wide pools of `vlan` segments, seen from one node. Clones
/// share one cache; every change of this node goes through it, one at a
/// time per node.
#[derive(Clone)]
pub struct ClusterPools {
    client: kube::Client,
    node: String,
    known: Arc<tokio::sync::Mutex<BTreeMap<String, Known>>>,
    /// The Node object's uid, for the ownerReference (read once; renewed
    /// when the Node object is seen with another uid).
    node_uid: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for ClusterPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPools")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ClusterPools {
    /// Pools for node `node`.
    pub fn new(client: kube::Client, node: &str) -> ClusterPools {
        ClusterPools {
            client,
            node: node.to_string(),
            known: Arc::default(),
            node_uid: Arc::default(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sets the Node object's uid the objects are owned by (seen by a watch).
    pub fn set_node_uid(&self, uid: Option<String>) {
        *self.node_uid.lock().unwrap_or_else(|p| p.into_inner()) = uid;
    }

    /// Fills `known[segment]` afresh from the API server (and the previous
    /// design's ConfigMap, if one is left: its addresses stay taken until
    /// their node migrated them).
    async fn relist(
        &self,
        known: &mut BTreeMap<String, Known>,
        segment: &str,
        base: &Pool,
    ) -> Result<(), ClusterIpamError> {
        let objects = self.list(segment).await?;
        let legacy = ownership::legacy_entries(self, segment).await;
        let mut k = Known::new(base);
        for obj in &objects {
            if let Some((ip, node, key)) = entry_of(obj) {
                k.take(ip, (node == self.node).then_some(&key));
            } else if let Ok(ip) = obj.spec.address.parse() {
                k.take(ip, None);
            }
        }
        for ip in legacy {
            k.take(ip, None);
        }
        known.insert(segment.to_string(), k);
        Ok(())
    }

    /// `known[segment]`, listed first when not known yet or when the
    /// segment's subnets changed.
    async fn known<'a>(
        &self,
        known: &'a mut BTreeMap<String, Known>,
        segment: &str,
        base: &Pool,
    ) -> Result<&'a mut Known, ClusterIpamError> {
        let subnets: Vec<_> = base.subnets().collect();
        if known.get(segment).is_none_or(|k| k.subnets != subnets) {
            self.relist(known, segment, base).await?;
        }
        Ok(known.get_mut(segment).expect("listed above"))
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
        let mut all = self.known.lock().await;
        let known = self.known(&mut all, segment, base).await?;
        if let Some(held) = known.pool.lookup(key) {
            if requested.is_none_or(|r| r == held) {
                return Ok(held);
            }
            self.delete_if_held(segment, held, key).await?;
            known.pool.release(key);
        }
        if let Some(ip) = requested {
            return self.allocate_static(&mut all, segment, base, key, ip).await;
        }
        let mut relisted = false;
        let mut taken_in_a_row = 0u32;
        let mut seed = seed();
        loop {
            let known = self.known(&mut all, segment, base).await?;
            let elsewhere = if taken_in_a_row > 0 {
                known.allocate_elsewhere(key, &mut seed)
            } else {
                None
            };
            let ip = match elsewhere.map_or_else(|| known.pool.allocate(key), Ok) {
                Ok(ip) => ip,
                Err(IpamError::Exhausted { .. }) if !relisted => {
                    // Addresses others released since the cache was filled.
                    relisted = true;
                    self.relist(&mut all, segment, base).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match self.create(segment, ip, &self.node, key).await {
                Ok(true) => return Ok(ip),
                Ok(false) => {
                    tracing::debug!(%segment, %ip, "address taken meanwhile; picking the next");
                    known.pool.release(key);
                    known.take(ip, None);
                    taken_in_a_row += 1;
                    if taken_in_a_row == STALE_AFTER {
                        // The cache is far behind (other nodes allocated a lot): one
                        // list costs less than a create per address they took.
                        taken_in_a_row = 0;
                        self.relist(&mut all, segment, base).await?;
                    }
                }
                Err(e) => {
                    known.pool.release(key);
                    return Err(e);
                }
            }
        }
    }

    /// A static request: exactly `ip`'s object, or an error naming it.
    async fn allocate_static(
        &self,
        all: &mut BTreeMap<String, Known>,
        segment: &str,
        base: &Pool,
        key: &AttachmentKey,
        ip: Ipv4Addr,
    ) -> Result<Ipv4Addr, ClusterIpamError> {
        let known = self.known(all, segment, base).await?;
        if known.pool.owner(ip).is_some() {
            // Maybe released since: ask the API server.
            match self.read(segment, ip).await? {
                None => known.free(ip),
                Some(obj) => {
                    let owner = entry_of(&obj)
                        .map(|(_, n, k)| {
                            AttachmentKey::new(format!("{n}/{}", k.container_id), k.ifname)
                        })
                        .unwrap_or_else(|| placeholder(ip));
                    return Err(IpamError::InUse { ip, owner }.into());
                }
            }
        }
        known.pool.allocate_specific(key, ip)?;
        match self.create(segment, ip, &self.node, key).await {
            Ok(true) => Ok(ip),
            Ok(false) => {
                known.pool.release(key);
                let obj = self.read(segment, ip).await?;
                match obj.as_ref().and_then(entry_of) {
                    Some((_, n, k)) if n == self.node && k == *key => {
                        known.take(ip, Some(key));
                        Ok(ip)
                    }
                    other => {
                        known.take(ip, None);
                        let owner = other
                            .map(|(_, n, k)| {
                                AttachmentKey::new(format!("{n}/{}", k.container_id), k.ifname)
                            })
                            .unwrap_or_else(|| placeholder(ip));
                        Err(IpamError::InUse { ip, owner }.into())
                    }
                }
            }
            Err(e) => {
                known.pool.release(key);
                Err(e)
            }
        }
    }

    /// Releases whatever `key` holds in `segment`; returns the address.
    pub async fn release(
        &self,
        segment: &str,
        key: &AttachmentKey,
    ) -> Result<Option<Ipv4Addr>, ClusterIpamError> {
        let mut all = self.known.lock().await;
        let held = match all.get(segment) {
            Some(k) => k.pool.lookup(key),
            None => {
                // Not known yet (a DEL before any ADD since the start): ask for this
                // node's objects.
                self.list_own(segment)
                    .await?
                    .iter()
                    .filter_map(entry_of)
                    .find_map(|(ip, n, k)| (n == self.node && k == *key).then_some(ip))
            }
        };
        let Some(ip) = held else {
            return Ok(None);
        };
        self.delete_if_held(segment, ip, key).await?;
        if let Some(k) = all.get_mut(segment) {
            k.pool.release(key);
        }
        Ok(Some(ip))
    }

    /// Releases every address this node holds in `segment` whose key
    /// `keep` rejects (garbage collection, from a fresh list); returns how
    /// many.
    pub async fn release_unless(
        &self,
        segment: &str,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Result<usize, ClusterIpamError> {
        let mut all = self.known.lock().await;
        let mut removed = 0;
        for obj in self.list_own(segment).await? {
            let Some((ip, node, key)) = entry_of(&obj) else {
                continue;
            };
            if node != self.node || keep(&key) {
                continue;
            }
            self.delete(&obj).await?;
            if let Some(k) = all.get_mut(segment) {
                k.free(ip);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Creates again the objects of the addresses this node's running
    /// attachments hold in `segment` that are missing (deleted, lost with
    /// the API server's data). `held` is asked after the list: an
    /// attachment DEL removes the attachment before it releases the
    /// address (and waits for this node's cache meanwhile), so an address
    /// a DEL has released is never created again. Returns the addresses
    /// another holder has meanwhile (a duplicate already handed out), left
    /// as they are.
    pub async fn reassert(
        &self,
        segment: &str,
        held: impl Fn() -> Vec<(AttachmentKey, Ipv4Addr)>,
    ) -> Result<Vec<(Ipv4Addr, String)>, ClusterIpamError> {
        let mut all = self.known.lock().await;
        let objects = self.list(segment).await?;
        let recorded: BTreeMap<Ipv4Addr, String> = objects
            .iter()
            .filter_map(entry_of)
            .map(|(ip, n, k)| (ip, holder(&n, &k)))
            .collect();
        let mut conflicts = Vec::new();
        for (key, ip) in held() {
            let mine = holder(&self.node, &key);
            match recorded.get(&ip) {
                Some(v) if *v == mine => {}
                Some(other) => conflicts.push((ip, other.clone())),
                None => {
                    if !self.create(segment, ip, &self.node, &key).await? {
                        let other = self.read(segment, ip).await?;
                        let other = other
                            .as_ref()
                            .and_then(entry_of)
                            .map(|(_, n, k)| holder(&n, &k))
                            .unwrap_or_default();
                        if other != mine {
                            conflicts.push((ip, other));
                        }
                    }
                }
            }
        }
        // The cache starts again from what is there now.
        all.remove(segment);
        Ok(conflicts)
    }

    /// Releases every address of `segment` recorded for `node` (a node
    /// whose Node object is gone); returns how many.
    pub async fn release_node(&self, segment: &str, node: &str) -> Result<usize, ClusterIpamError> {
        let mut all = self.known.lock().await;
        let mut removed = 0;
        for obj in self.list_own(segment).await? {
            if obj.spec.node != node {
                continue;
            }
            self.delete(&obj).await?;
            if let (Some(k), Ok(ip)) = (all.get_mut(segment), obj.spec.address.parse()) {
                k.free(ip);
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Every allocation of `segment` with its holder's node and key.
    pub async fn allocations(
        &self,
        segment: &str,
    ) -> Result<Vec<(Ipv4Addr, String, AttachmentKey)>, ClusterIpamError> {
        Ok(self
            .list(segment)
            .await?
            .iter()
            .filter_map(entry_of)
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
    fn node_names_too_long_for_a_label_get_none() {
        assert_eq!(label_value("node1").as_deref(), Some("node1"));
        assert_eq!(label_value(&"n".repeat(64)), None);
    }
}
