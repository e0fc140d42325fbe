//! Issue 18: the path kubelet really uses, containerd's CRI. Debian's `containerd` (1.6) is
//! driven over its CRI socket as kubelet drives it (`RunPodSandbox` with pod metadata,
//! annotations and a port mapping, `PodSandboxStatus`, `StopPodSandbox`, `RemovePodSandbox`,
//! through the `k8s-cri` gRPC client), with its CNI configuration pointing at the real
//! `switchyard` binary chained with Debian's `portmap`, and the real agent on a real OVS.
//!
//! - the sandbox gets an address of the node's pod CIDR, and the VLAN its pod annotation asks
//!   for (passed by containerd as the `io.kubernetes.cri.pod-annotations` capability, in a
//!   namespace whose owner allows pods to choose);
//! - the port mapping works: a server in the sandbox answers on the node's host port;
//! - `StopPodSandbox` tears the network down (the OVS port and the host veth go) and
//!   `RemovePodSandbox` leaves nothing behind: no port, veth, flow or host-port rule.
//!
//! containerd keeps everything in the test's temporary directory (its root, state, socket,
//! CNI configuration and plugin directory); the sandbox ("pause") image is a busybox-static
//! root file system imported with `ctr` (no registry is reachable). This machine's root lacks
//! CAP_SYS_RESOURCE: runc runs through the wrapper of `podman.rs` (without `process.rlimits`),
//! and containerd keeps sandboxes' `oom_score_adj` no lower than its own
//! (`restrict_oom_score_adj`, as rootless containerd does); nothing about networking.
//!
//! Needs root, openvswitch-switch, containerd, runc, busybox-static, iptables, curl and
//! python3 (`scripts/install-deps.sh`), and protoc to build the CRI client.
//! `cargo test -p switchyard-agent --test containerd` (about 10 s).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use support::runtimes::{busybox_rootfs, node_pod_cidr, write_runc_wrapper};
use support::*;
use tonic::transport::{Channel, Endpoint, Uri};

const SANDBOX_IMAGE: &str = "localhost/sypause:1";
const HOST_PORT: i32 = 18080;

/// containerd running in the node namespace, with everything in `dir`; killed on drop.
struct Containerd {
    dir: PathBuf,
    child: std::process::Child,
}

impl Containerd {
    fn start(lab: &NodeLab) -> Containerd {
        let dir = lab.dir.path().join("containerd");
        let plugins = dir.join("cni-bin");
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::os::unix::fs::symlink(cni_binary(), plugins.join("switchyard")).unwrap();
        for reference in ["portmap", "loopback"] {
            std::os::unix::fs::symlink(
                Path::new("/usr/lib/cni").join(reference),
                plugins.join(reference),
            )
            .unwrap();
        }
        let mut switchyard = lab.conflist();
        let plugin = switchyard.as_object_mut().unwrap();
        plugin.remove("cniVersion");
        plugin.remove("name");
        plugin.insert(
            "capabilities".into(),
            json!({"io.kubernetes.cri.pod-annotations": true}),
        );
        // containerd 1.6's libcni speaks up to CNI 1.0.0.
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "switchyard",
            "plugins": [switchyard, {"type": "portmap", "capabilities": {"portMappings": true}}]
        });
        std::fs::write(
            conf_dir.join("10-switchyard.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let runtime = write_runc_wrapper(&dir);
        let d = |p: &str| dir.join(p).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runtime}"
"#,
            root = d("root"),
            state = d("state"),
            socket = d("containerd.sock"),
            bin = plugins.display(),
            conf = conf_dir.display(),
            runtime = runtime.display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // The test thread is inside the node namespace, so containerd (and the CNI plugins it
        // runs) are too.
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian's containerd) installed");
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(c.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not serve: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c.import_sandbox_image();
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A busybox-static root file system whose entry point sleeps, as a docker archive
    /// (manifest.json, config, one layer) imported into the CRI's `k8s.io` namespace.
    fn import_sandbox_image(&self) {
        use sha2::Digest;
        let rootfs = busybox_rootfs(&self.dir, &["sleep"]);
        let mut layer = tar::Builder::new(Vec::new());
        layer.follow_symlinks(false);
        layer.append_dir_all(".", &rootfs).unwrap();
        let layer = layer.into_inner().unwrap();
        let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&layer));
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!([
            {"Config": "config.json", "RepoTags": [SANDBOX_IMAGE], "Layers": ["layer.tar"]}
        ]))
        .unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("manifest.json", &manifest),
            ("config.json", &config),
            ("layer.tar", &layer),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, name, &data[..]).unwrap();
        }
        let path = self.dir.join("sandbox-image.tar");
        std::fs::write(&path, archive.into_inner().unwrap()).unwrap();
        sh_ok(&[
            "ctr",
            "--address",
            &self.socket().display().to_string(),
            "--namespace",
            "k8s.io",
            "images",
            "import",
            &path.display().to_string(),
        ]);
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        let socket = self.socket();
        let channel = Endpoint::try_from("http://[::]:0")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connecting to containerd's CRI socket");
        RuntimeServiceClient::new(channel)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The shims of sandboxes a failed test left behind.
        let _ = std::process::Command::new("pkill")
            .args([
                "-9",
                "-f",
                &format!("containerd-shim.*{}", self.dir.display()),
            ])
            .status();
    }
}

/// The sandbox's network namespace path, from the verbose status containerd gives.
fn netns_path(info: &HashMap<String, String>) -> String {
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose status has info")).unwrap();
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .expect("namespaces in the runtime spec")
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .expect("a network namespace path")
        .to_string()
}

#[test]
fn containerd_cri_sandboxes_on_switchyard() {
    node_test("containerd_cri_sandboxes_on_switchyard", |lab| async move {
        let _agent = AgentProcess::start(&lab, "agent.log").await;
        lab.create_namespace("tenant", &[("switchyard.io/pod-placement", "allow")])
            .await;
        // The Pod object carries no annotation: the VLAN can only come from the annotations
        // containerd passes (kubelet passes the pod's own).
        lab.create_pod("tenant", "web", &[]).await;
        let vlan = [("switchyard.io/vlan", "200")];
        let pod =
            kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(lab.kube.clone(), "tenant")
                .get("web")
                .await
                .unwrap();
        let containerd = Containerd::start(&lab);
        let mut cri = containerd.client().await;

        // RunPodSandbox as kubelet sends it.
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: pod.metadata.uid.clone().unwrap(),
                namespace: "tenant".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: containerd.dir.join("logs").display().to_string(),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: HOST_PORT,
                host_ip: String::new(),
            }],
            labels: HashMap::from([
                ("io.kubernetes.pod.name".into(), "web".into()),
                ("io.kubernetes.pod.namespace".into(), "tenant".into()),
            ]),
            annotations: vlan
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let run = cri
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await;
        let id = match run {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\ncontainerd log:\n{}", containerd.log()),
        };

        // PodSandboxStatus: ready, with the address the agent gave.
        let status = cri
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let sandbox = status.status.clone().unwrap();
        assert_eq!(sandbox.state, cri::PodSandboxState::SandboxReady as i32);
        let ip: std::net::Ipv4Addr = sandbox.network.unwrap().ip.parse().unwrap();
        let cidr = node_pod_cidr(&lab).await;
        assert!(
            cidr.contains(&ip),
            "{ip} outside the node's pod CIDR {cidr}"
        );
        // The VLAN of the pod's annotation, on the sandbox's port.
        let ports = lab.pod_ports();
        assert_eq!(ports.len(), 1, "one OVS port for the sandbox: {ports:?}");
        assert_eq!(lab.vsctl(&["get", "Port", &ports[0], "tag"]).trim(), "200");

        // The port mapping (portmap, chained after switchyard): a server in the sandbox
        // answers on the host port of the node's address.
        let netns = netns_path(&status.info);
        let mut server = tokio::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["python3", "-m", "http.server", "--bind", "0.0.0.0", "80"])
            .current_dir(containerd.dir.as_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let gateway = gateway_of(&cidr.to_string());
        let url = format!("http://{gateway}:{HOST_PORT}/containerd.log");
        eventually(
            "the sandbox's server through the host port",
            Duration::from_secs(20),
            || {
                let url = url.clone();
                async move {
                    cmd(&["curl", "-sf", "-o", "/dev/null", "--max-time", "2", &url])
                        .await
                        .status
                        .success()
                }
            },
        )
        .await;
        let _ = server.kill().await;
        let hostport_rules = || sh_ok(&["iptables-save", "-t", "nat"]);
        assert!(
            hostport_rules().contains(&HOST_PORT.to_string()),
            "portmap's rule for {HOST_PORT}"
        );

        // StopPodSandbox: the network goes (CNI DEL through both plugins).
        cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        assert_eq!(lab.pod_ports(), Vec::<String>::new(), "no OVS port");
        assert_eq!(lab.host_veths().await, Vec::<String>::new(), "no veth");
        lab.await_pod_flow_count(0).await;
        assert!(
            !hostport_rules().contains(&HOST_PORT.to_string()),
            "portmap's rule left behind"
        );
        // RemovePodSandbox: the sandbox is gone; nothing came back.
        cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("RemovePodSandbox");
        let left = cri
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(left.is_empty(), "sandboxes left: {left:?}");
        assert_eq!(lab.pod_ports(), Vec::<String>::new());
    });
}
