//! The OVS groups of one Service port, of any size.
//!
//! A port whose endpoints fit [`GroupLayout::buckets_per_group`] has one
//! select group `G` with a bucket per endpoint ([`crate::flows::port_group`]).
//! A larger port is served by chained groups: `G` selects among sub-groups
//! `S0..Sm` (a bucket `group:Si` each, equal weights), and sub-group `Si`
//! holds the endpoints whose index `j` has `j % m == i`, so the sub-groups
//! differ in size by at most one and each endpoint is chosen with nearly
//! equal probability. Each sub-group hashes with its own basis (OVS's
//! `selection_method_param`), so the choice of a sub-group does not bias
//! the choice inside it.
//!
//! Why not one group with every bucket: an OpenFlow message carries at
//! most 65,535 bytes, about 800 DNAT buckets. A larger group can be built
//! with `insert_buckets`, but `ovs-vswitchd` (3.1) cannot report it back:
//! its group-description reply truncates the 16-bit lengths, so neither
//! `ovs-ofctl dump-groups` nor the proxy's own read-back at start (which
//! adopts groups and judges stale UDP entries) could read the bridge any
//! more. Chained groups keep every message and every reply small.
//!
//! Sub-group ids are derived from `G`: `G | (i + 1) << 24`. Port group ids
//! therefore stay below 2^24 ([`PORT_GROUP_LAST`]), and a port has at most
//! [`MAX_SUB_GROUPS`] sub-groups. Numbers 126 and 127 are reserved for the
//! port's external groups, not chained from `G` (see [`crate::external`]):
//! 127 its local-endpoints group `GL` ([`local_group_id`]: `G | 127 << 24`),
//! the target of its `externalTrafficPolicy: Local` frontends; 126 its
//! cluster-endpoints group `GC` ([`cluster_group_id`]), the target of the
//! external frontends that use every endpoint when `G` itself holds only
//! local ones (`internalTrafficPolicy: Local`).

use switchyard_ovs::openflow::{Action, Bucket, Group};

use crate::diff::GroupId;
use crate::flows::{endpoint_bucket, port_group, select_group};
use crate::service_model::ServicePortState;

/// Endpoint buckets per group by default and at most: a full group of
/// affinity buckets (the larger kind, 80 bytes each) takes about 41 KB,
/// well inside one 64 KiB OpenFlow message.
pub const DEFAULT_BUCKETS_PER_GROUP: usize = 512;

/// The largest port group id: the bits above it number sub-groups.
pub const PORT_GROUP_LAST: GroupId = 0x00ff_ffff;

/// Sub-groups per port at most (ids stay within the proxy's range; numbers
/// 126 and 127 are the external groups, [`cluster_group_id`] and
/// [`local_group_id`]).
pub const MAX_SUB_GROUPS: usize = 125;

/// Sub-group number of the local-endpoints group.
const LOCAL_GROUP_NUMBER: u32 = 127;

/// Sub-group number of the cluster-endpoints group.
const CLUSTER_GROUP_NUMBER: u32 = 126;

const SUB_GROUP_SHIFT: u32 = 24;

/// How ports' endpoints are laid out in groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    /// Endpoint buckets in one group (at least 1).
    pub buckets_per_group: usize,
}

impl Default for GroupLayout {
    fn default() -> Self {
        Self {
            buckets_per_group: DEFAULT_BUCKETS_PER_GROUP,
        }
    }
}

impl GroupLayout {
    /// A layout with `buckets_per_group` (values below 1 count as 1).
    pub fn new(buckets_per_group: usize) -> Self {
        Self {
            buckets_per_group: buckets_per_group.max(1),
        }
    }

    /// The most endpoints one port can use; the rest are left out (logged).
    pub fn max_endpoints(&self) -> usize {
        self.buckets_per_group * MAX_SUB_GROUPS
    }

    /// How many sub-groups a port with `endpoints` endpoints has (0: one
    /// plain group).
    pub fn sub_groups(&self, endpoints: usize) -> usize {
        if endpoints <= self.buckets_per_group {
            0
        } else {
            endpoints
                .min(self.max_endpoints())
                .div_ceil(self.buckets_per_group)
        }
    }

    /// The ids of the groups of a port with `endpoints` endpoints, in the
    /// order they must be added: sub-groups first, the port's group last.
    pub fn group_ids(&self, group_id: GroupId, endpoints: usize) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = (0..self.sub_groups(endpoints))
            .map(|i| sub_group_id(group_id, i))
            .collect();
        ids.push(group_id);
        ids
    }

    /// The ids of every group of a port: [`Self::group_ids`], then its
    /// cluster-endpoints and local-endpoints groups when it has them.
    pub fn port_group_ids(&self, group_id: GroupId, state: &ServicePortState) -> Vec<GroupId> {
        let mut ids = self.group_ids(group_id, state.endpoints.len());
        if state.external.has_cluster_group() {
            ids.push(cluster_group_id(group_id));
        }
        if state.external.has_local_group() {
            ids.push(local_group_id(group_id));
        }
        ids
    }

    /// The groups of a port, in [`Self::port_group_ids`] order.
    pub fn port_groups(&self, group_id: GroupId, state: &ServicePortState) -> Vec<Group> {
        let mut groups = self.balancing_groups(group_id, state);
        if state.external.has_cluster_group() {
            groups.push(self.external_group(
                cluster_group_id(group_id),
                CLUSTER_GROUP_NUMBER,
                &state.external.cluster_endpoints,
                state,
            ));
        }
        if state.external.has_local_group() {
            groups.push(self.local_group(group_id, state));
        }
        groups
    }

    /// The port's local-endpoints group: one bucket per local endpoint (at
    /// most [`GroupLayout::buckets_per_group`]; the rest are left out).
    pub fn local_group(&self, group_id: GroupId, state: &ServicePortState) -> Group {
        self.external_group(
            local_group_id(group_id),
            LOCAL_GROUP_NUMBER,
            &state.external.local_endpoints,
            state,
        )
    }

    /// An external group `id` of `state`'s port: one bucket per endpoint
    /// (at most [`GroupLayout::buckets_per_group`]; the rest are left out,
    /// logged).
    fn external_group(
        &self,
        id: GroupId,
        number: u32,
        endpoints: &[crate::service_model::Endpoint],
        state: &ServicePortState,
    ) -> Group {
        if endpoints.len() > self.buckets_per_group {
            tracing::error!(
                cluster_ip = %state.cluster_ip,
                port = state.port,
                group = id,
                endpoints = endpoints.len(),
                used = self.buckets_per_group,
                "more endpoints than one external group holds; the rest get no external traffic"
            );
        }
        let buckets = endpoints
            .iter()
            .take(self.buckets_per_group)
            .enumerate()
            .map(|(index, endpoint)| endpoint_bucket(index, endpoint, state))
            .collect();
        select_group(id, state.protocol, u64::from(number), buckets)
    }

    /// The port's group and sub-groups, in [`Self::group_ids`] order.
    fn balancing_groups(&self, group_id: GroupId, state: &ServicePortState) -> Vec<Group> {
        let subs = self.sub_groups(state.endpoints.len());
        if subs == 0 {
            return vec![port_group(group_id, state)];
        }
        if state.endpoints.len() > self.max_endpoints() {
            tracing::error!(
                cluster_ip = %state.cluster_ip,
                port = state.port,
                endpoints = state.endpoints.len(),
                used = self.max_endpoints(),
                "Service port has more endpoints than the proxy can balance over; the rest get no traffic"
            );
        }
        let mut buckets: Vec<Vec<Bucket>> = vec![Vec::new(); subs];
        for (index, endpoint) in state
            .endpoints
            .iter()
            .take(self.max_endpoints())
            .enumerate()
        {
            buckets[index % subs].push(endpoint_bucket(index, endpoint, state));
        }
        let mut groups: Vec<Group> = buckets
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                select_group(
                    sub_group_id(group_id, i),
                    state.protocol,
                    u64::try_from(i + 1).unwrap_or(u64::MAX),
                    b,
                )
            })
            .collect();
        let top = (0..subs)
            .map(|i| {
                Bucket::new(
                    u32::try_from(i).unwrap_or(u32::MAX),
                    vec![Action::Group(sub_group_id(group_id, i))],
                )
                .weight(100)
            })
            .collect();
        groups.push(select_group(group_id, state.protocol, 0, top));
        groups
    }
}

/// The id of sub-group `index` (from 0) of port group `group_id`.
pub fn sub_group_id(group_id: GroupId, index: usize) -> GroupId {
    let n = u32::try_from(index + 1).unwrap_or(u32::MAX);
    (group_id & PORT_GROUP_LAST) | (n << SUB_GROUP_SHIFT)
}

/// The id of the local-endpoints group of port group `group_id`.
pub fn local_group_id(group_id: GroupId) -> GroupId {
    (group_id & PORT_GROUP_LAST) | (LOCAL_GROUP_NUMBER << SUB_GROUP_SHIFT)
}

/// The id of the cluster-endpoints group of port group `group_id`.
pub fn cluster_group_id(group_id: GroupId) -> GroupId {
    (group_id & PORT_GROUP_LAST) | (CLUSTER_GROUP_NUMBER << SUB_GROUP_SHIFT)
}

/// The port group a (sub-)group id belongs to.
pub fn port_group_of(group_id: GroupId) -> GroupId {
    group_id & PORT_GROUP_LAST
}
