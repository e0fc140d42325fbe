//! Flow and group mods for the switch: a full installation of a desired
//! state (one generation replacing another) and the incremental mods of a
//! [`ChangeSet`]. Pure: the caller sends each batch in one atomic bundle (a
//! full installation of a large state comes in parts, see [`FullSync`]).
//!
//! Order inside a batch: group adds/modifies, flow deletes, flow adds, group
//! deletes. A bundle with the `ATOMIC` flag makes packets see either the old
//! or the new set, so replacing a frontend (delete then add) leaves no gap.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use switchyard_ovs::openflow::{FlowMod, GroupMod, MatchField, TxMessage};
use switchyard_pipeline::{Cookie, Owner, table};

use crate::diff::{ChangeSet, ChangedPort, GroupId, GroupIdAllocator};
use crate::flows::{
    LEARNED_GENERATION, affinity_dnat_flows, cookie, generic_flows, hairpin_flow,
    local_endpoint_ips, port_flows,
};
use crate::groups::{GroupLayout, port_group_of};
use crate::service_model::{DesiredState, ServicePortName, ServicePortState};

/// How many Service ports use each local endpoint address (one hairpin flow
/// per address with a count above zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HairpinRefs(BTreeMap<Ipv4Addr, u32>);

impl HairpinRefs {
    /// Counts the local endpoints of every port of `state`.
    pub fn of_state(state: &DesiredState) -> Self {
        let mut refs = Self::default();
        for (_, port) in state.iter() {
            refs.add(port);
        }
        refs
    }

    fn add(&mut self, port: &ServicePortState) -> Vec<Ipv4Addr> {
        let mut first = Vec::new();
        for ip in unique_local_ips(port) {
            let count = self.0.entry(ip).or_insert(0);
            *count += 1;
            if *count == 1 {
                first.push(ip);
            }
        }
        first
    }

    fn remove(&mut self, port: &ServicePortState) -> Vec<Ipv4Addr> {
        let mut last = Vec::new();
        for ip in unique_local_ips(port) {
            if let Some(count) = self.0.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(&ip);
                    last.push(ip);
                }
            }
        }
        last
    }

    /// Addresses with a hairpin flow, ascending.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.0.keys().copied()
    }
}

fn unique_local_ips(port: &ServicePortState) -> BTreeSet<Ipv4Addr> {
    local_endpoint_ips(port).collect()
}

/// What is on the switch before a full installation.
#[derive(Debug, Clone, Default)]
pub struct SwitchInventory {
    /// Cookie generations of proxy flows present (learned ones excluded).
    pub generations: BTreeSet<u8>,
    /// Group ids in the proxy's range present.
    pub groups: HashSet<GroupId>,
}

/// A full installation of `state` as `generation`: every group (modify when
/// it exists, else add), every flow (an add replaces an identical flow of
/// the old generation in place), then deletion of the other generations'
/// flows and of groups no port uses. Ports without a group id in `ids` are
/// skipped (the allocator gives every port of a state it produced one).
/// All in one batch; [`FullSync`] gives the same mods in parts.
pub fn full_sync(
    generation: u8,
    state: &DesiredState,
    ids: &GroupIdAllocator,
    inventory: &SwitchInventory,
    layout: GroupLayout,
) -> (Vec<TxMessage>, HairpinRefs) {
    let mut sync = FullSync::new(generation, layout);
    let mut msgs = sync.ports(state.iter(), ids, inventory);
    let hairpin = HairpinRefs::of_state(state);
    msgs.append(&mut sync.finish(&hairpin, inventory));
    (msgs, hairpin)
}

/// A full installation built in parts, so that the mods of a large state
/// are never all in memory at once: [`Self::ports`] for consecutive runs of
/// ports (the first run also carries the generic flows), then
/// [`Self::finish`] (hairpin flows, deletion of the other generations'
/// flows and of groups no port uses). Together the parts are
/// [`full_sync`]'s mods (that batch has all groups before all flows, the
/// parts each their own groups before their own flows). Each part is consistent on its own: its groups
/// come before the flows that use them, and a flow add replaces the old
/// generation's flow with the same match in place, so sending each part in
/// its own atomic bundle leaves no forwarding gap in between.
#[derive(Debug)]
pub struct FullSync {
    generation: u8,
    layout: GroupLayout,
    used: HashSet<GroupId>,
    started: bool,
}

impl FullSync {
    pub fn new(generation: u8, layout: GroupLayout) -> Self {
        Self {
            generation,
            layout,
            used: HashSet::new(),
            started: false,
        }
    }

    /// Groups, then flows, of `ports`.
    pub fn ports<'a>(
        &mut self,
        ports: impl IntoIterator<Item = (&'a ServicePortName, &'a Arc<ServicePortState>)>,
        ids: &GroupIdAllocator,
        inventory: &SwitchInventory,
    ) -> Vec<TxMessage> {
        let mut group_mods = Vec::new();
        let mut flow_adds = Vec::new();
        if !std::mem::replace(&mut self.started, true) {
            for flow in generic_flows(self.generation) {
                flow_adds.push(FlowMod::add(flow).into());
            }
        }
        for (name, port) in ports {
            let Some(group_id) = ids.get(name) else {
                tracing::warn!(service_port = %name, "no group id: not installed");
                continue;
            };
            for group in self.layout.port_groups(group_id, port) {
                self.used.insert(group.group_id);
                group_mods.push(TxMessage::from(
                    if inventory.groups.contains(&group.group_id) {
                        GroupMod::modify(group)
                    } else {
                        GroupMod::add(group)
                    },
                ));
            }
            for flow in port_flows(self.generation, group_id, name, port) {
                flow_adds.push(FlowMod::add(flow).into());
            }
        }
        group_mods.append(&mut flow_adds);
        group_mods
    }

    /// The hairpin flows of `hairpin`, then the deletions.
    pub fn finish(&mut self, hairpin: &HairpinRefs, inventory: &SwitchInventory) -> Vec<TxMessage> {
        let mut msgs = Vec::new();
        if !std::mem::replace(&mut self.started, true) {
            for flow in generic_flows(self.generation) {
                msgs.push(FlowMod::add(flow).into());
            }
        }
        for ip in hairpin.addresses() {
            msgs.push(FlowMod::add(hairpin_flow(self.generation, ip)).into());
        }
        for old in &inventory.generations {
            if *old != self.generation && *old != LEARNED_GENERATION {
                let (value, mask) = Cookie::generation_mask(Owner::Proxy, *old);
                msgs.push(FlowMod::delete_cookie(value, mask).into());
            }
        }
        let mut stale: Vec<GroupId> = inventory
            .groups
            .iter()
            .copied()
            .filter(|id| !self.used.contains(id))
            .collect();
        // Port groups sort before sub-groups: a group goes before those it chains to.
        stale.sort_unstable();
        for id in stale {
            if port_group_of(id) == id {
                // Learned flows of a vanished port go with it.
                let (value, mask) = Cookie::object_mask(Owner::Proxy, id);
                msgs.push(FlowMod::delete_cookie(value, mask).into());
            }
            msgs.push(GroupMod::delete(id).into());
        }
        msgs
    }
}

/// The mods that take the switch through `changes`, with new flows in
/// `generation`; updates `hairpin`.
pub fn incremental(
    generation: u8,
    changes: &ChangeSet,
    hairpin: &mut HairpinRefs,
    layout: GroupLayout,
) -> Vec<TxMessage> {
    let mut group_mods: Vec<TxMessage> = Vec::new();
    let mut flow_deletes: Vec<TxMessage> = Vec::new();
    let mut flow_adds: Vec<TxMessage> = Vec::new();
    let mut group_deletes: Vec<TxMessage> = Vec::new();
    let mut hairpin_gone: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut hairpin_new: BTreeSet<Ipv4Addr> = BTreeSet::new();

    for port in &changes.removed {
        hairpin_gone.extend(hairpin.remove(&port.state));
        if port.group_id == 0 {
            continue;
        }
        let (value, mask) = Cookie::object_mask(Owner::Proxy, port.group_id);
        flow_deletes.push(FlowMod::delete_cookie(value, mask).into());
        // The port's group first, then the sub-groups it chains to.
        for id in layout
            .port_group_ids(port.group_id, &port.state)
            .into_iter()
            .rev()
        {
            group_deletes.push(GroupMod::delete(id).into());
        }
    }
    for port in &changes.changed {
        hairpin_gone.extend(hairpin.remove(&port.old));
        hairpin_new.extend(hairpin.add(&port.new));
        changed_port(
            generation,
            port,
            layout,
            &mut group_mods,
            &mut flow_deletes,
            &mut flow_adds,
            &mut group_deletes,
        );
    }
    for port in &changes.added {
        hairpin_new.extend(hairpin.add(&port.state));
        for group in layout.port_groups(port.group_id, &port.state) {
            group_mods.push(GroupMod::add(group).into());
        }
        for flow in port_flows(generation, port.group_id, &port.name, &port.state) {
            flow_adds.push(FlowMod::add(flow).into());
        }
    }
    // An address that went away and came back in the same batch keeps its flow.
    for ip in hairpin_gone.difference(&hairpin_new) {
        flow_deletes.push(FlowMod::delete_strict(hairpin_flow(generation, *ip)).into());
    }
    for ip in hairpin_new.difference(&hairpin_gone) {
        flow_adds.push(FlowMod::add(hairpin_flow(generation, *ip)).into());
    }

    let mut msgs = group_mods;
    msgs.append(&mut flow_deletes);
    msgs.append(&mut flow_adds);
    msgs.append(&mut group_deletes);
    msgs
}

/// Replaces the groups of a changed port: modifies those it keeps, adds
/// new sub-groups (before the port's group that chains to them) and
/// deletes sub-groups it no longer needs (after everything else).
fn replace_groups(
    port: &ChangedPort,
    layout: GroupLayout,
    group_mods: &mut Vec<TxMessage>,
    group_deletes: &mut Vec<TxMessage>,
) {
    let old: BTreeSet<u32> = layout
        .port_group_ids(port.group_id, &port.old)
        .into_iter()
        .collect();
    let new = layout.port_groups(port.group_id, &port.new);
    let kept: BTreeSet<u32> = new.iter().map(|g| g.group_id).collect();
    for group in new {
        group_mods.push(if old.contains(&group.group_id) {
            GroupMod::modify(group).into()
        } else {
            GroupMod::add(group).into()
        });
    }
    for id in old.difference(&kept) {
        group_deletes.push(GroupMod::delete(*id).into());
    }
}

fn changed_port(
    generation: u8,
    port: &ChangedPort,
    layout: GroupLayout,
    group_mods: &mut Vec<TxMessage>,
    flow_deletes: &mut Vec<TxMessage>,
    flow_adds: &mut Vec<TxMessage>,
    group_deletes: &mut Vec<TxMessage>,
) {
    let group_id = port.group_id;
    if port.frontend_changed {
        // Rewrite everything of the port (learned affinity flows included).
        let (value, mask) = Cookie::object_mask(Owner::Proxy, group_id);
        flow_deletes.push(FlowMod::delete_cookie(value, mask).into());
        replace_groups(port, layout, group_mods, group_deletes);
        for flow in port_flows(generation, group_id, &port.name, &port.new) {
            flow_adds.push(FlowMod::add(flow).into());
        }
        return;
    }
    if !port.endpoints_changed {
        return;
    }
    replace_groups(port, layout, group_mods, group_deletes);
    if port.new.session_affinity.is_none() {
        return;
    }
    // Affinity: per-endpoint DNAT flows follow the endpoints (and the local
    // ones); clients pinned to an endpoint that left are forgotten.
    let old = affinity_dnat_flows(generation, group_id, &port.old);
    let new = affinity_dnat_flows(generation, group_id, &port.new);
    let old_matches: HashSet<&Vec<MatchField>> = old.iter().map(|f| &f.matches).collect();
    let new_matches: HashSet<&Vec<MatchField>> = new.iter().map(|f| &f.matches).collect();
    let mut any_removed = false;
    for flow in &old {
        if !new_matches.contains(&flow.matches) {
            any_removed = true;
            flow_deletes.push(FlowMod::delete_strict(flow.clone()).into());
        }
    }
    if any_removed {
        let mut delete = FlowMod::delete(table::SESSION_AFFINITY.id(), Vec::<MatchField>::new());
        delete.flow.cookie = cookie(LEARNED_GENERATION, group_id);
        delete.cookie_mask = u64::MAX;
        flow_deletes.push(delete.into());
    }
    for flow in new {
        if !old_matches.contains(&flow.matches) {
            flow_adds.push(FlowMod::add(flow).into());
        }
    }
}
