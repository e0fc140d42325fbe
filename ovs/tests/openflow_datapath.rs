//! Datapath proof: a ClusterIP-style service programmed ONLY through the
//! OpenFlow client carries real TCP (HTTP) from one pod namespace to two
//! backend namespaces over a `netdev` bridge, with conntrack DNAT on the way
//! in and un-DNAT on the way back.
//!
//! Needs root, openvswitch-switch, iproute2, ethtool, curl and python3 (the
//! backends run `python3 -m http.server`). Fails with a clear message
//! otherwise; SWITCHYARD_SKIP_PRIVILEGED=1 skips it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_ovs::openflow::*;
use switchyard_ovs_harness::{Netns, OvsInstance, VethPair, require_privileges};

const VIP: &str = "10.96.0.10";
const VIP_MAC: &str = "0a:00:00:00:00:fe";
const ZONE: u16 = 1;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod: a namespace with one veth end (`eth0`-like) attached to br0.
struct Pod {
    ns: Netns,
    _veth: VethPair,
    ip: String,
    mac: [u8; 6],
    ofport: u32,
}

fn pod(ovs: &OvsInstance, name: &str, ip: &str, ofport: u32) -> Pod {
    let ovs_ns = ovs.netns().unwrap().to_string();
    let ns = Netns::new(&format!("sy-{name}")).unwrap();
    let veth = VethPair::new("syof", Some(&ovs_ns)).unwrap();
    run(Command::new("ip").args([
        "-n",
        &ovs_ns,
        "link",
        "set",
        veth.peer(),
        "netns",
        ns.name(),
    ]));
    let ipns = |args: &[&str]| run(Command::new("ip").args(["-n", ns.name()]).args(args));
    ipns(&["link", "set", veth.peer(), "up"]);
    ipns(&["addr", "add", &format!("{ip}/24"), "dev", veth.peer()]);
    // Mandatory on a netdev bridge: no transmit checksum offload on the pod end.
    run(ns.command("ethtool").args(["-K", veth.peer(), "tx", "off"]));
    let link = run(Command::new("ip").args(["-n", ns.name(), "-br", "link", "show", veth.peer()]));
    let mac_text = link.split_whitespace().nth(2).unwrap().to_string();
    let mut mac = [0u8; 6];
    for (i, p) in mac_text.split(':').enumerate() {
        mac[i] = u8::from_str_radix(p, 16).unwrap();
    }
    ovs.vsctl(&[
        "add-port",
        "br0",
        veth.name(),
        "--",
        "set",
        "interface",
        veth.name(),
        &format!("ofport_request={ofport}"),
    ])
    .unwrap();
    Pod {
        ns,
        _veth: veth,
        ip: ip.to_string(),
        mac,
        ofport,
    }
}

/// A backend HTTP server, killed by pid on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server(p: &Pod, name: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), name).unwrap();
    let child =
        p.ns.command("python3")
            .args(["-m", "http.server", "8080", "--bind", &p.ip, "--directory"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let server = Server { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out =
            p.ns.command("curl")
                .args(["-s", "--max-time", "1", &format!("http://{}:8080/", p.ip)])
                .output()
                .unwrap();
        if String::from_utf8_lossy(&out.stdout) == name {
            return server;
        }
        assert!(Instant::now() < deadline, "backend {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mac_u128(m: [u8; 6]) -> u128 {
    m.iter().fold(0, |a, b| (a << 8) | u128::from(*b))
}

fn service_flows(client: &Pod, backends: &[&Pod]) -> (Group, Vec<Flow>) {
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
    let ct = |table: u8, nat: Option<Nat>, commit: bool| {
        Action::Ct(Ct {
            commit,
            zone: CtZone::Immediate(ZONE),
            table: Some(table),
            nat,
            ..Ct::default()
        })
    };
    let group = Group::select(
        1,
        backends
            .iter()
            .map(|b| {
                (
                    100,
                    vec![ct(
                        3,
                        Some(Nat::dst(b.ip.parse().unwrap(), Some(8080))),
                        true,
                    )],
                )
            })
            .collect(),
    )
    .selection(SelectionMethod::hash(&[
        Field::Ipv4Src,
        Field::Ipv4Dst,
        Field::TcpSrc,
        Field::TcpDst,
    ]));
    let tcp = |f: Flow| {
        f.matching(MatchField::eth_type(0x0800))
            .matching(MatchField::ip_proto(6))
    };
    let mut flows = vec![
        // ARP between pods: plain L2.
        Flow::new(0, 100)
            .matching(MatchField::eth_type(0x0806))
            .action(Action::Output(port::NORMAL)),
        // To the VIP: conntrack (and NAT for established connections).
        tcp(Flow::new(0, 90))
            .matching(MatchField::ipv4_dst(vip, 32))
            .matching(MatchField::tcp_dst(80))
            .action(ct(1, Some(Nat::existing()), false)),
        // Everything else IPv4: conntrack with reverse NAT for replies.
        Flow::new(0, 80)
            .matching(MatchField::eth_type(0x0800))
            .action(ct(2, Some(Nat::existing()), false)),
        // New service connections pick a backend.
        Flow::new(1, 10)
            .matching(MatchField::eth_type(0x0800))
            .matching(MatchField::ct_state(
                ct_state::NEW | ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .action(Action::Group(1)),
        Flow::new(1, 5)
            .matching(MatchField::ct_state(ct_state::TRK, ct_state::TRK))
            .action(Action::resubmit_table(3)),
        // Commit every new connection in the zone (lab-notes trap).
        Flow::new(2, 10)
            .matching(MatchField::eth_type(0x0800))
            .matching(MatchField::ct_state(
                ct_state::NEW | ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .action(ct(3, None, true)),
        Flow::new(2, 5).action(Action::resubmit_table(3)),
    ];
    // L3 delivery by (post-NAT) destination address.
    for p in std::iter::once(client).chain(backends.iter().copied()) {
        flows.push(
            Flow::new(3, 10)
                .matching(MatchField::eth_type(0x0800))
                .matching(MatchField::ipv4_dst(p.ip.parse().unwrap(), 32))
                .action(Action::set_field(Field::EthDst, mac_u128(p.mac)))
                .action(Action::Output(p.ofport)),
        );
    }
    for f in &mut flows {
        f.cookie = 0x5e;
    }
    (group, flows)
}

#[tokio::test]
async fn service_vip_reaches_both_backends_through_conntrack_nat() {
    if !require_privileges("service_vip_reaches_both_backends_through_conntrack_nat") {
        return;
    }
    let ovs = OvsInstance::builder().vswitchd(true).start().unwrap();
    ovs.vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        "datapath_type=netdev",
        "fail_mode=secure",
    ])
    .unwrap();
    let client_pod = pod(&ovs, "cl", "10.1.0.1", 1);
    let b1 = pod(&ovs, "b1", "10.1.0.2", 2);
    let b2 = pod(&ovs, "b2", "10.1.0.3", 3);
    // The client reaches the VIP on-link through a static neighbour entry.
    let cns = client_pod.ns.name().to_string();
    let dev = run(Command::new("ip").args(["-n", &cns, "-br", "link"]))
        .lines()
        .find(|l| !l.starts_with("lo"))
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    run(Command::new("ip").args([
        "-n",
        &cns,
        "route",
        "add",
        &format!("{VIP}/32"),
        "dev",
        &dev,
    ]));
    run(Command::new("ip").args([
        "-n", &cns, "neigh", "add", VIP, "lladdr", VIP_MAC, "dev", &dev,
    ]));

    let c = Client::connect(ClientConfig::new(ovs.mgmt_socket("br0")))
        .await
        .unwrap();
    let (group, flows) = service_flows(&client_pod, &[&b1, &b2]);
    let mut msgs: Vec<TxMessage> = vec![GroupMod::add(group).into()];
    msgs.extend(flows.into_iter().map(|f| FlowMod::add(f).into()));
    c.bundle(msgs, bundle_flags::ATOMIC | bundle_flags::ORDERED)
        .await
        .unwrap();

    let _s1 = http_server(&b1, "backend-1");
    let _s2 = http_server(&b2, "backend-2");

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..24 {
        let out = client_pod
            .ns
            .command("curl")
            .args(["-s", "--max-time", "3", &format!("http://{VIP}:80/")])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        *seen
            .entry(if body.is_empty() {
                "<failed>".into()
            } else {
                body
            })
            .or_default() += 1;
    }
    let dump = ovs
        .ofctl(&["-O", "OpenFlow15", "dump-flows", "br0"])
        .unwrap();
    assert_eq!(
        seen.get("<failed>"),
        None,
        "some requests to the VIP failed: {seen:?}\n{dump}"
    );
    assert!(
        seen.get("backend-1").copied().unwrap_or(0) > 0
            && seen.get("backend-2").copied().unwrap_or(0) > 0,
        "both backends should answer over 24 connections: {seen:?}"
    );
    let ct = ovs.appctl_vswitchd(&["dpctl/dump-conntrack"]).unwrap();
    for b in ["10.1.0.2", "10.1.0.3"] {
        assert!(
            ct.lines().any(|l| l.contains(&format!("dst={VIP}"))
                && l.contains(&format!("reply=(src={b},"))
                && l.contains(&format!("zone={ZONE}"))),
            "no NAT entry {VIP} -> {b} in\n{ct}"
        );
    }
}
