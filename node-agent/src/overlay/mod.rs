//! Overlay segments across nodes: the tunnel port `sy-tun0`, one set of
//! flows per remote node (its pod CIDR encapsulated to its InternalIP), and
//! the node's routes to remote pod CIDRs through the gateway.
//!
//! Data flow: kube-rs watchers on Node objects and on the `vlan` segments'
//! allocation objects (`SegmentAddress`) -> the desired set of remote nodes (with their `vlan`
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
//!   allocation objects, watched too): a Service connection to it (the proxy
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
//! Pod traffic between nodes never touches the node kernel, so it is never
//! SNATed (see `egress`). The node's route for the Service CIDR is not the
//! overlay's: see `host_services`.
//!
//! Files: `watch.rs` (the Node and `SegmentAddress` watchers, and what they
//! keep of each object), `flows.rs` (the tunnel's and each remote node's
//! flows), `routes.rs` (the node's routes to remote pod CIDRs), `tunnel.rs`
//! (the `sy-tun0` port and the pod MTU it leaves); here the remote nodes as
//! installed and [`Overlay::apply`].

mod flows;
mod routes;
mod tunnel;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use switchyard_ovs::openflow::{self, Flow, FlowMod};
use switchyard_pipeline::{Cookie, Owner, cookie_object};
use tokio::sync::{Mutex, Notify};

use crate::reserved_port::ReservedPortError;

pub use flows::{node_flows, tunnel_flows};
pub use tunnel::{ENCAP_OVERHEAD, TUNNEL_PORT, ensure_tunnel_port, pod_mtu_from_underlay};
pub use watch::{remote_node, vlan_placements};

// Defined in `next_hop` (which `flows` reads too); re-exported here where
// it was first declared.
pub use crate::next_hop::NEXT_HOP_MAC;

/// Why the overlay could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The tunnel port could not be set up.
    #[error(transparent)]
    Port(#[from] ReservedPortError),
    /// Installing flows failed.
    #[error("installing overlay flows: {0}")]
    Flows(#[from] openflow::Error),
}

/// Another node as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Its InternalIP (tunnel endpoint).
    pub ip: Ipv4Addr,
    /// Addresses of its pods in `vlan` segments (the holders recorded in
    /// the segments' allocation objects): Service connections to them are
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
    /// An overlay for the node `local_node` (never a remote node of itself).
    pub fn new(local_node: &str, openflow: openflow::Client) -> Arc<Overlay> {
        Arc::new(Overlay {
            local_node: local_node.to_string(),
            openflow,
            state: Mutex::new(State::default()),
            routes_changed: Notify::new(),
        })
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
}
