//! What one node knows of a segment's allocations ([`Known`]): the pool its
//! next address comes from, kept by its own creates and deletes, the 409s
//! it meets and a fresh list now and then (see the parent module).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ipam::{AttachmentKey, Pool};

/// What this node knows of one segment's allocations: the pool with its own
/// attachments under their keys and everyone else's addresses under
/// placeholder keys (`taken:<address>`).
pub(super) struct Known {
    pub(super) subnets: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    pub(super) pool: Pool,
}

pub(super) fn placeholder(ip: Ipv4Addr) -> AttachmentKey {
    AttachmentKey::new(format!("taken:{ip}"), "-")
}

impl Known {
    pub(super) fn new(base: &Pool) -> Known {
        Known {
            subnets: base.subnets().collect(),
            pool: base.clone(),
        }
    }

    /// Records `ip` as taken, by `key` when it is this node's (and `key` holds
    /// nothing else here), else by someone else. Addresses outside the subnets
    /// (a changed configuration) are ignored.
    pub(super) fn take(&mut self, ip: Ipv4Addr, key: Option<&AttachmentKey>) {
        if self.pool.owner(ip).is_some() {
            return;
        }
        let key = key
            .filter(|k| self.pool.lookup(k).is_none())
            .cloned()
            .unwrap_or_else(|| placeholder(ip));
        let _ = self.pool.restore([(key, ip)]);
    }

    /// A free address for `key` at a random place of the first subnet that
    /// has one (after a 409: other nodes are allocating at the same place of
    /// the pool, so the next address is likely taken too). An appended
    /// subnet's addresses still come after the first one's. `None` when
    /// every subnet is full as far as this node knows.
    pub(super) fn allocate_elsewhere(
        &mut self,
        key: &AttachmentKey,
        seed: &mut u64,
    ) -> Option<Ipv4Addr> {
        let subnets = self.subnets.clone();
        for (net, _) in subnets {
            let first = u32::from(net.network());
            let size = 1u64 << (32 - net.prefix_len());
            // xorshift64: spread, not secrecy.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let start = *seed % size;
            for step in 0..size {
                let ip = Ipv4Addr::from(first + ((start + step) % size) as u32);
                if self.pool.owner(ip).is_none() && self.pool.allocate_specific(key, ip).is_ok() {
                    return Some(ip);
                }
            }
        }
        None
    }

    pub(super) fn free(&mut self, ip: Ipv4Addr) {
        if let Some(key) = self.pool.owner(ip).cloned() {
            self.pool.release(&key);
        }
    }
}

/// A seed for [`Known::allocate_elsewhere`], different per call and node.
pub(super) fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keeps_own_keys_and_reserves_the_others() {
        let base = Pool::new(
            "10.100.0.0/24".parse().unwrap(),
            Some("10.100.0.1".parse().unwrap()),
        )
        .unwrap();
        let mut k = Known::new(&base);
        let mine = AttachmentKey::new("c1", "eth0");
        k.take("10.100.0.2".parse().unwrap(), Some(&mine));
        k.take("10.100.0.3".parse().unwrap(), None);
        // Outside the subnet (a changed configuration): ignored.
        k.take("10.200.0.9".parse().unwrap(), None);
        assert_eq!(k.pool.lookup(&mine), Some("10.100.0.2".parse().unwrap()));
        let ip = k.pool.allocate(&AttachmentKey::new("c2", "eth0")).unwrap();
        assert_eq!(ip, "10.100.0.4".parse::<Ipv4Addr>().unwrap());
        k.free("10.100.0.3".parse().unwrap());
        assert_eq!(k.pool.in_use(), 2);
    }

    #[test]
    fn elsewhere_is_a_free_usable_address_of_the_subnets() {
        let base = Pool::new(
            "10.100.0.0/29".parse().unwrap(),
            Some("10.100.0.1".parse().unwrap()),
        )
        .unwrap();
        let mut k = Known::new(&base);
        let mut seed = seed();
        let mut got = std::collections::BTreeSet::new();
        for i in 0..200 {
            let key = AttachmentKey::new(format!("c{i}"), "eth0");
            if let Some(ip) = k.allocate_elsewhere(&key, &mut seed) {
                assert!(got.insert(ip), "{ip} twice");
            }
        }
        // .2-.6 only: never network, gateway or broadcast.
        let want: std::collections::BTreeSet<Ipv4Addr> =
            (2..=6).map(|n| Ipv4Addr::new(10, 100, 0, n)).collect();
        assert_eq!(got, want);
    }
}
