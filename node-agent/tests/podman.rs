//! Issue 18: a runtime other than kubelet, for real. Debian's `podman` (4.3, CNI network
//! backend) runs containers on a Switchyard network: its CNI backend executes the real
//! `switchyard` binary (no `K8S_POD_*` in CNI_ARGS: a standalone attachment), the real agent
//! wires each container to `br-int` of a real OVS (userspace datapath).
//!
//! - two containers get addresses of the node's pod CIDR and OVS ports, and reach each other;
//! - `podman inspect` shows the address the agent gave;
//! - `podman rm -f` runs the DEL: the port, the host veth and the flows go.
//!
//! Everything podman keeps (images, containers, its run state, its network configuration and
//! plugin directory) lives in the test's temporary directory: `--root`, `--runroot`,
//! `--network-config-dir` and a `CONTAINERS_CONF` file; the image is a busybox-static root file
//! system imported with `podman import` (no registry is reachable).
//!
//! One trap of this machine: the root user lacks CAP_SYS_RESOURCE, so `runc` cannot apply the
//! `process.rlimits` podman writes into every container's OCI spec ("operation not permitted");
//! crun refuses the machine's hybrid cgroup layout. The test runs runc through a small wrapper
//! that drops `process.rlimits` from the bundle's `config.json` (nothing about networking).
//!
//! Needs root, openvswitch-switch, podman, runc and busybox-static (`scripts/install-deps.sh`).
//! `cargo test -p switchyard-agent --test podman` (about 10 s).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::runtimes::{busybox_rootfs, node_pod_cidr, write_runc_wrapper};
use support::*;

/// What podman needs to run on its own, inside `dir`.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(lab: &NodeLab) -> Podman {
        let dir = lab.dir.path().join("podman");
        let plugins = dir.join("cni-bin");
        let networks = dir.join("networks");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&networks).unwrap();
        std::os::unix::fs::symlink(cni_binary(), plugins.join("switchyard")).unwrap();
        // podman 4.3's libcni speaks up to CNI 1.0.0.
        let mut plugin = lab.conflist();
        plugin.as_object_mut().unwrap().remove("cniVersion");
        plugin.as_object_mut().unwrap().remove("name");
        let conflist = json!({"cniVersion": "1.0.0", "name": "switchyard", "plugins": [plugin]});
        std::fs::write(
            networks.join("switchyard.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
                plugins.display()
            ),
        )
        .unwrap();
        write_runc_wrapper(&dir);
        let podman = Podman { dir };
        podman.import_busybox();
        podman
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("podman");
        let d = |p: &str| self.dir.join(p).display().to_string();
        c.env("CONTAINERS_CONF", d("containers.conf"))
            .args([
                "--root",
                &d("root"),
                "--runroot",
                &d("run"),
                "--storage-driver",
                "vfs",
                "--network-config-dir",
                &d("networks"),
                "--runtime",
                &d("runc-without-rlimits"),
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        c
    }

    /// Runs podman; its stdout, or a panic with its stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e} (is podman installed?)"));
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A root file system of busybox-static, imported as `localhost/sybox:1`.
    fn import_busybox(&self) {
        let rootfs = busybox_rootfs(&self.dir, &["sh", "sleep", "ping", "ip", "cat"]);
        let tar = self.dir.join("rootfs.tar");
        sh_ok(&[
            "tar",
            "-C",
            &rootfs.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ]);
        self.ok(&["import", &tar.display().to_string(), "localhost/sybox:1"]);
    }

    fn run(&self, name: &str) -> String {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "switchyard",
            "localhost/sybox:1",
            "/bin/sleep",
            "300",
        ])
    }

    fn address(&self, name: &str) -> String {
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        inspect[0]["NetworkSettings"]["Networks"]["switchyard"]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no switchyard address in podman inspect {name}: {inspect}"))
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their DEL needs the agent, still running: the lab drops later).
        let _ = self.command(&["rm", "-f", "-a", "-t", "0"]).output();
    }
}

#[test]
fn podman_containers_on_a_switchyard_network() {
    node_test(
        "podman_containers_on_a_switchyard_network",
        |lab| async move {
            let _agent = AgentProcess::start(&lab, "agent.log").await;
            let podman = Podman::new(&lab);

            podman.run("web");
            podman.run("client");
            let web = podman.address("web");
            let client = podman.address("client");
            assert_ne!(web, client);
            let cidr = node_pod_cidr(&lab).await;
            for ip in [&web, &client] {
                assert!(
                    cidr.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
                    "{ip} outside the node's pod CIDR {cidr}"
                );
            }
            assert_eq!(lab.pod_ports().len(), 2, "one OVS port per container");
            // Inside the container, eth0 has the address the agent gave.
            let shown = podman.ok(&["exec", "client", "ip", "-4", "-o", "addr", "show", "eth0"]);
            assert!(shown.contains(&format!("{client}/")), "{shown}");
            // Through br-int.
            let ping = podman
                .command(&["exec", "client", "ping", "-c", "2", "-W", "2", &web])
                .output()
                .unwrap();
            assert!(
                ping.status.success(),
                "client does not reach web at {web}: {}",
                String::from_utf8_lossy(&ping.stdout)
            );

            // `podman rm` runs the DEL: nothing of either container left.
            podman.ok(&["rm", "-f", "-t", "0", "web", "client"]);
            eventually("ports and veths gone", Duration::from_secs(10), || {
                let left = lab.pod_ports().len();
                async move { left == 0 }
            })
            .await;
            assert_eq!(lab.host_veths().await, Vec::<String>::new());
            lab.await_pod_flow_count(0).await;
        },
    );
}
