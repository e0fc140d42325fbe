//! Shared parts of the namespace-network lab tests (`namespace_isolation.rs`,
//! `namespace_egress.rs`, `namespace_subnet_append.rs`): the controller as a child
//! process, manifests, the Segment's JSON, the fabric API and what a pod sees (ping, its
//! MAC).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::lab_support::*;

/// An opted-in namespace.
pub fn namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    switchyard.io/network: dedicated\n---\n"
    )
}

/// An echo-server pod on `node`.
pub fn pod(namespace: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

/// `kubectl get segment NAME -o json`, `None` while it does not exist.
pub fn segment_json(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    let out = lab.kubectl(&["get", "segment", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The Segment's subnets with their gateways, in order.
pub fn subnets(seg: &serde_json::Value) -> Vec<(ipnet::Ipv4Net, std::net::Ipv4Addr)> {
    seg["spec"]["subnets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some((
                        s["cidr"].as_str()?.parse().ok()?,
                        s["gateway"].as_str()?.parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The CRDs applied from `deploy/crds`.
pub fn apply_crds(lab: &Lab) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    lab.kubectl_ok(&["apply", "-f", root.join("deploy/crds").to_str().unwrap()]);
}

/// `switchyard-controller` on the host against the lab's API server with the namespace
/// networks of `--namespace-networks label` and `extra` arguments; its log in
/// `<lab>/controller.log`.
pub fn start_controller(lab: &Lab, extra: &[&str]) -> Proc {
    let bin = sibling_binary("switchyard-controller", "switchyard-controller");
    Proc(
        Command::new(bin)
            .env("KUBECONFIG", lab.state.kubeconfig())
            .env("RUST_LOG", "info")
            .args(["--identity", "test-1", "--namespace", "switchyard-system"])
            .args(["--cluster-name", &lab.name])
            .args(["--metrics-address", "127.0.0.1:0"])
            .args(["--namespace-networks", "label"])
            .args(["--namespace-uplink", "trunk0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.state.root().join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The TTL of the reply to one ping from `netns` to `ip` (within 2 s), `None` without a
/// reply. 64 from a pod on the same L2 segment; 63 through one router.
pub fn ping_ttl(netns: &str, ip: &str) -> Option<u8> {
    let out = in_netns(netns, &["ping", "-n", "-c", "1", "-W", "2", ip]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
}

/// The MAC of `eth0` in `netns`.
pub fn mac_of(netns: &str) -> String {
    let out = check(
        "ip link show eth0",
        in_netns(netns, &["ip", "-j", "link", "show", "eth0"]),
    );
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links[0]["address"].as_str().unwrap().to_string()
}

/// A request to the lab's fabric API with the lab's client certificate: (HTTP status, body).
pub fn fabric_api(lab: &Lab, method: &str, path: &str, body: &str) -> (u16, String) {
    let api = lab.info().fabric.unwrap().api.expect("fabric API running");
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&api.pki.ca)
        .arg("--cert")
        .arg(&api.pki.client_cert)
        .arg("--key")
        .arg(&api.pki.client_key)
        .args(["-H", "content-type: application/json"])
        .args(if body.is_empty() {
            vec![]
        } else {
            vec!["--data", body]
        })
        .arg(format!("{}{path}", api.endpoint))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The credentials Secret, a `RouteTarget` `fabric` of the `lab` driver and an Egress
/// `IPPool` `egress` of `pool`, routed from the internet namespace via the fabric.
pub fn route_target_and_egress_pool(lab: &Lab, pool: &str) {
    let info = lab.info();
    let fab = info.fabric.clone().expect("lab has a fabric");
    let api = fab.api.clone().expect("fabric API running");
    let from = |k: &str, p: &Path| format!("--from-file={k}={}", p.display());
    lab.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "fabric-cred",
        "-n",
        "switchyard-system",
        &from("tls.crt", &api.pki.client_cert),
        &from("tls.key", &api.pki.client_key),
        &from("ca.crt", &api.pki.ca),
    ]);
    lab.apply(&format!(
        "apiVersion: switchyard.io/v1alpha1\nkind: RouteTarget\nmetadata:\n  name: fabric\nspec:\n  driver: lab\n  endpoint: {}\n  credentialsSecretRef:\n    namespace: switchyard-system\n    name: fabric-cred\n---\napiVersion: switchyard.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: egress\nspec:\n  usage: Egress\n  cidrs: [\"{pool}\"]\n  announce:\n    mode: None\n",
        api.endpoint
    ));
    check(
        "egress pool route in the internet",
        in_netns(
            &fab.internet_netns,
            &["ip", "route", "replace", pool, "via", "198.51.100.1"],
        ),
    );
}
