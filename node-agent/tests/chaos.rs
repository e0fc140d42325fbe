//! Faults on one node (issue 18's chaos suite, the node half): the agent killed in the middle
//! of an ADD, under a continuous probe between two running pods, with a leak check at the end.
//! The lab half (ovsdb-server restarted while pods are created, agent and proxy running) is
//! `tests/lab/tests/chaos.rs`. Real OVS, the real agent binary and the real `switchyard` CNI
//! binary; needs root and openvswitch-switch.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use support::*;

const LATER_PODS: usize = 20;

/// Pings from `from` to `to` every 50 ms until the returned sender is dropped; (sent, received).
fn ping_probe(from: &PodNs, to: &str) -> tokio::task::JoinHandle<(u32, u32)> {
    let netns = from.netns_path();
    let to = to.to_string();
    tokio::spawn(async move {
        // A fixed count: the probe outlives the fault (about 10 s at most here).
        let out = tokio::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ping", "-q", "-c", "300", "-i", "0.05", "-W", "2", &to])
            .output()
            .await
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {text}"));
        let nums: Vec<u32> = line
            .split(',')
            .filter_map(|p| p.split_whitespace().next()?.parse().ok())
            .collect();
        (nums[0], nums[1])
    })
}

#[test]
fn an_agent_killed_in_the_middle_of_an_add_leaves_no_half_made_pod() {
    node_test(
        "an_agent_killed_in_the_middle_of_an_add_leaves_no_half_made_pod",
        |lab| async move {
            let mut agent = AgentProcess::start(&lab, "agent-1.log").await;
            // Two running pods and a probe between them, across the whole fault.
            let mut running = Vec::new();
            for name in ["a", "b"] {
                lab.create_pod("default", name, &[]).await;
                let pod = PodNs::new("default", name);
                let out = cni_add(&lab, &pod).await;
                assert!(out.success, "ADD {name}: {}", out.stdout);
                running.push((pod, out.ip()));
            }
            let probe = ping_probe(&running[0].0, &running[1].1);

            // ovsdb-server stopped, so the ADD stops half-way: veth made, OVS port not yet.
            lab.create_pod("default", "victim", &[]).await;
            let victim = PodNs::new("default", "victim");
            let ovsdb = Pid::from_raw(i32::try_from(lab.ovs.ovsdb_pid().unwrap()).unwrap());
            kill(ovsdb, Signal::SIGSTOP).unwrap();
            let add = {
                let conf = lab.conflist();
                let (id, netns, args) = (
                    victim.container_id.clone(),
                    victim.netns_path(),
                    victim.cni_args(),
                );
                tokio::spawn(async move {
                    run_cni("ADD", &id, Some(&netns), "eth0", &args, &conf).await
                })
            };
            let half_made = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if lab.host_veths().await.len() == 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if half_made.is_err() {
                let _ = kill(ovsdb, Signal::SIGCONT);
                panic!("the victim's veth never appeared");
            }
            agent.kill9();
            kill(ovsdb, Signal::SIGCONT).unwrap();
            let add = add.await.unwrap();
            assert!(!add.success, "an ADD whose agent died cannot succeed");
            assert_eq!(add.code(), 11, "try again later: {}", add.stdout);
            drop(agent);
            // What an ADD leaves when the agent dies between the veth pair and the OVS port
            // (depending on the moment, the victim's ADD above left that or a whole port): a
            // veth named as the agent names them. A veth not named so is not the agent's.
            node_veth(&lab, "sy0badc0ffee0");
            node_veth(&lab, "keepme0");

            // The restarted agent leaves the half-made attachment either whole or gone, never
            // in between; the runtime then deletes it (kubelet calls DEL after a failed ADD).
            let _agent = AgentProcess::start(&lab, "agent-2.log").await;
            let ports = lab.pod_ports();
            let veths = lab.host_veths().await;
            assert!(
                ports.len() == 2 || ports.len() == 3,
                "pod ports after the restart: {ports:?}"
            );
            assert_eq!(
                ports.iter().collect::<BTreeSet<_>>(),
                veths.iter().collect::<BTreeSet<_>>(),
                "every OVS port has its veth and every veth its port"
            );
            let links = cmd_ok(&["ip", "-o", "link", "show"]).await;
            assert!(
                !links.contains("sy0badc0ffee0"),
                "the interrupted ADD's veth is left: {links}"
            );
            assert!(
                links.contains("keepme0"),
                "a veth that is not the agent's was removed: {links}"
            );
            eventually("a pod's flows per port", Duration::from_secs(10), || {
                let flows = lab.pod_flow_count();
                let ports = lab.pod_ports().len();
                async move { flows == ports * flows_per_pod() }
            })
            .await;
            let del = cni_del(&lab, &victim).await;
            assert!(del.success, "DEL after the failed ADD: {}", del.stdout);
            assert_eq!(lab.pod_ports().len(), 2, "{:?}", lab.pod_ports());
            assert_eq!(lab.host_veths().await.len(), 2);
            lab.await_pod_flow_count(2 * flows_per_pod()).await;

            // The retried ADD and 20 more pods: each its own address, none of the running ones.
            let out = cni_add(&lab, &victim).await;
            assert!(out.success, "the retried ADD: {}", out.stdout);
            let mut addresses: BTreeSet<String> =
                running.iter().map(|(_, ip)| ip.clone()).collect();
            assert!(addresses.insert(out.ip()), "{} given twice", out.ip());
            let mut later = Vec::new();
            for i in 0..LATER_PODS {
                let name = format!("p{i}");
                lab.create_pod("default", &name, &[]).await;
                let pod = PodNs::new("default", &name);
                let out = cni_add(&lab, &pod).await;
                assert!(out.success, "ADD {name}: {}", out.stdout);
                assert!(addresses.insert(out.ip()), "{} given twice", out.ip());
                later.push(pod);
            }
            assert!(
                victim.ping(&running[0].1).await,
                "the retried pod reaches a running one"
            );

            let (sent, received) = probe.await.unwrap();
            eprintln!("ping between the running pods across the fault: {received} of {sent}");
            assert_eq!(sent, received, "the datapath lost pings during the fault");

            // Leak check: one port, veth and set of flows per pod; nothing else.
            let pods = 3 + LATER_PODS;
            assert_eq!(lab.pod_ports().len(), pods);
            assert_eq!(lab.host_veths().await.len(), pods);
            assert_eq!(lab.pod_flow_count(), pods * flows_per_pod());
            drop(later);
        },
    );
}
