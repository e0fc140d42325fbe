//! Services as the proxy keeps them ([`SlimService`]) and as its watcher
//! decodes them ([`WatchedService`]).

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::WireMeta;
use crate::service_model::{SERVICE_PROXY_NAME_LABEL, ServiceKey};

/// A string field of an API object: the values the model compares with
/// (`ClusterIP`, `TCP`, `Local`, ...) are static, anything else owned, so
/// 10,000 Services do not hold 10,000 copies of `"ClusterIP"`.
pub type ApiStr = Cow<'static, str>;

/// The values [`api_str`] does not allocate for.
const KNOWN: &[&str] = &[
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "TCP",
    "UDP",
    "SCTP",
    "None",
    "ClientIP",
    "Cluster",
    "Local",
    "VIP",
    "Proxy",
];

/// `text` as an [`ApiStr`]: static when it is a [`KNOWN`] value.
pub fn api_str(text: &str) -> ApiStr {
    match KNOWN.iter().find(|known| **known == text) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(text.to_owned()),
    }
}

fn api_strs(texts: &[String]) -> Vec<Box<str>> {
    texts.iter().map(|text| Box::from(text.as_str())).collect()
}

/// A Service with what the model reads: name, namespace, resourceVersion,
/// whether another proxy owns it (`service.kubernetes.io/service-proxy-name`),
/// the spec fields below and the LoadBalancer ingress. No `ObjectMeta`
/// (about 360 bytes even when empty) and no whole `ServiceSpec` (about
/// 420); names shared with the cache's key (see [`crate::cluster_cache`]).
/// Managed fields, annotations, the selector, other labels, target ports,
/// status conditions and whatever else the API sends are skipped by the
/// decoder, never allocated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimService {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub resource_version: Option<Box<str>>,
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy's.
    pub other_proxy: bool,
    pub spec: Option<SlimServiceSpec>,
    /// `status.loadBalancer.ingress`.
    pub ingress: Vec<SlimIngress>,
}

/// The fields of a Service's spec the model reads, as the API has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimServiceSpec {
    pub type_: Option<ApiStr>,
    pub cluster_ip: Option<Box<str>>,
    pub cluster_ips: Option<Vec<Box<str>>>,
    pub ports: Vec<SlimServicePort>,
    pub session_affinity: Option<ApiStr>,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub client_ip_timeout_seconds: Option<i32>,
    pub external_traffic_policy: Option<ApiStr>,
    pub internal_traffic_policy: Option<ApiStr>,
    pub health_check_node_port: Option<i32>,
    pub external_ips: Vec<Box<str>>,
    pub load_balancer_source_ranges: Vec<Box<str>>,
}

/// One port of a Service (no target port: the slices carry it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimServicePort {
    pub name: Option<Box<str>>,
    pub protocol: Option<ApiStr>,
    pub port: i32,
    pub node_port: Option<i32>,
}

/// One `status.loadBalancer.ingress` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimIngress {
    pub ip: Option<Box<str>>,
    pub ip_mode: Option<ApiStr>,
}

impl SlimService {
    /// The Service's key (sharing its strings).
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: Arc::clone(&self.namespace),
            name: Arc::clone(&self.name),
        }
    }
}

impl From<&Service> for SlimService {
    fn from(service: &Service) -> Self {
        let meta = &service.metadata;
        let spec = service.spec.as_ref().map(|spec| SlimServiceSpec {
            type_: spec.type_.as_deref().map(api_str),
            cluster_ip: spec.cluster_ip.as_deref().map(Box::from),
            cluster_ips: spec.cluster_ips.as_deref().map(api_strs),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|port| SlimServicePort {
                    name: port.name.as_deref().map(Box::from),
                    protocol: port.protocol.as_deref().map(api_str),
                    port: port.port,
                    node_port: port.node_port,
                })
                .collect(),
            session_affinity: spec.session_affinity.as_deref().map(api_str),
            client_ip_timeout_seconds: spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds),
            external_traffic_policy: spec.external_traffic_policy.as_deref().map(api_str),
            internal_traffic_policy: spec.internal_traffic_policy.as_deref().map(api_str),
            health_check_node_port: spec.health_check_node_port,
            external_ips: spec
                .external_ips
                .as_deref()
                .map(api_strs)
                .unwrap_or_default(),
            load_balancer_source_ranges: spec
                .load_balancer_source_ranges
                .as_deref()
                .map(api_strs)
                .unwrap_or_default(),
        });
        let ingress = service
            .status
            .as_ref()
            .and_then(|status| status.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|ingress| SlimIngress {
                ip: ingress.ip.as_deref().map(Box::from),
                ip_mode: ingress.ip_mode.as_deref().map(api_str),
            })
            .collect();
        Self {
            name: meta.name.as_deref().unwrap_or("").into(),
            namespace: meta.namespace.as_deref().unwrap_or("").into(),
            resource_version: meta.resource_version.as_deref().map(Box::from),
            other_proxy: meta
                .labels
                .as_ref()
                .is_some_and(|labels| labels.contains_key(SERVICE_PROXY_NAME_LABEL)),
            spec,
            ingress,
        }
    }
}

impl From<Service> for SlimService {
    fn from(service: Service) -> Self {
        Self::from(&service)
    }
}

impl From<Arc<Service>> for SlimService {
    fn from(service: Arc<Service>) -> Self {
        Self::from(service.as_ref())
    }
}

/// A Service as the proxy's watcher lists and watches it: the
/// [`SlimService`], plus the metadata kube's watcher reads (name,
/// namespace, resourceVersion), dropped when the Service goes into the
/// cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedService {
    pub metadata: ObjectMeta,
    pub service: SlimService,
}

impl From<WatchedService> for SlimService {
    fn from(watched: WatchedService) -> Self {
        watched.service
    }
}

impl<'de> Deserialize<'de> for SlimService {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let wire = WireService::deserialize(de)?;
        let meta = wire.metadata.unwrap_or_default();
        let spec = wire.spec.map(|spec| SlimServiceSpec {
            type_: spec.type_.as_deref().map(api_str),
            cluster_ip: spec.cluster_ip.map(String::into_boxed_str),
            cluster_ips: spec
                .cluster_ips
                .map(|ips| ips.into_iter().map(String::into_boxed_str).collect()),
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|port| SlimServicePort {
                    name: port.name.map(String::into_boxed_str),
                    protocol: port.protocol.as_deref().map(api_str),
                    port: port.port,
                    node_port: port.node_port,
                })
                .collect(),
            session_affinity: spec.session_affinity.as_deref().map(api_str),
            client_ip_timeout_seconds: spec
                .session_affinity_config
                .and_then(|config| config.client_ip)
                .and_then(|client_ip| client_ip.timeout_seconds),
            external_traffic_policy: spec.external_traffic_policy.as_deref().map(api_str),
            internal_traffic_policy: spec.internal_traffic_policy.as_deref().map(api_str),
            health_check_node_port: spec.health_check_node_port,
            external_ips: spec
                .external_ips
                .unwrap_or_default()
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            load_balancer_source_ranges: spec
                .load_balancer_source_ranges
                .unwrap_or_default()
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        });
        let ingress = wire
            .status
            .and_then(|status| status.load_balancer?.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|ingress| SlimIngress {
                ip: ingress.ip.map(String::into_boxed_str),
                ip_mode: ingress.ip_mode.as_deref().map(api_str),
            })
            .collect();
        Ok(Self {
            name: meta.name.unwrap_or_default().into(),
            namespace: meta.namespace.unwrap_or_default().into(),
            resource_version: meta.resource_version.map(String::into_boxed_str),
            other_proxy: meta
                .labels
                .is_some_and(|labels| labels.contains_key(SERVICE_PROXY_NAME_LABEL)),
            spec,
            ingress,
        })
    }
}

impl<'de> Deserialize<'de> for WatchedService {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let service = SlimService::deserialize(de)?;
        Ok(Self {
            metadata: ObjectMeta {
                name: Some(service.name.to_string()),
                namespace: Some(service.namespace.to_string()),
                resource_version: service.resource_version.as_deref().map(str::to_owned),
                ..ObjectMeta::default()
            },
            service,
        })
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

impl kube::Resource for WatchedService {
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
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
