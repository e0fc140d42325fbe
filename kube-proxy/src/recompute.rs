//! Turns the dirty Services of a [`ClusterCache`] into the next desired
//! state and the change set from the previous one, and keeps the Services'
//! health check node ports ([`HealthChecks`]) up to date alongside.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::cluster_cache::ClusterCache;
use crate::diff::{ChangeSet, GroupIdAllocator, GroupIdsExhausted, diff_services};
use crate::external::NodeContext;
use crate::service_model::{DesiredState, HealthCheck, ServiceKey};

/// Every Service with a health check node port and what it reports.
pub type HealthChecks = BTreeMap<ServiceKey, HealthCheck>;

/// One step for the switch: the new desired state and what changed to reach it.
#[derive(Debug, Clone)]
pub struct Update {
    /// 1 for the first update, then +1 per update.
    pub generation: u64,
    pub state: Arc<DesiredState>,
    /// Never empty.
    pub changes: ChangeSet,
    /// When the first API event of the burst behind this update was seen
    /// (the start of the sync latency the switch writer reports).
    pub first_event: std::time::Instant,
}

/// Group ids shared between the recompute (allocates, retires) and the
/// switch writer (releases ids once their groups are deleted).
pub type SharedGroupIds = Arc<Mutex<GroupIdAllocator>>;

/// Holds the current desired state and produces [`Update`]s.
#[derive(Debug)]
pub struct Recomputer {
    node_name: String,
    current: Arc<DesiredState>,
    generation: u64,
    groups: SharedGroupIds,
    health_checks: Arc<HealthChecks>,
    /// `health_checks` changed since [`Self::take_health_checks`].
    health_changed: bool,
    /// The node as the external frontends need it.
    node: Arc<NodeContext>,
}

impl Recomputer {
    /// Starts from an empty desired state; `node_name` decides which endpoints are local.
    pub fn new(node_name: impl Into<String>, groups: SharedGroupIds) -> Self {
        Self {
            node_name: node_name.into(),
            current: Arc::new(DesiredState::new()),
            generation: 0,
            groups,
            health_checks: Arc::new(HealthChecks::new()),
            health_changed: false,
            node: Arc::default(),
        }
    }

    /// The health checks as of the last recompute.
    pub fn health_checks(&self) -> &Arc<HealthChecks> {
        &self.health_checks
    }

    /// The health checks, if they changed since the last call.
    pub fn take_health_checks(&mut self) -> Option<Arc<HealthChecks>> {
        std::mem::take(&mut self.health_changed).then(|| Arc::clone(&self.health_checks))
    }

    /// Sets the node's addresses and gateway for the external frontends
    /// (before the first recompute).
    pub fn with_node(mut self, node: Arc<NodeContext>) -> Self {
        self.node = node;
        self
    }

    /// The desired state as of the last recompute.
    pub fn current(&self) -> &Arc<DesiredState> {
        &self.current
    }

    /// The generation of the last update (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Recomputes the dirty Services. Returns an update when the switch has
    /// something to do. On error the dirty Services stay dirty and the
    /// current state is kept.
    pub fn recompute(
        &mut self,
        cache: &mut ClusterCache,
    ) -> Result<Option<Update>, GroupIdsExhausted> {
        let dirty = cache.take_dirty();
        if dirty.is_empty() {
            return Ok(None);
        }
        let mut next = DesiredState::clone(&self.current);
        for service in &dirty {
            let mut ports = cache.service_port_states(service, &self.node_name);
            for (name, port) in &mut ports {
                if !port.external.is_empty() {
                    port.external.complete(name, &self.node);
                }
            }
            next.replace_service(service, ports);
        }
        let result = {
            let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            diff_services(&self.current, &next, &dirty, &mut groups)
        };
        let changes = match result {
            Ok(changes) => changes,
            Err(err) => {
                cache.mark_dirty(dirty);
                return Err(err);
            }
        };
        self.update_health_checks(&next, &dirty);
        self.current = Arc::new(next);
        if changes.is_empty() {
            return Ok(None);
        }
        self.generation += 1;
        Ok(Some(Update {
            generation: self.generation,
            state: Arc::clone(&self.current),
            changes,
            first_event: std::time::Instant::now(),
        }))
    }

    /// Follows the dirty Services' health checks in `next` (even when the
    /// switch has nothing to do: a readiness flip or a new health check port
    /// may change no flow).
    fn update_health_checks(&mut self, next: &DesiredState, dirty: &[ServiceKey]) {
        let mut checks: Option<HealthChecks> = None;
        for service in dirty {
            let wanted = next.health_check(service);
            if self.health_checks.get(service) == wanted.as_ref() {
                continue;
            }
            let checks = checks.get_or_insert_with(|| HealthChecks::clone(&self.health_checks));
            match wanted {
                Some(check) => checks.insert(service.clone(), check),
                None => checks.remove(service),
            };
        }
        if let Some(checks) = checks {
            self.health_checks = Arc::new(checks);
            self.health_changed = true;
        }
    }
}
