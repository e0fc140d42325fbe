//! Segments as configured: [`SegmentConfig`], its `--segment` syntax and
//! the rules one segment must satisfy on its own (the rules between
//! segments are in [`AgentConfig::validate`](super::AgentConfig::validate)).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use clap::ValueEnum;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::validate_ifname_like;

/// Largest 802.1Q VLAN id.
pub const MAX_VLAN: u16 = 4094;

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
    /// vlan segments from the API (`Segment` objects): the subnets after the first, each
    /// with its fabric gateway, appended by the namespace controller when the segment runs
    /// low. Pods get addresses from them once the first is full. Not in the file.
    #[serde(skip)]
    pub more_subnets: Vec<(Ipv4Net, Ipv4Addr)>,
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
            more_subnets: Vec::new(),
        }
    }

    /// Every subnet of a vlan segment with its gateway, the first one's first.
    pub fn subnets(&self) -> Vec<(Ipv4Net, Option<Ipv4Addr>)> {
        self.subnet
            .map(|s| (s, self.gateway))
            .into_iter()
            .chain(self.more_subnets.iter().map(|(s, g)| (*s, Some(*g))))
            .collect()
    }

    /// The address pool of a vlan segment (every subnet, each gateway reserved); `None`
    /// for a segment without a subnet.
    pub fn pool(&self) -> Result<Option<crate::ipam::Pool>, crate::ipam::IpamError> {
        let Some(subnet) = self.subnet else {
            return Ok(None);
        };
        let mut pool = crate::ipam::Pool::new(subnet, self.gateway)?;
        for (s, g) in &self.more_subnets {
            pool.add_subnet(*s, Some(*g))?;
        }
        Ok(Some(pool))
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

/// Checks one segment: its name, VLAN and the fields its kind needs or refuses.
pub(super) fn validate(seg: &SegmentConfig) -> Result<(), ConfigError> {
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
            validate_subnet(name, subnet, gateway)?;
            for (i, &(more, more_gateway)) in seg.more_subnets.iter().enumerate() {
                validate_subnet(name, more, more_gateway)?;
                let earlier =
                    std::iter::once(subnet).chain(seg.more_subnets[..i].iter().map(|m| m.0));
                for other in earlier {
                    if other.contains(&more) || more.contains(&other) {
                        return Err(ConfigError::SubnetsOverlap {
                            segment: name.clone(),
                            subnet: more,
                            other,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// One subnet of a vlan segment with its gateway: at most /30, a network address, the
/// gateway a host address inside it.
fn validate_subnet(name: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), ConfigError> {
    let segment = name.to_string();
    if subnet.prefix_len() > 30 {
        return Err(ConfigError::SubnetTooSmall { segment, subnet });
    }
    if subnet.trunc() != subnet {
        return Err(ConfigError::SubnetNotNetworkAddress {
            segment,
            subnet,
            network: subnet.trunc(),
        });
    }
    if !subnet.contains(&gateway) {
        return Err(ConfigError::GatewayOutsideSubnet {
            segment,
            gateway,
            subnet,
        });
    }
    if gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(ConfigError::GatewayNotHostAddress {
            segment,
            gateway,
            subnet,
        });
    }
    Ok(())
}
