//! Tests of [`super`]: the pool's order, reservations, restore and random operations.

use super::*;
use std::collections::HashSet;

fn key(n: u32) -> AttachmentKey {
    AttachmentKey::new(format!("c{n}"), "eth0")
}

#[test]
fn an_appended_subnet_is_used_after_the_first_with_its_own_gateway() {
    let k = |n: u32| AttachmentKey::new(format!("c{n}"), "eth0");
    // A /29: .2-.6 usable beside the gateway .1.
    let mut pool = Pool::new(net("10.64.0.0/29"), Some(ip("10.64.0.1"))).unwrap();
    pool.add_subnet(net("10.64.0.8/29"), Some(ip("10.64.0.9")))
        .unwrap();
    assert_eq!(pool.capacity(), 10);
    let got: Vec<Ipv4Addr> = (0..10).map(|n| pool.allocate(&k(n)).unwrap()).collect();
    assert_eq!(got[0], ip("10.64.0.2"));
    assert_eq!(got[4], ip("10.64.0.6"));
    assert_eq!(
        got[5],
        ip("10.64.0.10"),
        "the second subnet after the first"
    );
    assert_eq!(got[9], ip("10.64.0.14"));
    assert!(matches!(
        pool.allocate(&k(10)),
        Err(IpamError::Exhausted { capacity: 10, .. })
    ));
    assert_eq!(
        pool.subnet_of(ip("10.64.0.10")),
        Some((net("10.64.0.8/29"), Some(ip("10.64.0.9"))))
    );
    assert!(matches!(
        pool.allocate_specific(&k(11), ip("10.64.0.9")),
        Err(IpamError::Reserved {
            what: "gateway",
            ..
        })
    ));
    // Adding it again changes nothing; an overlapping one is refused.
    pool.add_subnet(net("10.64.0.8/29"), Some(ip("10.64.0.9")))
        .unwrap();
    assert_eq!(pool.subnets().count(), 2);
    assert!(matches!(
        pool.add_subnet(net("10.64.0.0/28"), None),
        Err(IpamError::OverlappingSubnet { .. })
    ));
    // A pool rebuilt with both subnets takes back what was handed out in either.
    let mut again = Pool::new(net("10.64.0.0/29"), Some(ip("10.64.0.1"))).unwrap();
    again
        .add_subnet(net("10.64.0.8/29"), Some(ip("10.64.0.9")))
        .unwrap();
    let held: Vec<(AttachmentKey, Ipv4Addr)> =
        pool.allocations().map(|(ip, k)| (k.clone(), ip)).collect();
    assert_eq!(again.restore(held).unwrap(), 10);
}

#[test]
fn a_fresh_pool_with_two_subnets_starts_at_the_first() {
    let mut pool = Pool::new(net("10.64.0.0/29"), Some(ip("10.64.0.1"))).unwrap();
    pool.add_subnet(net("10.64.0.8/29"), Some(ip("10.64.0.9")))
        .unwrap();
    pool.restore([(AttachmentKey::new("a", "eth0"), ip("10.64.0.6"))])
        .unwrap();
    // The cursor stands at .6 (another node's address, say), yet the first subnet has
    // free addresses: they come before the second subnet's (the CI failure of
    // namespace_subnet_append: s4 got .10 while .4 and .5 were free).
    assert_eq!(
        pool.allocate(&AttachmentKey::new("b", "eth0")).unwrap(),
        ip("10.64.0.2"),
        "the first subnet's free addresses first, round-robin inside it"
    );
    for n in 3..=5 {
        assert_eq!(
            pool.allocate(&AttachmentKey::new(format!("c{n}"), "eth0"))
                .unwrap(),
            ip(&format!("10.64.0.{n}"))
        );
    }
    assert_eq!(
        pool.allocate(&AttachmentKey::new("d", "eth0")).unwrap(),
        ip("10.64.0.10"),
        "the second subnet once the first is full"
    );
    // A freed first-subnet address is taken before the second subnet's next one.
    assert_eq!(
        pool.release(&AttachmentKey::new("c4", "eth0")),
        Some(ip("10.64.0.4"))
    );
    assert_eq!(
        pool.allocate(&AttachmentKey::new("e", "eth0")).unwrap(),
        ip("10.64.0.4")
    );
    let mut fresh = Pool::new(net("10.64.0.0/29"), Some(ip("10.64.0.1"))).unwrap();
    fresh
        .add_subnet(net("10.64.0.8/29"), Some(ip("10.64.0.9")))
        .unwrap();
    assert_eq!(
        fresh.allocate(&AttachmentKey::new("b", "eth0")).unwrap(),
        ip("10.64.0.2")
    );
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn node_pool_skips_network_gateway_broadcast() {
    let mut pool = Pool::for_node_cidr("10.244.1.0/29".parse().unwrap());
    assert_eq!(pool.gateway(), Some(ip("10.244.1.1")));
    assert_eq!(pool.capacity(), 5);
    let got: Vec<Ipv4Addr> = (0..5).map(|n| pool.allocate(&key(n)).unwrap()).collect();
    assert_eq!(
        got,
        [
            "10.244.1.2",
            "10.244.1.3",
            "10.244.1.4",
            "10.244.1.5",
            "10.244.1.6"
        ]
        .map(ip)
        .to_vec()
    );
    let err = pool.allocate(&key(99)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address pool 10.244.1.0/29 is exhausted (5 addresses in use)"
    );
    assert_eq!(pool.in_use(), 5);
}

#[test]
fn same_attachment_gets_same_address() {
    let mut pool = Pool::for_node_cidr("10.0.0.0/24".parse().unwrap());
    let a = pool.allocate(&key(1)).unwrap();
    assert_eq!(pool.allocate(&key(1)).unwrap(), a);
    let other_if = AttachmentKey::new("c1", "net1");
    assert_ne!(pool.allocate(&other_if).unwrap(), a);
    assert_eq!(pool.in_use(), 2);
}

#[test]
fn round_robin_does_not_reuse_a_freed_address_at_once() {
    let mut pool = Pool::for_node_cidr("10.0.0.0/29".parse().unwrap());
    let a = pool.allocate(&key(1)).unwrap();
    assert_eq!(pool.release(&key(1)), Some(a));
    assert_eq!(pool.release(&key(1)), None);
    let b = pool.allocate(&key(2)).unwrap();
    assert_ne!(a, b);
    // Wraps around once the end is reached, and reuses freed addresses then.
    for n in 3..=5 {
        pool.allocate(&key(n)).unwrap();
    }
    assert_eq!(pool.allocate(&key(6)).unwrap(), a);
}

#[test]
fn specific_allocation_rules() {
    let mut pool = Pool::for_node_cidr("10.0.0.0/24".parse().unwrap());
    assert_eq!(
        pool.allocate_specific(&key(1), ip("10.0.0.50")).unwrap(),
        ip("10.0.0.50")
    );
    assert_eq!(
        pool.allocate_specific(&key(1), ip("10.0.0.50")).unwrap(),
        ip("10.0.0.50")
    );
    assert_eq!(
        pool.allocate_specific(&key(2), ip("10.0.0.50"))
            .unwrap_err()
            .to_string(),
        "address 10.0.0.50 is already in use by c1/eth0"
    );
    assert!(matches!(
        pool.allocate_specific(&key(1), ip("10.0.0.51")),
        Err(IpamError::KeyHoldsOtherAddress { .. })
    ));
    assert_eq!(
        pool.allocate_specific(&key(3), ip("10.0.1.5"))
            .unwrap_err()
            .to_string(),
        "address 10.0.1.5 is outside pool 10.0.0.0/24"
    );
    for (addr, what) in [
        ("10.0.0.0", "network address"),
        ("10.0.0.1", "gateway"),
        ("10.0.0.255", "broadcast address"),
    ] {
        let err = pool.allocate_specific(&key(3), ip(addr)).unwrap_err();
        assert_eq!(
            err,
            IpamError::Reserved {
                ip: ip(addr),
                pool: pool.network(),
                what
            }
        );
    }
    // Dynamic allocation never hands out the static one.
    for n in 10..300 {
        match pool.allocate(&key(n)) {
            Ok(got) => assert_ne!(got, ip("10.0.0.50")),
            Err(IpamError::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(pool.in_use() as u32, pool.capacity());
}

#[test]
fn vlan_pool_with_fabric_gateway() {
    let mut pool = Pool::new("10.20.0.0/30".parse().unwrap(), Some(ip("10.20.0.2"))).unwrap();
    assert_eq!(pool.capacity(), 1);
    assert_eq!(pool.allocate(&key(1)).unwrap(), ip("10.20.0.1"));
    assert!(pool.allocate(&key(2)).is_err());
    assert!(matches!(
        Pool::new("10.20.0.0/24".parse().unwrap(), Some(ip("10.21.0.1"))),
        Err(IpamError::GatewayOutsidePool { .. })
    ));
    let mut tiny = Pool::new("10.9.9.9/32".parse().unwrap(), None).unwrap();
    assert_eq!(tiny.allocate(&key(1)).unwrap(), ip("10.9.9.9"));
}

#[test]
fn restore_rebuilds_and_refuses_duplicates_atomically() {
    let mut pool = Pool::for_node_cidr("10.0.0.0/24".parse().unwrap());
    let n = pool
        .restore([
            (key(1), ip("10.0.0.7")),
            (key(2), ip("10.0.0.9")),
            (key(1), ip("10.0.0.7")),
        ])
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(pool.lookup(&key(2)), Some(ip("10.0.0.9")));
    assert_eq!(pool.allocate(&key(2)).unwrap(), ip("10.0.0.9"));
    // New allocations continue after the highest restored address.
    assert_eq!(pool.allocate(&key(3)).unwrap(), ip("10.0.0.10"));

    let before: Vec<_> = pool.allocations().map(|(i, k)| (i, k.clone())).collect();
    let err = pool
        .restore([(key(4), ip("10.0.0.20")), (key(5), ip("10.0.0.20"))])
        .unwrap_err();
    assert!(matches!(err, IpamError::DuplicateAddress { .. }), "{err}");
    let err = pool
        .restore([(key(4), ip("10.0.0.20")), (key(4), ip("10.0.0.21"))])
        .unwrap_err();
    assert!(matches!(err, IpamError::DuplicateKey { .. }), "{err}");
    let err = pool.restore([(key(6), ip("10.0.0.7"))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "restore: address 10.0.0.7 is claimed by both c1/eth0 and c6/eth0"
    );
    let err = pool
        .restore([(key(6), ip("10.0.0.30")), (key(7), ip("10.0.0.1"))])
        .unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::Reserved {
                what: "gateway",
                ..
            }
        ),
        "{err}"
    );
    let after: Vec<_> = pool.allocations().map(|(i, k)| (i, k.clone())).collect();
    assert_eq!(before, after, "a refused restore changed the pool");
}

/// Many random operations against a model; no address is ever held twice,
/// reserved addresses are never handed out, and the pool agrees with the
/// model after every step.
#[test]
fn random_operations_never_duplicate() {
    for seed in 1..=20u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let net: Ipv4Net = "10.1.0.0/27".parse().unwrap();
        let mut pool = Pool::for_node_cidr(net);
        let mut model: HashMap<AttachmentKey, Ipv4Addr> = HashMap::new();
        for _ in 0..2000 {
            let k = key(rng.below(40) as u32);
            match rng.below(4) {
                0 | 1 => match pool.allocate(&k) {
                    Ok(got) => {
                        if let Some(prev) = model.get(&k) {
                            assert_eq!(*prev, got);
                        }
                        model.insert(k, got);
                    }
                    Err(IpamError::Exhausted { .. }) => {
                        assert!(!model.contains_key(&k));
                        assert_eq!(model.len() as u32, pool.capacity());
                    }
                    Err(e) => panic!("unexpected {e}"),
                },
                2 => {
                    assert_eq!(pool.release(&k), model.remove(&k));
                }
                _ => {
                    let want = Ipv4Addr::from(u32::from(net.network()) + rng.below(32) as u32);
                    match pool.allocate_specific(&k, want) {
                        Ok(got) => {
                            assert_eq!(got, want);
                            model.insert(k, got);
                        }
                        Err(IpamError::InUse { owner, .. }) => assert_ne!(owner, k),
                        Err(IpamError::Reserved { .. }) => {}
                        Err(IpamError::KeyHoldsOtherAddress { held, .. }) => {
                            assert_eq!(model.get(&k), Some(&held))
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }
            let held: HashSet<Ipv4Addr> = model.values().copied().collect();
            assert_eq!(held.len(), model.len(), "duplicate address in model");
            assert_eq!(pool.in_use(), model.len());
            for (k, addr) in &model {
                assert_eq!(pool.lookup(k), Some(*addr));
                assert_ne!(*addr, net.network());
                assert_ne!(*addr, net.broadcast());
                assert_ne!(Some(*addr), pool.gateway());
            }
        }
        // Restoring the model into a fresh pool reproduces it.
        let mut fresh = Pool::for_node_cidr(net);
        fresh
            .restore(model.iter().map(|(k, a)| (k.clone(), *a)))
            .unwrap();
        assert_eq!(fresh.in_use(), model.len());
    }
}

#[test]
fn shared_pool_is_usable_from_threads() {
    let shared = std::sync::Arc::new(SharedPool::new(Pool::for_node_cidr(
        "10.2.0.0/24".parse().unwrap(),
    )));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|n| shared.lock().allocate(&key(t * 100 + n)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Ipv4Addr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 200);
}

struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
