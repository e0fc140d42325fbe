//! The minimal change set between two desired states, with stable OpenFlow
//! group ids per Service port.
//!
//! A Service port whose VIP, port, protocol, affinity, traffic policy or
//! no-endpoints action changes needs new flows (`frontend_changed`); one whose
//! endpoint addresses change needs only a group modify (`endpoints_changed`).
//! Differences that touch neither (an endpoint's node name or condition flags
//! with the same buckets) are not changes for the switch, except that UDP
//! endpoints leaving the serving set are listed for conntrack flushing.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::external::frontend_addresses;
use crate::service_model::{DesiredState, Protocol, ServiceKey, ServicePortName, ServicePortState};

/// An OpenFlow group id.
pub type GroupId = u32;

/// Largest group id OpenFlow allows (`OFPG_MAX`).
pub const MAX_GROUP_ID: GroupId = 0xffff_ff00;

/// All group ids in the allocator's range are taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free group id left in {first}..={last}")]
pub struct GroupIdsExhausted {
    pub first: GroupId,
    pub last: GroupId,
}

/// A group id cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupIdTaken {
    #[error("group id {id} is outside {first}..={last}")]
    OutOfRange {
        id: GroupId,
        first: GroupId,
        last: GroupId,
    },
    #[error("group id {id} is held by {holder}")]
    HeldBy {
        id: GroupId,
        holder: ServicePortName,
    },
    #[error("group id {id} is retired and not yet released")]
    Retired { id: GroupId },
    #[error("{name} already has group id {held}")]
    PortHasId {
        name: ServicePortName,
        held: GroupId,
    },
}

/// Hands out one group id per Service port and keeps it while the port
/// exists. A retired id (its port was removed) is reused only after
/// [`release`](Self::release): the caller releases it once the group is
/// really deleted from the switch, so a new port never shares a live group.
/// Deterministic: the lowest released id is reused first, else the lowest
/// never-used one.
#[derive(Debug, Clone)]
pub struct GroupIdAllocator {
    first: GroupId,
    last: GroupId,
    /// Every id below this was handed out, adopted or skipped at some point
    /// (u64 so that `last == u32::MAX` cannot wrap).
    next: u64,
    by_name: HashMap<ServicePortName, GroupId>,
    /// Ids held by a port or retired: not available.
    held: BTreeSet<GroupId>,
    /// Released ids, available again.
    released: BTreeSet<GroupId>,
    /// Ids of removed ports whose groups may still exist on the switch.
    retired: BTreeSet<GroupId>,
}

impl Default for GroupIdAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupIdAllocator {
    /// Ids from 1 to [`MAX_GROUP_ID`].
    pub fn new() -> Self {
        Self::with_range(1, MAX_GROUP_ID)
    }

    /// Ids from `first` to `last` inclusive (e.g. a proxy-owned id space).
    pub fn with_range(first: GroupId, last: GroupId) -> Self {
        assert!(first <= last, "empty group id range {first}..={last}");
        Self {
            first,
            last,
            next: u64::from(first),
            by_name: HashMap::new(),
            held: BTreeSet::new(),
            released: BTreeSet::new(),
            retired: BTreeSet::new(),
        }
    }

    /// The id of a port, if it has one.
    pub fn get(&self, name: &ServicePortName) -> Option<GroupId> {
        self.by_name.get(name).copied()
    }

    /// The id of a port, allocating one if it has none yet.
    pub fn allocate(&mut self, name: &ServicePortName) -> Result<GroupId, GroupIdsExhausted> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        let id = match self.released.pop_first() {
            Some(id) => id,
            None => self.next_fresh().ok_or(GroupIdsExhausted {
                first: self.first,
                last: self.last,
            })?,
        };
        self.held.insert(id);
        self.by_name.insert(name.clone(), id);
        Ok(id)
    }

    /// The lowest never-used id that is not held (adopted ids are skipped).
    fn next_fresh(&mut self) -> Option<GroupId> {
        loop {
            let id = GroupId::try_from(self.next)
                .ok()
                .filter(|id| *id <= self.last)?;
            self.next += 1;
            if !self.held.contains(&id) {
                return Some(id);
            }
        }
    }

    /// Records that `name` already owns group `id` (found on the switch
    /// after a restart). Idempotent; fails, changing nothing, if the id is
    /// outside the range, held by another port or retired, or if the port
    /// has another id.
    pub fn adopt(&mut self, name: &ServicePortName, id: GroupId) -> Result<(), GroupIdTaken> {
        if id < self.first || id > self.last {
            return Err(GroupIdTaken::OutOfRange {
                id,
                first: self.first,
                last: self.last,
            });
        }
        match self.by_name.get(name) {
            Some(held) if *held == id => return Ok(()),
            Some(held) => {
                return Err(GroupIdTaken::PortHasId {
                    name: name.clone(),
                    held: *held,
                });
            }
            None => {}
        }
        if self.retired.contains(&id) {
            return Err(GroupIdTaken::Retired { id });
        }
        if self.held.contains(&id) {
            let holder = self
                .by_name
                .iter()
                .find_map(|(holder, held)| (*held == id).then(|| holder.clone()));
            if let Some(holder) = holder {
                return Err(GroupIdTaken::HeldBy { id, holder });
            }
        }
        self.released.remove(&id);
        self.held.insert(id);
        self.by_name.insert(name.clone(), id);
        Ok(())
    }

    /// Takes the id away from a removed port. It stays unusable until released.
    pub fn retire(&mut self, name: &ServicePortName) -> Option<GroupId> {
        let id = self.by_name.remove(name)?;
        self.retired.insert(id);
        Some(id)
    }

    /// The group `id` is gone from the switch: the id may be handed out again.
    /// Ids that are not retired are left alone.
    pub fn release(&mut self, id: GroupId) {
        if self.retired.remove(&id) {
            self.held.remove(&id);
            self.released.insert(id);
        }
    }

    /// Releases every retired id.
    pub fn release_all_retired(&mut self) {
        for id in std::mem::take(&mut self.retired) {
            self.held.remove(&id);
            self.released.insert(id);
        }
    }

    /// Ids retired and not yet released, ascending.
    pub fn retired(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.retired.iter().copied()
    }

    /// How many more ids can be allocated right now.
    pub fn available(&self) -> u64 {
        let fresh_range = (u64::from(self.last) + 1).saturating_sub(self.next);
        let held_ahead = GroupId::try_from(self.next)
            .map(|next| self.held.range(next..).count() as u64)
            .unwrap_or(0);
        fresh_range.saturating_sub(held_ahead) + self.released.len() as u64
    }

    /// Number of ports holding an id.
    pub fn in_use(&self) -> usize {
        self.by_name.len()
    }
}

/// A Service port that is new.
#[derive(Debug, Clone, PartialEq)]
pub struct AddedPort {
    pub name: ServicePortName,
    pub group_id: GroupId,
    pub state: Arc<ServicePortState>,
}

/// A Service port that is gone; `state` is what was installed.
#[derive(Debug, Clone, PartialEq)]
pub struct RemovedPort {
    pub name: ServicePortName,
    /// Retired in the allocator: release it once the group is deleted.
    pub group_id: GroupId,
    pub state: Arc<ServicePortState>,
}

/// A Service port whose flows or group must change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedPort {
    pub name: ServicePortName,
    pub group_id: GroupId,
    pub old: Arc<ServicePortState>,
    pub new: Arc<ServicePortState>,
    /// VIP, port, protocol, affinity, policy or no-endpoints action changed: rewrite the flows.
    pub frontend_changed: bool,
    /// The endpoint addresses changed: modify the group's buckets.
    pub endpoints_changed: bool,
}

impl ChangedPort {
    /// Only the group needs a modify; the frontend flows stay.
    pub fn group_only(&self) -> bool {
        self.endpoints_changed && !self.frontend_changed
    }
}

/// A UDP endpoint that no longer serves a frontend (left the port's
/// [`ServicePortState::serving`] set, or the frontend address or the port
/// itself went away): conntrack entries from
/// `cluster_ip:port` DNATed to `endpoint_ip:endpoint_port` must be flushed.
/// `cluster_ip:port` is any frontend address of the port: its ClusterIP, or
/// one of its external frontends ([`crate::external::ExternalFrontends::addresses`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StaleUdpEndpoint {
    pub name: ServicePortName,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoint_ip: Ipv4Addr,
    pub endpoint_port: u16,
}

/// A UDP frontend that had no serving endpoints and now has some: conntrack entries
/// to `cluster_ip:port` created while it had none must be flushed (as kube-proxy does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StaleUdpFrontend {
    pub name: ServicePortName,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
}

/// What must change on the switch to go from one desired state to the next.
/// Every list is ordered by Service port name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    pub added: Vec<AddedPort>,
    pub removed: Vec<RemovedPort>,
    pub changed: Vec<ChangedPort>,
    pub stale_udp_endpoints: Vec<StaleUdpEndpoint>,
    pub stale_udp_frontends: Vec<StaleUdpFrontend>,
}

impl ChangeSet {
    /// A port came, went or changed its frontend: what the host side
    /// ([`crate::host::HostRules`]) derives from the frontends may differ.
    /// Endpoint-only changes never touch it.
    pub fn frontends_changed(&self) -> bool {
        !self.added.is_empty()
            || !self.removed.is_empty()
            || self.changed.iter().any(|port| port.frontend_changed)
    }

    /// Nothing to do on the switch.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.stale_udp_endpoints.is_empty()
            && self.stale_udp_frontends.is_empty()
    }
}

/// Computes the change set from `old` to `new`, allocating group ids for
/// added ports and retiring those of removed ports in `groups`.
/// `groups` must be the allocator that saw every earlier diff (or be empty
/// with `old` empty). On error nothing in `groups` has changed.
pub fn diff(
    old: &DesiredState,
    new: &DesiredState,
    groups: &mut GroupIdAllocator,
) -> Result<ChangeSet, GroupIdsExhausted> {
    let mut changes = ChangeSet::default();
    diff_ports(old.iter(), new.iter(), &mut changes);
    assign_group_ids(&mut changes, groups)?;
    Ok(changes)
}

/// Like [`diff`], but looks only at the ports of `services`: the caller
/// knows that no other Service differs between `old` and `new` (as after
/// [`DesiredState::replace_service`] on exactly those). Cost is independent
/// of the number of unchanged Services.
pub fn diff_services<'a>(
    old: &DesiredState,
    new: &DesiredState,
    services: impl IntoIterator<Item = &'a ServiceKey>,
    groups: &mut GroupIdAllocator,
) -> Result<ChangeSet, GroupIdsExhausted> {
    let services: BTreeSet<&ServiceKey> = services.into_iter().collect();
    let mut changes = ChangeSet::default();
    for service in services {
        diff_ports(
            old.service_ports(service),
            new.service_ports(service),
            &mut changes,
        );
    }
    assign_group_ids(&mut changes, groups)?;
    Ok(changes)
}

/// Merge-joins two name-ordered port sequences into `changes` (group ids unset).
fn diff_ports<'a>(
    old: impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortState>)>,
    new: impl Iterator<Item = (&'a ServicePortName, &'a Arc<ServicePortState>)>,
    changes: &mut ChangeSet,
) {
    use std::cmp::Ordering;

    let mut old_iter = old.peekable();
    let mut new_iter = new.peekable();
    loop {
        let order = match (old_iter.peek(), new_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((old_name, _)), Some((new_name, _))) => old_name.cmp(new_name),
        };
        match order {
            Ordering::Less => {
                let Some((name, state)) = old_iter.next() else {
                    break;
                };
                removed(name, state, changes);
            }
            Ordering::Greater => {
                let Some((name, state)) = new_iter.next() else {
                    break;
                };
                added(name, state, changes);
            }
            Ordering::Equal => {
                let (Some((name, old_state)), Some((_, new_state))) =
                    (old_iter.next(), new_iter.next())
                else {
                    break;
                };
                if !Arc::ptr_eq(old_state, new_state) {
                    changed(name, old_state, new_state, changes);
                }
            }
        }
    }
}

/// Retires the ids of removed ports and allocates ids for added ports (and
/// for changed ports the allocator does not know), all or nothing.
fn assign_group_ids(
    changes: &mut ChangeSet,
    groups: &mut GroupIdAllocator,
) -> Result<(), GroupIdsExhausted> {
    let needed = changes.added.len()
        + changes
            .changed
            .iter()
            .filter(|port| groups.get(&port.name).is_none())
            .count();
    if (needed as u64) > groups.available() {
        return Err(GroupIdsExhausted {
            first: groups.first,
            last: groups.last,
        });
    }
    for port in &mut changes.removed {
        // A port the allocator never saw keeps 0: it has no group to delete.
        port.group_id = groups.retire(&port.name).unwrap_or(0);
    }
    for port in &mut changes.changed {
        port.group_id = groups.allocate(&port.name)?;
    }
    for port in &mut changes.added {
        port.group_id = groups.allocate(&port.name)?;
    }
    Ok(())
}

fn added(name: &ServicePortName, state: &Arc<ServicePortState>, changes: &mut ChangeSet) {
    if state.protocol == Protocol::Udp && !state.serving.is_empty() {
        for address in frontend_addresses(state) {
            changes
                .stale_udp_frontends
                .push(stale_frontend(name, address));
        }
    }
    changes.added.push(AddedPort {
        name: name.clone(),
        group_id: 0,
        state: Arc::clone(state),
    });
}

fn removed(name: &ServicePortName, state: &Arc<ServicePortState>, changes: &mut ChangeSet) {
    if state.protocol == Protocol::Udp {
        stale_endpoints(name, state, None, changes);
    }
    changes.removed.push(RemovedPort {
        name: name.clone(),
        group_id: 0,
        state: Arc::clone(state),
    });
}

fn changed(
    name: &ServicePortName,
    old: &Arc<ServicePortState>,
    new: &Arc<ServicePortState>,
    changes: &mut ChangeSet,
) {
    if old.protocol == Protocol::Udp {
        stale_endpoints(name, old, Some(new.as_ref()), changes);
        if new.protocol == Protocol::Udp && !new.serving.is_empty() {
            // Frontend addresses that had no serving endpoint before (all
            // of them when the port had none, else the new ones).
            let before = frontend_addresses(old);
            for address in frontend_addresses(new) {
                if old.serving.is_empty() || !before.contains(&address) {
                    changes
                        .stale_udp_frontends
                        .push(stale_frontend(name, address));
                }
            }
        }
    }
    let frontend_changed = !old.same_frontend(new);
    let endpoints_changed = !old.same_buckets(new);
    if !frontend_changed && !endpoints_changed {
        return;
    }
    changes.changed.push(ChangedPort {
        name: name.clone(),
        group_id: 0,
        old: Arc::clone(old),
        new: Arc::clone(new),
        frontend_changed,
        endpoints_changed,
    });
}

/// Lists, per frontend address of `old`, the serving endpoints of `old`
/// that `still` no longer serves at that address; all of them when `still`
/// is `None`.
fn stale_endpoints(
    name: &ServicePortName,
    old: &ServicePortState,
    still: Option<&ServicePortState>,
    changes: &mut ChangeSet,
) {
    let still_addresses = still.map(frontend_addresses).unwrap_or_default();
    for address in frontend_addresses(old) {
        let same_address = still_addresses.contains(&address);
        for &(endpoint_ip, endpoint_port) in &old.serving {
            let kept = same_address
                && still.is_some_and(|new| {
                    new.serving
                        .binary_search(&(endpoint_ip, endpoint_port))
                        .is_ok()
                });
            if !kept {
                changes.stale_udp_endpoints.push(StaleUdpEndpoint {
                    name: name.clone(),
                    cluster_ip: address.0,
                    port: address.1,
                    endpoint_ip,
                    endpoint_port,
                });
            }
        }
    }
}

fn stale_frontend(name: &ServicePortName, address: (Ipv4Addr, u16)) -> StaleUdpFrontend {
    StaleUdpFrontend {
        name: name.clone(),
        cluster_ip: address.0,
        port: address.1,
    }
}
