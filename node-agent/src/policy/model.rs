//! What the compiler reads: NetworkPolicies, pods and namespaces reduced to
//! the fields that decide flows, and label selectors. Conversions from the
//! Kubernetes types are here; a policy that cannot be read (a bad selector
//! operator, a bad CIDR) is refused with a clear error and changes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Why a NetworkPolicy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A selector expression with an unknown operator or bad values.
    #[error("selector: {0}")]
    Selector(String),
    /// An ipBlock with an unparsable or non-IPv4 CIDR.
    #[error("ipBlock: {0}")]
    IpBlock(String),
    /// A port outside 1..=65535, or an endPort with a named port.
    #[error("port: {0}")]
    Port(String),
    /// A protocol other than TCP, UDP and SCTP.
    #[error("protocol {0} is not TCP, UDP or SCTP")]
    Protocol(String),
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// `key In values`.
    In(String, Vec<String>),
    /// `key NotIn values`.
    NotIn(String, Vec<String>),
    /// `key Exists`.
    Exists(String),
    /// `key DoesNotExist`.
    DoesNotExist(String),
}

/// A label selector (`{}` selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// `matchLabels`.
    pub labels: Vec<(String, String)>,
    /// `matchExpressions`.
    pub expressions: Vec<Requirement>,
}

impl Selector {
    /// Selects objects with these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    /// From the API's form.
    pub fn from_api(s: &LabelSelector) -> Result<Selector, PolicyError> {
        let labels = s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut expressions = Vec::new();
        for e in s.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            expressions.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(PolicyError::Selector(format!(
                        "{key} {}: values must not be empty",
                        e.operator
                    )));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(PolicyError::Selector(format!(
                        "{key}: unknown operator {other}"
                    )));
                }
            });
        }
        Ok(Selector {
            labels,
            expressions,
        })
    }
}

/// A transport protocol a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Proto {
    /// From the API's spelling (default TCP).
    pub fn parse(s: Option<&str>) -> Result<Proto, PolicyError> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            other => Err(PolicyError::Protocol(other.to_string())),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

/// Which port(s) of a protocol a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Every port.
    Any,
    /// `port..=end` (a single port: `port == end`).
    Range(u16, u16),
    /// A named container port, resolved per destination pod.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// The protocol.
    pub proto: Proto,
    /// The port(s).
    pub port: PortMatch,
}

/// One entry of a rule's `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Pods by selectors: `pods` in the policy's namespace (no
    /// `namespaces`), or in the namespaces `namespaces` selects.
    Pods {
        /// `podSelector` (`None`: every pod).
        pods: Option<Selector>,
        /// `namespaceSelector` (`None`: the policy's namespace).
        namespaces: Option<Selector>,
    },
    /// `ipBlock`: the CIDR without the excepts.
    Block {
        /// `cidr`.
        cidr: Ipv4Net,
        /// `except`.
        except: Vec<Ipv4Net>,
    },
}

/// One ingress or egress rule. Empty `peers`: every peer; empty `ports`:
/// every port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `from` / `to`.
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<PortRule>,
}

/// A NetworkPolicy as the compiler reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `podSelector`.
    pub selector: Selector,
    /// Ingress rules, `None` when the policy does not isolate ingress.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, `None` when the policy does not isolate egress.
    pub egress: Option<Vec<Rule>>,
}

/// A pod as the compiler reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodInfo {
    /// Labels.
    pub labels: Labels,
    /// `status.podIP` (IPv4), none for host-network or pending pods.
    pub ip: Option<Ipv4Addr>,
    /// Named container ports: (name, protocol, number).
    pub named_ports: Vec<(String, Proto, u16)>,
}

impl PodInfo {
    /// From the API's Pod (host-network pods have no address of their own).
    pub fn from_api(p: &Pod) -> PodInfo {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let spec = p.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .filter(|_| !host_network);
        let named_ports = spec
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|cp| {
                        let name = cp.name.clone()?;
                        let proto = Proto::parse(cp.protocol.as_deref()).ok()?;
                        let port = u16::try_from(cp.container_port).ok()?;
                        Some((name, proto, port))
                    })
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            labels,
            ip,
            named_ports,
        }
    }

    /// The number of the named port `name` for `proto`.
    pub fn port_named(&self, name: &str, proto: Proto) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

/// A namespace's labels.
pub fn namespace_labels(ns: &Namespace) -> Labels {
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // Set by the API server since 1.22; the lab's may not.
    if let Some(name) = &ns.metadata.name {
        labels
            .entry("kubernetes.io/metadata.name".to_string())
            .or_insert_with(|| name.clone());
    }
    labels
}

fn peer(p: &NetworkPolicyPeer) -> Result<Option<Peer>, PolicyError> {
    if let Some(b) = &p.ip_block {
        let cidr: Ipv4Net = match b.cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => n,
            // IPv6 blocks never match an IPv4 pipeline.
            Ok(ipnet::IpNet::V6(_)) => return Ok(None),
            Err(e) => return Err(PolicyError::IpBlock(format!("{}: {e}", b.cidr))),
        };
        let mut except = Vec::new();
        for e in b.except.iter().flatten() {
            match e.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(n)) => except.push(n),
                Ok(ipnet::IpNet::V6(_)) => {}
                Err(err) => return Err(PolicyError::IpBlock(format!("except {e}: {err}"))),
            }
        }
        return Ok(Some(Peer::Block { cidr, except }));
    }
    let pods = p
        .pod_selector
        .as_ref()
        .map(Selector::from_api)
        .transpose()?;
    let namespaces = p
        .namespace_selector
        .as_ref()
        .map(Selector::from_api)
        .transpose()?;
    Ok(Some(Peer::Pods { pods, namespaces }))
}

fn port(p: &NetworkPolicyPort) -> Result<PortRule, PolicyError> {
    let proto = Proto::parse(p.protocol.as_deref())?;
    let in_range = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
    let port = match (&p.port, p.end_port) {
        (None, _) => PortMatch::Any,
        (Some(IntOrString::Int(n)), end) => {
            let first = in_range(*n).ok_or_else(|| PolicyError::Port(format!("{n}")))?;
            let last = match end {
                None => first,
                Some(e) => in_range(e)
                    .filter(|e| *e >= first)
                    .ok_or_else(|| PolicyError::Port(format!("endPort {e} < port {first}")))?,
            };
            PortMatch::Range(first, last)
        }
        (Some(IntOrString::String(s)), None) => PortMatch::Named(s.clone()),
        (Some(IntOrString::String(s)), Some(_)) => {
            return Err(PolicyError::Port(format!(
                "endPort cannot go with the named port {s}"
            )));
        }
    };
    Ok(PortRule { proto, port })
}

/// Peers of a rule; `None` when the rule can never match (only IPv6 blocks).
fn peers(list: Option<&Vec<NetworkPolicyPeer>>) -> Result<Option<Vec<Peer>>, PolicyError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(Some(Vec::new()));
    };
    let mut out = Vec::new();
    for p in list {
        if let Some(p) = peer(p)? {
            out.push(p);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Why SCTP rules are not enforced as written on the userspace datapath
/// (see `docs/network-policy.md`, "SCTP").
pub const SCTP_CAVEAT: &str = "the userspace datapath's conntrack (OVS 3.1) tracks SCTP by addresses only: \
     once an allowed SCTP association between two pods was answered, SCTP to any other port \
     between the same two addresses passes as established";

impl Policy {
    /// Whether a rule names SCTP.
    pub fn names_sctp(&self) -> bool {
        self.ingress
            .iter()
            .flatten()
            .chain(self.egress.iter().flatten())
            .flat_map(|r| &r.ports)
            .any(|p| p.proto == Proto::Sctp)
    }

    /// From the API's NetworkPolicy.
    pub fn from_api(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let spec = np.spec.clone().unwrap_or_default();
        let selector = Selector::from_api(&spec.pod_selector.clone().unwrap_or_default())?;
        let types = spec.policy_types.clone();
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (isolates_ingress, isolates_egress) = match &types {
            Some(t) => (
                t.iter().any(|t| t == "Ingress"),
                t.iter().any(|t| t == "Egress"),
            ),
            None => (true, has_egress),
        };
        let ingress = if isolates_ingress {
            let mut rules = Vec::new();
            for r in spec.ingress.iter().flatten() {
                let ports = r
                    .ports
                    .iter()
                    .flatten()
                    .map(port)
                    .collect::<Result<_, _>>()?;
                if let Some(peers) = peers(r.from.as_ref())? {
                    rules.push(Rule { peers, ports });
                }
            }
            Some(rules)
        } else {
            None
        };
        let egress = if isolates_egress {
            let mut rules = Vec::new();
            for r in spec.egress.iter().flatten() {
                let ports = r
                    .ports
                    .iter()
                    .flatten()
                    .map(port)
                    .collect::<Result<_, _>>()?;
                if let Some(peers) = peers(r.to.as_ref())? {
                    rules.push(Rule { peers, ports });
                }
            }
            Some(rules)
        } else {
            None
        };
        Ok(Policy {
            namespace,
            name,
            selector,
            ingress,
            egress,
        })
    }
}
