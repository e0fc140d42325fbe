//! The multi-node lab on real network namespaces and Open vSwitch (needs root; fails with the
//! reason when it cannot run, unless SWITCHYARD_SKIP_PRIVILEGED=1).
//!
//! Each test brings up its own lab with unique names (`t<pid><n>`), a free underlay /24 of
//! 10.251.0.0/16 and a temporary state directory, and removes it on drop.

mod lab_support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_support::*;
use switchyard_cni::{CniError, CniHandler, CniRequest, CniResult, Verb};

#[test]
fn up_and_down_with_two_nodes_leave_nothing_behind() {
    if !privileged("up_and_down_with_two_nodes_leave_nothing_behind") {
        return;
    }
    let lab = Lab::up(2, &["--no-agent", "--no-proxy"]);
    let info = lab.info();
    let mut ns = lab.namespaces();
    ns.sort();
    assert_eq!(
        ns,
        [
            format!("{}-node1", lab.name),
            format!("{}-node2", lab.name),
            format!("{}-underlay", lab.name)
        ]
    );
    assert!(host_link_exists(&info.host_link()));

    // Nodes are registered with their InternalIP and get a podCIDR from the lab controller.
    let nodes = lab.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}"#,
    ]);
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(
        lines,
        [
            format!("node1 10.244.0.0/24 {}", info.nodes[0].address),
            format!("node2 10.244.1.0/24 {}", info.nodes[1].address)
        ]
    );

    for n in &info.nodes {
        // The API server is reachable from inside the node namespace (what the agent needs).
        let url = format!("{}/version", info.api_url.as_deref().unwrap());
        let out = in_netns(&n.netns, &["curl", "-sf", "--max-time", "5", &url]);
        assert!(out.status.success(), "node {} cannot reach {url}", n.name);
        // Its own OVS answers, with the userspace datapath available.
        let db = format!("--db=unix:{}", lab.state.ovsdb_socket(&n.name).display());
        let out = Command::new("ovs-vsctl")
            .args([db.as_str(), "get", "Open_vSwitch", ".", "datapath_types"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("netdev"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The underlay address sits on br-ul (an OVS netdev bridge holding eth0), and OVS's
        // tunnel neighbour cache knows the other node's fixed MAC.
        let addr = in_netns(&n.netns, &["ip", "-br", "-4", "addr", "show", "br-ul"]);
        assert!(
            String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/24", n.address)),
            "{}",
            String::from_utf8_lossy(&addr.stdout)
        );
        let other = info.nodes.iter().find(|o| o.name != n.name).unwrap();
        let neigh = Command::new("ovs-appctl")
            .env("OVS_RUNDIR", lab.state.ovs_dir(&n.name))
            .args(["tnl/neigh/show"])
            .output()
            .unwrap();
        let mac = switchyard_lab::cluster::state::underlay_mac(other.address);
        assert!(
            String::from_utf8_lossy(&neigh.stdout).contains(&mac),
            "{}",
            String::from_utf8_lossy(&neigh.stdout)
        );
        let arp = in_netns(&n.netns, &["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"]);
        assert_eq!(String::from_utf8_lossy(&arp.stdout).trim(), "1");
        // Nodes reach each other over the underlay.
        let other = info.nodes.iter().find(|o| o.name != n.name).unwrap();
        let ping = in_netns(
            &n.netns,
            &["ping", "-c1", "-W2", &other.address.to_string()],
        );
        assert!(
            ping.status.success(),
            "{} cannot ping {}",
            n.name,
            other.name
        );
    }

    let pids = lab.recorded_pids();
    let whats: Vec<&str> = pids.iter().map(|(_, w)| w.as_str()).collect();
    for expected in [
        "apiserver",
        "runtime",
        "ovsdb-server node1",
        "ovs-vswitchd node1",
        "ovsdb-server node2",
        "ovs-vswitchd node2",
    ] {
        assert!(
            whats.contains(&expected),
            "{expected} not recorded: {whats:?}"
        );
    }
    assert!(pids.iter().all(|(p, _)| alive(*p)), "{pids:?}");

    // A file the lab did not write survives `down` (a state dir given by mistake keeps it).
    let foreign = lab.state.root().join("keep.txt");
    std::fs::write(&foreign, "mine").unwrap();
    check("switchyard-lab down", lab.down());
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!host_link_exists(&info.host_link()));
    for (pid, what) in &pids {
        assert!(!alive(*pid), "{what} (pid {pid}) still runs");
    }
    let left: Vec<String> = std::fs::read_dir(lab.state.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["keep.txt"]);
    // A second down is a no-op.
    check("second down", lab.down());
}

/// Processes whose command line mentions `needle` (the state directory).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && alive(pid) {
            out.push((pid, cmd));
        }
    }
    out
}

#[test]
fn down_after_up_was_killed_removes_everything() {
    if !privileged("down_after_up_was_killed_removes_everything") {
        return;
    }
    let lab = Lab::prepare();
    let mut up = lab
        .up_command(2, &["--no-agent", "--no-proxy"])
        .spawn()
        .unwrap();
    // Kill `up` half-way: once node1's OVS runs (node2 is not made yet or being made).
    eventually(
        "up to start node1's ovs-vswitchd",
        Duration::from_secs(60),
        || {
            lab.recorded_pids()
                .iter()
                .any(|(_, w)| w == "ovs-vswitchd node1")
                .then_some(())
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    up.wait().unwrap();
    let pids = lab.recorded_pids();
    assert!(!lab.namespaces().is_empty());
    let state = lab.state.root().display().to_string();
    assert!(
        !processes_mentioning(&state).is_empty(),
        "the killed up left nothing to clean?"
    );

    check("switchyard-lab down", lab.down());
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!host_link_exists(&format!("{}-host", lab.name)));
    for (pid, what) in &pids {
        assert!(!alive(*pid), "{what} (pid {pid}) still runs");
    }
    assert_eq!(processes_mentioning(&state), vec![]);
}

/// A stand-in agent: answers ADD with a fixed address and records every request.
#[derive(Debug, Default)]
struct StubAgent {
    requests: Mutex<Vec<CniRequest>>,
}

const STUB_IP: &str = "10.244.0.77";

impl CniHandler for StubAgent {
    async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> {
        let netns = req.env.netns.clone().unwrap_or_default();
        self.requests.lock().unwrap().push(req);
        Ok(CniResult::from_value(&serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:4d", "sandbox": netns.display().to_string()}],
            "ips": [{"interface": 0, "address": format!("{STUB_IP}/24"), "gateway": "10.244.0.1"}]
        }))
        .expect("valid result"))
    }
    async fn del(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
    async fn check(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
    async fn status(&self, _req: CniRequest) -> Result<(), CniError> {
        Ok(())
    }
    async fn gc(&self, req: CniRequest) -> Result<(), CniError> {
        self.requests.lock().unwrap().push(req);
        Ok(())
    }
}

impl StubAgent {
    fn verbs(&self) -> Vec<Verb> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.verb)
            .collect()
    }
}

/// Runtime driver with a STUB agent (`switchyard_cni::serve` in the test), not the real
/// switchyard-agent: the real `switchyard` CNI binary is executed as libcni does, the pod gets
/// a namespace, a process and a Running/Ready status with the IP; deletion calls DEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_through_the_cni_plugin_with_a_stub_agent() {
    if !privileged("pod_lifecycle_through_the_cni_plugin_with_a_stub_agent") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    let lab = tokio::task::spawn_blocking(|| Lab::up(1, &["--no-agent", "--no-proxy"]))
        .await
        .unwrap();
    let lab = Arc::new(lab);
    let stub = Arc::new(StubAgent::default());
    let listener =
        switchyard_cni::bind_agent_socket(&lab.state.cni_socket("node1")).expect("bind stub");
    let server = tokio::spawn(switchyard_cni::serve(listener, Arc::clone(&stub)));

    let l = Arc::clone(&lab);
    let (ip, pod) = tokio::task::spawn_blocking(move || {
        // No nodeName: the lab's scheduler assigns it.
        l.apply(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\n  annotations:\n    switchyard.io/segment: blue\nspec:\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n",
        );
        let ip = wait_running(&l, "web", Duration::from_secs(60));
        (ip, pod_json(&l, "web").unwrap())
    })
    .await
    .unwrap();
    assert_eq!(ip, STUB_IP);
    assert_eq!(pod["spec"]["nodeName"], "node1");
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    let info = lab.info();
    assert_eq!(pod["status"]["hostIP"], info.nodes[0].address.to_string());

    // The plugin was called as libcni calls it.
    let add = stub.requests.lock().unwrap()[0].clone();
    assert_eq!(add.verb, Verb::Add);
    let netns = info.pod_netns("default", "web");
    assert_eq!(
        add.env.netns.as_deref(),
        Some(std::path::Path::new(&format!("/run/netns/{netns}")))
    );
    assert_eq!(add.env.ifname.as_deref(), Some("eth0"));
    let cid = add.env.container_id.clone().unwrap();
    assert_eq!(cid.len(), 64);
    assert!(add.env.args.ignore_unknown);
    assert_eq!(add.env.args.k8s_pod_namespace.as_deref(), Some("default"));
    assert_eq!(add.env.args.k8s_pod_name.as_deref(), Some("web"));
    assert_eq!(
        add.env.args.k8s_pod_infra_container_id.as_deref(),
        Some(cid.as_str())
    );
    assert_eq!(
        add.env.args.k8s_pod_uid.as_deref(),
        pod["metadata"]["uid"].as_str()
    );
    let stdin: serde_json::Value = serde_json::from_str(&add.stdin).unwrap();
    assert_eq!(stdin["name"], "switchyard");
    assert_eq!(stdin["cniVersion"], "1.1.0");
    assert_eq!(
        stdin["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]["switchyard.io/segment"],
        "blue"
    );
    assert!(stdin.get("prevResult").is_none());
    let cache = lab
        .state
        .cni_cache_dir("node1")
        .join(format!("results/switchyard-{cid}-eth0"));
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(
        cached["result"]["ips"][0]["address"],
        format!("{STUB_IP}/24")
    );

    // The pod's process runs in its namespace and answers with the pod name.
    let out = in_netns(
        &netns,
        &["curl", "-s", "--max-time", "5", "http://127.0.0.1:8080/"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
    let pod_pid = lab
        .recorded_pids()
        .into_iter()
        .find(|(_, w)| w == "pod default/web")
        .map(|(p, _)| p)
        .expect("pod process recorded");
    assert!(alive(pod_pid));

    // `status` shows the pod with its node and IP.
    let status = check(
        "switchyard-lab status",
        Command::new(LAB)
            .args(["status", "--state-dir"])
            .arg(lab.state.root())
            .output()
            .unwrap(),
    );
    let row = status
        .lines()
        .find(|l| l.starts_with("default ") && l.contains(" web "))
        .unwrap_or_else(|| panic!("no pod row in:\n{status}"));
    assert!(
        row.contains("node1") && row.contains("Running") && row.contains(STUB_IP),
        "{row}"
    );

    // The status feeds the EndpointSlice controller.
    let l = Arc::clone(&lab);
    tokio::task::spawn_blocking(move || {
        eventually(
            "the web EndpointSlice to list the pod",
            Duration::from_secs(20),
            || {
                let out = l.kubectl(&[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "jsonpath={.items[*].endpoints[*].addresses[*]}",
                ]);
                (String::from_utf8_lossy(&out.stdout).trim() == STUB_IP).then_some(())
            },
        );
        l.kubectl_ok(&["delete", "pod", "web", "--wait=false"]);
        eventually("pod web to be gone", Duration::from_secs(30), || {
            (!l.kubectl(&["get", "pod", "web"]).status.success()).then_some(())
        });
    })
    .await
    .unwrap();
    let l = Arc::clone(&lab);
    let ns2 = netns.clone();
    tokio::task::spawn_blocking(move || {
        eventually(
            "the pod namespace to be removed",
            Duration::from_secs(20),
            || (!l.namespaces().contains(&ns2)).then_some(()),
        )
    })
    .await
    .unwrap();
    assert!(!alive(pod_pid), "pod process still runs");
    assert!(!cache.exists(), "cache entry not removed after DEL");
    let del = stub
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.verb == Verb::Del)
        .cloned()
        .unwrap_or_else(|| panic!("no DEL; verbs {:?}", stub.verbs()));
    assert_eq!(del.env.container_id.as_deref(), Some(cid.as_str()));
    let prev = del.config.prev_result.expect("DEL carries prevResult");
    assert_eq!(prev.ips[0].address.to_string(), format!("{STUB_IP}/24"));
    let adds = stub.verbs().iter().filter(|v| **v == Verb::Add).count();
    assert_eq!(adds, 1, "verbs {:?}", stub.verbs());
    server.abort();
}

/// `up --fabric`: the fabric routes between VLANs trunked to the nodes and to the internet
/// namespace. The node side of the trunk is played by a test bridge in each node's own OVS
/// (the agent, which will attach `trunk0` itself, is not started).
#[test]
fn fabric_routes_vlans_trunked_to_nodes_and_the_internet() {
    if !privileged("fabric_routes_vlans_trunked_to_nodes_and_the_internet") {
        return;
    }
    let lab = Lab::up(
        2,
        &["--no-agent", "--no-proxy", "--fabric", "--vlans", "100,200"],
    );
    let info = lab.info();
    let fabric = info.fabric.clone().expect("lab.json records the fabric");
    let mut ns = lab.namespaces();
    ns.sort();
    assert!(
        ns.contains(&fabric.netns) && ns.contains(&fabric.internet_netns),
        "{ns:?}"
    );
    // The internet namespace reaches both VLAN gateways through the fabric.
    for gw in ["10.100.0.1", "10.101.0.1"] {
        let out = in_netns(&fabric.internet_netns, &["ping", "-c1", "-W2", gw]);
        assert!(out.status.success(), "internet -> {gw}");
    }
    // A host on VLAN 100 behind node1's trunk and one on VLAN 200 behind node2's trunk.
    let hosts = [("node1", 100, "10.100.0.50"), ("node2", 200, "10.101.0.50")];
    for (node, vlan, addr) in hosts {
        let db = format!("--db=unix:{}", lab.state.ovsdb_socket(node).display());
        let port = format!("v{vlan}");
        let vsctl = |args: &[&str]| {
            check(
                "ovs-vsctl",
                Command::new("ovs-vsctl")
                    .arg(&db)
                    .args(args)
                    .output()
                    .unwrap(),
            )
        };
        vsctl(&[
            "add-br",
            "br-test",
            "--",
            "set",
            "bridge",
            "br-test",
            "datapath_type=netdev",
        ]);
        vsctl(&["add-port", "br-test", "trunk0"]);
        vsctl(&[
            "add-port",
            "br-test",
            &port,
            &format!("tag={vlan}"),
            "--",
            "set",
            "interface",
            &port,
            "type=internal",
        ]);
        let netns = &info.node(node).unwrap().netns;
        eventually("the test port's tap", Duration::from_secs(10), || {
            in_netns(netns, &["ip", "link", "show", &port])
                .status
                .success()
                .then_some(())
        });
        let gw = if vlan == 100 {
            "10.100.0.1"
        } else {
            "10.101.0.1"
        };
        for args in [
            vec!["ip", "addr", "add", &format!("{addr}/24"), "dev", &port],
            vec!["ip", "link", "set", &port, "up"],
            vec!["ip", "route", "add", "203.0.113.0/24", "via", gw],
            vec!["ip", "route", "add", "10.0.0.0/8", "via", gw],
        ] {
            assert!(in_netns(netns, &args).status.success(), "{args:?}");
        }
    }
    let ping = |node: &str, to: &str| {
        let netns = info.node(node).unwrap().netns.clone();
        eventually(&format!("{node} -> {to}"), Duration::from_secs(10), || {
            in_netns(&netns, &["ping", "-c1", "-W1", to])
                .status
                .success()
                .then_some(())
        });
    };
    ping("node1", "10.100.0.1");
    ping("node2", "10.101.0.1");
    ping("node1", "10.101.0.50"); // VLAN 100 -> fabric router -> VLAN 200
    ping("node2", "203.0.113.1"); // VLAN 200 -> internet

    let fabric_pids: Vec<u32> = lab
        .recorded_pids()
        .into_iter()
        .filter(|(_, w)| w.ends_with(" fabric"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(fabric_pids.len(), 2, "fabric ovsdb-server + ovs-vswitchd");
    check("down", lab.down());
    assert!(lab.namespaces().is_empty());
    assert!(fabric_pids.iter().all(|p| !alive(*p)));
}

/// The underlay is ready for userspace tunnels: a Geneve port on a test bridge in each node
/// (no agent) carries ping and TCP between the nodes from the first packet, over `br-ul`.
#[test]
fn geneve_between_nodes_over_the_underlay() {
    if !privileged("geneve_between_nodes_over_the_underlay") {
        return;
    }
    let lab = Lab::up(2, &["--no-agent", "--no-proxy"]);
    let info = lab.info();
    for (i, n) in info.nodes.iter().enumerate() {
        let other = &info.nodes[1 - i];
        let db = format!("--db=unix:{}", lab.state.ovsdb_socket(&n.name).display());
        let remote = format!("options:remote_ip={}", other.address);
        check(
            "ovs-vsctl",
            in_netns(
                &n.netns,
                &[
                    "ovs-vsctl",
                    &db,
                    "add-br",
                    "br-t",
                    "--",
                    "set",
                    "bridge",
                    "br-t",
                    "datapath_type=netdev",
                    "--",
                    "add-port",
                    "br-t",
                    "gnv",
                    "--",
                    "set",
                    "interface",
                    "gnv",
                    "type=geneve",
                    &remote,
                    "--",
                    "add-port",
                    "br-t",
                    "t0",
                    "--",
                    "set",
                    "interface",
                    "t0",
                    "type=internal",
                ],
            ),
        );
        eventually("the t0 tap", Duration::from_secs(10), || {
            in_netns(&n.netns, &["ip", "link", "show", "t0"])
                .status
                .success()
                .then_some(())
        });
        let addr = format!("10.99.0.{}/24", i + 1);
        for args in [
            vec!["ip", "addr", "add", addr.as_str(), "dev", "t0"],
            vec!["ip", "link", "set", "t0", "mtu", "1400", "up"],
            vec!["ethtool", "-K", "t0", "tx", "off"],
        ] {
            check(&args.join(" "), in_netns(&n.netns, &args));
        }
    }
    // One ping, no retries: the first packet must not be lost to neighbour resolution.
    check(
        "ping over geneve",
        in_netns(&info.nodes[0].netns, &["ping", "-c1", "-W2", "10.99.0.2"]),
    );
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &info.nodes[1].netns,
            LAB,
            "echo-server",
            "--name",
            "node2-t0",
        ])
        .args(["--http", "8081", "--udp", "0"])
        .spawn()
        .unwrap();
    let answer = eventually("HTTP over geneve", Duration::from_secs(10), || {
        let out = in_netns(
            &info.nodes[0].netns,
            &[LAB, "echo-client", "--http", "10.99.0.2:8081"],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(answer, "node2-t0\n");
}
