//! IPv4 address pools.
//!
//! One [`Pool`] per address range (the node's pod CIDR for overlay segments, a
//! segment's subnets for vlan segments: a `Segment` object may have several, appended
//! by the namespace controller, each with its own gateway; the first one's addresses
//! are handed out first). Addresses are handed out per
//! attachment (container id + interface name): asking again for the same
//! attachment returns the same address, so a retried CNI ADD is idempotent.
//! Allocation takes the first prefix with a free address and walks it
//! round-robin from the last address handed out, so a freed address is not
//! reused at once (an earlier prefix's freed address is: the first prefix
//! comes first). [`Pool`] is a plain struct; share it behind
//! [`SharedPool`] (a mutex) or the caller's own lock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use ipnet::Ipv4Net;

/// Identity of one pod interface: container id + interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl AttachmentKey {
    /// Builds a key.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// Why an IPAM operation failed. Nothing changed in the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every usable address is taken.
    #[error("address pool {pool} is exhausted ({capacity} addresses in use)")]
    Exhausted {
        /// The pool.
        pool: Ipv4Net,
        /// Its usable size.
        capacity: u32,
    },
    /// Requested address outside the pool.
    #[error("address {ip} is outside pool {pool}")]
    OutsidePool {
        /// The address.
        ip: Ipv4Addr,
        /// The pool.
        pool: Ipv4Net,
    },
    /// Requested address is network, broadcast or gateway.
    #[error("address {ip} is reserved in pool {pool} ({what})")]
    Reserved {
        /// The address.
        ip: Ipv4Addr,
        /// The pool.
        pool: Ipv4Net,
        /// Which reservation.
        what: &'static str,
    },
    /// Requested address already allocated to someone else.
    #[error("address {ip} is already in use by {owner}")]
    InUse {
        /// The address.
        ip: Ipv4Addr,
        /// Its holder.
        owner: AttachmentKey,
    },
    /// The attachment already holds another address.
    #[error("{key} already holds {held}, not {requested}")]
    KeyHoldsOtherAddress {
        /// The attachment.
        key: AttachmentKey,
        /// What it has.
        held: Ipv4Addr,
        /// What was asked.
        requested: Ipv4Addr,
    },
    /// Restore saw one address twice.
    #[error("restore: address {ip} is claimed by both {first} and {second}")]
    DuplicateAddress {
        /// The address.
        ip: Ipv4Addr,
        /// First claimant.
        first: AttachmentKey,
        /// Second claimant.
        second: AttachmentKey,
    },
    /// Restore saw one attachment twice with different addresses.
    #[error("restore: {key} is recorded with two addresses, {first} and {second}")]
    DuplicateKey {
        /// The attachment.
        key: AttachmentKey,
        /// First address.
        first: Ipv4Addr,
        /// Second address.
        second: Ipv4Addr,
    },
    /// An added subnet overlaps one of the pool's.
    #[error("subnet {subnet} overlaps {other}, already in the pool")]
    OverlappingSubnet {
        /// The subnet added.
        subnet: Ipv4Net,
        /// The pool's subnet it overlaps.
        other: Ipv4Net,
    },
    /// The gateway given for a pool is not in it.
    #[error("gateway {gateway} is outside pool {pool}")]
    GatewayOutsidePool {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The pool.
        pool: Ipv4Net,
    },
}

/// One prefix of a pool with its reserved gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    network: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    /// First and last usable address (as u32), inclusive.
    first: u32,
    last: u32,
}

impl Span {
    fn new(network: Ipv4Net, gateway: Option<Ipv4Addr>) -> Span {
        let (first, last) = if network.prefix_len() >= 31 {
            (u32::from(network.network()), u32::from(network.broadcast()))
        } else {
            (
                u32::from(network.network()) + 1,
                u32::from(network.broadcast()) - 1,
            )
        };
        Span {
            network,
            gateway,
            first,
            last,
        }
    }

    fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }
}

/// An IPv4 pool over one prefix, or several: a `vlan` segment whose subnets were appended
/// (each with its own gateway). Addresses are handed out from the prefixes in order, the
/// first prefix's before the second's.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The prefixes, the first one's first.
    spans: Vec<Span>,
    by_key: HashMap<AttachmentKey, Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, AttachmentKey>,
    /// Position (in the prefixes' order) of the last address handed out; a search of its
    /// prefix starts after it, of any other prefix at its first address.
    cursor: Option<u64>,
}

impl Pool {
    /// A pool over `network` (host bits are ignored). The network and
    /// broadcast addresses are skipped for prefixes up to /30; /31 and /32
    /// use every address. `gateway`, if given, is never handed out.
    pub fn new(network: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Pool, IpamError> {
        let network = network.trunc();
        if let Some(gw) = gateway
            && !network.contains(&gw)
        {
            return Err(IpamError::GatewayOutsidePool {
                gateway: gw,
                pool: network,
            });
        }
        Ok(Pool::build(network, gateway))
    }

    /// An overlay node pool: the node's pod CIDR with the gateway (the node's
    /// `br-int` gateway port) at the first host address.
    pub fn for_node_cidr(cidr: Ipv4Net) -> Pool {
        let cidr = cidr.trunc();
        // The first host address comes from the prefix itself, so it is inside.
        Pool::build(cidr, cidr.hosts().next())
    }

    fn build(network: Ipv4Net, gateway: Option<Ipv4Addr>) -> Pool {
        let span = Span::new(network, gateway);
        Pool {
            spans: vec![span],
            by_key: HashMap::new(),
            by_ip: BTreeMap::new(),
            cursor: None,
        }
    }

    /// Adds another prefix (an appended subnet of a `vlan` segment) with its own gateway;
    /// its addresses are handed out after those of the prefixes before it. Adding a prefix
    /// the pool already has with the same gateway changes nothing; one that overlaps
    /// another is refused.
    pub fn add_subnet(
        &mut self,
        network: Ipv4Net,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), IpamError> {
        let network = network.trunc();
        if let Some(gw) = gateway
            && !network.contains(&gw)
        {
            return Err(IpamError::GatewayOutsidePool {
                gateway: gw,
                pool: network,
            });
        }
        if self
            .spans
            .iter()
            .any(|s| s.network == network && s.gateway == gateway)
        {
            return Ok(());
        }
        if let Some(other) = self
            .spans
            .iter()
            .find(|s| s.network.contains(&network) || network.contains(&s.network))
        {
            return Err(IpamError::OverlappingSubnet {
                subnet: network,
                other: other.network,
            });
        }
        // The cursor keeps its position: the new prefix comes after every other.
        self.spans.push(Span::new(network, gateway));
        Ok(())
    }

    /// The first prefix.
    pub fn network(&self) -> Ipv4Net {
        self.spans[0].network
    }

    /// The first prefix's reserved gateway, if any.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.spans[0].gateway
    }

    /// Every prefix with its gateway, in order.
    pub fn subnets(&self) -> impl Iterator<Item = (Ipv4Net, Option<Ipv4Addr>)> + '_ {
        self.spans.iter().map(|s| (s.network, s.gateway))
    }

    /// The prefix holding `ip` and its gateway: the pod's subnet and default gateway.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<(Ipv4Net, Option<Ipv4Addr>)> {
        self.spans
            .iter()
            .find(|s| s.network.contains(&ip))
            .map(|s| (s.network, s.gateway))
    }

    /// Whether `ip` is inside one of the prefixes.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.subnet_of(ip).is_some()
    }

    /// Number of addresses that can be handed out.
    pub fn capacity(&self) -> u32 {
        self.spans
            .iter()
            .map(|s| {
                let span = s.last - s.first + 1;
                match s.gateway {
                    Some(gw) if (s.first..=s.last).contains(&u32::from(gw)) => span - 1,
                    _ => span,
                }
            })
            .fold(0u32, u32::saturating_add)
    }

    /// The position of `ip` among the candidates, if it is one.
    fn position(&self, ip: Ipv4Addr) -> Option<u64> {
        let n = u32::from(ip);
        let mut base = 0;
        for s in &self.spans {
            if (s.first..=s.last).contains(&n) {
                return Some(base + u64::from(n - s.first));
            }
            base += s.len();
        }
        None
    }

    /// Number of addresses in use.
    pub fn in_use(&self) -> usize {
        self.by_ip.len()
    }

    /// The address held by `key`.
    pub fn lookup(&self, key: &AttachmentKey) -> Option<Ipv4Addr> {
        self.by_key.get(key).copied()
    }

    /// The holder of `ip`.
    pub fn owner(&self, ip: Ipv4Addr) -> Option<&AttachmentKey> {
        self.by_ip.get(&ip)
    }

    /// All allocations, ordered by address.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &AttachmentKey)> {
        self.by_ip.iter().map(|(ip, key)| (*ip, key))
    }

    fn check_usable(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let Some(span) = self.spans.iter().find(|s| s.network.contains(&ip)) else {
            return Err(IpamError::OutsidePool {
                ip,
                pool: self.network(),
            });
        };
        let what = if Some(ip) == span.gateway {
            Some("gateway")
        } else if u32::from(ip) < span.first {
            Some("network address")
        } else if u32::from(ip) > span.last {
            Some("broadcast address")
        } else {
            None
        };
        match what {
            Some(what) => Err(IpamError::Reserved {
                ip,
                pool: span.network,
                what,
            }),
            None => Ok(()),
        }
    }

    /// Next free address for `key`; the same key gets its existing address.
    pub fn allocate(&mut self, key: &AttachmentKey) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.lookup(key) {
            return Ok(ip);
        }
        // The first prefix with a free address; inside the prefix holding the cursor, the
        // walk starts after it (round-robin), inside any other at its first address.
        let mut base = 0u64;
        for span in self.spans.clone() {
            let len = span.len();
            let start = match self.cursor {
                Some(c) if (base..base + len).contains(&c) => c - base + 1,
                _ => 0,
            };
            for step in 0..len {
                let offset = (start + step) % len;
                let ip = Ipv4Addr::from(span.first + offset as u32);
                if span.gateway == Some(ip) || self.by_ip.contains_key(&ip) {
                    continue;
                }
                self.insert(key.clone(), ip);
                self.cursor = Some(base + offset);
                return Ok(ip);
            }
            base += len;
        }
        Err(IpamError::Exhausted {
            pool: self.network(),
            capacity: self.capacity(),
        })
    }

    /// Allocates exactly `ip` for `key` (a static request). Idempotent for
    /// the same key and address. Does not move the round-robin cursor.
    pub fn allocate_specific(
        &mut self,
        key: &AttachmentKey,
        ip: Ipv4Addr,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(held) = self.lookup(key) {
            if held == ip {
                return Ok(ip);
            }
            return Err(IpamError::KeyHoldsOtherAddress {
                key: key.clone(),
                held,
                requested: ip,
            });
        }
        self.check_usable(ip)?;
        if let Some(owner) = self.by_ip.get(&ip) {
            return Err(IpamError::InUse {
                ip,
                owner: owner.clone(),
            });
        }
        self.insert(key.clone(), ip);
        Ok(ip)
    }

    /// Frees the address of `key`; returns it, or `None` if it held none
    /// (releasing twice is fine, as CNI DEL must be).
    pub fn release(&mut self, key: &AttachmentKey) -> Option<Ipv4Addr> {
        let ip = self.by_key.remove(key)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    /// Rebuilds allocations after a restart (from OVSDB port external_ids).
    /// All or nothing: on any error (address outside or reserved, an address
    /// claimed twice, a key with two addresses, a clash with an existing
    /// allocation) the pool is unchanged. The same (key, address) pair
    /// repeated is accepted. The cursor moves to the highest restored
    /// address, so new allocations continue after the restored ones.
    pub fn restore<I>(&mut self, entries: I) -> Result<usize, IpamError>
    where
        I: IntoIterator<Item = (AttachmentKey, Ipv4Addr)>,
    {
        let mut staged_ip: BTreeMap<Ipv4Addr, AttachmentKey> = BTreeMap::new();
        let mut staged_key: HashMap<AttachmentKey, Ipv4Addr> = HashMap::new();
        for (key, ip) in entries {
            self.check_usable(ip)?;
            let existing_owner = self.by_ip.get(&ip).or_else(|| staged_ip.get(&ip));
            if let Some(owner) = existing_owner {
                if *owner == key {
                    continue;
                }
                return Err(IpamError::DuplicateAddress {
                    ip,
                    first: owner.clone(),
                    second: key,
                });
            }
            if let Some(first) = self.by_key.get(&key).or_else(|| staged_key.get(&key)) {
                return Err(IpamError::DuplicateKey {
                    key,
                    first: *first,
                    second: ip,
                });
            }
            staged_ip.insert(ip, key.clone());
            staged_key.insert(key, ip);
        }
        let count = staged_ip.len();
        if let Some(highest) = staged_ip.keys().filter_map(|ip| self.position(*ip)).max()
            && (self.by_ip.is_empty() || self.cursor.is_none_or(|c| highest > c))
        {
            self.cursor = Some(highest);
        }
        for (ip, key) in staged_ip {
            self.insert(key, ip);
        }
        Ok(count)
    }

    fn insert(&mut self, key: AttachmentKey, ip: Ipv4Addr) {
        self.by_key.insert(key.clone(), ip);
        self.by_ip.insert(ip, key);
    }
}

/// A [`Pool`] behind a mutex, for use from several tasks.
#[derive(Debug)]
pub struct SharedPool(Mutex<Pool>);

impl SharedPool {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        SharedPool(Mutex::new(pool))
    }

    /// Locks the pool. A panic while holding the lock cannot leave the pool
    /// half-updated (every method changes it in one step), so a poisoned
    /// lock is recovered.
    pub fn lock(&self) -> MutexGuard<'_, Pool> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
