//! Egress per namespace end to end (`switchyard-lab up --fabric`): `switchyard-controller`
//! gives namespace `blue` its Segment and SNAT address and programs the SNAT rule on the lab's
//! fabric router through the fabric API (`lab` driver, `--namespace-route-target`); the
//! fabric API applies it with nftables in the fabric namespace.
//!
//! - a pod of `blue` reaches an echo server in the internet namespace, which sees the
//!   namespace's SNAT address (the internet has no route to the pod subnet: without the rule
//!   there is no answer at all);
//! - the rule deleted on the router (through the fabric API) is back within 10 s;
//! - an untagged NAT rule on the router is left alone;
//! - the router answering 503 shows in the Segment's `status.message` with the retries;
//! - deleting the namespace removes its rule.
//!
//! Needs root, OVS, nft, curl and kubectl, and the binaries built (`cargo build -p
//! switchyard-cni -p switchyard-agent -p switchyard-proxy -p switchyard-lab -p
//! switchyard-controller`); fails with the reason otherwise, unless
//! SWITCHYARD_SKIP_PRIVILEGED=1. `cargo test -p switchyard-lab --test namespace_egress`.

mod lab_support;
mod nsnet_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_support::*;
use nsnet_support::*;
use switchyard_lab::cluster::fabric;

const POD_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);
/// Issue 16 test 4: a NAT rule deleted on the router is repaired (the controller reads the
/// router every 5 s: `--route-resync`).
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);
const EGRESS_POOL: &str = "198.18.20.0/29";
const ECHO_PORT: u16 = 9091;
const NAT_RULES: &str = "/policy/api/v1/infra/tier-1s/lab/nat/USER/nat-rules";

/// The fabric API's NAT rule `id`, if it exists.
fn nat_rule(lab: &Lab, id: &str) -> Option<serde_json::Value> {
    let (code, body) = fabric_api(lab, "GET", &format!("{NAT_RULES}/{id}"), "");
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// `nft list table ip switchyard-fabric-nat` in the fabric namespace.
fn nat_table(netns: &str) -> String {
    let out = in_netns(
        netns,
        &["nft", "list", "table", "ip", "switchyard-fabric-nat"],
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_namespace_leaves_with_its_snat_address_through_the_fabric() {
    if !privileged("a_namespace_leaves_with_its_snat_address_through_the_fabric") {
        return;
    }
    sibling_binary("switchyard", "switchyard-cni");
    sibling_binary("switchyard-agent", "switchyard-agent");
    sibling_binary("switchyard-proxy", "switchyard-proxy");
    sibling_binary("switchyard-controller", "switchyard-controller");
    let started = Instant::now();
    let lab = Lab::up(2, &["--fabric", "--vlans", "100"]);
    eprintln!("lab {} up in {:.1?}", lab.name, started.elapsed());
    let _diag = DiagnosticsOnPanic(&lab, "this test");
    let info = lab.info();
    let fab = info.fabric.clone().expect("lab has a fabric");
    apply_crds(&lab);
    // The internet reaches the SNAT addresses through the fabric (an upstream provider's
    // job); it has no route to the namespace's subnet.
    route_target_and_egress_pool(&lab, EGRESS_POOL);
    // An operator's NAT rule on the same router, without Switchyard's tags.
    let (code, body) = fabric_api(
        &lab,
        "PUT",
        &format!("{NAT_RULES}/ops-snat"),
        r#"{"action": "SNAT", "source_network": "10.99.0.0/24", "translated_network": "198.18.20.7", "enabled": true, "tags": [{"scope": "owner", "tag": "netops"}]}"#,
    );
    assert_eq!(code, 200, "{body}");
    let ops_before = nat_rule(&lab, "ops-snat").unwrap();

    let _controller = start_controller(
        &lab,
        &[
            "--namespace-vlans",
            "300-309",
            "--namespace-supernet",
            "10.30.0.0/24",
            "--namespace-subnet-prefix",
            "26",
            "--namespace-route-target",
            "fabric",
        ],
    );

    // 1. `blue` gets its Segment and SNAT address; the fabric gets the VLAN's gateway.
    lab.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: blue\n  labels:\n    switchyard.io/network: dedicated\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b1\n  namespace: blue\nspec:\n  nodeName: node1\n  containers:\n  - name: echo\n    image: switchyard-lab/echo-server\n---\n",
    );
    let seg = eventually("Segment ns-blue with an SNAT address", DEADLINE, || {
        segment_json(&lab, "ns-blue").filter(|s| s["spec"]["snatAddress"].is_string())
    });
    let vlan = u16::try_from(seg["spec"]["vlan"].as_u64().unwrap()).unwrap();
    let subnet: ipnet::Ipv4Net = seg["spec"]["subnets"][0]["cidr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let gateway: std::net::Ipv4Addr = seg["spec"]["subnets"][0]["gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let snat = seg["spec"]["snatAddress"].as_str().unwrap().to_string();
    eprintln!("ns-blue: VLAN {vlan}, subnet {subnet}, SNAT {snat}");
    assert!(
        EGRESS_POOL
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&snat.parse::<std::net::Ipv4Addr>().unwrap()),
        "{snat}"
    );
    fabric::add_vlan_gateway(
        &lab.state,
        &info,
        vlan,
        ipnet::Ipv4Net::new(gateway, subnet.prefix_len()).unwrap(),
    )
    .unwrap();
    let ip: std::net::Ipv4Addr = wait_running_in(&lab, "blue", "b1", POD_DEADLINE)
        .parse()
        .unwrap();
    assert!(subnet.contains(&ip), "b1 got {ip}, outside {subnet}");

    // 2. The rule on the router: tagged, and in the fabric's nftables table.
    let id = format!("{}-ns-blue", lab.name);
    let uid = lab
        .kubectl_ok(&["get", "namespace", "blue", "-o", "jsonpath={.metadata.uid}"])
        .trim()
        .to_string();
    let rule = eventually("the SNAT rule on the router", DEADLINE, || {
        nat_rule(&lab, &id)
    });
    assert_eq!(rule["action"], "SNAT", "{rule}");
    assert_eq!(rule["source_network"], subnet.to_string(), "{rule}");
    assert_eq!(rule["translated_network"], snat, "{rule}");
    let tags = rule["tags"].to_string();
    for want in [
        format!(
            r#"{{"scope":"switchyard.io/cluster","tag":"{}"}}"#,
            lab.name
        ),
        format!(r#"{{"scope":"switchyard.io/namespace-uid","tag":"{uid}"}}"#),
    ] {
        assert!(tags.contains(&want), "{tags} lacks {want}");
    }
    let table = nat_table(&fab.netns);
    assert!(
        table.contains(&format!("snat to {snat}")) && table.contains(&subnet.to_string()),
        "{table}"
    );

    // 3. b1 reaches the internet and is seen there with the SNAT address.
    let _echo = Proc(
        Command::new("ip")
            .args(["netns", "exec", &fab.internet_netns, LAB, "echo-server"])
            .args([
                "--name",
                "@peer",
                "--http",
                &ECHO_PORT.to_string(),
                "--udp",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pod_netns = info.pod_netns("blue", "b1");
    let target = format!("{}:{ECHO_PORT}", fabric::INTERNET_HOST);
    let seen_as = |what: &str, deadline: Duration| {
        eventually(what, deadline, || {
            let got = echo_client(&pod_netns, "http", &target, 3);
            (got.len() == 3 && got.iter().all(|a| *a == snat)).then_some(())
        })
    };
    seen_as("b1 seen by the internet as the SNAT address", DEADLINE);

    // 4. The rule deleted on the router comes back within 10 s; the operator's rule stays.
    let (code, body) = fabric_api(&lab, "DELETE", &format!("{NAT_RULES}/{id}"), "");
    assert_eq!(code, 200, "{body}");
    let deleted = Instant::now();
    eventually("the deleted rule repaired", REPAIR_DEADLINE, || {
        nat_rule(&lab, &id)
    });
    eprintln!("deleted NAT rule repaired after {:.1?}", deleted.elapsed());
    assert!(nat_table(&fab.netns).contains(&format!("snat to {snat}")));
    seen_as("b1 seen as the SNAT address after the repair", DEADLINE);
    assert_eq!(
        nat_rule(&lab, "ops-snat").as_ref(),
        Some(&ops_before),
        "the untagged rule is untouched"
    );

    // 5. The router failing: the Segment's status says so, with the retries; then it clears.
    let (code, body) = fabric_api(&lab, "PUT", "/lab/v1/faults", r#"{"status": 503}"#);
    assert_eq!(code, 200, "{body}");
    let message = eventually("the router error in ns-blue's status", DEADLINE, || {
        segment_json(&lab, "ns-blue")?["status"]["message"]
            .as_str()
            .filter(|m| m.contains("HTTP 503"))
            .map(str::to_string)
    });
    eprintln!("ns-blue status.message: {message}");
    assert!(
        message.contains(&id)
            && message.contains("RouteTarget fabric")
            && message.contains("retrying in"),
        "{message}"
    );
    let (code, body) = fabric_api(&lab, "PUT", "/lab/v1/faults", "{}");
    assert_eq!(code, 200, "{body}");
    eventually("the router error cleared", DEADLINE, || {
        segment_json(&lab, "ns-blue")?["status"]["message"]
            .is_null()
            .then_some(())
    });

    // 6. Deleting the namespace removes its rule (once its Segment is gone); the operator's
    //    stays.
    lab.kubectl_ok(&["delete", "namespace", "blue", "--wait=false"]);
    eventually(
        "the rule of the deleted namespace removed",
        Duration::from_secs(60),
        || (nat_rule(&lab, &id).is_none() && segment_json(&lab, "ns-blue").is_none()).then_some(()),
    );
    eventually("the fabric's nftables rule removed", DEADLINE, || {
        (!nat_table(&fab.netns).contains(&format!("snat to {snat} "))).then_some(())
    });
    assert_eq!(nat_rule(&lab, "ops-snat").as_ref(), Some(&ops_before));
}
