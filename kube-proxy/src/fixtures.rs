//! Builders for `Service` and `EndpointSlice` objects, so tests, benchmarks
//! and the lab read as what they set up:
//!
//! ```
//! use switchyard_proxy::fixtures::{endpoint, service, slice};
//! let svc = service("default", "web").cluster_ip("10.96.0.10").tcp("http", 80).build();
//! let eps = slice("default", "web-abc", "web")
//!     .tcp("http", 8080)
//!     .endpoint(endpoint("10.0.1.5").node("node-a"))
//!     .endpoint(endpoint("10.0.2.7").node("node-b").ready(false))
//!     .build();
//! # let _ = (svc, eps);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::service_model::SERVICE_NAME_LABEL;

/// Starts a ClusterIP Service with selector `app: <name>` and no ports or IP yet.
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder {
        service: Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_owned()),
                selector: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
                session_affinity: Some("None".to_owned()),
                internal_traffic_policy: Some("Cluster".to_owned()),
                ..ServiceSpec::default()
            }),
            status: None,
        },
    }
}

#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    service: Service,
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.service.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// Sets `clusterIP` and `clusterIPs: [ip]`, as the API server does.
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        let spec = self.spec();
        spec.cluster_ip = Some(ip.to_owned());
        spec.cluster_ips = Some(vec![ip.to_owned()]);
        self
    }

    /// Sets `clusterIPs` (dual stack); `clusterIP` becomes the first one.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|ip| (*ip).to_owned());
        spec.cluster_ips = Some(ips.iter().map(|ip| (*ip).to_owned()).collect());
        self
    }

    /// `clusterIP: None`.
    pub fn headless(self) -> Self {
        self.cluster_ip("None")
    }

    /// `type: ExternalName` pointing at `target`, no cluster IP.
    pub fn external_name(mut self, target: &str) -> Self {
        let spec = self.spec();
        spec.type_ = Some("ExternalName".to_owned());
        spec.external_name = Some(target.to_owned());
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.selector = None;
        self
    }

    /// A port with an explicit protocol and a numeric target port equal to `port`.
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let spec_port = ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol: Some(protocol.to_owned()),
            target_port: Some(IntOrString::Int(port)),
            ..ServicePort::default()
        };
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(spec_port);
        self
    }

    pub fn tcp(self, name: &str, port: i32) -> Self {
        self.port(name, port, "TCP")
    }

    pub fn udp(self, name: &str, port: i32) -> Self {
        self.port(name, port, "UDP")
    }

    /// Sets the target port of the last added port to a container port name.
    pub fn named_target(mut self, target: &str) -> Self {
        if let Some(last) = self
            .spec()
            .ports
            .as_mut()
            .and_then(|ports| ports.last_mut())
        {
            last.target_port = Some(IntOrString::String(target.to_owned()));
        }
        self
    }

    /// `sessionAffinity: ClientIP`, with `timeoutSeconds` if given.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_owned());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig { timeout_seconds }),
        });
        self
    }

    /// `internalTrafficPolicy: Local`.
    pub fn internal_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".to_owned());
        self
    }

    /// Adds a label to the Service.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.service
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Removes the selector: endpoints come from hand-made slices.
    pub fn no_selector(mut self) -> Self {
        self.spec().selector = None;
        self
    }

    pub fn build(self) -> Service {
        self.service
    }
}

/// Starts an IPv4 EndpointSlice named `name` for Service `service_name`.
pub fn slice(namespace: &str, name: &str, service_name: &str) -> SliceBuilder {
    SliceBuilder {
        slice: EndpointSlice {
            address_type: "IPv4".to_owned(),
            endpoints: Vec::new(),
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_owned(),
                    service_name.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ports: Some(Vec::new()),
        },
    }
}

#[derive(Debug, Clone)]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

impl SliceBuilder {
    /// `addressType: IPv6`.
    pub fn ipv6(mut self) -> Self {
        self.slice.address_type = "IPv6".to_owned();
        self
    }

    /// Removes the `kubernetes.io/service-name` label.
    pub fn without_service_label(mut self) -> Self {
        self.slice.metadata.labels = None;
        self
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.slice
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.to_owned()),
                port: Some(port),
                protocol: Some(protocol.to_owned()),
                app_protocol: None,
            });
        self
    }

    pub fn tcp(self, name: &str, port: i32) -> Self {
        self.port(name, port, "TCP")
    }

    pub fn udp(self, name: &str, port: i32) -> Self {
        self.port(name, port, "UDP")
    }

    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.slice.endpoints.push(endpoint.build());
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

/// Starts an endpoint with one address, no node and unset conditions
/// (which the API reads as ready, serving, not terminating).
pub fn endpoint(ip: &str) -> EndpointBuilder {
    EndpointBuilder {
        endpoint: Endpoint {
            addresses: vec![ip.to_owned()],
            ..Endpoint::default()
        },
    }
}

#[derive(Debug, Clone)]
pub struct EndpointBuilder {
    endpoint: Endpoint,
}

impl EndpointBuilder {
    fn conditions(&mut self) -> &mut EndpointConditions {
        self.endpoint
            .conditions
            .get_or_insert_with(EndpointConditions::default)
    }

    pub fn node(mut self, node_name: &str) -> Self {
        self.endpoint.node_name = Some(node_name.to_owned());
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }

    pub fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }

    pub fn terminating(mut self, terminating: bool) -> Self {
        self.conditions().terminating = Some(terminating);
        self
    }

    /// A pod being deleted that still passes its readiness probe:
    /// ready false, serving true, terminating true.
    pub fn serving_terminating(self) -> Self {
        self.ready(false).serving(true).terminating(true)
    }

    pub fn build(self) -> Endpoint {
        self.endpoint
    }
}
