//! Unit tests of [`super::decide`] and its rules.

use super::*;

fn segments() -> Vec<SegmentConfig> {
    let mut tagged_overlay = SegmentConfig::overlay("green");
    tagged_overlay.vlan = 30;
    vec![
        SegmentConfig::overlay("default"),
        tagged_overlay,
        SegmentConfig {
            name: "blue".into(),
            kind: SegmentKind::Vlan,
            vlan: 100,
            subnet: Some("10.20.0.0/24".parse().unwrap()),
            gateway: Some("10.20.0.1".parse().unwrap()),
            uplink: Some("eth1".into()),
            allow_untagged: false,
            more_subnets: Vec::new(),
        },
    ]
}

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod of namespace "team" whose namespace lets its pods choose (the
/// mechanics of the choice; the policy is tested with [`run_in`]).
fn run(pod: &[(&str, &str)], ns: &[(&str, &str)]) -> Result<Placement, SegmentError> {
    let mut ns = ann(ns);
    ns.entry(ANNOTATION_POD_PLACEMENT.to_string())
        .or_insert_with(|| POD_PLACEMENT_ALLOW.to_string());
    decide("team", &ann(pod), &ns, &segments(), "default")
}

/// A pod of namespace "team" with exactly these namespace annotations.
fn run_in(pod: &[(&str, &str)], ns: &[(&str, &str)]) -> Result<Placement, SegmentError> {
    decide("team", &ann(pod), &ann(ns), &segments(), "default")
}

#[test]
fn default_when_nothing_annotated() {
    let p = run(&[], &[]).unwrap();
    assert_eq!(
        (p.segment.as_str(), p.vlan, p.kind),
        ("default", 0, SegmentKind::Overlay)
    );
    assert_eq!(
        (p.segment_source, p.vlan_source),
        (Source::Default, Source::Default)
    );
    assert_eq!((p.static_ip, p.static_mac), (None, None));
}

#[test]
fn pod_annotation_beats_namespace_which_beats_default() {
    let p = run(&[], &[(ANNOTATION_SEGMENT, "blue")]).unwrap();
    assert_eq!(
        (p.segment.as_str(), p.vlan, p.segment_source),
        ("blue", 100, Source::Namespace)
    );
    let p = run(
        &[(ANNOTATION_SEGMENT, "green")],
        &[(ANNOTATION_SEGMENT, "blue")],
    )
    .unwrap();
    assert_eq!(
        (p.segment.as_str(), p.vlan, p.segment_source),
        ("green", 30, Source::Pod)
    );
    let p = run(&[(ANNOTATION_VLAN, "42")], &[(ANNOTATION_VLAN, "43")]).unwrap();
    assert_eq!((p.vlan, p.vlan_source), (42, Source::Pod));
    let p = run(&[], &[(ANNOTATION_VLAN, "43")]).unwrap();
    assert_eq!((p.vlan, p.vlan_source), (43, Source::Namespace));
}

#[test]
fn vlan_rules() {
    let e = run(&[(ANNOTATION_VLAN, "4095")], &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod annotation switchyard.io/vlan=4095 is out of range; use 1..=4094"
    );
    let e = run(&[], &[(ANNOTATION_VLAN, "ten")]).unwrap_err();
    assert!(
        matches!(
            e,
            SegmentError::VlanNotANumber {
                source_desc: "namespace",
                ..
            }
        ),
        "{e}"
    );
    assert!(run(&[(ANNOTATION_VLAN, "-1")], &[]).is_err());
    // Untagged allowed on the overlay, not on a vlan segment.
    assert_eq!(run(&[(ANNOTATION_VLAN, "0")], &[]).unwrap().vlan, 0);
    let e = run(&[(ANNOTATION_SEGMENT, "blue"), (ANNOTATION_VLAN, "0")], &[]).unwrap_err();
    assert!(matches!(e, SegmentError::UntaggedNotAllowed { .. }), "{e}");
    // A vlan segment's VLAN is fixed.
    let e = run(
        &[(ANNOTATION_SEGMENT, "blue"), (ANNOTATION_VLAN, "101")],
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("conflicts with segment \"blue\", which is VLAN 100"),
        "{e}"
    );
    assert_eq!(
        run(
            &[(ANNOTATION_SEGMENT, "blue"), (ANNOTATION_VLAN, "100")],
            &[]
        )
        .unwrap()
        .vlan,
        100
    );
    assert_eq!(run(&[(ANNOTATION_VLAN, "4094")], &[]).unwrap().vlan, 4094);
    assert_eq!(run(&[(ANNOTATION_VLAN, " 7 ")], &[]).unwrap().vlan, 7);
}

#[test]
fn unknown_or_empty_segment_is_actionable() {
    let e = run(&[(ANNOTATION_SEGMENT, "purple")], &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod annotation switchyard.io/segment=\"purple\" names an unknown segment; configured segments: [\"default\", \"green\", \"blue\"]"
    );
    let e = run(&[], &[(ANNOTATION_SEGMENT, "")]).unwrap_err();
    assert!(matches!(
        e,
        SegmentError::EmptySegment {
            source_desc: "namespace"
        }
    ));
}

#[test]
fn static_ip_and_mac_from_pod_only() {
    let p = run(
        &[
            (ANNOTATION_IP, "10.20.0.9"),
            (ANNOTATION_MAC, "0a:58:00:00:00:09"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(p.static_ip, Some(Ipv4Addr::new(10, 20, 0, 9)));
    assert_eq!(p.static_mac.unwrap().to_string(), "0a:58:00:00:00:09");
    let p = run(&[], &[(ANNOTATION_IP, "10.20.0.9")]).unwrap();
    assert_eq!(p.static_ip, None);
    assert!(matches!(
        run(&[(ANNOTATION_IP, "10.20.0.9/24")], &[]),
        Err(SegmentError::InvalidIp { .. })
    ));
    let e = run(&[(ANNOTATION_MAC, "01:00:5e:00:00:01")], &[]).unwrap_err();
    assert!(e.to_string().contains("unicast"), "{e}");
    let e = run(&[(ANNOTATION_MAC, "0a:58")], &[]).unwrap_err();
    assert!(e.to_string().contains("six hex octets"), "{e}");
}

#[test]
fn a_pod_may_not_leave_its_namespaces_segment_by_default() {
    let e = run_in(&[(ANNOTATION_SEGMENT, "blue")], &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod annotation switchyard.io/segment=\"blue\" is refused: pods of namespace \"team\" stay on their namespace's segment \"default\", VLAN 0; placement is the namespace owner's decision; the cluster admin lets a namespace's pods choose with the namespace annotation switchyard.io/pod-placement=allow"
    );
    // Also out of a segment the namespace chose.
    let e = run_in(
        &[(ANNOTATION_SEGMENT, "default")],
        &[(ANNOTATION_SEGMENT, "blue")],
    )
    .unwrap_err();
    assert!(
        matches!(&e, SegmentError::PlacementRefused { annotation, namespace_choice, rule: Rule::NamespaceDecides, .. }
            if *annotation == ANNOTATION_SEGMENT && namespace_choice == "segment \"blue\", VLAN 100"),
        "{e}"
    );
    // Refused before anything else is looked at: an unknown name tells the
    // pod author nothing about the configured segments.
    let e = run_in(&[(ANNOTATION_SEGMENT, "purple")], &[]).unwrap_err();
    assert!(matches!(e, SegmentError::PlacementRefused { .. }), "{e}");
}

#[test]
fn a_pod_may_not_pick_another_vlan_by_default() {
    let e = run_in(&[(ANNOTATION_VLAN, "200")], &[]).unwrap_err();
    assert!(
        matches!(&e, SegmentError::PlacementRefused { annotation, .. } if *annotation == ANNOTATION_VLAN),
        "{e}"
    );
    assert!(
        e.to_string().contains("switchyard.io/pod-placement=allow"),
        "{e}"
    );
    // Against the namespace's VLAN annotation, and against the VLAN of the
    // namespace's segment.
    let e = run_in(&[(ANNOTATION_VLAN, "101")], &[(ANNOTATION_VLAN, "100")]).unwrap_err();
    assert!(
        e.to_string().contains("segment \"default\", VLAN 100"),
        "{e}"
    );
    let e = run_in(&[(ANNOTATION_VLAN, "31")], &[(ANNOTATION_SEGMENT, "green")]).unwrap_err();
    assert!(e.to_string().contains("segment \"green\", VLAN 30"), "{e}");
    // Out of range is refused too (no VLAN of the namespace's is 5000).
    assert!(matches!(
        run_in(&[(ANNOTATION_VLAN, "5000")], &[]),
        Err(SegmentError::PlacementRefused { .. })
    ));
    // A malformed value is named as such.
    assert!(matches!(
        run_in(&[(ANNOTATION_VLAN, "ten")], &[]),
        Err(SegmentError::VlanNotANumber { .. })
    ));
}

#[test]
fn a_pod_annotation_that_repeats_its_namespaces_choice_is_fine() {
    let p = run_in(
        &[(ANNOTATION_SEGMENT, "default"), (ANNOTATION_VLAN, "0")],
        &[],
    )
    .unwrap();
    assert_eq!((p.segment.as_str(), p.vlan), ("default", 0));
    let p = run_in(
        &[(ANNOTATION_SEGMENT, "blue"), (ANNOTATION_VLAN, "100")],
        &[(ANNOTATION_SEGMENT, " blue ")],
    )
    .unwrap();
    assert_eq!((p.segment.as_str(), p.vlan), ("blue", 100));
    let p = run_in(&[(ANNOTATION_VLAN, "042")], &[(ANNOTATION_VLAN, "42")]).unwrap();
    assert_eq!(p.vlan, 42);
    let p = run_in(&[(ANNOTATION_VLAN, "30")], &[(ANNOTATION_SEGMENT, "green")]).unwrap();
    assert_eq!((p.segment.as_str(), p.vlan), ("green", 30));
    // Without pod annotations nothing changes.
    let p = run_in(&[], &[(ANNOTATION_SEGMENT, "blue")]).unwrap();
    assert_eq!(
        (p.segment.as_str(), p.segment_source),
        ("blue", Source::Namespace)
    );
}

#[test]
fn the_namespace_annotation_lets_its_pods_choose() {
    let allow = [(ANNOTATION_POD_PLACEMENT, POD_PLACEMENT_ALLOW)];
    let p = run_in(&[(ANNOTATION_SEGMENT, "blue")], &allow).unwrap();
    assert_eq!(
        (p.segment.as_str(), p.vlan, p.segment_source),
        ("blue", 100, Source::Pod)
    );
    let p = run_in(&[(ANNOTATION_VLAN, "200")], &allow).unwrap();
    assert_eq!((p.vlan, p.vlan_source), (200, Source::Pod));
    // The explicit default and an unknown value keep the namespace's choice;
    // the message names the value that is not "allow".
    let e = run_in(
        &[(ANNOTATION_SEGMENT, "blue")],
        &[(ANNOTATION_POD_PLACEMENT, POD_PLACEMENT_NAMESPACE)],
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            SegmentError::PlacementRefused {
                rule: Rule::NamespaceDecides,
                ..
            }
        ),
        "{e}"
    );
    let e = run_in(
        &[(ANNOTATION_SEGMENT, "blue")],
        &[(ANNOTATION_POD_PLACEMENT, "yes")],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("switchyard.io/pod-placement=\"yes\" is not \"allow\""),
        "{e}"
    );
}

#[test]
fn pods_of_a_namespace_network_never_leave_it() {
    // The controller's finalizer (mode `all`) or the opt-in label (mode
    // `label`), with its segment annotation: even `allow` does not apply.
    for mark in [
        (FINALIZER_NAMESPACE_NETWORK, "finalizer"),
        (LABEL_NETWORK, "dedicated"),
    ] {
        let ns = [
            mark,
            (ANNOTATION_SEGMENT, "blue"),
            (ANNOTATION_POD_PLACEMENT, POD_PLACEMENT_ALLOW),
        ];
        let e = run_in(&[(ANNOTATION_SEGMENT, "default")], &ns).unwrap_err();
        assert!(
            matches!(
                e,
                SegmentError::PlacementRefused {
                    rule: Rule::OwnNetwork,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("its own network"), "{e}");
        let e = run_in(&[(ANNOTATION_VLAN, "7")], &ns).unwrap_err();
        assert!(matches!(e, SegmentError::PlacementRefused { .. }), "{e}");
        let p = run_in(&[(ANNOTATION_SEGMENT, "blue")], &ns).unwrap();
        assert_eq!(p.segment, "blue");
    }
}

#[test]
fn a_static_address_stays_inside_the_pods_segment() {
    let e = run_in(
        &[(ANNOTATION_IP, "10.30.0.5")],
        &[(ANNOTATION_SEGMENT, "blue")],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod annotation switchyard.io/ip=10.30.0.5 is outside the pod's segment \"blue\" (subnet 10.20.0.0/24); a static address must be one of its segment's addresses"
    );
    let p = run_in(
        &[(ANNOTATION_IP, "10.20.0.5")],
        &[(ANNOTATION_SEGMENT, "blue")],
    )
    .unwrap();
    assert_eq!(p.static_ip, Some(Ipv4Addr::new(10, 20, 0, 5)));
    // An overlay segment's addresses are the node's pod CIDR, which the
    // agent checks where the pool is (cni/add.rs): decide lets it through.
    assert!(run_in(&[(ANNOTATION_IP, "10.30.0.5")], &[]).is_ok());
}

#[test]
fn the_next_hop_mac_is_not_a_pod_mac() {
    let e = run(&[(ANNOTATION_MAC, "aa:bb:cc:dd:ee:ff")], &[]).unwrap_err();
    assert!(e.to_string().contains("next hop"), "{e}");
}
