//! Installing 100,000 flows and 10,000 select groups in bundles: the native
//! OpenFlow client versus `ovs-ofctl --bundle add-groups/add-flows` from a
//! file, side by side on the same bridge (cleared between runs).
//!
//! Run as root: `cargo bench -p switchyard-ovs --bench openflow_bundle`
//! (`SY_BENCH_FLOWS`, `SY_BENCH_GROUPS`, `SY_BENCH_ROUNDS` override 100000,
//! 10000 and 3).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use switchyard_ovs::openflow::*;
use switchyard_ovs_harness::{OvsInstance, require_privileges};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn group(id: u32) -> Group {
    let backends = 2 + (id % 3);
    Group::select(
        id,
        (0..backends)
            .map(|b| {
                let ip = Ipv4Addr::from(0x0a01_0000 + id * 4 + b);
                (
                    100,
                    vec![Action::Ct(Ct {
                        commit: true,
                        zone: CtZone::Immediate(1),
                        table: Some(3),
                        nat: Some(Nat::dst(ip.into(), Some(8080))),
                        ..Ct::default()
                    })],
                )
            })
            .collect(),
    )
    .selection(SelectionMethod::hash(&[Field::Ipv4Src, Field::Ipv4Dst]))
}

fn flow(i: usize, groups: usize) -> Flow {
    let i32 = u32::try_from(i).unwrap();
    let vip = Ipv4Addr::from(0x0a60_0000 + i32 / 4);
    Flow::new(2, 100)
        .cookie(0x5e00_0000 + u64::from(i32))
        .matching(MatchField::eth_type(0x0800))
        .matching(MatchField::ip_proto(6))
        .matching(MatchField::ipv4_dst(vip, 32))
        .matching(MatchField::tcp_dst(80 + u16::try_from(i % 4).unwrap()))
        .matching(MatchField::ct_state(
            ct_state::TRK | ct_state::NEW,
            ct_state::TRK | ct_state::NEW,
        ))
        .action(Action::load(SubField::bits(Field::Reg(4), 16, 17), 1))
        .action(Action::Group(1 + (i32 % u32::try_from(groups).unwrap())))
}

fn count_lines(ovs: &OvsInstance, args: &[&str]) -> usize {
    ovs.ofctl(args)
        .unwrap()
        .lines()
        .filter(|l| l.contains("actions="))
        .count()
}

fn clear(ovs: &OvsInstance) {
    ovs.ofctl(&["-O", "OpenFlow15", "del-flows", "br-bench"])
        .unwrap();
    ovs.ofctl(&["-O", "OpenFlow15", "del-groups", "br-bench"])
        .unwrap();
}

fn main() {
    if !require_privileges("openflow_bundle bench") {
        return;
    }
    let n_flows = env_usize("SY_BENCH_FLOWS", 100_000);
    let n_groups = env_usize("SY_BENCH_GROUPS", 10_000);
    let rounds = env_usize("SY_BENCH_ROUNDS", 3);
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    ovs.vsctl(&[
        "add-br",
        "br-bench",
        "--",
        "set",
        "bridge",
        "br-bench",
        "datapath_type=netdev",
        "fail_mode=secure",
    ])
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(Client::connect(ClientConfig::new(
            ovs.mgmt_socket("br-bench"),
        )))
        .unwrap();

    let groups: Vec<Group> = (1..=u32::try_from(n_groups).unwrap()).map(group).collect();
    let flows: Vec<Flow> = (0..n_flows).map(|i| flow(i, n_groups)).collect();
    let dir = tempfile::tempdir().unwrap();
    let groups_file = dir.path().join("groups.txt");
    let flows_file = dir.path().join("flows.txt");
    std::fs::write(
        &groups_file,
        groups.iter().map(|g| format!("{g}\n")).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &flows_file,
        flows.iter().map(|f| format!("{f}\n")).collect::<String>(),
    )
    .unwrap();
    let (gf, ff) = (
        groups_file.to_str().unwrap().to_string(),
        flows_file.to_str().unwrap().to_string(),
    );

    let mut ours: Vec<Duration> = Vec::new();
    let mut ofctl: Vec<Duration> = Vec::new();
    let mut dump_ours: Vec<Duration> = Vec::new();
    let mut dump_ofctl: Vec<Duration> = Vec::new();
    for round in 0..rounds {
        // Client: groups in one bundle, flows in another.
        clear(&ovs);
        let t = Instant::now();
        runtime
            .block_on(async {
                client
                    .bundle(
                        groups
                            .iter()
                            .cloned()
                            .map(|g| GroupMod::add(g).into())
                            .collect(),
                        bundle_flags::ATOMIC | bundle_flags::ORDERED,
                    )
                    .await?;
                client
                    .bundle(
                        flows
                            .iter()
                            .cloned()
                            .map(|f| FlowMod::add(f).into())
                            .collect(),
                        bundle_flags::ATOMIC | bundle_flags::ORDERED,
                    )
                    .await
            })
            .unwrap();
        let d = t.elapsed();
        ours.push(d);
        // Reading everything back: client flow stats vs ovs-ofctl dump-flows.
        let t = Instant::now();
        let read = runtime
            .block_on(client.dump_flows(FlowStatsRequest::all()))
            .unwrap();
        dump_ours.push(t.elapsed());
        assert_eq!(read.len(), n_flows);
        let t = Instant::now();
        assert_eq!(
            count_lines(&ovs, &["-O", "OpenFlow15", "dump-flows", "br-bench"]),
            n_flows
        );
        dump_ofctl.push(t.elapsed());

        // Baseline: ovs-ofctl --bundle from files.
        clear(&ovs);
        let t = Instant::now();
        ovs.ofctl(&[
            "-O",
            "OpenFlow15",
            "--bundle",
            "add-groups",
            "br-bench",
            &gf,
        ])
        .unwrap();
        ovs.ofctl(&["-O", "OpenFlow15", "--bundle", "add-flows", "br-bench", &ff])
            .unwrap();
        let b = t.elapsed();
        ofctl.push(b);
        assert_eq!(
            count_lines(&ovs, &["-O", "OpenFlow15", "dump-flows", "br-bench"]),
            n_flows
        );
        println!(
            "round {round}: client {:.3} s, ovs-ofctl --bundle {:.3} s",
            d.as_secs_f64(),
            b.as_secs_f64()
        );
    }
    ours.sort();
    ofctl.sort();
    let (m_ours, m_ofctl) = (ours[ours.len() / 2], ofctl[ofctl.len() / 2]);
    println!("{n_flows} flows + {n_groups} select groups, median of {rounds} rounds:");
    println!(
        "  client bundles:            {:.3} s ({:.0} flows/s incl. groups)",
        m_ours.as_secs_f64(),
        n_flows as f64 / m_ours.as_secs_f64()
    );
    println!(
        "  ovs-ofctl --bundle (files): {:.3} s ({:.0} flows/s incl. groups)",
        m_ofctl.as_secs_f64(),
        n_flows as f64 / m_ofctl.as_secs_f64()
    );
    println!(
        "  ratio ovs-ofctl / client: {:.2}x",
        m_ofctl.as_secs_f64() / m_ours.as_secs_f64()
    );
    dump_ours.sort();
    dump_ofctl.sort();
    let (d_ours, d_ofctl) = (dump_ours[rounds / 2], dump_ofctl[rounds / 2]);
    println!("reading the {n_flows} flows back, median:");
    println!(
        "  client dump_flows (decoded values): {:.3} s",
        d_ours.as_secs_f64()
    );
    println!(
        "  ovs-ofctl dump-flows (text):        {:.3} s",
        d_ofctl.as_secs_f64()
    );
    println!(
        "  ratio ovs-ofctl / client: {:.2}x",
        d_ofctl.as_secs_f64() / d_ours.as_secs_f64()
    );
}
