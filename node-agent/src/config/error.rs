//! [`ConfigError`]: why the configuration was refused, one variant per rule.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::MTU_RANGE;

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
    /// Two subnets of one segment overlap.
    #[error("segment {segment:?}: subnet {subnet} overlaps its subnet {other}")]
    SubnetsOverlap {
        /// The segment.
        segment: String,
        /// The later subnet.
        subnet: Ipv4Net,
        /// The earlier one it overlaps.
        other: Ipv4Net,
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
