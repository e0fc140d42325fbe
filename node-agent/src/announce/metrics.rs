//! The L2 announcement's metrics, registered into the agent's registry
//! (`switchyard_agent_lb_l2_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of the announcement task.
#[derive(Debug, Clone, Default)]
pub struct AnnounceMetrics {
    /// Addresses this node answers ARP for now.
    pub addresses: Gauge,
    /// Addresses this node took over (started answering for).
    pub takeovers: Counter,
    /// Addresses this node stopped answering for.
    pub releases: Counter,
    /// Peers alive now (by their heartbeats).
    pub peers_alive: Gauge,
    /// Peers declared dead (silent for the down time).
    pub peer_deaths: Counter,
}

impl AnnounceMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> AnnounceMetrics {
        let m = AnnounceMetrics::default();
        registry.register(
            "lb_l2_addresses",
            "LoadBalancer addresses of L2 pools this node answers ARP for",
            m.addresses.clone(),
        );
        registry.register(
            "lb_l2_takeovers",
            "L2 addresses this node took over",
            m.takeovers.clone(),
        );
        registry.register(
            "lb_l2_releases",
            "L2 addresses this node stopped answering for",
            m.releases.clone(),
        );
        registry.register(
            "lb_l2_peers_alive",
            "Peer agents alive by their heartbeats",
            m.peers_alive.clone(),
        );
        registry.register(
            "lb_l2_peer_deaths",
            "Peer agents declared dead (no heartbeat for 1 s)",
            m.peer_deaths.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_agent_prefix() {
        let mut registry = Registry::with_prefix("switchyard_agent");
        let m = AnnounceMetrics::register(&mut registry);
        m.takeovers.inc();
        m.addresses.set(2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("switchyard_agent_lb_l2_takeovers_total 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_agent_lb_l2_addresses 2"),
            "{text}"
        );
    }
}
