//! The API objects as the proxy keeps them: only the fields the model
//! reads.
//!
//! - [`Slice`] is an EndpointSlice decoded straight from the API's JSON
//!   (the proxy's watcher lists and watches it as [`WatchedSlice`], which
//!   adds the metadata kube's watcher reads): name, namespace,
//!   resourceVersion and the Service-name label as fields, and per
//!   endpoint its first address (parsed once), its three conditions and
//!   its node name. Whatever else the API sends (target references,
//!   hostnames, zones, hints, managed fields, annotations, owner
//!   references) is skipped while decoding, never allocated.
//! - [`SlimService`] is a Service the same way (watched as
//!   [`WatchedService`]): the spec and status fields the model reads, no
//!   `ObjectMeta` or `ServiceSpec`.
//! - Strings many objects repeat have one copy: node names and namespaces
//!   ([`SharedNames`]), a Service's namespace and name between the cache's
//!   keys, its slices and the desired state, and API values such as
//!   `ClusterIP` or `TCP` are static ([`ApiStr`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::service_model::{SERVICE_NAME_LABEL, ServiceKey};

mod service;

pub use service::{
    ApiStr, SlimIngress, SlimService, SlimServicePort, SlimServiceSpec, WatchedService, api_str,
};

/// An EndpointSlice with what the model reads (see the module docs): no
/// `ObjectMeta` (whose empty fields alone take about 300 bytes), the one
/// label the proxy reads as a field, names as shared strings (the cache
/// points the namespace and the Service name at the copies its other
/// entries hold).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub resource_version: Option<Box<str>>,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<Arc<str>>,
    /// `addressType` is `IPv4`.
    pub ipv4: bool,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

/// An EndpointSlice as the proxy's watcher lists and watches it: the
/// [`Slice`], plus the metadata kube's watcher reads (name, namespace,
/// resourceVersion), dropped when the slice goes into the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedSlice {
    pub metadata: ObjectMeta,
    pub slice: Slice,
}

/// An EndpointSlice on the wire, decoding only what [`Slice`] keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSlice {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(rename = "addressType", deserialize_with = "is_ipv4", default)]
    ipv4: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "null_as_empty")]
    ports: Vec<SlicePort>,
}

impl From<WireSlice> for Slice {
    fn from(wire: WireSlice) -> Self {
        let WireMeta {
            name,
            namespace,
            resource_version,
            labels,
        } = wire.metadata;
        Self {
            name: name.unwrap_or_default().into(),
            namespace: namespace.unwrap_or_default().into(),
            resource_version: resource_version.map(String::into_boxed_str),
            service_name: labels
                .and_then(|mut labels| labels.remove(SERVICE_NAME_LABEL))
                .map(Arc::from),
            ipv4: wire.ipv4,
            endpoints: wire.endpoints,
            ports: wire.ports,
        }
    }
}

impl<'de> Deserialize<'de> for Slice {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Ok(WireSlice::deserialize(de)?.into())
    }
}

impl<'de> Deserialize<'de> for WatchedSlice {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let slice = Slice::deserialize(de)?;
        Ok(Self {
            metadata: ObjectMeta {
                name: Some(slice.name.to_string()),
                namespace: Some(slice.namespace.to_string()),
                resource_version: slice.resource_version.as_deref().map(str::to_owned),
                ..ObjectMeta::default()
            },
            slice,
        })
    }
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
pub(crate) struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
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

impl kube::Resource for WatchedSlice {
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
            name: slice.metadata.name.as_deref().unwrap_or("").into(),
            namespace: slice.metadata.namespace.as_deref().unwrap_or("").into(),
            resource_version: slice.metadata.resource_version.as_deref().map(Box::from),
            service_name: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                .map(|name| Arc::from(name.as_str())),
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

impl From<WatchedSlice> for Slice {
    fn from(watched: WatchedSlice) -> Self {
        watched.slice
    }
}

impl Slice {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service the slice belongs to, from its `kubernetes.io/service-name`
    /// label; `None` when the label is missing or empty. Shares the
    /// slice's strings.
    pub fn service(&self) -> Option<ServiceKey> {
        let name = self.service_name.as_ref().filter(|name| !name.is_empty())?;
        Some(ServiceKey {
            namespace: Arc::clone(&self.namespace),
            name: Arc::clone(name),
        })
    }
}

/// Strings many cached objects repeat, one copy each: node names (shared
/// by the endpoints that run on the same node) and namespaces.
#[derive(Debug, Default, Clone)]
pub struct SharedNames {
    names: HashSet<Arc<str>>,
}

impl SharedNames {
    /// Points `name` at the shared copy (which it becomes if there is none).
    pub fn share(&mut self, name: &mut Arc<str>) {
        match self.names.get(name) {
            Some(shared) => *name = Arc::clone(shared),
            None => {
                self.names.insert(Arc::clone(name));
            }
        }
    }

    /// Points the namespace and every endpoint's node name of `slice` at
    /// the shared copies.
    pub fn share_slice(&mut self, slice: &mut Slice) {
        self.share(&mut slice.namespace);
        for endpoint in &mut slice.endpoints {
            if let Some(name) = &mut endpoint.node_name {
                self.share(name);
            }
        }
    }

    /// Forgets names nothing else uses any more.
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
