//! The node's routes for Services. The node routes the Service CIDR `via`
//! [`SERVICE_NEXT_HOP`] `dev sy-gw0 onlink` (OVS answers the node's ARP
//! request for it with a base flow, see `flows`), so the node's connections
//! to ClusterIPs enter `br-int` from the gateway port and meet the service
//! proxy's flows; replies are un-DNATed in the pod zone and go back to the
//! gateway address through L3_FORWARDING's miss.
//!
//! The route is kept like the overlay's routes (both through
//! [`gateway::keep_routes`]): applied at start, again after every
//! reconciliation (a restarted vswitchd recreates `sy-gw0` without routes)
//! and every [`gateway::ROUTE_REFRESH`]. NodePort steering, the node's other
//! way into Services, belongs beside it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::{Notify, watch};

use crate::gateway;

pub use crate::next_hop::SERVICE_NEXT_HOP;

/// The node's routes for Services.
#[derive(Debug)]
pub struct HostServices {
    service_cidr: Ipv4Net,
    routes_changed: Notify,
}

impl HostServices {
    /// Routes `service_cidr` (the API server's Service ClusterIP range)
    /// from the node to the bridge.
    pub fn new(service_cidr: Ipv4Net) -> Arc<HostServices> {
        Arc::new(HostServices {
            service_cidr,
            routes_changed: Notify::new(),
        })
    }

    /// The routes the node needs for Services: the Service CIDR via
    /// [`SERVICE_NEXT_HOP`].
    pub fn routes(&self) -> BTreeMap<Ipv4Net, Ipv4Addr> {
        BTreeMap::from([(self.service_cidr, SERVICE_NEXT_HOP)])
    }

    /// After a reconciliation: the gateway may have been recreated, so the
    /// routes are re-applied now rather than at the next refresh.
    pub fn reconciled(&self) {
        self.routes_changed.notify_one();
    }

    /// Keeps the routes in place until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let keep = gateway::keep_routes("the Service CIDR route", &self.routes_changed, || {
            std::future::ready(self.routes())
        });
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            () = keep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_cidr_is_routed_via_the_service_next_hop() {
        let services = HostServices::new("10.96.0.0/12".parse().unwrap());
        assert_eq!(
            services.routes(),
            BTreeMap::from([(
                "10.96.0.0/12".parse().unwrap(),
                Ipv4Addr::new(169, 254, 169, 253)
            )])
        );
    }
}
