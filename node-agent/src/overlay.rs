//! Overlay segments across nodes: the tunnel port `sy-tun0`, one set of
//! flows per remote node (its pod CIDR encapsulated to its InternalIP), and
//! the node's routes to remote pod CIDRs through the gateway.
//!
//! Data flow: kube-rs watchers on Node objects and on the `vlan` segments'
//! IPAM ConfigMaps -> the desired set of remote nodes (with their `vlan`
//! segment pods) -> [`Overlay::apply`], which changes only the flows
//! (cookie object [`cookie_object::REMOTE_NODE_FIRST`]` + n`, one per node)
//! and routes of nodes that were added, changed or removed.
//!
//! Flows (tables in `switchyard_pipeline`):
//! - CLASSIFIER: IPv4 from `sy-tun0` is marked [`PortKind::Tunnel`] and the
//!   low 12 bits of the tunnel key (the source pod's segment VLAN) go to
//!   reg5, so L2_FORWARDING checks them like a local pod's reg5; a key with
//!   [`tunnel_key::FROM_GATEWAY`] (the remote node itself sent it) is marked
//!   [`PortKind::Gateway`] instead: a node reaches every pod, locally or not.
//! - L3_FORWARDING, per remote node: `nw_dst=<its pod CIDR>` sets `tun_dst`
//!   to its InternalIP and the key from reg5 (or the gateway flag for
//!   packets from the local gateway) and outputs to the tunnel through
//!   reg1/CONNTRACK_COMMIT/OUTPUT like every other destination.
//!   Also per remote node, per address of its `vlan` segment pods (which
//!   node holds which address: the holders in the segments' IPAM
//!   ConfigMaps, watched too): a Service connection to it (the proxy
//!   DNATed it, `ct_mark` SERVICE, not a reply) is tunnelled to that node
//!   with the gateway key, whatever the client, so it never depends on the
//!   fabric routing pod CIDRs or gateway addresses.
//! - CONNTRACK_COMMIT: a new connection from another node's gateway is
//!   committed with `ct_mark` FROM_REMOTE_GATEWAY, so a `vlan` segment
//!   pod's replies to it are routed back through the tunnel (`uplink`).
//! - ARP_RESPONDER, per remote node: the node's ARP request for the fixed
//!   next hop of that node's pod CIDR (its first address, the remote
//!   gateway) is answered with [`NEXT_HOP_MAC`]; the node routes the remote
//!   pod CIDR `via <that address> dev sy-gw0 onlink`. Replies to the node
//!   come back through the tunnel to the node's gateway address and reach
//!   the gateway port through L3_FORWARDING's miss flow.
//!
//! - The Service CIDR: the node routes it `via` [`SERVICE_NEXT_HOP`] `dev
//!   sy-gw0 onlink` the same way (ARP answered by a base flow), so the
//!   node's connections to ClusterIPs enter `br-int` from the gateway port
//!   and meet the service proxy's flows; replies are un-DNATed in the pod
//!   zone and go back to the gateway address through L3_FORWARDING's miss.
//!
//! Pod traffic between nodes never touches the node kernel, so it is never
//! SNATed (see `egress`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::runtime::watcher;
use switchyard_ovs::openflow::{self, Action, Ct, Field, Flow, FlowMod, MatchField, ct_state};
use switchyard_ovs::ovsdb::{self, PortSpec};
use switchyard_pipeline::table::{self, Table};
use switchyard_pipeline::{
    Cookie, Owner, PortKind, Priority, cookie_object, ct_mark, ofport, priority, reg, tunnel_key,
    zone,
};
use tokio::sync::{Mutex, Notify, watch};

use crate::config::TunnelType;
use crate::flows::{self, ETH_TYPE_ARP, ETH_TYPE_IP, cookie};
use crate::gateway::GATEWAY_PORT;
use crate::netns::Netlink;
use crate::reserved_port::{Found, Ofport, ReservedPort, ReservedPortError, Step};
use crate::vlan_pool::IPAM_NAMESPACE;

// Defined in `next_hop` (which `flows` reads too); re-exported here where
// they were first declared.
pub use crate::next_hop::{NEXT_HOP_MAC, SERVICE_NEXT_HOP};

/// Name of the flow-based tunnel port on the bridge.
pub const TUNNEL_PORT: &str = "sy-tun0";
/// Bytes Geneve (without options) or VXLAN add to an inner Ethernet frame
/// over IPv4: outer IPv4 20 + UDP 8 + tunnel header 8 + inner Ethernet 14.
pub const ENCAP_OVERHEAD: u32 = 50;
/// How often routes are re-applied even without a change (a restarted
/// vswitchd recreates the gateway device without them).
const ROUTE_REFRESH: Duration = Duration::from_secs(10);
/// Route protocol number marking the agent's routes (`ip route` shows
/// `proto 0x53`); only routes with it are ever deleted.
const ROUTE_PROTOCOL: u8 = 0x53;

/// Why the overlay could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The tunnel port could not be set up.
    #[error(transparent)]
    Port(#[from] ReservedPortError),
    /// Installing flows failed.
    #[error("installing overlay flows: {0}")]
    Flows(#[from] openflow::Error),
    /// A route could not be changed.
    #[error("{what}: {source}")]
    Route {
        /// What was done.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
}

/// Another node as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Its InternalIP (tunnel endpoint).
    pub ip: Ipv4Addr,
    /// Addresses of its pods in `vlan` segments (the holders recorded in
    /// the segments' IPAM ConfigMaps): Service connections to them are
    /// tunnelled to it.
    pub vlan_pods: BTreeSet<Ipv4Addr>,
}

impl RemoteNode {
    /// The fixed next hop the node routes this pod CIDR through: its first
    /// address (the remote node's gateway address).
    pub fn next_hop(&self) -> Ipv4Addr {
        crate::gateway::gateway_address(self.pod_cidr)
    }
}

/// A Node object's pod CIDR and InternalIP, when it has both.
pub fn remote_node(node: &Node) -> Option<RemoteNode> {
    let spec = node.spec.as_ref()?;
    let pod_cidr = spec
        .pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find_map(|c| c.parse::<Ipv4Net>().ok())?
        .trunc();
    let ip = internal_ip(node)?;
    Some(RemoteNode {
        pod_cidr,
        ip,
        vlan_pods: BTreeSet::new(),
    })
}

/// Which node holds each address of a `vlan` segment, from one of the
/// segments' IPAM ConfigMaps (`None` for any other ConfigMap).
pub fn vlan_placements(cm: &ConfigMap) -> Option<BTreeMap<Ipv4Addr, String>> {
    cm.metadata
        .name
        .as_deref()?
        .strip_prefix(crate::vlan_pool::CONFIGMAP_PREFIX)?;
    Some(
        cm.data
            .iter()
            .flatten()
            .filter_map(|(addr, holder)| {
                let (node, _) = crate::vlan_pool::parse_holder(holder)?;
                Some((addr.parse().ok()?, node))
            })
            .collect(),
    )
}

/// `nodes` with the `vlan` segment pods of `placements` (per ConfigMap)
/// filled in.
fn with_vlan_pods(
    nodes: &BTreeMap<String, RemoteNode>,
    placements: &BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
) -> BTreeMap<String, RemoteNode> {
    let mut out = nodes.clone();
    for (addr, node) in placements.values().flatten() {
        if let Some(n) = out.get_mut(node) {
            n.vlan_pods.insert(*addr);
        }
    }
    out
}

/// A Node object's first IPv4 InternalIP (the tunnel endpoint).
fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// The tunnel's own flows: classification of packets from `sy-tun0` and
/// output to it.
pub fn tunnel_flows(generation: u8) -> Vec<Flow> {
    let c = cookie(generation, cookie_object::TUNNEL);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    vec![
        f(table::CLASSIFIER, priority::SPECIFIC)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .action(reg::PORT_KIND.load(PortKind::Tunnel))
            .action(Action::Move {
                src: tunnel_key::vlan(),
                dst: reg::SEGMENT_VLAN_ID.subfield(),
            })
            .action(table::CONNTRACK.goto()),
        f(table::CLASSIFIER, priority::EXCEPTION)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(tunnel_key::matching_from_gateway())
            .action(reg::PORT_KIND.load(PortKind::Gateway))
            .action(table::CONNTRACK.goto()),
        // A new connection from another node's gateway is committed with
        // ct_mark FROM_REMOTE_GATEWAY: a `vlan` segment pod's replies to it
        // are routed back through the tunnel, not switched to the fabric.
        f(table::CONNTRACK_COMMIT, priority::SPECIFIC)
            .matching(MatchField::in_port(ofport::TUNNEL))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .matching(MatchField::ct_state(
                ct_state::NEW | ct_state::TRK,
                ct_state::NEW | ct_state::TRK,
            ))
            .matching(ct_mark::SERVICE.matching_clear())
            .action(Action::Ct(Ct {
                commit: true,
                zone: zone::POD.ct(),
                exec: vec![ct_mark::FROM_REMOTE_GATEWAY.set()],
                ..Ct::default()
            }))
            .action(table::CONNTRACK_COMMIT.next().goto()),
        f(table::OUTPUT, priority::SPECIFIC)
            .matching(reg::OUTPUT_PORT.matching(ofport::TUNNEL))
            .action(Action::Output(ofport::TUNNEL)),
    ]
}

/// The flows of one remote node under cookie object `object`.
pub fn node_flows(generation: u8, object: u32, node: &RemoteNode) -> Vec<Flow> {
    let c = cookie(generation, object);
    let f = |t: Table, p: Priority| t.flow(p).cookie(c);
    let to_tunnel = |flow: Flow| {
        flow.matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(
                node.pod_cidr.network(),
                node.pod_cidr.prefix_len(),
            ))
            .action(Action::set_field(
                Field::TunDst,
                u128::from(u32::from(node.ip)),
            ))
    };
    vec![
        // From a pod: the key carries its segment VLAN.
        to_tunnel(f(table::L3_FORWARDING, priority::NORMAL))
            .action(Action::Move {
                src: reg::SEGMENT_VLAN.subfield(),
                dst: tunnel_key::key(),
            })
            .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
            .action(table::CONNTRACK_COMMIT.goto()),
        // From this node (its gateway): the key says so.
        to_tunnel(f(table::L3_FORWARDING, priority::REMOTE_NODE_FROM_GATEWAY))
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .action(tunnel_key::set_from_gateway())
            .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
            .action(table::CONNTRACK_COMMIT.goto()),
        Flow {
            actions: flows::arp_reply_actions(NEXT_HOP_MAC),
            ..f(table::ARP_RESPONDER, priority::SPECIFIC)
                .matching(MatchField::eth_type(ETH_TYPE_ARP))
                .matching(reg::PORT_KIND.matching(PortKind::Gateway))
                .matching(MatchField::arp_op(flows::ARP_REQUEST))
                .matching(MatchField::arp_tpa(node.next_hop()))
        },
    ]
    .into_iter()
    // A Service connection (the proxy DNATed it, not a reply) to one of its
    // `vlan` segment pods, from any client: tunnelled to it as this node's
    // own traffic; it delivers the packet to the pod and routes the replies
    // back (ct_mark FROM_REMOTE_GATEWAY, see `tunnel_flows` and `uplink`).
    .chain(node.vlan_pods.iter().map(|addr| {
        f(
            table::L3_FORWARDING,
            priority::SERVICE_TO_REMOTE_SEGMENT_POD,
        )
        .matching(MatchField::eth_type(ETH_TYPE_IP))
        .matching(MatchField::ipv4_dst(*addr, 32))
        .matching(MatchField::ct_state(
            ct_state::TRK,
            ct_state::TRK | ct_state::RPL,
        ))
        .matching(ct_mark::SERVICE.matching())
        .action(Action::set_field(
            Field::TunDst,
            u128::from(u32::from(node.ip)),
        ))
        .action(tunnel_key::set_from_gateway())
        .action(reg::OUTPUT_PORT.load(ofport::TUNNEL))
        .action(table::CONNTRACK_COMMIT.goto())
    }))
    .collect()
}

/// Creates `sy-tun0` (flow-based `remote_ip` and key, `ofport_request`
/// [`ofport::TUNNEL`]) or replaces it when its type differs.
pub async fn ensure_tunnel_port(
    ovsdb: &ovsdb::Client,
    bridge: &str,
    tunnel: TunnelType,
) -> Result<(), OverlayError> {
    let kind = match tunnel {
        TunnelType::Geneve => "geneve",
        TunnelType::Vxlan => "vxlan",
    };
    let port = ReservedPort {
        role: "tunnel port",
        spec: PortSpec::new(TUNNEL_PORT)
            .with_type(kind)
            .with_option("remote_ip", "flow")
            .with_option("key", "flow")
            .with_external_id(crate::attachment::KEY_OWNER, "switchyard-agent-tunnel"),
        ofport: Ofport::Pinned(ofport::TUNNEL),
    };
    let existing = ovsdb
        .interface(TUNNEL_PORT)
        .await
        .map_err(port.error(Step::Read))?;
    let found = Found::of(existing.as_ref(), |i| {
        i.interface_type == kind
            && port
                .spec
                .options
                .iter()
                .all(|(key, value)| i.options.get(key) == Some(value))
    });
    if found == Found::Different {
        tracing::info!(port = TUNNEL_PORT, kind, "replacing the tunnel port");
    }
    port.ensure(ovsdb, bridge, found).await?;
    Ok(())
}

/// One event of the overlay's two watches (boxed: a Node is large).
enum Watched {
    Node(Box<Result<Option<watcher::Event<Node>>, watcher::Error>>),
    Ipam(Box<Result<Option<watcher::Event<ConfigMap>>, watcher::Error>>),
}

/// Applies one watch event to `known` (what `extract` keeps of each object,
/// by name), `listing` holding a re-list in progress; whether `known`
/// changed (always after a re-list).
fn fold_event<K: kube::Resource, V: PartialEq>(
    event: watcher::Event<K>,
    listing: &mut Option<BTreeMap<String, V>>,
    known: &mut BTreeMap<String, V>,
    extract: impl Fn(&K) -> Option<V>,
) -> bool {
    match event {
        watcher::Event::Init => {
            *listing = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(object) => {
            if let (Some(l), Some(name), Some(v)) = (
                listing.as_mut(),
                object.meta().name.clone(),
                extract(&object),
            ) {
                l.insert(name, v);
            }
            false
        }
        watcher::Event::InitDone => {
            *known = listing.take().unwrap_or_default();
            true
        }
        watcher::Event::Apply(object) => {
            let Some(name) = object.meta().name.clone() else {
                return false;
            };
            match extract(&object) {
                Some(v) if known.get(&name) == Some(&v) => false,
                Some(v) => {
                    known.insert(name, v);
                    true
                }
                None => known.remove(&name).is_some(),
            }
        }
        watcher::Event::Delete(object) => object
            .meta()
            .name
            .as_ref()
            .is_some_and(|n| known.remove(n).is_some()),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Cookie generation of the agent's flows (set by the full resync).
    generation: Option<u8>,
    /// Remote nodes with their cookie object, as installed.
    nodes: BTreeMap<String, (RemoteNode, u32)>,
}

/// The overlay's remote nodes, flows and routes.
#[derive(Debug)]
pub struct Overlay {
    local_node: String,
    service_cidr: Ipv4Net,
    openflow: openflow::Client,
    state: Mutex<State>,
    routes_changed: Notify,
}

/// Held by the agent's full flow resync: the overlay changes nothing while
/// it exists, and learns the new generation from it.
#[derive(Debug)]
pub struct ResyncGuard<'a> {
    state: tokio::sync::MutexGuard<'a, State>,
    overlay: &'a Overlay,
}

impl ResyncGuard<'_> {
    /// Every overlay flow under `generation`.
    pub fn flows(&self, generation: u8) -> Vec<Flow> {
        let mut out = tunnel_flows(generation);
        for (node, object) in self.state.nodes.values() {
            out.extend(node_flows(generation, *object, node));
        }
        out
    }

    /// The resync committed `generation`.
    pub fn installed(mut self, generation: u8) {
        self.state.generation = Some(generation);
        // The gateway may have been recreated: re-apply routes.
        self.overlay.routes_changed.notify_one();
    }
}

impl Overlay {
    /// An overlay for the node `local_node` (never a remote node of itself),
    /// which also routes `service_cidr` from the node to the bridge.
    pub fn new(
        local_node: &str,
        service_cidr: Ipv4Net,
        openflow: openflow::Client,
    ) -> Arc<Overlay> {
        Arc::new(Overlay {
            local_node: local_node.to_string(),
            service_cidr,
            openflow,
            state: Mutex::new(State::default()),
            routes_changed: Notify::new(),
        })
    }

    /// Learns the remote nodes from one Node list before the agent's first
    /// full flow resync, so that a restarted agent installs its new flow
    /// generation with the overlay flows already in it. Without this, the
    /// resync deletes the previous generation (and with it every path to the
    /// other nodes) until the Node watch catches up a few milliseconds later.
    /// A failed list is logged and left to the watch.
    pub async fn seed(&self, client: kube::Client) {
        let node_api: Api<Node> = Api::all(client.clone());
        let nodes = match node_api.list(&Default::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing Nodes before the first resync failed; the watch will add them");
                return;
            }
        };
        let desired: BTreeMap<String, RemoteNode> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, remote_node(n)?)))
            .collect();
        let ipam_api: Api<ConfigMap> = Api::namespaced(client, IPAM_NAMESPACE);
        let listed = ipam_api.list(&Default::default()).await;
        let placements: BTreeMap<String, BTreeMap<Ipv4Addr, String>> = match listed {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|cm| Some((cm.metadata.name.clone()?, vlan_placements(cm)?)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing the vlan segments' IPAM ConfigMaps before the first resync failed; the watch will add their pods");
                BTreeMap::new()
            }
        };
        if let Err(e) = self.apply(with_vlan_pods(&desired, &placements)).await {
            tracing::warn!(error = %e, "recording remote nodes failed; the watch will add them");
        }
    }

    /// Locks the overlay for a full flow resync.
    pub async fn lock_for_resync(&self) -> ResyncGuard<'_> {
        ResyncGuard {
            state: self.state.lock().await,
            overlay: self,
        }
    }

    /// The remote nodes as installed now.
    pub async fn nodes(&self) -> BTreeMap<String, RemoteNode> {
        self.state
            .lock()
            .await
            .nodes
            .iter()
            .map(|(k, (n, _))| (k.clone(), n.clone()))
            .collect()
    }

    /// Makes the installed remote nodes equal `desired`, changing only the
    /// flows of nodes that were added, changed or removed (one bundle).
    pub async fn apply(
        &self,
        mut desired: BTreeMap<String, RemoteNode>,
    ) -> Result<(), openflow::Error> {
        desired.remove(&self.local_node);
        let mut state = self.state.lock().await;
        let generation = state.generation;
        let mut mods = Vec::new();
        let mut removed = Vec::new();
        for (name, (node, object)) in &state.nodes {
            if desired.get(name) != Some(node) {
                let (c, m) = Cookie::object_mask(Owner::Agent, *object);
                mods.push(FlowMod::delete_cookie(c, m));
                removed.push(name.clone());
            }
        }
        let mut changes = Vec::new();
        for name in &removed {
            if let Some((node, object)) = state.nodes.remove(name) {
                changes.push((name.clone(), node, object));
            }
        }
        let used: BTreeSet<u32> = state.nodes.values().map(|(_, o)| *o).collect();
        let mut next_free = (cookie_object::REMOTE_NODE_FIRST..).filter(|o| !used.contains(o));
        let mut added = Vec::new();
        for (name, node) in &desired {
            if state.nodes.contains_key(name) {
                continue;
            }
            let object = changes
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, o)| *o)
                .or_else(|| next_free.next())
                .unwrap_or(cookie_object::REMOTE_NODE_FIRST);
            if let Some(g) = generation {
                mods.extend(node_flows(g, object, node).into_iter().map(FlowMod::add));
            }
            added.push((name.clone(), node.clone(), object));
        }
        if changes.is_empty() && added.is_empty() {
            return Ok(());
        }
        if generation.is_some() && !mods.is_empty() {
            self.openflow.bundle_flow_mods(mods).await?;
        }
        for (name, node, object) in added {
            tracing::info!(node = %name, pod_cidr = %node.pod_cidr, ip = %node.ip, "remote node installed");
            state.nodes.insert(name, (node, object));
        }
        for (name, old, _) in &changes {
            if !state.nodes.contains_key(name) {
                tracing::info!(node = %name, pod_cidr = %old.pod_cidr, "remote node removed");
            }
        }
        drop(state);
        self.routes_changed.notify_one();
        Ok(())
    }

    /// Watches Node objects and the `vlan` segments' IPAM ConfigMaps until
    /// `stop`, applying every change; keeps the node's routes to remote pod
    /// CIDRs in line meanwhile.
    pub async fn run(self: Arc<Self>, client: kube::Client, mut stop: watch::Receiver<bool>) {
        let routes = tokio::spawn(self.clone().keep_routes());
        let config = watcher::Config::default();
        let mut node_events = watcher(Api::<Node>::all(client.clone()), config.clone()).boxed();
        let mut ipam_events =
            watcher(Api::<ConfigMap>::namespaced(client, IPAM_NAMESPACE), config).boxed();
        let mut known: BTreeMap<String, RemoteNode> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, RemoteNode>> = None;
        let mut placements: BTreeMap<String, BTreeMap<Ipv4Addr, String>> = BTreeMap::new();
        let mut placements_listing = None;
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                ev = node_events.try_next() => Watched::Node(Box::new(ev)),
                ev = ipam_events.try_next() => Watched::Ipam(Box::new(ev)),
            };
            let (what, failed) = match event {
                Watched::Node(ev) => match *ev {
                    Ok(None) => break,
                    Err(e) => ("Nodes", e),
                    Ok(Some(ev)) => {
                        if fold_event(ev, &mut listing, &mut known, remote_node) {
                            self.apply_until_done(with_vlan_pods(&known, &placements), &mut stop)
                                .await;
                        }
                        continue;
                    }
                },
                Watched::Ipam(ev) => match *ev {
                    Ok(None) => break,
                    Err(e) => ("the vlan segments' IPAM ConfigMaps", e),
                    Ok(Some(ev)) => {
                        let placements_listing = &mut placements_listing;
                        if fold_event(ev, placements_listing, &mut placements, vlan_placements) {
                            self.apply_until_done(with_vlan_pods(&known, &placements), &mut stop)
                                .await;
                        }
                        continue;
                    }
                },
            };
            tracing::warn!(error = %failed, "watching {what} failed; retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        routes.abort();
    }

    /// [`Overlay::apply`], retried until it works or `stop`; a full resync
    /// would also pick the nodes up, but only after a reconnect.
    async fn apply_until_done(
        &self,
        desired: BTreeMap<String, RemoteNode>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut attempt = 0u32;
        while let Err(e) = self.apply(desired.clone()).await {
            attempt += 1;
            tracing::warn!(error = %e, attempt, "updating overlay flows failed; retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Re-applies the routes (remote pod CIDRs and the Service CIDR)
    /// whenever nodes change, after a resync, and every [`ROUTE_REFRESH`].
    async fn keep_routes(self: Arc<Self>) {
        let netlink = match Netlink::current() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot open netlink for overlay routes");
                return;
            }
        };
        let mut installed: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
        loop {
            let wanted: BTreeMap<Ipv4Net, Ipv4Addr> = self
                .nodes()
                .await
                .values()
                .map(|n| (n.pod_cidr, n.next_hop()))
                .chain([(self.service_cidr, SERVICE_NEXT_HOP)])
                .collect();
            match sync_routes(&netlink, &wanted, &installed).await {
                Ok(()) => installed = wanted,
                Err(e) => tracing::warn!(error = %e, "overlay routes not in place yet"),
            }
            tokio::select! {
                () = self.routes_changed.notified() => {}
                () = tokio::time::sleep(ROUTE_REFRESH) => {}
            }
        }
    }
}

/// The pod MTU the underlay allows: the MTU of the interface holding this
/// node's InternalIP (the tunnel endpoint) minus [`ENCAP_OVERHEAD`]; `None`
/// when the Node has no InternalIP or no local interface holds it.
pub async fn pod_mtu_from_underlay(
    client: kube::Client,
    node_name: &str,
    netlink: &Netlink,
) -> Option<u32> {
    let nodes: Api<Node> = Api::all(client);
    let node = tokio::time::timeout(Duration::from_secs(10), nodes.get(node_name))
        .await
        .ok()?
        .ok()?;
    let ip = internal_ip(&node)?;
    let mut addresses = netlink.handle().address().get().execute();
    let mut index = None;
    while let Ok(Some(msg)) = addresses.try_next().await {
        let holds = msg.attributes.iter().any(|a| {
            matches!(a, netlink_packet_route::address::AddressAttribute::Local(std::net::IpAddr::V4(v))
                | netlink_packet_route::address::AddressAttribute::Address(std::net::IpAddr::V4(v)) if *v == ip)
        });
        if holds {
            index = Some(msg.header.index);
            break;
        }
    }
    let link = netlink
        .handle()
        .link()
        .get()
        .match_index(index?)
        .execute()
        .try_next()
        .await
        .ok()??;
    let mtu = link.attributes.iter().find_map(|a| match a {
        netlink_packet_route::link::LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })?;
    tracing::info!(%ip, underlay_mtu = mtu, pod_mtu = mtu.saturating_sub(ENCAP_OVERHEAD), "pod MTU from the underlay");
    Some(mtu.saturating_sub(ENCAP_OVERHEAD))
}

/// Routes each wanted CIDR `via <next hop> dev sy-gw0 onlink` (replace, so
/// re-applying is harmless) and deletes routes of CIDRs no longer wanted.
async fn sync_routes(
    netlink: &Netlink,
    wanted: &BTreeMap<Ipv4Net, Ipv4Addr>,
    installed: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> Result<(), OverlayError> {
    let link = netlink
        .link_by_name(GATEWAY_PORT)
        .await
        .map_err(|source| OverlayError::Route {
            what: format!("looking up {GATEWAY_PORT}"),
            source,
        })?;
    let Some(link) = link else {
        return Ok(());
    };
    let index = link.header.index;
    let message = |cidr: &Ipv4Net, via: Ipv4Addr| {
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(via)
            .output_interface(index)
            .protocol(netlink_packet_route::route::RouteProtocol::Other(
                ROUTE_PROTOCOL,
            ))
            .onlink()
            .build()
    };
    for (cidr, via) in installed {
        if wanted.get(cidr) != Some(via) {
            match netlink
                .handle()
                .route()
                .del(message(cidr, *via))
                .execute()
                .await
            {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m))
                    if m.to_io().raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(OverlayError::Route {
                        what: format!("deleting the route to {cidr}"),
                        source,
                    });
                }
            }
        }
    }
    for (cidr, via) in wanted {
        netlink
            .handle()
            .route()
            .add(message(cidr, *via))
            .replace()
            .execute()
            .await
            .map_err(|source| OverlayError::Route {
                what: format!("routing {cidr} via {via} dev {GATEWAY_PORT}"),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> RemoteNode {
        RemoteNode {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            ip: "192.168.100.2".parse().unwrap(),
            vlan_pods: BTreeSet::new(),
        }
    }

    #[test]
    fn node_flows_golden() {
        let text: Vec<String> = node_flows(3, cookie_object::REMOTE_NODE_FIRST + 1, &node())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        for line in &text {
            assert!(line.contains("cookie=0x5359010300020001"), "{line}");
        }
        assert!(text[0].contains("nw_dst=10.244.1.0/24"), "{}", text[0]);
        assert!(
            text[0].contains("set_field:192.168.100.2->tun_dst"),
            "{}",
            text[0]
        );
        assert!(
            text[0].contains("move:NXM_NX_REG5[]->NXM_NX_TUN_ID[0..31]"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("set_field:0x1000->tun_id"), "{}", text[1]);
        assert!(text[2].contains("arp_tpa=10.244.1.1"), "{}", text[2]);
    }

    #[test]
    fn tunnel_flows_classify_the_key() {
        let text: Vec<String> = tunnel_flows(1).iter().map(ToString::to_string).collect();
        assert!(text[0].contains("in_port=1"), "{}", text[0]);
        assert!(
            text[0].contains("move:NXM_NX_TUN_ID[0..11]->NXM_NX_REG5[0..11]"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("tun_id=0x1000/0x1000"), "{}", text[1]);
        assert_eq!(
            text[2],
            "table=60,cookie=0x5359010100010000,priority=200,ip,in_port=1,reg0=0x2/0xf,ct_state=+new+trk,ct_mark=0x0/0x1 actions=ct(commit,zone=65520,exec(set_field:0x4->ct_mark)),goto_table:70"
        );
        assert!(text[3].contains("output:1"), "{}", text[3]);
    }

    #[test]
    fn service_connections_to_a_remote_nodes_vlan_pods_are_tunnelled_to_it() {
        let mut n = node();
        n.vlan_pods.insert("10.100.0.7".parse().unwrap());
        let text: Vec<String> = node_flows(3, cookie_object::REMOTE_NODE_FIRST + 1, &n)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert_eq!(
            text[3],
            "table=40,cookie=0x5359010300020001,priority=256,ip,nw_dst=10.100.0.7,ct_state=-rpl+trk,ct_mark=0x1/0x1 actions=set_field:192.168.100.2->tun_dst,set_field:0x1000->tun_id,set_field:0x1->reg1,goto_table:60"
        );
    }

    #[test]
    fn vlan_pods_come_from_the_ipam_configmaps_holders() {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "switchyard-ipam-vlan100", "namespace": "switchyard-system"},
            "data": {
                "10.100.0.7": "n2/c1/eth0",
                "10.100.0.8": "n3/c2/eth0",
                "10.100.0.9": "n1/c3/eth0",
                "not-an-address": "n2/c4/eth0",
                "10.100.0.10": "malformed"
            }
        }))
        .unwrap();
        let placements = vlan_placements(&cm).unwrap();
        assert_eq!(placements.len(), 3, "{placements:?}");
        let other: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "switchyard-config"}, "data": {"10.1.1.1": "n2/c/eth0"}
        }))
        .unwrap();
        assert_eq!(vlan_placements(&other), None);
        let nodes = BTreeMap::from([("n2".to_string(), node())]);
        let both = with_vlan_pods(&nodes, &BTreeMap::from([("cm".to_string(), placements)]));
        assert_eq!(both.len(), 1, "nodes not known stay unknown: {both:?}");
        assert_eq!(
            both["n2"].vlan_pods,
            BTreeSet::from(["10.100.0.7".parse().unwrap()])
        );
    }

    #[test]
    fn remote_node_needs_cidr_and_internal_ip() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n2"},
                {"type": "InternalIP", "address": "192.168.100.2"}
            ]}
        }))
        .unwrap();
        assert_eq!(remote_node(&n), Some(node()));
        let no_ip: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.1.0/24"}
        }))
        .unwrap();
        assert_eq!(remote_node(&no_ip), None);
        assert_eq!(node().next_hop(), "10.244.1.1".parse::<Ipv4Addr>().unwrap());
    }
}
