//! `kubectl exec` (WebSocket, `v5.channel.k8s.io`) and `kubectl logs` with the real kubectl
//! against the lab API server, with a pod runtime that runs commands as plain host processes
//! and keeps logs in a temporary directory (no root; the netns lab's runtime is tested in
//! `tests/lab_kubectl.rs`).

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_lab::apiserver::pods::PodRuntime;
use switchyard_lab::apiserver::{ApiServerHandle, ApiServerOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs exec'd commands on the host; logs are `<dir>/<ns>_<name>.log`.
#[derive(Debug)]
struct HostRuntime {
    logs: PathBuf,
}

impl PodRuntime for HostRuntime {
    fn exec_command(
        &self,
        _pod: &Value,
        _container: &str,
        argv: &[String],
    ) -> Result<std::process::Command, String> {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        Ok(cmd)
    }

    fn log_file(&self, pod: &Value, _container: &str) -> Result<PathBuf, String> {
        let m = &pod["metadata"];
        Ok(self.logs.join(format!(
            "{}_{}.log",
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        )))
    }
}

struct Setup {
    server: ApiServerHandle,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let server = common::start(ApiServerOptions {
            pod_runtime: Some(Arc::new(HostRuntime { logs })),
            ..ApiServerOptions::default()
        })
        .await;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Setup {
            server,
            dir,
            kubeconfig,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("default_{name}.log"))
    }

    fn kubectl(&self, args: &[&str]) -> tokio::process::Command {
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

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} finishes within {DEADLINE:?}"))
            .unwrap()
    }

    /// A pod as the lab's runtime leaves it: scheduled and Running.
    async fn running_pod(&self, name: &str) {
        let client = common::client(&self.server);
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client, "default");
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "node1", "containers": [{"name": "app", "image": "x"}]}
        }))
        .unwrap();
        pods.create(&Default::default(), &pod).await.unwrap();
        pods.patch_status(
            name,
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_streams_output_stdin_and_the_exit_code() {
    let s = Setup::new().await;
    s.running_pod("box").await;

    let out = s
        .run(&["exec", "box", "--", "echo", "hello from box"], None)
        .await;
    assert!(out.status.success(), "exec failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from box\n");

    // stdout and stderr on their own streams, the exit code is kubectl's.
    let out = s
        .run(
            &[
                "exec",
                "box",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));

    // stdin (-i) reaches the command and its end closes the command's stdin (v5 CLOSE).
    let out = s
        .run(&["exec", "-i", "box", "--", "wc", "-l"], Some("a\nb\nc\n"))
        .await;
    assert!(
        out.status.success(),
        "exec -i failed: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "3");

    // More than one frame of output arrives whole and in order.
    let out = s
        .run(&["exec", "box", "--", "seq", "1", "100000"], None)
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines.last(), Some(&"100000"));

    // Errors a user can act on.
    let out = s.run(&["exec", "nothere", "--", "true"], None).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let out = s
        .run(&["exec", "box", "-c", "other", "--", "true"], None)
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container other is not valid for pod box"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_tail_and_follow() {
    let s = Setup::new().await;
    s.running_pod("web").await;
    let log = s.log_path("web");
    std::fs::write(&log, "line 1\nline 2\nline 3\n").unwrap();

    let out = s.run(&["logs", "web"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line 1\nline 2\nline 3\n");
    let out = s.run(&["logs", "web", "--tail", "1"], None).await;
    assert_eq!(text(&out.stdout), "line 3\n");
    let out = s.run(&["logs", "web", "--previous"], None).await;
    assert!(!out.status.success());

    // -f: what is appended arrives; deleting the pod ends the stream.
    let mut child = s
        .kubectl(&["logs", "-f", "web", "--tail", "1"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await.as_deref(), Some("line 3"));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "line 4").unwrap();
    }
    assert_eq!(next(&mut lines).await.as_deref(), Some("line 4"));
    let out = s
        .run(
            &["delete", "pod", "web", "--grace-period=0", "--force"],
            None,
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(next(&mut lines).await, None, "the stream ends with the pod");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("kubectl logs -f exits")
        .unwrap();
    assert!(status.success());
}

async fn next(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a followed line arrives")
        .unwrap()
}
