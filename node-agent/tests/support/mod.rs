//! A one-node lab for agent tests: a "node" network namespace running a
//! private ovsdb-server + ovs-vswitchd (harness), the lab API server, pods as
//! network namespaces, and the REAL `switchyard` CNI binary executed the way
//! libcni does (environment + conflist on stdin).
//!
//! The whole test body runs on a dedicated thread that entered the node
//! namespace (with its own tokio runtime), so the agent, the API server on
//! 127.0.0.1 and every command the test starts see the node's namespace,
//! never the host's. Needs root and openvswitch-switch; fails without them
//! unless SWITCHYARD_SKIP_PRIVILEGED=1.
//!
//! The `switchyard` binary belongs to another package, so
//! `CARGO_BIN_EXE_switchyard` does not exist here: [`cni_binary`] runs
//! `cargo build -p switchyard-cni --bin switchyard` once per test process
//! and uses `<target>/debug/switchyard` (`$CARGO_TARGET_DIR` or the
//! workspace's `target/`). Set `SWITCHYARD_CNI_BIN` to use another binary.
#![allow(dead_code)]

pub mod runtimes;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use switchyard_agent::config::{AgentConfig, DatapathType, FileConfig, Flags};
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use switchyard_ovs_harness::{Netns, OvsInstance, require_privileges};

pub const NODE_NAME: &str = "node-1";
pub const BRIDGE: &str = "br-int";

/// Path of the `switchyard` CNI binary, built once.
pub fn cni_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("SWITCHYARD_CNI_BIN") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let workspace = manifest.parent().expect("workspace root");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "switchyard-cni", "--bin", "switchyard"])
            .current_dir(workspace)
            .status()
            .expect("running cargo build for the switchyard binary");
        assert!(status.success(), "building the switchyard binary failed");
        let bin = target.join("debug").join("switchyard");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Everything a test body gets.
pub struct NodeLab {
    pub ovs: OvsInstance,
    pub node_netns: String,
    pub dir: tempfile::TempDir,
    pub api: ApiServerHandle,
    pub kube: kube::Client,
}

/// Runs `body` inside a fresh node (see the module docs). Returns without
/// running it when privileged tests are skipped.
pub fn node_test<F, Fut>(test: &str, body: F)
where
    F: FnOnce(NodeLab) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !require_privileges(test) {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("switchyard_agent=info")),
        )
        .with_test_writer()
        .try_init();
    let node = Netns::new("synode").expect("node netns");
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        node.name(),
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.arp_ignore=1",
    ]);
    let ovs = OvsInstance::builder()
        .netns(Some(node.name()))
        .vswitchd(true)
        .start()
        .expect("OVS in the node netns");
    let path = node.path();
    let node_name = node.name().to_string();
    let joined = std::thread::Builder::new()
        .name("node-netns".into())
        .spawn(move || {
            let ns = std::fs::File::open(&path).expect("open node netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let api = ApiServer::start(ApiServerOptions::default())
                    .await
                    .expect("lab API server");
                let dir = tempfile::tempdir().expect("tempdir");
                let kubeconfig = dir.path().join("kubeconfig");
                api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
                let kube = kube_client(&kubeconfig).await;
                create_node(&kube).await;
                body(NodeLab {
                    ovs,
                    node_netns: node_name,
                    dir,
                    api,
                    kube,
                })
                .await;
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        })
        .expect("spawn node thread")
        .join();
    drop(node);
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn create_node(kube: &kube::Client) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME}
    }))
    .unwrap();
    Api::<Node>::all(kube.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

impl NodeLab {
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/switchyard/cni.sock")
    }

    /// Agent flags for this node.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--node-name".into(),
            NODE_NAME.into(),
            "--kubeconfig".into(),
            self.kubeconfig().display().to_string(),
            "--ovsdb-endpoint".into(),
            self.ovs.db_endpoint(),
            "--ovs-rundir".into(),
            self.ovs.rundir().display().to_string(),
            "--bridge".into(),
            BRIDGE.into(),
            "--datapath-type".into(),
            "netdev".into(),
            "--cni-socket".into(),
            self.socket().display().to_string(),
            "--listen-address".into(),
            "127.0.0.1:0".into(),
        ]
    }

    /// The agent's configuration for in-process runs, with extra segments.
    pub fn agent_config(&self, segments_yaml: Option<&str>) -> AgentConfig {
        let flags = Flags {
            node_name: Some(NODE_NAME.into()),
            kubeconfig: Some(self.kubeconfig()),
            ovsdb_endpoint: Some(self.ovs.db_endpoint()),
            ovs_rundir: Some(self.ovs.rundir().to_path_buf()),
            bridge: Some(BRIDGE.into()),
            datapath_type: Some(DatapathType::Netdev),
            cni_socket: Some(self.socket()),
            listen_address: Some("127.0.0.1:0".parse().unwrap()),
            ..Flags::default()
        };
        let file = match segments_yaml {
            Some(y) => FileConfig::from_yaml(y, Path::new("test.yaml")).unwrap(),
            None => FileConfig::default(),
        };
        AgentConfig::merge(&flags, file, None).unwrap()
    }

    pub async fn create_namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": ann}
        }))
        .unwrap();
        Api::<Namespace>::all(self.kube.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    /// Adds annotations to an existing namespace (merge patch), as the cluster admin does,
    /// e.g. `switchyard.io/pod-placement: allow` on `default`.
    pub async fn annotate_namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        Api::<Namespace>::all(self.kube.clone())
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"annotations": ann}})),
            )
            .await
            .expect("annotate namespace");
    }

    pub async fn create_pod(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": ann},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "image": "pause"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.kube.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }

    pub async fn delete_pod(&self, namespace: &str, name: &str) {
        let _ = Api::<Pod>::namespaced(self.kube.clone(), namespace)
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
    }

    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "switchyard",
            "type": "switchyard",
            "agentSocket": self.socket().display().to_string(),
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        })
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        self.ovs
            .vsctl(args)
            .unwrap_or_else(|e| panic!("ovs-vsctl {args:?}: {e}"))
    }

    pub fn dump_flows(&self) -> String {
        self.ovs
            .ofctl(&["-O", "OpenFlow15", "dump-flows", BRIDGE])
            .expect("dump-flows")
    }

    /// Names of the bridge's pod ports (host veths: `sy` + 11 hex digits;
    /// not `sy-gw0`, `sy-tun0`).
    pub fn pod_ports(&self) -> Vec<String> {
        self.vsctl(&["list-ports", BRIDGE])
            .lines()
            .map(str::trim)
            .filter(|p| is_pod_port_name(p))
            .map(String::from)
            .collect()
    }

    /// Host-side veths (`sy` + hex) in the node namespace.
    pub async fn host_veths(&self) -> Vec<String> {
        let out = cmd_ok(&["ip", "-o", "link", "show"]).await;
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| is_pod_port_name(n))
            .collect()
    }

    /// Agent flows that belong to a pod (cookie object = the pod's ofport,
    /// 1..0xff00; base flows use 0, the overlay's flows 0x10000 and up).
    pub fn pod_flow_count(&self) -> usize {
        self.dump_flows()
            .lines()
            .filter_map(|l| {
                let c = l.split("cookie=").nth(1)?.split(',').next()?;
                u64::from_str_radix(c.trim_start_matches("0x"), 16).ok()
            })
            .filter(|c| c >> 40 == 0x0053_5901 && (1..0xff00).contains(&(c & 0xffff_ffff)))
            .count()
    }

    /// Waits (10 s at most) until the bridge holds `n` pod flows. A CNI
    /// DEL returns once the removal of the pod's flows is queued on the
    /// agent's OpenFlow connection, ahead of anything sent later, not once
    /// vswitchd confirmed it.
    pub async fn await_pod_flow_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.pod_flow_count();
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{now} pod flows, not {n}, after 10 s: {}",
                self.dump_flows()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How many flows the agent installs per pod (from the library, so the
/// tests follow changes to the flow design).
pub fn flows_per_pod() -> usize {
    use switchyard_agent::flows::{Gateway, PodPort, pod_flows};
    let mac = "02:00:00:00:00:01".parse().unwrap();
    let gw = Gateway {
        ofport: 2,
        mac,
        ip: "10.0.0.1".parse().unwrap(),
    };
    let pod = PodPort {
        ofport: 16,
        mac,
        ip: "10.0.0.2".parse().unwrap(),
        vlan: 0,
    };
    pod_flows(0, &gw, &pod).len()
}

/// Whether `name` is a pod's host veth (`sy` + 11 hex digits).
pub fn is_pod_port_name(name: &str) -> bool {
    name.len() == 13 && name.starts_with("sy") && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// A pod: its own network namespace plus CNI identity.
pub struct PodNs {
    pub netns: Netns,
    pub namespace: String,
    pub name: String,
    pub container_id: String,
}

impl PodNs {
    pub fn new(namespace: &str, name: &str) -> PodNs {
        let netns = Netns::new("sypod").expect("pod netns");
        let container_id = format!("c{}", netns.name().replace('-', ""));
        PodNs {
            netns,
            namespace: namespace.into(),
            name: name.into(),
            container_id,
        }
    }

    pub fn netns_path(&self) -> String {
        self.netns.path().display().to_string()
    }

    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.namespace, self.name, self.container_id
        )
    }

    /// Runs a command inside the pod.
    pub async fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", self.netns.name()];
        full.extend_from_slice(args);
        cmd(&full).await
    }

    /// Whether the pod reaches `ip`: pings until one is answered, for up to 10 s (the first
    /// packets may wait for ARP and, on a loaded machine, for ovs-vswitchd). For "must not
    /// reach", use [`PodNs::ping_once`].
    pub async fn ping(&self, ip: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping_once(ip).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// One round of two pings (0.2 s apart, 1 s for the last answer): whether one was
    /// answered.
    pub async fn ping_once(&self, ip: &str) -> bool {
        let out = self
            .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", ip])
            .await;
        out.status.success()
    }
}

/// Output of one CNI invocation.
#[derive(Debug)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CNI stdout is not JSON ({e}): {:?}", self.stdout))
    }
    pub fn code(&self) -> u64 {
        self.json()["code"].as_u64().unwrap_or(0)
    }
    pub fn ip(&self) -> String {
        let j = self.json();
        let addr = j["ips"][0]["address"].as_str().expect("ips[0].address");
        addr.split('/').next().unwrap().to_string()
    }
}

/// Executes the real `switchyard` binary as libcni does.
pub async fn run_cni(
    command: &str,
    container_id: &str,
    netns: Option<&str>,
    ifname: &str,
    args: &str,
    conf: &Value,
) -> CniOutput {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(cni_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns.unwrap_or(""))
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn switchyard");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(conf).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.expect("switchyard output");
    CniOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn cni_add(lab: &NodeLab, pod: &PodNs) -> CniOutput {
    run_cni(
        "ADD",
        &pod.container_id,
        Some(&pod.netns_path()),
        "eth0",
        &pod.cni_args(),
        &lab.conflist(),
    )
    .await
}

pub async fn cni_del(lab: &NodeLab, pod: &PodNs) -> CniOutput {
    run_cni(
        "DEL",
        &pod.container_id,
        Some(&pod.netns_path()),
        "eth0",
        &pod.cni_args(),
        &lab.conflist(),
    )
    .await
}

pub async fn cmd(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub async fn cmd_ok(args: &[&str]) -> String {
    let out = cmd(args).await;
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn gateway_of(cidr: &str) -> Ipv4Addr {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    net.hosts().next().unwrap()
}

/// What the `vlan` segments' cluster-wide allocations need (deploy/ installs both): the
/// SegmentAddress CRD and the agent's namespace (the previous design's ConfigMaps).
pub async fn create_ipam_namespace(kube: &kube::Client) {
    install_segment_address_crd(kube).await;
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
        serde_json::json!({"metadata": {"name": switchyard_agent::vlan_pool::IPAM_NAMESPACE}}),
    )
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(kube.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// A veth pair `name`/`<name>p` in the node namespace, both up (an uplink).
pub fn node_veth(lab: &NodeLab, name: &str) {
    let peer = format!("{name}p");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.node_netns, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", name, "up"]);
    ip(&["link", "set", &peer, "up"]);
}

/// The agent binary running in the node namespace; killed on drop.
pub struct AgentProcess {
    pub child: std::process::Child,
}

impl AgentProcess {
    pub async fn start(lab: &NodeLab, log_name: &str) -> AgentProcess {
        let agent = AgentProcess::spawn(lab, log_name, &lab.agent_args());
        let socket = lab.socket();
        eventually("the agent's CNI socket", Duration::from_secs(30), || {
            let socket = socket.clone();
            async move { std::os::unix::net::UnixStream::connect(&socket).is_ok() }
        })
        .await;
        agent
    }

    pub fn spawn(lab: &NodeLab, log_name: &str, args: &[String]) -> AgentProcess {
        // The agent's log goes to a file in the lab directory, or to the
        // test's stderr with SWITCHYARD_AGENT_LOG_STDERR=1 (RUST_LOG applies).
        let stderr = if std::env::var_os("SWITCHYARD_AGENT_LOG_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::from(std::fs::File::create(lab.dir.path().join(log_name)).unwrap())
        };
        // The test thread is inside the node namespace, so the child is too.
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-agent"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchyard-agent");
        AgentProcess { child }
    }

    pub fn kill9(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SegmentAddress CRD (`deploy/crds/`), served once created.
pub async fn install_segment_address_crd(kube: &kube::Client) {
    use kube::CustomResourceExt;
    Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(kube.clone())
        .create(&PostParams::default(), &switchyard_api::SegmentAddress::crd())
        .await
        .expect("create the SegmentAddress CRD");
}
