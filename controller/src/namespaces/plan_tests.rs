use super::*;

fn config() -> Config {
    Config {
        opt_in: OptIn::Label,
        vlans: 1000..=1002,
        supernet: "10.64.0.0/24".parse().unwrap(),
        subnet_prefix: 26,
        uplink: "trunk0".into(),
        egress_pool: None,
        append_at_percent: 90,
        system_namespaces: vec!["default".into()],
        route_target: None,
    }
}

fn ns(name: &str, uid: &str) -> Ns {
    Ns {
        name: name.into(),
        uid: uid.into(),
        opted_in: true,
        deleting: false,
        has_finalizer: false,
        segment_annotation: None,
        snat_annotation: None,
    }
}

fn created(p: &Plan) -> Vec<(String, u16, String, Option<String>)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { name, spec, .. } => Some((
                name.clone(),
                spec.vlan,
                spec.subnets[0].cidr.clone(),
                spec.snat_address.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// The Segments a plan's creates leave behind (as if written).
fn apply(p: &Plan, mut segs: Vec<Seg>) -> Vec<Seg> {
    for a in &p.actions {
        if let Action::Create {
            name, uid, spec, ..
        } = a
        {
            segs.push(Seg {
                name: name.clone(),
                cluster: Some("c".into()),
                namespace_uid: Some(uid.clone()),
                deleting: false,
                spec: spec.clone(),
                used: 0,
            });
        }
    }
    segs
}

fn egress() -> Vec<IpAddr> {
    vec!["192.0.2.10".parse().unwrap(), "192.0.2.11".parse().unwrap()]
}

#[test]
fn each_namespace_gets_its_own_vlan_subnet_and_snat() {
    let p = plan(
        &config(),
        "c",
        &[ns("blue", "u1"), ns("red", "u2")],
        &[],
        &egress(),
    );
    assert_eq!(
        created(&p),
        vec![
            (
                "ns-blue".into(),
                1000,
                "10.64.0.0/26".into(),
                Some("192.0.2.10".into())
            ),
            (
                "ns-red".into(),
                1001,
                "10.64.0.64/26".into(),
                Some("192.0.2.11".into())
            ),
        ]
    );
    let segs = apply(&p, vec![]);
    // Annotated and finalized in the same pass; the next pass has nothing to do once
    // the namespaces carry their annotations.
    let mut blue = ns("blue", "u1");
    blue.has_finalizer = true;
    blue.segment_annotation = Some("ns-blue".into());
    blue.snat_annotation = Some("192.0.2.10".into());
    let mut red = ns("red", "u2");
    red.has_finalizer = true;
    red.segment_annotation = Some("ns-red".into());
    red.snat_annotation = Some("192.0.2.11".into());
    assert_eq!(
        plan(&config(), "c", &[blue, red], &segs, &egress()),
        Plan::default()
    );
}

#[test]
fn taken_values_of_foreign_segments_are_skipped_and_foreign_segments_left_alone() {
    let foreign = Seg {
        name: "ns-blue".into(), // an untagged Segment with the name this namespace would get
        cluster: None,
        namespace_uid: None,
        deleting: false,
        spec: SegmentSpec {
            vlan: 1000,
            subnets: vec![SegmentSubnet {
                cidr: "10.64.0.0/25".into(),
                gateway: "10.64.0.1".into(),
            }],
            ..Default::default()
        },
        used: 0,
    };
    let p = plan(
        &config(),
        "c",
        &[ns("blue", "u1"), ns("red", "u2")],
        &[foreign],
        &[],
    );
    assert_eq!(
        created(&p),
        vec![("ns-red".into(), 1001, "10.64.0.128/26".into(), None)]
    );
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Delete { .. })));
}

#[test]
fn orphans_are_deleted_and_the_namespace_released_after() {
    let segs = apply(&plan(&config(), "c", &[ns("blue", "u1")], &[], &[]), vec![]);
    // The namespace is gone: its Segment is deleted.
    let p = plan(&config(), "c", &[], &segs, &[]);
    assert_eq!(
        p.actions,
        vec![Action::Delete {
            name: "ns-blue".into()
        }]
    );
    // Being deleted with the finalizer: the Segment goes first, then the finalizer.
    let mut blue = ns("blue", "u1");
    blue.deleting = true;
    blue.has_finalizer = true;
    let p = plan(&config(), "c", std::slice::from_ref(&blue), &segs, &[]);
    assert_eq!(
        p.actions,
        vec![Action::Delete {
            name: "ns-blue".into()
        }]
    );
    let p = plan(&config(), "c", &[blue], &[], &[]);
    assert!(matches!(
        &p.actions[..],
        [Action::Namespace {
            finalizer: false,
            ..
        }]
    ));
    // Another cluster's Segment is not an orphan of this one.
    let mut other = segs[0].clone();
    other.cluster = Some("other".into());
    assert_eq!(plan(&config(), "c", &[], &[other], &[]), Plan::default());
}

#[test]
fn a_recreated_namespace_waits_for_the_old_segment() {
    let mut old = apply(&plan(&config(), "c", &[ns("blue", "u1")], &[], &[]), vec![]);
    old[0].deleting = true;
    let p = plan(&config(), "c", &[ns("blue", "u2")], &old, &[]);
    assert!(created(&p).is_empty());
    let p = plan(&config(), "c", &[ns("blue", "u2")], &[], &[]);
    assert_eq!(created(&p).len(), 1);
}

#[test]
fn ranges_run_out_with_a_shortage_not_a_duplicate() {
    let names: Vec<Ns> = (0..5)
        .map(|i| ns(&format!("n{i}"), &format!("u{i}")))
        .collect();
    let p = plan(&config(), "c", &names, &[], &[]);
    let c = created(&p);
    assert_eq!(c.len(), 3); // three VLANs in the range
    let vlans: BTreeSet<u16> = c.iter().map(|x| x.1).collect();
    assert_eq!(vlans.len(), 3);
    assert_eq!(p.shortages.len(), 2);
    assert!(p.shortages.iter().all(|s| s.1 == Shortage::Vlan));
}

#[test]
fn a_nearly_full_segment_gets_another_subnet() {
    let mut segs = apply(&plan(&config(), "c", &[ns("blue", "u1")], &[], &[]), vec![]);
    segs[0].used = 55; // of 61
    let mut blue = ns("blue", "u1");
    blue.has_finalizer = true;
    blue.segment_annotation = Some("ns-blue".into());
    let p = plan(&config(), "c", &[blue], &segs, &[]);
    assert_eq!(
        p.actions,
        vec![Action::Append {
            name: "ns-blue".into(),
            subnet: SegmentSubnet {
                cidr: "10.64.0.64/26".into(),
                gateway: "10.64.0.65".into()
            }
        }]
    );
}

#[test]
fn opt_in_rules() {
    let mut c = config();
    let labels: BTreeMap<String, String> =
        [("switchyard.io/network".to_string(), "dedicated".to_string())].into();
    assert!(opted_in(&c, "blue", &labels));
    assert!(!opted_in(&c, "blue", &BTreeMap::new()));
    c.opt_in = OptIn::All;
    assert!(opted_in(&c, "blue", &BTreeMap::new()));
    assert!(!opted_in(&c, "kube-system", &BTreeMap::new()));
    assert!(!opted_in(&c, "default", &BTreeMap::new()));
}
