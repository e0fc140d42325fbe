//! Namespace networks end to end on the multi-node lab (`switchyard-lab up --fabric`: netns
//! nodes with their own `ovsdb-server`/`ovs-vswitchd`, the real agent, proxy and CNI binary,
//! the fabric router, `kubectl` against the lab API server) with `switchyard-controller` on
//! the host:
//!
//! - a pod of an opted-in namespace whose network does not exist yet gets CNI error 11
//!   within 5 s, naming what it waits for;
//! - the controller creates the namespace's Segment; every agent applies it without a
//!   restart (the VLAN in `trunk0`'s `trunks`, its flows in `br-int`); the pod gets an
//!   address of the segment's subnet and becomes Ready;
//! - an agent restart keeps the pods of the segment (the API's Segments are read before
//!   reconciliation) and serves new ones;
//! - deleting the Segment while the pod holds an address is held off by the finalizer;
//!   deleting the namespace releases everything.
//!
//! Needs root, OVS and kubectl, and the binaries built (`cargo build -p switchyard-cni -p
//! switchyard-agent -p switchyard-proxy -p switchyard-lab -p switchyard-controller`); fails
//! with the reason otherwise, unless SWITCHYARD_SKIP_PRIVILEGED=1.

mod lab_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use switchyard_lab::cluster::ops::{self, Daemon};

const POD_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);

fn namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    switchyard.io/network: dedicated\n---\n"
    )
}

fn pod(namespace: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n    ports:\n    - containerPort: 8080\n---\n"
    )
}

/// `ovs-vsctl get port trunk0 trunks` on `node`.
fn trunks(lab: &Lab, node: &str) -> String {
    let out = Command::new("ovs-vsctl")
        .arg(format!(
            "--db=unix:{}",
            lab.state.ovsdb_socket(node).display()
        ))
        .args(["get", "port", "trunk0", "trunks"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A network namespace the test creates, deleted (by name) on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs the CNI plugin's ADD for pod `namespace/name` on `node` with the node's own network
/// configuration and a fresh network namespace; returns its exit status, stdout JSON and how
/// long it took.
fn cni_add(
    lab: &Lab,
    node: &str,
    namespace: &str,
    name: &str,
) -> (Option<i32>, serde_json::Value, Duration) {
    use std::io::Write;
    let netns = Netns(format!("nsnet-raw-{}", std::process::id()));
    check(
        "ip netns add",
        Command::new("ip")
            .args(["netns", "add", &netns.0])
            .output()
            .unwrap(),
    );
    let netns = &netns.0;
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.state.conflist(node)).unwrap()).unwrap();
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let plugin = sibling_binary("switchyard", "switchyard-cni");
    let started = Instant::now();
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "nsnetnotready0123456789")
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=nsnetnotready0123456789"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, took)
}

fn segment_json(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    let out = lab.kubectl(&["get", "segment", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn a_namespace_network_from_the_controller_reaches_every_agent_live() {
    if !privileged("a_namespace_network_from_the_controller_reaches_every_agent_live") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let controller_bin = sibling_binary("switchyard-controller", "switchyard-controller");
    let started = Instant::now();
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    lab.kubectl_ok(&["apply", "-f", root.join("deploy/crds").to_str().unwrap()]);

    // 1. No controller yet: the namespace's network is not ready, ADD fails with 11.
    let mut m = namespace("early");
    m.push_str(&pod("early", "p0", "node2"));
    lab.apply(&m);
    let (status, json, took) = cni_add(&lab, "node1", "early", "p0");
    eprintln!("ADD in a namespace without its network: {json} after {took:.1?}");
    assert_ne!(status, Some(0));
    assert_eq!(json["code"], 11, "{json}");
    let details = format!("{} {}", json["msg"], json["details"]);
    assert!(details.contains("waiting for"), "{json}");
    assert!(details.contains("switchyard.io/segment"), "{json}");
    assert!(took < Duration::from_secs(10), "ADD took {took:?}");
    // The runtime's own attempts for p0 show the same in its Ready condition.
    eventually(
        "p0's Ready condition naming what it waits for",
        POD_DEADLINE,
        || {
            let out = lab.kubectl(&["-n", "early", "get", "pod", "p0", "-o", "json"]);
            let p: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let cond = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            cond["message"]
                .as_str()
                .filter(|m| m.contains("waiting for"))
                .map(str::to_string)
        },
    );

    // 2. The controller gives `early` and `blue` their segments.
    let _controller = Proc(
        Command::new(&controller_bin)
            .env("KUBECONFIG", lab.state.kubeconfig())
            .env("RUST_LOG", "info")
            .args(["--identity", "test-1", "--namespace", "switchyard-system"])
            .args(["--cluster-name", &lab.name])
            .args(["--metrics-address", "127.0.0.1:0"])
            .args(["--namespace-networks", "label"])
            .args(["--namespace-vlans", "300-309"])
            .args(["--namespace-supernet", "10.30.0.0/24"])
            .args(["--namespace-subnet-prefix", "26"])
            .args(["--namespace-uplink", "trunk0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.state.root().join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut m = namespace("blue");
    m.push_str(&pod("blue", "b1", "node1"));
    m.push_str(&pod("blue", "b2", "node2"));
    lab.apply(&m);
    let seg = eventually("Segment ns-blue", DEADLINE, || {
        segment_json(&lab, "ns-blue")
    });
    let vlan = seg["spec"]["vlan"].as_u64().unwrap();
    let subnet: ipnet::Ipv4Net = seg["spec"]["subnets"][0]["cidr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("ns-blue: VLAN {vlan}, subnet {subnet}");
    assert!((300..=309).contains(&vlan));
    for node in ["node1", "node2"] {
        eventually(&format!("VLAN {vlan} trunked on {node}"), DEADLINE, || {
            let t = trunks(&lab, node);
            t.contains(&vlan.to_string()).then_some(t)
        });
        eventually(&format!("flows of VLAN {vlan} on {node}"), DEADLINE, || {
            flows(&lab, node)
                .contains(&format!("dl_vlan={vlan}"))
                .then_some(())
        });
    }
    // p0 of `early` starts once its network is there.
    wait_running_in(&lab, "early", "p0", POD_DEADLINE);
    for (p, node) in [("b1", "node1"), ("b2", "node2")] {
        let ip: std::net::Ipv4Addr = wait_running_in(&lab, "blue", p, POD_DEADLINE)
            .parse()
            .unwrap();
        eprintln!("{p} on {node}: {ip}");
        assert!(subnet.contains(&ip), "{p} got {ip}, outside {subnet}");
    }

    // 3. An agent restart rebuilds from what is installed: node1's agent finds ns-blue (the
    //    API's Segment) before reconciling, so b1's port and address stay, and a new pod
    //    there gets an address of the subnet.
    let ports = |node: &str| {
        run_text(
            Command::new("ovs-vsctl")
                .arg(format!(
                    "--db=unix:{}",
                    lab.state.ovsdb_socket(node).display()
                ))
                .args(["list-ports", "br-int"]),
        )
    };
    let before = ports("node1");
    ops::restart(&lab.state, "node1", Daemon::Agent).unwrap();
    lab.apply(&pod("blue", "b3", "node1"));
    let ip: std::net::Ipv4Addr = wait_running_in(&lab, "blue", "b3", POD_DEADLINE)
        .parse()
        .unwrap();
    assert!(subnet.contains(&ip), "b3 got {ip}, outside {subnet}");
    let after = ports("node1");
    for port in before.lines() {
        assert!(
            after.lines().any(|p| p == port),
            "port {port} lost across the agent restart: {after}"
        );
    }

    // 4. The Segment cannot go while its pods hold addresses.
    lab.kubectl_ok(&["delete", "segment", "ns-blue", "--wait=false"]);
    eventually("ns-blue terminating", DEADLINE, || {
        segment_json(&lab, "ns-blue")?["metadata"]["deletionTimestamp"]
            .as_str()
            .map(str::to_string)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        segment_json(&lab, "ns-blue").is_some(),
        "a segment in use was deleted"
    );

    // 5. Deleting the namespace releases everything.
    lab.kubectl_ok(&["delete", "namespace", "blue", "--wait=false"]);
    eventually("ns-blue and blue gone", Duration::from_secs(60), || {
        let ns = lab.kubectl(&["get", "namespace", "blue"]);
        (segment_json(&lab, "ns-blue").is_none() && !ns.status.success()).then_some(())
    });
}
