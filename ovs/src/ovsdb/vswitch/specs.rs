//! What the helpers are asked to make: a bridge, a port with its interface.

use std::collections::BTreeMap;

use super::super::error::{Error, Result};
use super::super::types::Uuid;

/// What [`Client::ensure_bridge`](super::super::Client::ensure_bridge) makes sure of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeSpec {
    /// Bridge name.
    pub name: String,
    /// `datapath_type`, e.g. `netdev`; left alone when `None`.
    pub datapath_type: Option<String>,
    /// Keys set in `external_ids` (other keys are kept).
    pub external_ids: BTreeMap<String, String>,
    /// Keys set in `other_config`, e.g. `datapath-id`, `hwaddr` (other keys are kept).
    pub other_config: BTreeMap<String, String>,
    /// `fail_mode` (`secure` or `standalone`); left alone when `None`.
    pub fail_mode: Option<String>,
    /// OpenFlow versions, e.g. `OpenFlow13`, `OpenFlow15`; left alone when empty.
    pub protocols: Vec<String>,
}

impl BridgeSpec {
    /// A bridge on the userspace datapath (`datapath_type=netdev`).
    pub fn netdev(name: &str) -> Self {
        BridgeSpec {
            name: name.to_string(),
            datapath_type: Some("netdev".into()),
            ..Default::default()
        }
    }
}

/// A port with one interface, for [`Client::add_port`](super::super::Client::add_port).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortSpec {
    /// Port and interface name (e.g. the host end of a veth).
    pub name: String,
    /// Interface `type`: `None` for a system device (veth), or `internal`,
    /// `dummy`, `patch`, `geneve`, ...
    pub interface_type: Option<String>,
    /// Access VLAN (0-4095).
    pub tag: Option<u16>,
    /// Trunk VLANs (0-4095).
    pub trunks: Vec<u16>,
    /// Interface `options` (e.g. `peer`, `remote_ip`).
    pub options: BTreeMap<String, String>,
    /// `Port.external_ids`.
    pub port_external_ids: BTreeMap<String, String>,
    /// `Interface.external_ids`.
    pub interface_external_ids: BTreeMap<String, String>,
    /// `Interface.ofport_request`.
    pub ofport_request: Option<u16>,
    /// `Interface.mtu_request`.
    pub mtu_request: Option<u32>,
    /// `Port.vlan_mode` (`access`, `trunk`, `native-tagged`, `native-untagged`).
    pub vlan_mode: Option<String>,
}

impl PortSpec {
    /// A port for a system device (veth) named `name`.
    pub fn new(name: &str) -> Self {
        PortSpec {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Sets the interface type.
    pub fn with_type(mut self, interface_type: &str) -> Self {
        self.interface_type = Some(interface_type.to_string());
        self
    }

    /// Sets the access VLAN.
    pub fn with_tag(mut self, tag: u16) -> Self {
        self.tag = Some(tag);
        self
    }

    /// Sets the trunk VLANs.
    pub fn with_trunks(mut self, trunks: &[u16]) -> Self {
        self.trunks = trunks.to_vec();
        self
    }

    /// Adds an interface option.
    pub fn with_option(mut self, key: &str, value: &str) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Adds an external id to both the Port and the Interface.
    pub fn with_external_id(mut self, key: &str, value: &str) -> Self {
        self.port_external_ids.insert(key.into(), value.into());
        self.interface_external_ids.insert(key.into(), value.into());
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::InvalidArgument("port name is empty".into()));
        }
        if let Some(tag) = self.tag
            && tag > 4095
        {
            return Err(Error::InvalidArgument(format!(
                "port {}: VLAN tag {tag} is out of range 0-4095",
                self.name
            )));
        }
        if let Some(bad) = self.trunks.iter().find(|t| **t > 4095) {
            return Err(Error::InvalidArgument(format!(
                "port {}: trunk VLAN {bad} is out of range 0-4095",
                self.name
            )));
        }
        if let Some(0) = self.ofport_request {
            return Err(Error::InvalidArgument(format!(
                "port {}: ofport_request must be 1-65279",
                self.name
            )));
        }
        Ok(())
    }
}

/// Uuids of an added port and its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedPort {
    /// The `Port` row.
    pub port: Uuid,
    /// The `Interface` row.
    pub interface: Uuid,
}
