//! Issue 16, test 5 on the multi-node lab (`switchyard-lab up --fabric`, real OVS, the real
//! agent and CNI binary, `switchyard-controller` on the host with the lab's fabric as its
//! router): a namespace network with a small subnet (/29: 5 pod addresses) fills up, the
//! controller appends a second subnet (`--namespace-append-at 60`: at 3 addresses used),
//! and the agents take it live.
//!
//! - the first five pods, on both nodes, get the first subnet's addresses;
//! - the Segment gets a second subnet with its own gateway, the SNAT rule on the router
//!   covers both;
//! - a sixth pod gets an address of the second subnet and becomes Ready; with its own
//!   subnet's gateway it reaches that gateway, a pod of the first subnet (through the
//!   fabric) and the internet, where it is seen as the namespace's SNAT address;
//! - after an agent restart (the pool of both subnets rebuilt from the installed pods) a
//!   new pod on that node gets the next address of the second subnet;
//! - issue test 3: deleting the namespace releases the addresses, the Segment and the SNAT
//!   rule; the namespace created again gets a fresh Segment and rule (its new UID).
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build -p
//! switchyard-cni -p switchyard-agent -p switchyard-proxy -p switchyard-lab -p
//! switchyard-controller`); fails with the reason otherwise, unless
//! SWITCHYARD_SKIP_PRIVILEGED=1. `cargo test -p switchyard-lab --test
//! namespace_subnet_append` (about 30 s).

mod lab_support;
mod nsnet_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use nsnet_support::*;
use switchyard_lab::cluster::fabric;
use switchyard_lab::cluster::ops::{self, Daemon};

const POD_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);
const EGRESS_POOL: &str = "198.18.21.0/29";
const ECHO_PORT: u16 = 9092;
const NAT_RULES: &str = "/policy/api/v1/infra/tier-1s/lab/nat/USER/nat-rules";

#[test]
fn a_full_subnet_gets_a_second_one_and_new_pods_live_there() {
    if !privileged("a_full_subnet_gets_a_second_one_and_new_pods_live_there") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    let started = Instant::now();
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fab = info.fabric.clone().expect("lab has a fabric");
    apply_crds(&lab);
    route_target_and_egress_pool(&lab, EGRESS_POOL);
    let _controller = start_controller(
        &lab,
        &[
            "--namespace-vlans",
            "320-329",
            "--namespace-supernet",
            "10.32.0.0/24",
            "--namespace-subnet-prefix",
            "29",
            "--namespace-append-at",
            "60",
            "--namespace-route-target",
            "fabric",
        ],
    );
    lab.apply(&namespace("small"));
    let seg = eventually("Segment ns-small with an SNAT address", DEADLINE, || {
        segment_json(&lab, "ns-small").filter(|s| s["spec"]["snatAddress"].is_string())
    });
    let vlan = u16::try_from(seg["spec"]["vlan"].as_u64().unwrap()).unwrap();
    let snat = seg["spec"]["snatAddress"].as_str().unwrap().to_string();
    let (first, first_gw) = subnets(&seg)[0];
    eprintln!("ns-small: VLAN {vlan}, subnet {first}, SNAT {snat}");
    assert_eq!(first.prefix_len(), 29);
    fabric::add_vlan_gateway(
        &lab.state,
        &info,
        vlan,
        ipnet::Ipv4Net::new(first_gw, 29).unwrap(),
    )
    .unwrap();

    // 1. Five pods fill the first subnet (.2-.6 beside the gateway .1).
    let mut m = String::new();
    for i in 1..=5 {
        m.push_str(&pod("small", &format!("s{i}"), ["node1", "node2"][i % 2]));
    }
    lab.apply(&m);
    let mut first_ips = Vec::new();
    for i in 1..=5 {
        let ip: std::net::Ipv4Addr = wait_running_in(&lab, "small", &format!("s{i}"), POD_DEADLINE)
            .parse()
            .unwrap();
        assert!(first.contains(&ip), "s{i} got {ip}, outside {first}");
        first_ips.push(ip);
    }

    // 2. The controller appended a second subnet; the fabric gets its gateway too.
    let seg = eventually("a second subnet in ns-small", DEADLINE, || {
        segment_json(&lab, "ns-small").filter(|s| subnets(s).len() == 2)
    });
    let (second, second_gw) = subnets(&seg)[1];
    eprintln!("ns-small appended {second} (gateway {second_gw})");
    assert!(!second.contains(&first.network()) && !first.contains(&second.network()));
    fabric::add_vlan_gateway(
        &lab.state,
        &info,
        vlan,
        ipnet::Ipv4Net::new(second_gw, second.prefix_len()).unwrap(),
    )
    .unwrap();
    let id = format!("{}-ns-small", lab.name);
    eventually("the SNAT rule covering both subnets", DEADLINE, || {
        let (code, body) = fabric_api(&lab, "GET", &format!("{NAT_RULES}/{id}"), "");
        let rule: serde_json::Value = serde_json::from_str(&body).ok()?;
        let sources = rule["source_network"].as_str()?.to_string();
        (code == 200
            && sources.contains(&first.to_string())
            && sources.contains(&second.to_string()))
        .then_some(())
    });
    eventually(
        "ns-small's capacity counting both subnets",
        DEADLINE,
        || (segment_json(&lab, "ns-small")?["status"]["capacity"].as_u64()? == 10).then_some(()),
    );

    // 3. A new pod on either node gets an address of the second subnet and works.
    lab.apply(&pod("small", "s6", "node1"));
    let ip: std::net::Ipv4Addr = wait_running_in(&lab, "small", "s6", POD_DEADLINE)
        .parse()
        .unwrap();
    eprintln!("s6: {ip}");
    assert!(second.contains(&ip), "s6 got {ip}, outside {second}");
    let s6 = info.pod_netns("small", "s6");
    let routes = check(
        "s6's routes",
        in_netns(&s6, &["ip", "route", "show", "default"]),
    );
    assert!(
        routes.contains(&format!("via {second_gw}")),
        "s6's default route is not its subnet's gateway {second_gw}: {routes}"
    );
    let ttl = eventually("s6 reaching its gateway", DEADLINE, || {
        ping_ttl(&s6, &second_gw.to_string())
    });
    assert_eq!(ttl, 64);
    let ttl = eventually("s6 reaching s1 of the first subnet", DEADLINE, || {
        ping_ttl(&s6, &first_ips[0].to_string())
    });
    assert_eq!(ttl, 63, "routed by the fabric between the two subnets");
    let _echo = Proc(
        Command::new("ip")
            .args(["netns", "exec", &fab.internet_netns, LAB, "echo-server"])
            .args(["--name", "@peer", "--http", &ECHO_PORT.to_string()])
            .args(["--udp", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let target = format!("{}:{ECHO_PORT}", fabric::INTERNET_HOST);
    eventually(
        "s6 seen by the internet as the SNAT address",
        DEADLINE,
        || {
            let got = echo_client(&s6, "http", &target, 3);
            (got.len() == 3 && got.iter().all(|a| *a == snat)).then_some(())
        },
    );

    // 4. An agent restart rebuilds the pool of both subnets from what is installed: s6
    //    keeps its address and a new pod on that node gets the next of the second subnet.
    ops::restart(&lab.state, "node1", Daemon::Agent).unwrap();
    lab.apply(&pod("small", "s7", "node1"));
    let s7: std::net::Ipv4Addr = wait_running_in(&lab, "small", "s7", POD_DEADLINE)
        .parse()
        .unwrap();
    eprintln!("s7 after node1's agent restarted: {s7}");
    assert!(second.contains(&s7) && s7 != ip, "s7 got {s7}");
    let ttl = eventually("s6 reaching s7 after the restart", DEADLINE, || {
        ping_ttl(&s6, &s7.to_string())
    });
    assert_eq!(ttl, 64);

    // 5. Issue test 3: deleting the namespace releases everything: the addresses of both
    //    subnets, the Segment, the SNAT rule on the router.
    let old_uid = lab
        .kubectl_ok(&[
            "get",
            "namespace",
            "small",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .trim()
        .to_string();
    lab.kubectl_ok(&["delete", "namespace", "small", "--wait=false"]);
    eventually("ns-small and small gone", Duration::from_secs(60), || {
        let ns = lab.kubectl(&["get", "namespace", "small"]);
        (segment_json(&lab, "ns-small").is_none() && !ns.status.success()).then_some(())
    });
    eventually("the SNAT rule removed from the router", DEADLINE, || {
        (fabric_api(&lab, "GET", &format!("{NAT_RULES}/{id}"), "").0 == 404).then_some(())
    });
    let objects = lab.kubectl(&[
        "get",
        "segmentaddresses",
        "-l",
        "switchyard.io/segment=ns-small",
        "-o",
        "jsonpath={.items[*].spec.address}",
    ]);
    let left = String::from_utf8_lossy(&objects.stdout).to_string();
    assert!(
        !left.contains("10.32."),
        "addresses left as SegmentAddress objects: {left}"
    );

    //    Recreated, it gets fresh objects: a new Segment (the new UID, one subnet again)
    //    and a new SNAT rule tagged with the new UID.
    lab.apply(&namespace("small"));
    let uid = eventually("small recreated", DEADLINE, || {
        let out = lab.kubectl(&[
            "get",
            "namespace",
            "small",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !uid.is_empty()).then_some(uid)
    });
    assert_ne!(uid, old_uid);
    let seg = eventually("a fresh ns-small", DEADLINE, || {
        segment_json(&lab, "ns-small").filter(|s| {
            s["metadata"]["labels"]["switchyard.io/namespace-uid"] == uid.as_str()
                && s["spec"]["snatAddress"].is_string()
        })
    });
    assert_eq!(subnets(&seg).len(), 1, "{seg}");
    eventually("a fresh SNAT rule with the new UID", DEADLINE, || {
        let (code, body) = fabric_api(&lab, "GET", &format!("{NAT_RULES}/{id}"), "");
        (code == 200 && body.contains(&uid) && !body.contains(&old_uid)).then_some(())
    });
    eprintln!("test took {:.1?}", started.elapsed());
}
