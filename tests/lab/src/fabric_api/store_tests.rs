use super::*;
use futures::FutureExt;
use std::sync::Arc;

/// Routes are not used here; the SNAT rule sets applied are recorded.
#[derive(Default, Clone)]
struct NatKernel {
    applied: Arc<Mutex<Vec<Vec<Snat>>>>,
    fail: Arc<Mutex<bool>>,
}

impl Kernel for NatKernel {
    fn apply<'a>(&'a self, _: IpNet, _: &'a [IpAddr]) -> BoxFuture<'a, Result<(), String>> {
        async { Ok(()) }.boxed()
    }
    fn remove(&self, _: IpNet) -> BoxFuture<'_, Result<(), String>> {
        async { Ok(()) }.boxed()
    }
    fn read(&self, _: IpNet) -> BoxFuture<'_, Result<Vec<IpAddr>, String>> {
        async { Ok(Vec::new()) }.boxed()
    }
    fn apply_nat<'a>(&'a self, rules: &'a [Snat]) -> BoxFuture<'a, Result<(), String>> {
        let r = if *self.fail.lock().unwrap() {
            Err("nft: injected".to_string())
        } else {
            self.applied.lock().unwrap().push(rules.to_vec());
            Ok(())
        };
        async move { r }.boxed()
    }
}

const NAT: &str = "/policy/api/v1/infra/tier-1s/lab/nat/USER/nat-rules";

fn body(sources: &str, to: &str, revision: Option<i64>) -> Vec<u8> {
    let mut v = json!({"action": "SNAT", "source_network": sources, "translated_network": to,
                       "enabled": true, "tags": [{"scope": "switchyard.io/cluster", "tag": "lab"}]});
    if let Some(r) = revision {
        v["_revision"] = json!(r);
    }
    v.to_string().into_bytes()
}

fn snat(id: &str, sources: &[&str], to: &str) -> Snat {
    Snat {
        id: id.into(),
        sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
        translated: to.parse().unwrap(),
    }
}

#[tokio::test]
async fn every_nat_change_applies_the_whole_set() {
    let k = NatKernel::default();
    let store = Store::new(Box::new(k.clone()));
    let put = |id: &str, b: Vec<u8>| {
        let store = &store;
        let path = format!("{NAT}/{id}");
        async move { store.handle("PUT", &path, false, false, &b).await }
    };
    let (st, obj) = put(
        "b",
        body("10.30.0.64/26, 10.30.0.0/26", "198.18.20.2", None),
    )
    .await;
    assert_eq!(st, 200, "{obj}");
    assert_eq!(obj["resource_type"], "PolicyNatRule");
    let (st, _) = put("a", body("10.31.0.0/26", "198.18.20.1", None)).await;
    assert_eq!(st, 200);
    assert_eq!(
        k.applied.lock().unwrap().last().unwrap(),
        &vec![
            snat("a", &["10.31.0.0/26"], "198.18.20.1"),
            snat("b", &["10.30.0.0/26", "10.30.0.64/26"], "198.18.20.2"),
        ],
        "ordered by id, sources sorted"
    );
    // An update without the revision read is refused, nothing applied.
    let n = k.applied.lock().unwrap().len();
    let (st, _) = put("a", body("10.31.0.0/26", "198.18.20.9", None)).await;
    assert_eq!(st, 412);
    assert_eq!(k.applied.lock().unwrap().len(), n);
    // A disabled rule leaves the set; bad rules are refused.
    let mut disabled: Value =
        serde_json::from_slice(&body("10.31.0.0/26", "198.18.20.1", Some(2))).unwrap();
    disabled["enabled"] = json!(false);
    let (st, _) = put("a", disabled.to_string().into_bytes()).await;
    assert_eq!(st, 200);
    assert_eq!(
        k.applied.lock().unwrap().last().unwrap(),
        &vec![snat("b", &["10.30.0.0/26", "10.30.0.64/26"], "198.18.20.2")]
    );
    for bad in [
        body("", "198.18.20.3", None),
        body("10.32.0.0/26", "fd00::1", None),
        body("fd00::/64", "198.18.20.3", None),
        br#"{"action": "DNAT", "source_network": "10.32.0.0/26", "translated_network": "198.18.20.3"}"#.to_vec(),
    ] {
        let (st, obj) = put("c", bad).await;
        assert_eq!(st, 400, "{obj}");
    }
    // The kernel refuses: 500, the object is not stored.
    *k.fail.lock().unwrap() = true;
    let (st, obj) = put("d", body("10.33.0.0/26", "198.18.20.4", None)).await;
    assert_eq!(st, 500, "{obj}");
    assert!(obj["error_message"].as_str().unwrap().contains("injected"));
    *k.fail.lock().unwrap() = false;
    let (_, list) = store.handle("GET", NAT, false, false, b"").await;
    assert_eq!(list["result_count"], 2, "{list}");
    // Delete: the set shrinks; deleting again is fine.
    for _ in 0..2 {
        let (st, _) = store
            .handle("DELETE", &format!("{NAT}/b"), false, false, b"")
            .await;
        assert_eq!(st, 200);
    }
    assert_eq!(
        k.applied.lock().unwrap().last().unwrap(),
        &Vec::<Snat>::new()
    );
    let (st, _) = store
        .handle("GET", &format!("{NAT}/b"), false, false, b"")
        .await;
    assert_eq!(st, 404);
    // Only the USER section exists here.
    let (st, _) = store
        .handle(
            "GET",
            "/policy/api/v1/infra/tier-1s/lab/nat/DEFAULT/nat-rules",
            false,
            false,
            b"",
        )
        .await;
    assert_eq!(st, 404);
}
