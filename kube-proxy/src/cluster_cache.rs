//! The Services and EndpointSlices the proxy has seen, indexed by Service,
//! and which Services changed since the last recompute. Fed by watch events
//! (or anything else); pure and synchronous.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::objects::{SharedNames, Slice, SlimService};
use crate::service_model::{ServiceKey, ServicePortName, ServicePortState, service_port_states_of};

/// An EndpointSlice by namespace and slice name (sharing the cached
/// slice's strings).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceKey {
    namespace: Arc<str>,
    name: Arc<str>,
}

/// What identifies an EndpointSlice: its namespace and name.
pub trait SliceName {
    fn slice_key(&self) -> SliceKey;
}

impl SliceName for EndpointSlice {
    fn slice_key(&self) -> SliceKey {
        SliceKey {
            namespace: self.metadata.namespace.as_deref().unwrap_or("").into(),
            name: self.metadata.name.as_deref().unwrap_or("").into(),
        }
    }
}

impl SliceName for Slice {
    fn slice_key(&self) -> SliceKey {
        SliceKey {
            namespace: Arc::clone(&self.namespace),
            name: Arc::clone(&self.name),
        }
    }
}

impl SliceName for crate::objects::WatchedSlice {
    fn slice_key(&self) -> SliceKey {
        self.slice.slice_key()
    }
}

impl<T: SliceName + ?Sized> SliceName for Arc<T> {
    fn slice_key(&self) -> SliceKey {
        T::slice_key(self)
    }
}

/// Known Services and EndpointSlices plus the set of Services whose
/// desired state may have changed ("dirty"). Objects are kept slim: a
/// Service as a [`SlimService`] (what the model reads), a
/// slice as a [`Slice`]. Strings are shared: namespaces and node names
/// have one copy each ([`SharedNames`]), and a Service's key, its slices'
/// Service names, the dirty set and the desired state's port names point
/// at the same namespace and name.
#[derive(Debug, Default, Clone)]
pub struct ClusterCache {
    services: HashMap<ServiceKey, Arc<SlimService>>,
    /// Each slice by its key; the Service it belongs to is the one its
    /// label names ([`Slice::service`]), fixed while it is stored.
    slices: HashMap<SliceKey, Arc<Slice>>,
    /// Slices per Service, ordered by slice name.
    slices_by_service: HashMap<ServiceKey, Vec<Arc<Slice>>>,
    dirty: BTreeSet<ServiceKey>,
    names: SharedNames,
}

impl ClusterCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key of `key`'s Service with the strings the cache already
    /// holds for it (its Service's or its slices' key), else `key` with a
    /// shared namespace.
    fn shared_key(&mut self, mut key: ServiceKey) -> ServiceKey {
        if let Some((known, _)) = self.services.get_key_value(&key) {
            return known.clone();
        }
        if let Some((known, _)) = self.slices_by_service.get_key_value(&key) {
            return known.clone();
        }
        self.names.share(&mut key.namespace);
        key
    }

    /// A Service was added or modified (a full `Service` is slimmed first).
    pub fn apply_service(&mut self, service: impl Into<SlimService>) {
        let mut service: SlimService = service.into();
        let unchanged = self.services.get(&service.key()).is_some_and(|known| {
            match (&known.resource_version, &service.resource_version) {
                (Some(known), Some(new)) => known == new,
                _ => **known == service,
            }
        });
        if !unchanged {
            let key = self.shared_key(service.key());
            service.namespace = Arc::clone(&key.namespace);
            service.name = Arc::clone(&key.name);
            self.dirty.insert(key.clone());
            self.services.insert(key, Arc::new(service));
        }
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, service: &Service) {
        self.delete_service_key(&ServiceKey::of_service(service));
    }

    /// The Service `key` names was deleted.
    pub fn delete_service_key(&mut self, key: &ServiceKey) {
        if let Some((key, _)) = self.services.remove_entry(key) {
            self.dirty.insert(key);
        }
    }

    /// An EndpointSlice was added or modified (possibly relabelled to
    /// another Service: both are marked dirty).
    pub fn apply_slice(&mut self, slice: impl Into<Slice>) {
        let mut slice: Slice = slice.into();
        let key = slice.slice_key();
        if let Some(known) = self.slices.get(&key)
            && same_slice(known, &slice)
        {
            return;
        }
        self.remove_slice(&key);
        self.names.share_slice(&mut slice);
        let service = slice.service().map(|service| self.shared_key(service));
        if let Some(service) = &service {
            slice.namespace = Arc::clone(&service.namespace);
            slice.service_name = Some(Arc::clone(&service.name));
        }
        let slice = Arc::new(slice);
        if let Some(service) = service {
            let by_name = self.slices_by_service.entry(service.clone()).or_default();
            let at = by_name.partition_point(|known| known.name < slice.name);
            by_name.insert(at, Arc::clone(&slice));
            self.dirty.insert(service);
        }
        self.slices.insert(slice.slice_key(), slice);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &(impl SliceName + ?Sized)) {
        self.remove_slice(&slice.slice_key());
    }

    fn remove_slice(&mut self, key: &SliceKey) {
        let Some(slice) = self.slices.remove(key) else {
            return;
        };
        if let Some(service) = slice.service() {
            if let Some(by_name) = self.slices_by_service.get_mut(&service) {
                by_name.retain(|known| known.name != slice.name);
                if by_name.is_empty() {
                    self.slices_by_service.remove(&service);
                }
            }
            self.dirty.insert(service);
        }
    }

    /// A full list of Services (after a watch restart): replaces all known
    /// Services; only those that differ are marked dirty.
    pub fn replace_services<S: Into<SlimService>>(
        &mut self,
        services: impl IntoIterator<Item = S>,
    ) {
        let mut listed: BTreeSet<ServiceKey> = BTreeSet::new();
        for service in services {
            let service: SlimService = service.into();
            listed.insert(service.key());
            self.apply_service(service);
        }
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.services.remove(&key);
            self.dirty.insert(key);
        }
    }

    /// A full list of EndpointSlices (after a watch restart): replaces all
    /// known slices; only Services whose slices differ are marked dirty.
    pub fn replace_slices<S: Into<Slice>>(&mut self, slices: impl IntoIterator<Item = S>) {
        let mut listed: BTreeSet<SliceKey> = BTreeSet::new();
        for slice in slices {
            let slice: Slice = slice.into();
            listed.insert(slice.slice_key());
            self.apply_slice(slice);
        }
        let gone: Vec<SliceKey> = self
            .slices
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.remove_slice(&key);
        }
        self.names.prune();
    }

    /// Some Service may have a new desired state.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The dirty Services, ascending; the set is cleared.
    pub fn take_dirty(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Marks Services dirty again (e.g. after a failed recompute).
    pub fn mark_dirty(&mut self, services: impl IntoIterator<Item = ServiceKey>) {
        self.dirty.extend(services);
    }

    /// Number of known Services and EndpointSlices.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// The desired state of one Service's ports from what is cached
    /// (empty when the Service is unknown or ignored).
    pub fn service_port_states(
        &self,
        service: &ServiceKey,
        node_name: &str,
    ) -> Vec<(ServicePortName, ServicePortState)> {
        let Some((key, object)) = self.services.get_key_value(service) else {
            return Vec::new();
        };
        let slices: Vec<&Slice> = self
            .slices_by_service
            .get(service)
            .map(|by_name| by_name.iter().map(Arc::as_ref).collect())
            .unwrap_or_default();
        service_port_states_of(key, object, &slices, node_name)
    }
}

/// The same version of a slice: equal resourceVersions when both have
/// one, else equal contents.
fn same_slice(known: &Slice, new: &Slice) -> bool {
    match (&known.resource_version, &new.resource_version) {
        (Some(known), Some(new)) => known == new,
        _ => known == new,
    }
}
