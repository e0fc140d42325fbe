//! The agent's configuration: command-line flags and a YAML file with the same
//! keys (flag `--node-name` is key `node-name:`). A flag given on the command
//! line overrides the file; the file overrides the built-in defaults.
//!
//! - [`Flags`] (`flags.rs`): the command line (clap); its doc comments are
//!   the `--help` text.
//! - [`FileConfig`] (`file.rs`): the YAML file, the same keys, all optional.
//! - [`AgentConfig`] (here): flags over file over defaults, then validation.
//! - [`SegmentConfig`] (`segment.rs`): one segment, its `--segment` syntax
//!   and its own validation.
//! - [`ConfigError`] (`error.rs`): why the configuration was refused.
//!
//! The YAML file is read with `serde_norway`, the maintained fork of the
//! archived `serde_yaml` (same API, libyaml-based, security fixes released);
//! `serde_yml` was rejected because it is itself marked deprecated and is now
//! a shim over another library.

mod error;
mod file;
mod flags;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::ValueEnum;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use file::FileConfig;
pub use flags::Flags;
pub use segment::{MAX_VLAN, SegmentConfig, SegmentKind};

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
/// Default metrics/health listen address: every address, so Prometheus
/// reaches it on the host network (`127.0.0.1:9465` keeps it on the node);
/// 9465 collides with no usual node component (node-exporter 9100, kubelet
/// 10250, Antrea agent 10350).
pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:9465";
/// Default Service ClusterIP range: Kubernetes' default
/// (`kube-apiserver --service-cluster-ip-range`, kubeadm's `serviceSubnet`).
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12) {
    Ok(net) => net,
    Err(_) => panic!("valid prefix"),
};
/// Smallest and largest MTU the agent accepts.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9216;

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
    /// Log format on stderr.
    pub log_format: switchyard_daemon::LogFormat,
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
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9465)))
                }),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
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
            segment::validate(seg)?;
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

/// Checks one segment on its own (name, VLAN, the fields its kind needs), as a file
/// segment is checked: for segments from the API (`segment_watch`).
pub(crate) fn validate_segment(seg: &SegmentConfig) -> Result<(), ConfigError> {
    segment::validate(seg)
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
