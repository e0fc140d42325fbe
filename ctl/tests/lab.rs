//! `switchyardctl` against a real two-node lab (the real `switchyard-lab up --fabric`: netns nodes
//! with their own ovsdb-server/ovs-vswitchd, the real agent, proxy and CNI binary), run
//! inside node1's namespace as an operator on the node would: what the user sees from `pod`,
//! `service`, `trace` (an allowed Service connection ending at the backend's port with the
//! DNAT shown, a Service without endpoints ending in the reject, a cross-node packet leaving
//! through the tunnel), `node`, `support-bundle`, and `policy` (the local pods a
//! NetworkPolicy selects and counters that move with allowed and denied connections).
//!
//! Needs root, Open vSwitch and kubectl, and the binaries built (`cargo build -p
//! switchyard-lab -p switchyard-agent -p switchyard-proxy -p switchyard-cni -p
//! switchyard-ctl`; `cargo test --workspace` builds them); fails with the reason otherwise,
//! unless SWITCHYARD_SKIP_PRIVILEGED=1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_lab::cluster::state::StateDir;

const CTL: &str = env!("CARGO_BIN_EXE_switchyardctl");
const DEADLINE: Duration = Duration::from_secs(90);

fn sibling(name: &str, package: &str) -> PathBuf {
    let p = Path::new(CTL).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (cargo test --workspace does)",
        p.display()
    );
    p
}

fn text(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns Some, panicking with `what` after the deadline.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free /24 of 10.250.0.0/16 (no route of this machine in it).
fn free_underlay() -> String {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = std::process::id();
    (0..250)
        .map(|i| (seed + i) % 250 + 1)
        .map(|x| format!("10.250.{x}."))
        .find(|net| !routes.contains(net.as_str()))
        .map(|net| format!("{net}0/24"))
        .expect("a free /24 in 10.250.0.0/16")
}

/// A lab brought up by the real binary; `down` on drop (also when the test panics).
struct Lab {
    lab_bin: PathBuf,
    name: String,
    state: StateDir,
    dir: tempfile::TempDir,
}

impl Lab {
    fn up(nodes: usize) -> Lab {
        let lab_bin = sibling("switchyard-lab", "switchyard-lab");
        sibling("switchyard-agent", "switchyard-agent");
        sibling("switchyard-proxy", "switchyard-proxy");
        sibling("switchyard", "switchyard-cni");
        let dir = tempfile::Builder::new().prefix("syctl").tempdir().unwrap();
        let lab = Lab {
            lab_bin,
            name: format!("c{}", std::process::id() % 100_000),
            state: StateDir::new(dir.path().join("s")),
            dir,
        };
        let out = Command::new(&lab.lab_bin)
            .args([
                "up",
                "--nodes",
                &nodes.to_string(),
                "--name",
                &lab.name,
                "--fabric",
            ])
            .arg("--state-dir")
            .arg(lab.state.root())
            .args(["--underlay-cidr", &free_underlay()])
            .output()
            .unwrap();
        text("switchyard-lab up", out);
        lab
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.state.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        text(&format!("kubectl {}", args.join(" ")), out)
    }

    fn apply(&self, manifest: &str) {
        let path = self.dir.path().join("m.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// `switchyardctl ARGS` in `node`'s namespace, with that node's OVS and the lab's API.
    fn ctl_output(&self, node: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-{node}", self.name), CTL])
            .arg("--ovs-rundir")
            .arg(self.state.ovs_dir(node))
            .arg("--kubeconfig")
            .arg(self.state.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl(&self, node: &str, args: &[&str]) -> String {
        text(
            &format!("switchyardctl {}", args.join(" ")),
            self.ctl_output(node, args),
        )
    }

    fn ctl_json(&self, node: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ctl(node, &all)).unwrap()
    }

    fn pod_ip(&self, name: &str) -> String {
        eventually(&format!("pod {name} running with an IP"), || {
            let pod: Value =
                serde_json::from_str(&self.kubectl(&["get", "pod", name, "-o", "json"])).ok()?;
            (pod["status"]["phase"] == "Running")
                .then(|| pod["status"]["podIP"].as_str().map(str::to_string))
                .flatten()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(&self.lab_bin)
            .arg("down")
            .arg("--state-dir")
            .arg(self.state.root())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "cleanup of lab {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn pod(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

/// A pod in the `vlan100` segment of the lab's fabric.
fn vlan_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    switchyard.io/segment: vlan100\nspec:\n  nodeName: {node}\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n"
    )
}

fn service(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {app}\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n---\n"
    )
}

/// The archive's files (path without the top directory -> text).
fn archive(path: &Path) -> std::collections::BTreeMap<String, String> {
    let file = std::fs::File::open(path).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = std::collections::BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let name = name
            .split_once('/')
            .map(|(_, n)| n.to_string())
            .unwrap_or(name);
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        out.insert(name, text);
    }
    out
}

#[test]
fn switchyardctl_on_a_two_node_lab() {
    if !switchyard_ovs_harness::require_root_and(
        "switchyardctl_on_a_two_node_lab",
        &["kubectl", "ovs-vswitchd"],
    ) {
        return;
    }
    let lab = Lab::up(2);
    // `tagged` chooses its segment: the cluster admin lets `default`'s pods choose.
    lab.kubectl(&[
        "annotate",
        "--overwrite",
        "namespace",
        "default",
        "switchyard.io/pod-placement=allow",
    ]);
    lab.apply(&format!(
        "{}{}{}{}{}{}",
        pod("web1", "node1", "web"),
        pod("web2", "node2", "web-remote"),
        pod("client", "node1", "client"),
        vlan_pod("tagged", "node1"),
        service("web", "web"),
        service("empty", "nothing"),
    ));
    let web1 = lab.pod_ip("web1");
    let web2 = lab.pod_ip("web2");
    let client = lab.pod_ip("client");
    let svc_ip =
        |name: &str| lab.kubectl(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"]);
    let (web_ip, empty_ip) = (svc_ip("web"), svc_ip("empty"));

    // pod: the port the agent recorded, its VLAN, and its flows under table names.
    let report = lab.ctl_json("node1", &["pod", "default/client"]);
    assert_eq!(report["node"], "node1");
    let iface = &report["interfaces"][0];
    let port = iface["port"].as_str().unwrap().to_string();
    let ofport = iface["ofport"].as_i64().unwrap();
    assert!(port.starts_with("sy") && ofport >= 16, "{iface}");
    assert_eq!(iface["vlan"], 0);
    assert_eq!(iface["pod_interface"], "eth0");
    assert_eq!(
        iface["address"].as_str().unwrap().split('/').next(),
        Some(client.as_str())
    );
    let ovs_ofport = Command::new("ovs-vsctl")
        .env("OVS_RUNDIR", lab.state.ovs_dir("node1"))
        .args([
            "--db",
            &format!("unix:{}", lab.state.ovsdb_socket("node1").display()),
        ])
        .args(["get", "Interface", &port, "ofport"])
        .output()
        .unwrap();
    assert_eq!(text("ovs-vsctl get", ovs_ofport).trim(), ofport.to_string());
    let tables: Vec<&str> = report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["table_name"].as_str().unwrap())
        .collect();
    for t in [
        "CLASSIFIER",
        "SPOOF_GUARD",
        "L3_FORWARDING",
        "L2_FORWARDING",
        "OUTPUT",
    ] {
        assert!(tables.contains(&t), "{t} missing from {tables:?}");
    }
    let shown = lab.ctl("node1", &["pod", "default/client"]);
    assert!(
        shown.contains(&port) && shown.contains("table 10 SPOOF_GUARD"),
        "{shown}"
    );
    // A pod of the vlan100 segment: its port, VLAN 100 (the Port's tag too) and segment.
    let tagged_ip = lab.pod_ip("tagged");
    let tagged = lab.ctl_json("node1", &["pod", "default/tagged"]);
    let iface = &tagged["interfaces"][0];
    assert_eq!(iface["vlan"], 100, "{tagged}");
    assert_eq!(iface["segment"], "vlan100", "{tagged}");
    assert_eq!(
        iface["address"].as_str().unwrap().split('/').next(),
        Some(tagged_ip.as_str())
    );
    let shown = lab.ctl("node1", &["pod", "default/tagged"]);
    assert!(
        shown.contains("vlan100") && shown.contains(" 100 "),
        "{shown}"
    );
    let elsewhere = lab.ctl_output("node2", &["pod", "default/client"]);
    assert!(!elsewhere.status.success());
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("runs on node node1"),
        "{}",
        String::from_utf8_lossy(&elsewhere.stderr)
    );

    // service: the group and its bucket, once the proxy has programmed it.
    let web = eventually("the proxy's group for default/web", || {
        let s = lab.ctl_json("node1", &["service", "default/web"]);
        let buckets = s["ports"][0]["groups"][0]["buckets"].as_array()?.len();
        (buckets == 1).then_some(s)
    });
    let bucket = &web["ports"][0]["groups"][0]["buckets"][0];
    assert_eq!(
        bucket["target"]["endpoint"],
        format!("{web1}:8080"),
        "{web}"
    );
    assert_eq!(web["ports"][0]["endpoints"][0]["used_here"], true);
    assert!(
        web["ports"][0]["decision"]
            .as_str()
            .unwrap()
            .starts_with("group ")
    );
    let shown = lab.ctl("node1", &["service", "default/web"]);
    assert!(
        shown.contains("Group ") && shown.contains(&format!("{web1}:8080")),
        "{shown}"
    );
    eventually("the reject frontend of default/empty", || {
        let s = lab.ctl_json("node1", &["service", "default/empty"]);
        s["ports"][0]["decision"]
            .as_str()?
            .starts_with("reject")
            .then_some(())
    });

    // trace: an allowed Service connection ends at the backend's port, with the DNAT.
    let t = lab.ctl_json(
        "node1",
        &[
            "trace",
            "--from-pod",
            "default/client",
            "--to",
            &format!("{web_ip}:80"),
        ],
    );
    let web1_port =
        lab.ctl_json("node1", &["pod", "default/web1"])["interfaces"][0]["port"].clone();
    assert_eq!(t["decision"]["kind"], "output", "{t}");
    assert_eq!(t["decision"]["port_name"], web1_port, "{t}");
    let passes = t["passes"].as_array().unwrap();
    assert!(passes.len() >= 3, "{t}");
    let nat = passes
        .iter()
        .find_map(|p| p["nat"].as_array())
        .expect("a simulated NAT");
    assert!(
        nat[1]
            .as_str()
            .unwrap()
            .contains(&format!("nw_dst={web1},tp_dst=8080")),
        "{t}"
    );
    let shown = lab.ctl(
        "node1",
        &[
            "trace",
            "--from-pod",
            "default/client",
            "--to",
            &format!("{web_ip}:80"),
        ],
    );
    eprintln!("switchyardctl trace of an allowed Service connection:\n{shown}");
    assert!(
        shown.contains("SERVICE_LB") && shown.contains(&format!("DNAT to {web1}:8080")),
        "{shown}"
    );
    assert!(shown.contains("Decision: output to port"), "{shown}");

    // ... one without endpoints ends in the reject, also from the node itself.
    for from in [&["--from-pod", "default/client"][..], &[][..]] {
        let mut args = vec!["trace", "--to"];
        let to = format!("{empty_ip}:80");
        args.push(&to);
        args.extend(from);
        let t = lab.ctl_json("node1", &args);
        assert_eq!(t["decision"]["kind"], "controller", "{t}");
    }
    // ... and a packet to a pod of node2 leaves through the tunnel to node2.
    let t = lab.ctl_json(
        "node1",
        &[
            "trace",
            "--from-pod",
            "default/client",
            "--to",
            &format!("{web2}:8080"),
        ],
    );
    let node2 = lab.state.load_info().unwrap().nodes[1].address.to_string();
    assert_eq!(t["decision"]["kind"], "tunnel", "{t}");
    assert_eq!(t["decision"]["remote"], node2, "{t}");

    // node: flow counts per table name, owners, ports, peers, health.
    let n = lab.ctl_json("node1", &["node"]);
    for part in ["ovsdb", "openflow", "vswitchd", "agent", "proxy"] {
        assert_eq!(n[part]["ok"], true, "{part}: {}", n[part]);
    }
    let lb = n["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "SERVICE_LB")
        .unwrap();
    assert!(lb["proxy"].as_u64().unwrap() >= 2, "{lb}");
    assert_eq!(n["tunnel_peers"][0]["node_address"], node2);
    let shown = lab.ctl("node1", &["node"]);
    for expected in [
        "CLASSIFIER",
        "SERVICE_LB",
        "agent",
        "proxy",
        "tunnel",
        "gateway",
        "pod",
        &node2,
    ] {
        assert!(shown.contains(expected), "{expected} missing:\n{shown}");
    }

    // support-bundle: every part, no secret (a kubeconfig with credentials and a log line
    // carrying a token are given to it; neither value may end up in the archive).
    let secret_kubeconfig = lab.dir.path().join("kubeconfig-with-secrets");
    std::fs::write(
        &secret_kubeconfig,
        std::fs::read_to_string(lab.state.kubeconfig())
            .unwrap()
            .replace(
                "user: {}",
                "user:\n    token: sekrit-token-value\n    client-key-data: c2Vrcml0LWtleQ==",
            ),
    )
    .unwrap();
    let agent_log = lab.dir.path().join("agent.log");
    let mut log = std::fs::read_to_string(lab.state.node_dir("node1").join("agent.log")).unwrap();
    log.push_str("debug: request headers authorization: Bearer sekrit-token-value\n");
    std::fs::write(&agent_log, log).unwrap();
    let bundle = lab.dir.path().join("bundle.tar.gz");
    let node_dir = lab.state.node_dir("node1");
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}-node1", lab.name), CTL])
        .arg("--ovs-rundir")
        .arg(lab.state.ovs_dir("node1"))
        .arg("--kubeconfig")
        .arg(&secret_kubeconfig)
        .args(["support-bundle", "-o"])
        .arg(&bundle)
        .arg("--agent-log")
        .arg(&agent_log)
        .arg("--proxy-log")
        .arg(node_dir.join("proxy.log"))
        .arg("--cni-log")
        .arg(node_dir.join("cni.log"))
        .output()
        .unwrap();
    text("support-bundle", out);
    let files = archive(&bundle);
    for part in [
        "MANIFEST.txt",
        "flows.txt",
        "groups.txt",
        "group-stats.txt",
        "ovsdb.json",
        "conntrack.txt",
        "routes.txt",
        "nftables.txt",
        "versions.txt",
        "logs/agent/agent.log",
        "logs/proxy/proxy.log",
        "logs/cni/cni.log",
    ] {
        assert!(
            files.contains_key(part),
            "{part} missing: {:?}",
            files.keys()
        );
    }
    assert!(files["flows.txt"].contains("SERVICE_LB"));
    assert!(files["groups.txt"].contains("group_id="));
    assert!(files["ovsdb.json"].contains(&port));
    assert!(files["routes.txt"].contains("sy-gw0"));
    assert!(files["versions.txt"].contains("ovs-vswitchd (Open vSwitch)"));
    for (name, content) in &files {
        for secret in ["sekrit-token-value", "c2Vrcml0LWtleQ==", "client-key-data"] {
            assert!(!content.contains(secret), "{secret} found in {name}");
        }
    }
    // policy: a NetworkPolicy isolating web1 (node1) but for app=client on TCP 8080. The
    // command lists web1 (not client) as selected here, the rule, and counters that move: an
    // allowed connection from client counts on the rule, a denied one from web2 (node2) on
    // web1's ingress drop.
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-client\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n    ports:\n    - protocol: TCP\n      port: 8080\n",
    );
    let info = lab.state.load_info().unwrap();
    let connect = |from: &str| {
        Command::new("ip")
            .args(["netns", "exec", &info.pod_netns("default", from)])
            .args(["timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{web1}/8080"))
            .status()
            .is_ok_and(|s| s.success())
    };
    let report = eventually("the rule's counter and web1's ingress drop counter", || {
        // Allowed and denied, as seen by the pods (the policy's flows are in by then).
        if !connect("client") || connect("web2") {
            return None;
        }
        let r = lab.ctl_json("node1", &["policy", "default/web-from-client"]);
        let web1_denied = r["selected_pods"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "web1")?["ingress_denied_packets"]
            .as_u64()?;
        let allowed = r["rules"][0]["packets"].as_u64()?;
        (web1_denied > 0 && allowed > 0).then_some(r)
    });
    let names: Vec<&str> = report["selected_pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1"], "{report}");
    assert_eq!(report["policy_types"][0], "Ingress");
    assert_eq!(report["rules"][0]["direction"], "ingress");
    assert_eq!(report["rules"][0]["ports"][0], "TCP/8080");
    assert_eq!(
        report["rules"][0]["peers"][0],
        "pods app=client (this namespace)"
    );
    assert!(report["counters_error"].is_null(), "{report}");
    let shown = lab.ctl("node1", &["netpol", "default/web-from-client"]);
    for expected in ["web1", "TCP/8080", "pods app=client", &web1] {
        assert!(shown.contains(expected), "{expected} missing:\n{shown}");
    }
    // node2 has no pod it selects; an unknown policy is a clear error.
    let r = lab.ctl_json("node2", &["policy", "default/web-from-client"]);
    assert_eq!(r["selected_pods"].as_array().unwrap().len(), 0, "{r}");
    let missing = lab.ctl_output("node1", &["policy", "default/nothing"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
