//! Pod interface on real network namespaces: a "node" namespace plays the
//! host side, a "pod" namespace the sandbox. `ip`, `ethtool` and `ping` are
//! the oracle. Needs root; see tests/common/mod.rs.

mod common;

use std::time::Duration;

use common::{NetnsGuard, NodeAndPod, PathGuard, poll_until, privileged};
use switchyard_agent::mac::MacAddr;
use switchyard_agent::netns::{
    InterfaceError, Netlink, Netns, NetnsError, NetnsPolicy, PodInterfaceSpec, RouteEntry,
    create_pod_interface, delete_pod_interface, host_ifname, inspect_pod_interface,
};

fn spec(container_id: &str) -> PodInterfaceSpec {
    PodInterfaceSpec {
        container_id: container_id.to_string(),
        ifname: "eth0".into(),
        address: "10.77.0.10/24".parse().unwrap(),
        gateway: Some("10.77.0.1".parse().unwrap()),
        mtu: 1400,
        mac: Some("0a:58:0a:4d:00:0a".parse().unwrap()),
        disable_tx_checksum: true,
        gratuitous_arp: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_pair_between_node_and_pod_namespaces() {
    if !privileged("veth_pair_between_node_and_pod_namespaces") {
        return;
    }
    let node = NetnsGuard::new("node");
    let pod = NetnsGuard::new("pod");
    // Let the node learn neighbours from gratuitous ARP, to observe it.
    let sysctl = node.exec("sysctl", &["-qw", "net.ipv4.conf.all.arp_accept=1"]);
    assert!(sysctl.status.success());
    let policy = NetnsPolicy::default();
    let node_ns = Netns::open(node.path(), &policy).unwrap();
    let pod_ns = Netns::open(pod.path(), &policy).unwrap();
    let host = Netlink::open_in(&node_ns).await.unwrap();

    let request = spec("c0ffee0001");
    let built = create_pod_interface(&host, &pod_ns, &request)
        .await
        .unwrap();
    assert_eq!(built.host_ifname, host_ifname("c0ffee0001", "eth0"));
    assert_eq!(built.pod_ifname, "eth0");
    assert_eq!(built.pod_mac.to_string(), "0a:58:0a:4d:00:0a");
    assert_eq!(built.sandbox, pod.path());

    // Oracle: iproute2 in both namespaces.
    let pod_link = pod.ip(&["link", "show", "eth0"]);
    assert!(pod_link.contains("mtu 1400"), "{pod_link}");
    assert!(
        pod_link.contains("link/ether 0a:58:0a:4d:00:0a"),
        "{pod_link}"
    );
    assert!(pod_link.contains(",UP"), "{pod_link}");
    let pod_addr = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addr.contains("inet 10.77.0.10/24"), "{pod_addr}");
    let pod_routes = pod.ip(&["-4", "route", "show"]);
    assert!(
        pod_routes.contains("default via 10.77.0.1 dev eth0"),
        "{pod_routes}"
    );
    let host_link = node.ip(&["link", "show", &built.host_ifname]);
    assert!(
        host_link.contains("mtu 1400") && host_link.contains(",UP"),
        "{host_link}"
    );
    assert!(
        host_link.contains(&format!("link/ether {}", built.host_mac)),
        "{host_link}"
    );
    assert!(
        !node.link_names().contains(&"eth0".to_string()),
        "peer must live in the pod netns only"
    );
    let features = pod.exec("ethtool", &["-k", "eth0"]);
    let features = String::from_utf8_lossy(&features.stdout);
    assert!(features.contains("tx-checksumming: off"), "{features}");

    // The gratuitous ARP taught the node the pod's MAC before any traffic.
    let learned = poll_until(Duration::from_secs(3), || {
        node.ip(&["neigh", "show", "10.77.0.10", "dev", &built.host_ifname])
            .contains("0a:58:0a:4d:00:0a")
    });
    assert!(
        learned,
        "node did not learn 10.77.0.10 from the gratuitous ARP"
    );

    // Traffic: the node end gets the gateway address; the pod pings it.
    node.ip(&["addr", "add", "10.77.0.1/24", "dev", &built.host_ifname]);
    let pinged = poll_until(Duration::from_secs(10), || {
        pod.exec("ping", &["-c", "1", "-W", "1", "10.77.0.1"])
            .status
            .success()
    });
    assert!(pinged, "pod could not ping the node end");

    // CHECK read-back agrees with what was asked.
    let state = inspect_pod_interface(&pod_ns, "eth0").await.unwrap();
    assert_eq!(state.mac, Some(request.pod_mac()));
    assert_eq!(state.mtu, Some(1400));
    assert!(state.up);
    assert!(!state.tx_checksum);
    assert_eq!(state.addresses, vec!["10.77.0.10/24".parse().unwrap()]);
    assert!(state.routes.contains(&RouteEntry {
        destination: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("10.77.0.1".parse().unwrap()),
        link_scope: false,
    }));
    assert!(
        state
            .routes
            .iter()
            .any(|r| r.destination == "10.77.0.0/24".parse().unwrap() && r.link_scope)
    );

    // A second ADD into the same pod with the same ifname but another
    // container id finds eth0 taken and changes nothing.
    let err = create_pod_interface(&host, &pod_ns, &spec("other-container"))
        .await
        .unwrap_err();
    assert!(matches!(err, InterfaceError::AlreadyExists { .. }), "{err}");
    assert!(
        err.to_string().contains("eth0 already exists in netns"),
        "{err}"
    );
    assert_eq!(
        node.link_names().len(),
        2,
        "refused ADD left something: {:?}",
        node.link_names()
    );

    // Delete twice: the second is a no-op.
    assert!(
        delete_pod_interface(&host, "c0ffee0001", "eth0")
            .await
            .unwrap()
    );
    assert!(
        !delete_pod_interface(&host, "c0ffee0001", "eth0")
            .await
            .unwrap()
    );
    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(pod.link_names(), vec!["lo"]);
    let err = inspect_pod_interface(&pod_ns, "eth0").await.unwrap_err();
    assert!(matches!(err, InterfaceError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_outside_prefix_gets_an_on_link_route_and_derived_mac() {
    if !privileged("gateway_outside_prefix_gets_an_on_link_route_and_derived_mac") {
        return;
    }
    let NodeAndPod {
        node,
        pod,
        pod_ns,
        host,
        ..
    } = NodeAndPod::new().await;

    let request = PodInterfaceSpec {
        container_id: "deadbeef".into(),
        ifname: "net1".into(),
        address: "10.88.0.5/32".parse().unwrap(),
        gateway: Some("169.254.1.1".parse().unwrap()),
        mtu: 1450,
        mac: None,
        disable_tx_checksum: false,
        gratuitous_arp: false,
    };
    let built = create_pod_interface(&host, &pod_ns, &request)
        .await
        .unwrap();
    assert_eq!(built.pod_mac, MacAddr::derived_local(b"deadbeef/net1"));
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains("169.254.1.1 dev net1 proto static scope link"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 169.254.1.1 dev net1"),
        "{routes}"
    );
    let features = pod.exec("ethtool", &["-k", "net1"]);
    assert!(String::from_utf8_lossy(&features.stdout).contains("tx-checksumming: on"));
    let state = inspect_pod_interface(&pod_ns, "net1").await.unwrap();
    assert!(state.tx_checksum);
    assert!(state.routes.contains(&RouteEntry {
        destination: "169.254.1.1/32".parse().unwrap(),
        gateway: None,
        link_scope: true,
    }));

    // ADD again for the same container and ifname (a retry after a lost
    // reply): the earlier pair is replaced by an identical one.
    let again = create_pod_interface(&host, &pod_ns, &request)
        .await
        .unwrap();
    assert_eq!(again.pod_mac, built.pod_mac);
    assert_eq!(node.link_names().len(), 2, "{:?}", node.link_names());
    assert_eq!(pod.link_names(), vec!["lo", "net1"]);
    delete_pod_interface(&host, "deadbeef", "net1")
        .await
        .unwrap();
    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(pod.link_names(), vec!["lo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_succeeds_when_the_pod_netns_is_gone() {
    if !privileged("delete_succeeds_when_the_pod_netns_is_gone") {
        return;
    }
    let node = NetnsGuard::new("node");
    let pod = NetnsGuard::new("pod");
    let policy = NetnsPolicy::default();
    let node_ns = Netns::open(node.path(), &policy).unwrap();
    let host = Netlink::open_in(&node_ns).await.unwrap();
    {
        let pod_ns = Netns::open(pod.path(), &policy).unwrap();
        let mut request = spec("gone0001");
        request.gratuitous_arp = false;
        create_pod_interface(&host, &pod_ns, &request)
            .await
            .unwrap();
    }
    // Destroying the pod namespace destroys the peer and so the pair.
    drop(pod);
    let gone = poll_until(Duration::from_secs(5), || node.link_names() == vec!["lo"]);
    assert!(gone, "veth survived its namespace: {:?}", node.link_names());
    assert!(
        !delete_pod_interface(&host, "gone0001", "eth0")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    if !privileged("bad_requests_change_nothing") {
        return;
    }
    let NodeAndPod {
        node,
        pod,
        pod_ns,
        host,
        ..
    } = NodeAndPod::new().await;

    let mut bad_name = spec("bad1");
    bad_name.ifname = "this-name-is-too-long".into();
    let err = create_pod_interface(&host, &pod_ns, &bad_name)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("longer than 15 bytes"), "{err}");

    let mut bad_mtu = spec("bad2");
    bad_mtu.mtu = 10;
    assert!(matches!(
        create_pod_interface(&host, &pod_ns, &bad_mtu).await,
        Err(InterfaceError::InvalidSpec(_))
    ));

    let mut multicast = spec("bad3");
    multicast.mac = Some("01:00:5e:00:00:01".parse().unwrap());
    assert!(matches!(
        create_pod_interface(&host, &pod_ns, &multicast).await,
        Err(InterfaceError::InvalidSpec(_))
    ));

    for gateway in ["127.0.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.0"] {
        let mut bad_gateway = spec("bad4");
        bad_gateway.gateway = Some(gateway.parse().unwrap());
        let err = create_pod_interface(&host, &pod_ns, &bad_gateway)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid pod interface request: gateway {gateway} is not a unicast address")
        );
    }

    // Fails after the pair exists: the pod netns already routes the gateway
    // elsewhere, so the on-link route cannot be added. The pair is rolled back.
    pod.ip(&["route", "add", "169.254.1.1/32", "dev", "lo"]);
    let mut clash = spec("bad5");
    clash.address = "10.88.0.5/32".parse().unwrap();
    clash.gateway = Some("169.254.1.1".parse().unwrap());
    clash.gratuitous_arp = false;
    let err = create_pod_interface(&host, &pod_ns, &clash)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("adding on-link route to gateway eth0 in netns /var/run/netns/sypod-"),
        "{message}"
    );
    assert!(message.contains("File exists"), "{message}");
    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(pod.link_names(), vec!["lo"]);
}

#[test]
fn netns_path_validation_rejects_bad_paths() {
    if !privileged("netns_path_validation_rejects_bad_paths") {
        return;
    }
    let policy = NetnsPolicy::default();
    let ns = NetnsGuard::new("valid");
    let opened = Netns::open(ns.path(), &policy).unwrap();
    assert_eq!(opened.path(), ns.path());
    let same = Netns::open(format!("/run/netns/{}", ns.name), &policy).unwrap();
    assert!(opened.same_namespace(&same));

    let missing = format!("/var/run/netns/{}", common::unique("missing"));
    assert!(matches!(
        Netns::open(&missing, &policy),
        Err(NetnsError::NotFound(_))
    ));

    let regular = PathGuard(format!("/run/netns/{}", common::unique("regular")).into());
    std::fs::write(&regular.0, b"not a namespace").unwrap();
    let err = Netns::open(&regular.0, &policy).unwrap_err();
    assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
    assert!(err.to_string().contains("regular file"), "{err}");

    let tmp = tempfile::NamedTempFile::new().unwrap();
    let err = Netns::open(tmp.path(), &policy).unwrap_err();
    assert!(matches!(err, NetnsError::NotAllowed { .. }), "{err}");
    let tmp_x = PathGuard(format!("/tmp/{}", common::unique("x")).into());
    std::fs::write(&tmp_x.0, b"").unwrap();
    assert!(matches!(
        Netns::open(&tmp_x.0, &policy),
        Err(NetnsError::NotAllowed { .. })
    ));

    let err = Netns::open("/var/run/netns/../../etc/passwd", &policy).unwrap_err();
    assert!(matches!(err, NetnsError::ParentComponent(_)), "{err}");

    let link_out = PathGuard(format!("/run/netns/{}", common::unique("link")).into());
    std::os::unix::fs::symlink("/etc/passwd", &link_out.0).unwrap();
    let err = Netns::open(&link_out.0, &policy).unwrap_err();
    assert!(
        matches!(err, NetnsError::NotAllowed { ref resolved, .. } if resolved.as_path() == std::path::Path::new("/etc/passwd")),
        "{err}"
    );

    let link_in = PathGuard(format!("/run/netns/{}", common::unique("link")).into());
    std::os::unix::fs::symlink(&regular.0, &link_in.0).unwrap();
    assert!(matches!(
        Netns::open(&link_in.0, &policy),
        Err(NetnsError::NotNetns { .. })
    ));

    // A directory under an allowed prefix is not a namespace either.
    let dir = format!("/run/netns/{}", common::unique("dir"));
    std::fs::create_dir(&dir).unwrap();
    let err = Netns::open(&dir, &policy);
    std::fs::remove_dir(&dir).unwrap();
    assert!(matches!(err, Err(NetnsError::NotNetns { .. })));

    // /proc/<pid>/ns/net of a process in a pod namespace is accepted; with
    // allow_proc off it is not; the agent's own namespace never is.
    let sleeper = common::ChildGuard(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "30"])
            .spawn()
            .unwrap(),
    );
    let proc_path = format!("/proc/{}/ns/net", sleeper.0.id());
    // `ip netns exec` enters the namespace right after it starts; poll for it.
    let entered = poll_until(Duration::from_secs(5), || {
        Netns::open(&proc_path, &policy).is_ok_and(|n| n.same_namespace(&opened))
    });
    let strict = NetnsPolicy {
        allow_proc: false,
        ..NetnsPolicy::default()
    };
    let strict_result = Netns::open(&proc_path, &strict);
    drop(sleeper);
    assert!(entered, "{proc_path} never became the pod namespace");
    assert!(matches!(strict_result, Err(NetnsError::NotAllowed { .. })));
    let own = format!("/proc/{}/ns/net", std::process::id());
    let err = Netns::open(&own, &policy).unwrap_err();
    assert!(matches!(err, NetnsError::OwnNamespace(_)), "{err}");
    assert!(Netns::open("/proc/self/ns/net", &policy).is_err());
}

/// A host end left by an earlier attempt that died half-way (the name the
/// pair would get is taken in the node namespace) is removed with its peer
/// and the pair made again: the pod gets a working eth0, nothing else stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_host_end_is_replaced() {
    if !privileged("leftover_host_end_is_replaced") {
        return;
    }
    let NodeAndPod {
        node,
        pod,
        pod_ns,
        host,
        ..
    } = NodeAndPod::new().await;

    let leftover = host_ifname("c0ffee0003", "eth0");
    node.ip(&[
        "link", "add", &leftover, "type", "veth", "peer", "name", "oldpeer",
    ]);
    let mut request = spec("c0ffee0003");
    request.gratuitous_arp = false;
    let built = create_pod_interface(&host, &pod_ns, &request)
        .await
        .unwrap();
    assert_eq!(built.host_ifname, leftover);
    let mut names = node.link_names();
    names.sort();
    assert_eq!(names, vec!["lo".to_string(), leftover.clone()]);
    let pod_link = pod.ip(&["-d", "link", "show", "eth0"]);
    assert!(pod_link.contains(",UP"), "{pod_link}");
    assert!(pod.ip(&["addr", "show", "eth0"]).contains("10.77.0.10/24"));
    let host_link = node.ip(&["link", "show", &leftover]);
    assert!(host_link.contains(",UP"), "{host_link}");
}
