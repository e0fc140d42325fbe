//! The node's routes to remote pod CIDRs: each `via` the remote node's
//! gateway address `dev sy-gw0 onlink` (OVS answers the node's ARP request
//! for it with [`NEXT_HOP_MAC`](super::NEXT_HOP_MAC), see `flows.rs`), kept
//! by [`gateway::keep_routes`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::Overlay;
use crate::gateway;

impl Overlay {
    /// Re-applies the routes to remote pod CIDRs whenever nodes change,
    /// after a resync, and every [`gateway::ROUTE_REFRESH`].
    pub(super) async fn keep_routes(self: Arc<Self>) {
        gateway::keep_routes("overlay routes", &self.routes_changed, || self.routes()).await;
    }

    /// Each remote node's pod CIDR with its next hop.
    async fn routes(&self) -> BTreeMap<Ipv4Net, Ipv4Addr> {
        self.nodes()
            .await
            .values()
            .map(|n| (n.pod_cidr, n.next_hop()))
            .collect()
    }
}
