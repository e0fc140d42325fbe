//! `switchyard` as the first plugin of a conflist, chained with Debian's
//! reference plugins (`/usr/lib/cni/tuning`, `/usr/lib/cni/portmap`,
//! `/usr/lib/cni/bandwidth`), executed
//! the way libcni executes a network list: each plugin gets the list's name and
//! cniVersion, its capability arguments as runtimeConfig, and the previous
//! plugin's result as prevResult; CHECK and DEL get the final ADD result, DEL
//! runs in reverse order.
//!
//! NEEDS ROOT: creates a "node" and a "pod" network namespace (deleted on drop)
//! and runs the plugins inside the node namespace, so portmap's iptables rules
//! never touch the host. Fails without root unless SWITCHYARD_SKIP_PRIVILEGED=1.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchyard_cni::CniResult;

const LIMIT: Duration = Duration::from_secs(30);

/// A minimal libcni: the attachment parameters and the plugin search path.
struct Runtime<'a> {
    cni_path: Vec<PathBuf>,
    node: &'a Netns,
    container_id: String,
    netns: String,
    ifname: &'static str,
    capability_args: Value,
}

impl Runtime<'_> {
    fn find(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin_type} not in {:?}", self.cni_path))
    }

    /// libcni's buildOneConfig + injectRuntimeConfig.
    fn request_config(&self, list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut rc = serde_json::Map::new();
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on == &json!(true)
                    && let Some(arg) = self.capability_args.get(cap)
                {
                    rc.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        conf
    }

    fn exec(&self, command: &str, list: &Value, plugin: &Value, prev: Option<&Value>) -> Run {
        let conf = self.request_config(list, plugin, prev);
        let path = self
            .cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.to_owned()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=chain-0".to_owned(),
            ),
            ("CNI_PATH", path),
        ];
        let program = self.find(plugin["type"].as_str().unwrap());
        exec_plugin_in_netns(
            &self.node.name,
            &program,
            &env,
            conf.to_string().as_bytes(),
            LIMIT,
        )
    }

    /// ADD through the list; returns every plugin's output.
    fn add_list(&self, list: &Value) -> Vec<Value> {
        let mut prev: Option<Value> = None;
        let mut outputs = Vec::new();
        for plugin in list["plugins"].as_array().unwrap() {
            let r = self.exec("ADD", list, plugin, prev.as_ref());
            assert_eq!(r.status, Some(0), "ADD {}: {r:?}", plugin["type"]);
            let out = r.json();
            assert_eq!(
                out["cniVersion"], list["cniVersion"],
                "ADD {}: {r:?}",
                plugin["type"]
            );
            CniResult::from_value(&out).unwrap_or_else(|e| {
                panic!(
                    "ADD {} printed an invalid result ({e}): {r:?}",
                    plugin["type"]
                )
            });
            prev = Some(out.clone());
            outputs.push(out);
        }
        outputs
    }

    fn check_list(&self, list: &Value, final_result: &Value) {
        for plugin in list["plugins"].as_array().unwrap() {
            let r = self.exec("CHECK", list, plugin, Some(final_result));
            // Debian's portmap 1.1.1 CHECK always looks for ip6tables rules
            // that its ADD never made for an IPv4 pod
            // (containernetworking/plugins#819): accept exactly that failure.
            if plugin["type"] == "portmap"
                && r.status == Some(1)
                && r.json()["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("could not check ipv6 dnat"))
            {
                eprintln!(
                    "note: portmap CHECK hit containernetworking/plugins#819: {}",
                    r.stdout
                );
                continue;
            }
            assert_eq!(r.status, Some(0), "CHECK {}: {r:?}", plugin["type"]);
        }
    }

    fn del_list(&self, list: &Value, final_result: &Value) {
        for plugin in list["plugins"].as_array().unwrap().iter().rev() {
            let r = self.exec("DEL", list, plugin, Some(final_result));
            assert_eq!(r.status, Some(0), "DEL {}: {r:?}", plugin["type"]);
        }
    }
}

fn require_root(test: &str) -> bool {
    switchyard_ovs_harness::require_root_and(test, &["ip", "iptables"])
}

fn mtu(pod: &Netns) -> String {
    pod.exec(&["cat", "/sys/class/net/eth0/mtu"])
        .trim()
        .to_owned()
}

fn chain(version: &str) {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    // What the agent would have built: a veth pair, vethsy0 on the node, eth0
    // in the pod (bandwidth finds the host end through the veth peer index).
    node.exec(&[
        "ip", "link", "add", "vethsy0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    node.exec(&["ip", "link", "set", "vethsy0", "up"]);
    pod.exec(&["ip", "addr", "add", "10.244.1.5/24", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    // IPv4 only: Debian's portmap 1.1.1 CHECK looks for IPv4 rules in
    // ip6tables when the result also has an IPv6 address (fixed upstream after
    // containernetworking/plugins#819).
    let mut result = sample_result(&pod.path());
    result.ips.retain(|ip| ip.address.addr().is_ipv4());
    result.routes.retain(|r| r.dst.addr().is_ipv4());
    let agent = Agent::start(result);

    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(switchyard_bin(), bin_dir.path().join("switchyard")).unwrap();
    let rt = Runtime {
        cni_path: vec![bin_dir.path().to_owned(), PathBuf::from("/usr/lib/cni")],
        node: &node,
        container_id: format!("chain{}{}", std::process::id(), version.replace('.', "")),
        netns: pod.path(),
        ifname: "eth0",
        capability_args: json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 8000000, "ingressBurst": 800000, "egressRate": 4000000, "egressBurst": 400000},
            "io.kubernetes.cri.pod-annotations": {"switchyard.io/segment": "overlay"}
        }),
    };
    let list = json!({
        "cniVersion": version,
        "name": "sy-chain",
        "plugins": [
            {"type": "switchyard", "agentSocket": agent.socket, "timeoutSeconds": 10,
             "capabilities": {"io.kubernetes.cri.pod-annotations": true}},
            {"type": "tuning", "mtu": 1400, "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    assert_eq!(mtu(&pod), "1500");

    let outputs = rt.add_list(&list);
    let final_result = outputs.last().unwrap().clone();
    // Chained plugins pass switchyard's result through: same addresses and sandbox.
    assert_eq!(final_result["ips"], outputs[0]["ips"], "{final_result}");
    assert_eq!(final_result["interfaces"][1]["sandbox"], json!(pod.path()));
    if version == "1.0.0" {
        assert!(final_result["ips"][0].get("version").is_none());
    } else {
        assert_eq!(final_result["ips"][0]["version"], json!("4"));
    }
    // tuning did its work inside the pod netns named by switchyard's result.
    assert_eq!(mtu(&pod), "1400");
    assert_eq!(
        pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])
            .trim(),
        "1"
    );
    // portmap installed its DNAT rule in the node netns for the pod's address.
    let nat = node.exec(&["iptables", "-t", "nat", "-S"]);
    assert!(nat.contains("18080") && nat.contains("10.244.1.5"), "{nat}");
    // bandwidth shaped the host end named in switchyard's result, and made an
    // ifb device for egress.
    let qdisc = node.exec(&["tc", "qdisc", "show", "dev", "vethsy0"]);
    assert!(qdisc.contains("tbf"), "{qdisc}");
    let links = node.exec(&["ip", "-o", "link", "show", "type", "ifb"]);
    assert!(!links.trim().is_empty(), "no ifb device: {links}");
    let seen = agent.seen();
    assert_eq!(
        seen[0]
            .config
            .runtime_config
            .pod_annotations
            .get("switchyard.io/segment")
            .map(String::as_str),
        Some("overlay")
    );

    if version != "0.3.1" {
        rt.check_list(&list, &final_result);
    }
    rt.del_list(&list, &final_result);
    rt.del_list(&list, &final_result); // DEL is idempotent for the whole chain
    assert_eq!(mtu(&pod), "1500", "tuning restores the MTU on DEL");
    let nat = node.exec(&["iptables", "-t", "nat", "-S"]);
    assert!(!nat.contains("18080"), "{nat}");
    let links = node.exec(&["ip", "-o", "link", "show", "type", "ifb"]);
    assert!(
        links.trim().is_empty(),
        "bandwidth left its ifb device: {links}"
    );
    let verbs: Vec<_> = agent.seen().iter().map(|r| r.verb).collect();
    let expected_checks = usize::from(version != "0.3.1");
    assert_eq!(verbs.len(), 1 + expected_checks + 2, "{verbs:?}");
}

#[test]
fn chained_with_tuning_portmap_bandwidth_0_3_1() {
    if require_root("chained_with_tuning_portmap_bandwidth_0_3_1") {
        chain("0.3.1");
    }
}

#[test]
fn chained_with_tuning_portmap_bandwidth_0_4_0() {
    if require_root("chained_with_tuning_portmap_bandwidth_0_4_0") {
        chain("0.4.0");
    }
}

#[test]
fn chained_with_tuning_portmap_bandwidth_1_0_0() {
    if require_root("chained_with_tuning_portmap_bandwidth_1_0_0") {
        chain("1.0.0");
    }
}
