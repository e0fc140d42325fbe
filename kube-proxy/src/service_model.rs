//! The desired service state: what the switch must implement for every
//! Service port, computed from `Service` and `EndpointSlice` objects the way
//! kube-proxy computes it. Pure: no I/O, no clock, deterministic output.
//!
//! Rules (kube-proxy's `pkg/proxy` is the reference):
//! - EndpointSlices belong to the Service named by their
//!   `kubernetes.io/service-name` label in the same namespace; slices for a
//!   Service that does not exist (or is ignored) contribute nothing.
//! - A Service port matches a slice port by port name and protocol; the slice
//!   port carries the resolved target port number, so named target ports need
//!   no pod lookup.
//! - Endpoint conditions default as the API documents: `ready` unset means
//!   true, `serving` unset means true, `terminating` unset means false.
//! - Usable endpoints: the ready ones; if there are none, the serving and
//!   terminating ones. With `internalTrafficPolicy: Local` only this node's
//!   endpoints count (ready first, then serving+terminating).
//! - The same endpoint (IP and port) listed in several slices is merged.
//! - Headless (`clusterIP: None`), IP-less and `ExternalName` Services are
//!   ignored, and so are Services labelled `service.kubernetes.io/service-proxy-name`
//!   (they belong to another proxy). Services without a selector use their hand-made slices.
//! - IPv4 only: the IPv4 entry of `spec.clusterIPs` is used; IPv6 and FQDN
//!   slices are skipped.
//! - Each port also carries what traffic from outside the cluster needs: the
//!   Service type, its node port, `externalTrafficPolicy: Local`, the
//!   `healthCheckNodePort` (kept only for LoadBalancer Services with the Local
//!   policy, as kube-proxy does) and this node's ready endpoint addresses (what
//!   the health check node port reports, see [`DesiredState::health_check`]).
//!   The OpenFlow programming does not read them yet.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

use crate::endpoints::{ChosenEndpoints, choose_endpoints, collect_endpoints};
use crate::objects::{Slice, SlimService};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services with this label belong to another service proxy (kube-proxy
/// ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Session affinity timeout when `ClientIP` affinity is set without one (3 hours).
pub const DEFAULT_CLIENT_IP_TIMEOUT_SECS: u32 = 10_800;

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API spelling; an unset protocol is TCP, as the API defaults it.
    pub fn from_api(value: Option<&str>) -> Result<Self, UnknownProtocol> {
        match value {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(UnknownProtocol(other.to_owned())),
        }
    }

    /// The API spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Service types the proxy serves (ExternalName Services are ignored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// Parses `spec.type`; unset is ClusterIP. `None` for ExternalName and
    /// unknown types.
    pub fn from_api(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("ClusterIP") => Some(Self::ClusterIp),
            Some("NodePort") => Some(Self::NodePort),
            Some("LoadBalancer") => Some(Self::LoadBalancer),
            Some(_) => None,
        }
    }
}

/// What a Service's `healthCheckNodePort` reports on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// The port to listen on.
    pub port: u16,
    /// Ready endpoints on this node, counted by address across the Service's
    /// ports (an endpoint serving two ports counts once), as kube-proxy counts.
    pub local_endpoints: usize,
}

/// A protocol string the API does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
pub struct UnknownProtocol(pub String);

/// A Service by namespace and name. The strings are shared: the cache's
/// keys, its slices, the desired state's port names and the group ids'
/// keys point at one copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Service an object is, by its metadata.
    pub fn of_service(service: &Service) -> Self {
        Self::new(
            service.metadata.namespace.as_deref().unwrap_or(""),
            service.metadata.name.as_deref().unwrap_or(""),
        )
    }

    /// The Service a slice belongs to, from its `kubernetes.io/service-name`
    /// label; `None` when the label is missing or empty.
    pub fn of_slice(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if name.is_empty() {
            return None;
        }
        Some(Self::new(
            slice.metadata.namespace.as_deref().unwrap_or(""),
            name.as_str(),
        ))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service: the unit that gets a frontend and a group.
/// Ordered by namespace, name, port name, protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The Service port's name; empty for a single unnamed port.
    pub port: Arc<str>,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(
        namespace: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        port: impl Into<Arc<str>>,
        protocol: Protocol,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    /// The Service (sharing this name's strings).
    pub fn service(&self) -> ServiceKey {
        ServiceKey {
            namespace: Arc::clone(&self.namespace),
            name: Arc::clone(&self.name),
        }
    }

    fn is_of(&self, service: &ServiceKey) -> bool {
        *self.namespace == *service.namespace && *self.name == *service.name
    }
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port/PROTOCOL`, like kube-proxy's logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port, self.protocol
        )
    }
}

/// One backend of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The target port, as resolved in the EndpointSlice.
    pub port: u16,
    /// Shared with the cached slice's endpoint.
    pub node_name: Option<Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Runs on this node (`node_name` equals the proxy's node name).
    pub is_local: bool,
}

impl Endpoint {
    /// Usable as a fallback when nothing is ready.
    pub(crate) fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// How good a duplicate is; the better copy wins a merge.
    pub(crate) fn merge_rank(&self) -> (bool, bool, bool) {
        (self.is_local, self.ready, self.serving)
    }
}

/// What the switch does with traffic to a frontend that has no endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoEndpointsAction {
    /// Nothing usable anywhere in the cluster: reject (TCP RST / ICMP unreachable).
    Reject,
    /// `internalTrafficPolicy: Local` and this node has no usable endpoint
    /// while other nodes do: drop silently (kube-proxy does the same).
    Drop,
}

/// What the switch must implement for one Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortState {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// `ClientIP` session affinity timeout in seconds; `None` without affinity.
    pub session_affinity: Option<u32>,
    pub internal_traffic_policy_local: bool,
    /// The usable endpoints (see module docs), sorted by IP then port.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints (IP, target port) that may still have connections from this
    /// node: the chosen ones plus every other serving one the traffic policy
    /// allows (e.g. a terminating pod draining while others are ready).
    /// Sorted. A UDP endpoint that leaves this set has its conntrack entries
    /// flushed; one that only leaves `endpoints` keeps its flows (kube-proxy
    /// does the same).
    pub serving: Vec<(Ipv4Addr, u16)>,
    /// Some node (any node, this one included) has a usable endpoint, ignoring
    /// the traffic policy. Decides between reject and drop when `endpoints` is empty.
    pub cluster_has_endpoints: bool,
    pub service_type: ServiceType,
    /// `nodePort` of this port (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_policy_local: bool,
    /// `healthCheckNodePort`, for a LoadBalancer Service with
    /// `externalTrafficPolicy: Local` only.
    pub health_check_node_port: Option<u16>,
    /// Addresses of this node's ready endpoints of this port (whatever the
    /// traffic policies), sorted and distinct.
    pub local_ready: Vec<Ipv4Addr>,
    /// NodePort, external IP and LoadBalancer frontends ([`crate::external`]).
    pub external: crate::external::ExternalFrontends,
}

impl ServicePortState {
    /// `None` when there are endpoints to balance over.
    pub fn no_endpoints_action(&self) -> Option<NoEndpointsAction> {
        if !self.endpoints.is_empty() {
            None
        } else if self.cluster_has_endpoints {
            Some(NoEndpointsAction::Drop)
        } else {
            Some(NoEndpointsAction::Reject)
        }
    }

    /// Everything the frontend flows depend on is equal: VIP, port,
    /// protocol, affinity, policy, and the no-endpoints action.
    pub fn same_frontend(&self, other: &Self) -> bool {
        self.cluster_ip == other.cluster_ip
            && self.port == other.port
            && self.protocol == other.protocol
            && self.session_affinity == other.session_affinity
            && self.internal_traffic_policy_local == other.internal_traffic_policy_local
            && self.no_endpoints_action() == other.no_endpoints_action()
            && self.external.same_frontend(&other.external)
    }

    /// The group's buckets are equal: same endpoint addresses and ports in
    /// the same order (condition flags do not change buckets).
    pub fn same_buckets(&self, other: &Self) -> bool {
        self.endpoints.len() == other.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&other.endpoints)
                .all(|(a, b)| a.ip == b.ip && a.port == b.port)
            && self.external.same_buckets(&other.external)
    }
}

/// The desired state of every Service port, keyed and ordered by name.
/// A persistent map: a clone shares every node with the original and
/// costs nothing, and replacing one Service's ports copies only the
/// path to them (O(log n)), so each generation is a cheap new version of
/// the last one, not a copy of it. States are shared (`Arc`) so unchanged
/// entries cost nothing to carry from one generation to the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    ports: imbl::OrdMap<ServicePortName, Arc<ServicePortState>>,
}

impl DesiredState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &ServicePortName) -> Option<&Arc<ServicePortState>> {
        self.ports.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServicePortName, &Arc<ServicePortState>)> {
        self.ports.iter()
    }

    /// Number of Service ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The ports of one Service.
    pub fn service_ports<'a>(
        &'a self,
        service: &'a ServiceKey,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortState>)> + 'a {
        let start = ServicePortName::new(
            Arc::clone(&service.namespace),
            Arc::clone(&service.name),
            "",
            Protocol::Tcp,
        );
        self.ports
            .range(start..)
            .take_while(move |(name, _)| name.is_of(service))
    }

    /// Replaces all ports of one Service with `ports` (empty removes the
    /// Service). Entries whose state is unchanged keep their old `Arc`.
    pub fn replace_service(
        &mut self,
        service: &ServiceKey,
        ports: Vec<(ServicePortName, ServicePortState)>,
    ) {
        let mut old: HashMap<ServicePortName, Arc<ServicePortState>> = HashMap::new();
        let names: Vec<ServicePortName> = self
            .service_ports(service)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if let Some(state) = self.ports.remove(&name) {
                old.insert(name, state);
            }
        }
        for (name, state) in ports {
            debug_assert!(name.is_of(service), "{name} is not a port of {service}");
            let state = match old.remove(&name) {
                Some(previous) if *previous == state => previous,
                _ => Arc::new(state),
            };
            self.ports.insert(name, state);
        }
    }

    /// The health check node port of one Service and what it reports, when
    /// the Service has one (a LoadBalancer Service with
    /// `externalTrafficPolicy: Local` and a `healthCheckNodePort`).
    pub fn health_check(&self, service: &ServiceKey) -> Option<HealthCheck> {
        let mut port = None;
        let mut local: Vec<Ipv4Addr> = Vec::new();
        for (_, state) in self.service_ports(service) {
            port = port.or(state.health_check_node_port);
            local.extend(&state.local_ready);
        }
        local.sort_unstable();
        local.dedup();
        port.map(|port| HealthCheck {
            port,
            local_endpoints: local.len(),
        })
    }

    pub(crate) fn insert(&mut self, name: ServicePortName, state: ServicePortState) {
        self.ports.insert(name, Arc::new(state));
    }
}

/// Builds the desired state from all Services and EndpointSlices.
/// `node_name` is this node (decides `is_local`; empty means no endpoint is local).
pub fn build_desired_state<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> DesiredState {
    let slices: Vec<Slice> = slices.into_iter().map(Slice::from).collect();
    let slices_by_service = group_slices(&slices);
    let mut state = DesiredState::new();
    for service in services {
        let key = ServiceKey::of_service(service);
        let slices = slices_by_service
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let service = SlimService::from(service);
        for (name, port_state) in service_port_states_of(&key, &service, slices, node_name) {
            state.insert(name, port_state);
        }
    }
    state
}

/// Groups slices by the Service they belong to, each group ordered by slice
/// name (so merging is deterministic). Slices without the service-name label
/// are skipped.
pub fn group_slices<'a>(
    slices: impl IntoIterator<Item = &'a Slice>,
) -> HashMap<ServiceKey, Vec<&'a Slice>> {
    let mut grouped: HashMap<ServiceKey, Vec<&'a Slice>> = HashMap::new();
    for slice in slices {
        match slice.service() {
            Some(key) => grouped.entry(key).or_default().push(slice),
            None => debug!(
                slice = slice.name(),
                "EndpointSlice without {SERVICE_NAME_LABEL} label ignored"
            ),
        }
    }
    for group in grouped.values_mut() {
        group.sort_by(|a, b| a.name.cmp(&b.name));
    }
    grouped
}

/// The desired state of each port of one Service, given the slices that
/// belong to it. Empty for ignored Services (headless, ExternalName, no IPv4
/// cluster IP).
pub fn service_port_states(
    service: &Service,
    slices: &[&Slice],
    node_name: &str,
) -> Vec<(ServicePortName, ServicePortState)> {
    let service = SlimService::from(service);
    service_port_states_of(&service.key(), &service, slices, node_name)
}

/// [`service_port_states`] of a Service as the cache keeps it, whose key
/// is `key`: the port names share `key`'s strings.
pub fn service_port_states_of(
    key: &ServiceKey,
    service: &SlimService,
    slices: &[&Slice],
    node_name: &str,
) -> Vec<(ServicePortName, ServicePortState)> {
    let Some(frontend) = ServiceFrontend::of(key, service) else {
        return Vec::new();
    };
    let spec_ports = service
        .spec
        .as_ref()
        .map(|spec| spec.ports.as_slice())
        .unwrap_or_default();

    let namespace = &key.namespace;
    let service_name = &key.name;
    let mut out: Vec<(ServicePortName, ServicePortState)> = Vec::with_capacity(spec_ports.len());
    for spec_port in spec_ports {
        let protocol = match Protocol::from_api(spec_port.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(err) => {
                warn!(service = %key, %err, "Service port ignored");
                continue;
            }
        };
        let Ok(port) = u16::try_from(spec_port.port) else {
            warn!(service = %key, port = spec_port.port, "Service port out of range ignored");
            continue;
        };
        if port == 0 {
            warn!(service = %key, "Service port 0 ignored");
            continue;
        }
        let name = ServicePortName::new(
            namespace.clone(),
            service_name.clone(),
            spec_port.name.as_deref().unwrap_or(""),
            protocol,
        );
        if out.iter().any(|(existing, _)| *existing == name) {
            warn!(service_port = %name, "duplicate Service port ignored");
            continue;
        }
        let all = collect_endpoints(&name, slices, node_name);
        let mut local_ready: Vec<Ipv4Addr> = all
            .iter()
            .filter(|e| e.is_local && e.ready)
            .map(|e| e.ip)
            .collect();
        local_ready.dedup();
        let node_port = match spec_port.node_port.map(u16::try_from) {
            None | Some(Ok(0)) => None,
            Some(Ok(port)) => Some(port),
            Some(Err(_)) => {
                warn!(service_port = %name, node_port = ?spec_port.node_port, "node port out of range ignored");
                None
            }
        };
        let external = crate::external::ExternalFrontends::of(service, spec_port, &all);
        let ChosenEndpoints {
            chosen: endpoints,
            mut serving,
            cluster_has_endpoints,
        } = choose_endpoints(all, frontend.internal_traffic_policy_local);
        // External frontends of an ITP-Local port serve every endpoint: an
        // endpoint leaving them must be flushed too.
        for e in &external.cluster_endpoints {
            if !serving.contains(&(e.ip, e.port)) {
                serving.push((e.ip, e.port));
            }
        }
        out.push((
            name,
            ServicePortState {
                cluster_ip: frontend.cluster_ip,
                port,
                protocol,
                session_affinity: frontend.session_affinity,
                internal_traffic_policy_local: frontend.internal_traffic_policy_local,
                endpoints,
                serving,
                cluster_has_endpoints,
                service_type: frontend.service_type,
                node_port,
                external_traffic_policy_local: frontend.external_traffic_policy_local,
                health_check_node_port: frontend.health_check_node_port,
                local_ready,
                external,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The per-Service part of every port's frontend.
struct ServiceFrontend {
    cluster_ip: Ipv4Addr,
    session_affinity: Option<u32>,
    internal_traffic_policy_local: bool,
    service_type: ServiceType,
    external_traffic_policy_local: bool,
    health_check_node_port: Option<u16>,
}

impl ServiceFrontend {
    fn of(key: &ServiceKey, service: &SlimService) -> Option<Self> {
        let Some(spec) = service.spec.as_ref() else {
            debug!(service = %key, "Service without spec ignored");
            return None;
        };
        if service.other_proxy {
            debug!(service = %key, "Service for another proxy ({SERVICE_PROXY_NAME_LABEL}) ignored");
            return None;
        }
        if spec.type_.as_deref() == Some("ExternalName") {
            debug!(service = %key, "ExternalName Service ignored");
            return None;
        }
        // The API server admits no other type; served as ClusterIP as before.
        let service_type = ServiceType::from_api(spec.type_.as_deref()).unwrap_or_else(|| {
            warn!(service = %key, service_type = spec.type_.as_deref(), "unknown Service type served as ClusterIP");
            ServiceType::ClusterIp
        });
        let primary = spec.cluster_ip.as_deref().unwrap_or("");
        if primary.is_empty() || primary == "None" {
            debug!(service = %key, cluster_ip = primary, "headless or IP-less Service ignored");
            return None;
        }
        // clusterIPs (dual stack) lists clusterIP first; fall back to clusterIP alone.
        let candidates: Vec<&str> = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips.iter().map(|ip| &**ip).collect(),
            _ => vec![primary],
        };
        let mut cluster_ip = None;
        for candidate in candidates {
            if let Ok(ip) = candidate.parse::<Ipv4Addr>() {
                cluster_ip = Some(ip);
                break;
            }
            if candidate.parse::<std::net::Ipv6Addr>().is_err() {
                warn!(service = %key, cluster_ip = candidate, "unparsable cluster IP skipped");
            }
        }
        let Some(cluster_ip) = cluster_ip else {
            debug!(service = %key, "Service without an IPv4 cluster IP ignored");
            return None;
        };

        let session_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            match spec.client_ip_timeout_seconds {
                Some(secs) if secs > 0 => {
                    u32::try_from(secs).unwrap_or(DEFAULT_CLIENT_IP_TIMEOUT_SECS)
                }
                Some(secs) => {
                    warn!(service = %key, secs, "invalid ClientIP timeout, using the default");
                    DEFAULT_CLIENT_IP_TIMEOUT_SECS
                }
                None => DEFAULT_CLIENT_IP_TIMEOUT_SECS,
            }
        });

        let external_traffic_policy_local =
            spec.external_traffic_policy.as_deref() == Some("Local");
        // kube-proxy serves a health check only where the API allows one.
        let health_check_node_port = if service_type == ServiceType::LoadBalancer
            && external_traffic_policy_local
        {
            match spec.health_check_node_port.map(u16::try_from) {
                None | Some(Ok(0)) => None,
                Some(Ok(port)) => Some(port),
                Some(Err(_)) => {
                    warn!(service = %key, port = ?spec.health_check_node_port, "healthCheckNodePort out of range ignored");
                    None
                }
            }
        } else {
            None
        };

        Some(Self {
            cluster_ip,
            session_affinity,
            internal_traffic_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            service_type,
            external_traffic_policy_local,
            health_check_node_port,
        })
    }
}
