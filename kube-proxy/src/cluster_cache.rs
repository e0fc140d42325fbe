//! The Services and EndpointSlices the proxy has seen, indexed by Service,
//! and which Services changed since the last recompute. Fed by watch events
//! (or anything else); pure and synchronous.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::objects::{NodeNames, Slice, slim_service};
use crate::service_model::{ServiceKey, ServicePortName, ServicePortState, service_port_states};

/// An EndpointSlice by namespace and slice name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceKey {
    namespace: String,
    name: String,
}

/// What identifies an EndpointSlice: its namespace and name.
pub trait SliceName {
    fn slice_key(&self) -> SliceKey;
}

impl SliceName for EndpointSlice {
    fn slice_key(&self) -> SliceKey {
        SliceKey {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            name: self.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl SliceName for Slice {
    fn slice_key(&self) -> SliceKey {
        SliceKey {
            namespace: self.namespace().to_owned(),
            name: self.name().to_owned(),
        }
    }
}

impl<T: SliceName + ?Sized> SliceName for Arc<T> {
    fn slice_key(&self) -> SliceKey {
        T::slice_key(self)
    }
}

#[derive(Debug, Clone)]
struct SliceEntry {
    /// The Service its label named when stored (`None`: no label).
    service: Option<ServiceKey>,
    slice: Arc<Slice>,
}

/// Known Services and EndpointSlices plus the set of Services whose
/// desired state may have changed ("dirty"). Objects are kept slim: a
/// Service without what the model never reads ([`slim_service`]), a
/// slice as a [`Slice`] whose endpoints share their node names.
#[derive(Debug, Default, Clone)]
pub struct ClusterCache {
    services: HashMap<ServiceKey, Arc<Service>>,
    slices: HashMap<SliceKey, SliceEntry>,
    /// Slices per Service, ordered by slice name.
    slices_by_service: HashMap<ServiceKey, BTreeMap<String, Arc<Slice>>>,
    dirty: BTreeSet<ServiceKey>,
    node_names: NodeNames,
}

impl ClusterCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Service was added or modified.
    pub fn apply_service(&mut self, service: Arc<Service>) {
        let service = Arc::new(slim_service(Arc::unwrap_or_clone(service)));
        let key = ServiceKey::of_service(&service);
        let unchanged = self
            .services
            .get(&key)
            .is_some_and(|known| same_object(&known.metadata, &service.metadata, known, &service));
        if !unchanged {
            self.dirty.insert(key.clone());
            self.services.insert(key, service);
        }
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, service: &Service) {
        let key = ServiceKey::of_service(service);
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// An EndpointSlice was added or modified (possibly relabelled to
    /// another Service: both are marked dirty).
    pub fn apply_slice(&mut self, slice: impl Into<Slice>) {
        let mut slice: Slice = slice.into();
        let key = slice.slice_key();
        if let Some(known) = self.slices.get(&key)
            && same_object(
                &known.slice.metadata,
                &slice.metadata,
                &*known.slice,
                &slice,
            )
        {
            return;
        }
        self.remove_slice(&key);
        self.node_names.share(&mut slice);
        let slice = Arc::new(slice);
        let service = slice.service();
        if let Some(service) = &service {
            self.slices_by_service
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone(), Arc::clone(&slice));
            self.dirty.insert(service.clone());
        }
        self.slices.insert(key, SliceEntry { service, slice });
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &(impl SliceName + ?Sized)) {
        self.remove_slice(&slice.slice_key());
    }

    fn remove_slice(&mut self, key: &SliceKey) {
        let Some(entry) = self.slices.remove(key) else {
            return;
        };
        if let Some(service) = entry.service {
            if let Some(by_name) = self.slices_by_service.get_mut(&service) {
                by_name.remove(&key.name);
                if by_name.is_empty() {
                    self.slices_by_service.remove(&service);
                }
            }
            self.dirty.insert(service);
        }
    }

    /// A full list of Services (after a watch restart): replaces all known
    /// Services; only those that differ are marked dirty.
    pub fn replace_services(&mut self, services: impl IntoIterator<Item = Arc<Service>>) {
        let mut listed: BTreeSet<ServiceKey> = BTreeSet::new();
        for service in services {
            listed.insert(ServiceKey::of_service(&service));
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
        self.node_names.prune();
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
        let Some(object) = self.services.get(service) else {
            return Vec::new();
        };
        let slices: Vec<&Slice> = self
            .slices_by_service
            .get(service)
            .map(|by_name| by_name.values().map(Arc::as_ref).collect())
            .unwrap_or_default();
        service_port_states(object, &slices, node_name)
    }
}

/// The same version of an object: equal resourceVersions when both have
/// one, else equal contents.
fn same_object<T: PartialEq>(known: &ObjectMeta, new: &ObjectMeta, a: &T, b: &T) -> bool {
    match (&known.resource_version, &new.resource_version) {
        (Some(known), Some(new)) => known == new,
        _ => a == b,
    }
}
