//! The real `kubectl` (v1.32, installed on the machine) against the lab API server through a
//! generated kubeconfig.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchyard_lab::apiserver::{ApiServerHandle, ApiServerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DEADLINE: Duration = Duration::from_secs(20);

/// The kubectl to test with: `$KUBECTL`, else `kubectl` from PATH.
fn kubectl_binary() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// kubectl with its own kubeconfig and HOME (so its discovery cache is private to the test).
struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(server: &ApiServerHandle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl_binary());
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .expect("kubectl runs (is kubectl 1.32 installed?)");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap()
    }

    /// Runs kubectl, asserts success, returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None).await
    }

    async fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl, asserts failure, returns stderr.
    async fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().to_string()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&full).await).expect("kubectl -o json prints JSON")
    }
}

const DEMO: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx:1
    ports:
    - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_nodes_lists_nodes_with_pod_cidrs() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let stderr = k.output(&["get", "nodes"], None).await;
    assert_eq!(
        String::from_utf8_lossy(&stderr.stderr).trim(),
        "No resources found"
    );
    k.ok_stdin(
        &["create", "-f", "-"],
        Some("{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"node-a\"}}"),
    )
    .await;
    let wide = common::eventually(
        "node-a with a pod CIDR in kubectl get nodes -o wide",
        DEADLINE,
        || async {
            let out = k.ok(&["get", "nodes", "-o", "wide"]).await;
            out.contains("10.244.0.0/24").then_some(out)
        },
    )
    .await;
    let lines: Vec<Vec<&str>> = wide
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "STATUS", "AGE", "POD-CIDR"]);
    assert_eq!(lines[1][0], "node-a");
    assert_eq!(lines[1][3], "10.244.0.0/24");
    assert_eq!(k.ok(&["get", "no", "-o", "name"]).await, "node/node-a\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_apply_label_annotate_select_delete() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let demo = k.file("demo.yaml", DEMO);

    assert_eq!(
        k.ok(&["create", "-f", &demo]).await,
        "namespace/demo created\npod/web-1 created\nservice/web created\n"
    );
    let again = k.fails(&["create", "-f", &demo], None).await;
    assert!(
        again.contains("Error from server (AlreadyExists): error when creating"),
        "{again}"
    );
    assert!(again.contains("pods \"web-1\" already exists"), "{again}");

    // Client-side apply (default validation): adopts the created objects, then patches.
    let applied = k.ok(&["apply", "-f", &demo]).await;
    assert_eq!(
        applied,
        "namespace/demo configured\npod/web-1 configured\nservice/web configured\n"
    );
    let demo2 = k.file("demo2.yaml", &DEMO.replace("nginx:1", "nginx:2"));
    assert_eq!(
        k.ok(&["apply", "-f", &demo2]).await,
        "namespace/demo unchanged\npod/web-1 configured\nservice/web unchanged\n"
    );
    let pod = k.json(&["get", "pod", "web-1", "-n", "demo"]).await;
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    assert!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    // Server-side apply.
    let demo3 = k.file("demo3.yaml", &DEMO.replace("nginx:1", "nginx:3"));
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", &demo3]).await,
        "namespace/demo serverside-applied\npod/web-1 serverside-applied\nservice/web serverside-applied\n"
    );
    let pod = k.json(&["get", "pod", "web-1", "-n", "demo"]).await;
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:3");

    // label / annotate go through PATCH.
    assert_eq!(
        k.ok(&["label", "pod", "web-1", "-n", "demo", "tier=front"])
            .await,
        "pod/web-1 labeled\n"
    );
    assert_eq!(
        k.ok(&["annotate", "pod", "web-1", "-n", "demo", "note=hello"])
            .await,
        "pod/web-1 annotated\n"
    );
    let second = "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"db-1\",\"namespace\":\"demo\",\"labels\":{\"app\":\"db\"}},\"spec\":{\"containers\":[{\"name\":\"db\",\"image\":\"pg\"}]}}";
    k.ok_stdin(&["create", "-f", "-"], Some(second)).await;

    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let selected = k
        .json(&["get", "pods", "-n", "demo", "-l", "tier in (front),app=web"])
        .await;
    assert_eq!(names(&selected), ["web-1"]);
    assert_eq!(
        selected["items"][0]["metadata"]["annotations"]["note"],
        "hello"
    );
    assert_eq!(
        names(
            &k.json(&["get", "pods", "-n", "demo", "-l", "app!=web"])
                .await
        ),
        ["db-1"]
    );
    assert_eq!(
        names(&k.json(&["get", "pods", "-A", "-l", "!tier"]).await),
        ["db-1"]
    );
    assert_eq!(
        names(
            &k.json(&[
                "get",
                "pods",
                "-A",
                "--field-selector",
                "metadata.name=web-1"
            ])
            .await
        ),
        ["web-1"]
    );
    let svc = k.json(&["get", "svc", "web", "-n", "demo"]).await;
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96."),
        "{svc}"
    );

    let table = k.ok(&["get", "pods", "-n", "demo"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("web-1") && table.contains("Pending"),
        "{table}"
    );

    assert_eq!(
        k.ok(&["delete", "pod", "db-1", "-n", "demo"]).await,
        "pod \"db-1\" deleted\n"
    );
    let gone = k.fails(&["get", "pod", "db-1", "-n", "demo"], None).await;
    assert_eq!(
        gone.trim(),
        "Error from server (NotFound): pods \"db-1\" not found"
    );

    // Delete everything; the namespace goes Terminating first, so its objects delete fine.
    let deleted = k.ok(&["delete", "-f", &demo]).await;
    assert_eq!(
        deleted,
        "namespace \"demo\" deleted\npod \"web-1\" deleted\nservice \"web\" deleted\n"
    );
    common::eventually("namespace demo gone", DEADLINE, || async {
        let out = k.output(&["get", "pod", "web-1", "-n", "demo"], None).await;
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        (err == "Error from server (NotFound): namespaces \"demo\" not found").then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_new_objects() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let cm = |name: &str| {
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{name}\"}}}}"
        )
    };
    k.ok_stdin(&["create", "-f", "-"], Some(&cm("early"))).await;
    let mut child = k
        .command(&["get", "configmaps", "--watch", "-o", "name"])
        .spawn()
        .unwrap();
    let pid = child.id().expect("watch process has a pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line == "configmap/early" {
                k.ok_stdin(&["create", "-f", "-"], Some(&cm("late"))).await;
            }
            if line == "configmap/late" {
                return;
            }
        }
        panic!("kubectl --watch ended early: {seen:?}");
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("kubectl --watch printed the new configmap");
    assert_eq!(seen, ["configmap/early", "configmap/late"]);
    // Stop the watch by its pid and reap it.
    child.start_kill().unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "kubectl (pid {pid}) was killed");
    server.shutdown().await;
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: segments.switchyard.io
spec:
  group: switchyard.io
  scope: Cluster
  names: {plural: segments, singular: segment, kind: Segment, shortNames: [seg]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources: {status: {}}
";

const SEGMENT: &str = "apiVersion: switchyard.io/v1alpha1
kind: Segment
metadata: {name: blue}
spec: {vlan: 100}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_crd_then_custom_resource() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let crd = k.file("crd.yaml", CRD);
    let seg = k.file("seg.yaml", SEGMENT);
    assert_eq!(
        k.ok(&["apply", "-f", &crd]).await,
        "customresourcedefinition.apiextensions.k8s.io/segments.switchyard.io created\n"
    );
    let crd_obj = k.json(&["get", "crd", "segments.switchyard.io"]).await;
    let conditions = crd_obj["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );

    assert_eq!(
        k.ok(&["apply", "-f", &seg]).await,
        "segment.switchyard.io/blue created\n"
    );
    let seg2 = k.file("seg2.yaml", &SEGMENT.replace("100", "200"));
    assert_eq!(
        k.ok(&["apply", "-f", &seg2]).await,
        "segment.switchyard.io/blue configured\n"
    );
    assert_eq!(
        k.ok(&["get", "seg", "blue", "-o", "jsonpath={.spec.vlan}"])
            .await,
        "200"
    );
    let listed = k.ok(&["get", "segments"]).await;
    assert!(
        listed.starts_with("NAME") && listed.contains("blue"),
        "{listed}"
    );
    assert_eq!(
        k.ok(&["label", "segment", "blue", "color=blue"]).await,
        "segment.switchyard.io/blue labeled\n"
    );
    assert_eq!(
        k.ok(&["get", "seg", "-l", "color=blue", "-o", "name"])
            .await,
        "segment.switchyard.io/blue\n"
    );

    // Deleting the CRD removes its objects and stops serving the resource.
    k.ok(&["delete", "-f", &crd]).await;
    let err = k.fails(&["get", "segments.switchyard.io"], None).await;
    assert!(
        err.contains("the server doesn't have a resource type"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_imperative_create_commands_send_protobuf_that_the_server_decodes() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    assert_eq!(
        k.ok(&["create", "namespace", "ns1"]).await,
        "namespace/ns1 created\n"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "configmap",
            "cm1",
            "-n",
            "ns1",
            "--from-literal=a=b",
            "--from-literal=c=d"
        ])
        .await,
        "configmap/cm1 created\n"
    );
    k.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "ns1",
        "--from-literal=k=v",
    ])
    .await;
    k.ok(&["create", "serviceaccount", "sa1", "-n", "ns1"])
        .await;
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "svc1",
        "-n",
        "ns1",
        "--tcp=80:http",
    ])
    .await;
    let cm = k.json(&["get", "cm", "cm1", "-n", "ns1"]).await;
    assert_eq!(cm["data"], serde_json::json!({"a": "b", "c": "d"}));
    assert_eq!(
        k.json(&["get", "secret", "s1", "-n", "ns1"]).await["data"],
        serde_json::json!({"k": "dg=="})
    );
    let svc = k.json(&["get", "svc", "svc1", "-n", "ns1"]).await;
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "svc1"}));
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96.")
    );
    // A Deployment from kubectl's generator (protobuf).
    k.ok(&[
        "create",
        "deployment",
        "d1",
        "--image=x",
        "--replicas=2",
        "-n",
        "ns1",
    ])
    .await;
    let d = k.json(&["get", "deployment", "d1", "-n", "ns1"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        serde_json::json!({"app": "d1"})
    );
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "x");
    // A kind the lab cannot decode from protobuf gets a clear error and creates nothing.
    let err = k.fails(&["create", "priorityclass", "p1"], None).await;
    assert!(
        err.contains("not scheduling.k8s.io/v1 PriorityClass; send JSON"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_lab_apiserver_binary_serves_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kc");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-lab"))
        .args(["apiserver", "--port", "0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(config.contains(&format!("server: {url}")), "{config}");
    let out = tokio::process::Command::new(kubectl_binary())
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/default\nnamespace/kube-node-lease\nnamespace/kube-public\nnamespace/kube-system\n"
    );
    // SIGTERM by pid: the server shuts down cleanly.
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "apiserver exits 0 on SIGTERM: {exit}");
}

const EXTERNAL_SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  selector: {app: web}
  externalIPs: [192.0.2.50]
  ports:
  - {name: http, port: 80, nodePort: 30080}
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports:
  - {name: http, port: 8080}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_svc_shows_node_ports_external_ips_and_the_kubernetes_service() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let file = k.file("external.yaml", EXTERNAL_SERVICES);
    k.ok(&["apply", "-f", &file]).await;
    // Until a LoadBalancer controller exists, the ingress is written through /status.
    k.ok(&[
        "patch",
        "svc",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}"#,
    ])
    .await;
    let out = k.ok(&["get", "svc"]).await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{out}"
    );
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))[..5]
            .to_vec()
    };
    assert_eq!(
        row("kubernetes"),
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    );
    let np = row("np");
    assert_eq!(
        [np[1], np[3], np[4]],
        ["NodePort", "192.0.2.50", "80:30080/TCP"],
        "{out}"
    );
    let lb = row("lb");
    assert_eq!([lb[1], lb[3]], ["LoadBalancer", "192.0.2.10"], "{out}");
    let lb_port = lb[4]
        .strip_prefix("8080:")
        .and_then(|p| p.strip_suffix("/TCP"));
    let lb_node_port: u16 = lb_port.and_then(|p| p.parse().ok()).expect(&out);
    assert_eq!(rows.len(), 4, "{out}");

    let lb = k.json(&["get", "svc", "lb"]).await;
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local");
    let hc = lb["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("healthCheckNodePort");
    assert!((30000..=32767).contains(&hc) && hc != u64::from(lb_node_port) && hc != 30080);
    assert_eq!(
        k.json(&["get", "svc", "np"]).await["spec"]["externalTrafficPolicy"],
        "Cluster"
    );
    let slice = k.json(&["get", "endpointslice", "kubernetes"]).await;
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], server.addr().port());

    // Bad input gets the API server's message.
    let err = k
        .fails(
            &[
                "create",
                "service",
                "nodeport",
                "taken",
                "--tcp=80:80",
                "--node-port=30080",
            ],
            None,
        )
        .await;
    assert!(err.contains("provided port is already allocated"), "{err}");
    // ClusterIP again: the node ports are released.
    k.ok(&[
        "patch",
        "svc",
        "np",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .await;
    let np = k.json(&["get", "svc", "np"]).await;
    assert_eq!(np["spec"]["ports"][0].get("nodePort"), None, "{np}");
    assert_eq!(
        np["spec"]["externalTrafficPolicy"], "Cluster",
        "external IPs remain"
    );
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "reuse",
        "--tcp=80:80",
        "--node-port=30080",
    ])
    .await;
    server.shutdown().await;
}

/// `kubectl apply -f deploy/switchyard.yaml` (and the host-OVS variant) works against the lab
/// as against a cluster: every kind of the shipped manifests, RBAC included, is served, and
/// kubectl's validation finds what it looks for; a second apply changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_shipped_manifests() {
    let server = common::start(ApiServerOptions::default()).await;
    let k = Kubectl::new(&server);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for manifest in ["deploy/switchyard.yaml", "deploy/switchyard-host-ovs.yaml"] {
        let path = root.join(manifest);
        let path = path.to_str().unwrap();
        let out = k.ok(&["apply", "-f", path]).await;
        assert!(!out.contains("unchanged"), "{manifest}: first apply: {out}");
        for kind in [
            "clusterrole.rbac.authorization.k8s.io/",
            "rolebinding.rbac.authorization.k8s.io/",
            "daemonset.apps/",
        ] {
            assert!(out.contains(kind), "{manifest}: {kind} applied: {out}");
        }
        let again = k.ok(&["apply", "-f", path]).await;
        assert!(
            again.lines().all(|l| l.ends_with(" unchanged")),
            "{manifest}: second apply changes nothing: {again}"
        );
        // Wait until everything is gone: the next manifest creates the same namespace, and a
        // namespace still terminating refuses new content (403), as kube-apiserver's does.
        k.ok(&["delete", "-f", path, "--wait=true", "--timeout=15s"])
            .await;
    }
    let roles = k.ok(&["get", "clusterroles", "-o", "name"]).await;
    assert!(!roles.contains("switchyard-agent"), "deleted: {roles}");
    server.shutdown().await;
}
