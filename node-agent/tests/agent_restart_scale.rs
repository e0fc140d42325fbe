//! The `switchyard-agent` binary killed and restarted under traffic, and
//! requests at scale (100 concurrent ADDs, ADD/DEL cycles), on real OVS
//! through the real `switchyard` binary. Needs root and openvswitch-switch.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use support::*;

/// The agent's flows without counters and cookies (which carry the
/// generation), sorted.
fn normalized_flows(lab: &NodeLab) -> Vec<String> {
    let mut flows: Vec<String> = lab
        .dump_flows()
        .lines()
        .filter(|l| l.contains("cookie=0x5359"))
        .map(|l| {
            l.split(", ")
                .filter(|part| {
                    !(part.trim_start().starts_with("cookie=")
                        || part.starts_with("duration=")
                        || part.starts_with("n_packets=")
                        || part.starts_with("n_bytes=")
                        || part.starts_with("idle_age=")
                        || part.starts_with("hard_age="))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    flows.sort();
    flows
}

fn ping_counts(output: &str) -> (u32, u32) {
    // "160 packets transmitted, 160 received, 0% packet loss, ..."
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {output}"));
    let nums: Vec<u32> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn not_ready_until_ovs_is_there() {
    node_test("not_ready_until_ovs_is_there", |lab| async move {
        // OVSDB unreachable: the agent keeps waiting and opens no socket.
        let mut args = lab.agent_args();
        let i = args.iter().position(|a| a == "--ovsdb-endpoint").unwrap();
        args[i + 1] = format!("unix:{}", lab.dir.path().join("no-db.sock").display());
        let waiting = AgentProcess::spawn(&lab, "agent-waiting.log", &args);
        lab.create_pod("default", "early", &[]).await;
        let early = PodNs::new("default", "early");
        // Wait until it got as far as it can: waiting for OVSDB.
        if std::env::var_os("SWITCHYARD_AGENT_LOG_STDERR").is_none() {
            let log = lab.dir.path().join("agent-waiting.log");
            eventually(
                "the agent waiting for OVSDB",
                Duration::from_secs(30),
                || {
                    let log = log.clone();
                    async move {
                        std::fs::read_to_string(&log)
                            .is_ok_and(|t| t.contains("cannot reach OVSDB yet"))
                    }
                },
            )
            .await;
        }
        let status = run_cni("STATUS", "", None, "", "", &lab.conflist()).await;
        assert_eq!(status.code(), 50, "{}", status.stdout);
        let add = cni_add(&lab, &early).await;
        assert_eq!(add.code(), 11, "{}", add.stdout);
        assert_eq!(lab.vsctl(&["list-br"]).trim(), "", "bridge created early");
        drop(waiting);
        // With OVS reachable, the same requests succeed.
        let _agent = AgentProcess::start(&lab, "agent.log").await;
        let status = run_cni("STATUS", "", None, "", "", &lab.conflist()).await;
        assert!(status.success, "{}", status.stdout);
        let add = cni_add(&lab, &early).await;
        assert!(add.success, "{}", add.stdout);
    });
}

#[test]
fn restart_under_traffic_loses_no_ping() {
    node_test("restart_under_traffic_loses_no_ping", |lab| async move {
        let mut agent = AgentProcess::start(&lab, "agent-1.log").await;
        lab.create_pod("default", "a", &[]).await;
        lab.create_pod("default", "b", &[]).await;
        let a = PodNs::new("default", "a");
        let b = PodNs::new("default", "b");
        let add_a = cni_add(&lab, &a).await;
        assert!(add_a.success, "{}", add_a.stdout);
        let add_b = cni_add(&lab, &b).await;
        assert!(add_b.success, "{}", add_b.stdout);
        let ip_b = add_b.ip();
        assert!(a.ping(&ip_b).await);
        let flows_before = normalized_flows(&lab);
        let ports_before = lab.pod_ports();

        // 160 pings at 50 ms (8 s): the agent is killed after 20 replies and
        // restarted; at least 20 replies must come after the new agent is up.
        let mut ping = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                a.netns.name(),
                "ping",
                "-i",
                "0.05",
                "-c",
                "160",
                "-W",
                "1",
                &ip_b,
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(ping.stdout.take().unwrap()).lines();
        let mut text = String::new();
        let mut replies = 0;
        while replies < 20 {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("fewer than 20 ping replies in 10 s: {text}"))
                .unwrap()
                .unwrap_or_else(|| panic!("ping ended before 20 replies: {text}"));
            replies += usize::from(line.contains("bytes from"));
            text.push_str(&line);
            text.push('\n');
        }
        agent.kill9();
        drop(agent);
        let restarted = AgentProcess::start(&lab, "agent-2.log").await;
        let mut after_restart = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            after_restart += usize::from(line.contains("bytes from"));
            text.push_str(&line);
            text.push('\n');
        }
        assert!(ping.wait().await.unwrap().success(), "{text}");
        assert!(
            after_restart >= 20,
            "only {after_restart} replies after the restarted agent was up: {text}"
        );
        let (sent, received) = ping_counts(&text);
        assert_eq!(sent, 160);
        assert_eq!(received, 160, "pings lost across the restart: {text}");

        // Same ports, same flows (new cookie generation), traffic still flows.
        assert_eq!(lab.pod_ports(), ports_before, "ports changed");
        let flows_after = normalized_flows(&lab);
        assert_eq!(flows_after, flows_before, "flows differ after restart");
        let generations: BTreeSet<String> = lab
            .dump_flows()
            .lines()
            .filter_map(|l| {
                l.split("cookie=0x535901")
                    .nth(1)
                    .map(|c| c[..2].to_string())
            })
            .collect();
        assert_eq!(generations.len(), 1, "old generation left: {generations:?}");
        assert!(a.ping(&ip_b).await);
        // The restarted agent knows the pods: DEL and a new ADD work.
        assert!(cni_del(&lab, &a).await.success);
        assert_eq!(lab.pod_ports().len(), 1);
        drop(restarted);
    });
}

#[test]
fn restart_removes_ports_of_vanished_pods() {
    node_test("restart_removes_ports_of_vanished_pods", |lab| async move {
        let mut agent = AgentProcess::start(&lab, "agent-1.log").await;
        lab.create_pod("default", "keep", &[]).await;
        lab.create_pod("default", "gone", &[]).await;
        lab.create_pod("default", "deleted", &[]).await;
        let keep = PodNs::new("default", "keep");
        let gone = PodNs::new("default", "gone");
        let deleted = PodNs::new("default", "deleted");
        let mut results = Vec::new();
        for p in [&keep, &gone, &deleted] {
            let out = cni_add(&lab, p).await;
            assert!(out.success, "{}", out.stdout);
            results.push(out.json());
        }
        assert_eq!(lab.pod_ports().len(), 3);
        agent.kill9();
        // While the agent is down: one pod's netns disappears, another pod
        // is deleted from the API server.
        drop(gone);
        lab.delete_pod("default", "deleted").await;
        let _agent = AgentProcess::start(&lab, "agent-2.log").await;
        assert_eq!(lab.pod_ports().len(), 1, "stale ports kept");
        assert_eq!(lab.host_veths().await.len(), 1, "stale veths kept");
        assert_eq!(
            lab.pod_flow_count(),
            flows_per_pod(),
            "{}",
            lab.dump_flows()
        );
        let check = {
            let mut conf = lab.conflist();
            conf["prevResult"] = results[0].clone();
            run_cni(
                "CHECK",
                &keep.container_id,
                Some(&keep.netns_path()),
                "eth0",
                &keep.cni_args(),
                &conf,
            )
            .await
        };
        assert!(check.success, "{}", check.stdout);
    });
}

#[test]
fn hundred_concurrent_adds_get_unique_addresses() {
    node_test(
        "hundred_concurrent_adds_get_unique_addresses",
        |lab| async move {
            let _agent = AgentProcess::start(&lab, "agent.log").await;
            let mut pods = Vec::new();
            for i in 0..100 {
                let name = format!("p{i}");
                lab.create_pod("default", &name, &[]).await;
                pods.push(PodNs::new("default", &name));
            }
            let conf = lab.conflist();
            let adds = futures::future::join_all(pods.iter().map(|p| {
                let conf = conf.clone();
                async move {
                    run_cni(
                        "ADD",
                        &p.container_id,
                        Some(&p.netns_path()),
                        "eth0",
                        &p.cni_args(),
                        &conf,
                    )
                    .await
                }
            }))
            .await;
            let mut ips = BTreeSet::new();
            for (p, out) in pods.iter().zip(&adds) {
                assert!(out.success, "ADD {}: {} {}", p.name, out.stdout, out.stderr);
                assert!(
                    ips.insert(out.ip()),
                    "address {} handed out twice",
                    out.ip()
                );
            }
            assert_eq!(lab.pod_ports().len(), 100);
            assert_eq!(lab.pod_flow_count(), 100 * flows_per_pod());
            // Two of them talk.
            assert!(pods[0].ping(&adds[99].ip()).await);
            let dels = futures::future::join_all(pods.iter().map(|p| {
                let conf = conf.clone();
                async move {
                    run_cni(
                        "DEL",
                        &p.container_id,
                        Some(&p.netns_path()),
                        "eth0",
                        &p.cni_args(),
                        &conf,
                    )
                    .await
                }
            }))
            .await;
            for out in &dels {
                assert!(out.success, "{}", out.stdout);
            }
            assert_eq!(lab.pod_ports(), Vec::<String>::new());
            assert_eq!(lab.host_veths().await, Vec::<String>::new());
            lab.await_pod_flow_count(0).await;
        },
    );
}

/// ADD/DEL cycles on one pod namespace with a new container id each time.
/// 500 cycles take about a minute on 2 cores (two process spawns of the
/// CNI binary per cycle); `SWITCHYARD_AGENT_CYCLES` overrides the count.
#[test]
fn add_del_cycles_leave_nothing_behind() {
    node_test("add_del_cycles_leave_nothing_behind", |lab| async move {
        let cycles: usize = std::env::var("SWITCHYARD_AGENT_CYCLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        let agent = AgentProcess::start(&lab, "agent.log").await;
        let pid = agent.child.id();
        lab.create_pod("default", "cycler", &[]).await;
        let mut pod = PodNs::new("default", "cycler");
        let base = pod.container_id.clone();
        // The agent's descriptors and memory once warm (after a tenth of the cycles), and at
        // the end: flat, not growing with the cycles.
        let warm_up = cycles / 10;
        let mut warm = None;
        for i in 0..cycles {
            if i == warm_up {
                warm = Some((open_fds(pid), rss_kib(pid)));
            }
            pod.container_id = format!("{base}x{i}");
            let add = cni_add(&lab, &pod).await;
            assert!(add.success, "cycle {i} ADD: {}", add.stdout);
            let del = cni_del(&lab, &pod).await;
            assert!(del.success, "cycle {i} DEL: {}", del.stdout);
        }
        let (fds_warm, rss_warm) = warm.expect("at least one cycle");
        let (fds_end, rss_end) = (open_fds(pid), rss_kib(pid));
        eprintln!(
            "agent after {warm_up} and {cycles} cycles: {fds_warm} -> {fds_end} fds, {rss_warm} -> {rss_end} KiB RSS"
        );
        // A descriptor per cycle would be hundreds; a few come and go with connections.
        assert!(
            fds_end <= fds_warm + 8,
            "the agent's descriptors grew from {fds_warm} to {fds_end} over {cycles} cycles"
        );
        // Memory: allocator noise is a few MiB; a leak per cycle would grow with the count.
        assert!(
            rss_end <= rss_warm + rss_warm / 2 + 16 * 1024,
            "the agent's RSS grew from {rss_warm} KiB to {rss_end} KiB over {cycles} cycles"
        );
        assert_eq!(lab.pod_ports(), Vec::<String>::new());
        assert_eq!(lab.host_veths().await, Vec::<String>::new());
        lab.await_pod_flow_count(0).await;
        let links = pod.exec(&["ip", "-o", "link"]).await;
        assert_eq!(
            String::from_utf8_lossy(&links.stdout).lines().count(),
            1,
            "pod netns still has interfaces besides lo"
        );
    });
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
