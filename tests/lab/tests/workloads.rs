//! The lab's Deployment and ReplicaSet controllers with the real kubectl: `create deployment`
//! (a protobuf body), `scale`, `rollout restart` and `rollout status`, with the test playing
//! kubelet (it marks pods Ready) so that readiness, `maxSurge` and `maxUnavailable` are
//! checked at every step of a rolling update. No root (the netns lab runs the same
//! controllers with real pods: `tests/lab_kubectl.rs`).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_lab::apiserver::{ApiServerHandle, ApiServerOptions, Store};

const DEADLINE: Duration = Duration::from_secs(30);

struct Setup {
    server: ApiServerHandle,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start(ApiServerOptions::default()).await;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Setup {
            server,
            dir,
            kubeconfig,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(
            std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        );
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} finishes"))
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn store(&self) -> &Arc<Store> {
        self.server.store()
    }
}

fn pods_of(store: &Store, app: &str) -> Vec<Value> {
    store
        .objects_of("", "pods")
        .into_iter()
        .filter(|p| {
            p["metadata"]["labels"]["app"] == app && p["metadata"]["deletionTimestamp"].is_null()
        })
        .collect()
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Plays kubelet for one pod: schedules it and reports it Running and Ready.
fn make_ready(store: &Store, pod: &Value) {
    let rt = store.resource_type("", "v1", "pods").unwrap();
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap(),
    );
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.9",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    store
        .patch(
            &rt,
            ns,
            name,
            "application/merge-patch+json",
            status.to_string().as_bytes(),
            true,
        )
        .unwrap();
}

async fn wait_pods(
    store: &Store,
    app: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    common::eventually(what, DEADLINE, || {
        let pods = pods_of(store, app);
        let ok = check(&pods);
        async move { ok.then_some(pods) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_and_rolling_restart_respect_surge_unavailable_and_readiness() {
    let s = Setup::new().await;
    let store = s.store().clone();
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=x",
        "--replicas=3",
        "--port=8080",
    ])
    .await;
    let pods = wait_pods(&store, "web", "3 pods of web", |p| p.len() == 3).await;
    let hash = pods[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["generateName"] == format!("web-{hash}-"))
    );
    assert_eq!(
        pods[0]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    // Not Ready yet: the Deployment says so.
    let d = s.ok(&["get", "deployment", "web", "-o", "json"]).await;
    let d: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    for p in &pods {
        make_ready(&store, p);
    }
    s.ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    let table = s.ok(&["get", "deployment", "web"]).await;
    assert!(table.contains("3/3"), "{table}");

    // kubectl scale (the scale subresource), down and up.
    s.ok(&["scale", "deployment/web", "--replicas=1"]).await;
    let pods = wait_pods(&store, "web", "web scaled to 1", |p| p.len() == 1).await;
    s.ok(&["scale", "deployment/web", "--replicas=4"]).await;
    let pods2 = wait_pods(&store, "web", "web scaled to 4", |p| p.len() == 4).await;
    assert!(
        pods2
            .iter()
            .any(|p| p["metadata"]["name"] == pods[0]["metadata"]["name"]),
        "the remaining pod stays"
    );
    for p in pods2.iter().filter(|p| !is_ready(p)) {
        make_ready(&store, p);
    }
    s.ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    let scale = s
        .ok(&[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
        ])
        .await;
    let scale: Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");

    // Rolling restart with maxSurge 1, maxUnavailable 0: never more than 5 pods, never fewer
    // than 4 Ready, and it waits for each new pod to be Ready.
    s.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#,
    ])
    .await;
    let old: BTreeSet<String> = pods_of(&store, "web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    s.ok(&["rollout", "restart", "deployment/web"]).await;
    let mut status = s
        .command(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .spawn()
        .unwrap();
    let mut steps = 0;
    loop {
        // Wait for the controllers to settle: a new pod not Ready yet, or the rollout done.
        let pods = wait_pods(&store, "web", "a new pod or the end of the rollout", |p| {
            p.iter().any(|p| !is_ready(p))
                || p.iter()
                    .all(|p| !old.contains(p["metadata"]["name"].as_str().unwrap()))
        })
        .await;
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        assert!(pods.len() <= 5, "maxSurge 1 exceeded: {} pods", pods.len());
        assert!(ready >= 4, "maxUnavailable 0 broken: {ready} Ready");
        let fresh: Vec<&Value> = pods.iter().filter(|p| !is_ready(p)).collect();
        if fresh.is_empty() {
            break;
        }
        assert_eq!(fresh.len(), 1, "one new pod at a time with maxSurge 1");
        assert!(!old.contains(fresh[0]["metadata"]["name"].as_str().unwrap()));
        // The rollout waits for readiness: the pod stays the only new one until Ready.
        make_ready(&store, fresh[0]);
        steps += 1;
        assert!(steps <= 8, "the rollout does not converge");
    }
    assert_eq!(steps, 4, "each of the 4 pods replaced once");
    let out = tokio::time::timeout(DEADLINE, status.wait())
        .await
        .expect("rollout status ends")
        .unwrap();
    assert!(out.success(), "kubectl rollout status failed");
    let rs = s.ok(&["get", "replicasets", "-o", "name"]).await;
    assert_eq!(
        rs.lines().count(),
        2,
        "the old and the new ReplicaSet: {rs}"
    );

    // Deleting the Deployment takes its ReplicaSets and pods.
    s.ok(&["delete", "deployment", "web"]).await;
    wait_pods(&store, "web", "web's pods gone", |p| p.is_empty()).await;
    assert_eq!(s.ok(&["get", "replicasets", "-o", "name"]).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_strategy_stops_the_old_pods_first() {
    let s = Setup::new().await;
    let store = s.store().clone();
    let manifest = s.dir.path().join("d.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: db\nspec:\n  replicas: 2\n  strategy:\n    type: Recreate\n  selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      labels: {app: db}\n    spec:\n      containers:\n      - {name: db, image: x}\n",
    )
    .unwrap();
    s.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let pods = wait_pods(&store, "db", "2 pods of db", |p| p.len() == 2).await;
    for p in &pods {
        make_ready(&store, p);
    }
    s.ok(&["rollout", "restart", "deployment/db"]).await;
    let old: BTreeSet<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let new = wait_pods(&store, "db", "2 new pods of db", |p| {
        p.len() == 2
            && p.iter()
                .all(|p| !old.contains(p["metadata"]["name"].as_str().unwrap()))
    })
    .await;
    assert!(new.iter().all(|p| !is_ready(p)));
}
