//! LoadBalancer `Route` mode end to end: `switchyard-controller` programs the lab's fabric
//! router through the fabric API (`lab` driver, client certificate from a Secret), and a client
//! in the internet namespace reaches the Service through the ECMP route.
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build --workspace
//! --bins`); fails with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1.
//! Takes about a minute: `cargo test -p switchyard-lab --test load_balancer_route`.

mod lab_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lab_support::*;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const ROUTE_DEADLINE: Duration = Duration::from_secs(20);
/// Issue 14: repaired within 10 s (the controller reads the router every 5 s).
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);
const PEER_HTTP: u16 = 9090;
const POOL: &str = "198.18.10.0/29";
/// The internet namespace's address on its link to the fabric (the source of its requests).
const INTERNET_CLIENT: &str = "198.51.100.2";

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: web\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

fn service(name: &str, etp: &str, class: Option<&str>) -> String {
    let class = class
        .map(|c| format!("  loadBalancerClass: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: LoadBalancer\n{class}  externalTrafficPolicy: {etp}\n  selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 81\n    targetPort: {PEER_HTTP}\n"
    )
}

fn svc_json(lab: &Lab, name: &str) -> serde_json::Value {
    let out = lab.kubectl_ok(&["get", "service", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

fn lb_ip(lab: &Lab, name: &str) -> String {
    eventually(&format!("{name} gets an address"), ROUTE_DEADLINE, || {
        svc_json(lab, name)["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    })
}

fn announced(lab: &Lab, name: &str) -> Option<(String, String, String)> {
    let v = svc_json(lab, name);
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "switchyard.io/Announced")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// The next hops of the fabric's route to `ip` (sorted; empty: no route).
fn fabric_hops(netns: &str, ip: &str) -> Vec<String> {
    let out = in_netns(
        netns,
        &["ip", "-4", "route", "show", "exact", &format!("{ip}/32")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    hops.sort();
    hops
}

fn wait_hops(netns: &str, ip: &str, want: &[&str], what: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(what, deadline, || {
        (fabric_hops(netns, ip) == want).then_some(())
    });
    start.elapsed()
}

/// Every one of `n` HTTP requests from `netns` to `target` answered with `seen_as`.
fn answered(netns: &str, target: &str, n: u32, seen_as: &str) {
    eventually(
        &format!("{netns} -> {target} answered as {seen_as}"),
        ROUTE_DEADLINE,
        || {
            let got = echo_client(netns, "http", target, n);
            (got.len() == n as usize && got.iter().all(|a| a == seen_as)).then_some(())
        },
    );
}

fn fabric_api(lab: &Lab, method: &str, path: &str, body: &str) -> String {
    let info = lab.info();
    let api = info.fabric.unwrap().api.expect("fabric API running");
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-X", method])
        .arg("--cacert")
        .arg(&api.pki.ca)
        .arg("--cert")
        .arg(&api.pki.client_cert)
        .arg("--key")
        .arg(&api.pki.client_key)
        .args(["-H", "content-type: application/json", "--data", body])
        .arg(format!("{}{path}", api.endpoint))
        .output()
        .unwrap();
    check(&format!("fabric API {method} {path}"), out)
}

/// 3 nodes with the fabric, a backend on node2, the controller on the host:
/// 1. ETP Cluster: the fabric holds one ECMP route over the 3 nodes; the Service's
///    Announced condition is True; curl from the internet answers through it.
/// 2. ETP Local: the route shrinks to node2; the backend sees the internet client's address.
/// 3. The route edited out of band in the fabric is repaired within 10 s.
/// 4. The fabric API answers 503: the condition shows the router error and the retries; the
///    route is programmed once it recovers.
/// 5. A Service of another loadBalancerClass gets nothing.
/// 6. Deleting the Service removes its route.
#[test]
fn route_mode_through_the_fabric_api() {
    if !privileged("route_mode_through_the_fabric_api") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let controller_bin = sibling_binary("switchyard-controller", "switchyard-controller");
    let started = Instant::now();
    let lab = Lab::up(3, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab has a fabric");
    let api = fabric.api.clone().expect("fabric API running");
    let internet = fabric.internet_netns.clone();
    let addr = |n: &str| info.node(n).unwrap().address.to_string();
    let (n1, n2, n3) = (addr("node1"), addr("node2"), addr("node3"));

    // CRDs, the credentials Secret, the RouteTarget and a Route pool.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    lab.kubectl_ok(&["apply", "-f", root.join("deploy/crds").to_str().unwrap()]);
    let from = |k: &str, p: &PathBuf| format!("--from-file={k}={}", p.display());
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
        "apiVersion: switchyard.io/v1alpha1\nkind: RouteTarget\nmetadata:\n  name: fabric\nspec:\n  driver: lab\n  endpoint: {}\n  credentialsSecretRef:\n    namespace: switchyard-system\n    name: fabric-cred\n---\napiVersion: switchyard.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: routed\nspec:\n  cidrs: [\"{POOL}\"]\n  announce:\n    mode: Route\n    routeTarget: fabric\n",
        api.endpoint
    ));
    // The internet reaches the pool through the fabric (an upstream provider's job).
    check(
        "pool route in the internet",
        in_netns(
            &internet,
            &["ip", "route", "replace", POOL, "via", "198.51.100.1"],
        ),
    );
    let _controller = spawn(
        Command::new(&controller_bin)
            .env("KUBECONFIG", lab.state.kubeconfig())
            .env("RUST_LOG", "info")
            .args(["--identity", "test-1", "--namespace", "switchyard-system"])
            .args(["--cluster-name", &lab.name])
            .args(["--metrics-address", "127.0.0.1:0"]),
        Some(lab.state.root().join("controller.log")),
    );

    lab.apply(&pod("back", "node2"));
    wait_running(&lab, "back", POD_DEADLINE);
    let _peer = spawn(
        Command::new("ip").args([
            "netns",
            "exec",
            &info.pod_netns("default", "back"),
            LAB,
            "echo-server",
            "--name",
            "@peer",
            "--http",
            &PEER_HTTP.to_string(),
            "--udp",
            "0",
        ]),
        None,
    );

    // 1. ETP Cluster: ECMP over the three nodes.
    lab.apply(&service("web", "Cluster", None));
    let ip = lb_ip(&lab, "web");
    wait_hops(
        &fabric.netns,
        &ip,
        &[&n1, &n2, &n3],
        "ECMP route over 3 nodes",
        ROUTE_DEADLINE,
    );
    let cond = eventually("Announced=True", ROUTE_DEADLINE, || {
        announced(&lab, "web").filter(|c| c.0 == "True")
    });
    assert_eq!(cond.1, "Routed", "{cond:?}");
    let target = format!("{ip}:81");
    eventually("curl from the internet", ROUTE_DEADLINE, || {
        let out = in_netns(
            &internet,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{target}/"),
            ],
        );
        out.status.success().then_some(())
    });
    // ETP Cluster: every node serves the address (connections are hashed over the three next
    // hops), so a dozen connections all get an answer once every proxy has it.
    eventually("12 of 12 connections answered", ROUTE_DEADLINE, || {
        let got = echo_client(&internet, "http", &target, 12);
        got.iter().all(|a| a != "-").then_some(())
    });

    // 2. ETP Local: only node2 (the backend's) is a next hop; the client's address is kept.
    lab.apply(&service("web", "Local", None));
    wait_hops(
        &fabric.netns,
        &ip,
        &[&n2],
        "Local: only node2",
        ROUTE_DEADLINE,
    );
    answered(&internet, &target, 6, INTERNET_CLIENT);

    // 3. Edited out of band on the router: repaired by the periodic read-compare-repair.
    check(
        "out-of-band edit",
        in_netns(
            &fabric.netns,
            &["ip", "route", "replace", &format!("{ip}/32"), "via", &n1],
        ),
    );
    let took = wait_hops(
        &fabric.netns,
        &ip,
        &[&n2],
        "out-of-band edit repaired",
        REPAIR_DEADLINE,
    );
    eprintln!("out-of-band edit repaired after {took:.1?}");

    // 4. 503s: shown in the condition, retried with backoff, then programmed.
    fabric_api(&lab, "PUT", "/lab/v1/faults", r#"{"status": 503}"#);
    lab.apply(&service("web", "Cluster", None));
    let cond = eventually(
        "Announced=False with the router error",
        ROUTE_DEADLINE,
        || announced(&lab, "web").filter(|c| c.0 == "False"),
    );
    assert_eq!(cond.1, "RouterError", "{cond:?}");
    assert!(
        cond.2.contains("HTTP 503") && cond.2.contains("retrying in"),
        "{cond:?}"
    );
    eventually(
        "at least 3 answers of 503 (retries)",
        ROUTE_DEADLINE,
        || {
            let log: serde_json::Value =
                serde_json::from_str(&fabric_api(&lab, "GET", "/lab/v1/requests", "")).unwrap();
            let n = log
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["status"] == 503)
                .count();
            (n >= 3).then_some(())
        },
    );
    assert_eq!(
        fabric_hops(&fabric.netns, &ip),
        std::slice::from_ref(&n2),
        "unchanged while failing"
    );
    fabric_api(&lab, "PUT", "/lab/v1/faults", "{}");
    wait_hops(
        &fabric.netns,
        &ip,
        &[&n1, &n2, &n3],
        "route after recovery",
        ROUTE_DEADLINE,
    );
    eventually("Announced=True again", ROUTE_DEADLINE, || {
        announced(&lab, "web").filter(|c| c.0 == "True")
    });

    // 5. Another class: left alone (checked after a later Service was served).
    lab.apply(&service("other", "Cluster", Some("example.com/lb")));
    lab.apply(&service("later", "Cluster", None));
    let later = lb_ip(&lab, "later");
    wait_hops(
        &fabric.netns,
        &later,
        &[&n1, &n2, &n3],
        "route of a later Service",
        ROUTE_DEADLINE,
    );
    let other = svc_json(&lab, "other");
    assert!(
        other["metadata"]["finalizers"].is_null()
            && other["status"]["loadBalancer"]["ingress"].is_null(),
        "{other}"
    );

    // 6. Deleting the Service removes its route; the other stays.
    lab.kubectl_ok(&["delete", "service", "web"]);
    wait_hops(
        &fabric.netns,
        &ip,
        &[],
        "route removed with the Service",
        ROUTE_DEADLINE,
    );
    assert_eq!(fabric_hops(&fabric.netns, &later).len(), 3);
}
