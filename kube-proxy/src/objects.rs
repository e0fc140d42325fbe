//! The API objects as the proxy keeps them: only the fields the model
//! reads.
//!
//! - [`Slice`] is an EndpointSlice decoded straight from the API's JSON
//!   (the proxy's watcher lists and watches this type): per endpoint its
//!   first address (parsed once), its three conditions and its node name,
//!   shared (`Arc<str>`) between the endpoints of a node once cached
//!   ([`NodeNames`]). Whatever else the API sends (target references,
//!   hostnames, zones, hints, managed fields, annotations, owner references)
//!   is skipped while decoding, never allocated.
//! - Services stay `k8s_openapi` Services, but only with what the model
//!   reads: the proxy's watcher decodes them as [`SlimService`] (whatever
//!   else the API sends is skipped while decoding), and [`slim_service`]
//!   drops the same fields of a full Service (managed fields, annotations,
//!   the selector, status conditions, ...) before it is cached.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::service_model::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ServiceKey};

/// An EndpointSlice with what the model reads (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slice {
    /// Name, namespace, resourceVersion and the `kubernetes.io/service-name`
    /// label; nothing else.
    #[serde(deserialize_with = "slim_meta_of_slice")]
    pub metadata: ObjectMeta,
    /// `addressType` is `IPv4`.
    #[serde(rename = "addressType", deserialize_with = "is_ipv4", default)]
    pub ipv4: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<SlicePort>,
}

/// One endpoint of a [`Slice`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "WireEndpoint")]
pub struct SliceEndpoint {
    /// The first of `addresses` (the only one kube-proxy uses).
    pub address: Option<EndpointAddress>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Arc<str>>,
}

/// An endpoint's address: IPv4, or the text of anything else (logged and
/// skipped by the model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointAddress {
    V4(Ipv4Addr),
    Other(Box<str>),
}

impl EndpointAddress {
    fn parse(text: &str) -> Self {
        text.parse()
            .map_or_else(|_| Self::Other(text.into()), Self::V4)
    }
}

/// One port of a [`Slice`], as the API has it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SlicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEndpoint {
    #[serde(default, deserialize_with = "first_address")]
    addresses: Option<String>,
    conditions: Option<WireConditions>,
    node_name: Option<String>,
}

#[derive(Deserialize)]
struct WireConditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

impl From<WireEndpoint> for SliceEndpoint {
    fn from(wire: WireEndpoint) -> Self {
        let conditions = wire.conditions.as_ref();
        Self {
            address: wire.addresses.as_deref().map(EndpointAddress::parse),
            ready: conditions.and_then(|c| c.ready),
            serving: conditions.and_then(|c| c.serving),
            terminating: conditions.and_then(|c| c.terminating),
            node_name: wire.node_name.map(Arc::from),
        }
    }
}

/// The metadata fields the proxy reads, as they come over the wire.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

fn slim_meta_of_slice<'de, D: Deserializer<'de>>(de: D) -> Result<ObjectMeta, D::Error> {
    let wire = WireMeta::deserialize(de)?;
    Ok(ObjectMeta {
        name: wire.name,
        namespace: wire.namespace,
        resource_version: wire.resource_version,
        labels: keep_label(wire.labels, SERVICE_NAME_LABEL),
        ..ObjectMeta::default()
    })
}

/// Keeps only `label` of `labels` (None when it is absent).
fn keep_label(
    labels: Option<BTreeMap<String, String>>,
    label: &str,
) -> Option<BTreeMap<String, String>> {
    let mut labels = labels?;
    let value = labels.remove(label)?;
    Some(BTreeMap::from([(label.to_owned(), value)]))
}

fn is_ipv4<'de, D: Deserializer<'de>>(de: D) -> Result<bool, D::Error> {
    let text: Cow<'de, str> = Deserialize::deserialize(de)?;
    Ok(text == "IPv4")
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    de: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

/// The first element of a string array, without keeping the others.
fn first_address<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    struct First;
    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of addresses")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            de.deserialize_seq(First)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let first: Option<String> = seq.next_element()?;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    de.deserialize_option(First)
}

impl kube::Resource for Slice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("EndpointSlice")
    }
    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed("discovery.k8s.io")
    }
    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("discovery.k8s.io/v1")
    }
    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed("endpointslices")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<&EndpointSlice> for Slice {
    fn from(slice: &EndpointSlice) -> Self {
        Self {
            metadata: ObjectMeta {
                name: slice.metadata.name.clone(),
                namespace: slice.metadata.namespace.clone(),
                resource_version: slice.metadata.resource_version.clone(),
                labels: keep_label(slice.metadata.labels.clone(), SERVICE_NAME_LABEL),
                ..ObjectMeta::default()
            },
            ipv4: slice.address_type == "IPv4",
            endpoints: slice
                .endpoints
                .iter()
                .map(|endpoint| {
                    let conditions = endpoint.conditions.as_ref();
                    SliceEndpoint {
                        address: endpoint
                            .addresses
                            .first()
                            .map(|a| EndpointAddress::parse(a)),
                        ready: conditions.and_then(|c| c.ready),
                        serving: conditions.and_then(|c| c.serving),
                        terminating: conditions.and_then(|c| c.terminating),
                        node_name: endpoint.node_name.as_deref().map(Arc::from),
                    }
                })
                .collect(),
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|port| SlicePort {
                    name: port.name.clone(),
                    protocol: port.protocol.clone(),
                    port: port.port,
                })
                .collect(),
        }
    }
}

impl From<EndpointSlice> for Slice {
    fn from(slice: EndpointSlice) -> Self {
        Self::from(&slice)
    }
}

impl From<Arc<EndpointSlice>> for Slice {
    fn from(slice: Arc<EndpointSlice>) -> Self {
        Self::from(slice.as_ref())
    }
}

impl Slice {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    /// The Service the slice belongs to, from its `kubernetes.io/service-name`
    /// label; `None` when the label is missing or empty.
    pub fn service(&self) -> Option<ServiceKey> {
        let name = self.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if name.is_empty() {
            return None;
        }
        Some(ServiceKey::new(self.namespace(), name.as_str()))
    }
}

/// Node names shared between the endpoints that run on the same node.
#[derive(Debug, Default, Clone)]
pub struct NodeNames {
    names: HashSet<Arc<str>>,
}

impl NodeNames {
    /// Points every endpoint's node name of `slice` at the shared copy.
    pub fn share(&mut self, slice: &mut Slice) {
        for endpoint in &mut slice.endpoints {
            if let Some(name) = &mut endpoint.node_name {
                match self.names.get(name) {
                    Some(shared) => *name = Arc::clone(shared),
                    None => {
                        self.names.insert(Arc::clone(name));
                    }
                }
            }
        }
    }

    /// Forgets names no cached endpoint uses any more.
    pub fn prune(&mut self) {
        self.names.retain(|name| Arc::strong_count(name) > 1);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A Service decoded straight from the API's JSON with only what the model
/// reads (the proxy's watcher lists and watches this type): the fields
/// [`slim_service`] keeps. Managed fields, annotations, the selector, other
/// labels, target ports, status conditions and whatever else the API sends
/// are skipped by the decoder, never allocated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimService(pub Service);

impl<'de> Deserialize<'de> for SlimService {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let wire = WireService::deserialize(de)?;
        let meta = wire.metadata.unwrap_or_default();
        let metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            resource_version: meta.resource_version,
            labels: keep_label(meta.labels, SERVICE_PROXY_NAME_LABEL),
            ..ObjectMeta::default()
        };
        let spec = wire
            .spec
            .map(|spec| k8s_openapi::api::core::v1::ServiceSpec {
                type_: spec.type_,
                cluster_ip: spec.cluster_ip,
                cluster_ips: spec.cluster_ips,
                ports: spec.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|port| k8s_openapi::api::core::v1::ServicePort {
                            name: port.name,
                            protocol: port.protocol,
                            port: port.port,
                            node_port: port.node_port,
                            ..Default::default()
                        })
                        .collect()
                }),
                session_affinity: spec.session_affinity,
                session_affinity_config: spec.session_affinity_config,
                external_traffic_policy: spec.external_traffic_policy,
                internal_traffic_policy: spec.internal_traffic_policy,
                health_check_node_port: spec.health_check_node_port,
                external_ips: spec.external_ips,
                load_balancer_source_ranges: spec.load_balancer_source_ranges,
                ..Default::default()
            });
        let status = wire.status.and_then(|status| {
            let ingress = status.load_balancer?.ingress?;
            Some(k8s_openapi::api::core::v1::ServiceStatus {
                load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                    ingress: Some(
                        ingress
                            .into_iter()
                            .map(|i| k8s_openapi::api::core::v1::LoadBalancerIngress {
                                ip: i.ip,
                                ip_mode: i.ip_mode,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                conditions: None,
            })
        });
        Ok(Self(Service {
            metadata,
            spec,
            status,
        }))
    }
}

#[derive(Deserialize)]
struct WireService {
    #[serde(default)]
    metadata: Option<WireMeta>,
    #[serde(default)]
    spec: Option<WireServiceSpec>,
    #[serde(default)]
    status: Option<WireServiceStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireServiceSpec {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    ports: Option<Vec<WireServicePort>>,
    session_affinity: Option<String>,
    session_affinity_config: Option<k8s_openapi::api::core::v1::SessionAffinityConfig>,
    external_traffic_policy: Option<String>,
    internal_traffic_policy: Option<String>,
    health_check_node_port: Option<i32>,
    #[serde(rename = "externalIPs")]
    external_ips: Option<Vec<String>>,
    load_balancer_source_ranges: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireServicePort {
    name: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    port: i32,
    node_port: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireServiceStatus {
    load_balancer: Option<WireLoadBalancerStatus>,
}

#[derive(Deserialize)]
struct WireLoadBalancerStatus {
    ingress: Option<Vec<WireIngress>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIngress {
    ip: Option<String>,
    ip_mode: Option<String>,
}

impl kube::Resource for SlimService {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("Service")
    }
    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed("services")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// A Service with only what the model reads: metadata name, namespace,
/// resourceVersion and the `service.kubernetes.io/service-proxy-name`
/// label; the spec's type, cluster IPs, ports, policies, affinity, external
/// IPs, source ranges and health check port; the status's LoadBalancer
/// ingress.
pub fn slim_service(service: Service) -> Service {
    let Service {
        metadata,
        spec,
        status,
    } = service;
    let metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        resource_version: metadata.resource_version,
        labels: keep_label(metadata.labels, SERVICE_PROXY_NAME_LABEL),
        ..ObjectMeta::default()
    };
    let spec = spec.map(|spec| k8s_openapi::api::core::v1::ServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|port| k8s_openapi::api::core::v1::ServicePort {
                    name: port.name,
                    protocol: port.protocol,
                    port: port.port,
                    node_port: port.node_port,
                    ..Default::default()
                })
                .collect()
        }),
        session_affinity: spec.session_affinity,
        session_affinity_config: spec.session_affinity_config,
        external_traffic_policy: spec.external_traffic_policy,
        internal_traffic_policy: spec.internal_traffic_policy,
        health_check_node_port: spec.health_check_node_port,
        external_ips: spec.external_ips,
        load_balancer_source_ranges: spec.load_balancer_source_ranges,
        ..Default::default()
    });
    let status = status.and_then(|status| {
        let ingress = status.load_balancer?.ingress?;
        Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .into_iter()
                        .map(|i| k8s_openapi::api::core::v1::LoadBalancerIngress {
                            ip: i.ip,
                            ip_mode: i.ip_mode,
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            conditions: None,
        })
    });
    Service {
        metadata,
        spec,
        status,
    }
}
