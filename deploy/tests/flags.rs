//! The DaemonSet starts the binaries with flags and a config file their own
//! parsers accept, and the probes, mounts and sockets agree with that
//! configuration. The agent's flags and config file go through
//! `switchyard_agent::config`, the proxy's flags through
//! `switchyard_proxy::config::Flags` (the parser the `switchyard-proxy`
//! binary runs).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use common::{argv, container, manifest, mounted_at, object, pod_spec};
use serde_json::Value;
use switchyard_agent::config::{AgentConfig, FileConfig, Flags};
use switchyard_deploy::{AGENT_CONFIG_KEY, CONFIG_MAP, CONFLIST_KEY, Variant};
use switchyard_proxy::config::Flags as ProxyFlags;

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn probe_addr(probe: &Value) -> SocketAddr {
    let get = &probe["httpGet"];
    format!("{}:{}", get["host"].as_str().unwrap(), get["port"])
        .parse()
        .unwrap()
}

/// The address a probe connects to reaches a server bound to `bound` (the
/// same address, or the same port when bound to every address).
fn reaches(probe: &Value, bound: SocketAddr) -> bool {
    let to = probe_addr(probe);
    to.port() == bound.port() && (bound.ip().is_unspecified() || to.ip() == bound.ip())
}

/// The agent's full configuration as the DaemonSet gives it.
fn agent_config(docs: &[Value]) -> AgentConfig {
    let agent = container(docs, "agent");
    let flags = Flags::try_parse_from(argv(agent)).expect("agent flags parse");
    // --config names the ConfigMap's agent.yaml through the config volume.
    let config_path = flags.config.clone().expect("the agent is given --config");
    let (volume, key) =
        mounted_at(agent, config_path.to_str().unwrap()).expect("--config path is inside a mount");
    let cm_name = pod_spec(docs)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("--config is on a ConfigMap volume");
    assert_eq!(cm_name, CONFIG_MAP);
    assert_eq!(key, AGENT_CONFIG_KEY);
    let text = object(docs, "ConfigMap", CONFIG_MAP)["data"][key.as_str()]
        .as_str()
        .expect("ConfigMap has the agent config key");
    let file = FileConfig::from_yaml(text, &config_path).expect("agent config file parses");
    // The node name comes from $NODE_NAME = spec.nodeName.
    assert_eq!(
        env_value(agent, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let flags = Flags {
        config: None,
        ..flags
    };
    AgentConfig::merge(&flags, file, Some("node-1".into())).expect("agent config validates")
}

#[test]
fn agent_accepts_the_daemonset_flags_and_config_file() {
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let config = agent_config(&docs);
        let agent = container(&docs, "agent");

        // Probes reach the agent's listen address.
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(
                reaches(&agent[probe], config.listen_address),
                "agent {probe} does not reach {}",
                config.listen_address
            );
        }
        assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");

        // The CNI socket is on the host path the conflist names.
        let socket = config.cni_socket.to_str().unwrap();
        let (volume, _) = mounted_at(agent, socket).expect("CNI socket dir is mounted");
        assert_eq!(host_path(&docs, volume), Path::new("/var/run/switchyard"));
        let conflist: Value = serde_json::from_str(
            object(&docs, "ConfigMap", CONFIG_MAP)["data"][CONFLIST_KEY]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(conflist["plugins"][0]["agentSocket"], socket);

        // OVSDB and the bridge's OpenFlow socket are on the shared OVS run dir.
        let db = config
            .ovsdb_endpoint
            .strip_prefix("unix:")
            .expect("unix OVSDB endpoint");
        let (db_volume, _) = mounted_at(agent, db).expect("OVSDB socket is mounted");
        let (mgmt_volume, _) = mounted_at(agent, config.bridge_mgmt_socket().to_str().unwrap())
            .expect("bridge mgmt socket is mounted");
        assert_eq!(db_volume, "ovs-run");
        assert_eq!(mgmt_volume, "ovs-run");

        // Pod network namespaces created by the runtime are visible.
        let netns = mounted_at(agent, "/var/run/netns/cni-1234").expect("netns dir mounted");
        assert_eq!(host_path(&docs, netns.0), Path::new("/var/run/netns"));
        assert!(
            config
                .netns_prefixes
                .iter()
                .any(|p| p == Path::new("/var/run/netns")),
            "{:?}",
            config.netns_prefixes
        );
    }
}

fn host_path(docs: &[Value], volume: &str) -> PathBuf {
    let v = pod_spec(docs)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap();
    PathBuf::from(v["hostPath"]["path"].as_str().expect("a hostPath volume"))
}

/// The node name the tests stand in for `$NODE_NAME` (= `spec.nodeName`).
const NODE: &str = "node-1";

/// The proxy's flags from `args` (argv without the program name), with
/// `--node-name` standing in for `$NODE_NAME`, which the DaemonSet sets.
fn proxy_flags(args: &[String]) -> Result<ProxyFlags, clap::Error> {
    ProxyFlags::try_parse_from(
        std::iter::once("switchyard-proxy".to_string())
            .chain(args.iter().cloned())
            .chain([format!("--node-name={NODE}")]),
    )
}

#[test]
fn proxy_accepts_the_daemonset_flags() {
    // --node-name is required and read from $NODE_NAME when not given.
    let node_name = ProxyFlags::command()
        .get_arguments()
        .find(|a| a.get_id() == "node_name")
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    assert_eq!(node_name.as_deref(), Some("NODE_NAME"));
    for variant in Variant::ALL {
        let docs = manifest(variant);
        let proxy = container(&docs, "proxy");
        let args = argv(proxy);
        assert!(args[0].ends_with("/switchyard-proxy"));
        // The DaemonSet gives the node name through $NODE_NAME only.
        assert!(
            !args.iter().any(|a| a.starts_with("--node-name")),
            "{args:?}"
        );
        assert_eq!(
            env_value(proxy, "NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        let flags = proxy_flags(&args[1..]).unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        assert_eq!(flags.node_name, NODE);
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert!(
                reaches(&proxy[probe], flags.metrics_address),
                "proxy {probe} does not reach {}",
                flags.metrics_address
            );
            assert_eq!(proxy[probe]["httpGet"]["path"], path, "proxy {probe}");
        }
        // Same OVS run dir and bridge as the agent.
        let config = agent_config(&docs);
        assert_eq!(flags.ovs_rundir, config.ovs_rundir);
        assert_eq!(flags.bridge, config.bridge);
        let (volume, _) = mounted_at(proxy, &format!("{}/x.mgmt", flags.ovs_rundir.display()))
            .expect("proxy mounts the OVS run dir");
        assert_eq!(volume, "ovs-run");
        // The two metrics endpoints do not collide.
        assert_ne!(flags.metrics_address.port(), config.listen_address.port());
    }
}

#[test]
fn proxy_flag_check_rejects_bad_flags() {
    let err = proxy_flags(&["--metrics-adress=127.0.0.1:1".to_string()]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    assert!(err.to_string().contains("--metrics-adress"), "{err}");
    let err = proxy_flags(&["--metrics-address=nowhere".to_string()]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(err.to_string().contains("nowhere"), "{err}");
    let err = proxy_flags(&["--resync-period=-1".to_string()]).unwrap_err();
    assert!(err.to_string().contains("resync-period"), "{err}");
    // And the check itself passes good flags.
    let flags = proxy_flags(&["--metrics-address=127.0.0.1:1".to_string()]).unwrap();
    assert_eq!(
        flags.metrics_address,
        "127.0.0.1:1".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn agent_flag_check_rejects_bad_config() {
    let bad = FileConfig::from_yaml("mtu: 1450\nbridg: br-int\n", Path::new("agent.yaml"));
    assert!(bad.unwrap_err().to_string().contains("bridg"));
    assert!(Flags::try_parse_from(["switchyard-agent", "--confg=/x"]).is_err());
}

/// The Vagrant lab's `SWITCHYARD_SEGMENTS=vlan` edit of the ConfigMap
/// (vagrant/add-vlan-segment.py) yields a config the agent accepts, with the
/// segment the router VM serves.
#[test]
fn vagrant_vlan_segment_edit_gives_a_valid_agent_config() {
    use std::io::Write;
    let docs = manifest(Variant::BundledOvs);
    let cm = object(&docs, "ConfigMap", CONFIG_MAP);
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("vagrant/add-vlan-segment.py"))
        .args(["blue", "100", "10.20.0.0/24", "10.20.0.1", "eth2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cm.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let edited: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = edited["data"][AGENT_CONFIG_KEY].as_str().unwrap();
    let file = FileConfig::from_yaml(text, Path::new("agent.yaml")).unwrap();
    let config = AgentConfig::merge(&Flags::default(), file, Some("sy-worker1".into())).unwrap();
    let blue = config.segment("blue").expect("segment blue");
    assert_eq!(blue.vlan, 100);
    assert_eq!(blue.gateway, Some("10.20.0.1".parse().unwrap()));
    assert_eq!(blue.uplink.as_deref(), Some("eth2"));
    assert_eq!(config.default_segment, "default");
    // The router VM serves the same gateway on the same VLAN.
    let router = std::fs::read_to_string(common::repo_root().join("vagrant/router.sh")).unwrap();
    assert!(
        router.contains("\"100 10.20.0.1/24\""),
        "router.sh VLAN list"
    );
}

/// The Vagrant lab's `SWITCHYARD_TUNNEL` (vagrant/control-plane.sh) replaces
/// the one line `    tunnel-type: geneve` of each manifest's agent config;
/// the result is a config the agent accepts with that tunnel type.
#[test]
fn vagrant_tunnel_type_edit_gives_a_valid_agent_config() {
    use switchyard_agent::config::TunnelType;
    let line = "    tunnel-type: geneve";
    let script =
        std::fs::read_to_string(common::repo_root().join("vagrant/control-plane.sh")).unwrap();
    assert!(
        script.contains(&format!("tunnel_line='{line}'")),
        "control-plane.sh no longer edits {line:?}"
    );
    for variant in [Variant::BundledOvs, Variant::HostOvs] {
        let yaml = common::manifest_text(variant);
        assert_eq!(
            yaml.lines().filter(|l| *l == line).count(),
            1,
            "{variant:?}: one {line:?} line"
        );
        for (value, expected) in [("geneve", TunnelType::Geneve), ("vxlan", TunnelType::Vxlan)] {
            let edited = yaml.replace(line, &format!("    tunnel-type: {value}"));
            let docs = common::documents(&edited);
            let cm = object(&docs, "ConfigMap", CONFIG_MAP);
            let text = cm["data"][AGENT_CONFIG_KEY].as_str().unwrap();
            let file = FileConfig::from_yaml(text, Path::new("agent.yaml")).unwrap();
            let config =
                AgentConfig::merge(&Flags::default(), file, Some("sy-worker1".into())).unwrap();
            assert_eq!(config.tunnel_type, expected, "{variant:?} {value}");
        }
    }
}
