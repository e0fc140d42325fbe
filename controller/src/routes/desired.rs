//! What the routers should hold (pure): for every address of a Route-mode pool held by a
//! Service, one static route with every eligible node as a next hop.
//!
//! Eligible nodes: matching the pool's `announce.nodeSelector`, Ready (a node without a Ready
//! condition counts as ready), not labelled `node.kubernetes.io/exclude-from-external-load-balancers`,
//! with an InternalIP of the address's family; for `externalTrafficPolicy: Local`, only nodes
//! with a ready endpoint of the Service. Services sharing an address share its route (the
//! union of their nodes).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use switchyard_api::{AnnounceMode, IPPool};
use switchyard_router::StaticRoute;

use crate::allocator::Pool;
use crate::service as s;

/// Owner tag of the controller's routes.
pub const OWNER: &str = "lb";
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The routes one RouteTarget should hold, and the Services behind each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRoutes {
    /// Desired routes by id.
    pub routes: BTreeMap<String, StaticRoute>,
    /// Services (`ns/name`) behind each route id.
    pub services: BTreeMap<String, Vec<String>>,
}

/// Everything the route syncer needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Per RouteTarget name (every RouteTarget that exists, and every one a pool names).
    pub targets: BTreeMap<String, TargetRoutes>,
    /// Route-mode Services that get no route, with the reason (`ns/name` -> (reason, message)).
    pub unrouted: BTreeMap<String, (String, String)>,
}

/// The route id of an address in a cluster: `<cluster>-lb-<address>` (`:` as `-`).
pub fn route_id(cluster: &str, ip: IpAddr) -> String {
    format!("{cluster}-lb-{}", ip.to_string().replace(':', "-"))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

fn node_address(node: &Node, v6: bool) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
}

/// Nodes with a ready endpoint of each Service (`ns/name`).
fn ready_endpoint_nodes<E: Borrow<EndpointSlice>>(
    slices: &[E],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let slice = slice.borrow();
        let Some(svc) = slice.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        let key = format!("{}/{svc}", slice.namespace().unwrap_or_default());
        let entry = out.entry(key).or_default();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(node)) = (ready, &ep.node_name) {
                entry.insert(node.clone());
            }
        }
    }
    out
}

fn local_policy(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// Computes the desired routes (from the caches' own copies: nothing is cloned).
pub fn desired<'a, N: Borrow<Node>, E: Borrow<EndpointSlice>>(
    cluster: &str,
    services: impl IntoIterator<Item = &'a Service>,
    pools: &[IPPool],
    target_names: &[String],
    nodes: &[N],
    slices: &[E],
) -> Desired {
    let mut out = Desired::default();
    for t in target_names {
        out.targets.entry(t.clone()).or_default();
    }
    let parsed: Vec<(Pool, &IPPool)> = pools
        .iter()
        .map(|p| (Pool::new(&p.name_any(), &p.spec), p))
        .collect();
    let local_nodes = ready_endpoint_nodes(slices);
    // (target, ip) -> (next hops, services)
    let mut by_ip: BTreeMap<(String, IpAddr), (BTreeSet<IpAddr>, Vec<String>)> = BTreeMap::new();
    for svc in services {
        if !s::is_ours(svc) || !s::is_load_balancer(svc) || s::is_deleting(svc) {
            continue;
        }
        let key = s::key(svc);
        for ip in s::ingress_ips(svc) {
            let Some((_, pool)) = parsed.iter().find(|(p, _)| p.addresses.contains(ip)) else {
                continue;
            };
            let announce = &pool.spec.announce;
            if announce.mode != AnnounceMode::Route {
                continue;
            }
            let Some(target) = announce.route_target.clone() else {
                out.unrouted.insert(
                    key.clone(),
                    (
                        "NoRouteTarget".into(),
                        format!(
                            "IPPool {} has mode Route but no routeTarget",
                            pool.name_any()
                        ),
                    ),
                );
                continue;
            };
            let mut hops = BTreeSet::new();
            for node in nodes {
                let node = node.borrow();
                let labels = node.labels();
                if labels.contains_key(EXCLUDE_LABEL) || !node_ready(node) {
                    continue;
                }
                if let Some(sel) = &announce.node_selector
                    && !sel.matches(labels).unwrap_or(false)
                {
                    continue;
                }
                if local_policy(svc)
                    && !local_nodes
                        .get(&key)
                        .is_some_and(|n| n.contains(&node.name_any()))
                {
                    continue;
                }
                if let Some(addr) = node_address(node, ip.is_ipv6()) {
                    hops.insert(addr);
                }
            }
            let e = by_ip.entry((target.clone(), ip)).or_default();
            e.0.extend(hops);
            e.1.push(key.clone());
            out.targets.entry(target).or_default();
        }
    }
    for ((target, ip), (hops, svcs)) in by_ip {
        if hops.is_empty() {
            for k in &svcs {
                out.unrouted.insert(
                    k.clone(),
                    (
                        "NoEligibleNode".into(),
                        format!("no eligible node for {ip} (pool nodeSelector, Ready, local endpoints): no route"),
                    ),
                );
            }
            continue;
        }
        let id = route_id(cluster, ip);
        let route = StaticRoute::new(
            id.clone(),
            IpNet::from(ip),
            hops.into_iter().collect(),
            OWNER,
            format!(
                "switchyard {cluster} LoadBalancer {ip} ({})",
                svcs.join(",")
            ),
        );
        let t = out.targets.entry(target).or_default();
        t.routes.insert(id.clone(), route);
        t.services.insert(id, svcs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: &str, ready: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": ready}]}}))
        .unwrap()
    }

    fn svc(name: &str, ip: &str, etp: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}))
        .unwrap()
    }

    fn pool(mode: &str, selector: serde_json::Value) -> IPPool {
        serde_json::from_value(
            json!({"apiVersion": "switchyard.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidrs": ["198.18.0.0/29"],
                     "announce": {"mode": mode, "routeTarget": "lab", "nodeSelector": selector}}}),
        )
        .unwrap()
    }

    fn slice(svc: &str, node: &str, ready: bool) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": format!("{svc}-x"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": node, "conditions": {"ready": ready}}]}))
        .unwrap()
    }

    fn hops(d: &Desired, ip: &str) -> Vec<String> {
        let id = route_id("c1", ip.parse().unwrap());
        d.targets["lab"].routes[&id]
            .next_hops
            .iter()
            .map(|h| h.to_string())
            .collect()
    }

    #[test]
    fn every_eligible_node_is_a_next_hop() {
        let nodes = [
            node("n1", "10.0.0.1", "True", json!({"edge": "yes"})),
            node("n2", "10.0.0.2", "True", json!({"edge": "yes"})),
            node("n3", "10.0.0.3", "False", json!({"edge": "yes"})),
            node("n4", "10.0.0.4", "True", json!({})),
        ];
        let pools = [pool("Route", json!({"matchLabels": {"edge": "yes"}}))];
        let services = [
            svc("a", "198.18.0.1", "Cluster"),
            svc("b", "198.18.0.2", "Local"),
        ];
        let slices = [slice("b", "n2", true), slice("b", "n1", false)];
        let d = desired("c1", &services, &pools, &[], &nodes, &slices);
        assert_eq!(
            hops(&d, "198.18.0.1"),
            ["10.0.0.1", "10.0.0.2"],
            "selector and Ready"
        );
        assert_eq!(
            hops(&d, "198.18.0.2"),
            ["10.0.0.2"],
            "Local: ready endpoints only"
        );
        let r = &d.targets["lab"].routes[&route_id("c1", "198.18.0.1".parse().unwrap())];
        assert_eq!(r.network.to_string(), "198.18.0.1/32");
        assert_eq!(r.owner, OWNER);
        assert!(d.unrouted.is_empty());
    }

    #[test]
    fn no_route_without_eligible_nodes_or_outside_route_mode() {
        let nodes = [node("n1", "10.0.0.1", "True", json!({}))];
        let services = [svc("b", "198.18.0.2", "Local")];
        let d = desired(
            "c1",
            &services,
            &[pool("Route", json!(null))],
            &["other".into()],
            &nodes,
            &[] as &[EndpointSlice],
        );
        assert!(d.targets["lab"].routes.is_empty());
        assert_eq!(d.unrouted["default/b"].0, "NoEligibleNode");
        assert!(
            d.targets.contains_key("other"),
            "every RouteTarget is reconciled"
        );
        let d = desired(
            "c1",
            &services,
            &[pool("L2", json!(null))],
            &[],
            &nodes,
            &[] as &[EndpointSlice],
        );
        assert!(d.targets.is_empty() && d.unrouted.is_empty());
    }

    #[test]
    fn ids_are_path_safe() {
        assert_eq!(
            route_id("c1", "198.18.0.1".parse().unwrap()),
            "c1-lb-198.18.0.1"
        );
        let v6 = route_id("c1", "2001:db8::1".parse().unwrap());
        assert!(switchyard_router::valid_id(&v6), "{v6}");
    }
}
