//! The slim objects the proxy caches give the same desired state as the
//! full API objects.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_proxy::ServiceKey;
use switchyard_proxy::cluster_cache::ClusterCache;
use switchyard_proxy::objects::{
    EndpointAddress, Slice, SlimService, WatchedService, WatchedSlice,
};
use switchyard_proxy::service_model::build_desired_state;

/// An EndpointSlice as kube-apiserver sends it, with everything the proxy
/// does not read (managed fields, owner references, target references,
/// hints, zones, a second address).
const SLICE: &str = r#"{
  "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
  "metadata": {
    "name": "web-abc12", "namespace": "shop", "resourceVersion": "42",
    "uid": "4f1c", "generateName": "web-",
    "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
    "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T03:00:00Z"},
    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "9a9a"}],
    "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:addressType": {}}}]
  },
  "addressType": "IPv4",
  "endpoints": [
    {"addresses": ["10.1.0.5", "10.1.0.6"], "conditions": {"ready": true, "serving": true, "terminating": false},
     "nodeName": "node-a", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
     "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "77"}},
    {"addresses": ["10.1.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "node-b"},
    {"addresses": ["fd00::1"], "nodeName": "node-a"},
    {"addresses": [], "nodeName": "node-a"}
  ],
  "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]
}"#;

const SERVICE: &str = r#"{
  "apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    "labels": {"app": "web"}},
  "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
    "selector": {"app": "web"}, "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]},
  "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "VIP"}]}}
}"#;

#[test]
fn slim_slice_decodes_only_what_the_model_reads() {
    let slice: Slice = serde_json::from_str(SLICE).expect("decodes");
    assert_eq!(slice.name(), "web-abc12");
    assert_eq!(slice.service(), Some(ServiceKey::new("shop", "web")));
    assert!(slice.ipv4);
    assert_eq!(slice.resource_version.as_deref(), Some("42"));
    assert_eq!(slice.service_name.as_deref(), Some("web"));
    let addresses: Vec<Option<EndpointAddress>> =
        slice.endpoints.iter().map(|e| e.address.clone()).collect();
    assert_eq!(
        addresses,
        [
            Some(EndpointAddress::V4(Ipv4Addr::new(10, 1, 0, 5))),
            Some(EndpointAddress::V4(Ipv4Addr::new(10, 1, 0, 7))),
            Some(EndpointAddress::Other("fd00::1".into())),
            None,
        ]
    );
    assert_eq!(slice.endpoints[1].terminating, Some(true));
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
}

#[test]
fn watched_slice_has_the_metadata_the_watcher_reads() {
    use kube::Resource;
    let watched: WatchedSlice = serde_json::from_str(SLICE).expect("decodes");
    assert_eq!(watched.meta().name.as_deref(), Some("web-abc12"));
    assert_eq!(watched.meta().namespace.as_deref(), Some("shop"));
    assert_eq!(watched.meta().resource_version.as_deref(), Some("42"));
    assert_eq!(watched.meta().labels, None);
    let slice: Slice = serde_json::from_str(SLICE).expect("decodes");
    assert_eq!(watched.slice, slice);
}

#[test]
fn slim_service_decodes_what_the_model_reads() {
    let full: Service = serde_json::from_str(SERVICE).expect("service");
    let slim: SlimService = serde_json::from_str(SERVICE).expect("slim service");
    // Decoding it and slimming a full Service keep the same fields.
    assert_eq!(slim, SlimService::from(&full));
    assert_eq!(&*slim.name, "web");
    assert_eq!(slim.resource_version.as_deref(), Some("7"));
    assert!(!slim.other_proxy);
    let spec = slim.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    // Known API values are not allocated per Service.
    assert!(matches!(spec.type_, Some(std::borrow::Cow::Borrowed(_))));
    assert_eq!(spec.ports.len(), 1);
    assert_eq!(spec.ports[0].node_port, Some(30080));
    assert_eq!(spec.health_check_node_port, Some(32000));
    assert_eq!(slim.ingress.len(), 1);
    assert_eq!(slim.ingress[0].ip.as_deref(), Some("203.0.113.9"));
    // A Service of another proxy says so.
    let other = SERVICE.replace(
        r#""labels": {"app": "web"}"#,
        r#""labels": {"app": "web", "service.kubernetes.io/service-proxy-name": "other"}"#,
    );
    let other: SlimService = serde_json::from_str(&other).expect("slim service");
    assert!(other.other_proxy);
    // The watcher's form carries the metadata kube's watcher reads.
    let watched: WatchedService = serde_json::from_str(SERVICE).expect("watched");
    assert_eq!(
        kube::Resource::meta(&watched).resource_version.as_deref(),
        Some("7")
    );
    assert_eq!(watched.service, slim);
}

#[test]
fn slim_objects_give_the_same_desired_state_as_full_objects() {
    let full_slice: EndpointSlice = serde_json::from_str(SLICE).expect("slice");
    let service: Service = serde_json::from_str(SERVICE).expect("service");
    let expected = build_desired_state([&service], [&full_slice], "node-a");
    assert_eq!(expected.len(), 1);

    let mut cache = ClusterCache::new();
    cache.apply_service(Arc::new(service));
    cache.apply_slice(serde_json::from_str::<Slice>(SLICE).expect("slim slice"));
    let key = ServiceKey::new("shop", "web");
    let ports = cache.service_port_states(&key, "node-a");
    let (name, state) = expected.iter().next().expect("one port");
    assert_eq!(ports.len(), 1);
    assert_eq!(&ports[0].0, name);
    assert_eq!(&ports[0].1, &**state);
    assert_eq!(state.external.node_port, Some(30080));
    assert_eq!(state.health_check_node_port, Some(32000));
    assert_eq!(state.local_ready, [Ipv4Addr::new(10, 1, 0, 5)]);
}

#[test]
fn endpoints_on_one_node_share_its_name() {
    let mut cache = ClusterCache::new();
    let mut second: Slice = serde_json::from_str(SLICE).expect("slice");
    second.name = "web-zzz99".into();
    cache.apply_slice(serde_json::from_str::<Slice>(SLICE).expect("slice"));
    cache.apply_slice(second);
    let service: Service = serde_json::from_str(SERVICE).expect("service");
    cache.apply_service(Arc::new(service));
    let ports = cache.service_port_states(&ServiceKey::new("shop", "web"), "node-a");
    let endpoint = &ports[0].1.endpoints[0];
    let node = endpoint.node_name.as_ref().expect("node");
    // The cache's two slices and this endpoint point at one copy.
    assert!(Arc::strong_count(node) >= 3, "{}", Arc::strong_count(node));
}
