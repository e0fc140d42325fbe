//! The lab with the REAL `switchyard-agent` (not a stub): pods on one node reach each other and
//! the node reaches them. Needs root and the agent and CNI binaries built next to the lab binary
//! (`cargo build -p switchyard-agent -p switchyard-cni`; `cargo test --workspace` builds them).
//! On failure the message carries `ovs-ofctl dump-flows`, `ovs-vsctl show` and the agent log.

mod lab_support;

use std::process::Command;
use std::time::Duration;

use lab_support::*;

fn curl(netns: &str, ip: &str) -> Result<String, String> {
    let out = in_netns(
        netns,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}:8080/"),
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("curl {}", out.status))
    }
}

#[test]
fn real_agent_same_node_pod_to_pod_and_node_to_pod() {
    if !privileged("real_agent_same_node_pod_to_pod_and_node_to_pod") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    let lab = Lab::up(1, &["--no-proxy"]);
    assert!(
        lab.state.cni_socket("node1").exists(),
        "the agent did not start{}",
        node_diagnostics(&lab, "node1")
    );
    let mut manifest = String::new();
    for name in ["a", "b"] {
        manifest.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: node1\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
        ));
    }
    lab.apply(&manifest);
    let a_ip = wait_running(&lab, "a", Duration::from_secs(60));
    let b_ip = wait_running(&lab, "b", Duration::from_secs(60));
    assert_ne!(a_ip, b_ip);
    let info = lab.info();
    let a_ns = info.pod_netns("default", "a");
    let b_ns = info.pod_netns("default", "b");
    // The first packets may be spent on ARP/flow set-up: allow a few attempts with a deadline.
    let reach = |from: &str, ip: &str, expect: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = curl(from, ip);
            if r.as_deref() == Ok(expect) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{from} -> {ip}: {r:?}, expected {expect:?}{}",
                node_diagnostics(&lab, "node1")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    reach(&a_ns, &b_ip, "b");
    reach(&b_ns, &a_ip, "a");
    reach(&info.nodes[0].netns, &a_ip, "a");
    // UDP too, with the lab's echo client.
    let udp = in_netns(
        &a_ns,
        &[
            LAB,
            "echo-client",
            "--udp",
            &format!("{b_ip}:5353"),
            "--count",
            "3",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&udp.stdout),
        "b\nb\nb\n",
        "{}{}",
        String::from_utf8_lossy(&udp.stderr),
        node_diagnostics(&lab, "node1")
    );
    reach(&info.nodes[0].netns, &b_ip, "b");
    // Pod addresses come from the node's podCIDR.
    assert!(a_ip.starts_with("10.244.0."), "{a_ip}");

    // Deleting a pod removes its OVS port (the agent got DEL through the CNI plugin).
    let port_count = || {
        Command::new("ovs-vsctl")
            .arg(format!(
                "--db=unix:{}",
                lab.state.ovsdb_socket("node1").display()
            ))
            .args(["--columns=external_ids", "list", "Port"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .matches("switchyard.io/pod-name\"=")
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(port_count(), 2, "{}", node_diagnostics(&lab, "node1"));
    lab.kubectl_ok(&["delete", "pod", "a", "--wait=false"]);
    eventually("pod a's OVS port to go", Duration::from_secs(30), || {
        (port_count() == 1).then_some(())
    });
    // The runtime removes the pod namespace right after DEL returns.
    eventually("pod a's namespace to go", Duration::from_secs(30), || {
        (!lab.namespaces().contains(&a_ns)).then_some(())
    });
    // b is untouched.
    reach(&info.nodes[0].netns, &b_ip, "b");
}

/// `switchyard-lab demo --teardown` (what `./demo.sh` runs) with the real agent and proxy:
/// 3 nodes, pods Running on each, same-node pod-to-pod and node-to-pod work, every step is
/// reported, and nothing is left afterwards.
#[test]
fn demo_runs_and_tears_down() {
    if !privileged("demo_runs_and_tears_down") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::prepare();
    let out = lab.command("demo", 3, &["--teardown"]).output().unwrap();
    let stdout = check("switchyard-lab demo", out);
    for line in [
        "same-node pod-to-pod (client -> web-1 on node1)  works",
        "node-to-pod (node1 -> web-1)                     works",
        "cross-node pod-to-pod                            works",
        "ClusterIP load-balancing                         works",
        "kubectl exec, curl http://web (cluster DNS)      works",
        "NodePort from the internet                       works",
        "LoadBalancer from the internet                   works",
        "Service with an endpoint outside the cluster     works",
        "NetworkPolicy allows the client                  works",
        "NetworkPolicy blocks web-1                       works",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    for step in [
        "cross-node pod-to-pod",
        "ClusterIP load-balancing",
        "Removing the lab",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches(" Running ").count(), 4, "{stdout}");
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!lab.state.root().exists());
}
