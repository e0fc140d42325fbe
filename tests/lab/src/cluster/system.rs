//! What a cluster has besides the user's pods, as the lab shows it: the per-node cluster DNS
//! resolvers ([`super::dns`]) behind the `kube-system/kube-dns` Service, and the daemons of
//! each node as `hostNetwork` pods, so `kubectl get pods -A`, `kubectl logs` and `kubectl exec`
//! reach them: `switchyard-system/switchyard-agent-<node>`, `switchyard-proxy-<node>` and
//! `kube-system/coredns-<node>`. The label [`DAEMON_LABEL`] names the daemon; its log is
//! `<state>/nodes/<node>/<daemon>.log` ([`super::pods::LabPods`]). The pods stand for the
//! processes `up` started: restarting a daemon (`cluster::ops`) does not change them.

use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::LabError;
use super::dns::CLUSTER_DNS;
use super::node;
use super::state::{LabInfo, StateDir};
use super::up::client;

/// Label of a lab system pod naming its daemon (`agent`, `proxy`, `dns`).
pub const DAEMON_LABEL: &str = "lab.switchyard.io/daemon";
/// The daemons whose logs a system pod may serve.
pub const DAEMONS: [&str; 3] = ["agent", "proxy", "dns"];

fn system_pod(namespace: &str, name: &str, node: &str, daemon: &str, app: (&str, &str)) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {app.0: app.1, DAEMON_LABEL: daemon}},
        "spec": {"nodeName": node, "hostNetwork": true,
                 "containers": [{"name": daemon, "image": format!("switchyard-lab/{daemon}")}]}
    })
}

/// Starts the DNS resolver of every node and creates the `kube-dns` Service and the system
/// pods (`agents`/`proxies`: the nodes where that daemon was started). A resolver that does
/// not start is reported in its log, as agents are; the rest goes on.
pub async fn start(
    state: &StateDir,
    info: &LabInfo,
    url: &str,
    agents: &[String],
    proxies: &[String],
) -> Result<(), LabError> {
    let mut dns_nodes = Vec::new();
    for n in &info.nodes {
        node::start_dns(state, n, &info.binaries.lab, url)?;
        dns_nodes.push(n.name.clone());
    }
    let c = client(url)?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(c.clone(), "kube-system");
    let svc = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {
            "clusterIP": CLUSTER_DNS.to_string(),
            "selector": {"k8s-app": "kube-dns"},
            // Each pod asks the resolver of its own node.
            "internalTrafficPolicy": "Local",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]
        }
    }))
    .map_err(|e| LabError::Other(e.to_string()))?;
    services.create(&PostParams::default(), &svc).await?;
    let mut pods = Vec::new();
    for n in &dns_nodes {
        pods.push(system_pod(
            "kube-system",
            &format!("coredns-{n}"),
            n,
            "dns",
            ("k8s-app", "kube-dns"),
        ));
    }
    for n in agents {
        pods.push(system_pod(
            "switchyard-system",
            &format!("switchyard-agent-{n}"),
            n,
            "agent",
            ("app.kubernetes.io/name", "switchyard-agent"),
        ));
    }
    for n in proxies {
        pods.push(system_pod(
            "switchyard-system",
            &format!("switchyard-proxy-{n}"),
            n,
            "proxy",
            ("app.kubernetes.io/name", "switchyard-proxy"),
        ));
    }
    for p in pods {
        let ns = p["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(p).map_err(|e| LabError::Other(e.to_string()))?;
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await?;
    }
    Ok(())
}
