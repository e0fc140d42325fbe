//! `deploy/uninstall-node.sh` run for real on a lab node whose agent and proxy ran (and were
//! then stopped, as deleting the DaemonSet does): afterwards no Switchyard rule, chain, table,
//! route, bridge, port, link or file is left, the script has said what it removed, everything
//! not Switchyard's is untouched, and a second run removes nothing.
//!
//! One-node lab (`switchyard-lab up`); needs root, OVS, nft, iptables and kubectl, and the
//! binaries built (`cargo build --workspace --bins`); fails with the reason otherwise, unless
//! SWITCHYARD_SKIP_PRIVILEGED=1. About 10 s.

mod lab_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lab_support::*;
use switchyard_lab::cluster::ops::{self, Daemon};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/uninstall-node.sh")
}

/// A command in the node's namespace, its stdout (must succeed).
fn node_ok(netns: &str, args: &[&str]) -> String {
    check(&format!("{args:?} in {netns}"), in_netns(netns, args))
}

#[test]
fn uninstall_leaves_nothing_of_switchyard_and_touches_nothing_else() {
    if !privileged("uninstall_leaves_nothing_of_switchyard_and_touches_nothing_else") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let lab = Lab::up(1, &[]);
    let _diag = DiagnosticsOnPanic(&lab, "uninstall");
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\nspec:\n  nodeName: node1\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n",
    );
    wait_running_in(&lab, "default", "web", Duration::from_secs(60));
    let info = lab.info();
    let node = info.nodes[0].netns.clone();
    let ovs_dir = lab.state.ovs_dir("node1");
    let vsctl = |args: &[&str]| {
        Command::new("ovs-vsctl")
            .env("OVS_RUNDIR", &ovs_dir)
            .args(args)
            .output()
            .unwrap()
    };
    // What the agent and proxy made is there before: the egress chain, the proxy's table,
    // their routes, the bridge with the gateway and the pod's port.
    eventually("the agent's egress chain", Duration::from_secs(30), || {
        in_netns(
            &node,
            &["iptables", "-w", "-t", "nat", "-S", "SWITCHYARD-EGRESS"],
        )
        .status
        .success()
        .then_some(())
    });
    assert!(node_ok(&node, &["nft", "list", "tables"]).contains("switchyard-proxy"));
    assert!(!node_ok(&node, &["ip", "route", "show", "proto", "0x53"]).is_empty());
    assert!(!node_ok(&node, &["ip", "route", "show", "proto", "0x54"]).is_empty());
    let pod_port = check("list-ports", vsctl(&["list-ports", "br-int"]))
        .lines()
        .find(|p| p.len() == 13 && p.starts_with("sy"))
        .expect("the pod's port")
        .to_string();

    // What is not Switchyard's, and must stay.
    node_ok(&node, &["nft", "add", "table", "ip", "keepme"]);
    node_ok(&node, &["iptables", "-w", "-t", "nat", "-N", "KEEP-ME"]);
    node_ok(
        &node,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "dev",
            "lo",
            "proto",
            "static",
        ],
    );
    check(
        "add-br",
        vsctl(&[
            "add-br",
            "br-keep",
            "--",
            "set",
            "bridge",
            "br-keep",
            "datapath_type=netdev",
        ]),
    );

    // The DaemonSet is gone: agent and proxy stopped; the node's files as the installer and
    // the plugin left them.
    ops::kill_daemon(&lab.state, "node1", Daemon::Agent).unwrap();
    ops::kill_daemon(&lab.state, "node1", Daemon::Proxy).unwrap();
    let files = tempfile::tempdir().unwrap();
    let dir = |d: &str| {
        let p = files.path().join(d);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (conf, bin, log, run, state) = (
        dir("net.d"),
        dir("bin"),
        dir("log"),
        dir("run"),
        dir("state"),
    );
    for f in [
        conf.join("10-switchyard.conflist"),
        conf.join("20-other.conflist"),
        bin.join("switchyard"),
        bin.join("portmap"),
        log.join("switchyard-cni.log"),
        log.join("switchyard-cni.log.1"),
        run.join("cni.sock"),
    ] {
        std::fs::write(&f, "x").unwrap();
    }
    let uninstall = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &node, "sh"])
            .arg(script())
            .arg("--host-ovs")
            .env("SWITCHYARD_CNI_CONF_DIR", &conf)
            .env("SWITCHYARD_CNI_BIN_DIR", &bin)
            .env("SWITCHYARD_CNI_LOG", log.join("switchyard-cni.log"))
            .env("SWITCHYARD_RUN_DIR", &run)
            .env("SWITCHYARD_STATE_DIR", &state)
            .env("OVS_RUNDIR", &ovs_dir)
            .output()
            .unwrap();
        check("uninstall-node.sh --host-ovs", out)
    };
    let said = uninstall();
    eprintln!("{said}");
    for what in [
        "10-switchyard.conflist",
        "bin/switchyard",
        "switchyard-cni.log",
        "switchyard-cni.log.1",
        "SWITCHYARD-EGRESS",
        "table ip switchyard-proxy",
        "routes of protocol 0x53",
        "routes of protocol 0x54",
        "OVS bridge br-int",
        &format!("link {pod_port}"),
    ] {
        assert!(said.contains(what), "not said as removed: {what}\n{said}");
    }

    // Nothing of Switchyard's is left.
    assert!(
        !in_netns(
            &node,
            &["iptables", "-w", "-t", "nat", "-S", "SWITCHYARD-EGRESS"]
        )
        .status
        .success()
    );
    let postrouting = node_ok(&node, &["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(!postrouting.contains("SWITCHYARD"), "{postrouting}");
    let tables = node_ok(&node, &["nft", "list", "tables"]);
    assert!(!tables.contains("switchyard"), "{tables}");
    for proto in ["0x53", "0x54"] {
        let routes = node_ok(&node, &["ip", "route", "show", "proto", proto]);
        assert!(
            routes.is_empty(),
            "routes of protocol {proto} left: {routes}"
        );
    }
    assert!(
        !vsctl(&["br-exists", "br-int"]).status.success(),
        "br-int left"
    );
    let links = node_ok(&node, &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("sy-gw0") && !links.contains(&pod_port),
        "{links}"
    );
    for f in [
        "10-switchyard.conflist",
        "switchyard",
        "switchyard-cni.log",
        "switchyard-cni.log.1",
    ] {
        assert!(
            !conf.join(f).exists() && !bin.join(f).exists() && !log.join(f).exists(),
            "{f} left"
        );
    }
    assert!(!run.exists(), "the agent's socket directory left");

    // What is not Switchyard's stayed.
    assert!(conf.join("20-other.conflist").exists() && bin.join("portmap").exists());
    assert!(tables.contains("keepme"), "{tables}");
    assert!(
        in_netns(&node, &["iptables", "-w", "-t", "nat", "-S", "KEEP-ME"])
            .status
            .success()
    );
    assert!(
        node_ok(&node, &["ip", "route", "show", "proto", "static"]).contains("198.51.100.0/24")
    );
    assert!(
        vsctl(&["br-exists", "br-keep"]).status.success(),
        "br-keep removed"
    );

    // A second run finds nothing to remove.
    let again = uninstall();
    assert!(again.contains("0 items removed"), "{again}");
}
