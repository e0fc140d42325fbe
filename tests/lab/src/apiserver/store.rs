//! In-memory object storage with a global resourceVersion, a bounded event history and a
//! broadcast of every change (the source of watches and of the in-process controllers).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::patch;
use super::resources::{self, Registry, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::time;

/// Identity of a stored object: group/resource (version-independent), namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// API group (empty for core).
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// Watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, in resourceVersion order.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Added, Modified or Deleted.
    pub kind: EventType,
    /// Which object.
    pub key: ObjectKey,
    /// The object after the change (for Deleted: its last state, with the deletion's rv),
    /// shared with the store (and with every watcher sending it).
    pub object: Arc<Value>,
    /// The object before the change, for Modified (lets selector watches turn into ADDED/DELETED).
    pub old: Option<Value>,
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many events to keep for watches that resume from a resourceVersion.
    pub history_limit: usize,
    /// Service ClusterIP range; `None` disables ClusterIP/NodePort allocation.
    pub service_cidr: Option<Ipv4Net>,
}

/// What `delete` did.
#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// The object is gone; this was its last state.
    Deleted(Value),
    /// The object is terminating (grace period or finalizers); this is its current state.
    Terminating(Value),
}

/// Options of a DELETE.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
}

/// List query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0 = all).
    pub limit: usize,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
}

/// A list's continue token: where the last page ended, and how many matching objects came
/// after it at the store's resourceVersion `rv`. Text form
/// `<rv>:<remaining>:<namespace>/<name>` (names hold neither `:` nor `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContinueToken {
    rv: u64,
    remaining: usize,
    namespace: String,
    name: String,
}

impl ContinueToken {
    fn parse(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
        let mut parts = token.splitn(3, ':');
        let (Some(rv), Some(remaining), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let (namespace, name) = key.split_once('/').ok_or_else(invalid)?;
        Ok(ContinueToken {
            rv: rv.parse().map_err(|_| invalid())?,
            remaining: remaining.parse().map_err(|_| invalid())?,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ContinueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}/{}",
            self.rv, self.remaining, self.namespace, self.name
        )
    }
}

/// One LIST response's content.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects, sorted by namespace/name, shared with the store.
    pub items: Vec<Arc<Value>>,
    /// The store's resourceVersion at the list.
    pub resource_version: u64,
    /// Where the next page starts, when more match.
    pub continue_token: Option<String>,
    /// How many more match after this page.
    pub remaining: usize,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Send the current state as ADDED events first (resourceVersion unset or "0", or
    /// `sendInitialEvents=true`).
    InitialState,
    /// Send every change after this resourceVersion.
    After(u64),
}

/// A started watch: backlog to send first, then live events with `rv > backlog_rv`.
#[derive(Debug)]
pub struct WatchHandle {
    /// Events to send before live ones.
    pub backlog: Vec<Arc<StoredEvent>>,
    /// Live events.
    pub live: broadcast::Receiver<Arc<StoredEvent>>,
    /// Live events at or below this rv are already covered by the backlog.
    pub backlog_rv: u64,
}

#[derive(Debug)]
struct State {
    rv: u64,
    registry: Registry,
    /// Shared, so a list or a watch's initial state takes references to the stored
    /// objects instead of copying them (as kube-apiserver's watch cache hands out its
    /// objects); a change stores a new object.
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    history: VecDeque<Arc<StoredEvent>>,
    /// Events with rv <= compacted are no longer in `history`.
    compacted: u64,
    /// Cluster IPs and node ports of the stored Services, so admitting a Service does not
    /// look at every stored object.
    services: ServiceIndex,
}

/// Which stored Services (by uid) hold each cluster IP and node port (`spec.ports[].nodePort`
/// and `spec.healthCheckNodePort`). A uid appears once per use (a Service listing a node port
/// twice holds it twice).
#[derive(Debug, Default)]
struct ServiceIndex {
    ips: HashMap<Ipv4Addr, Vec<String>>,
    node_ports: HashMap<u64, Vec<String>>,
    /// Every host address of the service range below this one is held by some Service
    /// (allocation starts looking here).
    free_hint: u32,
}

impl ServiceIndex {
    fn uses(svc: &Value) -> (Option<String>, Option<Ipv4Addr>, Vec<u64>) {
        let ip = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        // The health check node port comes from the same range and pool as node ports.
        let ports = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
            .chain(
                svc.pointer("/spec/healthCheckNodePort")
                    .and_then(Value::as_u64),
            )
            .filter(|p| *p != 0)
            .collect();
        (meta(svc, "uid"), ip, ports)
    }

    fn add(&mut self, svc: &Value) {
        let (uid, ip, ports) = Self::uses(svc);
        let uid = uid.unwrap_or_default();
        if let Some(ip) = ip {
            self.ips.entry(ip).or_default().push(uid.clone());
        }
        for np in ports {
            self.node_ports.entry(np).or_default().push(uid.clone());
        }
    }

    fn remove(&mut self, svc: &Value) {
        fn take<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Vec<String>>, k: K, uid: &str) -> bool {
            let Some(users) = m.get_mut(&k) else {
                return false;
            };
            if let Some(i) = users.iter().position(|u| u == uid) {
                users.swap_remove(i);
            }
            if users.is_empty() {
                m.remove(&k);
                return true;
            }
            false
        }
        let (uid, ip, ports) = Self::uses(svc);
        let uid = uid.unwrap_or_default();
        if let Some(ip) = ip
            && take(&mut self.ips, ip, &uid)
        {
            self.free_hint = self.free_hint.min(u32::from(ip));
        }
        for np in ports {
            take(&mut self.node_ports, np, &uid);
        }
    }

    /// Whether a Service other than `me` (uid) holds the cluster IP.
    fn ip_used(&self, ip: Ipv4Addr, me: Option<&str>) -> bool {
        self.ips
            .get(&ip)
            .is_some_and(|users| users.iter().any(|u| Some(u.as_str()) != me))
    }

    /// Whether a Service other than `me` (uid) holds the node port.
    fn node_port_used(&self, port: u64, me: Option<&str>) -> bool {
        self.node_ports
            .get(&port)
            .is_some_and(|users| users.iter().any(|u| Some(u.as_str()) != me))
    }

    /// The lowest host address of `cidr` no Service other than `me` holds.
    fn first_free_ip(&mut self, cidr: Ipv4Net, me: Option<&str>) -> Option<Ipv4Addr> {
        let mut hosts = cidr.hosts();
        let first = hosts.next()?;
        let last = hosts.next_back().unwrap_or(first);
        let start = Ipv4Addr::from(u32::from(first).max(self.free_hint));
        if start > last {
            return None;
        }
        // Only addresses held by others are skipped; `me` holds no address when it needs one.
        let mut free = None;
        for a in ipnet::Ipv4AddrRange::new(start, last) {
            if !self.ip_used(a, me) {
                free = Some(a);
                break;
            }
        }
        if me.is_none() {
            // Everything from the old hint up to `free` (or to the end) is held.
            self.free_hint = free.map_or(u32::from(last).saturating_add(1), u32::from);
        }
        free
    }
}

/// The object store.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    opts: StoreOptions,
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn without_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

impl Store {
    /// A store holding the default namespaces.
    pub fn new(opts: StoreOptions) -> Arc<Self> {
        let (tx, _) = broadcast::channel(16_384);
        let store = Arc::new(Store {
            state: Mutex::new(State {
                rv: 0,
                registry: Registry::default(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                services: ServiceIndex::default(),
            }),
            tx,
            opts,
        });
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let rt = store
                .resource_type("", "v1", "namespaces")
                .expect("namespaces are built in");
            store
                .create(&rt, None, json!({"metadata": {"name": ns}}))
                .expect("default namespaces are valid");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Looks up a served resource type.
    pub fn resource_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock().registry.get(group, version, plural).cloned()
    }

    /// A snapshot of the registry (for discovery).
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Subscribes to all future changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tx.subscribe()
    }

    /// Number of live subscribers to the change feed (watches and controllers).
    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Drops history so that watches from resourceVersions at or below the current one get
    /// `410 Gone` (what etcd compaction does; used by tests).
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.rv;
    }

    fn key(rt: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    fn commit(
        &self,
        st: &mut State,
        kind: EventType,
        key: ObjectKey,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        st.rv += 1;
        let rv = st.rv;
        meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        let is_service = key.group.is_empty() && key.resource == "services";
        let stored = Arc::new(object);
        let previous = match kind {
            EventType::Deleted => st.objects.remove(&key),
            _ => st.objects.insert(key.clone(), Arc::clone(&stored)),
        };
        if is_service {
            if let Some(previous) = &previous {
                st.services.remove(previous);
            }
            if kind != EventType::Deleted {
                st.services.add(&stored);
            }
        }
        let event = Arc::new(StoredEvent {
            rv,
            kind,
            key,
            object: Arc::clone(&stored),
            old,
        });
        st.history.push_back(event.clone());
        while st.history.len() > self.opts.history_limit.max(1) {
            if let Some(e) = st.history.pop_front() {
                st.compacted = e.rv;
            }
        }
        // Nobody listening is fine.
        let _ = self.tx.send(event);
        Value::clone(&stored)
    }

    /// `obj` with the requested version's `apiVersion` and `kind`.
    pub(super) fn with_version(rt: &ResourceType, mut obj: Value) -> Value {
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(rt.api_version()));
            m.insert("kind".into(), json!(rt.kind));
        }
        obj
    }

    /// GET one object.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        st.objects
            .get(&Self::key(rt, namespace, name))
            .map(|o| Self::with_version(rt, Value::clone(o)))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// The stored objects of one group/resource (and namespace), in key order, after `after`
    /// (a namespace/name) when given: a range of the ordered map, not a scan.
    fn objects_in<'a>(
        st: &'a State,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        after: Option<(&str, &str)>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)> + 'a {
        let key = |ns: &str, name: &str| ObjectKey {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let start = match after {
            Some((ns, name)) => Bound::Excluded(key(ns, name)),
            None => Bound::Included(key(namespace.unwrap_or(""), "")),
        };
        st.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| {
                k.group == group
                    && k.resource == resource
                    && namespace.is_none_or(|ns| k.namespace == ns)
            })
    }

    /// LIST: matching items (sorted by namespace/name, shared with the store: the response
    /// sets the requested version's `apiVersion` and `kind` as it encodes them), the list
    /// resourceVersion, the continue token when more remain, and how many more match.
    ///
    /// A page costs its size plus a lookup: it starts where the continue token's key left
    /// off. The count of the rest travels in the token too; it is recounted (a pass over the
    /// rest, matching only) on the first page and when the store changed since the token.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        q: &ListQuery,
    ) -> Result<ListPage, ApiError> {
        let token = q
            .continue_token
            .as_deref()
            .map(ContinueToken::parse)
            .transpose()?;
        let st = self.lock();
        let matches = |obj: &Value| q.labels.matches(obj) && q.fields.matches(obj);
        let mut rest = Self::objects_in(
            &st,
            &rt.group,
            &rt.plural,
            namespace,
            token
                .as_ref()
                .map(|t| (t.namespace.as_str(), t.name.as_str())),
        )
        .filter(|(_, obj)| matches(obj));
        let mut items = Vec::new();
        let mut last = None;
        for (key, obj) in rest.by_ref() {
            items.push(Arc::clone(obj));
            last = Some(key);
            if q.limit > 0 && items.len() >= q.limit {
                break;
            }
        }
        let remaining = if q.limit == 0 {
            0
        } else {
            match &token {
                Some(ContinueToken {
                    rv,
                    remaining: before,
                    ..
                }) if *rv == st.rv => before.saturating_sub(items.len()),
                _ => rest.count(),
            }
        };
        let more = match last {
            Some(key) if remaining > 0 => Some(
                ContinueToken {
                    rv: st.rv,
                    remaining,
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                }
                .to_string(),
            ),
            _ => None,
        };
        Ok(ListPage {
            items,
            resource_version: st.rv,
            continue_token: more,
            remaining,
        })
    }

    /// All objects of a group/resource (any version), for controllers.
    pub fn objects_of(&self, group: &str, resource: &str) -> Vec<Value> {
        let st = self.lock();
        Self::objects_in(&st, group, resource, None, None)
            .map(|(_, v)| Value::clone(v))
            .collect()
    }

    /// Starts a watch on a group/resource.
    pub fn watch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        start: WatchStart,
    ) -> Result<WatchHandle, ApiError> {
        let st = self.lock();
        let live = self.tx.subscribe();
        let backlog = match start {
            WatchStart::InitialState => {
                Self::objects_in(&st, &rt.group, &rt.plural, namespace, None)
                    .map(|(k, v)| {
                        Arc::new(StoredEvent {
                            rv: meta(v, "resourceVersion")
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0),
                            kind: EventType::Added,
                            key: k.clone(),
                            object: Arc::clone(v),
                            old: None,
                        })
                    })
                    .collect()
            }
            WatchStart::After(rv) => {
                if rv < st.compacted {
                    return Err(ApiError::expired(rv, st.compacted + 1));
                }
                st.history.iter().filter(|e| e.rv > rv).cloned().collect()
            }
        };
        Ok(WatchHandle {
            backlog,
            live,
            backlog_rv: st.rv,
        })
    }

    /// CREATE.
    pub fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, rt, namespace, body)
    }

    fn check_type_meta(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str)
            && !kind.is_empty()
            && kind != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the provided object ({kind}) does not match the resource ({})",
                rt.kind
            )));
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
            && !av.is_empty()
            && av.split('/').rev().nth(1).unwrap_or("") != rt.group
        {
            return Err(ApiError::bad_request(format!(
                "the API version of the provided object ({av}) does not match the resource group ({})",
                rt.group
            )));
        }
        Ok(())
    }

    fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        namespace: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(rt, &body)?;
        let mut obj = Self::with_version(rt, body);
        let body_ns = meta(&obj, "namespace").filter(|s| !s.is_empty());
        let ns = if rt.namespaced {
            let ns = match (namespace, body_ns) {
                (Some(url), Some(b)) if url != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(url), _) => url.to_string(),
                (None, Some(b)) => b,
                (None, None) => "default".to_string(),
            };
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
            ns
        } else {
            meta_mut(&mut obj).remove("namespace");
            String::new()
        };
        let mut name = meta(&obj, "name").unwrap_or_default();
        if name.is_empty() {
            let Some(prefix) = meta(&obj, "generateName").filter(|s| !s.is_empty()) else {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            name = format!("{prefix}{}", random_suffix());
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                format!(
                    "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if rt.namespaced
            && !st.objects.contains_key(&ObjectKey {
                group: String::new(),
                resource: "namespaces".into(),
                namespace: String::new(),
                name: ns.clone(),
            })
        {
            return Err(ApiError::not_found("", "namespaces", &ns));
        }
        if rt.namespaced
            && st
                .objects
                .get(&ObjectKey {
                    group: String::new(),
                    resource: "namespaces".into(),
                    namespace: String::new(),
                    name: ns.clone(),
                })
                .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some())
        {
            return Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                ApiError::qualified(&rt.group, &rt.plural)
            )));
        }
        let key = Self::key(rt, &ns, &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert(
                "creationTimestamp".into(),
                json!(time::format_rfc3339(time::now_unix())),
            );
            m.insert("generation".into(), json!(1));
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
        }
        self.admit(st, rt, &mut obj, None)?;
        if rt.status_subresource
            && rt.crd.is_some()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            self.register_crd(st, &mut obj)?;
        }
        Ok(self.commit(st, EventType::Added, key, obj, None))
    }

    fn register_crd(&self, st: &mut State, crd: &mut Value) -> Result<(), ApiError> {
        let name = meta(crd, "name").unwrap_or_default();
        let types = resources::from_crd(crd).map_err(|e| {
            ApiError::invalid("apiextensions.k8s.io", "CustomResourceDefinition", &name, e)
        })?;
        st.registry.set_crd(&name, types);
        let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let now = time::format_rfc3339(time::now_unix());
        let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
        crd["status"] = json!({
            "acceptedNames": names,
            "conditions": [cond("NamesAccepted", "NoConflicts"), cond("Established", "InitialNamesAccepted")],
            "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|vs| {
                vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()
            }).unwrap_or_default(),
        });
        Ok(())
    }

    /// Kind-specific defaulting and allocation (create and update).
    fn admit(
        &self,
        st: &mut State,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "pods") => {
                if old.is_none() {
                    // As in a real cluster, a created pod's status is the server's: Pending.
                    // Runtimes report phase, IPs and conditions through /status.
                    obj["status"] = json!({"phase": "Pending"});
                }
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = obj
                        .pointer_mut(&format!("/spec/{list}"))
                        .and_then(Value::as_array_mut)
                    {
                        for c in cs {
                            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                                for p in ports {
                                    if p.get("protocol").is_none() {
                                        p["protocol"] = json!("TCP");
                                    }
                                }
                            }
                        }
                    }
                }
            }
            ("", "namespaces") => {
                let name = meta(obj, "name").unwrap_or_default();
                let labels = meta_mut(obj).entry("labels").or_insert(json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Active"});
                }
            }
            ("", "services") => self.admit_service(st, obj, old)?,
            _ => {}
        }
        Ok(())
    }

    fn admit_service(
        &self,
        st: &mut State,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let name = meta(svc, "name").unwrap_or_default();
        let invalid = |msg: String| ApiError::invalid("", "Service", &name, msg);
        if !svc.get("spec").is_some_and(Value::is_object) {
            svc["spec"] = json!({});
        }
        if let Some(old) = old {
            drop_type_dependent_fields(svc, old);
        }
        if old.is_none() {
            // As kube-apiserver: the status of a created Service is the server's.
            svc["status"] = json!({"loadBalancer": {}});
        }
        let externally_accessible = is_externally_accessible(svc);
        let spec = svc
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid("spec: Required value".into()))?;
        let svc_type = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&svc_type.as_str()) {
            return Err(invalid(format!(
                "spec.type: Unsupported value: {svc_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            )));
        }
        spec.insert("type".into(), json!(svc_type));
        spec.entry("sessionAffinity").or_insert(json!("None"));
        if svc_type != "ExternalName" {
            spec.entry("internalTrafficPolicy")
                .or_insert(json!("Cluster"));
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        }
        // externalTrafficPolicy: defaulted to Cluster where it applies, refused elsewhere.
        match spec
            .get("externalTrafficPolicy")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            None if externally_accessible => {
                spec.insert("externalTrafficPolicy".into(), json!("Cluster"));
            }
            None => {
                spec.remove("externalTrafficPolicy");
            }
            Some(p) if !externally_accessible => {
                return Err(invalid(format!(
                    "spec.externalTrafficPolicy: Invalid value: {p:?}: may only be set for externally-accessible services"
                )));
            }
            Some(p) if p != "Cluster" && p != "Local" => {
                return Err(invalid(format!(
                    "spec.externalTrafficPolicy: Unsupported value: {p:?}: supported values: \"Cluster\", \"Local\""
                )));
            }
            Some(_) => {}
        }
        let is_lb = svc_type == "LoadBalancer";
        match spec.get("allocateLoadBalancerNodePorts") {
            None | Some(Value::Null) if is_lb => {
                spec.insert("allocateLoadBalancerNodePorts".into(), json!(true));
            }
            None | Some(Value::Null) => {
                spec.remove("allocateLoadBalancerNodePorts");
            }
            Some(Value::Bool(_)) if is_lb => {}
            Some(Value::Bool(_)) => {
                return Err(invalid(
                    "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'".into(),
                ));
            }
            Some(v) => {
                return Err(invalid(format!(
                    "spec.allocateLoadBalancerNodePorts: Invalid value: {v}: must be a boolean"
                )));
            }
        }
        let needs_health_check =
            is_lb && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
        let requested_hc = match spec.get("healthCheckNodePort") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(0) => None,
                Some(p) => Some(p),
                None => {
                    return Err(invalid(format!(
                        "spec.healthCheckNodePort: Invalid value: {v}: must be a port number"
                    )));
                }
            },
        };
        if requested_hc.is_none() {
            spec.remove("healthCheckNodePort");
        }
        if let Some(hc) = requested_hc
            && !needs_health_check
        {
            return Err(invalid(format!(
                "spec.healthCheckNodePort: Invalid value: {hc}: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
            )));
        }
        let allocating = self.opts.service_cidr.is_some();
        let my_uid = meta(svc_ref(old), "uid");
        let my_uid = my_uid.as_deref();
        // A node port given in the request is checked against the other Services' ports.
        let check_given = |field: String, port: u64| -> Result<(), ApiError> {
            if !allocating {
                return Ok(());
            }
            if !NODE_PORT_RANGE.contains(&port) {
                return Err(invalid(format!(
                    "{field}: Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                )));
            }
            if st.services.node_port_used(port, my_uid) {
                return Err(invalid(format!(
                    "{field}: Invalid value: {port}: provided port is already allocated"
                )));
            }
            Ok(())
        };
        let needs_node_ports = svc_type == "NodePort" || is_lb;
        // Node ports are allocated for NodePort Services and for LoadBalancer Services unless
        // `allocateLoadBalancerNodePorts: false`.
        let allocates_node_ports = svc_type == "NodePort"
            || (is_lb
                && spec
                    .get("allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false));
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Node ports held by this request: the given ones first (allocation skips them).
        let mut taken_node_ports: HashSet<u64> = HashSet::new();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
                let Some(port) = p.get("port").and_then(Value::as_u64) else {
                    return Err(invalid(format!("spec.ports[{i}].port: Required value")));
                };
                if !(1..=65535).contains(&port) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].port: Invalid value: {port}: must be between 1 and 65535, inclusive"
                    )));
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = json!(port);
                }
                match p.get("nodePort").map(Value::as_u64) {
                    None | Some(Some(0)) => {
                        if let Some(m) = p.as_object_mut() {
                            m.remove("nodePort");
                        }
                    }
                    Some(None) => {
                        return Err(invalid(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {}: must be a port number",
                            p["nodePort"]
                        )));
                    }
                    Some(Some(np)) if !needs_node_ports => {
                        return Err(invalid(format!(
                            "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{svc_type}' (got {np})"
                        )));
                    }
                    Some(Some(np)) => {
                        check_given(format!("spec.ports[{i}].nodePort"), np)?;
                        taken_node_ports.insert(np);
                    }
                }
            }
        }
        if let Some(hc) = requested_hc {
            check_given("spec.healthCheckNodePort".into(), hc)?;
            if taken_node_ports.contains(&hc) {
                return Err(invalid(format!(
                    "spec.healthCheckNodePort: Invalid value: {hc}: provided port is already allocated"
                )));
            }
            taken_node_ports.insert(hc);
        }
        let free_node_port = |taken: &mut HashSet<u64>| -> Option<u64> {
            let np = NODE_PORT_RANGE
                .clone()
                .find(|n| !taken.contains(n) && !st.services.node_port_used(*n, my_uid))?;
            taken.insert(np);
            Some(np)
        };
        if needs_node_ports
            && allocating
            && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in ports.iter_mut().filter(|p| p.get("nodePort").is_none()) {
                // An update that leaves a port's node port out keeps the one it had.
                let previous = old_ports
                    .iter()
                    .find(|o| {
                        o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                    })
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_u64)
                    .filter(|np| !taken_node_ports.contains(np));
                let np = match previous {
                    Some(np) => {
                        taken_node_ports.insert(np);
                        np
                    }
                    None if allocates_node_ports => free_node_port(&mut taken_node_ports)
                        .ok_or_else(|| {
                            invalid("spec.ports[].nodePort: Internal error: range is full".into())
                        })?,
                    None => continue,
                };
                p["nodePort"] = json!(np);
            }
        }
        if needs_health_check && allocating && requested_hc.is_none() {
            let previous = old
                .and_then(|o| o.pointer("/spec/healthCheckNodePort"))
                .and_then(Value::as_u64)
                .filter(|p| *p != 0 && !taken_node_ports.contains(p));
            let hc = match previous {
                Some(hc) => hc,
                None => free_node_port(&mut taken_node_ports).ok_or_else(|| {
                    invalid("spec.healthCheckNodePort: Internal error: range is full".into())
                })?,
            };
            spec.insert("healthCheckNodePort".into(), json!(hc));
        }
        if svc_type == "ExternalName" {
            return Ok(());
        }
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let requested = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or(old_ip.clone());
        if let (Some(old_ip), Some(req)) = (&old_ip, &requested)
            && old_ip != req
        {
            return Err(invalid(format!(
                "spec.clusterIPs[0]: Invalid value: {req:?}: may not change once set"
            )));
        }
        let Some(cidr) = self.opts.service_cidr else {
            if let Some(ip) = requested {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            return Ok(());
        };
        let ip = match requested.as_deref() {
            Some("None") => "None".to_string(),
            Some(req) => {
                let addr: Ipv4Addr = req.parse().map_err(|_| {
                    invalid(format!(
                        "spec.clusterIPs[0]: Invalid value: {req:?}: must be a valid IP address"
                    ))
                })?;
                if old_ip.is_none() {
                    if !cidr.contains(&addr) || addr == cidr.network() || addr == cidr.broadcast() {
                        return Err(invalid(format!(
                            "spec.clusterIPs: Invalid value: [{req:?}]: failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {cidr}"
                        )));
                    }
                    if st.services.ip_used(addr, my_uid) {
                        return Err(invalid(format!(
                            "spec.clusterIPs: Invalid value: [{req:?}]: failed to allocate IP {req}: provided IP is already allocated"
                        )));
                    }
                }
                req.to_string()
            }
            None => st
                .services
                .first_free_ip(cidr, my_uid)
                .map(|a| a.to_string())
                .ok_or_else(|| invalid("spec.clusterIPs: Internal error: range is full".into()))?,
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if svc.get("status").is_none() {
            svc["status"] = json!({"loadBalancer": {}});
        }
        Ok(())
    }

    /// UPDATE (PUT) of the main resource or of `/status`.
    pub fn update(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.update_locked(&mut st, rt, namespace, name, body, status)
    }

    fn update_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(rt, &body)?;
        let key = Self::key(rt, namespace, name);
        let old = st
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if let Some(body_name) = meta(&body, "name")
            && !body_name.is_empty()
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(body_ns) = meta(&body, "namespace")
            && !body_ns.is_empty()
            && body_ns != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(rv) = meta(&body, "resourceVersion")
            && !rv.is_empty()
            && Some(&rv) != meta(&old, "resourceVersion").as_ref()
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut new = if status {
            let mut n = old.clone();
            match body.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            let mut n = Self::with_version(rt, body);
            if rt.status_subresource {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        };
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
        }
        self.admit(st, rt, &mut new, Some(&old))?;
        if spec_part(&new) != spec_part(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" && !status
        {
            self.register_crd(st, &mut new)?;
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if terminating && no_finalizers && !is_graceful_pod(rt, &new) {
            let _ = self.commit(
                st,
                EventType::Modified,
                key.clone(),
                new.clone(),
                Some(old.clone()),
            );
            let gone = self.remove_locked(st, rt, &key);
            return Ok(gone.unwrap_or(new));
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(Self::with_version(rt, old));
        }
        Ok(Self::with_version(
            rt,
            self.commit(st, EventType::Modified, key, new, Some(old)),
        ))
    }

    /// PATCH of the main resource or of `/status`.
    ///
    /// `content_type` selects the patch flavour; `application/apply-patch+yaml` creates the
    /// object when it does not exist (server-side apply, create-or-update).
    pub fn patch(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        status: bool,
    ) -> Result<Value, ApiError> {
        let ct = content_type.split(';').next().unwrap_or_default().trim();
        let patch_value: Value = match ct {
            "application/apply-patch+yaml" => serde_json::from_slice(body)
                .or_else(|_| serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string()))
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
            "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/strategic-merge-patch+json" => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        let mut st = self.lock();
        let key = Self::key(rt, namespace, name);
        let Some(current) = st.objects.get(&key).map(|o| Value::clone(o)) else {
            if ct == "application/apply-patch+yaml" && !status {
                let mut obj = patch_value;
                if meta(&obj, "name").is_none_or(|n| n.is_empty()) {
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                }
                return self.create_locked(
                    &mut st,
                    rt,
                    if rt.namespaced { Some(namespace) } else { None },
                    obj,
                );
            }
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        let current = Self::with_version(rt, current);
        let mut patched = current.clone();
        let invalid = |e: patch::PatchError| ApiError::invalid(&rt.group, &rt.kind, name, e.0);
        match ct {
            "application/merge-patch+json" => patch::merge_patch(&mut patched, &patch_value),
            "application/json-patch+json" => {
                patch::json_patch(&mut patched, &patch_value).map_err(invalid)?
            }
            "application/strategic-merge-patch+json" => {
                if rt.crd.is_some() {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json is not supported for custom resources",
                    ));
                }
                patch::strategic_merge_patch(&mut patched, &patch_value).map_err(invalid)?;
            }
            _ => {
                // Server-side apply, simplified: the applied configuration is merged into the
                // live object (strategically for built-in kinds); fields are not tracked per manager.
                Self::check_type_meta(rt, &patch_value)?;
                if rt.crd.is_some() {
                    patch::merge_patch(&mut patched, &patch_value);
                } else {
                    patch::strategic_merge_patch(&mut patched, &patch_value).map_err(invalid)?;
                }
            }
        }
        if !patched.is_object() {
            return Err(ApiError::bad_request(
                "the patch does not produce an object",
            ));
        }
        self.update_locked(&mut st, rt, namespace, name, patched, status)
    }

    fn remove_locked(&self, st: &mut State, rt: &ResourceType, key: &ObjectKey) -> Option<Value> {
        let obj = st.objects.get(key).map(|o| Value::clone(o))?;
        let uid = meta(&obj, "uid");
        if rt.group.is_empty() && rt.plural == "namespaces" {
            let doomed: Vec<ObjectKey> = st
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .cloned()
                .collect();
            for k in doomed {
                if let Some(o) = st.objects.get(&k).map(|o| Value::clone(o)) {
                    self.commit(st, EventType::Deleted, k, o, None);
                }
            }
        }
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            if let Some((g, p)) = resources::from_crd(&obj)
                .ok()
                .and_then(|ts| ts.first().map(ResourceType::storage_key))
            {
                let doomed: Vec<ObjectKey> = st
                    .objects
                    .keys()
                    .filter(|k| k.group == g && k.resource == p)
                    .cloned()
                    .collect();
                for k in doomed {
                    if let Some(o) = st.objects.get(&k).map(|o| Value::clone(o)) {
                        self.commit(st, EventType::Deleted, k, o, None);
                    }
                }
            }
            st.registry.remove_crd(&key.name);
        }
        let gone = self.commit(st, EventType::Deleted, key.clone(), obj, None);
        // Garbage collection: objects owned only by the deleted object go too.
        if let Some(uid) = uid {
            let owned: Vec<ObjectKey> = st
                .objects
                .iter()
                .filter(|(_, o)| {
                    o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            !refs.is_empty()
                                && refs.iter().all(|r| {
                                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                                })
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in owned {
                let owned_rt = st.registry.any_version(&k.group, &k.resource).cloned();
                if let Some(owned_rt) = owned_rt {
                    self.remove_locked(st, &owned_rt, &k);
                }
            }
        }
        Some(gone)
    }

    /// DELETE. Pods honour a grace period (request's `gracePeriodSeconds`, else the pod's
    /// `spec.terminationGracePeriodSeconds`, else 0): they stay, with `deletionTimestamp`,
    /// until it ends. Objects with finalizers stay until the finalizers are removed.
    pub fn delete(
        self: &Arc<Self>,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<DeleteOutcome, ApiError> {
        let mut st = self.lock();
        let key = Self::key(rt, namespace, name);
        let obj = st
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        Self::check_delete_preconditions(rt, name, &obj, opts)?;
        let has_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let is_pod = rt.group.is_empty() && rt.plural == "pods";
        let grace = if is_pod {
            opts.grace_period_seconds
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(0)
                .max(0)
        } else {
            0
        };
        let now = time::now_unix();
        if rt.group.is_empty() && rt.plural == "namespaces" {
            // Like the namespace controller: Terminating first, contents and the namespace
            // itself go shortly after (so deleting a namespace and then its objects works).
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(DeleteOutcome::Terminating(Self::with_version(rt, obj)));
            }
            let mut new = obj.clone();
            meta_mut(&mut new).insert("deletionTimestamp".into(), json!(time::format_rfc3339(now)));
            new["status"] = json!({"phase": "Terminating"});
            let new = self.commit(&mut st, EventType::Modified, key.clone(), new, Some(obj));
            let store = Arc::clone(self);
            let rt = rt.clone();
            tokio::spawn(async move {
                tokio::time::sleep(NAMESPACE_CLEANUP_DELAY).await;
                let mut st = store.lock();
                // metadata.finalizers (e.g. switchyard.io/namespace-network) keep the
                // namespace, not its contents: it goes when the last one is removed.
                let finalized = st
                    .objects
                    .get(&key)
                    .and_then(|o| o.pointer("/metadata/finalizers"))
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if finalized {
                    let doomed: Vec<ObjectKey> = st
                        .objects
                        .keys()
                        .filter(|k| k.namespace == key.name)
                        .cloned()
                        .collect();
                    for k in doomed {
                        if let Some(o) = st.objects.get(&k).map(|o| Value::clone(o)) {
                            store.commit(&mut st, EventType::Deleted, k, o, None);
                        }
                    }
                } else {
                    store.remove_locked(&mut st, &rt, &key);
                }
            });
            return Ok(DeleteOutcome::Terminating(new));
        }
        if has_finalizers || grace > 0 {
            let existing_deadline = obj
                .pointer("/metadata/deletionTimestamp")
                .and_then(Value::as_str)
                .and_then(time::parse_rfc3339);
            let deadline = now + grace;
            if existing_deadline.is_some_and(|d| d <= deadline) {
                return Ok(DeleteOutcome::Terminating(Self::with_version(rt, obj)));
            }
            let mut new = obj.clone();
            {
                let m = meta_mut(&mut new);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(time::format_rfc3339(deadline)),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            let new = self.commit(&mut st, EventType::Modified, key.clone(), new, Some(obj));
            if grace > 0 && !has_finalizers {
                let store = Arc::clone(self);
                let rt = rt.clone();
                let uid = meta(&new, "uid");
                let secs = u64::try_from(grace).unwrap_or(0);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    store.finish_graceful_delete(&rt, &key, uid.as_deref());
                });
            }
            return Ok(DeleteOutcome::Terminating(Self::with_version(rt, new)));
        }
        let gone = self.remove_locked(&mut st, rt, &key).unwrap_or(obj);
        Ok(DeleteOutcome::Deleted(Self::with_version(rt, gone)))
    }

    /// DELETE of an object that needs no timers (not a pod, not a namespace); used by the
    /// in-process controllers, which hold a plain `&Store`.
    pub fn delete_unscheduled(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = Self::key(rt, namespace, name);
        let obj = st
            .objects
            .get(&key)
            .map(|o| Value::clone(o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        Self::check_delete_preconditions(rt, name, &obj, opts)?;
        Ok(self.remove_locked(&mut st, rt, &key).unwrap_or(obj))
    }

    /// `preconditions.uid` and `preconditions.resourceVersion` of a DELETE: a mismatch is
    /// 409 Conflict and nothing is deleted, as in kube-apiserver.
    fn check_delete_preconditions(
        rt: &ResourceType,
        name: &str,
        obj: &Value,
        opts: &DeleteOptions,
    ) -> Result<(), ApiError> {
        let differs = |wanted: &Option<String>, field: &str| {
            wanted
                .as_ref()
                .is_some_and(|w| Some(w) != meta(obj, field).as_ref())
        };
        if differs(&opts.precondition_uid, "uid")
            || differs(&opts.precondition_rv, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        Ok(())
    }

    fn finish_graceful_delete(&self, rt: &ResourceType, key: &ObjectKey, uid: Option<&str>) {
        let mut st = self.lock();
        let Some(obj) = st.objects.get(key) else {
            return;
        };
        if meta(obj, "uid").as_deref() != uid
            || obj.pointer("/metadata/deletionTimestamp").is_none()
        {
            return;
        }
        let deadline = obj
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(time::parse_rfc3339)
            .unwrap_or(0);
        if deadline > time::now_unix() + 1 {
            // A later delete shortened nothing but a newer timer is responsible.
            return;
        }
        let has_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            self.remove_locked(&mut st, rt, key);
        }
    }
}

/// How long a deleted namespace stays Terminating before its contents are removed.
const NAMESPACE_CLEANUP_DELAY: Duration = Duration::from_millis(100);

fn svc_ref(old: Option<&Value>) -> &Value {
    static NULL: Value = Value::Null;
    old.unwrap_or(&NULL)
}

/// kube-apiserver's default `--service-node-port-range`: node ports and health check node
/// ports come from here.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u64> = 30000..=32767;

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// NodePort and LoadBalancer Services, and ClusterIP Services with external IPs: the ones
/// `externalTrafficPolicy` applies to.
fn is_externally_accessible(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" | "LoadBalancer" => true,
        "ClusterIP" => svc
            .pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .is_some_and(|ips| !ips.is_empty()),
        _ => false,
    }
}

fn needs_health_check_node_port(svc: &Value) -> bool {
    service_type(svc) == "LoadBalancer"
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

fn node_ports_of(svc: &Value) -> Vec<Option<&Value>> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| ports.iter().map(|p| p.get("nodePort")).collect())
        .unwrap_or_default()
}

/// kube-apiserver's `dropTypeDependentFields` on an update: a field the new type no longer
/// uses is cleared when the request left it as it was (the user did not ask for it), so
/// whatever it held (cluster IP, node ports, health check node port) is released.
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let same = |new: &Value, ptr: &str| new.pointer(ptr) == old.pointer(ptr);
    let remove = |new: &mut Value, field: &str| {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove(field);
        }
    };
    let (old_type, new_type) = (service_type(old), service_type(new).to_string());
    if old_type != "ExternalName" && new_type == "ExternalName" {
        if new.pointer("/spec/clusterIP").is_none() || same(new, "/spec/clusterIP") {
            remove(new, "clusterIP");
            remove(new, "clusterIPs");
        }
        for field in ["ipFamilies", "ipFamilyPolicy"] {
            if same(new, &format!("/spec/{field}")) {
                remove(new, field);
            }
        }
    }
    let node_port_type = |t: &str| t == "NodePort" || t == "LoadBalancer";
    if node_port_type(old_type)
        && !node_port_type(&new_type)
        && node_ports_of(new) == node_ports_of(old)
        && let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut)
    {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.remove("nodePort");
        }
    }
    if needs_health_check_node_port(old)
        && !needs_health_check_node_port(new)
        && same(new, "/spec/healthCheckNodePort")
    {
        remove(new, "healthCheckNodePort");
    }
    if old_type == "LoadBalancer" && new_type != "LoadBalancer" {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(new, &format!("/spec/{field}")) {
                remove(new, field);
            }
        }
        // The load balancer is gone with the type (kube-apiserver does not wait for it).
        if new.get("status").is_some_and(Value::is_object) {
            new["status"]["loadBalancer"] = json!({});
        }
    }
    if is_externally_accessible(old)
        && !is_externally_accessible(new)
        && same(new, "/spec/externalTrafficPolicy")
    {
        remove(new, "externalTrafficPolicy");
    }
}

/// A pod inside its grace period stays until the period ends even without finalizers.
fn is_graceful_pod(rt: &ResourceType, obj: &Value) -> bool {
    rt.group.is_empty()
        && rt.plural == "pods"
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(service_cidr: Option<&str>) -> Arc<Store> {
        Store::new(StoreOptions {
            history_limit: 100,
            service_cidr: service_cidr.map(|c| c.parse().expect("cidr")),
        })
    }

    fn rt(s: &Store, plural: &str) -> ResourceType {
        s.resource_type("", "v1", plural).expect("built in")
    }

    fn names(items: &[Arc<Value>]) -> Vec<String> {
        items
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    meta(o, "namespace").unwrap_or_default(),
                    meta(o, "name").unwrap_or_default()
                )
            })
            .collect()
    }

    /// Pages through a list; `between` runs after every page.
    fn all_pages(
        s: &Store,
        rt: &ResourceType,
        ns: Option<&str>,
        q: ListQuery,
        mut between: impl FnMut(usize),
    ) -> (Vec<String>, Vec<usize>) {
        let mut q = q;
        let mut seen = Vec::new();
        let mut remaining_counts = Vec::new();
        for page in 0.. {
            assert!(page < 100, "list does not end");
            let list = s.list(rt, ns, &q).expect("list");
            seen.extend(names(&list.items));
            remaining_counts.push(list.remaining);
            between(page);
            match list.continue_token {
                Some(c) => q.continue_token = Some(c),
                None => break,
            }
        }
        (seen, remaining_counts)
    }

    fn configmaps(s: &Store) -> (ResourceType, Vec<String>) {
        let ns_rt = rt(s, "namespaces");
        let cm = rt(s, "configmaps");
        // "a-x" sorts before "a/" as text but after "a" as a namespace.
        for ns in ["a", "a-x", "b"] {
            s.create(&ns_rt, None, json!({"metadata": {"name": ns}}))
                .expect("namespace");
        }
        let mut expected = Vec::new();
        for ns in ["a", "a-x", "b"] {
            for i in 0..5 {
                let name = format!("cm{i}");
                let tier = if i % 2 == 0 { "even" } else { "odd" };
                s.create(
                    &cm,
                    Some(ns),
                    json!({"metadata": {"name": name, "labels": {"tier": tier}}}),
                )
                .expect("configmap");
                expected.push(format!("{ns}/{name}"));
            }
        }
        (cm, expected)
    }

    #[test]
    fn paged_list_returns_every_object_once_in_order_with_exact_remaining_counts() {
        let s = store(None);
        let (cm, expected) = configmaps(&s);
        let q = ListQuery {
            limit: 4,
            ..ListQuery::default()
        };
        let (seen, remaining) = all_pages(&s, &cm, None, q, |_| {});
        assert_eq!(seen, expected);
        assert_eq!(remaining, vec![11, 7, 3, 0]);

        let q = ListQuery {
            limit: 2,
            labels: LabelSelector::parse("tier=odd").expect("selector"),
            ..ListQuery::default()
        };
        let (seen, remaining) = all_pages(&s, &cm, Some("a-x"), q, |_| {});
        assert_eq!(seen, vec!["a-x/cm1", "a-x/cm3"]);
        assert_eq!(remaining, vec![0]);

        let q = ListQuery {
            limit: 2,
            labels: LabelSelector::parse("tier=even").expect("selector"),
            ..ListQuery::default()
        };
        let (seen, remaining) = all_pages(&s, &cm, None, q, |_| {});
        assert_eq!(seen.len(), 9);
        assert_eq!(remaining, vec![7, 5, 3, 1, 0]);
    }

    #[test]
    fn a_list_is_the_state_at_its_resource_version_whatever_is_written_after_it() {
        let s = store(None);
        let (cm, _) = configmaps(&s);
        let list = s.list(&cm, Some("a"), &ListQuery::default()).expect("list");
        let before: Vec<Value> = list.items.iter().map(|o| Value::clone(o)).collect();
        s.update(
            &cm,
            "a",
            "cm0",
            json!({"metadata": {"name": "cm0", "labels": {"tier": "changed"}}, "data": {"k": "v"}}),
            false,
        )
        .expect("update");
        s.delete_unscheduled(&cm, "a", "cm1", &DeleteOptions::default())
            .expect("delete");
        // The items the list holds are the stored objects as they were (a write
        // stores a new object instead of changing the shared one).
        let after: Vec<Value> = list.items.iter().map(|o| Value::clone(o)).collect();
        assert_eq!(before, after);
        assert_eq!(after.len(), 5);
        assert_eq!(after[0]["metadata"]["labels"]["tier"], "even");
        assert!(after[0].get("data").is_none());
        let now = s.list(&cm, Some("a"), &ListQuery::default()).expect("list");
        assert_eq!(now.items.len(), 4);
        assert_eq!(now.items[0]["metadata"]["labels"]["tier"], "changed");
        assert!(now.resource_version > list.resource_version);
    }

    #[test]
    fn delete_unscheduled_honours_the_preconditions() {
        let s = store(None);
        let ns_rt = rt(&s, "namespaces");
        let cm = rt(&s, "configmaps");
        s.create(&ns_rt, None, json!({"metadata": {"name": "a"}}))
            .expect("namespace");
        let created = s
            .create(&cm, Some("a"), json!({"metadata": {"name": "c"}}))
            .expect("configmap");
        let stale_rv = meta(&created, "resourceVersion").expect("resourceVersion");
        let uid = meta(&created, "uid").expect("uid");
        let updated = s
            .update(
                &cm,
                "a",
                "c",
                json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
                false,
            )
            .expect("update");
        let current_rv = meta(&updated, "resourceVersion").expect("resourceVersion");
        assert_ne!(stale_rv, current_rv);

        for opts in [
            DeleteOptions {
                precondition_rv: Some(stale_rv),
                ..DeleteOptions::default()
            },
            DeleteOptions {
                precondition_uid: Some("not-the-uid".into()),
                ..DeleteOptions::default()
            },
        ] {
            let err = s
                .delete_unscheduled(&cm, "a", "c", &opts)
                .expect_err("stale precondition");
            assert_eq!((err.code, err.reason), (409, "Conflict"), "{opts:?}");
            let still = s.get(&cm, "a", "c").expect("still there");
            assert_eq!(
                meta(&still, "resourceVersion").as_ref(),
                Some(&current_rv),
                "{opts:?}"
            );
        }

        let opts = DeleteOptions {
            precondition_uid: Some(uid),
            precondition_rv: Some(current_rv),
            ..DeleteOptions::default()
        };
        s.delete_unscheduled(&cm, "a", "c", &opts)
            .expect("current preconditions");
        assert_eq!(s.get(&cm, "a", "c").expect_err("deleted").code, 404);
    }

    #[test]
    fn paged_list_sees_writes_between_pages() {
        let s = store(None);
        let (cm, expected) = configmaps(&s);
        let q = ListQuery {
            limit: 4,
            ..ListQuery::default()
        };
        let (seen, remaining) = all_pages(&s, &cm, None, q, |page| {
            if page == 0 {
                s.create(&cm, Some("b"), json!({"metadata": {"name": "late"}}))
                    .expect("configmap");
                s.delete_unscheduled(&cm, "a", "cm0", &DeleteOptions::default())
                    .expect("delete of an already listed one");
                s.delete_unscheduled(&cm, "a-x", "cm4", &DeleteOptions::default())
                    .expect("delete of a not yet listed one");
            }
        });
        let mut want: Vec<String> = expected.into_iter().filter(|n| n != "a-x/cm4").collect();
        want.push("b/late".into());
        want.sort_by(|x, y| x.split_once('/').cmp(&y.split_once('/')));
        assert_eq!(seen, want);
        // 11 after the first page, then one more and one fewer ahead of it.
        assert_eq!(remaining, vec![11, 7, 3, 0]);
    }

    #[test]
    fn a_malformed_continue_token_is_a_bad_request() {
        let s = store(None);
        let (cm, _) = configmaps(&s);
        for token in ["garbage", "1:2", "x:1:a/cm1", "1:x:a/cm1", "1:2:nokey"] {
            let q = ListQuery {
                limit: 2,
                continue_token: Some(token.into()),
                ..ListQuery::default()
            };
            let err = s.list(&cm, None, &q).expect_err(token);
            assert_eq!(err.code, 400, "{token}");
        }
    }

    fn cluster_ip(v: &Value) -> String {
        v.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .expect("clusterIP")
            .to_string()
    }

    #[test]
    fn cluster_ips_are_the_lowest_free_and_unique_and_come_back_when_freed() {
        let s = store(Some("10.96.0.0/29"));
        let svc = rt(&s, "services");
        let mk = |name: &str, extra: Value| {
            let mut body = json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    body["spec"][k] = v.clone();
                }
            }
            s.create(&svc, Some("default"), body)
        };
        mk("fixed", json!({"clusterIP": "10.96.0.2"})).expect("requested IP");
        let ips: Vec<String> = ["s1", "s2", "s3"]
            .iter()
            .map(|n| cluster_ip(&mk(n, json!({})).expect("service")))
            .collect();
        assert_eq!(ips, ["10.96.0.1", "10.96.0.3", "10.96.0.4"]);
        let taken = mk("dup", json!({"clusterIP": "10.96.0.3"})).expect_err("taken IP");
        assert_eq!(taken.code, 422);
        assert!(
            taken.to_status().to_string().contains("already allocated"),
            "{}",
            taken.to_status()
        );
        // Updating a Service keeps its own IP (it is not "taken" by itself).
        let mut s2 = s.get(&svc, "default", "s2").expect("s2");
        s2["metadata"]["labels"] = json!({"x": "y"});
        assert_eq!(
            cluster_ip(&s.update(&svc, "default", "s2", s2, false).expect("update")),
            "10.96.0.3"
        );
        s.delete_unscheduled(&svc, "default", "s1", &DeleteOptions::default())
            .expect("delete");
        assert_eq!(cluster_ip(&mk("s4", json!({})).expect("s4")), "10.96.0.1");
        assert_eq!(cluster_ip(&mk("s5", json!({})).expect("s5")), "10.96.0.5");
        assert_eq!(cluster_ip(&mk("s6", json!({})).expect("s6")), "10.96.0.6");
        let full = mk("s7", json!({})).expect_err("range full");
        assert!(
            full.to_status().to_string().contains("range is full"),
            "{}",
            full.to_status()
        );
        // A freed requested IP is reusable, and reused by the allocator.
        s.delete_unscheduled(&svc, "default", "fixed", &DeleteOptions::default())
            .expect("delete");
        assert_eq!(cluster_ip(&mk("s8", json!({})).expect("s8")), "10.96.0.2");
    }

    #[test]
    fn node_ports_are_unique_across_services_and_freed_on_delete() {
        let s = store(Some("10.96.0.0/24"));
        let svc = rt(&s, "services");
        let mk = |name: &str, ports: Value| {
            s.create(
                &svc,
                Some("default"),
                json!({"metadata": {"name": name}, "spec": {"type": "NodePort", "ports": ports}}),
            )
            .expect("service")
        };
        let node_ports = |v: &Value| -> Vec<u64> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .expect("ports")
                .iter()
                .map(|p| p["nodePort"].as_u64().expect("nodePort"))
                .collect()
        };
        let a = mk("a", json!([{"port": 80}, {"port": 443}]));
        assert_eq!(node_ports(&a), [30000, 30001]);
        let b = mk("b", json!([{"port": 80, "nodePort": 30003}, {"port": 81}]));
        assert_eq!(node_ports(&b), [30003, 30002]);
        s.delete_unscheduled(&svc, "default", "a", &DeleteOptions::default())
            .expect("delete");
        let c = mk("c", json!([{"port": 80}, {"port": 81}, {"port": 82}]));
        assert_eq!(node_ports(&c), [30000, 30001, 30004]);
        let d = mk("d", json!([{"port": 80}]));
        assert_eq!(node_ports(&d), [30005]);
    }

    fn create_svc(s: &Store, name: &str, spec: Value) -> Result<Value, ApiError> {
        s.create(
            &rt(s, "services"),
            Some("default"),
            json!({"metadata": {"name": name}, "spec": spec}),
        )
    }

    /// A merge patch of a Service's main resource.
    fn patch_svc(s: &Store, name: &str, patch: Value) -> Result<Value, ApiError> {
        s.patch(
            &rt(s, "services"),
            "default",
            name,
            "application/merge-patch+json",
            patch.to_string().as_bytes(),
            false,
        )
    }

    fn spec_at<'a>(v: &'a Value, field: &str) -> Option<&'a Value> {
        v.pointer(&format!("/spec/{field}"))
    }

    fn node_ports(v: &Value) -> Vec<Option<u64>> {
        v.pointer("/spec/ports")
            .and_then(Value::as_array)
            .expect("ports")
            .iter()
            .map(|p| p.get("nodePort").and_then(Value::as_u64))
            .collect()
    }

    #[test]
    fn external_traffic_policy_is_defaulted_where_it_applies_and_refused_elsewhere() {
        let s = store(Some("10.96.0.0/24"));
        let port = json!([{"port": 80}]);
        for (name, ty) in [("np", "NodePort"), ("lb", "LoadBalancer")] {
            let v = create_svc(&s, name, json!({"type": ty, "ports": port})).expect(name);
            assert_eq!(
                spec_at(&v, "externalTrafficPolicy"),
                Some(&json!("Cluster"))
            );
        }
        let v = create_svc(&s, "cip", json!({"ports": port})).expect("cip");
        assert_eq!(spec_at(&v, "externalTrafficPolicy"), None);
        let v = create_svc(
            &s,
            "ext",
            json!({"ports": port, "externalIPs": ["192.0.2.7"]}),
        )
        .expect("ClusterIP with external IPs");
        assert_eq!(
            spec_at(&v, "externalTrafficPolicy"),
            Some(&json!("Cluster"))
        );
        let v = create_svc(
            &s,
            "local",
            json!({"type": "NodePort", "ports": port, "externalTrafficPolicy": "Local"}),
        )
        .expect("local");
        assert_eq!(spec_at(&v, "externalTrafficPolicy"), Some(&json!("Local")));

        let err = create_svc(
            &s,
            "bad1",
            json!({"ports": port, "externalTrafficPolicy": "Local"}),
        )
        .expect_err("ClusterIP with a policy");
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .contains("may only be set for externally-accessible services"),
            "{err}"
        );
        let err = create_svc(
            &s,
            "bad2",
            json!({"type": "NodePort", "ports": port, "externalTrafficPolicy": "Nearest"}),
        )
        .expect_err("unknown policy");
        assert!(err.message.contains("Unsupported value"), "{err}");

        // Leaving the external types clears the (unchanged) policy; removing the external IPs too.
        let v = patch_svc(&s, "np", json!({"spec": {"type": "ClusterIP"}})).expect("to ClusterIP");
        assert_eq!(spec_at(&v, "externalTrafficPolicy"), None);
        let v = patch_svc(&s, "ext", json!({"spec": {"externalIPs": null}})).expect("no IPs");
        assert_eq!(spec_at(&v, "externalTrafficPolicy"), None);
        let v = patch_svc(
            &s,
            "lb",
            json!({"spec": {"type": "ExternalName", "externalName": "example.org"}}),
        )
        .expect("to ExternalName");
        assert_eq!(spec_at(&v, "externalTrafficPolicy"), None);
        assert_eq!(spec_at(&v, "clusterIP"), None, "{v}");
        assert_eq!(node_ports(&v), [None]);
    }

    #[test]
    fn health_check_node_port_is_allocated_kept_checked_and_released() {
        let s = store(Some("10.96.0.0/24"));
        let lb = |ports: Value, extra: Value| {
            let mut spec =
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": ports});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    spec[k] = v.clone();
                }
            }
            spec
        };
        let a = create_svc(&s, "a", lb(json!([{"port": 80}]), json!({}))).expect("a");
        assert_eq!(node_ports(&a), [Some(30000)]);
        assert_eq!(spec_at(&a, "healthCheckNodePort"), Some(&json!(30001)));
        assert_eq!(
            spec_at(&a, "allocateLoadBalancerNodePorts"),
            Some(&json!(true))
        );

        // A requested one is kept when free...
        let b = create_svc(
            &s,
            "b",
            lb(json!([{"port": 80}]), json!({"healthCheckNodePort": 30500})),
        )
        .expect("b");
        assert_eq!(spec_at(&b, "healthCheckNodePort"), Some(&json!(30500)));
        assert_eq!(node_ports(&b), [Some(30002)]);
        // ...and refused when another Service holds it as a node port or health check port,
        // or when out of range.
        for (name, hc, why) in [
            ("c1", 30000, "already allocated"),
            ("c2", 30001, "already allocated"),
            ("c3", 80, "not in the valid range"),
        ] {
            let err = create_svc(
                &s,
                name,
                lb(json!([{"port": 80}]), json!({"healthCheckNodePort": hc})),
            )
            .expect_err(name);
            assert_eq!(err.code, 422, "{name}");
            assert!(
                err.message.contains("spec.healthCheckNodePort") && err.message.contains(why),
                "{name}: {err}"
            );
        }
        // Node ports are checked against health check ports too.
        let err = create_svc(
            &s,
            "d",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30500}]}),
        )
        .expect_err("node port held as a health check port");
        assert!(err.message.contains("already allocated"), "{err}");
        // Only for LoadBalancer + Local.
        let err = create_svc(
            &s,
            "e",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"port": 80}], "healthCheckNodePort": 30600}),
        )
        .expect_err("NodePort with a health check port");
        assert!(err.message.contains("may only be set when"), "{err}");

        // An update that leaves it out keeps it.
        let mut put = s.get(&rt(&s, "services"), "default", "a").expect("a");
        put["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("healthCheckNodePort");
        let a = s
            .update(&rt(&s, "services"), "default", "a", put, false)
            .expect("put");
        assert_eq!(spec_at(&a, "healthCheckNodePort"), Some(&json!(30001)));

        // Policy Cluster releases it; Local again allocates the lowest free one.
        let a = patch_svc(
            &s,
            "a",
            json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
        )
        .expect("to Cluster");
        assert_eq!(spec_at(&a, "healthCheckNodePort"), None);
        let f = create_svc(
            &s,
            "f",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        )
        .expect("f");
        assert_eq!(
            node_ports(&f),
            [Some(30001)],
            "the released port is free again"
        );
        let a = patch_svc(&s, "a", json!({"spec": {"externalTrafficPolicy": "Local"}}))
            .expect("to Local");
        assert_eq!(spec_at(&a, "healthCheckNodePort"), Some(&json!(30003)));
        // A type change releases it too.
        let b = patch_svc(&s, "b", json!({"spec": {"type": "NodePort"}})).expect("to NodePort");
        assert_eq!(spec_at(&b, "healthCheckNodePort"), None);
        assert_eq!(spec_at(&b, "externalTrafficPolicy"), Some(&json!("Local")));
        create_svc(
            &s,
            "g",
            lb(json!([{"port": 80}]), json!({"healthCheckNodePort": 30500})),
        )
        .expect("30500 is free again");
        // Deleting the Service frees it.
        s.delete_unscheduled(
            &rt(&s, "services"),
            "default",
            "g",
            &DeleteOptions::default(),
        )
        .expect("delete");
        create_svc(
            &s,
            "h",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30500}]}),
        )
        .expect("30500 is free after the delete");
    }

    #[test]
    fn allocate_load_balancer_node_ports_false_allocates_none() {
        let s = store(Some("10.96.0.0/24"));
        let v = create_svc(
            &s,
            "lb",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}, {"port": 81, "nodePort": 30100}]}),
        )
        .expect("lb");
        assert_eq!(
            node_ports(&v),
            [None, Some(30100)],
            "a requested one is still honoured"
        );
        // Turning allocation on allocates the missing one.
        let v = patch_svc(
            &s,
            "lb",
            json!({"spec": {"allocateLoadBalancerNodePorts": true}}),
        )
        .expect("allocate");
        assert_eq!(node_ports(&v), [Some(30000), Some(30100)]);
        let err = create_svc(
            &s,
            "np",
            json!({"type": "NodePort", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
        )
        .expect_err("not a LoadBalancer");
        assert!(
            err.message.contains("allocateLoadBalancerNodePorts"),
            "{err}"
        );
        // Leaving the LoadBalancer type drops the (unchanged) field.
        let v = patch_svc(&s, "lb", json!({"spec": {"type": "NodePort"}})).expect("to NodePort");
        assert_eq!(spec_at(&v, "allocateLoadBalancerNodePorts"), None);
        assert_eq!(node_ports(&v), [Some(30000), Some(30100)]);
    }

    #[test]
    fn node_ports_are_released_on_type_change_to_cluster_ip_and_allocated_back() {
        let s = store(Some("10.96.0.0/24"));
        let v = create_svc(
            &s,
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}),
        )
        .expect("a");
        assert_eq!(node_ports(&v), [Some(30000), Some(30001)]);
        let v = patch_svc(&s, "a", json!({"spec": {"type": "ClusterIP"}})).expect("to ClusterIP");
        assert_eq!(node_ports(&v), [None, None], "{v}");
        let b = create_svc(
            &s,
            "b",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        )
        .expect("b");
        assert_eq!(node_ports(&b), [Some(30000)], "released");
        let v = patch_svc(&s, "a", json!({"spec": {"type": "NodePort"}})).expect("to NodePort");
        assert_eq!(node_ports(&v), [Some(30001), Some(30002)]);
        // A ClusterIP Service may not ask for node ports; a requested one is checked.
        let err = create_svc(&s, "c", json!({"ports": [{"port": 80, "nodePort": 30400}]}))
            .expect_err("ClusterIP with a node port");
        assert!(err.message.contains("Forbidden"), "{err}");
        let err = create_svc(
            &s,
            "d",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}),
        )
        .expect_err("taken");
        assert!(err.message.contains("already allocated"), "{err}");
        // A requested port is not handed out to an earlier port of the same request.
        let e = create_svc(
            &s,
            "e",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30003}]}),
        )
        .expect("e");
        assert_eq!(node_ports(&e), [Some(30004), Some(30003)]);
    }

    #[test]
    fn load_balancer_status_is_written_through_status_only() {
        let s = store(Some("10.96.0.0/24"));
        let svc = rt(&s, "services");
        let ingress = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
        let mut body = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        body["status"] = ingress.clone();
        let v = s.create(&svc, Some("default"), body).expect("create");
        assert_eq!(
            v["status"],
            json!({"loadBalancer": {}}),
            "create ignores status"
        );
        let mut put = v.clone();
        put["status"] = ingress.clone();
        let v = s.update(&svc, "default", "lb", put, false).expect("put");
        assert_eq!(
            v["status"],
            json!({"loadBalancer": {}}),
            "the main resource ignores status"
        );
        let v = patch_svc(&s, "lb", json!({"status": ingress})).expect("patch");
        assert_eq!(v["status"], json!({"loadBalancer": {}}));
        let v = s
            .patch(
                &svc,
                "default",
                "lb",
                "application/merge-patch+json",
                json!({"status": ingress}).to_string().as_bytes(),
                true,
            )
            .expect("patch /status");
        assert_eq!(v["status"], ingress);
        // Spec writes keep it; leaving the LoadBalancer type clears it.
        let v = patch_svc(&s, "lb", json!({"metadata": {"labels": {"a": "b"}}})).expect("label");
        assert_eq!(v["status"], ingress);
        let v = patch_svc(&s, "lb", json!({"spec": {"type": "NodePort"}})).expect("to NodePort");
        assert_eq!(v["status"], json!({"loadBalancer": {}}));
    }
}
