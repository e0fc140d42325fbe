//! Address allocation for LoadBalancer Services, independent of the API.
//!
//! The Services' `status.loadBalancer.ingress` is the source of truth: an [`Allocator`] is
//! rebuilt from every Service that holds addresses ([`Allocator::hold`]) before any pending
//! Service is served ([`Allocator::allocate`]), so a restart never moves an address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_api::{IPPoolSpec, LabelSelector, PoolAddresses};

/// `namespace/name` of a Service.
pub type SvcKey = String;

/// A pool as the allocator sees it.
#[derive(Debug, Clone)]
pub struct Pool {
    /// IPPool name.
    pub name: String,
    /// Its addresses.
    pub addresses: PoolAddresses,
    /// Service selector.
    pub service_selector: Option<LabelSelector>,
    /// Namespace selector.
    pub namespace_selector: Option<LabelSelector>,
}

impl Pool {
    /// From an IPPool's name and spec.
    pub fn new(name: &str, spec: &IPPoolSpec) -> Pool {
        Pool {
            name: name.to_string(),
            addresses: spec.addresses(),
            service_selector: spec.service_selector.clone(),
            namespace_selector: spec.namespace_selector.clone(),
        }
    }

    fn has_selectors(&self) -> bool {
        self.service_selector.is_some() || self.namespace_selector.is_some()
    }

    /// Whether the pool serves `svc` without being named (selectors; an invalid selector matches
    /// nothing).
    fn selects(&self, svc: &SvcRequest) -> bool {
        let ok = |sel: &Option<LabelSelector>, labels| {
            sel.as_ref()
                .is_none_or(|s| s.matches(labels).unwrap_or(false))
        };
        ok(&self.service_selector, &svc.labels)
            && ok(&self.namespace_selector, &svc.namespace_labels)
    }
}

/// A port of a Service, for sharing: (protocol, port).
pub type Port = (String, i32);

/// What a Service asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SvcRequest {
    /// `namespace/name`.
    pub key: SvcKey,
    /// Service labels.
    pub labels: BTreeMap<String, String>,
    /// Labels of its namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// `switchyard.io/address-pool`.
    pub pool: Option<String>,
    /// Requested addresses (annotation, else `spec.loadBalancerIP`).
    pub requested: Vec<IpAddr>,
    /// `switchyard.io/allow-shared-ip`.
    pub share_key: Option<String>,
    /// Its ports.
    pub ports: BTreeSet<Port>,
    /// Wants an IPv6 address (first of `spec.ipFamilies`).
    pub ipv6: bool,
}

/// Why a Service has no address; the `reason` of its condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pending {
    /// Every address of the eligible pools is taken.
    #[error("no free address in pool(s) {0}")]
    PoolExhausted(String),
    /// A requested address is held by another Service it may not share with.
    #[error("requested address {0} is held by {1}")]
    AddressTaken(IpAddr, String),
    /// A requested address is in no pool.
    #[error("requested address {0} is in no IPPool")]
    NotInPool(IpAddr),
    /// The named pool does not exist, or no pool's selectors match.
    #[error("{0}")]
    NoPoolMatches(String),
}

impl Pending {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Pending::PoolExhausted(_) => "PoolExhausted",
            Pending::AddressTaken(..) => "AddressTaken",
            Pending::NotInPool(_) => "AddressNotInPool",
            Pending::NoPoolMatches(_) => "NoPoolMatches",
        }
    }
}

#[derive(Debug, Clone)]
struct Holder {
    key: SvcKey,
    share_key: Option<String>,
    ports: BTreeSet<Port>,
}

/// Who holds which address.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: Vec<Pool>,
    holders: BTreeMap<IpAddr, Vec<Holder>>,
    by_svc: BTreeMap<SvcKey, Vec<IpAddr>>,
}

impl Allocator {
    /// An allocator over `pools` (sorted by name for a deterministic order).
    pub fn new(mut pools: Vec<Pool>) -> Allocator {
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Allocator {
            pools,
            ..Default::default()
        }
    }

    /// The pool holding `ip`, if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.addresses.contains(ip))
    }

    /// The pools.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Addresses `key` holds.
    pub fn addresses_of(&self, key: &str) -> &[IpAddr] {
        self.by_svc.get(key).map_or(&[], |v| v.as_slice())
    }

    /// Services holding `ip`.
    pub fn holders_of(&self, ip: IpAddr) -> Vec<&str> {
        self.holders
            .get(&ip)
            .map(|h| h.iter().map(|h| h.key.as_str()).collect())
            .unwrap_or_default()
    }

    /// Whether any Service holds `ip`.
    pub fn is_held(&self, ip: IpAddr) -> bool {
        self.holders.contains_key(&ip)
    }

    /// Addresses of `pool` in use.
    pub fn used_in(&self, pool: &Pool) -> usize {
        self.holders
            .keys()
            .filter(|ip| pool.addresses.contains(**ip))
            .count()
    }

    /// The first holder of `ip` `svc` may not share it with.
    fn blocker(&self, ip: IpAddr, svc: &SvcRequest) -> Option<&Holder> {
        self.holders.get(&ip)?.iter().find(|h| {
            h.key != svc.key
                && !(h.share_key.is_some()
                    && h.share_key == svc.share_key
                    && h.ports.is_disjoint(&svc.ports))
        })
    }

    /// Records that `svc` holds `ips` (from its status). Addresses it may not share with their
    /// current holder are not recorded and returned: the Service must give them up.
    pub fn hold(&mut self, svc: &SvcRequest, ips: &[IpAddr]) -> Vec<IpAddr> {
        let mut refused = Vec::new();
        for &ip in ips {
            if self.blocker(ip, svc).is_some() {
                refused.push(ip);
                continue;
            }
            let holders = self.holders.entry(ip).or_default();
            if holders.iter().all(|h| h.key != svc.key) {
                holders.push(Holder {
                    key: svc.key.clone(),
                    share_key: svc.share_key.clone(),
                    ports: svc.ports.clone(),
                });
                self.by_svc.entry(svc.key.clone()).or_default().push(ip);
            }
        }
        refused
    }

    /// Releases every address of `key`.
    pub fn release(&mut self, key: &str) {
        for ip in self.by_svc.remove(key).unwrap_or_default() {
            if let Some(h) = self.holders.get_mut(&ip) {
                h.retain(|h| h.key != key);
                if h.is_empty() {
                    self.holders.remove(&ip);
                }
            }
        }
    }

    /// Pools `svc` may take an automatic address from, in order (selecting pools first).
    fn candidate_pools(&self, svc: &SvcRequest) -> Result<Vec<&Pool>, Pending> {
        if let Some(name) = &svc.pool {
            return self
                .pools
                .iter()
                .find(|p| &p.name == name)
                .map(|p| vec![p])
                .ok_or_else(|| Pending::NoPoolMatches(format!("IPPool {name:?} does not exist")));
        }
        let mut out: Vec<&Pool> = self.pools.iter().filter(|p| p.selects(svc)).collect();
        out.sort_by_key(|p| !p.has_selectors());
        if out.is_empty() {
            return Err(Pending::NoPoolMatches(
                "no IPPool selects this Service".to_string(),
            ));
        }
        Ok(out)
    }

    /// Gives `svc` an address (its requested ones, or one from its pools) and records it.
    /// A Service already holding addresses must be [`Allocator::release`]d first.
    pub fn allocate(&mut self, svc: &SvcRequest) -> Result<Vec<IpAddr>, Pending> {
        if !svc.requested.is_empty() {
            for &ip in &svc.requested {
                let pool = self.pool_of(ip).ok_or(Pending::NotInPool(ip))?;
                if svc.pool.as_ref().is_some_and(|p| p != &pool.name) {
                    return Err(Pending::NotInPool(ip));
                }
                if let Some(h) = self.blocker(ip, svc) {
                    return Err(Pending::AddressTaken(ip, h.key.clone()));
                }
            }
            let ips = svc.requested.clone();
            self.hold(svc, &ips);
            return Ok(ips);
        }
        let pools = self.candidate_pools(svc)?;
        let family_ok = |ip: &IpAddr| ip.is_ipv6() == svc.ipv6;
        // Prefer an address already shared under the same key (packs shared Services).
        let mut pick = None;
        if svc.share_key.is_some() {
            pick = pools.iter().find_map(|p| {
                p.addresses
                    .iter()
                    .filter(family_ok)
                    .find(|ip| self.holders.contains_key(ip) && self.blocker(*ip, svc).is_none())
            });
        }
        if pick.is_none() {
            pick = pools.iter().find_map(|p| {
                p.addresses
                    .iter()
                    .filter(family_ok)
                    .find(|ip| !self.holders.contains_key(ip))
            });
        }
        let Some(ip) = pick else {
            let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            return Err(Pending::PoolExhausted(names.join(", ")));
        };
        self.hold(svc, &[ip]);
        Ok(vec![ip])
    }

    /// Addresses in more than one pool, as conflict messages per pool name.
    pub fn pool_conflicts(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, a) in self.pools.iter().enumerate() {
            for b in &self.pools[i + 1..] {
                for ra in &a.addresses.ranges {
                    for rb in &b.addresses.ranges {
                        if ra.overlaps(rb) {
                            let msg = |other: &str| {
                                format!("{}-{} overlaps IPPool {other}", ra.first, ra.last)
                            };
                            out.entry(a.name.clone()).or_default().push(msg(&b.name));
                            out.entry(b.name.clone()).or_default().push(msg(&a.name));
                        }
                    }
                }
            }
            for e in &a.addresses.errors {
                out.entry(a.name.clone()).or_default().push(e.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
