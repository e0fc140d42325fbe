//! A one-node lab for datapath tests: a private OVS (userspace datapath) with
//! `br-int`, the node agent's flows (from `switchyard_agent::flows`, installed
//! here the way the agent installs them), pods as network namespaces on
//! veth ports running tiny TCP/UDP servers that answer with their name, the
//! lab's in-memory API server (with its EndpointSlice controller) and the
//! real `switchyard-proxy` binary watching it.
//!
//! Needs root and Open vSwitch; fails (does not skip) without them unless
//! `SWITCHYARD_SKIP_PRIVILEGED=1`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_agent::flows::{Gateway, PodPort, base_flows, pod_flows};
use switchyard_agent::mac::MacAddr;
use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use switchyard_ovs::openflow::{Client, FlowMod, TxMessage, bundle_flags};
use switchyard_ovs_harness::{Netns, OvsInstance, VethPair};
use switchyard_pipeline::ofport;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

pub const NODE: &str = "node-1";

/// A closure printing the node's flows, groups and conntrack and the
/// proxy's log, for failure messages (a macro, so that the closure borrows
/// the node only where it is used).
#[macro_export]
macro_rules! debug_of {
    ($node:expr, $proxy:expr) => {
        || format!("{}\n--- proxy log\n{}", $node.debug(), $proxy.log_text())
    };
}
pub const BRIDGE: &str = "br-int";
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const GATEWAY_MAC: &str = "02:00:0a:f4:00:01";
/// Every wait in these tests ends by this deadline.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `f` on a dedicated thread inside network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = PathBuf::from("/run/netns").join(netns);
    std::thread::spawn(move || {
        let file = File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_cmd(netns: &str, args: &[&str]) -> String {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// One pod: a namespace with `eth0` on a bridge port and its servers.
pub struct PodNet {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub ofport: u32,
    pub netns: Netns,
    veth: Option<VethPair>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl PodNet {
    pub fn ns(&self) -> &str {
        self.netns.name()
    }

    /// Serves TCP on `port`: an HTTP request gets `200 OK` with the pod name;
    /// anything else gets the pod name once per line received.
    pub fn serve_tcp(&mut self, port: u16) {
        let name = self.name.clone();
        let listener = in_netns(self.ns(), move || {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .expect("bind in pod");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        self.servers.push(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.starts_with("GET ") {
                            let body = format!("{name}\n");
                            let response = format!(
                                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = write.write_all(response.as_bytes()).await;
                            return;
                        }
                        if write
                            .write_all(format!("{name}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }));
    }

    /// Serves UDP on `port`: every datagram gets the pod name back.
    pub fn serve_udp(&mut self, port: u16) {
        let name = self.name.clone();
        let socket = in_netns(self.ns(), move || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .expect("bind in pod");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
        self.servers.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(name.as_bytes(), from).await;
            }
        }));
    }

    /// `curl http://addr/` from this pod: Ok(body) or Err((exit code, elapsed)).
    pub async fn curl(&self, addr: SocketAddr) -> Result<String, (i32, Duration)> {
        let started = Instant::now();
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", self.ns(), "curl", "-s", "--max-time", "5"])
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("curl runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err((out.status.code().unwrap_or(-1), started.elapsed()))
        }
    }

    /// A TCP connection from this pod.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<LongLived> {
        let stream = in_netns(self.ns(), move || {
            let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let (read, write) = stream.into_split();
        Ok(LongLived {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// A UDP socket in this pod (bound to an ephemeral port).
    pub fn udp_socket(&self) -> tokio::net::UdpSocket {
        let socket = in_netns(self.ns(), || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .expect("udp socket in pod");
        tokio::net::UdpSocket::from_std(socket).expect("tokio socket")
    }
}

/// A long-lived TCP connection to a line server.
pub struct LongLived {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl LongLived {
    /// Sends a line and returns the server's answer (its pod name).
    pub async fn ask(&mut self) -> std::io::Result<String> {
        self.write.write_all(b"who\n").await?;
        match tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(std::io::Error::other("connection closed")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("no answer within 5 s")),
        }
    }
}

/// Asks over UDP: sends one datagram to `addr`, waits up to 2 s for the answer.
pub async fn udp_ask(socket: &tokio::net::UdpSocket, addr: SocketAddr) -> Option<String> {
    socket.send_to(b"who", addr).await.ok()?;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The node: OVS, bridge, gateway, agent flows, pods.
pub struct Node {
    pub ovs: OvsInstance,
    pub gateway: Gateway,
    pub pods: BTreeMap<String, PodNet>,
    next_ofport: u32,
}

impl Node {
    pub async fn start() -> Node {
        let ovs = OvsInstance::builder()
            .vswitchd(true)
            .start()
            .expect("OVS starts");
        ovs.vsctl(&[
            "add-br",
            BRIDGE,
            "--",
            "set",
            "bridge",
            BRIDGE,
            "datapath_type=netdev",
            "protocols=OpenFlow10,OpenFlow13,OpenFlow15",
            "fail_mode=secure",
            "--",
            "add-port",
            BRIDGE,
            "sy-gw0",
            "--",
            "set",
            "interface",
            "sy-gw0",
            "type=internal",
            &format!("ofport_request={}", ofport::GATEWAY),
            &format!("mac=\"{GATEWAY_MAC}\""),
        ])
        .expect("bridge and gateway");
        let ns = ovs.netns().expect("vswitchd netns").to_owned();
        run(Command::new("ip").args([
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.arp_ignore=1",
        ]));
        let gateway = Gateway {
            ofport: ofport::GATEWAY,
            mac: GATEWAY_MAC.parse().expect("mac"),
            ip: GATEWAY_IP,
        };
        let node = Node {
            ovs,
            gateway,
            pods: BTreeMap::new(),
            next_ofport: ofport::FIRST_POD,
        };
        node.install_agent_flows().await;
        node
    }

    pub fn mgmt(&self) -> PathBuf {
        self.ovs.mgmt_socket(BRIDGE)
    }

    /// An OpenFlow client of the bridge; retries for up to 30 s (after a
    /// restart `ovs-vswitchd` may not have its management socket yet, and
    /// on a loaded machine that takes a while).
    pub async fn client(&self) -> Client {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_bridge(self.ovs.rundir(), BRIDGE).await {
                Ok(client) => return client,
                Err(err) if tokio::time::Instant::now() < end => {
                    tracing::debug!(%err, "OpenFlow client: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("OpenFlow client: {err}"),
            }
        }
    }

    /// (Re)installs the agent's flows for the gateway and every pod, as the
    /// agent does at start and after a vswitchd restart.
    pub async fn install_agent_flows(&self) {
        let mut flows = base_flows(1, &self.gateway);
        for pod in self.pods.values() {
            flows.extend(pod_flows(1, &self.gateway, &pod_port(pod)));
        }
        let client = self.client().await;
        client
            .bundle(
                flows
                    .into_iter()
                    .map(|f| TxMessage::from(FlowMod::add(f)))
                    .collect(),
                bundle_flags::ATOMIC,
            )
            .await
            .expect("agent flows");
    }

    /// Adds pod `name` with address 10.244.0.`host`.
    pub async fn add_pod(&mut self, name: &str, host: u8) -> &mut PodNet {
        let ovs_ns = self.ovs.netns().expect("vswitchd netns").to_owned();
        let ip = Ipv4Addr::new(10, 244, 0, host);
        let mac: MacAddr = format!("0a:58:0a:f4:00:{host:02x}").parse().expect("mac");
        let netns = Netns::new("sy-pod").expect("pod netns");
        let veth = VethPair::new("syp", Some(&ovs_ns)).expect("veth");
        ip_cmd(
            &ovs_ns,
            &["link", "set", veth.peer(), "netns", netns.name()],
        );
        let pod_ns = netns.name().to_owned();
        ip_cmd(&pod_ns, &["link", "set", veth.peer(), "name", "eth0"]);
        ip_cmd(
            &pod_ns,
            &["link", "set", "eth0", "address", &mac.to_string()],
        );
        ip_cmd(
            &pod_ns,
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        ip_cmd(&pod_ns, &["link", "set", "eth0", "up"]);
        ip_cmd(
            &pod_ns,
            &["route", "add", "default", "via", &GATEWAY_IP.to_string()],
        );
        run(Command::new("ip").args([
            "netns", "exec", &pod_ns, "ethtool", "-K", "eth0", "tx", "off",
        ]));
        let ofport = self.next_ofport;
        self.next_ofport += 1;
        self.ovs
            .vsctl(&[
                "add-port",
                BRIDGE,
                veth.name(),
                "--",
                "set",
                "interface",
                veth.name(),
                &format!("ofport_request={ofport}"),
            ])
            .expect("add port");
        let pod = PodNet {
            name: name.to_owned(),
            ip,
            mac,
            ofport,
            netns,
            veth: Some(veth),
            servers: Vec::new(),
        };
        let client = self.client().await;
        client
            .bundle(
                pod_flows(1, &self.gateway, &pod_port(&pod))
                    .into_iter()
                    .map(|f| TxMessage::from(FlowMod::add(f)))
                    .collect(),
                bundle_flags::ATOMIC,
            )
            .await
            .expect("pod flows");
        self.pods.insert(name.to_owned(), pod);
        self.pods.get_mut(name).expect("just inserted")
    }

    /// Removes pod `name`: its port, flows and namespace.
    pub async fn remove_pod(&mut self, name: &str) {
        let Some(mut pod) = self.pods.remove(name) else {
            return;
        };
        let client = self.client().await;
        let (value, mask) =
            switchyard_pipeline::Cookie::object_mask(switchyard_pipeline::Owner::Agent, pod.ofport);
        client
            .flow_mod(FlowMod::delete_cookie(value, mask))
            .await
            .expect("delete pod flows");
        if let Some(veth) = pod.veth.take() {
            self.ovs
                .vsctl(&["del-port", BRIDGE, veth.name()])
                .expect("del port");
        }
    }

    pub fn pod(&self, name: &str) -> &PodNet {
        self.pods.get(name).expect("pod exists")
    }

    /// Distinct backends answering `rounds` new connections from pod `client` to `addr`.
    pub async fn backends_seen(
        &self,
        client: &str,
        addr: SocketAddr,
        rounds: usize,
    ) -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..rounds {
            if let Ok(name) = self.pod(client).curl(addr).await {
                seen.insert(name);
            }
        }
        seen
    }

    pub fn pod_mut(&mut self, name: &str) -> &mut PodNet {
        self.pods.get_mut(name).expect("pod exists")
    }

    pub fn dump_flows(&self) -> String {
        self.ovs
            .ofctl(&["-O", "OpenFlow15", "dump-flows", BRIDGE])
            .unwrap_or_else(|e| e.to_string())
    }

    /// The Service frontend flows (table `SERVICE_LB`) of `vip`'s address.
    pub fn frontend_flows(&self, vip: std::net::IpAddr) -> Vec<String> {
        let table = format!("table={}", switchyard_pipeline::table::SERVICE_LB.id());
        self.dump_flows()
            .lines()
            .filter(|line| line.contains(&table) && line.contains(&format!("nw_dst={vip},")))
            .map(str::to_owned)
            .collect()
    }

    pub fn dump_groups(&self) -> String {
        self.ovs
            .ofctl(&["-O", "OpenFlow15", "dump-groups", BRIDGE])
            .unwrap_or_else(|e| e.to_string())
    }

    pub fn dump_conntrack(&self) -> String {
        self.ovs
            .appctl_vswitchd(&["dpctl/dump-conntrack"])
            .unwrap_or_else(|e| e.to_string())
    }

    /// Flows and groups, for failure messages.
    pub fn debug(&self) -> String {
        format!(
            "--- flows\n{}\n--- groups\n{}\n--- conntrack\n{}",
            self.dump_flows(),
            self.dump_groups(),
            self.dump_conntrack()
        )
    }
}

fn pod_port(pod: &PodNet) -> PodPort {
    PodPort {
        ofport: pod.ofport,
        mac: pod.mac,
        ip: pod.ip,
        vlan: 0,
    }
}

/// The lab API server with typed access to pods and Services.
pub struct Lab {
    pub server: ApiServerHandle,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub async fn start() -> Lab {
        let server = ApiServer::start(ApiServerOptions::default())
            .await
            .expect("lab API server starts");
        let config = kube::Config::new(server.url().parse().expect("server URL parses"));
        let client = kube::Client::try_from(config).expect("kube client builds");
        let dir = tempfile::tempdir().expect("tempdir");
        server
            .write_kubeconfig(&dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        Lab {
            server,
            client,
            dir,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// EndpointSlice `<service>-<index>` of a selectorless Service: `endpoints`
    /// ready on `node`, port `http` 8080/TCP.
    pub async fn create_slice(
        &self,
        service: &str,
        index: usize,
        endpoints: &[Ipv4Addr],
        node: &str,
    ) {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|ip| {
                json!({"addresses": [ip.to_string()],
                       "conditions": {"ready": true}, "nodeName": node})
            })
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-{index}"),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .expect("slice manifest");
        Api::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &slice)
            .await
            .expect("create slice");
    }

    /// Creates a Service; returns its cluster IP.
    pub async fn create_service(&self, manifest: serde_json::Value) -> Ipv4Addr {
        let service: Service = serde_json::from_value(manifest).expect("service manifest");
        let created = self
            .services()
            .create(&PostParams::default(), &service)
            .await
            .expect("create service");
        created
            .spec
            .and_then(|spec| spec.cluster_ip)
            .expect("cluster IP")
            .parse()
            .expect("IPv4 cluster IP")
    }

    /// Creates Service `name` selecting `app=web` pods, port 80 to their
    /// named port `http`, with `extra_spec` merged into its spec; returns
    /// `cluster IP:80`.
    pub async fn create_web_service(
        &self,
        name: &str,
        extra_spec: serde_json::Value,
    ) -> SocketAddr {
        let mut spec = json!({"selector": {"app": "web"},
                              "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        let vip = self
            .create_service(json!({"metadata": {"name": name}, "spec": spec}))
            .await;
        SocketAddr::from((vip, 80))
    }

    pub async fn patch_service(&self, name: &str, patch: serde_json::Value) {
        self.services()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("patch service");
    }

    /// Creates a running, ready pod object for a pod of the node.
    pub async fn create_pod(
        &self,
        name: &str,
        labels: serde_json::Value,
        node: &str,
        ip: Ipv4Addr,
        ports: serde_json::Value,
    ) {
        self.create_pod_with_finalizers(name, labels, node, ip, ports, &[])
            .await;
    }

    /// Like [`Self::create_pod`], with finalizers (a deleted pod then stays,
    /// terminating, until they are removed).
    pub async fn create_pod_with_finalizers(
        &self,
        name: &str,
        labels: serde_json::Value,
        node: &str,
        ip: Ipv4Addr,
        ports: serde_json::Value,
        finalizers: &[&str],
    ) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "finalizers": finalizers},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
        }))
        .expect("pod manifest");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        self.pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }})),
            )
            .await
            .expect("pod status");
    }

    pub async fn set_ready(&self, name: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        self.pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"status": {"conditions": [{"type": "Ready", "status": status}]}}),
                ),
            )
            .await
            .expect("pod readiness");
    }

    pub async fn delete_pod(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
}

/// The `switchyard-proxy` binary, killed (by pid) on drop.
pub struct ProxyProcess {
    child: Child,
    pub log: PathBuf,
    pub metrics: SocketAddr,
    /// `--healthz-bind-address` (kube-proxy's `/healthz` and `/livez`): a free
    /// loopback port, as tests run in parallel (the default is 0.0.0.0:10256).
    pub healthz: SocketAddr,
}

impl ProxyProcess {
    pub fn start(lab: &Lab, node: &Node, tag: &str, extra: &[&str]) -> ProxyProcess {
        let log = lab.dir.path().join(format!("proxy-{tag}.log"));
        let metrics = free_local_addr();
        let healthz = free_local_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard-proxy"))
            .arg("--node-name")
            .arg(NODE)
            .arg("--kubeconfig")
            .arg(lab.kubeconfig())
            .arg("--ovs-rundir")
            .arg(node.ovs.rundir())
            .arg("--bridge")
            .arg(BRIDGE)
            .arg("--metrics-address")
            .arg(metrics.to_string())
            .arg("--healthz-bind-address")
            .arg(healthz.to_string())
            .arg("--debounce-ms")
            .arg("20")
            .args(extra)
            .env("RUST_LOG", "switchyard_proxy=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("switchyard-proxy starts");
        ProxyProcess {
            child,
            log,
            metrics,
            healthz,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz` says the proxy has synced (200).
    pub async fn wait_synced(&self, debug: impl Fn() -> String) {
        eventually("the proxy to sync", debug, || async {
            self.get("/healthz")
                .await
                .is_some_and(|(status, _)| status == 200)
                .then_some(())
        })
        .await;
    }

    /// Stops the proxy (SIGSTOP) until the guard is dropped (SIGCONT): it
    /// holds its OpenFlow connection but does nothing.
    pub fn pause(&self) -> Paused {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Paused { pid }
    }

    /// Kills the proxy (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }
}

/// A stopped proxy; continued when dropped.
pub struct Paused {
    pid: nix::unistd::Pid,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Polls `check` until it returns `Some`, or panics with `what` and `debug()`
/// after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, debug: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}\n{}", debug());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
