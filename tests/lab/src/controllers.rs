//! In-process stand-ins for kube-controller-manager: node IPAM (a pod CIDR per Node) and the
//! EndpointSlice controller; and kube-apiserver's own keeper of the `default/kubernetes`
//! Service ([`KubernetesService`]). (ClusterIP/NodePort allocation happens in the API server's
//! Service admission, as in a real cluster.)
//!
//! Each controller subscribes to the store's change feed, reconciles everything once at start,
//! and again after each batch of relevant changes. Writes that change nothing are no-ops in the
//! store, so the controllers do not feed back on themselves.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::apiserver::selector::LabelSelector;
use crate::apiserver::store::{DeleteOptions, StoredEvent};
use crate::apiserver::{ApiServerOptions, Store};

/// `endpointslice.kubernetes.io/managed-by` value of slices this controller owns.
pub const ENDPOINTSLICE_MANAGER: &str = "endpointslice-controller.k8s.io";

/// Starts the controllers enabled in `opts`, and the keeper of the `kubernetes` Service when
/// given.
pub fn start(
    store: &Arc<Store>,
    opts: &ApiServerOptions,
    kubernetes: Option<KubernetesService>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(kubernetes) = kubernetes {
        tasks.push(spawn_kubernetes_service(
            store,
            kubernetes,
            shutdown.clone(),
        ));
    }
    if let Some(cluster_cidr) = opts.cluster_cidr {
        let prefix = opts.node_cidr_prefix;
        tasks.push(spawn_controller(
            store,
            shutdown.clone(),
            &[("", "nodes")],
            move |s| reconcile_node_cidrs(s, cluster_cidr, prefix),
        ));
    }
    if opts.endpointslice_controller {
        tasks.push(spawn_controller(
            store,
            shutdown,
            &[
                ("", "pods"),
                ("", "services"),
                ("discovery.k8s.io", "endpointslices"),
            ],
            reconcile_endpointslices,
        ));
    }
    tasks
}

/// Runs the keeper of the `kubernetes` Service ([`KubernetesService::reconcile`]) on every
/// change of its objects, and with endpoint Leases also on theirs and every second (a Lease
/// expires without a change).
pub fn spawn_kubernetes_service(
    store: &Arc<Store>,
    kubernetes: KubernetesService,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    const OBJECTS: &[(&str, &str)] = &[
        ("", "namespaces"),
        ("", "services"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
    ];
    const WITH_LEASES: &[(&str, &str)] = &[
        ("", "namespaces"),
        ("", "services"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
        ("coordination.k8s.io", "leases"),
    ];
    let (interests, tick) = if kubernetes.endpoint_leases {
        (WITH_LEASES, Some(std::time::Duration::from_secs(1)))
    } else {
        (OBJECTS, None)
    };
    spawn_controller_ticking(store, shutdown, interests, tick, move |s| {
        kubernetes.reconcile(s)
    })
}

fn spawn_controller(
    store: &Arc<Store>,
    shutdown: watch::Receiver<bool>,
    interests: &'static [(&'static str, &'static str)],
    reconcile: impl Fn(&Store) + Send + 'static,
) -> JoinHandle<()> {
    spawn_controller_ticking(store, shutdown, interests, None, reconcile)
}

fn spawn_controller_ticking(
    store: &Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
    interests: &'static [(&'static str, &'static str)],
    tick: Option<std::time::Duration>,
    reconcile: impl Fn(&Store) + Send + 'static,
) -> JoinHandle<()> {
    let store = Arc::clone(store);
    let mut events = store.subscribe();
    tokio::spawn(async move {
        let relevant = |e: &StoredEvent| {
            interests
                .iter()
                .any(|(g, r)| e.key.group == *g && e.key.resource == *r)
        };
        reconcile(&store);
        let mut ticker =
            tokio::time::interval(tick.unwrap_or(std::time::Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let dirty = tokio::select! {
                _ = shutdown.wait_for(|v| *v) => return,
                _ = ticker.tick(), if tick.is_some() => true,
                r = events.recv() => match r {
                    Ok(e) => relevant(&e),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            // Coalesce whatever else is already queued into the same pass.
            let mut dirty = dirty;
            loop {
                match events.try_recv() {
                    Ok(e) => dirty |= relevant(&e),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => dirty = true,
                    Err(_) => break,
                }
            }
            if dirty {
                reconcile(&store);
            }
        }
    })
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Gives every Node without `spec.podCIDR` the lowest free `/prefix` of the cluster CIDR.
pub fn reconcile_node_cidrs(store: &Store, cluster_cidr: Ipv4Net, prefix: u8) {
    let Some(rt) = store.resource_type("", "v1", "nodes") else {
        return;
    };
    let nodes = store.objects_of("", "nodes");
    let mut used: HashSet<String> = nodes
        .iter()
        .map(|n| str_at(n, "/spec/podCIDR").to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let Ok(mut subnets) = cluster_cidr.subnets(prefix) else {
        return;
    };
    for node in nodes
        .iter()
        .filter(|n| str_at(n, "/spec/podCIDR").is_empty())
    {
        let name = str_at(node, "/metadata/name");
        let Some(cidr) = subnets
            .by_ref()
            .map(|s| s.to_string())
            .find(|s| !used.contains(s))
        else {
            tracing::warn!(node = name, %cluster_cidr, "no free pod CIDR left");
            return;
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match store.patch(
            &rt,
            "",
            name,
            "application/merge-patch+json",
            patch.to_string().as_bytes(),
            false,
        ) {
            Ok(_) => {
                tracing::info!(node = name, pod_cidr = %cidr, "assigned pod CIDR");
                used.insert(cidr);
            }
            Err(e) => tracing::warn!(node = name, error = %e, "assigning pod CIDR failed"),
        }
    }
}

fn pod_ready_condition(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .is_some_and(|c| c.get("status") == Some(&json!("True")))
}

/// The port a service port targets on one pod, or `None` when a named port is not declared
/// by any of the pod's containers.
fn resolve_target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    let protocol = service_port
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP");
    match service_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            pod.pointer("/spec/containers")
                .and_then(Value::as_array)?
                .iter()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .find(|p| {
                    p.get("name").and_then(Value::as_str) == Some(name.as_str())
                        && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
                })
                .and_then(|p| p.get("containerPort").and_then(Value::as_i64))
        }
        _ => service_port.get("port").and_then(Value::as_i64),
    }
}

fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{:05x}", h & 0xfffff)
}

/// Desired EndpointSlices of one Service, keyed by name.
pub fn desired_endpointslices(service: &Value, pods: &[Value]) -> BTreeMap<String, Value> {
    let svc_name = str_at(service, "/metadata/name");
    let ns = str_at(service, "/metadata/namespace");
    let selector = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(LabelSelector::from_map)
        .unwrap_or_default();
    let service_ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Pods grouped by their resolved port list (one slice per distinct port list).
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut matching: Vec<&Value> = pods
        .iter()
        .filter(|p| str_at(p, "/metadata/namespace") == ns && selector.matches(p))
        .filter(|p| !str_at(p, "/status/podIP").is_empty())
        .filter(|p| !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
        .collect();
    matching.sort_by_key(|p| str_at(p, "/metadata/name").to_string());
    for pod in matching {
        let ports: Vec<Value> = service_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_target_port(sp, pod)?;
                let mut p = json!({
                    "name": sp.get("name").and_then(Value::as_str).unwrap_or(""),
                    "port": port,
                    "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                });
                if let Some(ap) = sp.get("appProtocol") {
                    p["appProtocol"] = ap.clone();
                }
                Some(p)
            })
            .collect();
        let ready_condition = pod_ready_condition(pod);
        let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
        let mut endpoint = json!({
            "addresses": [str_at(pod, "/status/podIP")],
            "conditions": {
                "ready": ready_condition && !terminating,
                "serving": ready_condition,
                "terminating": terminating,
            },
            "targetRef": {
                "kind": "Pod",
                "namespace": ns,
                "name": str_at(pod, "/metadata/name"),
                "uid": str_at(pod, "/metadata/uid"),
            },
        });
        let node = str_at(pod, "/spec/nodeName");
        if !node.is_empty() {
            endpoint["nodeName"] = json!(node);
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(String::new(), (Vec::new(), Vec::new()));
    }
    groups
        .into_iter()
        .map(|(key, (ports, endpoints))| {
            let name = format!("{svc_name}-{}", short_hash(&key));
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": svc_name,
                        "endpointslice.kubernetes.io/managed-by": ENDPOINTSLICE_MANAGER,
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": svc_name,
                        "uid": str_at(service, "/metadata/uid"),
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            });
            (name, slice)
        })
        .collect()
}

/// Makes the managed EndpointSlices of every Service match its pods.
pub fn reconcile_endpointslices(store: &Store) {
    let Some(rt) = store.resource_type("discovery.k8s.io", "v1", "endpointslices") else {
        return;
    };
    let services = store.objects_of("", "services");
    let pods = store.objects_of("", "pods");
    let existing: Vec<Value> = store
        .objects_of("discovery.k8s.io", "endpointslices")
        .into_iter()
        .filter(|s| {
            str_at(
                s,
                "/metadata/labels/endpointslice.kubernetes.io~1managed-by",
            ) == ENDPOINTSLICE_MANAGER
        })
        .collect();
    let mut wanted: HashSet<(String, String)> = HashSet::new();
    for svc in &services {
        if svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_none_or(|m| m.is_empty())
            || str_at(svc, "/spec/type") == "ExternalName"
        {
            continue;
        }
        let ns = str_at(svc, "/metadata/namespace");
        for (name, slice) in desired_endpointslices(svc, &pods) {
            wanted.insert((ns.to_string(), name.clone()));
            let current = existing.iter().find(|s| {
                str_at(s, "/metadata/namespace") == ns && str_at(s, "/metadata/name") == name
            });
            let result = match current {
                None => store.create(&rt, Some(ns), slice).map(|_| ()),
                Some(cur) => {
                    let same = ["endpoints", "ports", "addressType"]
                        .iter()
                        .all(|f| cur.get(*f) == slice.get(*f))
                        && cur.pointer("/metadata/labels") == slice.pointer("/metadata/labels")
                        && cur.pointer("/metadata/ownerReferences")
                            == slice.pointer("/metadata/ownerReferences");
                    if same {
                        Ok(())
                    } else {
                        let mut update = slice;
                        update["metadata"]["resourceVersion"] = cur
                            .pointer("/metadata/resourceVersion")
                            .cloned()
                            .unwrap_or(Value::Null);
                        store.update(&rt, ns, &name, update, false).map(|_| ())
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(service = str_at(svc, "/metadata/name"), namespace = ns, error = %e, "EndpointSlice write failed; retrying on next change");
            }
        }
    }
    for slice in &existing {
        let key = (
            str_at(slice, "/metadata/namespace").to_string(),
            str_at(slice, "/metadata/name").to_string(),
        );
        if !wanted.contains(&key)
            && let Err(e) = store.delete_unscheduled(&rt, &key.0, &key.1, &DeleteOptions::default())
        {
            tracing::debug!(slice = key.1, error = %e, "EndpointSlice delete failed");
        }
    }
}

/// Name of the Service (and its EndpointSlice and Endpoints) in `default` through which pods
/// reach the API server.
pub const KUBERNETES_SERVICE: &str = "kubernetes";

/// What kube-apiserver keeps in place for itself: the `default/kubernetes` Service
/// (ClusterIP: the first address of the service range; port 443 `https` targeting the API
/// server's port; labels `component: apiserver`, `provider: kubernetes`; no selector), the
/// EndpointSlice `kubernetes` (label `kubernetes.io/service-name: kubernetes`, one ready
/// endpoint: the advertised address) and the Endpoints `kubernetes` (label
/// `endpointslice.kubernetes.io/skip-mirror: "true"`). A deleted object is recreated and
/// changed endpoints are restored; the Service's spec is otherwise left alone.
///
/// With [`KubernetesService::endpoint_leases`] the endpoints are those of several apiservers,
/// as kube-apiserver's lease endpoint reconciler keeps them: each apiserver renews a Lease
/// ([`ENDPOINT_LEASE_NAMESPACE`], label [`LABEL_ENDPOINT_LEASE`], `holderIdentity` its
/// address); the endpoints are the addresses of the unexpired Leases, with
/// `endpoint`'s port, and an expired one is dropped ([`spawn_kubernetes_service`] looks
/// again every second, as expiry is no change).
#[derive(Debug, Clone)]
pub struct KubernetesService {
    /// The Service's ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The advertised address and port of the API server (with `endpoint_leases`: only the
    /// port is used).
    pub endpoint: SocketAddrV4,
    /// Endpoints from apiserver Leases instead of `endpoint` alone.
    pub endpoint_leases: bool,
}

/// Namespace of the apiserver endpoint Leases.
pub const ENDPOINT_LEASE_NAMESPACE: &str = "kube-system";
/// Label (value `"true"`) of the apiserver endpoint Leases.
pub const LABEL_ENDPOINT_LEASE: &str = "lab.switchyard.io/apiserver-endpoint";
/// Lease duration kube-apiserver's lease endpoint reconciler uses (15 s).
pub const ENDPOINT_LEASE_SECONDS: i64 = 15;

/// The addresses of unexpired apiserver endpoint Leases at `now` (Unix seconds), sorted.
pub fn leased_endpoints(leases: &[Value], now: i64) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = leases
        .iter()
        .filter(|l| str_at(l, "/metadata/namespace") == ENDPOINT_LEASE_NAMESPACE)
        .filter(|l| {
            l.pointer("/metadata/labels")
                .and_then(|m| m.get(LABEL_ENDPOINT_LEASE))
                .and_then(Value::as_str)
                == Some("true")
        })
        .filter(|l| {
            let renewed =
                crate::apiserver::time::parse_rfc3339(str_at(l, "/spec/renewTime")).unwrap_or(0);
            let duration = l
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(ENDPOINT_LEASE_SECONDS);
            renewed + duration > now
        })
        .filter_map(|l| str_at(l, "/spec/holderIdentity").parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

impl KubernetesService {
    /// For a service range and the advertised endpoint; an error when the range has no
    /// host address.
    pub fn new(service_cidr: Ipv4Net, endpoint: SocketAddrV4) -> Result<Self, String> {
        let cluster_ip = service_cidr
            .hosts()
            .next()
            .filter(|ip| *ip != service_cidr.network())
            .ok_or_else(|| {
                format!("the service CIDR {service_cidr} has no address for the kubernetes Service")
            })?;
        Ok(KubernetesService {
            cluster_ip,
            endpoint,
            endpoint_leases: false,
        })
    }

    /// The endpoint addresses now.
    fn addresses(&self, store: &Store) -> Vec<Ipv4Addr> {
        if self.endpoint_leases {
            leased_endpoints(
                &store.objects_of("coordination.k8s.io", "leases"),
                crate::apiserver::time::now_unix(),
            )
        } else {
            vec![*self.endpoint.ip()]
        }
    }

    fn service(&self) -> Value {
        json!({
            "metadata": {
                "name": KUBERNETES_SERVICE,
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip.to_string(),
                "sessionAffinity": "None",
                "ports": [{
                    "name": "https",
                    "protocol": "TCP",
                    "port": 443,
                    "targetPort": self.endpoint.port(),
                }],
            },
        })
    }

    fn endpoint_slice(&self, addresses: &[Ipv4Addr]) -> Value {
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
            .collect();
        json!({
            "metadata": {
                "name": KUBERNETES_SERVICE,
                "labels": {"kubernetes.io/service-name": KUBERNETES_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": self.endpoint.port(), "protocol": "TCP"}],
        })
    }

    fn endpoints(&self, addresses: &[Ipv4Addr]) -> Value {
        // kube-apiserver writes no subset at all when it has no endpoint.
        let subsets: Vec<Value> = if addresses.is_empty() {
            Vec::new()
        } else {
            vec![json!({
                "addresses": addresses.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": self.endpoint.port(), "protocol": "TCP"}],
            })]
        };
        json!({
            "metadata": {
                "name": KUBERNETES_SERVICE,
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            },
            "subsets": subsets,
        })
    }

    /// Creates whatever is missing and restores the endpoints' contents.
    pub fn reconcile(&self, store: &Store) {
        let ns_rt = store.resource_type("", "v1", "namespaces");
        if ns_rt.is_none_or(|rt| store.get(&rt, "", "default").is_err()) {
            return;
        }
        let addresses = self.addresses(store);
        let objects = [
            (("", "v1", "services"), self.service(), &[][..]),
            (
                ("discovery.k8s.io", "v1", "endpointslices"),
                self.endpoint_slice(&addresses),
                &["addressType", "endpoints", "ports"][..],
            ),
            (
                ("", "v1", "endpoints"),
                self.endpoints(&addresses),
                &["subsets"][..],
            ),
        ];
        for ((group, version, plural), wanted, kept) in objects {
            let Some(rt) = store.resource_type(group, version, plural) else {
                continue;
            };
            let result = match store.get(&rt, "default", KUBERNETES_SERVICE) {
                Err(e) if e.code == 404 => store.create(&rt, Some("default"), wanted).map(|_| ()),
                Err(e) => Err(e),
                Ok(current) => {
                    if kept.iter().all(|f| current.get(*f) == wanted.get(*f)) {
                        Ok(())
                    } else {
                        let mut update = current;
                        for f in kept {
                            update[*f] = wanted[*f].clone();
                        }
                        store
                            .update(&rt, "default", KUBERNETES_SERVICE, update, false)
                            .map(|_| ())
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!(resource = plural, error = %e, "cannot keep the kubernetes Service's object; retrying on next change");
            }
        }
    }
}
