//! Tests of the OVS harness against the real daemons (need root and OVS).

use std::os::unix::net::UnixStream;
use std::process::Command;

use switchyard_ovs_harness::{Netns, OvsInstance, VethPair, require_privileges};

fn netdev_bridge(ovs: &OvsInstance, bridge: &str) {
    ovs.vsctl(&[
        "add-br",
        bridge,
        "--",
        "set",
        "bridge",
        bridge,
        "datapath_type=netdev",
    ])
    .expect("add-br");
}

#[test]
fn two_instances_run_at_once_and_are_cleaned_up() {
    if !require_privileges("two_instances_run_at_once_and_are_cleaned_up") {
        return;
    }
    let a = OvsInstance::builder().vswitchd(true).start().unwrap();
    let b = OvsInstance::builder().vswitchd(true).start().unwrap();
    assert_ne!(a.rundir(), b.rundir());
    // Each vswitchd got a private namespace (two netdev datapaths cannot share one).
    assert!(a.netns().is_some() && b.netns().is_some());
    assert_ne!(a.netns(), b.netns());
    // Same bridge name in both: management sockets must not collide.
    netdev_bridge(&a, "br-int");
    netdev_bridge(&b, "br-int");
    assert!(a.mgmt_socket("br-int").exists());
    assert!(b.mgmt_socket("br-int").exists());
    assert!(
        a.ofctl(&["show", "br-int"])
            .unwrap()
            .contains("OFPT_FEATURES_REPLY")
    );
    assert!(
        b.ofctl(&["dump-flows", "br-int"])
            .unwrap()
            .contains("actions=NORMAL")
    );
    a.vsctl(&[
        "add-br",
        "only-a",
        "--",
        "set",
        "bridge",
        "only-a",
        "datapath_type=netdev",
    ])
    .unwrap();
    assert_eq!(a.vsctl(&["list-br"]).unwrap(), "br-int\nonly-a\n");
    assert_eq!(b.vsctl(&["list-br"]).unwrap(), "br-int\n");
    assert!(
        a.appctl_vswitchd(&["version"])
            .unwrap()
            .contains("Open vSwitch")
    );

    let pids = [
        a.ovsdb_pid().unwrap(),
        a.vswitchd_pid().unwrap(),
        b.ovsdb_pid().unwrap(),
        b.vswitchd_pid().unwrap(),
    ];
    let dirs = [a.rundir().to_path_buf(), b.rundir().to_path_buf()];
    let namespaces = [
        a.netns().unwrap().to_string(),
        b.netns().unwrap().to_string(),
    ];
    drop(a);
    drop(b);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "daemon pid {pid} still running after drop"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    for netns in namespaces {
        assert!(
            !std::path::Path::new("/run/netns").join(&netns).exists(),
            "{netns} not removed"
        );
    }
}

#[test]
fn ovsdb_restart_keeps_data_and_socket() {
    if !require_privileges("ovsdb_restart_keeps_data_and_socket") {
        return;
    }
    let mut ovs = OvsInstance::builder().start().unwrap();
    assert!(!ovs.has_vswitchd());
    netdev_bridge(&ovs, "br0");
    let old_pid = ovs.ovsdb_pid().unwrap();
    ovs.restart_ovsdb().unwrap();
    assert_ne!(ovs.ovsdb_pid().unwrap(), old_pid);
    UnixStream::connect(ovs.db_socket()).unwrap();
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), "br0\n");

    // A crash (SIGKILL) leaves the socket file behind; start must cope.
    ovs.kill_ovsdb();
    assert!(ovs.vsctl(&["list-br"]).is_err());
    ovs.start_ovsdb().unwrap();
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), "br0\n");
}

#[test]
fn vswitchd_can_be_killed_and_restarted() {
    if !require_privileges("vswitchd_can_be_killed_and_restarted") {
        return;
    }
    let mut ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    netdev_bridge(&ovs, "br0");
    let pid = ovs.vswitchd_pid().unwrap();
    ovs.kill_vswitchd();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(ovs.appctl_vswitchd(&["version"]).is_err());
    ovs.start_vswitchd().unwrap();
    // The restarted vswitchd reads the bridge back from the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ovs.mgmt_socket("br0").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "br0.mgmt never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ovs.ofctl(&["show", "br0"]).unwrap().contains("br0"));
}

#[test]
fn instance_in_netns_sees_only_its_namespace() {
    if !require_privileges("instance_in_netns_sees_only_its_namespace") {
        return;
    }
    let netns = Netns::new("sy-harness").unwrap();
    assert!(netns.path().exists());
    let ovs = OvsInstance::builder()
        .netns(Some(netns.name()))
        .vswitchd(true)
        .start()
        .unwrap();
    assert_eq!(ovs.netns(), Some(netns.name()));
    // The daemon really runs in the namespace.
    let pid = ovs.vswitchd_pid().unwrap();
    let daemon_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let own_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(daemon_ns, own_ns);

    // A veth inside the namespace can be attached; an internal port shows up
    // as a tap device in the namespace, not in ours.
    let veth = VethPair::new("syh", Some(netns.name())).unwrap();
    netdev_bridge(&ovs, "br-ns");
    ovs.vsctl(&["add-port", "br-ns", veth.name()]).unwrap();
    let ofport = ovs
        .vsctl(&["get", "Interface", veth.name(), "ofport"])
        .unwrap();
    assert!(ofport.trim().parse::<i64>().unwrap() > 0, "ofport {ofport}");
    let out = netns
        .command("ip")
        .args(["link", "show", "br-ns"])
        .output()
        .unwrap();
    assert!(out.status.success(), "br-ns tap missing in netns");
    let host = Command::new("ip")
        .args(["link", "show", "br-ns"])
        .output()
        .unwrap();
    assert!(
        !host.status.success(),
        "br-ns leaked into the host namespace"
    );

    let name = netns.name().to_string();
    drop(ovs);
    drop(veth);
    drop(netns);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

#[test]
fn empty_db_has_no_root_row() {
    if !require_privileges("empty_db_has_no_root_row") {
        return;
    }
    let count_rows = |ovs: &OvsInstance| {
        let out = ovs
            .ovsdb_client(
                "transact",
                &[r#"["Open_vSwitch",{"op":"select","table":"Open_vSwitch","where":[]}]"#],
            )
            .unwrap();
        out.matches("_uuid").count()
    };
    let ovs = OvsInstance::builder().empty_db(true).start().unwrap();
    assert_eq!(count_rows(&ovs), 0);
    let inited = OvsInstance::builder().start().unwrap();
    assert_eq!(count_rows(&inited), 1);
}

#[test]
fn cleanup_happens_on_panic() {
    if !require_privileges("cleanup_happens_on_panic") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
        tx.send((
            ovs.rundir().to_path_buf(),
            ovs.ovsdb_pid().unwrap(),
            ovs.vswitchd_pid().unwrap(),
        ))
        .unwrap();
        panic!("deliberate panic with a live instance");
    })
    .join();
    assert!(result.is_err());
    let (dir, ovsdb, vswitchd) = rx.recv().unwrap();
    assert!(!dir.exists());
    for pid in [ovsdb, vswitchd] {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
