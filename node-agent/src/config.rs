//! The agent's configuration: command-line flags and a YAML file with the same
//! keys (flag `--node-name` is key `node-name:`). A flag given on the command
//! line overrides the file; the file overrides the built-in defaults.
//!
//! The YAML file is read with `serde_norway`, the maintained fork of the
//! archived `serde_yaml` (same API, libyaml-based, security fixes released);
//! `serde_yml` was rejected because it is itself marked deprecated and is now
//! a shim over another library.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Default OVSDB endpoint.
pub const DEFAULT_OVSDB_ENDPOINT: &str = "unix:/var/run/openvswitch/db.sock";
/// Default OVS run directory (holds `<bridge>.mgmt`).
pub const DEFAULT_OVS_RUNDIR: &str = "/var/run/openvswitch";
/// Default integration bridge.
pub const DEFAULT_BRIDGE: &str = "br-int";
/// Default CNI socket the `switchyard` binary talks to.
pub const DEFAULT_CNI_SOCKET: &str = "/var/run/switchyard/cni.sock";
/// Default segment name, and the name of the implicit overlay segment.
pub const DEFAULT_SEGMENT: &str = "default";
/// Default pod MTU: a 1500-byte underlay minus 50 bytes of Geneve/VXLAN.
pub const DEFAULT_MTU: u32 = 1450;
/// Default metrics/health listen address. Loopback so nothing is exposed off
/// the node unless asked; 9465 collides with no usual node component
/// (node-exporter 9100, kubelet 10250, Antrea agent 10350).
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9465";
/// Default Service ClusterIP range: Kubernetes' default
/// (`kube-apiserver --service-cluster-ip-range`, kubeadm's `serviceSubnet`).
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12) {
    Ok(net) => net,
    Err(_) => panic!("valid prefix"),
};
/// Smallest and largest MTU the agent accepts.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9216;
/// Largest 802.1Q VLAN id.
pub const MAX_VLAN: u16 = 4094;

/// OVS datapath type of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatapathType {
    /// Kernel datapath (openvswitch kernel module).
    #[default]
    System,
    /// Userspace datapath; pod veths need transmit checksum offload off.
    Netdev,
}

impl DatapathType {
    /// The value OVSDB's `Bridge.datapath_type` takes.
    pub fn as_ovsdb_str(self) -> &'static str {
        match self {
            DatapathType::System => "system",
            DatapathType::Netdev => "netdev",
        }
    }
}

/// Encapsulation between nodes for overlay segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum TunnelType {
    /// Geneve (UDP 6081).
    #[default]
    Geneve,
    /// VXLAN (UDP 4789).
    Vxlan,
}

/// What kind of L2 network a segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    /// Per-node pod CIDR, node is the gateway, encapsulated between nodes.
    Overlay,
    /// VLAN trunked to an uplink; gateway and subnet are in the fabric.
    Vlan,
}

impl fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentKind::Overlay => "overlay",
            SegmentKind::Vlan => "vlan",
        })
    }
}

/// One segment as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SegmentConfig {
    /// Unique name, used in the `switchyard.io/segment` annotation.
    pub name: String,
    /// overlay or vlan.
    pub kind: SegmentKind,
    /// VLAN tag of the pod ports; 0 = untagged (overlay segments only: an
    /// untagged vlan segment is refused, the uplink carries tagged VLANs
    /// only).
    #[serde(default)]
    pub vlan: u16,
    /// vlan segments: the segment's IPv4 subnet (pool of pod addresses).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// vlan segments: the fabric gateway, inside `subnet`.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// vlan segments: the node NIC the VLAN is trunked to.
    #[serde(default)]
    pub uplink: Option<String>,
    /// vlan segments: the uplink's native, untagged VLAN (VLAN 0). Not
    /// supported: `true` is refused with a clear error (the key is kept so
    /// `allow-untagged: false` still parses).
    #[serde(default)]
    pub allow_untagged: bool,
}

impl SegmentConfig {
    /// An untagged overlay segment.
    pub fn overlay(name: &str) -> SegmentConfig {
        SegmentConfig {
            name: name.to_string(),
            kind: SegmentKind::Overlay,
            vlan: 0,
            subnet: None,
            gateway: None,
            uplink: None,
            allow_untagged: false,
        }
    }

    /// Whether pods of this segment may be untagged (VLAN 0): on overlay
    /// segments only (the untagged part of a vlan segment on the uplink is
    /// not supported, see [`ConfigError::UntaggedNotAllowed`]).
    pub fn allows_untagged(&self) -> bool {
        match self.kind {
            SegmentKind::Overlay => true,
            SegmentKind::Vlan => false,
        }
    }
}

/// Parses `--segment name=blue,kind=vlan,vlan=100,subnet=10.1.0.0/24,gateway=10.1.0.1,uplink=eth1`.
impl FromStr for SegmentConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut name = None;
        let mut kind = None;
        let mut seg = SegmentConfig::overlay("");
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {pair:?}"))?;
            match key {
                "name" => name = Some(value.to_string()),
                "kind" => {
                    kind = Some(
                        SegmentKind::from_str(value, true)
                            .map_err(|_| format!("kind must be overlay or vlan, got {value:?}"))?,
                    )
                }
                "vlan" => {
                    seg.vlan = value.parse().map_err(|_| {
                        format!("vlan must be a number 0..{MAX_VLAN}, got {value:?}")
                    })?
                }
                "subnet" => {
                    seg.subnet = Some(value.parse().map_err(|_| {
                        format!("subnet must be an IPv4 CIDR like 10.1.0.0/24, got {value:?}")
                    })?)
                }
                "gateway" => {
                    seg.gateway =
                        Some(value.parse().map_err(|_| {
                            format!("gateway must be an IPv4 address, got {value:?}")
                        })?)
                }
                "uplink" => seg.uplink = Some(value.to_string()),
                "allow-untagged" => {
                    seg.allow_untagged = value.parse().map_err(|_| {
                        format!("allow-untagged must be true or false, got {value:?}")
                    })?
                }
                other => {
                    return Err(format!(
                        "unknown segment key {other:?} (known: name, kind, vlan, subnet, gateway, uplink, allow-untagged)"
                    ));
                }
            }
        }
        seg.name = name.ok_or("segment needs name=...")?;
        seg.kind = kind.ok_or("segment needs kind=overlay or kind=vlan")?;
        Ok(seg)
    }
}

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
    /// Address of the metrics and health HTTP endpoint [default: 127.0.0.1:9465].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_address: Option<SocketAddr>,
    /// Directory a CNI_NETNS path may resolve into, repeatable; /proc/<pid>/ns/net is always accepted.
    /// Given on the command line, the list replaces the file's list
    /// [default: /var/run/netns, /run/netns, /var/run/docker/netns, /run/docker/netns].
    #[arg(long = "netns-prefix", value_name = "DIR")]
    pub netns_prefixes: Vec<PathBuf>,
}

/// The YAML config file: the same keys as the flags, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Flags::node_name`].
    pub node_name: Option<String>,
    /// See [`Flags::kubeconfig`].
    pub kubeconfig: Option<PathBuf>,
    /// See [`Flags::ovsdb_endpoint`].
    pub ovsdb_endpoint: Option<String>,
    /// See [`Flags::ovs_rundir`].
    pub ovs_rundir: Option<PathBuf>,
    /// See [`Flags::bridge`].
    pub bridge: Option<String>,
    /// See [`Flags::datapath_type`].
    pub datapath_type: Option<DatapathType>,
    /// See [`Flags::cni_socket`].
    pub cni_socket: Option<PathBuf>,
    /// See [`Flags::default_segment`].
    pub default_segment: Option<String>,
    /// See [`Flags::segments`].
    pub segments: Option<Vec<SegmentConfig>>,
    /// See [`Flags::mtu`].
    pub mtu: Option<u32>,
    /// See [`Flags::service_cidr`].
    pub service_cidr: Option<Ipv4Net>,
    /// See [`Flags::tunnel_type`].
    pub tunnel_type: Option<TunnelType>,
    /// See [`Flags::listen_address`].
    pub listen_address: Option<SocketAddr>,
    /// See [`Flags::netns_prefixes`].
    pub netns_prefixes: Option<Vec<PathBuf>>,
}

impl FileConfig {
    /// Parses YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<FileConfig, ConfigError> {
        serde_norway::from_str(text).map_err(|source| ConfigError::ParseFile {
            path: origin.to_path_buf(),
            source,
        })
    }

    /// Reads and parses a YAML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::from_yaml(&text, path)
    }
}

/// Where the agent gets API server credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAccess {
    /// The pod's service account.
    InCluster,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
}

/// The complete, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Name of this node.
    pub node_name: String,
    /// How to reach the API server.
    pub kube: KubeAccess,
    /// OVSDB endpoint.
    pub ovsdb_endpoint: String,
    /// OVS run directory.
    pub ovs_rundir: PathBuf,
    /// Integration bridge.
    pub bridge: String,
    /// Bridge datapath type.
    pub datapath_type: DatapathType,
    /// CNI socket path.
    pub cni_socket: PathBuf,
    /// Name of the default segment (always one of `segments`).
    pub default_segment: String,
    /// All segments, names unique.
    pub segments: Vec<SegmentConfig>,
    /// Pod MTU.
    pub mtu: u32,
    /// Whether `mtu` was configured; if not, the agent derives it from the
    /// underlay's MTU at start ([`DEFAULT_MTU`] until then).
    pub mtu_configured: bool,
    /// Service ClusterIP range, routed from the node through the gateway.
    pub service_cidr: Ipv4Net,
    /// Overlay encapsulation.
    pub tunnel_type: TunnelType,
    /// Metrics/health listen address.
    pub listen_address: SocketAddr,
    /// Directories CNI_NETNS paths may resolve into.
    pub netns_prefixes: Vec<PathBuf>,
}

impl AgentConfig {
    /// Loads the file named by `--config` (if any), merges flags over it and
    /// validates. `env_node_name` is `$NODE_NAME` (passed in so tests need not
    /// touch the process environment).
    pub fn from_flags(
        flags: &Flags,
        env_node_name: Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let file = match &flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        AgentConfig::merge(flags, file, env_node_name)
    }

    /// Flags over file over defaults, then validation.
    pub fn merge(
        flags: &Flags,
        file: FileConfig,
        env_node_name: Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let node_name = flags
            .node_name
            .clone()
            .or(file.node_name)
            .or(env_node_name)
            .filter(|n| !n.is_empty())
            .ok_or(ConfigError::MissingNodeName)?;
        let segments = if !flags.segments.is_empty() {
            flags.segments.clone()
        } else {
            file.segments
                .unwrap_or_else(|| vec![SegmentConfig::overlay(DEFAULT_SEGMENT)])
        };
        let netns_prefixes = if !flags.netns_prefixes.is_empty() {
            flags.netns_prefixes.clone()
        } else {
            file.netns_prefixes.unwrap_or_else(|| {
                crate::netns::DEFAULT_ALLOWED_PREFIXES
                    .iter()
                    .map(PathBuf::from)
                    .collect()
            })
        };
        let config = AgentConfig {
            node_name,
            kube: match flags.kubeconfig.clone().or(file.kubeconfig) {
                Some(path) => KubeAccess::Kubeconfig(path),
                None => KubeAccess::InCluster,
            },
            ovsdb_endpoint: flags
                .ovsdb_endpoint
                .clone()
                .or(file.ovsdb_endpoint)
                .unwrap_or_else(|| DEFAULT_OVSDB_ENDPOINT.to_string()),
            ovs_rundir: flags
                .ovs_rundir
                .clone()
                .or(file.ovs_rundir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OVS_RUNDIR)),
            bridge: flags
                .bridge
                .clone()
                .or(file.bridge)
                .unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            datapath_type: flags
                .datapath_type
                .or(file.datapath_type)
                .unwrap_or_default(),
            cni_socket: flags
                .cni_socket
                .clone()
                .or(file.cni_socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_SOCKET)),
            default_segment: flags
                .default_segment
                .clone()
                .or(file.default_segment)
                .unwrap_or_else(|| DEFAULT_SEGMENT.to_string()),
            segments,
            mtu: flags.mtu.or(file.mtu).unwrap_or(DEFAULT_MTU),
            mtu_configured: flags.mtu.or(file.mtu).is_some(),
            service_cidr: flags
                .service_cidr
                .or(file.service_cidr)
                .unwrap_or(DEFAULT_SERVICE_CIDR),
            tunnel_type: flags.tunnel_type.or(file.tunnel_type).unwrap_or_default(),
            listen_address: flags
                .listen_address
                .or(file.listen_address)
                .unwrap_or_else(|| {
                    DEFAULT_LISTEN_ADDRESS
                        .parse()
                        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9465)))
                }),
            netns_prefixes,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule; the first violation is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_ifname_like("bridge", &self.bridge)?;
        // The OVSDB client's own parser: what passes here is what it connects to
        // (it has no TLS, so an accepted ssl: endpoint would be retried forever).
        if self
            .ovsdb_endpoint
            .parse::<switchyard_ovs::ovsdb::Endpoint>()
            .is_err()
        {
            return Err(if self.ovsdb_endpoint.starts_with("ssl:") {
                ConfigError::UnsupportedOvsdbSsl(self.ovsdb_endpoint.clone())
            } else {
                ConfigError::InvalidOvsdbEndpoint(self.ovsdb_endpoint.clone())
            });
        }
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(ConfigError::MtuOutOfRange(self.mtu));
        }
        for prefix in &self.netns_prefixes {
            let usable = prefix.is_absolute()
                && prefix.components().count() >= 3
                && !prefix
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if !usable {
                return Err(ConfigError::InvalidNetnsPrefix(prefix.clone()));
            }
        }
        if self.service_cidr.trunc() != self.service_cidr {
            return Err(ConfigError::ServiceCidrHostBits(self.service_cidr));
        }
        if self.segments.is_empty() {
            return Err(ConfigError::NoSegments);
        }
        for seg in &self.segments {
            let Some(subnet) = seg.subnet else { continue };
            if subnet.contains(&self.service_cidr) || self.service_cidr.contains(&subnet) {
                return Err(ConfigError::ServiceCidrOverlapsSegment {
                    service_cidr: self.service_cidr,
                    segment: seg.name.clone(),
                    subnet,
                });
            }
        }
        let mut names = BTreeSet::new();
        let mut tags: Vec<(u16, &str)> = Vec::new();
        for seg in &self.segments {
            validate_segment(seg)?;
            if !names.insert(seg.name.as_str()) {
                return Err(ConfigError::DuplicateSegment(seg.name.clone()));
            }
            if seg.vlan != 0 {
                if let Some((_, other)) = tags.iter().find(|(tag, _)| *tag == seg.vlan) {
                    return Err(ConfigError::DuplicateVlan {
                        vlan: seg.vlan,
                        first: other.to_string(),
                        second: seg.name.clone(),
                    });
                }
                tags.push((seg.vlan, &seg.name));
            }
        }
        if !names.contains(self.default_segment.as_str()) {
            return Err(ConfigError::UnknownDefaultSegment {
                name: self.default_segment.clone(),
                known: names.iter().map(|s| s.to_string()).collect(),
            });
        }
        Ok(())
    }

    /// The segment called `name`.
    pub fn segment(&self, name: &str) -> Option<&SegmentConfig> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Which CNI_NETNS paths to accept.
    pub fn netns_policy(&self) -> crate::netns::NetnsPolicy {
        crate::netns::NetnsPolicy {
            allowed_prefixes: self.netns_prefixes.clone(),
            ..crate::netns::NetnsPolicy::default()
        }
    }

    /// `<ovs_rundir>/<bridge>.mgmt`, the bridge's OpenFlow management socket.
    pub fn bridge_mgmt_socket(&self) -> PathBuf {
        self.ovs_rundir.join(format!("{}.mgmt", self.bridge))
    }
}

fn validate_ifname_like(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ConfigError::InvalidInterfaceName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

fn validate_segment(seg: &SegmentConfig) -> Result<(), ConfigError> {
    let name = &seg.name;
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid_name {
        return Err(ConfigError::InvalidSegmentName(name.clone()));
    }
    if seg.vlan > MAX_VLAN {
        return Err(ConfigError::VlanOutOfRange {
            segment: name.clone(),
            vlan: seg.vlan,
        });
    }
    if seg.kind == SegmentKind::Vlan && (seg.vlan == 0 || seg.allow_untagged) {
        return Err(ConfigError::UntaggedNotAllowed {
            segment: name.clone(),
        });
    }
    match seg.kind {
        SegmentKind::Overlay => {
            for (field, set) in [
                ("subnet", seg.subnet.is_some()),
                ("gateway", seg.gateway.is_some()),
                ("uplink", seg.uplink.is_some()),
                ("allow-untagged", seg.allow_untagged),
            ] {
                if set {
                    return Err(ConfigError::FieldNotForOverlay {
                        segment: name.clone(),
                        field,
                    });
                }
            }
        }
        SegmentKind::Vlan => {
            let missing = |field| ConfigError::MissingSegmentField {
                segment: name.clone(),
                field,
            };
            let subnet = seg.subnet.ok_or_else(|| missing("subnet"))?;
            let gateway = seg.gateway.ok_or_else(|| missing("gateway"))?;
            let uplink = seg.uplink.as_deref().ok_or_else(|| missing("uplink"))?;
            validate_ifname_like("uplink", uplink)?;
            if subnet.prefix_len() > 30 {
                return Err(ConfigError::SubnetTooSmall {
                    segment: name.clone(),
                    subnet,
                });
            }
            if subnet.trunc() != subnet {
                return Err(ConfigError::SubnetNotNetworkAddress {
                    segment: name.clone(),
                    subnet,
                    network: subnet.trunc(),
                });
            }
            if !subnet.contains(&gateway) {
                return Err(ConfigError::GatewayOutsideSubnet {
                    segment: name.clone(),
                    gateway,
                    subnet,
                });
            }
            if gateway == subnet.network() || gateway == subnet.broadcast() {
                return Err(ConfigError::GatewayNotHostAddress {
                    segment: name.clone(),
                    gateway,
                    subnet,
                });
            }
        }
    }
    Ok(())
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema.
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parse error (with line/column).
        source: serde_norway::Error,
    },
    /// No node name anywhere.
    #[error(
        "node name is not set: pass --node-name, set node-name in the config file, or set NODE_NAME (the DaemonSet passes spec.nodeName)"
    )]
    MissingNodeName,
    /// Bad OVSDB endpoint.
    #[error("invalid ovsdb-endpoint {0:?}: expected unix:PATH or tcp:HOST:PORT")]
    InvalidOvsdbEndpoint(String),
    /// An `ssl:` OVSDB endpoint: the OVSDB client has no TLS.
    #[error(
        "ovsdb-endpoint {0:?}: ssl: (TLS) OVSDB endpoints are not supported; use unix:PATH or tcp:HOST:PORT"
    )]
    UnsupportedOvsdbSsl(String),
    /// The service CIDR has host bits set.
    #[error("service-cidr {0} has host bits set: use {net}", net = .0.trunc())]
    ServiceCidrHostBits(Ipv4Net),
    /// The service CIDR overlaps a segment's subnet.
    #[error(
        "service-cidr {service_cidr} overlaps the subnet {subnet} of segment {segment:?}: the node routes the service CIDR to the service proxy, so pick ranges that do not overlap"
    )]
    ServiceCidrOverlapsSegment {
        /// The service CIDR.
        service_cidr: Ipv4Net,
        /// The segment.
        segment: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// MTU outside the accepted range.
    #[error("mtu {0} is out of range: use {min}..={max}", min = MTU_RANGE.start(), max = MTU_RANGE.end())]
    MtuOutOfRange(u32),
    /// Interface-like name unusable.
    #[error("invalid {what} name {name:?}: use 1-15 characters without '/', ':' or spaces")]
    InvalidInterfaceName {
        /// Which setting.
        what: &'static str,
        /// The value.
        name: String,
    },
    /// A netns prefix too broad or not absolute.
    #[error(
        "invalid netns-prefix {0:?}: use an absolute directory at least two levels deep, without '..' (e.g. /run/netns)"
    )]
    InvalidNetnsPrefix(PathBuf),
    /// Empty segment list.
    #[error(
        "no segments configured: remove the empty segments list to get the default overlay segment"
    )]
    NoSegments,
    /// Segment name unusable in an annotation.
    #[error(
        "invalid segment name {0:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
    )]
    InvalidSegmentName(String),
    /// Two segments with one name.
    #[error("segment {0:?} is defined twice")]
    DuplicateSegment(String),
    /// Two segments with one VLAN tag.
    #[error(
        "segments {first:?} and {second:?} both use VLAN {vlan}: each tagged segment needs its own VLAN"
    )]
    DuplicateVlan {
        /// The tag.
        vlan: u16,
        /// First segment using it.
        first: String,
        /// Second segment using it.
        second: String,
    },
    /// VLAN id above 4094.
    #[error(
        "segment {segment:?}: vlan {vlan} is out of range: use 1..=4094 (0 = untagged where allowed)"
    )]
    VlanOutOfRange {
        /// The segment.
        segment: String,
        /// The value.
        vlan: u16,
    },
    /// An untagged vlan segment (VLAN 0 or `allow-untagged: true`): the
    /// uplink's native VLAN is not supported.
    #[error(
        "segment {segment:?}: untagged vlan segments (vlan 0 or allow-untagged: true, the uplink's native VLAN) are not supported, the uplink carries tagged VLANs only; set vlan to 1..=4094 and remove allow-untagged"
    )]
    UntaggedNotAllowed {
        /// The segment.
        segment: String,
    },
    /// A vlan-only field on an overlay segment.
    #[error(
        "segment {segment:?}: {field} is only for vlan segments (overlay segments take the node's pod CIDR)"
    )]
    FieldNotForOverlay {
        /// The segment.
        segment: String,
        /// The field.
        field: &'static str,
    },
    /// A vlan segment lacks a field.
    #[error("segment {segment:?} (kind vlan) needs {field}")]
    MissingSegmentField {
        /// The segment.
        segment: String,
        /// The field.
        field: &'static str,
    },
    /// Subnet too small to hold a gateway and a pod.
    #[error("segment {segment:?}: subnet {subnet} is too small: use a prefix of /30 or shorter")]
    SubnetTooSmall {
        /// The segment.
        segment: String,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// Subnet given with host bits.
    #[error("segment {segment:?}: subnet {subnet} has host bits set; did you mean {network}?")]
    SubnetNotNetworkAddress {
        /// The segment.
        segment: String,
        /// The subnet as given.
        subnet: Ipv4Net,
        /// The network it belongs to.
        network: Ipv4Net,
    },
    /// Gateway not in subnet.
    #[error("segment {segment:?}: gateway {gateway} is outside subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The segment.
        segment: String,
        /// The gateway.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// Gateway is the network or broadcast address.
    #[error(
        "segment {segment:?}: gateway {gateway} is the network or broadcast address of {subnet}"
    )]
    GatewayNotHostAddress {
        /// The segment.
        segment: String,
        /// The gateway.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// Default segment not among the segments.
    #[error(
        "default-segment {name:?} is not a configured segment (configured: {known:?}); set default-segment to one of them"
    )]
    UnknownDefaultSegment {
        /// The name given.
        name: String,
        /// The configured names.
        known: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert_eq!(cfg.listen_address.to_string(), "127.0.0.1:9465");
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
        let cfg =
            AgentConfig::merge(&Flags::default(), file.clone(), Some("from-env".into())).unwrap();
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
            merge_err(&f, with(vec![SegmentConfig::overlay("default"), bcast]))
                .contains("broadcast")
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
        assert!(
            merge_err(&f, with(vec![overlay_subnet])).contains("subnet is only for vlan segments")
        );

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
            "--listen-address",
            "--netns-prefix",
        ] {
            assert!(help.contains(key), "--help lacks {key}");
        }
        assert!(help.contains("NODE_NAME") && help.contains("127.0.0.1:9465"));
        Flags::command().debug_assert();
    }
}
