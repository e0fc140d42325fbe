use super::*;

fn pool(name: &str, cidr: &str) -> Pool {
    Pool::new(
        name,
        &IPPoolSpec {
            cidrs: vec![cidr.into()],
            ..Default::default()
        },
    )
}

fn range_pool(name: &str, range: &str) -> Pool {
    Pool::new(
        name,
        &IPPoolSpec {
            ranges: vec![range.into()],
            ..Default::default()
        },
    )
}

fn svc(key: &str) -> SvcRequest {
    SvcRequest {
        key: key.into(),
        ports: [("TCP".to_string(), 80)].into(),
        ..Default::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn rebuild_keeps_every_held_address_and_serves_pending_ones_after() {
    let pools = vec![range_pool("a", "192.0.2.0-192.0.2.3")];
    // Before a restart: three Services got .0, .1, .2 in some order.
    let mut before = Allocator::new(pools.clone());
    let mut held = BTreeMap::new();
    for k in ["ns/c", "ns/a", "ns/b"] {
        held.insert(k, before.allocate(&svc(k)).unwrap());
    }
    // After: rebuilt from the statuses in another order, then a new Service.
    let mut after = Allocator::new(pools);
    for k in ["ns/b", "ns/a", "ns/c"] {
        assert!(after.hold(&svc(k), &held[k]).is_empty());
    }
    for k in ["ns/a", "ns/b", "ns/c"] {
        assert_eq!(after.addresses_of(k), held[k].as_slice());
    }
    assert_eq!(after.allocate(&svc("ns/d")).unwrap(), [ip("192.0.2.3")]);
    assert_eq!(
        after.allocate(&svc("ns/e")),
        Err(Pending::PoolExhausted("a".into()))
    );
}

#[test]
fn sharing_needs_the_same_key_and_disjoint_ports() {
    let mut a = Allocator::new(vec![pool("a", "192.0.2.0/31")]);
    let mut s1 = svc("ns/s1");
    s1.share_key = Some("k".into());
    let got = a.allocate(&s1).unwrap();
    let mut s2 = svc("ns/s2");
    s2.share_key = Some("k".into());
    s2.ports = [("TCP".to_string(), 443)].into();
    assert_eq!(
        a.allocate(&s2).unwrap(),
        got,
        "same key, other port: shared"
    );
    let mut clash = svc("ns/s3");
    clash.share_key = Some("k".into());
    assert_ne!(a.allocate(&clash).unwrap(), got, "port 80 clashes");
    let mut other_key = svc("ns/s4");
    other_key.share_key = Some("other".into());
    other_key.requested = got.clone();
    assert_eq!(
        a.allocate(&other_key),
        Err(Pending::AddressTaken(got[0], "ns/s1".into()))
    );
    // UDP 80 next to TCP 80 is no clash.
    let mut udp = svc("ns/s5");
    udp.share_key = Some("k".into());
    udp.ports = [("UDP".to_string(), 80)].into();
    udp.requested = got.clone();
    assert_eq!(a.allocate(&udp).unwrap(), got);
}

#[test]
fn requested_addresses_must_be_in_a_pool_and_free() {
    let mut a = Allocator::new(vec![
        pool("a", "192.0.2.0/30"),
        pool("b", "198.51.100.0/30"),
    ]);
    let mut s = svc("ns/x");
    s.requested = vec![ip("198.51.100.2")];
    assert_eq!(a.allocate(&s).unwrap(), [ip("198.51.100.2")]);
    let mut t = svc("ns/y");
    t.requested = vec![ip("198.51.100.2")];
    assert_eq!(
        a.allocate(&t),
        Err(Pending::AddressTaken(ip("198.51.100.2"), "ns/x".into()))
    );
    t.requested = vec![ip("203.0.113.9")];
    assert_eq!(a.allocate(&t), Err(Pending::NotInPool(ip("203.0.113.9"))));
    t.requested = vec![ip("198.51.100.3")];
    t.pool = Some("a".into());
    assert_eq!(
        a.allocate(&t),
        Err(Pending::NotInPool(ip("198.51.100.3"))),
        "not in the named pool"
    );
}

#[test]
fn pool_choice_by_annotation_or_selector() {
    let mut web = pool("web", "198.51.100.0/30");
    web.service_selector = Some(LabelSelector {
        match_labels: [("tier".to_string(), "web".to_string())].into(),
        ..Default::default()
    });
    let mut a = Allocator::new(vec![pool("default", "192.0.2.0/30"), web]);
    let mut s = svc("ns/web");
    s.labels = [("tier".to_string(), "web".to_string())].into();
    assert_eq!(
        a.allocate(&s).unwrap(),
        [ip("198.51.100.1")],
        "selecting pool first"
    );
    assert_eq!(a.allocate(&svc("ns/other")).unwrap(), [ip("192.0.2.1")]);
    let mut named = svc("ns/named");
    named.pool = Some("nope".into());
    assert!(matches!(a.allocate(&named), Err(Pending::NoPoolMatches(_))));
    let mut only_web = Allocator::new(vec![a.pools()[1].clone()]);
    assert!(matches!(
        only_web.allocate(&svc("ns/plain")),
        Err(Pending::NoPoolMatches(_))
    ));
}

#[test]
fn release_frees_for_the_next_and_duplicates_are_refused_on_rebuild() {
    let mut a = Allocator::new(vec![pool("one", "192.0.2.7/32")]);
    let got = a.allocate(&svc("ns/first")).unwrap();
    assert!(a.allocate(&svc("ns/second")).is_err());
    a.release("ns/first");
    assert_eq!(a.allocate(&svc("ns/second")).unwrap(), got);
    // Two statuses claiming one address without sharing: the second is refused.
    let mut b = Allocator::new(vec![pool("one", "192.0.2.7/32")]);
    assert!(b.hold(&svc("ns/old"), &got).is_empty());
    assert_eq!(b.hold(&svc("ns/dup"), &got), got);
    assert_eq!(b.holders_of(got[0]), ["ns/old"]);
}

#[test]
fn ipv6_services_get_ipv6_addresses_and_overlaps_are_conflicts() {
    let mut a = Allocator::new(vec![
        pool("v4", "192.0.2.0/31"),
        pool("v6", "2001:db8::/127"),
        pool("dup", "192.0.2.1/32"),
    ]);
    let mut s = svc("ns/six");
    s.ipv6 = true;
    assert_eq!(a.allocate(&s).unwrap(), [ip("2001:db8::")]);
    let c = a.pool_conflicts();
    assert_eq!(c["dup"], ["192.0.2.1-192.0.2.1 overlaps IPPool v4"]);
    assert_eq!(c["v4"].len(), 1);
}

#[test]
fn cidr_pools_never_hand_out_network_or_broadcast_addresses() {
    let mut a = Allocator::new(vec![pool("egress", "198.18.20.0/30")]);
    assert_eq!(a.allocate(&svc("ns/a")).unwrap(), [ip("198.18.20.1")]);
    assert_eq!(a.allocate(&svc("ns/b")).unwrap(), [ip("198.18.20.2")]);
    assert_eq!(
        a.allocate(&svc("ns/c")),
        Err(Pending::PoolExhausted("egress".into()))
    );
    let mut asked = svc("ns/d");
    asked.requested = vec![ip("198.18.20.3")];
    assert_eq!(
        a.allocate(&asked),
        Err(Pending::NotInPool(ip("198.18.20.3"))),
        "the broadcast address is not in the pool"
    );
    // Explicit ranges are taken as written, network address included.
    let mut r = Allocator::new(vec![range_pool("r", "198.18.20.0-198.18.20.0")]);
    assert_eq!(r.allocate(&svc("ns/a")).unwrap(), [ip("198.18.20.0")]);
}
