//! The switch writer: applies [`Update`]s to `br-int` over OpenFlow.
//!
//! - At start, [`SwitchWriter::start`] reads the proxy's frontend flows and
//!   groups already on the bridge and adopts their group ids (each frontend
//!   carries its Service port's name in a `note`), so a restarted proxy keeps
//!   the same groups, and leaves every flow in place until the new state is
//!   installed.
//! - The first update, every OpenFlow reconnect and every resync period
//!   install the whole desired state as a new cookie generation and delete
//!   the previous generations' leftovers and unused groups: no forwarding
//!   gap. Up to [`PORTS_PER_BUNDLE`] ports in one atomic bundle, a larger
//!   state in several ([`program::FullSync`]), the last one deleting.
//! - Other updates send only their change set's mods, in one atomic bundle
//!   (a lone group modify, the usual endpoint change, on its own with a
//!   barrier: one message is applied atomically anyway); if that fails,
//!   the next step is a full sync.
//! - The first full sync after start flushes only the UDP conntrack entries
//!   that what changed while the proxy was down made stale, judged against
//!   the flows and groups read at start ([`crate::served`]): live flows of
//!   adopted ports keep their entries.
//! - The full sync after an OpenFlow reconnect also flushes, for every
//!   frontend, the conntrack entries committed without DNAT: a restarted
//!   `ovs-vswitchd` may have had the agent's flows before the proxy's, and
//!   such an entry would black-hole its 5-tuple for as long as the client
//!   keeps it alive (see [`crate::conntrack::unnatted_tuples`]).
//! - After a successful bundle: retired group ids are released, stale UDP
//!   conntrack entries flushed, and flushed again once the datapath's cached
//!   flows are revalidated (see [`crate::conntrack`]).

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use switchyard_ovs::openflow::{
    self, Action, Client, Field, FlowStatsRequest, GroupMod, GroupModCommand, Message, PacketOut,
    TxMessage, bundle_flags, port,
};
use switchyard_pipeline::{Cookie, Owner, PortKind, group as group_ids, reg, table};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::conntrack::{ConntrackFlusher, Frontend};
use crate::diff::{ChangeSet, GroupId, StaleUdpEndpoint, StaleUdpFrontend};
use crate::external::frontend_addresses;
use crate::flows::{LEARNED_GENERATION, REJECT_USERDATA};
use crate::groups::GroupLayout;
use crate::metrics::{Metrics, SyncKind};
use crate::program::{self, HairpinRefs, SwitchInventory};
use crate::recompute::{SharedGroupIds, Update};
use crate::reject;
use crate::served::ServedBefore;
use crate::service_model::{DesiredState, Protocol, ServicePortName};

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error(transparent)]
    OpenFlow(#[from] openflow::Error),
}

/// What was found on the bridge at start.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    /// Service ports whose group ids were adopted.
    pub ports: Vec<(ServicePortName, GroupId)>,
    pub inventory: SwitchInventory,
    /// The UDP ports served, for the conntrack flush of the first sync.
    pub served: ServedBefore,
}

/// Writes desired states to one bridge.
#[derive(Debug)]
pub struct SwitchWriter {
    client: Client,
    groups: SharedGroupIds,
    flusher: Option<ConntrackFlusher>,
    metrics: Arc<Metrics>,
    /// Generation of the flows installed by the last full sync.
    generation: u8,
    /// Generations that may have flows on the switch.
    generations: BTreeSet<u8>,
    /// The desired state of the latest update.
    latest: Option<Arc<DesiredState>>,
    /// The switch holds `latest` (no full sync pending).
    in_sync: bool,
    hairpin: HairpinRefs,
    /// What the switch served at start, until the first full sync has
    /// flushed what changed since (see [`crate::served`]).
    served_before: Option<ServedBefore>,
    /// How ports' endpoints are laid out in (chained) groups.
    layout: GroupLayout,
    /// Endpoints of the installed state (kept up to date per change set,
    /// counted once per full sync).
    endpoints: usize,
    /// The OpenFlow connection was re-established (maybe to a restarted
    /// `ovs-vswitchd`): the next full sync flushes frontend entries that
    /// were committed without DNAT in the meantime.
    unnatted_flush_pending: bool,
}

/// Parses `namespace/name:port/PROTOCOL` (the `Display` of [`ServicePortName`]).
pub fn parse_port_name(text: &str) -> Option<ServicePortName> {
    let (namespace, rest) = text.split_once('/')?;
    let (name_port, protocol) = rest.rsplit_once('/')?;
    let (name, port) = name_port.split_once(':')?;
    let protocol = Protocol::from_api(Some(protocol)).ok()?;
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    Some(ServicePortName::new(namespace, name, port, protocol))
}

fn note_text(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|action| match action {
        Action::Note(bytes) => {
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            String::from_utf8(bytes[..end].to_vec()).ok()
        }
        _ => None,
    })
}

fn next_generation(generation: u8) -> u8 {
    match generation.wrapping_add(1) {
        0 | LEARNED_GENERATION => 1,
        next => next,
    }
}

/// Reads the proxy's frontends and groups on the bridge.
pub async fn read_switch(client: &Client) -> Result<Adopted, SwitchError> {
    let (value, mask) = Cookie::owner_mask(Owner::Proxy);
    let mut request = FlowStatsRequest::cookie(value, mask);
    request.table = table::SERVICE_LB.id();
    let mut flows = client.dump_flows(request.clone()).await?;
    request.table = table::ENDPOINT_DNAT.id();
    flows.extend(client.dump_flows(request.clone()).await?);
    // The external frontends: their addresses, for the first sync's
    // conntrack flush (generations are read from them too).
    request.table = table::SERVICE_EXTERNAL_FRONTEND.id();
    flows.extend(client.dump_flows(request).await?);
    let mut adopted = Adopted::default();
    let mut seen = HashSet::new();
    for stats in &flows {
        let Some(cookie) = Cookie::from_value(stats.flow.cookie) else {
            continue;
        };
        if cookie.generation != LEARNED_GENERATION {
            adopted.inventory.generations.insert(cookie.generation);
        }
        if cookie.object == 0 {
            continue;
        }
        if let Some(name) = note_text(&stats.flow.actions).and_then(|t| parse_port_name(&t))
            && seen.insert(name.clone())
        {
            adopted.ports.push((name, cookie.object));
        }
    }
    let groups = client.dump_groups(openflow::ALL_GROUPS).await?;
    for group in &groups {
        if (group_ids::PROXY_FIRST..=group_ids::PROXY_LAST).contains(&group.group_id) {
            adopted.inventory.groups.insert(group.group_id);
        }
    }
    let flows: Vec<_> = flows.into_iter().map(|stats| stats.flow).collect();
    adopted.served = ServedBefore::read(&adopted.ports, &flows, &groups, |flow| {
        Cookie::from_value(flow.cookie)
            .filter(|c| c.generation != LEARNED_GENERATION)
            .map(|c| c.object)
    });
    Ok(adopted)
}

impl SwitchWriter {
    /// Reads the bridge and adopts the group ids found into `groups` (which
    /// must be fresh: nothing allocated yet). Ids that cannot be adopted are
    /// logged and their groups will be deleted by the first full sync.
    pub async fn start(
        client: Client,
        groups: SharedGroupIds,
        flusher: Option<ConntrackFlusher>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SwitchError> {
        let adopted = read_switch(&client).await?;
        {
            let mut ids = groups.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, id) in &adopted.ports {
                if let Err(err) = ids.adopt(name, *id) {
                    warn!(service_port = %name, group_id = id, %err, "group id not adopted");
                }
            }
        }
        let generation = adopted
            .inventory
            .generations
            .iter()
            .next_back()
            .copied()
            .unwrap_or(0);
        info!(
            adopted = adopted.ports.len(),
            udp_ports_served = adopted.served.ports().len(),
            groups = adopted.inventory.groups.len(),
            generations = ?adopted.inventory.generations,
            "read the bridge"
        );
        Ok(Self {
            client,
            groups,
            flusher,
            metrics,
            generation,
            generations: adopted.inventory.generations,
            latest: None,
            in_sync: false,
            hairpin: HairpinRefs::default(),
            served_before: Some(adopted.served),
            layout: GroupLayout::default(),
            endpoints: 0,
            unnatted_flush_pending: false,
        })
    }

    /// Sets how ports' endpoints are laid out in groups (before the first
    /// update).
    pub fn with_group_layout(mut self, layout: GroupLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The OpenFlow client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the switch holds the latest desired state.
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// The generation of the installed flows.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// Applies one update: its change set, or a full sync when the switch is
    /// not known to hold the previous state.
    pub async fn apply(&mut self, update: &Update) -> Result<(), SwitchError> {
        self.latest = Some(Arc::clone(&update.state));
        if !self.in_sync {
            // The first sync after start flushes against what the switch
            // served, not against the update's (empty) previous state.
            let first_since_start = self.served_before.is_some();
            self.full_sync_from(update.first_event).await?;
            if !first_since_start {
                self.flush_conntrack(update).await;
            }
            return Ok(());
        }
        let msgs = program::incremental(
            self.generation,
            &update.changes,
            &mut self.hairpin,
            self.layout,
        );
        let count = msgs.len();
        let bundled = !is_lone_group_modify(&msgs);
        match self.send_changes(msgs).await {
            Ok(()) => {
                let elapsed = update.first_event.elapsed();
                self.metrics
                    .sync_seconds
                    .get_or_create(&SyncKind::INCREMENTAL)
                    .observe(elapsed.as_secs_f64());
                self.metrics
                    .syncs
                    .get_or_create(&SyncKind::INCREMENTAL)
                    .inc();
                self.metrics.record_sync(true);
                self.count_changed_endpoints(&update.changes);
                self.set_gauges();
                debug!(
                    generation = update.generation,
                    mods = count,
                    bundled,
                    took = ?elapsed,
                    "change set installed"
                );
                {
                    let mut ids = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
                    for removed in &update.changes.removed {
                        ids.release(removed.group_id);
                    }
                }
                self.flush_conntrack(update).await;
                Ok(())
            }
            Err(err) => {
                warn!(%err, "change set not installed; a full sync follows");
                self.in_sync = false;
                self.metrics.record_sync(false);
                let result = self.full_sync_from(Instant::now()).await;
                // The stale entries of this update would be lost otherwise.
                self.flush_conntrack(update).await;
                result
            }
        }
    }

    /// Marks the switch as unknown (e.g. after a reconnect): the next
    /// [`Self::full_sync`] or update reinstalls everything.
    pub fn invalidate(&mut self) {
        self.in_sync = false;
    }

    /// Marks the switch as unknown after an OpenFlow reconnect: the next
    /// full sync reinstalls everything and then flushes the entries that
    /// packets made without the proxy's flows (see
    /// [`crate::conntrack::unnatted_tuples`]).
    pub fn reconnected(&mut self) {
        self.in_sync = false;
        self.unnatted_flush_pending = true;
    }

    /// Installs the latest desired state as a new generation (nothing to do
    /// before the first update).
    pub async fn full_sync(&mut self) -> Result<(), SwitchError> {
        self.full_sync_from(Instant::now()).await
    }

    async fn full_sync_from(&mut self, started: Instant) -> Result<(), SwitchError> {
        let Some(state) = self.latest.clone() else {
            return Ok(());
        };
        let mut inventory = SwitchInventory {
            generations: self.generations.clone(),
            groups: HashSet::new(),
        };
        // Group stats, not descriptions: only the ids are needed, and a
        // description carries every bucket's actions (tens of MB at 10,000
        // Services on a periodic resync).
        let groups = match self.client.group_stats(openflow::ALL_GROUPS).await {
            Ok(groups) => groups,
            Err(err) => {
                self.metrics.record_sync(false);
                return Err(err.into());
            }
        };
        inventory.groups = groups
            .iter()
            .map(|g| g.group_id)
            .filter(|id| (group_ids::PROXY_FIRST..=group_ids::PROXY_LAST).contains(id))
            .collect();
        let generation = next_generation(self.generation);
        // In bundles of PORTS_PER_BUNDLE ports, so that the mods of a large
        // state are never all built (and encoded) at once; the last bundle
        // deletes what the new generation replaced (see `FullSync`).
        let mut sync = program::FullSync::new(generation, self.layout);
        let mut ports = state.iter().peekable();
        let mut count = 0;
        let mut sent = false;
        loop {
            let mut msgs = {
                let ids = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
                sync.ports(ports.by_ref().take(PORTS_PER_BUNDLE), &ids, &inventory)
            };
            let last = ports.peek().is_none();
            let hairpin = last.then(|| HairpinRefs::of_state(&state));
            if let Some(hairpin) = &hairpin {
                msgs.append(&mut sync.finish(hairpin, &inventory));
            }
            count += msgs.len();
            if let Err(err) = self.bundle(msgs).await {
                if sent {
                    // Part of this generation is installed: the next full
                    // sync uses another one and deletes this one's flows.
                    self.generation = generation;
                    self.generations.insert(generation);
                }
                self.in_sync = false;
                self.metrics.record_sync(false);
                return Err(err);
            }
            sent = true;
            if let Some(hairpin) = hairpin {
                self.hairpin = hairpin;
                break;
            }
        }
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release_all_retired();
        self.generation = generation;
        self.generations = BTreeSet::from([generation]);
        self.in_sync = true;
        let elapsed = started.elapsed();
        self.metrics
            .sync_seconds
            .get_or_create(&SyncKind::FULL)
            .observe(elapsed.as_secs_f64());
        self.metrics.syncs.get_or_create(&SyncKind::FULL).inc();
        self.metrics.record_sync(true);
        self.endpoints = state.iter().map(|(_, s)| s.endpoints.len()).sum();
        self.set_gauges();
        info!(
            generation,
            service_ports = state.len(),
            mods = count,
            took = ?elapsed,
            "full sync installed"
        );
        if std::mem::take(&mut self.unnatted_flush_pending) {
            self.flush_unnatted(&state);
        }
        if let Some(served) = self.served_before.take() {
            let (endpoints, frontends) = served.stale_in(&state);
            info!(
                udp_ports_served = served.ports().len(),
                stale_endpoints = endpoints.len(),
                stale_frontends = frontends.len(),
                "first sync since start: flushing what changed on UDP ports while the proxy was down"
            );
            self.flush_stale(&endpoints, &frontends).await;
        }
        Ok(())
    }

    /// Sends a change set's mods. A lone group modify (one port's select
    /// group gets new buckets: the commonest endpoint change) goes on its
    /// own, confirmed by a barrier: `ovs-vswitchd` applies one message in
    /// one step (packets see the old buckets or the new ones), so it needs
    /// no bundle, and a rejected modify changes nothing, as a rejected
    /// bundle does. That is one round trip to `ovs-vswitchd` instead of a
    /// bundle's two (open, add and barrier; then commit). Anything else
    /// goes in one atomic bundle.
    async fn send_changes(&self, msgs: Vec<TxMessage>) -> Result<(), SwitchError> {
        if !is_lone_group_modify(&msgs) {
            return self.bundle(msgs).await;
        }
        self.client.send(msgs).await.map_err(|err| {
            self.metrics.bundle_failures.inc();
            err.into()
        })
    }

    async fn bundle(&self, msgs: Vec<TxMessage>) -> Result<(), SwitchError> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.client
            .bundle(msgs, bundle_flags::ATOMIC | bundle_flags::ORDERED)
            .await
            .map_err(|err| {
                self.metrics.bundle_failures.inc();
                err.into()
            })
    }

    /// Follows the endpoint count through one change set (no walk over
    /// the whole state per change).
    fn count_changed_endpoints(&mut self, changes: &ChangeSet) {
        let added: usize = changes.added.iter().map(|p| p.state.endpoints.len()).sum();
        let removed: usize = changes
            .removed
            .iter()
            .map(|p| p.state.endpoints.len())
            .sum();
        let (new, old) = changes.changed.iter().fold((0, 0), |(new, old), port| {
            (
                new + port.new.endpoints.len(),
                old + port.old.endpoints.len(),
            )
        });
        self.endpoints = (self.endpoints + added + new).saturating_sub(removed + old);
    }

    fn set_gauges(&self) {
        if let Some(state) = &self.latest {
            self.metrics
                .service_ports
                .set(i64::try_from(state.len()).unwrap_or(i64::MAX));
            self.metrics
                .endpoints
                .set(i64::try_from(self.endpoints).unwrap_or(i64::MAX));
        }
    }

    /// Flushes, in the background, every frontend's entries committed
    /// without DNAT.
    fn flush_unnatted(&self, state: &DesiredState) {
        let Some(flusher) = &self.flusher else {
            return;
        };
        let frontends = unnatted_frontends(state);
        info!(
            frontends = frontends.len(),
            "flushing frontend conntrack entries committed without DNAT while the proxy's flows were missing"
        );
        flusher.flush_unnatted_in_background(frontends);
    }

    async fn flush_conntrack(&self, update: &Update) {
        let changes = &update.changes;
        self.flush_stale(&changes.stale_udp_endpoints, &changes.stale_udp_frontends)
            .await;
    }

    async fn flush_stale(&self, endpoints: &[StaleUdpEndpoint], frontends: &[StaleUdpFrontend]) {
        if endpoints.is_empty() && frontends.is_empty() {
            return;
        }
        let Some(flusher) = &self.flusher else {
            return;
        };
        if let Err(err) = flusher.flush_and_repeat(endpoints, frontends).await {
            warn!(%err, "stale UDP conntrack entries not flushed");
            self.metrics.conntrack_flush_failures.inc();
        }
    }
}

/// `msgs` is one group modify and nothing else (see
/// [`SwitchWriter::send_changes`]).
pub fn is_lone_group_modify(msgs: &[TxMessage]) -> bool {
    matches!(
        msgs,
        [TxMessage {
            msg: Message::GroupMod(GroupMod {
                command: GroupModCommand::Modify,
                ..
            }),
            ..
        }]
    )
}

/// Service ports per bundle of a full sync (see [`program::FullSync`]): a
/// state of up to this many ports goes in one atomic bundle, a larger one
/// in several, each consistent, the last deleting the old generation.
pub const PORTS_PER_BUNDLE: usize = 1000;

/// Runs the writer: applies updates as they come, full-syncs on OpenFlow
/// reconnects and every `resync` (if set), retries failed syncs every
/// `retry`. Returns when `updates` closes.
pub async fn run(
    mut writer: SwitchWriter,
    mut updates: mpsc::Receiver<Update>,
    resync: Option<Duration>,
    retry: Duration,
) {
    let mut connection = writer.client.connection_events();
    let mut seen_generation = connection.borrow_and_update().generation;
    let mut resync_timer = resync.map(|period| {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    let mut retry_timer = tokio::time::interval(retry);
    retry_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { return };
                if let Err(err) = writer.apply(&update).await {
                    warn!(%err, generation = update.generation, "update not installed; retrying");
                }
            }
            changed = connection.changed() => {
                if changed.is_err() {
                    return;
                }
                let event = *connection.borrow_and_update();
                if event.connected && event.generation != seen_generation {
                    seen_generation = event.generation;
                    info!(connection = event.generation, "OpenFlow reconnected: full sync");
                    writer.reconnected();
                    if let Err(err) = writer.full_sync().await {
                        warn!(%err, "full sync after reconnect failed; retrying");
                    }
                } else if !event.connected {
                    writer.invalidate();
                }
            }
            _ = tick(&mut resync_timer) => {
                debug!("periodic full sync");
                if let Err(err) = writer.full_sync().await {
                    warn!(%err, "periodic full sync failed; retrying");
                }
            }
            _ = retry_timer.tick(), if !writer.in_sync() && writer.latest.is_some() => {
                if let Err(err) = writer.full_sync().await {
                    debug!(%err, "full sync retry failed");
                }
            }
        }
    }
}

/// Every frontend address of the desired state, with its protocol.
pub fn unnatted_frontends(state: &DesiredState) -> Vec<Frontend> {
    let mut out: Vec<Frontend> = state
        .iter()
        .flat_map(|(_, port)| {
            let ip_proto = match port.protocol {
                Protocol::Tcp => 6,
                Protocol::Udp => 17,
                Protocol::Sctp => 132,
            };
            frontend_addresses(port)
                .into_iter()
                .map(move |(ip, port)| Frontend { ip_proto, ip, port })
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Answers packet-ins of rejecting frontends with ICMP port unreachable,
/// at most `per_second` a second (the rest are dropped). Runs until the
/// client is dropped.
pub async fn answer_rejects(client: Client, metrics: Arc<Metrics>, per_second: u32) {
    let mut packet_ins = client.packet_ins();
    let mut window = Instant::now();
    let mut sent_in_window = 0u32;
    loop {
        let packet_in = match packet_ins.recv().await {
            Ok(packet_in) => packet_in,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "reject packet-ins dropped (lagging)");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if packet_in.userdata != REJECT_USERDATA
            || Cookie::from_value(packet_in.cookie).map(|c| c.owner) != Some(Owner::Proxy)
        {
            continue;
        }
        if window.elapsed() >= Duration::from_secs(1) {
            window = Instant::now();
            sent_in_window = 0;
        }
        if sent_in_window >= per_second {
            continue;
        }
        let in_port = packet_in
            .metadata
            .iter()
            .find(|m| m.field == Field::InPort)
            .and_then(|m| u32::try_from(m.value).ok());
        let reply = match reject::icmp_port_unreachable(&packet_in.data) {
            Ok(reply) => reply,
            Err(err) => {
                debug!(%err, "packet not rejected");
                continue;
            }
        };
        sent_in_window += 1;
        let packet_out = PacketOut {
            in_port: port::CONTROLLER,
            actions: reject_actions(in_port),
            data: reply,
        };
        match client.packet_out(packet_out).await {
            Ok(()) => {
                metrics.rejects.inc();
                if let Some((src, dst)) = reject::addresses(&packet_in.data) {
                    debug!(%src, %dst, ?in_port, "rejected: no endpoints");
                }
            }
            Err(err) => warn!(%err, "reject not sent"),
        }
    }
}

/// Where a reject goes: straight out of the client's port when the
/// packet-in names it; otherwise routed by the pipeline like a packet from
/// the node (port kind Gateway, into L3_FORWARDING past conntrack), which
/// reaches local pods, the node and remote clients alike.
pub fn reject_actions(in_port: Option<u32>) -> Vec<Action> {
    match in_port {
        Some(in_port) => vec![Action::Output(in_port)],
        None => vec![
            reg::PORT_KIND.load(PortKind::Gateway),
            table::L3_FORWARDING.resubmit(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_round_trip_through_notes() {
        for name in [
            ServicePortName::new("default", "web", "http", Protocol::Tcp),
            ServicePortName::new("kube-system", "dns", "", Protocol::Udp),
            ServicePortName::new("a", "b", "sctp-1", Protocol::Sctp),
        ] {
            assert_eq!(parse_port_name(&name.to_string()), Some(name));
        }
        assert_eq!(parse_port_name("no-slash"), None);
        assert_eq!(parse_port_name("ns/name:p/ICMP"), None);
        assert_eq!(parse_port_name("/name:p/TCP"), None);
    }

    #[test]
    fn unnatted_frontends_cover_every_port_with_its_protocol() {
        use crate::fixtures::{endpoint, service, slice};
        let dns = service("default", "dns")
            .cluster_ip("10.96.0.10")
            .udp("dns", 53)
            .tcp("dns-tcp", 53)
            .build();
        let dns_slice = slice("default", "dns-1", "dns")
            .udp("dns", 5353)
            .tcp("dns-tcp", 5353)
            .endpoint(endpoint("10.2.0.1").ready(true))
            .build();
        // Without endpoints: its connections are rejected, not committed,
        // but an entry made before the proxy's flows can still exist.
        let web = service("default", "web")
            .cluster_ip("10.96.0.20")
            .tcp("http", 80)
            .build();
        let state = crate::build_desired_state([&dns, &web], [&dns_slice], "node-a");
        let frontends: Vec<(u8, String, u16)> = unnatted_frontends(&state)
            .into_iter()
            .map(|f| (f.ip_proto, f.ip.to_string(), f.port))
            .collect();
        assert_eq!(
            frontends,
            [
                (6, "10.96.0.10".to_owned(), 53),
                (6, "10.96.0.20".to_owned(), 80),
                (17, "10.96.0.10".to_owned(), 53),
            ]
        );
    }

    #[test]
    fn generations_skip_zero_and_the_learned_one() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(0xfd), 0xfe);
        assert_eq!(next_generation(0xfe), 1);
    }
}
