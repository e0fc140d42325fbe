//! The pure half of namespace networks: from what the API holds (namespaces, Segments,
//! Egress pools, address counts) to the writes that make it right. No I/O, so every rule
//! (one VLAN/subnet/SNAT address per namespace, orphans, untagged objects left alone) is
//! unit-tested here and the I/O half only carries the writes out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use switchyard_api::{SegmentKind, SegmentSpec, SegmentSubnet};

/// Which namespaces get a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// Namespaces labelled `switchyard.io/network: dedicated`.
    Label,
    /// Every namespace except the system ones (`kube-*`, `default`, the controller's).
    All,
}

/// How namespace networks are carved (the controller's `--namespace-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Which namespaces opt in.
    pub opt_in: OptIn,
    /// VLANs the controller may give out.
    pub vlans: RangeInclusive<u16>,
    /// Where subnets are carved from.
    pub supernet: Ipv4Net,
    /// Prefix length of each subnet (e.g. 26).
    pub subnet_prefix: u8,
    /// The uplink NIC of the Segments it creates.
    pub uplink: String,
    /// The Egress IPPool SNAT addresses come from (`None`: every pool with `usage: Egress`,
    /// by name).
    pub egress_pool: Option<String>,
    /// Percentage of a segment's addresses in use at which another subnet is appended.
    pub append_at_percent: u8,
    /// Namespaces never opted in by `All` (besides `kube-*`).
    pub system_namespaces: Vec<String>,
    /// The RouteTarget holding the namespaces' SNAT rules (`None`: addresses are allocated,
    /// no rule is written).
    pub route_target: Option<String>,
}

impl Config {
    /// Builds and checks the configuration from the controller's flags: `opt_in` is `label`
    /// or `all`, `vlans` like `1000-1999`, `supernet` like `10.64.0.0/16`.
    pub fn from_flags(
        opt_in: &str,
        vlans: &str,
        supernet: &str,
        subnet_prefix: u8,
        uplink: &str,
    ) -> Result<Config, String> {
        let opt_in = match opt_in {
            "label" => OptIn::Label,
            "all" => OptIn::All,
            other => {
                return Err(format!(
                    "--namespace-networks must be label or all, got {other:?}"
                ));
            }
        };
        let (lo, hi) = vlans
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| *a >= 1 && a <= b && *b <= 4094)
            .ok_or_else(|| {
                format!("--namespace-vlans must be FIRST-LAST within 1-4094, got {vlans:?}")
            })?;
        let supernet: Ipv4Net = supernet
            .parse()
            .map_err(|_| format!("--namespace-supernet must be an IPv4 CIDR, got {supernet:?}"))?;
        if supernet.trunc() != supernet {
            return Err(format!(
                "--namespace-supernet {supernet} is not a network address"
            ));
        }
        if subnet_prefix < supernet.prefix_len() || subnet_prefix > 29 {
            return Err(format!(
                "--namespace-subnet-prefix {subnet_prefix} must be between the supernet's /{} and /29",
                supernet.prefix_len()
            ));
        }
        if uplink.is_empty() {
            return Err("--namespace-uplink must name the nodes' uplink NIC".to_string());
        }
        Ok(Config {
            opt_in,
            vlans: lo..=hi,
            supernet,
            subnet_prefix,
            uplink: uplink.to_string(),
            egress_pool: None,
            append_at_percent: 90,
            system_namespaces: vec!["default".to_string()],
            route_target: None,
        })
    }
}

/// A namespace as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Whether it asks for a network (by the rule of [`OptIn`]).
    pub opted_in: bool,
    /// Being deleted.
    pub deleting: bool,
    /// Carries the namespace-network finalizer.
    pub has_finalizer: bool,
    /// Its `switchyard.io/segment` annotation.
    pub segment_annotation: Option<String>,
    /// Its `switchyard.io/snat-address` annotation.
    pub snat_annotation: Option<String>,
}

/// A Segment as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seg {
    /// Name.
    pub name: String,
    /// Its `switchyard.io/cluster` label.
    pub cluster: Option<String>,
    /// Its `switchyard.io/namespace-uid` label.
    pub namespace_uid: Option<String>,
    /// Being deleted.
    pub deleting: bool,
    /// The spec.
    pub spec: SegmentSpec,
    /// Pod addresses allocated in it (its SegmentAddress objects and previous-design ConfigMap entries).
    pub used: usize,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a Segment for namespace `namespace` (UID `uid`).
    Create {
        /// Segment name.
        name: String,
        /// Namespace name.
        namespace: String,
        /// Namespace UID (its label).
        uid: String,
        /// The spec.
        spec: SegmentSpec,
    },
    /// Delete a Segment this cluster made whose namespace is gone, deleting or opted out.
    Delete {
        /// Segment name.
        name: String,
    },
    /// Append a subnet to a nearly full Segment.
    Append {
        /// Segment name.
        name: String,
        /// The new subnet.
        subnet: SegmentSubnet,
    },
    /// Set (or clear, with `None`) a namespace's segment and SNAT annotations and its
    /// finalizer.
    Namespace {
        /// Namespace name.
        name: String,
        /// Segment annotation wanted.
        segment: Option<String>,
        /// SNAT annotation wanted.
        snat: Option<String>,
        /// Finalizer wanted.
        finalizer: bool,
    },
}

/// What cannot be given out now (reported as a warning and a metric, retried every pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortage {
    /// No free VLAN in the range.
    Vlan,
    /// No free subnet in the supernet.
    Subnet,
    /// No free address in the Egress pools (the segment is created without one).
    Snat,
}

/// The plan of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Writes, in order.
    pub actions: Vec<Action>,
    /// What ran out, per namespace.
    pub shortages: Vec<(String, Shortage)>,
}

/// The Segment name of a namespace's network.
pub fn segment_name(namespace: &str) -> String {
    // Namespace names are DNS labels (<= 63): the Segment name stays a DNS subdomain.
    format!("ns-{namespace}")
}

/// Whether a namespace opts in under `config`.
pub fn opted_in(config: &Config, name: &str, labels: &BTreeMap<String, String>) -> bool {
    match config.opt_in {
        OptIn::Label => {
            labels
                .get(switchyard_api::LABEL_NETWORK)
                .map(String::as_str)
                == Some(switchyard_api::NETWORK_DEDICATED)
        }
        OptIn::All => {
            !name.starts_with("kube-") && !config.system_namespaces.iter().any(|s| s == name)
        }
    }
}

/// Plans one pass. `cluster` is this cluster's tag value; `egress` the addresses of the
/// Egress pools in order.
pub fn plan(
    config: &Config,
    cluster: &str,
    namespaces: &[Ns],
    segments: &[Seg],
    egress: &[IpAddr],
) -> Plan {
    let mut out = Plan::default();
    let ours = |s: &Seg| s.cluster.as_deref() == Some(cluster) && s.namespace_uid.is_some();
    let live: BTreeMap<&str, &Ns> = namespaces
        .iter()
        .filter(|n| n.opted_in && !n.deleting)
        .map(|n| (n.uid.as_str(), n))
        .collect();

    // Taken: every Segment's VLAN, subnets and SNAT address (ours or not), so nothing is
    // ever given twice.
    let mut vlans: BTreeSet<u16> = BTreeSet::new();
    let mut subnets: Vec<Ipv4Net> = Vec::new();
    let mut snats: BTreeSet<IpAddr> = BTreeSet::new();
    for s in segments {
        if s.spec.kind == SegmentKind::Vlan {
            vlans.insert(s.spec.vlan);
        }
        subnets.extend(
            s.spec
                .subnets
                .iter()
                .filter_map(|n| n.cidr.parse::<Ipv4Net>().ok()),
        );
        snats.extend(
            s.spec
                .snat_address
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok()),
        );
    }

    // Orphans: ours, with a namespace UID that is no longer a live opted-in namespace.
    for s in segments.iter().filter(|s| ours(s) && !s.deleting) {
        let uid = s.namespace_uid.as_deref().unwrap_or_default();
        let owner = live.get(uid);
        if owner.is_none_or(|n| segment_name(&n.name) != s.name) {
            out.actions.push(Action::Delete {
                name: s.name.clone(),
            });
        }
    }

    for ns in namespaces {
        let name = segment_name(&ns.name);
        let mine = segments
            .iter()
            .find(|s| ours(s) && s.namespace_uid.as_deref() == Some(ns.uid.as_str()));
        if !ns.opted_in || ns.deleting {
            // Released once no Segment of this namespace exists any more.
            let released = mine.is_none();
            let want_finalizer = ns.has_finalizer && !released;
            let (segment, snat) = if ns.deleting {
                (ns.segment_annotation.clone(), ns.snat_annotation.clone())
            } else if ns.has_finalizer && ns.segment_annotation.as_deref() == Some(name.as_str()) {
                (None, None)
            } else {
                (ns.segment_annotation.clone(), ns.snat_annotation.clone())
            };
            if want_finalizer != ns.has_finalizer
                || segment != ns.segment_annotation
                || snat != ns.snat_annotation
            {
                out.actions.push(Action::Namespace {
                    name: ns.name.clone(),
                    segment,
                    snat,
                    finalizer: want_finalizer,
                });
            }
            continue;
        }
        let seg_spec = match mine {
            Some(s) if !s.deleting && s.name == name => Some(s.spec.clone()),
            Some(_) => None, // an old one still going away: wait for it
            None => {
                // A Segment of that name that is not this namespace's (an untagged one, or
                // another cluster's) is never touched: this namespace waits.
                if segments.iter().any(|s| s.name == name) {
                    None
                } else {
                    let Some(vlan) = config.vlans.clone().find(|v| !vlans.contains(v)) else {
                        out.shortages.push((ns.name.clone(), Shortage::Vlan));
                        continue;
                    };
                    let Some(subnet) = free_subnet(config, &subnets) else {
                        out.shortages.push((ns.name.clone(), Shortage::Subnet));
                        continue;
                    };
                    let snat = egress.iter().find(|a| !snats.contains(a)).copied();
                    if snat.is_none() && !egress.is_empty() {
                        out.shortages.push((ns.name.clone(), Shortage::Snat));
                    }
                    vlans.insert(vlan);
                    subnets.push(subnet.0);
                    snats.extend(snat);
                    let spec = SegmentSpec {
                        kind: SegmentKind::Vlan,
                        vlan,
                        subnets: vec![subnet.1],
                        uplink: Some(config.uplink.clone()),
                        snat_address: snat.map(|a| a.to_string()),
                    };
                    out.actions.push(Action::Create {
                        name: name.clone(),
                        namespace: ns.name.clone(),
                        uid: ns.uid.clone(),
                        spec: spec.clone(),
                    });
                    Some(spec)
                }
            }
        };
        let Some(spec) = seg_spec else {
            if !ns.has_finalizer {
                out.actions.push(Action::Namespace {
                    name: ns.name.clone(),
                    segment: ns.segment_annotation.clone(),
                    snat: ns.snat_annotation.clone(),
                    finalizer: true,
                });
            }
            continue;
        };
        if let Some(s) = mine.filter(|s| s.name == name)
            && nearly_full(config, s)
        {
            if let Some(subnet) = free_subnet(config, &subnets) {
                subnets.push(subnet.0);
                out.actions.push(Action::Append {
                    name: name.clone(),
                    subnet: subnet.1,
                });
            } else {
                out.shortages.push((ns.name.clone(), Shortage::Subnet));
            }
        }
        let want_segment = Some(name.clone());
        if ns.segment_annotation != want_segment
            || ns.snat_annotation != spec.snat_address
            || !ns.has_finalizer
        {
            out.actions.push(Action::Namespace {
                name: ns.name.clone(),
                segment: want_segment,
                snat: spec.snat_address.clone(),
                finalizer: true,
            });
        }
    }
    out
}

/// Addresses pods can take in `subnets` (network, broadcast and gateway excluded).
pub fn capacity(subnets: &[SegmentSubnet]) -> usize {
    subnets
        .iter()
        .filter_map(|s| s.cidr.parse::<Ipv4Net>().ok())
        .map(|n| (1usize << (32 - u32::from(n.prefix_len()))).saturating_sub(3))
        .sum()
}

fn nearly_full(config: &Config, s: &Seg) -> bool {
    let cap = capacity(&s.spec.subnets);
    cap > 0 && s.used * 100 >= cap * usize::from(config.append_at_percent)
}

/// The lowest subnet of the configured size in the supernet overlapping none taken, with its
/// gateway (the first host address).
fn free_subnet(config: &Config, taken: &[Ipv4Net]) -> Option<(Ipv4Net, SegmentSubnet)> {
    let net = config
        .supernet
        .subnets(config.subnet_prefix)
        .ok()?
        .find(|n| !taken.iter().any(|t| t.contains(n) || n.contains(t)))?;
    let gateway = Ipv4Addr::from(u32::from(net.network()) + 1);
    Some((
        net,
        SegmentSubnet {
            cidr: net.to_string(),
            gateway: gateway.to_string(),
        },
    ))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
