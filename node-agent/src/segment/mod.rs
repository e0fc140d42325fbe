//! Which segment and VLAN a pod gets, and its static IP/MAC requests.
//!
//! Order for segment and VLAN, each key on its own: the pod's annotation,
//! else its namespace's annotation, else the agent's default (the default
//! segment; the segment's configured VLAN). A pod's own annotation may only
//! repeat its namespace's choice unless the namespace lets its pods choose
//! ([`policy`]). Static IP and MAC come from pod annotations only (a
//! namespace-wide static address would collide) and stay inside the pod's
//! segment: an address in its subnet, a MAC no other pod of the segment on
//! this node has ([`mac_claims`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::config::{AgentConfig, MAX_VLAN, SegmentConfig, SegmentKind};
use crate::mac::MacAddr;

pub mod mac_claims;
pub mod policy;

pub use mac_claims::MacClaims;
pub use policy::{
    ANNOTATION_POD_PLACEMENT, FINALIZER_NAMESPACE_NETWORK, POD_PLACEMENT_ALLOW,
    POD_PLACEMENT_NAMESPACE, Rule,
};

/// Annotation naming the segment.
pub const ANNOTATION_SEGMENT: &str = "switchyard.io/segment";
/// Annotation giving the VLAN tag.
pub const ANNOTATION_VLAN: &str = "switchyard.io/vlan";
/// Annotation requesting a static IPv4 address (pods only).
pub const ANNOTATION_IP: &str = "switchyard.io/ip";
/// Namespace label asking for the namespace's own network (`dedicated`): the namespace
/// controller creates its Segment and annotates the namespace; until then its pods wait.
/// The namespace map [`decide`] gets carries this label beside the annotations.
pub const LABEL_NETWORK: &str = "switchyard.io/network";

/// Annotation requesting a static MAC address (pods only).
pub const ANNOTATION_MAC: &str = "switchyard.io/mac";

/// Where a decided value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A pod annotation.
    Pod,
    /// A namespace annotation.
    Namespace,
    /// The agent's configuration.
    Default,
    /// The network configuration's `args` (a standalone attachment).
    NetworkConfig,
}

/// The network a pod is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Segment name.
    pub segment: String,
    /// Segment kind.
    pub kind: SegmentKind,
    /// VLAN tag of the pod's OVS port; 0 = untagged.
    pub vlan: u16,
    /// Where the segment came from.
    pub segment_source: Source,
    /// Where the VLAN came from.
    pub vlan_source: Source,
    /// Requested static IPv4 address.
    pub static_ip: Option<Ipv4Addr>,
    /// Requested static MAC address.
    pub static_mac: Option<MacAddr>,
}

/// Why a pod's placement could not be decided. Each message names the
/// annotation and the object that carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The segment named is not configured.
    #[error(
        "{source_desc} annotation {ANNOTATION_SEGMENT}={name:?} names an unknown segment; configured segments: {known:?}"
    )]
    UnknownSegment {
        /// Where the name came from ("pod" / "namespace").
        source_desc: &'static str,
        /// The name.
        name: String,
        /// The configured names.
        known: Vec<String>,
    },
    /// VLAN annotation not a number.
    #[error(
        "{source_desc} annotation {ANNOTATION_VLAN}={value:?} is not a VLAN number; use 1..=4094"
    )]
    VlanNotANumber {
        /// Where it came from.
        source_desc: &'static str,
        /// The value.
        value: String,
    },
    /// VLAN outside 0..=4094.
    #[error("{source_desc} annotation {ANNOTATION_VLAN}={vlan} is out of range; use 1..=4094")]
    VlanOutOfRange {
        /// Where it came from.
        source_desc: &'static str,
        /// The value.
        vlan: u32,
    },
    /// VLAN 0 on a segment that must be tagged.
    #[error(
        "{source_desc} annotation {ANNOTATION_VLAN}=0 (untagged) is not allowed on segment {segment:?}; use 1..=4094"
    )]
    UntaggedNotAllowed {
        /// Where it came from.
        source_desc: &'static str,
        /// The segment.
        segment: String,
    },
    /// VLAN contradicts a vlan segment's fixed VLAN.
    #[error(
        "{source_desc} annotation {ANNOTATION_VLAN}={vlan} conflicts with segment {segment:?}, which is VLAN {segment_vlan}; remove the annotation or choose another segment"
    )]
    VlanConflict {
        /// Where it came from.
        source_desc: &'static str,
        /// Requested VLAN.
        vlan: u16,
        /// The segment.
        segment: String,
        /// The segment's VLAN.
        segment_vlan: u16,
    },
    /// IP annotation unparsable.
    #[error(
        "pod annotation {ANNOTATION_IP}={value:?} is not an IPv4 address (write it like 10.1.2.3, without a prefix)"
    )]
    InvalidIp {
        /// The value.
        value: String,
    },
    /// MAC annotation unparsable or not unicast.
    #[error("pod annotation {ANNOTATION_MAC}={value:?} is not a usable MAC address: {reason}")]
    InvalidMac {
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The namespace asks for its own network, which is not ready yet (CNI error 11).
    #[error("the namespace's own network is not ready: waiting for {waiting_for}")]
    NetworkNotReady {
        /// What it waits for.
        waiting_for: String,
    },
    /// Empty segment annotation.
    #[error("{source_desc} annotation {ANNOTATION_SEGMENT} is empty; remove it or name a segment")]
    EmptySegment {
        /// Where it came from.
        source_desc: &'static str,
    },
    /// A pod asks for another segment or VLAN than its namespace's, and the
    /// namespace does not let its pods choose ([`policy`]).
    #[error(
        "pod annotation {annotation}={value:?} is refused: pods of namespace {namespace:?} stay on their namespace's {namespace_choice}; {rule}"
    )]
    PlacementRefused {
        /// The pod annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// The pod's namespace.
        namespace: String,
        /// What the namespace chose, e.g. `segment "default", VLAN 0`.
        namespace_choice: String,
        /// The rule that applies.
        rule: Rule,
    },
    /// A static address outside the pod's segment.
    #[error(
        "pod annotation {ANNOTATION_IP}={ip} is outside the pod's segment {segment:?} ({range}); a static address must be one of its segment's addresses"
    )]
    StaticIpOutsideSegment {
        /// The address.
        ip: Ipv4Addr,
        /// The pod's segment.
        segment: String,
        /// Its addresses, e.g. `subnet 10.20.0.0/24`.
        range: String,
    },
    /// A static MAC another pod of the segment uses.
    #[error(
        "pod annotation {ANNOTATION_MAC}={mac} is refused: another pod of segment {segment:?} on this node uses that MAC ({holder}); choose another or remove the annotation"
    )]
    MacInUse {
        /// The MAC.
        mac: MacAddr,
        /// The segment.
        segment: String,
        /// Who holds it: `<container id>/<ifname>`.
        holder: String,
    },
}

fn describe(source: Source) -> &'static str {
    match source {
        Source::Pod => "pod",
        Source::Namespace => "namespace",
        Source::Default => "default",
        Source::NetworkConfig => "network configuration's args.cni",
    }
}

/// Decides the placement of a pod of `namespace` from the two annotation
/// maps and the configured segments. Pure: no I/O.
pub fn decide(
    namespace: &str,
    pod_annotations: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
    segments: &[SegmentConfig],
    default_segment: &str,
) -> Result<Placement, SegmentError> {
    policy::check(
        namespace,
        pod_annotations,
        namespace_annotations,
        segments,
        default_segment,
    )?;
    let pick = |key: &str| {
        pod_annotations
            .get(key)
            .map(|v| (v.trim(), Source::Pod))
            .or_else(|| {
                namespace_annotations
                    .get(key)
                    .map(|v| (v.trim(), Source::Namespace))
            })
    };

    let (segment_name, segment_source) = match pick(ANNOTATION_SEGMENT) {
        Some(("", source)) => {
            return Err(SegmentError::EmptySegment {
                source_desc: describe(source),
            });
        }
        Some((name, source)) => (name, source),
        None => (default_segment, Source::Default),
    };
    let dedicated =
        namespace_annotations.get(LABEL_NETWORK).map(String::as_str) == Some("dedicated");
    if dedicated && segment_source == Source::Default {
        return Err(SegmentError::NetworkNotReady {
            waiting_for: format!(
                "the namespace controller to create its segment and annotate the namespace with {ANNOTATION_SEGMENT}"
            ),
        });
    }
    if dedicated
        && segment_source == Source::Namespace
        && !segments.iter().any(|s| s.name == segment_name)
    {
        return Err(SegmentError::NetworkNotReady {
            waiting_for: format!("Segment {segment_name:?} to reach this node's agent"),
        });
    }
    let segment = segments
        .iter()
        .find(|s| s.name == segment_name)
        .ok_or_else(|| SegmentError::UnknownSegment {
            source_desc: describe(segment_source),
            name: segment_name.to_string(),
            known: segments.iter().map(|s| s.name.clone()).collect(),
        })?;

    let (vlan, vlan_source) = match pick(ANNOTATION_VLAN) {
        None => (segment.vlan, Source::Default),
        Some((value, source)) => {
            let source_desc = describe(source);
            let number: u32 = value.parse().map_err(|_| SegmentError::VlanNotANumber {
                source_desc,
                value: value.to_string(),
            })?;
            if number > u32::from(MAX_VLAN) {
                return Err(SegmentError::VlanOutOfRange {
                    source_desc,
                    vlan: number,
                });
            }
            let vlan = number as u16;
            if vlan == 0 && !segment.allows_untagged() {
                return Err(SegmentError::UntaggedNotAllowed {
                    source_desc,
                    segment: segment.name.clone(),
                });
            }
            if segment.kind == SegmentKind::Vlan && vlan != segment.vlan {
                return Err(SegmentError::VlanConflict {
                    source_desc,
                    vlan,
                    segment: segment.name.clone(),
                    segment_vlan: segment.vlan,
                });
            }
            (vlan, source)
        }
    };

    let static_ip = match pod_annotations.get(ANNOTATION_IP).map(|v| v.trim()) {
        None => None,
        Some(value) => Some(
            value
                .parse::<Ipv4Addr>()
                .map_err(|_| SegmentError::InvalidIp {
                    value: value.to_string(),
                })?,
        ),
    };
    // A vlan segment's addresses are its subnet (the overlay's, the node's
    // pod CIDR, is checked where the pool is known).
    let subnets = segment.subnets();
    if let Some(ip) = static_ip
        && segment.kind == SegmentKind::Vlan
        && !subnets.is_empty()
        && !subnets.iter().any(|(s, _)| s.contains(&ip))
    {
        let list: Vec<String> = subnets.iter().map(|(s, _)| s.to_string()).collect();
        return Err(SegmentError::StaticIpOutsideSegment {
            ip,
            segment: segment.name.clone(),
            range: format!("subnet {}", list.join(", ")),
        });
    }
    let static_mac = match pod_annotations.get(ANNOTATION_MAC).map(|v| v.trim()) {
        None => None,
        Some(value) => {
            let mac: MacAddr =
                value
                    .parse()
                    .map_err(|e: crate::mac::MacParseError| SegmentError::InvalidMac {
                        value: value.to_string(),
                        reason: e.reason.to_string(),
                    })?;
            if !mac.is_unicast() || mac.is_zero() {
                return Err(SegmentError::InvalidMac {
                    value: value.to_string(),
                    reason: "it must be a non-zero unicast address (first octet even)".to_string(),
                });
            }
            if mac == crate::next_hop::NEXT_HOP_MAC {
                return Err(SegmentError::InvalidMac {
                    value: value.to_string(),
                    reason: "it is the MAC of the node's next hop, which Open vSwitch answers for"
                        .to_string(),
                });
            }
            Some(mac)
        }
    };

    Ok(Placement {
        segment: segment.name.clone(),
        kind: segment.kind,
        vlan,
        segment_source,
        vlan_source,
        static_ip,
        static_mac,
    })
}

/// The placement of a standalone attachment (a container of a runtime other
/// than kubelet, which names no pod): the segment the network configuration
/// names in `args.cni.segment`, else the node's default, with its VLAN. The
/// network configuration is the node administrator's, so it decides, as a
/// namespace's owner does for pods. Pure: no I/O.
pub fn decide_standalone(
    requested: Option<&str>,
    segments: &[SegmentConfig],
    default_segment: &str,
) -> Result<Placement, SegmentError> {
    let (name, source) = match requested.map(str::trim) {
        Some("") => {
            return Err(SegmentError::EmptySegment {
                source_desc: describe(Source::NetworkConfig),
            });
        }
        Some(name) => (name, Source::NetworkConfig),
        None => (default_segment, Source::Default),
    };
    let segment =
        segments
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| SegmentError::UnknownSegment {
                source_desc: describe(source),
                name: name.to_string(),
                known: segments.iter().map(|s| s.name.clone()).collect(),
            })?;
    Ok(Placement {
        segment: segment.name.clone(),
        kind: segment.kind,
        vlan: segment.vlan,
        segment_source: source,
        vlan_source: Source::Default,
        static_ip: None,
        static_mac: None,
    })
}

/// [`decide`] with the segments and default from the agent configuration.
pub fn decide_for(
    config: &AgentConfig,
    namespace: &str,
    pod_annotations: &BTreeMap<String, String>,
    namespace_annotations: &BTreeMap<String, String>,
) -> Result<Placement, SegmentError> {
    decide(
        namespace,
        pod_annotations,
        namespace_annotations,
        &config.segments,
        &config.default_segment,
    )
}

#[cfg(test)]
mod tests;
