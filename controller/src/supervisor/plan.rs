//! Supervisor mode, decided from fresh copies (pure): which Service and EndpointSlice each
//! guest Service should have in the supervisor, which supervisor objects are orphans, and
//! what the guest Service's status says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use switchyard_api::TAG_CLUSTER;

use crate::service as s;

/// Label: the guest Service's namespace.
pub const LABEL_GUEST_NAMESPACE: &str = "switchyard.io/guest-namespace";
/// Label: the guest Service's name.
pub const LABEL_GUEST_NAME: &str = "switchyard.io/guest-name";
/// Label: the guest Service's UID (what ownership is decided by).
pub const LABEL_GUEST_UID: &str = "switchyard.io/guest-uid";
/// `endpointslice.kubernetes.io/managed-by` of the slices the controller writes.
pub const SLICE_MANAGER: &str = "switchyard.io/supervisor-provider";
/// Node label excluding a node from load balancers (as kube's service controller has it).
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Whether the controller serves the guest Service in supervisor mode now.
pub fn served(svc: &Service) -> bool {
    s::is_ours(svc) && s::is_load_balancer(svc) && !s::is_deleting(svc)
}

/// The supervisor object name of a guest Service: `<cluster>-<namespace>-<name>`, cut to 54
/// characters, then `-` and 8 hex digits of a hash of `namespace/name` (so two guest
/// Services never share a name, and it stays a DNS-1035 label).
pub fn object_name(cluster: &str, namespace: &str, name: &str) -> String {
    let hash = fnv1a(format!("{cluster}/{namespace}/{name}").as_bytes());
    let mut base: String = format!("{cluster}-{namespace}-{name}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(54)
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert(0, 's');
        base.truncate(54);
    }
    let base = base.trim_end_matches('-');
    format!("{base}-{:08x}", hash as u32)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The owner labels of a guest Service's supervisor objects.
pub fn owner_labels(cluster: &str, guest: &Service) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TAG_CLUSTER.to_string(), cluster.to_string()),
        (
            LABEL_GUEST_NAMESPACE.to_string(),
            guest.namespace().unwrap_or_default(),
        ),
        (LABEL_GUEST_NAME.to_string(), guest.name_any()),
        (LABEL_GUEST_UID.to_string(), guest.uid().unwrap_or_default()),
    ])
}

/// Whether a supervisor object carries this cluster's owner labels.
pub fn is_owned(cluster: &str, labels: &BTreeMap<String, String>) -> bool {
    labels.get(TAG_CLUSTER).map(String::as_str) == Some(cluster)
        && labels.contains_key(LABEL_GUEST_UID)
}

/// The guest UID a supervisor object belongs to.
pub fn guest_uid(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get(LABEL_GUEST_UID).map(String::as_str)
}

/// Port name in the supervisor: `<protocol>-<port>` (unique within a Service).
fn port_name(p: &ServicePort) -> String {
    format!(
        "{}-{}",
        p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
        p.port
    )
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

fn node_ipv4(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
}

/// Guest nodes with a ready endpoint of each guest Service (`ns/name`).
pub fn local_nodes(slices: &[EndpointSlice]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(svc) = slice.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        let entry = out
            .entry(format!("{}/{svc}", slice.namespace().unwrap_or_default()))
            .or_default();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(node)) = (ready, &ep.node_name) {
                entry.insert(node.clone());
            }
        }
    }
    out
}

/// The guest node addresses a guest Service's traffic may go to: Ready (or without a Ready
/// condition), not excluded, with an IPv4 InternalIP; for `externalTrafficPolicy: Local`
/// only nodes with a ready endpoint. Sorted.
pub fn endpoint_addresses(
    guest: &Service,
    nodes: &[Node],
    local: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<IpAddr> {
    let only_local = guest
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    let with_endpoint = local.get(&s::key(guest));
    let mut out: Vec<IpAddr> = nodes
        .iter()
        .filter(|n| node_ready(n) && !n.labels().contains_key(EXCLUDE_LABEL))
        .filter(|n| !only_local || with_endpoint.is_some_and(|e| e.contains(&n.name_any())))
        .filter_map(node_ipv4)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a served guest Service should have in the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// Name of both objects.
    pub name: String,
    /// Owner labels.
    pub labels: BTreeMap<String, String>,
    /// The supervisor Service's ports: (name, protocol, port, guest node port).
    pub ports: Vec<(String, String, i32, i32)>,
    /// The guest node addresses.
    pub addresses: Vec<IpAddr>,
}

/// The supervisor objects a guest Service should have (`None`: not served, or its node
/// ports are not allocated yet).
pub fn wanted(
    cluster: &str,
    guest: &Service,
    nodes: &[Node],
    local: &BTreeMap<String, BTreeSet<String>>,
) -> Option<Wanted> {
    if !served(guest) {
        return None;
    }
    let mut ports = Vec::new();
    for p in guest.spec.as_ref()?.ports.as_ref()? {
        ports.push((
            port_name(p),
            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            p.port,
            p.node_port?,
        ));
    }
    if ports.is_empty() {
        return None;
    }
    Some(Wanted {
        name: object_name(
            cluster,
            &guest.namespace().unwrap_or_default(),
            &guest.name_any(),
        ),
        labels: owner_labels(cluster, guest),
        ports,
        addresses: endpoint_addresses(guest, nodes, local),
    })
}

impl Wanted {
    /// A new supervisor Service (selector-less, type LoadBalancer, ETP Cluster).
    pub fn service(&self, namespace: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(namespace.into()),
                labels: Some(self.labels.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(self.service_ports(&[])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service_ports(&self, existing: &[ServicePort]) -> Vec<ServicePort> {
        self.ports
            .iter()
            .map(|(name, protocol, port, node_port)| ServicePort {
                name: Some(name.clone()),
                protocol: Some(protocol.clone()),
                port: *port,
                target_port: Some(IntOrString::Int(*node_port)),
                // The supervisor's own node port, kept across updates.
                node_port: existing
                    .iter()
                    .find(|e| e.name.as_deref() == Some(name))
                    .and_then(|e| e.node_port),
                ..Default::default()
            })
            .collect()
    }

    /// The existing supervisor Service updated to this (`None`: already as wanted).
    pub fn update_service(&self, existing: &Service) -> Option<Service> {
        let mut new = existing.clone();
        let labels = new.metadata.labels.get_or_insert_with(Default::default);
        labels.extend(self.labels.clone());
        let spec = new.spec.get_or_insert_with(Default::default);
        spec.type_ = Some("LoadBalancer".into());
        let old_ports = spec.ports.clone().unwrap_or_default();
        spec.ports = Some(self.service_ports(&old_ports));
        let same_ports = old_ports.len() == self.ports.len()
            && old_ports.iter().zip(&self.ports).all(|(o, w)| {
                o.name.as_deref() == Some(&w.0)
                    && o.protocol.as_deref().unwrap_or("TCP") == w.1
                    && o.port == w.2
                    && o.target_port == Some(IntOrString::Int(w.3))
            });
        (!same_ports || new.metadata.labels != existing.metadata.labels).then_some(new)
    }

    /// The EndpointSlice for the supervisor Service `owner` (owned by it, so the supervisor's
    /// garbage collector removes it with the Service too).
    pub fn slice(&self, owner: &Service) -> EndpointSlice {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/service-name".into(), self.name.clone());
        labels.insert(
            "endpointslice.kubernetes.io/managed-by".into(),
            SLICE_MANAGER.into(),
        );
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: owner.metadata.namespace.clone(),
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: self.name.clone(),
                    uid: owner.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: self
                .addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                self.ports
                    .iter()
                    .map(|(name, protocol, _, node_port)| EndpointPort {
                        name: Some(name.clone()),
                        protocol: Some(protocol.clone()),
                        port: Some(*node_port),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    /// The existing slice updated to this (`None`: already as wanted).
    pub fn update_slice(&self, existing: &EndpointSlice, owner: &Service) -> Option<EndpointSlice> {
        let want = self.slice(owner);
        let mut new = existing.clone();
        new.metadata.labels = want.metadata.labels.clone();
        new.metadata.owner_references = want.metadata.owner_references.clone();
        new.address_type = want.address_type.clone();
        new.endpoints = want.endpoints.clone();
        new.ports = want.ports.clone();
        (new != *existing).then_some(new)
    }
}

/// What the guest Service's status should say, from its supervisor Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStatus {
    /// The addresses (empty while pending).
    pub ips: Vec<IpAddr>,
    /// `AddressAssigned` status.
    pub ok: bool,
    /// Its reason.
    pub reason: String,
    /// Its message.
    pub message: String,
}

/// The guest status while the supervisor Service is `sup` (`None`: not created yet).
pub fn guest_status(namespace: &str, name: &str, sup: Option<&Service>) -> GuestStatus {
    let Some(sup) = sup else {
        return GuestStatus {
            ips: Vec::new(),
            ok: false,
            reason: "SupervisorPending".into(),
            message: format!("creating Service {namespace}/{name} in the supervisor"),
        };
    };
    let ips = s::ingress_ips(sup);
    if ips.is_empty() {
        // The supervisor's own reason, when its controller gives one.
        let why = s::condition(sup, s::COND_ASSIGNED)
            .filter(|c| c.status == "False")
            .map(|c| format!(": {}: {}", c.reason, c.message))
            .unwrap_or_default();
        return GuestStatus {
            ips,
            ok: false,
            reason: "SupervisorPending".into(),
            message: format!(
                "waiting for the supervisor to assign Service {namespace}/{name} an address{why}"
            ),
        };
    }
    let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    GuestStatus {
        message: format!(
            "{} from the supervisor's Service {namespace}/{name}",
            list.join(",")
        ),
        ips,
        ok: true,
        reason: "Assigned".into(),
    }
}

/// Applies a [`GuestStatus`] to a copy of the guest Service (conditions keep their
/// transition times while their status holds).
pub fn with_status(guest: &Service, st: &GuestStatus) -> Service {
    let mut new = guest.clone();
    s::set_ingress(&mut new, &st.ips);
    s::set_condition(&mut new, s::COND_ASSIGNED, st.ok, &st.reason, &st.message);
    new
}

/// The guest Service with its address and condition cleared (for the release).
pub fn cleared(guest: &Service) -> Service {
    let mut new = guest.clone();
    s::set_ingress(&mut new, &[]);
    s::clear_condition(&mut new, s::COND_ASSIGNED);
    new
}

/// Supervisor objects (by their labels) that no served guest Service owns: names to delete.
pub fn orphans<'a>(
    cluster: &str,
    served_uids: &BTreeSet<String>,
    objects: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Vec<String> {
    objects
        .filter(|(_, labels)| is_owned(cluster, labels))
        .filter(|(_, labels)| guest_uid(labels).is_none_or(|u| !served_uids.contains(u)))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guest(extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": {"type": "LoadBalancer", "ports": [
                {"port": 80, "protocol": "TCP", "nodePort": 30080},
                {"port": 53, "protocol": "UDP", "nodePort": 30053}]}
        });
        if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in b {
                a.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, ip: &str, ready: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    #[test]
    fn names_are_labels_and_distinct() {
        let a = object_name("g1", "a-b", "c");
        let b = object_name("g1", "a", "b-c");
        assert_ne!(a, b, "the hash tells apart what the dashes join");
        assert!(a.starts_with("g1-a-b-c-"), "{a}");
        let long = object_name("Cluster", &"n".repeat(63), &"s".repeat(63));
        assert!(long.len() <= 63, "{long}");
        assert!(long.starts_with("cluster-nnn"), "{long}");
        assert!(object_name("1x", "a", "b").starts_with("s1x-a-b-"));
        assert_eq!(object_name("g1", "a", "b"), object_name("g1", "a", "b"));
    }

    #[test]
    fn endpoints_are_ready_unexcluded_guest_nodes_and_their_node_ports() {
        let nodes = [
            node("n1", "10.0.0.1", "True", json!({})),
            node("n2", "10.0.0.2", "False", json!({})),
            node("n3", "10.0.0.3", "True", json!({EXCLUDE_LABEL: ""})),
            node("n4", "10.0.0.4", "True", json!({})),
        ];
        let w = wanted("g1", &guest(json!({})), &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(
            w.addresses,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.4".parse().unwrap()
            ]
        );
        assert_eq!(
            w.ports,
            [
                ("tcp-80".to_string(), "TCP".to_string(), 80, 30080),
                ("udp-53".to_string(), "UDP".to_string(), 53, 30053)
            ]
        );
        assert_eq!(w.labels[LABEL_GUEST_UID], "u-1");
        assert_eq!(w.labels[TAG_CLUSTER], "g1");
        // ETP Local: only nodes with a ready endpoint.
        let local = BTreeMap::from([("shop/web".to_string(), BTreeSet::from(["n4".to_string()]))]);
        let mut g = guest(json!({}));
        g.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let w = wanted("g1", &g, &nodes, &local).unwrap();
        assert_eq!(w.addresses, ["10.0.0.4".parse::<IpAddr>().unwrap()]);
        let sup = w.service("guests");
        assert!(sup.spec.as_ref().unwrap().selector.is_none());
        let slice = w.slice(&sup);
        assert_eq!(slice.endpoints.len(), 1);
        assert_eq!(
            slice.ports.as_ref().unwrap()[0].port,
            Some(30080),
            "the slice points at the guest node port"
        );
    }

    #[test]
    fn not_served_without_node_ports_or_of_another_class() {
        let mut g = guest(json!({}));
        g.spec.as_mut().unwrap().ports.as_mut().unwrap()[1].node_port = None;
        assert!(wanted("g1", &g, &[], &BTreeMap::new()).is_none());
        let mut g = guest(json!({}));
        g.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert!(wanted("g1", &g, &[], &BTreeMap::new()).is_none());
    }

    #[test]
    fn updates_keep_the_supervisors_node_ports_and_are_none_when_equal() {
        let w = wanted("g1", &guest(json!({})), &[], &BTreeMap::new()).unwrap();
        let mut sup = w.service("guests");
        for p in sup.spec.as_mut().unwrap().ports.as_mut().unwrap() {
            p.node_port = Some(31000);
        }
        assert!(w.update_service(&sup).is_none());
        let mut g = guest(json!({}));
        g.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30081);
        let w2 = wanted("g1", &g, &[], &BTreeMap::new()).unwrap();
        let new = w2.update_service(&sup).unwrap();
        let p = &new.spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            (p.target_port.clone(), p.node_port),
            (Some(IntOrString::Int(30081)), Some(31000))
        );
        let slice = w.slice(&sup);
        assert!(w.update_slice(&slice, &sup).is_none());
        assert!(w2.update_slice(&slice, &sup).is_some());
    }

    #[test]
    fn status_follows_the_supervisor() {
        let st = guest_status("guests", "x", None);
        assert_eq!((st.ok, st.reason.as_str()), (false, "SupervisorPending"));
        let mut sup = Service::default();
        s::set_condition(
            &mut sup,
            s::COND_ASSIGNED,
            false,
            "PoolExhausted",
            "no free address",
        );
        let st = guest_status("guests", "x", Some(&sup));
        assert!(
            st.message.contains("PoolExhausted: no free address"),
            "{st:?}"
        );
        s::set_ingress(&mut sup, &["198.18.0.1".parse().unwrap()]);
        let st = guest_status("guests", "x", Some(&sup));
        assert!(st.ok && st.ips.len() == 1 && st.reason == "Assigned");
        let g = with_status(&guest(json!({})), &st);
        assert_eq!(s::ingress_ips(&g), st.ips);
        // The same status again is no change (no write).
        assert_eq!(with_status(&g, &st).status, g.status);
    }

    #[test]
    fn orphans_are_only_tagged_objects_of_this_cluster() {
        let mine = owner_labels("g1", &guest(json!({})));
        let mut gone = mine.clone();
        gone.insert(LABEL_GUEST_UID.into(), "u-old".into());
        let mut other_cluster = gone.clone();
        other_cluster.insert(TAG_CLUSTER.into(), "g2".into());
        let untagged = BTreeMap::new();
        let objects = [
            ("a", &mine),
            ("b", &gone),
            ("c", &other_cluster),
            ("d", &untagged),
        ];
        let served = BTreeSet::from(["u-1".to_string()]);
        assert_eq!(orphans("g1", &served, objects.into_iter()), ["b"]);
    }
}
