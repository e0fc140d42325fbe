//! Frontends for traffic from outside the cluster: NodePort, `spec.externalIPs`
//! and LoadBalancer ingress addresses (`status.loadBalancer.ingress[].ip`,
//! except `ipMode: Proxy`), with `externalTrafficPolicy`.
//!
//! The model part ([`ExternalFrontends`], a field of every
//! [`ServicePortState`]) is computed from the Service and its endpoints; the
//! OVS part ([`frontend_flows`]) renders the port's flows in
//! `SERVICE_EXTERNAL_FRONTEND`; the host part (the proxy's nftables table and
//! routes that bring the traffic into `br-int`) is in [`crate::host`].
//!
//! Per Service port with group `G` (cookie object `G`), for new connections
//! (service state 0), each frontend sets the state like the ClusterIP
//! frontend and goes to a group:
//!
//! ```text
//! T29 prio 200  proto,nw_dst=VIP_CLUSTER,tp_dst=NODEPORT             -> group:G
//! T29 prio 200  proto,nw_dst=VIP_LOCAL,tp_dst=NODEPORT  (ETP Local)  -> group:GL, or drop
//! T29 prio 200  proto,nw_dst=<node address>,tp_dst=NODEPORT          -> group:G  (pods)
//! T29 prio 200  proto,nw_dst=<external/LB IP>,tp_dst=PORT            -> group:G
//! T29 prio 205  ... same, reg0=gateway              (ETP Local)      -> group:GL, or drop
//! T29 prio 210  ... same, reg0=gateway,nw_src=<gateway address>      -> group:G  (the node)
//! ```
//!
//! `VIP_CLUSTER`/`VIP_LOCAL` ([`NODEPORT_VIP_CLUSTER`], [`NODEPORT_VIP_LOCAL`])
//! are the addresses the host DNATs `node address:nodePort` to (ETP Cluster
//! and Local); `GL` ([`crate::groups::local_group_id`]) holds this node's
//! endpoints (ready ones; serving and terminating ones when none is ready),
//! and with none of them the ETP-Local frontends drop (reject when the
//! Service has no endpoints anywhere, like the ClusterIP frontend).
//!
//! `loadBalancerSourceRanges` restrict the LoadBalancer ingress addresses
//! (not `externalIPs`, as in kube-proxy): traffic from outside is filtered in
//! the host ([`crate::host`]), traffic from pods here:
//!
//! ```text
//! T29 prio 201  proto,nw_dst=<LB IP>,tp_dst=PORT                     -> drop
//! T29 prio 202  ... same, nw_src=<range>  (one per range)            -> group:G
//! T29 prio 202  ... same, reg0=gateway    (filtered by the host)     -> group:G
//! ```
//!
//! `externalIPs` outside `--external-ip-cidrs` (when given) get no frontend
//! (CVE-2020-8554); they are logged once per change.
//!
//! With `sessionAffinity: ClientIP`, each frontend above that balances is a
//! lookup in SESSION_AFFINITY and a second pass (see [`with_affinity`]); a
//! client keeps its endpoint across all frontends of the port, and through
//! the ETP-Local frontends across this node's endpoints.
//!
//! With `internalTrafficPolicy: Local` the port's group `G` holds only this
//! node's endpoints (for the ClusterIP); the frontends above that use every
//! endpoint go to the cluster-endpoints group `GC`
//! ([`crate::groups::cluster_group_id`]) instead, as kube-proxy applies only
//! the external policy to external traffic.

use std::net::Ipv4Addr;
use std::sync::Arc;

use switchyard_ovs::openflow::{Action, Field, Flow, MatchField, PacketInReason};
use switchyard_pipeline::{PortKind, ServiceState, priority, reg, table};

use crate::diff::GroupId;
use crate::flows::{ETH_TYPE_IP, REJECT_USERDATA, cookie, ip_proto};
use crate::groups::{cluster_group_id, local_group_id};
use crate::objects::{SlimService, SlimServicePort};
use crate::service_model::{
    Endpoint, NoEndpointsAction, Protocol, ServicePortName, ServicePortState,
};

/// Where the host DNATs `node address:nodePort` of an
/// `externalTrafficPolicy: Cluster` port (and every node port for the node's
/// own connections); routed into `sy-gw0`. Link-local, next to the other
/// fixed addresses (169.254.169.252 hairpin, .253 the Service next hop).
pub const NODEPORT_VIP_CLUSTER: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 250);

/// Where the host DNATs `node address:nodePort` of an
/// `externalTrafficPolicy: Local` port arriving from outside.
pub const NODEPORT_VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 249);

/// What the proxy knows of its node for the external frontends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The node addresses that serve node ports (`--nodeport-addresses`;
    /// default: the Node's InternalIP), sorted.
    pub addresses: Vec<Ipv4Addr>,
    /// The node's gateway address (first address of its pod CIDR): the
    /// source of the node's own connections into `br-int`.
    pub gateway: Option<Ipv4Addr>,
    /// `--external-ip-cidrs`: the CIDRs `spec.externalIPs` may come from
    /// (empty: any). A proxy setting, carried with the node because the
    /// frontends are completed with both at once ([`ExternalFrontends::complete`]).
    pub external_ip_cidrs: Vec<ipnet::Ipv4Net>,
}

/// The external frontends of one Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalFrontends {
    /// `nodePort` (NodePort and LoadBalancer Services only).
    pub node_port: Option<u16>,
    /// `spec.externalIPs` (inside `--external-ip-cidrs`) and
    /// `status.loadBalancer.ingress[].ip` (except `ipMode: Proxy`), IPv4
    /// only, sorted, without duplicates; served on the Service port.
    pub ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges` (IPv4, aggregated: no range inside
    /// another), when the Service has LoadBalancer ingress addresses.
    pub source_ranges: Vec<ipnet::Ipv4Net>,
    /// The ingress addresses the source ranges restrict (empty without
    /// ranges), sorted.
    pub ranged_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs` that are not also ingress addresses: the ones
    /// `--external-ip-cidrs` may refuse.
    external_only: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// With `local`: this node's usable endpoints (ready; serving and
    /// terminating when none is ready), sorted by IP then port.
    pub local_endpoints: Vec<Endpoint>,
    /// With `internalTrafficPolicy: Local` (the port's group `G` then
    /// holds only this node's endpoints): every usable endpoint of the
    /// cluster, for the external frontends that use every endpoint (group
    /// `GC`, [`crate::groups::cluster_group_id`]), as kube-proxy's external
    /// policy ignores the internal one.
    pub cluster_endpoints: Vec<Endpoint>,
    /// The node (filled in by the recompute; empty in pure model tests).
    pub node: Arc<NodeContext>,
}

impl ExternalFrontends {
    /// The frontends of `spec_port` of `service`, given all the port's
    /// endpoints (`is_local` set).
    pub fn of(service: &SlimService, spec_port: &SlimServicePort, all: &[Endpoint]) -> Self {
        let Some(spec) = service.spec.as_ref() else {
            return Self::default();
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        let node_port = match kind {
            "NodePort" | "LoadBalancer" => spec_port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
            _ => None,
        };
        let mut external: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .filter_map(|ip| ip.trim().parse().ok())
            .collect();
        let mut ingress: Vec<Ipv4Addr> = Vec::new();
        if kind == "LoadBalancer" {
            ingress.extend(
                service
                    .ingress
                    .iter()
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
            );
        }
        ingress.sort_unstable();
        ingress.dedup();
        external.sort_unstable();
        external.dedup();
        external.retain(|ip| ingress.binary_search(ip).is_err());
        let mut ips: Vec<Ipv4Addr> = external.iter().chain(&ingress).copied().collect();
        ips.sort_unstable();
        let ranges: Vec<ipnet::Ipv4Net> = spec
            .load_balancer_source_ranges
            .iter()
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        let (source_ranges, ranged_ips) = if ranges.is_empty() || ingress.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (ipnet::Ipv4Net::aggregate(&ranges), ingress)
        };
        let local = spec.external_traffic_policy.as_deref() == Some("Local")
            && (node_port.is_some() || !ips.is_empty());
        let local_endpoints = if local { local_usable(all) } else { Vec::new() };
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let cluster_endpoints = if internal_local && (node_port.is_some() || !ips.is_empty()) {
            crate::endpoints::cluster_usable(all)
        } else {
            Vec::new()
        };
        Self {
            node_port,
            ips,
            source_ranges,
            ranged_ips,
            external_only: external,
            local,
            local_endpoints,
            cluster_endpoints,
            node: Arc::default(),
        }
    }

    /// Completes the frontends with the node: refuses the external IPs
    /// outside `--external-ip-cidrs` (logged), then sets the node.
    pub fn complete(&mut self, name: &ServicePortName, node: &Arc<NodeContext>) {
        if !node.external_ip_cidrs.is_empty() {
            let refused: Vec<Ipv4Addr> = self
                .external_only
                .iter()
                .copied()
                .filter(|ip| !node.external_ip_cidrs.iter().any(|c| c.contains(ip)))
                .collect();
            if !refused.is_empty() {
                tracing::warn!(service_port = %name, ?refused, allowed = ?node.external_ip_cidrs, "externalIPs outside --external-ip-cidrs: not served");
                self.ips.retain(|ip| !refused.contains(ip));
                self.external_only.retain(|ip| !refused.contains(ip));
                if self.is_empty() {
                    self.local = false;
                    self.local_endpoints.clear();
                    self.cluster_endpoints.clear();
                }
            }
        }
        self.node = Arc::clone(node);
    }

    /// No external frontend at all.
    pub fn is_empty(&self) -> bool {
        self.node_port.is_none() && self.ips.is_empty()
    }

    /// The port has a local-endpoints group `GL`.
    pub fn has_local_group(&self) -> bool {
        self.local && !self.is_empty() && !self.local_endpoints.is_empty()
    }

    /// The port has a cluster-endpoints group `GC`.
    pub fn has_cluster_group(&self) -> bool {
        !self.is_empty() && !self.cluster_endpoints.is_empty()
    }

    /// Everything the frontend flows depend on is equal (the local
    /// endpoints only by whether there are any).
    pub fn same_frontend(&self, other: &Self) -> bool {
        self.node_port == other.node_port
            && self.ips == other.ips
            && self.source_ranges == other.source_ranges
            && self.ranged_ips == other.ranged_ips
            && self.local == other.local
            && self.local_endpoints.is_empty() == other.local_endpoints.is_empty()
            && self.cluster_endpoints.is_empty() == other.cluster_endpoints.is_empty()
            && self.node == other.node
    }

    /// The external groups' buckets are equal.
    pub fn same_buckets(&self, other: &Self) -> bool {
        let same = |a: &[Endpoint], b: &[Endpoint]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| a.ip == b.ip && a.port == b.port)
        };
        same(&self.local_endpoints, &other.local_endpoints)
            && same(&self.cluster_endpoints, &other.cluster_endpoints)
    }

    /// Every `address:port` a connection of this port's external frontends
    /// has as original destination in the pod zone (for conntrack flushes):
    /// the node-port VIPs and node addresses on the node port, the external
    /// and LoadBalancer IPs on `service_port`.
    pub fn addresses(&self, service_port: u16) -> Vec<(Ipv4Addr, u16)> {
        let mut out = Vec::new();
        if let Some(np) = self.node_port {
            out.push((NODEPORT_VIP_CLUSTER, np));
            if self.local {
                out.push((NODEPORT_VIP_LOCAL, np));
            }
            out.extend(self.node.addresses.iter().map(|a| (*a, np)));
        }
        out.extend(self.ips.iter().map(|ip| (*ip, service_port)));
        out
    }
}

/// kube-proxy's choice of local endpoints for `externalTrafficPolicy: Local`:
/// the local ready ones, else the local serving and terminating ones.
fn local_usable(all: &[Endpoint]) -> Vec<Endpoint> {
    let local = || all.iter().filter(|e| e.is_local);
    let ready: Vec<Endpoint> = local().filter(|e| e.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    local()
        .filter(|e| e.serving && e.terminating)
        .cloned()
        .collect()
}

/// Every frontend address of a port: its ClusterIP and port first, then
/// [`ExternalFrontends::addresses`].
pub fn frontend_addresses(state: &ServicePortState) -> Vec<(Ipv4Addr, u16)> {
    let mut out = vec![(state.cluster_ip, state.port)];
    out.extend(state.external.addresses(state.port));
    out
}

fn dst_port_field(protocol: Protocol) -> Field {
    match protocol {
        Protocol::Tcp => Field::TcpDst,
        Protocol::Udp => Field::UdpDst,
        Protocol::Sctp => Field::SctpDst,
    }
}

/// What a frontend does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Group(GroupId),
    Reject,
    Drop,
}

impl Target {
    fn actions(self) -> Vec<Action> {
        match self {
            Target::Group(id) => vec![
                reg::SERVICE_STATE.load(ServiceState::NeedsEndpoint),
                Action::Group(id),
            ],
            Target::Reject => vec![Action::controller(
                PacketInReason::Action,
                REJECT_USERDATA.to_vec(),
            )],
            Target::Drop => Vec::new(),
        }
    }
}

/// The flows of the port's external frontends in `SERVICE_EXTERNAL_FRONTEND`
/// (see the module docs); empty without external frontends.
///
/// With `sessionAffinity: ClientIP` each frontend that balances is two
/// flows ([`with_affinity`]), sharing the port's affinity (see
/// [`crate::flows`]).
pub fn frontend_flows(
    generation: u8,
    group_id: GroupId,
    name: &ServicePortName,
    state: &ServicePortState,
) -> Vec<Flow> {
    let ext = &state.external;
    if ext.is_empty() {
        return Vec::new();
    }
    let c = cookie(generation, group_id);
    let everyone = if ext.has_cluster_group() {
        Target::Group(cluster_group_id(group_id))
    } else if state.internal_traffic_policy_local {
        // No usable endpoint anywhere (else GC would exist).
        Target::Reject
    } else {
        match state.no_endpoints_action() {
            None => Target::Group(group_id),
            Some(NoEndpointsAction::Reject) => Target::Reject,
            Some(NoEndpointsAction::Drop) => Target::Drop,
        }
    };
    let local = if ext.has_local_group() {
        Target::Group(local_group_id(group_id))
    } else if state.cluster_has_endpoints {
        Target::Drop
    } else {
        Target::Reject
    };
    let proto = ip_proto(state.protocol);
    let port_field = dst_port_field(state.protocol);
    let flow = |prio, dst: Ipv4Addr, port: u16, target: Target| {
        let mut f = table::SERVICE_EXTERNAL_FRONTEND
            .flow(prio)
            .cookie(c)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ip_proto(proto))
            .matching(MatchField::ipv4_dst(dst, 32))
            .matching(MatchField::exact(port_field, u128::from(port)))
            .matching(reg::SERVICE_STATE.matching(ServiceState::None));
        f.actions = target.actions();
        f
    };
    let mut flows = Vec::new();
    if let Some(np) = ext.node_port {
        flows.push(flow(priority::SERVICE, NODEPORT_VIP_CLUSTER, np, everyone));
        if ext.local {
            flows.push(flow(priority::SERVICE, NODEPORT_VIP_LOCAL, np, local));
        }
        for address in &ext.node.addresses {
            flows.push(flow(priority::SERVICE, *address, np, everyone));
        }
    }
    for ip in &ext.ips {
        flows.push(flow(priority::SERVICE, *ip, state.port, everyone));
        if ext.ranged_ips.binary_search(ip).is_ok() {
            flows.push(flow(
                priority::SOURCE_RANGE_DENY,
                *ip,
                state.port,
                Target::Drop,
            ));
            flows.push(
                flow(priority::SOURCE_RANGE_ALLOW, *ip, state.port, everyone)
                    .matching(reg::PORT_KIND.matching(PortKind::Gateway)),
            );
            for range in &ext.source_ranges {
                flows.push(
                    flow(priority::SOURCE_RANGE_ALLOW, *ip, state.port, everyone)
                        .matching(MatchField::ipv4_src(range.addr(), range.prefix_len())),
                );
            }
        }
        if ext.local {
            flows.push(
                flow(priority::EXTERNAL_FROM_OUTSIDE, *ip, state.port, local)
                    .matching(reg::PORT_KIND.matching(PortKind::Gateway)),
            );
            if let Some(gateway) = ext.node.gateway {
                flows.push(
                    flow(priority::EXTERNAL_FROM_NODE, *ip, state.port, everyone)
                        .matching(reg::PORT_KIND.matching(PortKind::Gateway))
                        .matching(MatchField::ipv4_src(gateway, 32)),
                );
            }
        }
    }
    if state.session_affinity.is_some() {
        tracing::debug!(service_port = %name, "external frontends with session affinity");
        return with_affinity(flows);
    }
    flows
}

/// The affinity form of frontend flows: a flow that balances through a
/// group for a new connection (state 0) becomes a lookup of the client in
/// SESSION_AFFINITY with the group's id in reg6, then a second pass through
/// this table; a copy of the flow for state NeedsEndpoint balances through
/// the group (state Selected finds no frontend here and goes on to
/// SERVICE_LB's Selected flow). Drop and reject flows stay as they are.
fn with_affinity(flows: Vec<Flow>) -> Vec<Flow> {
    let new_connection = reg::SERVICE_STATE.matching(ServiceState::None);
    let mut out = Vec::with_capacity(flows.len() * 2);
    for flow in flows {
        let Some(Action::Group(chosen)) = flow.actions.last().cloned() else {
            out.push(flow);
            continue;
        };
        let mut balance = flow.clone();
        for m in &mut balance.matches {
            if *m == new_connection {
                *m = reg::SERVICE_STATE.matching(ServiceState::NeedsEndpoint);
            }
        }
        balance.actions = vec![Action::Group(chosen)];
        let mut lookup = flow;
        lookup.actions = crate::flows::affinity_lookup(chosen, table::SERVICE_EXTERNAL_FRONTEND);
        out.push(lookup);
        out.push(balance);
    }
    out
}

/// The node context of `node`: node-port addresses are its InternalIPs
/// when `cidrs` is empty, else the `local` interface addresses inside one
/// of `cidrs`; the gateway is the first address of its (IPv4) pod CIDR.
pub fn node_context(
    node: &k8s_openapi::api::core::v1::Node,
    cidrs: &[ipnet::Ipv4Net],
    local: &[Ipv4Addr],
) -> NodeContext {
    let mut addresses: Vec<Ipv4Addr> = if cidrs.is_empty() {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect()
    } else {
        local
            .iter()
            .copied()
            .filter(|a| cidrs.iter().any(|c| c.contains(a)))
            .collect()
    };
    addresses.sort_unstable();
    addresses.dedup();
    let gateway = node.spec.as_ref().and_then(|spec| {
        spec.pod_cidr
            .iter()
            .chain(spec.pod_cidrs.iter().flatten())
            .find_map(|c| c.parse::<ipnet::Ipv4Net>().ok())
            .and_then(|net| net.hosts().next())
    });
    NodeContext {
        addresses,
        gateway,
        external_ip_cidrs: Vec::new(),
    }
}
