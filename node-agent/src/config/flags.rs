//! The command line: [`Flags`]. The doc comments below are the `--help`
//! text, which `docs/configuration.md` repeats (checked by
//! `deploy/tests/docs.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ipnet::Ipv4Net;

use super::{DatapathType, SegmentConfig, TunnelType};

/// Command-line flags. Every flag is also a key of the YAML config file.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "switchyard-agent",
    version,
    about = "Switchyard node agent: wires pods to OVS ports"
)]
pub struct Flags {
    /// YAML config file with the same keys as these flags (e.g. `node-name: n1`); flags override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Name of this node's Node object [default: $NODE_NAME].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// kubeconfig to reach the API server [default: in-cluster service account].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// OVSDB endpoint: unix:PATH or tcp:HOST:PORT (ssl: is not supported and refused at start)
    /// [default: unix:/var/run/openvswitch/db.sock].
    #[arg(long, value_name = "ENDPOINT")]
    pub ovsdb_endpoint: Option<String>,
    /// OVS run directory, where `<bridge>.mgmt` OpenFlow sockets live [default: /var/run/openvswitch].
    #[arg(long, value_name = "DIR")]
    pub ovs_rundir: Option<PathBuf>,
    /// Integration bridge pods are attached to [default: br-int].
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Datapath type of the bridge [default: system].
    #[arg(long, value_enum)]
    pub datapath_type: Option<DatapathType>,
    /// Unix socket the CNI binary connects to [default: /var/run/switchyard/cni.sock].
    #[arg(long, value_name = "PATH")]
    pub cni_socket: Option<PathBuf>,
    /// Segment for pods without a segment annotation [default: default].
    #[arg(long, value_name = "NAME")]
    pub default_segment: Option<String>,
    /// A segment, repeatable: name=N,kind=overlay|vlan[,vlan=ID][,subnet=CIDR,gateway=IP,uplink=NIC][,allow-untagged=true].
    /// Given on the command line, the list replaces the file's list [default: one untagged overlay segment "default"].
    #[arg(long = "segment", value_name = "SPEC")]
    pub segments: Vec<SegmentConfig>,
    /// Pod interface MTU [default: the MTU of the interface holding the node's InternalIP minus 50 (Geneve/VXLAN), else 1450].
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// Service ClusterIP range the node routes to the service proxy through sy-gw0; must equal the
    /// API server's --service-cluster-ip-range [default: 10.96.0.0/12].
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<Ipv4Net>,
    /// Encapsulation between nodes for overlay segments [default: geneve].
    #[arg(long, value_enum)]
    pub tunnel_type: Option<TunnelType>,
    /// Address of /metrics, /healthz and /readyz (`--listen-address` is an alias) [default: 0.0.0.0:9465].
    #[arg(
        long = "metrics-address",
        alias = "listen-address",
        value_name = "ADDR:PORT"
    )]
    pub listen_address: Option<SocketAddr>,
    /// Log format on stderr: text (colour only on a terminal) or json (one object per line) [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<switchyard_daemon::LogFormat>,
    /// Directory a CNI_NETNS path may resolve into, repeatable; /proc/<pid>/ns/net is always accepted.
    /// Given on the command line, the list replaces the file's list
    /// [default: /var/run/netns, /run/netns, /var/run/docker/netns, /run/docker/netns].
    #[arg(long = "netns-prefix", value_name = "DIR")]
    pub netns_prefixes: Vec<PathBuf>,
}
