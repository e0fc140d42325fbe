//! Which node answers for each L2 address: every agent computes the same ordered list of
//! eligible nodes per address from the same API objects and the same liveness view, and the
//! first node of the list owns the address. Pure: API objects in, an order out.
//!
//! The order is rendezvous (highest random weight) hashing of (address, node name) with
//! [`score`], a fixed function (FNV-1a 64 with the splitmix64 finaliser) so that agents of
//! different versions agree during a rolling upgrade. A node that leaves the list moves only
//! the addresses it owned; a node that joins takes only the addresses it scores highest on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use switchyard_api::{AnnounceMode, IPPool, LB_CLASS, LabelSelector, PoolAddresses};

/// Nodes with this label never carry LoadBalancer traffic (the Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// What eligibility needs of a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// First IPv4 InternalIP (heartbeats go there).
    pub address: Option<Ipv4Addr>,
    /// Ready is not False (a node without a Ready condition counts as ready).
    pub ready: bool,
}

impl NodeFacts {
    /// From a Node object.
    pub fn of(node: &Node) -> NodeFacts {
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status != "False");
        let address = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse().ok());
        NodeFacts {
            labels: node.labels().clone(),
            address,
            ready,
        }
    }
}

/// An `announce.mode: L2` pool: its addresses and node selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Pool {
    /// The pool's addresses.
    pub addresses: PoolAddresses,
    /// `announce.nodeSelector`.
    pub node_selector: Option<LabelSelector>,
}

impl L2Pool {
    /// From an IPPool; `None` unless its mode is L2 (the default).
    pub fn of(pool: &IPPool) -> Option<L2Pool> {
        (pool.spec.announce.mode == AnnounceMode::L2).then(|| L2Pool {
            addresses: pool.spec.addresses(),
            node_selector: pool.spec.announce.node_selector.clone(),
        })
    }
}

/// What eligibility needs of a LoadBalancer Service of Switchyard's class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbService {
    /// IPv4 addresses of `status.loadBalancer.ingress`.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
}

impl LbService {
    /// From a Service; `None` unless it is `type: LoadBalancer` of Switchyard's class
    /// (unset or `switchyard.io/lb`) with at least one IPv4 ingress address.
    pub fn of(svc: &Service) -> Option<LbService> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec
                .load_balancer_class
                .as_deref()
                .is_some_and(|c| c != LB_CLASS)
        {
            return None;
        }
        let addresses: BTreeSet<Ipv4Addr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        (!addresses.is_empty()).then(|| LbService {
            addresses,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
        })
    }
}

/// `namespace/name` of the Service an EndpointSlice belongs to, and the nodes of its ready
/// endpoints.
pub fn slice_ready_nodes(slice: &EndpointSlice) -> Option<(String, BTreeSet<String>)> {
    let svc = slice.labels().get("kubernetes.io/service-name")?;
    let key = format!("{}/{svc}", slice.namespace().unwrap_or_default());
    let nodes = slice
        .endpoints
        .iter()
        .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|ep| ep.node_name.clone())
        .collect();
    Some((key, nodes))
}

/// Everything the order depends on besides liveness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeFacts>,
    /// L2 pools by name.
    pub pools: BTreeMap<String, L2Pool>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, LbService>,
    /// Nodes with a ready endpoint, by Service `namespace/name`.
    pub ready_nodes: BTreeMap<String, BTreeSet<String>>,
}

/// The rendezvous weight of `node` for `address`: FNV-1a 64 over the address octets, a zero
/// byte and the node name, then the splitmix64 finaliser (so that names differing in one byte
/// spread over the whole range). Fixed: every agent version must compute the same value.
pub fn score(address: Ipv4Addr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address
        .octets()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(node.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `nodes` ordered for `address`: highest [`score`] first, ties by name.
pub fn rendezvous_order<'a>(
    address: Ipv4Addr,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut v: Vec<(u64, &str)> = nodes.into_iter().map(|n| (score(address, n), n)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    v.into_iter().map(|(_, n)| n.to_string()).collect()
}

/// For every address of an L2 pool held by a Service: the eligible nodes in order (the first
/// owns it; empty: no node may answer). Eligible: `alive`, Ready not False, without
/// [`EXCLUDE_LABEL`], matching the pool's `nodeSelector`, and for every
/// `externalTrafficPolicy: Local` Service on the address a node with a ready endpoint of it
/// (Services sharing an address: every Local one's condition holds).
pub fn plan(inputs: &Inputs, alive: &BTreeSet<String>) -> BTreeMap<Ipv4Addr, Vec<String>> {
    // address -> the Services holding it
    let mut holders: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
    for (key, svc) in &inputs.services {
        for a in &svc.addresses {
            holders.entry(*a).or_default().push(key);
        }
    }
    let mut out = BTreeMap::new();
    for (address, services) in holders {
        let Some(pool) = inputs
            .pools
            .values()
            .find(|p| p.addresses.contains(IpAddr::V4(address)))
        else {
            continue;
        };
        let eligible = inputs.nodes.iter().filter(|(name, node)| {
            alive.contains(*name)
                && node.ready
                && !node.labels.contains_key(EXCLUDE_LABEL)
                && pool
                    .node_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&node.labels).unwrap_or(false))
                && services.iter().all(|key| {
                    !inputs.services[*key].local
                        || inputs
                            .ready_nodes
                            .get(*key)
                            .is_some_and(|n| n.contains(*name))
                })
        });
        out.insert(
            address,
            rendezvous_order(address, eligible.map(|(n, _)| n.as_str())),
        );
    }
    out
}

/// The addresses `node` owns in `plan`.
pub fn owned_by(plan: &BTreeMap<Ipv4Addr, Vec<String>>, node: &str) -> BTreeSet<Ipv4Addr> {
    plan.iter()
        .filter(|(_, order)| order.first().is_some_and(|n| n == node))
        .map(|(a, _)| *a)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn node(labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            address: None,
            ready: true,
        }
    }

    fn pool(cidr: &str, selector: Option<serde_json::Value>) -> L2Pool {
        let spec: switchyard_api::IPPoolSpec = serde_json::from_value(serde_json::json!({
            "cidrs": [cidr],
            "announce": {"mode": "L2", "nodeSelector": selector}
        }))
        .unwrap();
        L2Pool {
            addresses: spec.addresses(),
            node_selector: spec.announce.node_selector,
        }
    }

    fn three_nodes() -> Inputs {
        let mut i = Inputs::default();
        for n in ["node1", "node2", "node3"] {
            i.nodes.insert(n.into(), node(&[("edge", "true")]));
        }
        i.pools.insert("l2".into(), pool("10.0.0.240/29", None));
        i
    }

    fn lb(addresses: &[&str], local: bool) -> LbService {
        LbService {
            addresses: addresses.iter().map(|a| ip(a)).collect(),
            local,
        }
    }

    #[test]
    fn score_is_fixed() {
        // Golden values (checked against an independent Python version): changing the
        // function moves addresses between agent versions.
        assert_eq!(score(ip("10.0.0.240"), "node1"), 0x1620_5aa3_776b_a015);
        assert_eq!(score(ip("10.0.0.240"), "node2"), 0xba1f_d485_0201_1d29);
        assert_ne!(
            score(ip("10.0.0.240"), "node1"),
            score(ip("10.0.0.241"), "node1")
        );
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let a = rendezvous_order(ip("192.0.2.7"), ["n1", "n2", "n3", "n4"]);
        let b = rendezvous_order(ip("192.0.2.7"), ["n4", "n3", "n1", "n2"]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn addresses_spread_and_a_leaving_node_moves_only_its_own() {
        let nodes = ["n1", "n2", "n3"];
        let base = Ipv4Addr::new(198, 18, 0, 0);
        let mut count: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..3000u32 {
            let a = Ipv4Addr::from(u32::from(base) + i);
            let before = rendezvous_order(a, nodes);
            *count.entry(before[0].clone()).or_default() += 1;
            let after = rendezvous_order(a, ["n1", "n3"]);
            if before[0] != "n2" {
                assert_eq!(before[0], after[0], "{a} moved though its owner stayed");
            } else {
                assert_eq!(after[0], before[1], "{a} went to its second choice");
            }
        }
        for (n, c) in &count {
            assert!((800..1200).contains(c), "{n} owns {c} of 3000");
        }
    }

    #[test]
    fn plan_orders_alive_ready_selected_nodes() {
        let mut i = three_nodes();
        i.services
            .insert("default/web".into(), lb(&["10.0.0.241"], false));
        let all = names(&["node1", "node2", "node3"]);
        let p = plan(&i, &all);
        assert_eq!(p[&ip("10.0.0.241")].len(), 3);
        // Dead nodes are not eligible; the order of the others is kept.
        let full = p[&ip("10.0.0.241")].clone();
        let without_owner: BTreeSet<String> =
            all.iter().filter(|n| **n != full[0]).cloned().collect();
        let p2 = plan(&i, &without_owner);
        assert_eq!(p2[&ip("10.0.0.241")], full[1..].to_vec());
        // Not Ready, excluded, or not selected: not eligible.
        i.nodes.get_mut("node1").unwrap().ready = false;
        i.nodes
            .get_mut("node2")
            .unwrap()
            .labels
            .insert(EXCLUDE_LABEL.into(), String::new());
        assert_eq!(plan(&i, &all)[&ip("10.0.0.241")], ["node3"]);
        i.pools.insert(
            "l2".into(),
            pool(
                "10.0.0.240/29",
                Some(serde_json::json!({"matchLabels": {"edge": "false"}})),
            ),
        );
        assert!(plan(&i, &all)[&ip("10.0.0.241")].is_empty());
    }

    #[test]
    fn addresses_outside_l2_pools_are_not_planned() {
        let mut i = three_nodes();
        i.services
            .insert("default/web".into(), lb(&["10.9.9.9"], false));
        assert!(plan(&i, &names(&["node1"])).is_empty());
    }

    #[test]
    fn local_services_need_a_ready_endpoint_on_the_node() {
        let mut i = three_nodes();
        i.services
            .insert("default/web".into(), lb(&["10.0.0.242"], true));
        let all = names(&["node1", "node2", "node3"]);
        assert!(plan(&i, &all)[&ip("10.0.0.242")].is_empty());
        i.ready_nodes
            .insert("default/web".into(), names(&["node2"]));
        assert_eq!(plan(&i, &all)[&ip("10.0.0.242")], ["node2"]);
        assert_eq!(
            owned_by(&plan(&i, &all), "node2"),
            BTreeSet::from([ip("10.0.0.242")])
        );
        assert!(owned_by(&plan(&i, &all), "node1").is_empty());
        // A Cluster Service sharing the address does not widen the choice.
        i.services
            .insert("default/other".into(), lb(&["10.0.0.242"], false));
        assert_eq!(plan(&i, &all)[&ip("10.0.0.242")], ["node2"]);
    }

    #[test]
    fn services_of_other_classes_or_types_are_ignored() {
        let svc = |class: Option<&str>, type_: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s", "namespace": "default"},
                "spec": {"type": type_, "loadBalancerClass": class, "externalTrafficPolicy": "Local"},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.241"}, {"ip": "2001:db8::1"}]}}
            }))
            .unwrap()
        };
        assert_eq!(
            LbService::of(&svc(None, "LoadBalancer")),
            Some(lb(&["10.0.0.241"], true))
        );
        assert!(LbService::of(&svc(Some(LB_CLASS), "LoadBalancer")).is_some());
        assert!(LbService::of(&svc(Some("example.com/lb"), "LoadBalancer")).is_none());
        assert!(LbService::of(&svc(None, "ClusterIP")).is_none());
    }

    #[test]
    fn node_facts_read_ready_and_internal_ip() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node1", "labels": {"a": "b"}},
            "status": {
                "addresses": [{"type": "Hostname", "address": "node1"}, {"type": "InternalIP", "address": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "False"}]
            }
        }))
        .unwrap();
        let f = NodeFacts::of(&n);
        assert_eq!(f.address, Some(ip("10.0.0.1")));
        assert!(!f.ready);
        assert_eq!(f.labels["a"], "b");
    }
}
