//! `cluster::cni_exec` (the lab's libcni) against the real `switchyard` binary and a STUB agent
//! (`switchyard_cni::serve` in the test): ADD caches, CHECK and DEL get the cached result as
//! prevResult, GC DELs stale cached attachments then sends GC with the valid ones. Needs root
//! (the plugin requires CNI_NETNS to be an existing namespace).

mod lab_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lab_support::{privileged, sibling_binary};
use switchyard_cni::{CniError, CniHandler, CniRequest, CniResult, GcAttachment, Verb};
use switchyard_lab::cluster::cni_exec::{CniConfig, RuntimeConf};

#[derive(Debug, Default)]
struct Recorder {
    requests: Mutex<Vec<CniRequest>>,
    next: Mutex<u8>,
}

impl CniHandler for Recorder {
    async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> {
        self.requests.lock().unwrap().push(req);
        let mut n = self.next.lock().unwrap();
        *n += 1;
        Ok(CniResult::from_value(&serde_json::json!({
            "ips": [{"address": format!("10.244.0.{}/24", 10 + *n)}]
        }))
        .unwrap())
    }
    async fn del(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
    async fn check(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
    async fn status(&self, _req: CniRequest) -> Result<(), CniError> {
        Ok(())
    }
    async fn gc(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcni_add_check_gc_del_with_the_real_plugin() {
    if !privileged("libcni_add_check_gc_del_with_the_real_plugin") {
        return;
    }
    let plugin = sibling_binary("switchyard", "switchyard-cni");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&plugin, bin.join("switchyard")).unwrap();
    let sock = dir.path().join("agent.sock");
    let conflist = dir.path().join("net.conflist");
    std::fs::write(
        &conflist,
        serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.1.0", "name": "switchyard",
            "plugins": [{"type": "switchyard", "agentSocket": sock,
                         "capabilities": {"io.kubernetes.cri.pod-annotations": true}}]
        }))
        .unwrap(),
    )
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let server = tokio::spawn(switchyard_cni::serve(
        switchyard_cni::bind_agent_socket(&sock).unwrap(),
        Arc::clone(&recorder),
    ));
    let ns = Netns(format!("sy-cniexec-{}", std::process::id()));
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    let cni = CniConfig::load(
        &conflist,
        vec![bin.clone(), PathBuf::from("/usr/lib/cni")],
        dir.path().join("cache"),
    )
    .unwrap();
    let netns_path = format!("/run/netns/{}", ns.0);
    let rt = |cid: &str, pod: &str| {
        RuntimeConf::for_pod(cid, &netns_path, "default", pod, "uid", &BTreeMap::new())
    };
    let (a, b) = (rt("aaaa", "a"), rt("bbbb", "b"));
    let ra = cni.add(&a).await.unwrap();
    let rb = cni.add(&b).await.unwrap();
    assert_eq!(ra["ips"][0]["address"], "10.244.0.11/24");
    assert_eq!(rb["ips"][0]["address"], "10.244.0.12/24");
    assert!(cni.cache_file(&a).exists() && cni.cache_file(&b).exists());
    assert_eq!(cni.cached_attachments().len(), 2);

    cni.check(&a).await.unwrap();
    // Only "a" stays valid: GC DELs "b" (with its cached result) and sends GC with "a".
    let deleted = cni
        .gc(&[("aaaa".to_string(), "eth0".to_string())])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(cni.cache_file(&a).exists());
    assert!(!cni.cache_file(&b).exists());
    cni.del(&a).await.unwrap();
    assert!(cni.cached_attachments().is_empty());
    // CHECK without a cached result fails before calling anything.
    assert!(cni.check(&a).await.is_err());

    let reqs = recorder.requests.lock().unwrap().clone();
    let verbs: Vec<(Verb, Option<String>)> = reqs
        .iter()
        .map(|r| (r.verb, r.env.container_id.clone()))
        .collect();
    assert_eq!(
        verbs,
        [
            (Verb::Add, Some("aaaa".into())),
            (Verb::Add, Some("bbbb".into())),
            (Verb::Check, Some("aaaa".into())),
            (Verb::Del, Some("bbbb".into())),
            (Verb::Gc, None),
            (Verb::Del, Some("aaaa".into())),
        ]
    );
    let prev = |i: usize| {
        reqs[i]
            .config
            .prev_result
            .as_ref()
            .map(|p| p.ips[0].address.to_string())
    };
    assert_eq!(
        prev(2).as_deref(),
        Some("10.244.0.11/24"),
        "CHECK prevResult"
    );
    assert_eq!(
        prev(3).as_deref(),
        Some("10.244.0.12/24"),
        "GC's DEL prevResult"
    );
    assert_eq!(prev(5).as_deref(), Some("10.244.0.11/24"), "DEL prevResult");
    assert_eq!(
        reqs[4].config.valid_attachments,
        Some(vec![GcAttachment {
            container_id: "aaaa".into(),
            ifname: "eth0".into()
        }])
    );
    assert_eq!(reqs[0].env.args.k8s_pod_name.as_deref(), Some("a"));
    server.abort();
}
