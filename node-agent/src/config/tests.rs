//! Tests of the whole configuration: defaults, flags over file, the
//! `--segment` syntax, validation and `--help`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use super::*;

fn parse(args: &[&str]) -> Flags {
    let mut all = vec!["switchyard-agent"];
    all.extend_from_slice(args);
    Flags::try_parse_from(all).unwrap()
}

fn vlan_seg(name: &str, vlan: u16) -> SegmentConfig {
    SegmentConfig {
        name: name.into(),
        kind: SegmentKind::Vlan,
        vlan,
        subnet: Some("10.20.0.0/24".parse().unwrap()),
        gateway: Some("10.20.0.1".parse().unwrap()),
        uplink: Some("eth1".into()),
        allow_untagged: false,
        more_subnets: Vec::new(),
    }
}

fn merge_err(flags: &Flags, file: FileConfig) -> String {
    AgentConfig::merge(flags, file, Some("n1".into()))
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let cfg = AgentConfig::merge(
        &Flags::default(),
        FileConfig::default(),
        Some("node-a".into()),
    )
    .unwrap();
    assert_eq!(cfg.node_name, "node-a");
    assert_eq!(cfg.kube, KubeAccess::InCluster);
    assert_eq!(cfg.ovsdb_endpoint, "unix:/var/run/openvswitch/db.sock");
    assert_eq!(
        cfg.bridge_mgmt_socket(),
        PathBuf::from("/var/run/openvswitch/br-int.mgmt")
    );
    assert_eq!(cfg.datapath_type, DatapathType::System);
    assert_eq!(
        cfg.cni_socket,
        PathBuf::from("/var/run/switchyard/cni.sock")
    );
    assert_eq!(cfg.default_segment, "default");
    assert_eq!(cfg.segments, vec![SegmentConfig::overlay("default")]);
    assert_eq!(cfg.service_cidr.to_string(), "10.96.0.0/12");
    assert_eq!(cfg.mtu, 1450);
    assert_eq!(cfg.tunnel_type, TunnelType::Geneve);
    assert_eq!(cfg.listen_address.to_string(), "0.0.0.0:9465");
    assert_eq!(
        cfg.netns_policy().allowed_prefixes,
        crate::netns::NetnsPolicy::default().allowed_prefixes
    );
}

#[test]
fn yaml_file_keys_match_flags_and_flags_override() {
    let yaml = r#"
node-name: from-file
kubeconfig: /etc/kube/config
ovsdb-endpoint: tcp:127.0.0.1:6640
ovs-rundir: /run/ovs-lab
bridge: br-lab
datapath-type: netdev
cni-socket: /run/sy/cni.sock
default-segment: blue
mtu: 1400
tunnel-type: vxlan
listen-address: 0.0.0.0:9999
netns-prefixes: [/run/user/1000/netns]
segments:
  - name: default
    kind: overlay
  - name: blue
    kind: vlan
    vlan: 100
    subnet: 10.20.0.0/24
    gateway: 10.20.0.1
    uplink: eth1
"#;
    let file = FileConfig::from_yaml(yaml, Path::new("test.yaml")).unwrap();
    let cfg = AgentConfig::merge(&Flags::default(), file.clone(), Some("from-env".into())).unwrap();
    assert_eq!(cfg.node_name, "from-file");
    assert_eq!(cfg.kube, KubeAccess::Kubeconfig("/etc/kube/config".into()));
    assert_eq!(
        cfg.bridge_mgmt_socket(),
        PathBuf::from("/run/ovs-lab/br-lab.mgmt")
    );
    assert_eq!(cfg.datapath_type, DatapathType::Netdev);
    assert_eq!(cfg.tunnel_type, TunnelType::Vxlan);
    assert_eq!(cfg.segment("blue").unwrap().vlan, 100);
    assert_eq!(
        cfg.netns_prefixes,
        vec![PathBuf::from("/run/user/1000/netns")]
    );

    let flags = parse(&[
        "--node-name",
        "from-flag",
        "--bridge",
        "br-x",
        "--mtu",
        "1500",
        "--datapath-type",
        "system",
        "--default-segment",
        "default",
    ]);
    let cfg = AgentConfig::merge(&flags, file, None).unwrap();
    assert_eq!(cfg.node_name, "from-flag");
    assert_eq!(cfg.bridge, "br-x");
    assert_eq!(cfg.mtu, 1500);
    assert_eq!(cfg.datapath_type, DatapathType::System);
    assert_eq!(cfg.default_segment, "default");
    // Not overridden: still from the file.
    assert_eq!(cfg.ovsdb_endpoint, "tcp:127.0.0.1:6640");
}

#[test]
fn config_file_is_loaded_through_the_config_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, "node-name: n7\nmtu: 1400\n").unwrap();
    let flags = parse(&["--config", path.to_str().unwrap()]);
    let cfg = AgentConfig::from_flags(&flags, None).unwrap();
    assert_eq!((cfg.node_name.as_str(), cfg.mtu), ("n7", 1400));

    let missing = parse(&["--config", "/nonexistent/agent.yaml"]);
    let err = AgentConfig::from_flags(&missing, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read config file /nonexistent/agent.yaml"),
        "{err}"
    );
}

#[test]
fn unknown_and_malformed_yaml_keys_are_rejected_with_location() {
    let err = FileConfig::from_yaml("node-nmae: x\n", Path::new("a.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.yaml") && err.contains("node-nmae"), "{err}");
    let err = FileConfig::from_yaml(
        "segments:\n  - name: x\n    kind: vlan\n    vlan: 70000\n",
        Path::new("a.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line"), "{err}");
}

#[test]
fn node_name_precedence_and_absence() {
    let file = FileConfig {
        node_name: Some("f".into()),
        ..Default::default()
    };
    assert_eq!(
        AgentConfig::merge(&Flags::default(), file, Some("e".into()))
            .unwrap()
            .node_name,
        "f"
    );
    assert_eq!(
        AgentConfig::merge(&Flags::default(), FileConfig::default(), Some("e".into()))
            .unwrap()
            .node_name,
        "e"
    );
    let err = AgentConfig::merge(&Flags::default(), FileConfig::default(), None).unwrap_err();
    assert!(matches!(err, ConfigError::MissingNodeName));
    assert!(err.to_string().contains("NODE_NAME"));
}

#[test]
fn segment_flag_parses_and_replaces_file_list() {
    let flags = parse(&[
        "--segment",
        "name=default,kind=overlay",
        "--segment",
        "name=red,kind=vlan,vlan=200,subnet=10.30.0.0/24,gateway=10.30.0.254,uplink=eth2",
    ]);
    assert_eq!(flags.segments.len(), 2);
    let file = FileConfig {
        segments: Some(vec![SegmentConfig::overlay("default")]),
        ..Default::default()
    };
    let cfg = AgentConfig::merge(&flags, file, Some("n".into())).unwrap();
    let red = cfg.segment("red").unwrap();
    assert_eq!(red.vlan, 200);
    assert_eq!(red.gateway, Some(Ipv4Addr::new(10, 30, 0, 254)));

    let bad = Flags::try_parse_from(["a", "--segment", "name=x,kind=vlan,color=blue"])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("unknown segment key \"color\""), "{bad}");
    let bad = Flags::try_parse_from(["a", "--segment", "name=x,kind=bridge"])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("kind must be overlay or vlan"), "{bad}");
}

#[test]
fn validation_errors_are_specific() {
    let with = |segments: Vec<SegmentConfig>| FileConfig {
        segments: Some(segments),
        ..Default::default()
    };
    let f = Flags::default();

    let err = merge_err(
        &f,
        with(vec![
            SegmentConfig::overlay("default"),
            vlan_seg("blue", 4095),
        ]),
    );
    assert!(err.contains("vlan 4095 is out of range"), "{err}");

    let err = merge_err(
        &f,
        with(vec![SegmentConfig::overlay("default"), vlan_seg("blue", 0)]),
    );
    assert_eq!(
        err,
        "segment \"blue\": untagged vlan segments (vlan 0 or allow-untagged: true, the uplink's native VLAN) are not supported, the uplink carries tagged VLANs only; set vlan to 1..=4094 and remove allow-untagged"
    );
    // allow-untagged does not make it acceptable, and is refused on its own.
    let mut untagged = vlan_seg("blue", 0);
    untagged.allow_untagged = true;
    assert_eq!(
        merge_err(&f, with(vec![SegmentConfig::overlay("default"), untagged])),
        err
    );
    let mut native_too = vlan_seg("blue", 100);
    native_too.allow_untagged = true;
    assert_eq!(
        merge_err(
            &f,
            with(vec![SegmentConfig::overlay("default"), native_too])
        ),
        err
    );

    let mut outside = vlan_seg("blue", 10);
    outside.gateway = Some("10.99.0.1".parse().unwrap());
    let err = merge_err(&f, with(vec![SegmentConfig::overlay("default"), outside]));
    assert_eq!(
        err,
        "segment \"blue\": gateway 10.99.0.1 is outside subnet 10.20.0.0/24"
    );

    let mut bcast = vlan_seg("blue", 10);
    bcast.gateway = Some("10.20.0.255".parse().unwrap());
    assert!(
        merge_err(&f, with(vec![SegmentConfig::overlay("default"), bcast])).contains("broadcast")
    );

    let mut hostbits = vlan_seg("blue", 10);
    hostbits.subnet = Some("10.20.0.5/24".parse().unwrap());
    assert!(
        merge_err(&f, with(vec![SegmentConfig::overlay("default"), hostbits]))
            .contains("did you mean 10.20.0.0/24")
    );

    let mut no_uplink = vlan_seg("blue", 10);
    no_uplink.uplink = None;
    assert_eq!(
        merge_err(&f, with(vec![SegmentConfig::overlay("default"), no_uplink])),
        "segment \"blue\" (kind vlan) needs uplink"
    );

    let mut overlay_subnet = SegmentConfig::overlay("default");
    overlay_subnet.subnet = Some("10.0.0.0/24".parse().unwrap());
    assert!(merge_err(&f, with(vec![overlay_subnet])).contains("subnet is only for vlan segments"));

    let err = merge_err(&f, with(vec![vlan_seg("blue", 10)]));
    assert!(
        err.contains("default-segment \"default\" is not a configured segment"),
        "{err}"
    );
    assert!(err.contains("\"blue\""), "{err}");

    let err = merge_err(
        &f,
        with(vec![
            SegmentConfig::overlay("default"),
            SegmentConfig::overlay("default"),
        ]),
    );
    assert!(err.contains("defined twice"), "{err}");

    let err = merge_err(
        &f,
        with(vec![
            SegmentConfig::overlay("default"),
            vlan_seg("a", 7),
            vlan_seg("b", 7),
        ]),
    );
    assert!(err.contains("both use VLAN 7"), "{err}");

    assert!(
        merge_err(&f, with(vec![SegmentConfig::overlay("Bad_Name")]))
            .contains("invalid segment name")
    );
    assert!(merge_err(&f, with(vec![])).contains("no segments configured"));

    let err = merge_err(
        &parse(&["--service-cidr", "10.96.0.1/16"]),
        FileConfig::default(),
    );
    assert!(
        err.contains("service-cidr 10.96.0.1/16 has host bits set: use 10.96.0.0/16"),
        "{err}"
    );
    let err = merge_err(
        &parse(&["--service-cidr", "10.16.0.0/12"]),
        with(vec![
            SegmentConfig::overlay("default"),
            vlan_seg("blue", 100),
        ]),
    );
    assert!(
        err.contains(
            "service-cidr 10.16.0.0/12 overlaps the subnet 10.20.0.0/24 of segment \"blue\""
        ),
        "{err}"
    );
    let cfg = AgentConfig::merge(
        &parse(&["--service-cidr", "10.96.0.0/16"]),
        FileConfig::from_yaml("service-cidr: 10.100.0.0/16\n", Path::new("f")).unwrap(),
        Some("n1".into()),
    )
    .unwrap();
    assert_eq!(cfg.service_cidr.to_string(), "10.96.0.0/16");
    let err = merge_err(&parse(&["--mtu", "100"]), FileConfig::default());
    assert!(err.contains("mtu 100 is out of range"), "{err}");
    let err = merge_err(
        &parse(&["--bridge", "a-very-long-bridge-name"]),
        FileConfig::default(),
    );
    assert!(err.contains("invalid bridge name"), "{err}");
    for prefix in ["/", "/run", "run/netns", "/run/netns/../.."] {
        let err = merge_err(&parse(&["--netns-prefix", prefix]), FileConfig::default());
        assert!(err.contains("invalid netns-prefix"), "{prefix}: {err}");
    }
    for bad in [
        "/var/run/db.sock",
        "tcp:127.0.0.1",
        "tcp:host:http",
        "unix:",
    ] {
        let err = merge_err(&parse(&["--ovsdb-endpoint", bad]), FileConfig::default());
        assert_eq!(
            err,
            format!("invalid ovsdb-endpoint {bad:?}: expected unix:PATH or tcp:HOST:PORT")
        );
    }
    for good in [
        "unix:/run/db.sock",
        "tcp:127.0.0.1:6640",
        "tcp:ovsdb.local:6640",
    ] {
        let cfg = AgentConfig::merge(
            &parse(&["--ovsdb-endpoint", good]),
            FileConfig::default(),
            Some("n1".into()),
        )
        .unwrap();
        assert_eq!(cfg.ovsdb_endpoint, good);
    }
}

#[test]
fn ssl_ovsdb_endpoints_are_refused_naming_the_supported_forms() {
    let expected = "ovsdb-endpoint \"ssl:10.0.0.1:6640\": ssl: (TLS) OVSDB endpoints are not supported; use unix:PATH or tcp:HOST:PORT";
    let err = AgentConfig::merge(
        &parse(&["--ovsdb-endpoint", "ssl:10.0.0.1:6640"]),
        FileConfig::default(),
        Some("n1".into()),
    )
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::UnsupportedOvsdbSsl(_)),
        "{err:?}"
    );
    assert_eq!(err.to_string(), expected);
    let file =
        FileConfig::from_yaml("ovsdb-endpoint: ssl:10.0.0.1:6640\n", Path::new("f")).unwrap();
    assert_eq!(merge_err(&Flags::default(), file), expected);
    let help = Flags::command().render_long_help().to_string();
    assert!(
        help.contains("unix:PATH or tcp:HOST:PORT (ssl: is not supported"),
        "{help}"
    );
}

#[test]
fn help_documents_every_key() {
    let help = Flags::command().render_long_help().to_string();
    for key in [
        "--config",
        "--node-name",
        "--kubeconfig",
        "--ovsdb-endpoint",
        "--ovs-rundir",
        "--bridge",
        "--datapath-type",
        "--cni-socket",
        "--default-segment",
        "--segment",
        "--mtu",
        "--tunnel-type",
        "--service-cidr",
        "--metrics-address",
        "--listen-address",
        "--log-format",
        "--netns-prefix",
    ] {
        assert!(help.contains(key), "--help lacks {key}");
    }
    assert!(help.contains("NODE_NAME") && help.contains("0.0.0.0:9465"));
    Flags::command().debug_assert();
}
