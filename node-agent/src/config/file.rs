//! The YAML config file: [`FileConfig`], the same keys as the flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{ConfigError, DatapathType, SegmentConfig, TunnelType};

/// The YAML config file: the same keys as the flags, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Flags::node_name`](super::Flags::node_name).
    pub node_name: Option<String>,
    /// See [`Flags::kubeconfig`](super::Flags::kubeconfig).
    pub kubeconfig: Option<PathBuf>,
    /// See [`Flags::ovsdb_endpoint`](super::Flags::ovsdb_endpoint).
    pub ovsdb_endpoint: Option<String>,
    /// See [`Flags::ovs_rundir`](super::Flags::ovs_rundir).
    pub ovs_rundir: Option<PathBuf>,
    /// See [`Flags::bridge`](super::Flags::bridge).
    pub bridge: Option<String>,
    /// See [`Flags::datapath_type`](super::Flags::datapath_type).
    pub datapath_type: Option<DatapathType>,
    /// See [`Flags::cni_socket`](super::Flags::cni_socket).
    pub cni_socket: Option<PathBuf>,
    /// See [`Flags::default_segment`](super::Flags::default_segment).
    pub default_segment: Option<String>,
    /// See [`Flags::segments`](super::Flags::segments).
    pub segments: Option<Vec<SegmentConfig>>,
    /// See [`Flags::mtu`](super::Flags::mtu).
    pub mtu: Option<u32>,
    /// See [`Flags::service_cidr`](super::Flags::service_cidr).
    pub service_cidr: Option<Ipv4Net>,
    /// See [`Flags::tunnel_type`](super::Flags::tunnel_type).
    pub tunnel_type: Option<TunnelType>,
    /// See [`Flags::listen_address`](super::Flags::listen_address) (key `metrics-address`,
    /// or `listen-address`).
    #[serde(rename = "metrics-address", alias = "listen-address")]
    pub listen_address: Option<SocketAddr>,
    /// See [`Flags::log_format`](super::Flags::log_format).
    pub log_format: Option<switchyard_daemon::LogFormat>,
    /// See [`Flags::netns_prefixes`](super::Flags::netns_prefixes).
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
