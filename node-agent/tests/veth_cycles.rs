//! 100 create/delete cycles leave no interface, thread or descriptor behind.
//! Own test binary so the descriptor count is not disturbed by other tests.
//! Needs root; see tests/common/mod.rs.

mod common;

use std::time::Duration;

use common::{NodeAndPod, poll_until, privileged};
use switchyard_agent::netns::{PodInterfaceSpec, create_pod_interface, delete_pod_interface};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_create_delete_cycles_leave_nothing() {
    if !privileged("hundred_create_delete_cycles_leave_nothing") {
        return;
    }
    let NodeAndPod {
        node,
        pod,
        pod_ns,
        host,
        ..
    } = NodeAndPod::new().await;
    let fds_before = open_fds();

    for cycle in 0..100u32 {
        let spec = PodInterfaceSpec {
            container_id: format!("cycle{cycle:04}"),
            ifname: "eth0".into(),
            address: format!("10.66.{}.{}/16", cycle / 200, cycle % 200 + 2)
                .parse()
                .unwrap(),
            gateway: Some("10.66.0.1".parse().unwrap()),
            mtu: 1450,
            mac: None,
            disable_tx_checksum: true,
            gratuitous_arp: true,
        };
        let built = create_pod_interface(&host, &pod_ns, &spec).await.unwrap();
        assert_eq!(
            node.link_names(),
            vec!["lo".to_string(), built.host_ifname.clone()]
        );
        assert!(
            delete_pod_interface(&host, &spec.container_id, "eth0")
                .await
                .unwrap()
        );
    }

    assert_eq!(node.link_names(), vec!["lo"]);
    assert_eq!(pod.link_names(), vec!["lo"]);
    // Per-call netlink sockets are closed once their connection tasks stop.
    let settled = poll_until(Duration::from_secs(5), || open_fds() <= fds_before);
    assert!(
        settled,
        "descriptors leaked: {} before, {} after",
        fds_before,
        open_fds()
    );
}
