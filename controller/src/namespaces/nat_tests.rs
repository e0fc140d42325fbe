use super::*;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Mutex;
use switchyard_api::{SegmentSpec, SegmentSubnet};

fn seg(
    name: &str,
    cluster: Option<&str>,
    uid: Option<&str>,
    snat: Option<&str>,
    cidrs: &[&str],
) -> Seg {
    Seg {
        name: name.into(),
        cluster: cluster.map(str::to_string),
        namespace_uid: uid.map(str::to_string),
        deleting: false,
        spec: SegmentSpec {
            vlan: 1000,
            uplink: Some("trunk0".into()),
            subnets: cidrs
                .iter()
                .map(|c| {
                    let net: ipnet::Ipv4Net = c.parse().unwrap();
                    SegmentSubnet {
                        cidr: c.to_string(),
                        gateway: net.hosts().next().unwrap().to_string(),
                    }
                })
                .collect(),
            snat_address: snat.map(str::to_string),
            ..Default::default()
        },
        used: 0,
    }
}

fn rule(id: &str, sources: &[&str], to: &str, uid: &str) -> NatRule {
    NatRule::snat(
        id,
        sources.iter().map(|s| s.parse().unwrap()).collect(),
        to.parse().unwrap(),
        OWNER,
        id,
    )
    .with_namespace_uid(uid)
}

#[test]
fn one_rule_per_tagged_segment_with_an_snat_address() {
    let mut deleting = seg(
        "ns-red",
        Some("c"),
        Some("u-red"),
        Some("192.0.2.9"),
        &["10.64.0.128/26"],
    );
    deleting.deleting = true;
    let segs = [
        seg(
            "ns-blue",
            Some("c"),
            Some("u-blue"),
            Some("192.0.2.7"),
            &["10.64.0.0/26", "10.64.0.64/26"],
        ),
        // Still running pods while its addresses are released: the rule stays.
        deleting,
        // No SNAT address (yet), another cluster's, a user's Segment, a broken spec.
        seg(
            "ns-green",
            Some("c"),
            Some("u-green"),
            None,
            &["10.64.1.0/26"],
        ),
        seg(
            "ns-other",
            Some("d"),
            Some("u-o"),
            Some("192.0.2.10"),
            &["10.64.2.0/26"],
        ),
        seg("users", None, None, Some("192.0.2.11"), &["10.64.3.0/26"]),
        seg(
            "ns-bad",
            Some("c"),
            Some("u-bad"),
            Some("not-an-ip"),
            &["10.64.4.0/26"],
        ),
    ];
    let want = desired("c", &segs);
    assert_eq!(
        want.rules.keys().collect::<Vec<_>>(),
        ["c-ns-blue", "c-ns-red"]
    );
    assert_eq!(
        want.rules["c-ns-blue"],
        NatRule::snat(
            "c-ns-blue",
            vec![
                "10.64.0.0/26".parse().unwrap(),
                "10.64.0.64/26".parse().unwrap()
            ],
            "192.0.2.7".parse().unwrap(),
            "ns",
            "switchyard c: egress of segment ns-blue",
        )
        .with_namespace_uid("u-blue")
    );
    assert_eq!(want.segments["c-ns-red"], "ns-red");
}

#[test]
fn diff_writes_missing_and_changed_rules_and_deletes_only_its_own_orphans() {
    let want: BTreeMap<String, NatRule> = [
        rule("c-ns-blue", &["10.64.0.0/26"], "192.0.2.7", "u1"),
        rule("c-ns-green", &["10.64.1.0/26"], "192.0.2.8", "u2"),
        rule(
            "c-ns-red",
            &["10.64.2.0/26", "10.64.2.64/26"],
            "192.0.2.9",
            "u3",
        ),
    ]
    .into_iter()
    .map(|r| (r.id.clone(), r))
    .collect();
    let mut disabled = rule("c-ns-green", &["10.64.1.0/26"], "192.0.2.8", "u2");
    disabled.enabled = false;
    let mut other_owner = rule("c-cpvip-x", &["10.0.0.0/8"], "192.0.2.1", "u9");
    other_owner.owner = "cpvip".into();
    let have = [
        // As wanted (another display name does not count).
        NatRule {
            display_name: "renamed".into(),
            ..want["c-ns-blue"].clone()
        },
        disabled,
        // Missing the appended subnet.
        rule("c-ns-red", &["10.64.2.0/26"], "192.0.2.9", "u3"),
        // A gone namespace's rule, and another component's rule of the same cluster.
        rule("c-ns-gone", &["10.64.3.0/26"], "192.0.2.12", "u4"),
        other_owner,
    ];
    let d = diff(&want, &have);
    assert_eq!(
        d.put.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["c-ns-green", "c-ns-red"]
    );
    assert_eq!(d.delete, ["c-ns-gone"]);
    assert_eq!(d.held, 1);
    // In sync: nothing to do.
    let have: Vec<NatRule> = want.values().cloned().collect();
    assert_eq!(
        diff(&want, &have),
        Diff {
            held: 3,
            ..Default::default()
        }
    );
}

/// This cluster's rules by id; `fail` makes every write fail with that status.
#[derive(Debug, Default)]
struct FakeNat {
    rules: Mutex<BTreeMap<String, NatRule>>,
    fail: Option<u16>,
    writes: Mutex<Vec<String>>,
}

impl NatDriver for FakeNat {
    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<NatRule>, RouterError>> {
        let v = self.rules.lock().unwrap().values().cloned().collect();
        async move { Ok(v) }.boxed()
    }
    fn get_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NatRule>, RouterError>> {
        let v = self.rules.lock().unwrap().get(id).cloned();
        async move { Ok(v) }.boxed()
    }
    fn put_nat<'a>(&'a self, rule: &'a NatRule) -> BoxFuture<'a, Result<(), RouterError>> {
        let r = match self.fail {
            Some(status) => Err(RouterError::Http {
                method: "PUT".into(),
                path: rule.id.clone(),
                status,
                message: "injected".into(),
            }),
            None => {
                self.writes.lock().unwrap().push(format!("put {}", rule.id));
                self.rules
                    .lock()
                    .unwrap()
                    .insert(rule.id.clone(), rule.clone());
                Ok(())
            }
        };
        async move { r }.boxed()
    }
    fn delete_nat<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>> {
        self.writes.lock().unwrap().push(format!("delete {id}"));
        self.rules.lock().unwrap().remove(id);
        async { Ok(()) }.boxed()
    }
}

#[tokio::test]
async fn sync_repairs_then_writes_nothing_and_reports_retriable_failures() {
    let router = FakeNat::default();
    router.rules.lock().unwrap().insert(
        "c-ns-gone".into(),
        rule("c-ns-gone", &["10.64.3.0/26"], "192.0.2.12", "u4"),
    );
    let want: BTreeMap<String, NatRule> = [rule("c-ns-blue", &["10.64.0.0/26"], "192.0.2.7", "u1")]
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let r = sync_nat(&router, "fake", &want, None, None).await.unwrap();
    assert_eq!(r.put, ["c-ns-blue"]);
    assert_eq!(r.deleted, ["c-ns-gone"]);
    assert_eq!(r.held, 1);
    router.writes.lock().unwrap().clear();
    let r = sync_nat(&router, "fake", &want, None, None).await.unwrap();
    assert!(
        r.put.is_empty() && r.deleted.is_empty() && r.held == 1,
        "{r:?}"
    );
    assert!(
        router.writes.lock().unwrap().is_empty(),
        "in sync: no writes"
    );

    let failing = FakeNat {
        fail: Some(503),
        ..Default::default()
    };
    let metrics = Metrics::default();
    let r = sync_nat(&failing, "fake", &want, None, Some(&metrics))
        .await
        .unwrap();
    assert!(r.retriable, "{r:?}");
    assert!(r.failed["c-ns-blue"].contains("HTTP 503"), "{r:?}");
    assert!(
        metrics
            .render()
            .contains(r#"driver_errors_total{driver="fake",kind="http_5xx"} 1"#),
        "{}",
        metrics.render()
    );
}
