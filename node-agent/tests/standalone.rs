//! Standalone attachments: a runtime other than kubelet (podman's CNI backend, nerdctl, any
//! libcni program) names no pod in CNI_ARGS. The container gets the segment the network
//! configuration names in `args.cni.segment` (else the node's default), and is kept while its
//! network namespace exists, across agent restarts, without any Pod in the API. Real OVS, the
//! real agent binary and the real `switchyard` CNI binary run as libcni runs it; needs root and
//! openvswitch-switch.

mod support;

use serde_json::json;
use support::*;

/// CNI_ARGS as podman sends them: no Kubernetes keys.
const NO_POD: &str = "IgnoreUnknown=1";

async fn add(c: &PodNs, conf: &serde_json::Value, args: &str) -> CniOutput {
    run_cni(
        "ADD",
        &c.container_id,
        Some(&c.netns_path()),
        "eth0",
        args,
        conf,
    )
    .await
}

#[test]
fn containers_that_are_no_pods_get_the_network_configurations_segment() {
    node_test(
        "containers_that_are_no_pods_get_the_network_configurations_segment",
        |lab| async move {
            let mut agent = AgentProcess::start(&lab, "agent-1.log").await;
            let conf = lab.conflist();

            // Two containers of no pod, on the node's default segment: addresses, ports, and
            // they reach each other.
            let c1 = PodNs::new("", "c1");
            let c2 = PodNs::new("", "c2");
            let out1 = add(&c1, &conf, NO_POD).await;
            assert!(out1.success, "standalone ADD: {}", out1.stdout);
            let out2 = add(&c2, &conf, NO_POD).await;
            assert!(out2.success, "standalone ADD: {}", out2.stdout);
            assert_ne!(out1.ip(), out2.ip());
            assert_eq!(lab.pod_ports().len(), 2);
            assert!(c1.ping(&out2.ip()).await, "c1 reaches c2");

            // A segment the node does not have: 100 naming the configuration, nothing made.
            let mut odd = conf.clone();
            odd["args"] = json!({"cni": {"segment": "nope"}});
            let c3 = PodNs::new("", "c3");
            let out = add(&c3, &odd, NO_POD).await;
            assert!(!out.success);
            assert_eq!(out.code(), 100, "{}", out.stdout);
            assert!(
                out.stdout.contains("nope") && out.stdout.contains("network configuration"),
                "{}",
                out.stdout
            );
            // The segment named explicitly: the default one, by name.
            let mut named = conf.clone();
            named["args"] = json!({"cni": {"segment": "default"}});
            let out = add(&c3, &named, NO_POD).await;
            assert!(out.success, "ADD with args.cni.segment: {}", out.stdout);
            assert_eq!(lab.pod_ports().len(), 3);

            // podman's CNI backend sends K8S_POD_NAME (the container's name) and no
            // namespace: still no pod.
            let c5 = PodNs::new("", "c5");
            let out = add(
                &c5,
                &conf,
                "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c5",
            )
            .await;
            assert!(out.success, "ADD as podman sends it: {}", out.stdout);
            assert_eq!(lab.pod_ports().len(), 4);
            let del = run_cni(
                "DEL",
                &c5.container_id,
                Some(&c5.netns_path()),
                "eth0",
                "IgnoreUnknown=1;K8S_POD_NAME=web",
                &conf,
            )
            .await;
            assert!(del.success, "DEL: {}", del.stdout);
            assert_eq!(lab.pod_ports().len(), 3);

            // A namespace without a pod name is an error.
            let c4 = PodNs::new("", "c4");
            let out = add(&c4, &conf, "K8S_POD_NAMESPACE=default").await;
            assert_eq!(out.code(), 100, "{}", out.stdout);
            assert!(
                out.stdout.contains("pod identity missing"),
                "{}",
                out.stdout
            );
            assert_eq!(lab.pod_ports().len(), 3, "nothing made");

            // A restarted agent keeps them (no Pod to ask, their netns exist) and drops the
            // one whose netns went while it was down.
            agent.kill9();
            drop(c3);
            let _agent = AgentProcess::start(&lab, "agent-2.log").await;
            assert_eq!(lab.pod_ports().len(), 2, "{:?}", lab.pod_ports());
            assert!(c1.ping(&out2.ip()).await, "c1 still reaches c2");
            let check = {
                let mut conf = conf.clone();
                conf["prevResult"] = out1.json();
                run_cni(
                    "CHECK",
                    &c1.container_id,
                    Some(&c1.netns_path()),
                    "eth0",
                    NO_POD,
                    &conf,
                )
                .await
            };
            assert!(check.success, "CHECK: {}", check.stdout);

            // DEL as podman does on `podman rm`: nothing left.
            for c in [&c1, &c2] {
                let del = run_cni(
                    "DEL",
                    &c.container_id,
                    Some(&c.netns_path()),
                    "eth0",
                    NO_POD,
                    &conf,
                )
                .await;
                assert!(del.success, "DEL: {}", del.stdout);
            }
            assert_eq!(lab.pod_ports(), Vec::<String>::new());
            assert_eq!(lab.host_veths().await, Vec::<String>::new());
            lab.await_pod_flow_count(0).await;
        },
    );
}
