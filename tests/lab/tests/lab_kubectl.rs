//! The netns lab as a cluster people know, with the real kubectl: `kubectl exec` runs in the
//! pod's network namespace (`curl` to a Service and a pod, the exit code propagated),
//! `kubectl logs` shows the pod's echo-server lines and the agent's and proxy's logs as pods of
//! `switchyard-system`, Service names resolve through the cluster DNS (`curl http://web`,
//! `http://web.default.svc.cluster.local`), and a Deployment is created, scaled and restarted
//! with real pods (`create deployment`, `expose`, `scale`, `rollout restart|status`).
//!
//! Two-node lab with the real CNI binary, agent and proxy (`switchyard-lab up`); needs root,
//! OVS, kubectl and curl, and the binaries built (`cargo build -p switchyard-cni -p
//! switchyard-agent -p switchyard-proxy -p switchyard-lab`); fails with the reason otherwise,
//! unless SWITCHYARD_SKIP_PRIVILEGED=1.

mod lab_support;

use std::time::Duration;

use lab_support::*;

const POD_DEADLINE: Duration = Duration::from_secs(90);
const TRAFFIC_DEADLINE: Duration = Duration::from_secs(30);

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

const WEB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `kubectl exec client -- curl ...` until it answers `expected` (the proxy programs the
/// Service within moments of the pods going Ready); the last failure in the panic.
fn curl_until(lab: &Lab, url: &str, expected: &str) {
    let mut last = String::new();
    eventually(
        &format!("kubectl exec client -- curl {url} answering {expected}"),
        TRAFFIC_DEADLINE,
        || {
            let out = lab.kubectl(&["exec", "client", "--", "curl", "-s", "--max-time", "3", url]);
            let body = text(&out.stdout);
            if out.status.success() && body.trim() == expected {
                return Some(());
            }
            last = format!("{}: {body} {}", out.status, text(&out.stderr));
            eprintln!("curl {url}: {last}");
            None
        },
    );
}

#[test]
fn kubectl_exec_logs_dns_and_deployments_in_a_lab() {
    if !privileged("kubectl_exec_logs_dns_and_deployments_in_a_lab") {
        return;
    }
    let lab = Lab::up(2, &[]);
    let mut m = pod("client", "node1", "client");
    m.push_str(&pod("web", "node2", "web"));
    m.push_str(WEB_SERVICE);
    lab.apply(&m);
    let client_ip = wait_running(&lab, "client", POD_DEADLINE);
    let web_ip = wait_running(&lab, "web", POD_DEADLINE);
    let vip = cluster_ip(&lab, "default", "web");

    // The command runs in the pod's network namespace: its eth0 holds the pod address.
    let addrs = lab.kubectl_ok(&[
        "exec", "client", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(
        addrs.contains(&format!("inet {client_ip}/")),
        "exec does not run in the pod's namespace: {addrs}"
    );
    // curl from the pod, to the other node's pod and to the Service.
    curl_until(&lab, &format!("http://{web_ip}:8080/"), "web");
    curl_until(&lab, &format!("http://{vip}/"), "web");

    // The exit code is kubectl's; stderr is kubectl's stderr.
    let out = lab.kubectl(&["exec", "client", "--", "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    let out = lab.kubectl(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "--max-time",
        "2",
        &format!("http://{web_ip}:1/"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl's 'failed to connect' is kubectl's exit code"
    );

    // kubectl logs: the echo server's line of each request, with the client pod's address.
    let logs = lab.kubectl_ok(&["logs", "web"]);
    assert!(logs.contains("echo server ready"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("http request") && l.contains(&format!("{client_ip}:"))),
        "no request from {client_ip} in the log of web:\n{logs}"
    );
    let last = lab.kubectl_ok(&["logs", "web", "--tail", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(logs.ends_with(&last), "--tail 1 is the last line");

    // The node daemons as pods of switchyard-system, their logs the daemons' log files.
    for (pod, expect) in [
        ("switchyard-agent-node1", "node1"),
        ("switchyard-proxy-node2", "node2"),
    ] {
        wait_running_in(&lab, "switchyard-system", pod, POD_DEADLINE);
        let log = lab.kubectl_ok(&["logs", "-n", "switchyard-system", pod, "--tail", "50"]);
        assert!(!log.is_empty(), "kubectl logs of {pod} is empty");
        let file = lab.state.node_dir(expect).join(format!(
            "{}.log",
            if pod.contains("agent") {
                "agent"
            } else {
                "proxy"
            }
        ));
        let content = std::fs::read_to_string(&file).unwrap();
        assert!(
            content.ends_with(&log),
            "{pod}: not the tail of {}",
            file.display()
        );
    }

    // Cluster DNS: names of Services from a pod, through the search path and in full.
    wait_running_in(&lab, "kube-system", "coredns-node1", POD_DEADLINE);
    let resolved = eventually("web resolving in the client pod", TRAFFIC_DEADLINE, || {
        let out = lab.kubectl(&["exec", "client", "--", "getent", "hosts", "web"]);
        let text = text(&out.stdout);
        eprintln!(
            "getent hosts web: {} {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && !text.is_empty()).then_some(text)
    });
    assert!(
        resolved.starts_with(&format!("{vip} ")),
        "web resolved to {resolved}, not {vip}"
    );
    curl_until(&lab, "http://web", "web");
    curl_until(&lab, "http://web.default.svc.cluster.local", "web");
    let out = lab.kubectl(&[
        "exec",
        "client",
        "--",
        "getent",
        "hosts",
        "nothere.default.svc.cluster.local",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown name is not found (getent exit 2)"
    );

    // A Deployment: real pods through the CNI plugin, a Service by name, scale and a
    // rolling restart that waits for the new pods to be Ready.
    lab.kubectl_ok(&[
        "create",
        "deployment",
        "hello",
        "--image=x",
        "--replicas=3",
        "--port=8080",
    ]);
    lab.kubectl_ok(&[
        "expose",
        "deployment",
        "hello",
        "--port=80",
        "--target-port=8080",
    ]);
    lab.kubectl_ok(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    let backends = || -> Vec<String> {
        let out = lab.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        out.split_whitespace().map(str::to_string).collect()
    };
    let first = backends();
    assert_eq!(first.len(), 3, "{first:?}");
    eventually(
        "http://hello answered by every replica",
        TRAFFIC_DEADLINE,
        || {
            let out = lab.kubectl(&[
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                "for i in $(seq 1 30); do curl -s --max-time 3 http://hello; done",
            ]);
            let answers: std::collections::BTreeSet<String> =
                text(&out.stdout).lines().map(str::to_string).collect();
            first.iter().all(|p| answers.contains(p)).then_some(())
        },
    );
    lab.kubectl_ok(&["scale", "deployment/hello", "--replicas=2"]);
    eventually("hello scaled to 2", POD_DEADLINE, || {
        (backends().len() == 2).then_some(())
    });
    lab.kubectl_ok(&["rollout", "restart", "deployment/hello"]);
    lab.kubectl_ok(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    let after = eventually("only new pods of hello", POD_DEADLINE, || {
        let now = backends();
        (now.len() == 2 && now.iter().all(|p| !first.contains(p))).then_some(now)
    });
    eventually(
        "http://hello answered by a new replica",
        TRAFFIC_DEADLINE,
        || {
            let out = lab.kubectl(&[
                "exec",
                "client",
                "--",
                "curl",
                "-s",
                "--max-time",
                "3",
                "http://hello",
            ]);
            let body = text(&out.stdout);
            after.contains(&body.trim().to_string()).then_some(())
        },
    );
}
