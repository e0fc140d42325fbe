//! switchyard-agent on real OVS (userspace datapath) in a node network
//! namespace, driven through the real `switchyard` CNI binary. See
//! `support/mod.rs` for the lab. Needs root and openvswitch-switch.

mod support;

use std::time::Duration;

use support::*;
use switchyard_agent::Agent;

const START_TIMEOUT: Duration = Duration::from_secs(30);

async fn start_agent(lab: &NodeLab, segments: Option<&str>) -> switchyard_agent::AgentHandle {
    tokio::time::timeout(START_TIMEOUT, Agent::start(lab.agent_config(segments)))
        .await
        .expect("agent start timed out")
        .expect("agent start")
}

#[test]
fn add_gives_working_pods() {
    node_test("add_gives_working_pods", |lab| async move {
        let agent = start_agent(&lab, None).await;
        let cidr = agent.pod_cidr().to_string();
        // The CNI socket: 0600 in a 0700 directory.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&lab.socket()), 0o600);
        assert_eq!(mode(lab.socket().parent().unwrap()), 0o700);
        let gw = gateway_of(&cidr).to_string();
        // The gateway holds the first address of the pod CIDR in the node.
        let addrs = cmd_ok(&["ip", "-4", "-o", "addr", "show", "dev", "sy-gw0"]).await;
        assert!(addrs.contains(&format!("{gw}/24")), "{addrs}");

        lab.create_pod("default", "a", &[]).await;
        lab.create_pod("default", "b", &[]).await;
        let a = PodNs::new("default", "a");
        let b = PodNs::new("default", "b");
        let add_a = cni_add(&lab, &a).await;
        assert!(add_a.success, "ADD a: {} {}", add_a.stdout, add_a.stderr);
        let add_b = cni_add(&lab, &b).await;
        assert!(add_b.success, "ADD b: {} {}", add_b.stdout, add_b.stderr);
        let (ip_a, ip_b) = (add_a.ip(), add_b.ip());
        assert_ne!(ip_a, ip_b);

        // The CNI result: host veth, pod interface in its sandbox, address
        // with gateway, default route, DNS from the conflist.
        let j = add_a.json();
        assert_eq!(j["interfaces"][1]["name"], "eth0");
        assert_eq!(j["interfaces"][1]["sandbox"], a.netns_path());
        assert_eq!(j["ips"][0]["gateway"], gw.as_str());
        assert_eq!(j["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
        let host_if = j["interfaces"][0]["name"].as_str().unwrap().to_string();

        // Pod to pod, pod to gateway, node to pods.
        assert!(a.ping(&ip_b).await, "a cannot ping b");
        assert!(b.ping(&ip_a).await, "b cannot ping a");
        assert!(a.ping(&gw).await, "a cannot ping the gateway");
        let node_ping = cmd(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_a]).await;
        assert!(node_ping.status.success(), "node cannot ping a");
        let node_ping = cmd(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b]).await;
        assert!(node_ping.status.success(), "node cannot ping b");
        // TCP works too (checksum offload off on the pod end, every
        // connection committed in the pod zone): HTTP from a to b.
        let tx = a.exec(&["ethtool", "-k", "eth0"]).await;
        assert!(
            String::from_utf8_lossy(&tx.stdout).contains("tx-checksumming: off"),
            "tx checksum offload still on"
        );
        let _server = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                b.netns.name(),
                "python3",
                "-m",
                "http.server",
                "8080",
            ])
            .current_dir(lab.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 http.server in pod b");
        let url = format!("http://{ip_b}:8080/");
        eventually("HTTP from pod a to pod b", Duration::from_secs(20), || {
            let url = url.clone();
            let a = &a;
            async move {
                a.exec(&["curl", "-sf", "--max-time", "2", "-o", "/dev/null", &url])
                    .await
                    .status
                    .success()
            }
        })
        .await;

        // The OVS port: no tag for the untagged default segment, the
        // external_ids.
        let ids = lab.vsctl(&["get", "Port", &host_if, "external_ids"]);
        for want in [
            "\"switchyard.io/pod-namespace\"=default",
            "\"switchyard.io/pod-name\"=a",
            &format!("\"switchyard.io/container-id\"={}", a.container_id),
            "\"switchyard.io/ifname\"=eth0",
            &format!("\"switchyard.io/ip\"=\"{ip_a}/24\""),
            "\"switchyard.io/segment\"=default",
            "\"switchyard.io/vlan\"=\"0\"",
        ] {
            assert!(ids.contains(want), "{want} not in {ids}");
        }
        assert!(ids.contains(&a.netns_path()), "{ids}");
        let ofport = lab.vsctl(&["get", "Interface", &host_if, "ofport"]);
        let flows = lab.dump_flows();
        assert!(
            flows.contains(&format!("in_port={}", ofport.trim())),
            "no classifier flow for ofport {ofport}: {flows}"
        );
        assert!(flows.contains(&format!("nw_dst={ip_a}")), "{flows}");
        assert_eq!(lab.pod_flow_count(), 2 * flows_per_pod(), "{flows}");

        // A retried ADD returns the same result and creates nothing new.
        let again = cni_add(&lab, &a).await;
        assert!(again.success, "{}", again.stdout);
        assert_eq!(
            again.json(),
            add_a.json(),
            "a retried ADD changed the result"
        );
        assert_eq!(lab.pod_ports().len(), 2);

        // Metrics.
        let metrics = http_get(agent.metrics_addr(), "/metrics").await;
        assert!(
            metrics.contains("switchyard_agent_cni_add_total{result=\"success\"} 3"),
            "{metrics}"
        );
        assert!(
            metrics.contains("switchyard_agent_pods_attached 2"),
            "{metrics}"
        );
        assert!(
            http_get(agent.metrics_addr(), "/readyz")
                .await
                .contains("ready")
        );

        agent.shutdown().await;
    });
}

#[test]
fn concurrent_adds_of_one_container_are_serialised() {
    node_test(
        "concurrent_adds_of_one_container_are_serialised",
        |lab| async move {
            let agent = start_agent(&lab, None).await;
            lab.create_pod("default", "same", &[]).await;
            let pod = PodNs::new("default", "same");
            let outs = futures::future::join_all((0..5).map(|_| cni_add(&lab, &pod))).await;
            let first = outs[0].json();
            for out in &outs {
                assert!(out.success, "{}", out.stdout);
                assert_eq!(
                    out.json(),
                    first,
                    "concurrent ADDs of one attachment differ"
                );
            }
            assert_eq!(lab.pod_ports().len(), 1);
            assert_eq!(lab.pod_flow_count(), flows_per_pod());
            assert_eq!(agent.allocations().len(), 1);
            agent.shutdown().await;
        },
    );
}

/// DEL returns once the removal of the pod's flows is queued, not
/// confirmed: a pod added right after it, given the freed ofport (the
/// lowest free one is requested) and the flows cookie that goes with it,
/// keeps its flows (the delete reached vswitchd first) and works.
#[test]
fn a_pod_added_right_after_a_del_keeps_its_flows() {
    node_test(
        "a_pod_added_right_after_a_del_keeps_its_flows",
        |lab| async move {
            let agent = start_agent(&lab, None).await;
            lab.create_pod("default", "server", &[]).await;
            let server = PodNs::new("default", "server");
            let out = cni_add(&lab, &server).await;
            assert!(out.success, "ADD server: {}", out.stdout);
            let server_ip = out.ip();
            let ofport_of = |out: &CniOutput| {
                let host_if = out.json()["interfaces"][0]["name"]
                    .as_str()
                    .unwrap()
                    .to_string();
                lab.vsctl(&["get", "Interface", &host_if, "ofport"])
                    .trim()
                    .to_string()
            };
            let mut previous: Option<(PodNs, String)> = None;
            let mut reused = 0;
            for round in 0..8 {
                let name = format!("c{round}");
                lab.create_pod("default", &name, &[]).await;
                let pod = PodNs::new("default", &name);
                let freed = match previous.take() {
                    Some((old, ofport)) => {
                        let del = cni_del(&lab, &old).await;
                        assert!(del.success, "DEL {round}: {}", del.stdout);
                        Some(ofport)
                    }
                    None => None,
                };
                let out = cni_add(&lab, &pod).await;
                assert!(out.success, "ADD {name}: {}", out.stdout);
                let ofport = ofport_of(&out);
                if freed.as_deref() == Some(ofport.as_str()) {
                    reused += 1;
                }
                // No polling: the ADD's flows were confirmed after the
                // earlier DEL's delete reached vswitchd.
                assert_eq!(
                    lab.pod_flow_count(),
                    2 * flows_per_pod(),
                    "round {round} (ofport {ofport}, freed {freed:?}): {}",
                    lab.dump_flows()
                );
                assert!(pod.ping(&server_ip).await, "{name} cannot reach the server");
                previous = Some((pod, ofport));
            }
            assert!(reused > 0, "no ADD was given the ofport its DEL freed");
            agent.shutdown().await;
        },
    );
}

#[test]
fn vlans_isolate_pods() {
    node_test("vlans_isolate_pods", |lab| async move {
        // A pod's own VLAN (r1): the cluster admin lets `default`'s pods choose.
        lab.annotate_namespace("default", &[("switchyard.io/pod-placement", "allow")])
            .await;
        let agent = start_agent(&lab, None).await;
        lab.create_namespace("blue", &[("switchyard.io/vlan", "100")])
            .await;
        lab.create_pod("blue", "b1", &[]).await;
        lab.create_pod("blue", "b2", &[]).await;
        lab.create_pod("default", "r1", &[("switchyard.io/vlan", "200")])
            .await;
        let b1 = PodNs::new("blue", "b1");
        let b2 = PodNs::new("blue", "b2");
        let r1 = PodNs::new("default", "r1");
        let mut ips = Vec::new();
        for pod in [&b1, &b2, &r1] {
            let out = cni_add(&lab, pod).await;
            assert!(out.success, "ADD {}: {}", pod.name, out.stdout);
            let host_if = out.json()["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .to_string();
            ips.push((out.ip(), host_if));
        }
        // Tags follow the namespace annotation and the pod annotation.
        assert_eq!(lab.vsctl(&["get", "Port", &ips[0].1, "tag"]).trim(), "100");
        assert_eq!(lab.vsctl(&["get", "Port", &ips[1].1, "tag"]).trim(), "100");
        assert_eq!(lab.vsctl(&["get", "Port", &ips[2].1, "tag"]).trim(), "200");
        // Same VLAN talks, different VLANs do not; the node reaches all.
        assert!(b1.ping(&ips[1].0).await, "same-VLAN pods cannot talk");
        assert!(!b1.ping_once(&ips[2].0).await, "VLAN 100 reached VLAN 200");
        assert!(!r1.ping_once(&ips[0].0).await, "VLAN 200 reached VLAN 100");
        for (ip, _) in &ips {
            let out = cmd(&["ping", "-c", "1", "-W", "1", ip]).await;
            assert!(out.status.success(), "node cannot reach {ip}");
        }
        agent.shutdown().await;
    });
}

/// Placement is the namespace owner's decision: a pod annotated to another segment in a plain
/// namespace gets CNI error 100 naming the rule and the namespace annotation that would allow
/// it, and nothing is made; in a namespace carrying `switchyard.io/pod-placement: allow` the same
/// request gets the other segment's VLAN tag on its port. A static MAC another pod of the
/// segment uses on the node is refused (100), the same MAC on another segment is not.
#[test]
fn pod_placement_is_the_namespace_owners_decision() {
    node_test(
        "pod_placement_is_the_namespace_owners_decision",
        |lab| async move {
            let segments = "segments:\n- name: default\n  kind: overlay\n- name: green\n  kind: overlay\n  vlan: 300\n";
            let agent = start_agent(&lab, Some(segments)).await;
            let green = [("switchyard.io/segment", "green")];

            lab.create_namespace("plain", &[]).await;
            lab.create_pod("plain", "p", &green).await;
            let p = PodNs::new("plain", "p");
            let out = cni_add(&lab, &p).await;
            assert!(!out.success, "{}", out.stdout);
            assert_eq!(out.code(), 100, "{}", out.stdout);
            let details = out.json()["details"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                details.contains("switchyard.io/segment=\"green\" is refused")
                    && details.contains("namespace \"plain\"")
                    && details.contains("placement is the namespace owner's decision")
                    && details.contains("switchyard.io/pod-placement=allow"),
                "{}",
                out.stdout
            );
            // Nothing made: no port, no veth, no flows, no address.
            assert_nothing_left(&lab).await;
            assert_eq!(agent.allocations(), vec![], "address held");
            let in_pod = p.exec(&["ip", "-o", "link", "show"]).await;
            let links = String::from_utf8_lossy(&in_pod.stdout).to_string();
            assert!(!links.contains("eth0"), "eth0 made in the pod: {links}");
            // Another VLAN is refused the same way; repeating the namespace's
            // choice is fine (untagged on the default segment).
            lab.create_pod("plain", "v", &[("switchyard.io/vlan", "300")])
                .await;
            let out = cni_add(&lab, &PodNs::new("plain", "v")).await;
            assert_eq!(out.code(), 100, "{}", out.stdout);
            assert_nothing_left(&lab).await;
            lab.create_pod("plain", "same", &[("switchyard.io/segment", "default")])
                .await;
            let out = cni_add(&lab, &PodNs::new("plain", "same")).await;
            assert!(out.success, "{}", out.stdout);
            let same_if = out.json()["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(lab.vsctl(&["get", "Port", &same_if, "tag"]).trim(), "[]");

            // The cluster admin lets the namespace's pods choose: the same pod gets
            // green's VLAN on its port.
            lab.create_namespace("free", &[("switchyard.io/pod-placement", "allow")])
                .await;
            lab.create_pod("free", "p", &green).await;
            let out = cni_add(&lab, &PodNs::new("free", "p")).await;
            assert!(out.success, "{}", out.stdout);
            let host_if = out.json()["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(lab.vsctl(&["get", "Port", &host_if, "tag"]).trim(), "300");
            assert_eq!(
                lab.vsctl(&[
                    "get",
                    "Port",
                    &host_if,
                    "external_ids:\"switchyard.io/segment\""
                ])
                .trim(),
                "green"
            );

            // One pod per static MAC on a segment of the node.
            let mac = "02:00:00:00:03:01";
            lab.create_pod("free", "m1", &[green[0], ("switchyard.io/mac", mac)])
                .await;
            lab.create_pod("free", "m2", &[green[0], ("switchyard.io/mac", mac)])
                .await;
            lab.create_pod("free", "m3", &[("switchyard.io/mac", mac)])
                .await;
            let out = cni_add(&lab, &PodNs::new("free", "m1")).await;
            assert!(out.success, "{}", out.stdout);
            assert_eq!(out.json()["interfaces"][1]["mac"], mac);
            let ports = lab.pod_ports();
            let m2 = PodNs::new("free", "m2");
            let out = cni_add(&lab, &m2).await;
            assert_eq!(out.code(), 100, "{}", out.stdout);
            let details = out.json()["details"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                details.contains("switchyard.io/mac=02:00:00:00:03:01 is refused")
                    && details.contains("segment \"green\""),
                "{}",
                out.stdout
            );
            assert_eq!(lab.pod_ports(), ports, "a port was left by the refused ADD");
            assert_eq!(agent.allocations().len(), ports.len(), "address held");
            // The default segment is another L2 network: the MAC is free there.
            let out = cni_add(&lab, &PodNs::new("free", "m3")).await;
            assert!(out.success, "{}", out.stdout);
            agent.shutdown().await;
        },
    );
}

#[test]
fn vswitchd_restart_is_repaired() {
    node_test("vswitchd_restart_is_repaired", |mut lab| async move {
        let agent = start_agent(&lab, None).await;
        lab.create_pod("default", "a", &[]).await;
        lab.create_pod("default", "b", &[]).await;
        let a = PodNs::new("default", "a");
        let b = PodNs::new("default", "b");
        let add_a = cni_add(&lab, &a).await;
        assert!(add_a.success, "{}", add_a.stdout);
        let add_b = cni_add(&lab, &b).await;
        assert!(add_b.success, "{}", add_b.stdout);
        let (ip_a, ip_b) = (add_a.ip(), add_b.ip());
        assert!(a.ping(&ip_b).await);

        // ovs-vswitchd restarts: every flow is gone and the gateway tap is
        // recreated without its address. The agent notices the OpenFlow
        // reconnect and repairs both.
        lab.ovs.kill_vswitchd();
        lab.ovs.start_vswitchd().expect("restart vswitchd");
        eventually(
            "pod to pod after the restart",
            Duration::from_secs(30),
            || {
                let (a, ip_b) = (&a, ip_b.clone());
                async move { a.ping_once(&ip_b).await }
            },
        )
        .await;
        eventually(
            "node to pod after the restart",
            Duration::from_secs(30),
            || {
                let ip_a = ip_a.clone();
                async move {
                    cmd(&["ping", "-c", "1", "-W", "1", &ip_a])
                        .await
                        .status
                        .success()
                }
            },
        )
        .await;
        assert_eq!(
            lab.pod_flow_count(),
            2 * flows_per_pod(),
            "{}",
            lab.dump_flows()
        );
        let metrics = http_get(agent.metrics_addr(), "/metrics").await;
        let runs: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_agent_reconcile_runs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reconcile counter: {metrics}"));
        assert!(
            runs >= 2,
            "reconciliation after the restart not counted: {runs}"
        );
        agent.shutdown().await;
    });
}

/// Nothing of any attachment exists: no port, no veth, no pod flows.
async fn assert_nothing_left(lab: &NodeLab) {
    assert_eq!(lab.pod_ports(), Vec::<String>::new(), "ports left");
    assert_eq!(lab.host_veths().await, Vec::<String>::new(), "veths left");
    assert_eq!(
        lab.pod_flow_count(),
        0,
        "pod flows left: {}",
        lab.dump_flows()
    );
}

#[test]
fn bad_requests_fail_cleanly() {
    node_test("bad_requests_fail_cleanly", |lab| async move {
        // `default`'s pods may choose, so the range is what refuses the VLAN below.
        lab.annotate_namespace("default", &[("switchyard.io/pod-placement", "allow")])
            .await;
        let agent = start_agent(&lab, None).await;
        let cidr = agent.pod_cidr();

        // VLAN out of range on the pod.
        lab.create_pod("default", "badvlan", &[("switchyard.io/vlan", "4095")])
            .await;
        let p = PodNs::new("default", "badvlan");
        let out = cni_add(&lab, &p).await;
        assert!(!out.success);
        assert_eq!(out.code(), 100, "{}", out.stdout);
        assert!(out.stdout.contains("4095"), "{}", out.stdout);

        // Unknown segment in the namespace annotation.
        lab.create_namespace("odd", &[("switchyard.io/segment", "nope")])
            .await;
        lab.create_pod("odd", "p", &[]).await;
        let p = PodNs::new("odd", "p");
        let out = cni_add(&lab, &p).await;
        assert_eq!(out.code(), 100, "{}", out.stdout);

        // Static IP outside the pool.
        lab.create_pod("default", "badip", &[("switchyard.io/ip", "192.0.2.9")])
            .await;
        let p = PodNs::new("default", "badip");
        let out = cni_add(&lab, &p).await;
        assert_eq!(out.code(), 100, "{}", out.stdout);

        // A real network namespace, but bind-mounted outside the
        // directories a runtime uses: the agent refuses it.
        lab.create_pod("default", "badns", &[]).await;
        let p = PodNs::new("default", "badns");
        let outside = lab.dir.path().join("netns-elsewhere");
        std::fs::write(&outside, b"").unwrap();
        let _mount = BindMount::new(&p.netns_path(), &outside.display().to_string());
        let out = run_cni(
            "ADD",
            &p.container_id,
            Some(&outside.display().to_string()),
            "eth0",
            &p.cni_args(),
            &lab.conflist(),
        )
        .await;
        assert!(!out.success);
        assert_eq!(out.code(), 103, "{}", out.stdout);

        // CNI_IFNAME already taken inside the pod: fails after the address
        // was allocated; everything is rolled back.
        lab.create_pod("default", "taken", &[]).await;
        let p = PodNs::new("default", "taken");
        let made = p
            .exec(&[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
            ])
            .await;
        assert!(made.status.success(), "{made:?}");
        let out = cni_add(&lab, &p).await;
        assert_eq!(out.code(), 103, "{}", out.stdout);

        assert_nothing_left(&lab).await;
        assert_eq!(agent.allocations(), vec![], "addresses still allocated");
        // A good pod still works afterwards.
        lab.create_pod("default", "good", &[]).await;
        let good = PodNs::new("default", "good");
        let out = cni_add(&lab, &good).await;
        assert!(out.success, "{}", out.stdout);
        assert!(cidr.contains(&out.ip().parse::<std::net::Ipv4Addr>().unwrap()));
        agent.shutdown().await;
    });
}

#[test]
fn del_check_gc() {
    node_test("del_check_gc", |lab| async move {
        let agent = start_agent(&lab, None).await;
        lab.create_pod("default", "a", &[]).await;
        lab.create_pod("default", "b", &[]).await;
        let a = PodNs::new("default", "a");
        let b = PodNs::new("default", "b");
        let add_a = cni_add(&lab, &a).await;
        assert!(add_a.success, "{}", add_a.stdout);
        let add_b = cni_add(&lab, &b).await;
        assert!(add_b.success, "{}", add_b.stdout);

        // CHECK passes, then detects a deleted address.
        let mut conf = lab.conflist();
        conf["prevResult"] = add_a.json();
        let check = run_cni(
            "CHECK",
            &a.container_id,
            Some(&a.netns_path()),
            "eth0",
            &a.cni_args(),
            &conf,
        )
        .await;
        assert!(check.success, "{}", check.stdout);
        let addr = format!("{}/24", add_a.ip());
        a.exec(&["ip", "addr", "del", &addr, "dev", "eth0"]).await;
        let check = run_cni(
            "CHECK",
            &a.container_id,
            Some(&a.netns_path()),
            "eth0",
            &a.cni_args(),
            &conf,
        )
        .await;
        assert_eq!(check.code(), 105, "{}", check.stdout);
        assert!(check.stdout.contains(&addr), "{}", check.stdout);

        // DEL twice succeeds, also without the netns.
        assert!(cni_del(&lab, &a).await.success);
        assert!(cni_del(&lab, &a).await.success);
        let gone = run_cni(
            "DEL",
            &a.container_id,
            None,
            "eth0",
            &a.cni_args(),
            &lab.conflist(),
        )
        .await;
        assert!(gone.success, "{}", gone.stdout);
        assert_eq!(lab.pod_ports().len(), 1);

        // GC with an empty valid list removes b.
        let mut conf = lab.conflist();
        conf["cni.dev/valid-attachments"] = serde_json::json!([]);
        let gc = run_cni("GC", "", None, "", "", &conf).await;
        assert!(gc.success, "{} {}", gc.stdout, gc.stderr);
        assert_nothing_left(&lab).await;

        // STATUS is fine.
        let status = run_cni("STATUS", "", None, "", "", &lab.conflist()).await;
        assert!(status.success, "{}", status.stdout);
        agent.shutdown().await;
        // After shutdown STATUS says 50.
        let status = run_cni("STATUS", "", None, "", "", &lab.conflist()).await;
        assert_eq!(status.code(), 50, "{}", status.stdout);
    });
}

/// `mount --bind`, unmounted on drop.
struct BindMount(String);

impl BindMount {
    fn new(from: &str, to: &str) -> BindMount {
        sh_ok(&["mount", "--bind", from, to]);
        BindMount(to.to_string())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Pods keep starting while the API server is unreachable: ADD reads the
/// namespace from the agent's watch cache (and the runtime passes the pod's
/// annotations); only a namespace the agent has never seen is an unknown
/// answer (104). Before: every ADD read the namespace from the API server
/// and failed with 104.
#[test]
fn adds_are_served_from_the_cache_while_the_api_server_is_unreachable() {
    node_test(
        "adds_are_served_from_the_cache_while_the_api_server_is_unreachable",
        |lab| async move {
            lab.create_namespace("blue", &[("switchyard.io/vlan", "100")])
                .await;
            // The agent's first lists (which it waits for) hold "blue".
            let agent = start_agent(&lab, None).await;
            let port = lab.api.addr().port().to_string();
            reject_api(&port, "-I").await;
            let mut conf = lab.conflist();
            conf["runtimeConfig"] = serde_json::json!({
                "io.kubernetes.cri.pod-annotations": {"example.com/team": "blue"}
            });
            let pod = PodNs::new("blue", "p1");
            let add = add_with(&pod, &conf).await;
            assert!(
                add.success,
                "ADD with the API server down: {} {}",
                add.stdout, add.stderr
            );
            let host_if = add.json()["interfaces"][0]["name"]
                .as_str()
                .unwrap()
                .to_string();
            // The namespace's VLAN, from the cache.
            assert_eq!(lab.vsctl(&["get", "Port", &host_if, "tag"]).trim(), "100");
            // A namespace the agent never saw: truly unknown.
            let stranger = PodNs::new("unseen", "p2");
            let add = add_with(&stranger, &conf).await;
            assert!(!add.success);
            assert_eq!(add.code(), 104, "{}", add.stdout);
            let del = cni_del(&lab, &pod).await;
            assert!(del.success, "DEL: {} {}", del.stdout, del.stderr);
            reject_api(&port, "-D").await;
            agent.shutdown().await;
        },
    );
}

/// Inserts (`-I`) or deletes (`-D`) a rule rejecting TCP to the lab API
/// server's `port` in the node namespace.
async fn reject_api(port: &str, op: &str) {
    cmd_ok(&[
        "iptables",
        op,
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        port,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ])
    .await;
}

/// ADD of `pod` through the real binary with the network configuration `conf`.
async fn add_with(pod: &PodNs, conf: &serde_json::Value) -> CniOutput {
    run_cni(
        "ADD",
        &pod.container_id,
        Some(&pod.netns_path()),
        "eth0",
        &pod.cni_args(),
        conf,
    )
    .await
}
