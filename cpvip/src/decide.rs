//! The leader's decision, pure: which nodes the route goes to, or why it is kept as it is.
//!
//! A node is routed when it is (a) ready in the `default/kubernetes` EndpointSlice, (b)
//! reports the VIP on its `lo` with its apiserver healthy, and (c) passes the leader's own
//! `/readyz` probe over verified TLS (the VIP in the certificate's SANs). Fail static: no
//! slice, an empty slice, or no node passing all three keeps the last route (never empty
//! next hops) and says why; while a candidate's probe is still undecided (a new leader) the
//! route is kept too, so a change of leader does not change the route.

use std::collections::BTreeMap;
use std::net::IpAddr;

use switchyard_api::NodeVIPStatus;

use crate::health::State;

/// What the leader knows of one candidate next hop (an apiserver address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node name (from its report; the address when there is none).
    pub node: String,
    /// Ready in the EndpointSlice.
    pub endpoint_ready: bool,
    /// Reports the VIP present and its apiserver healthy (fresh report).
    pub vip_present: bool,
    /// The leader's own probe.
    pub probe: State,
}

/// What to do with the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route to these next hops (never empty).
    Route(Vec<IpAddr>),
    /// Keep the route as it is; `degraded` says whether that is a failure (with its reason)
    /// or waiting for probes to settle.
    Keep {
        /// Condition reason, e.g. `NoEndpointSlice`.
        reason: &'static str,
        /// Human-readable.
        message: String,
        /// True: raise the Degraded condition.
        degraded: bool,
    },
}

/// The decision over `candidates` (keyed by address). `slice_seen`: whether any
/// `default/kubernetes` EndpointSlice exists.
pub fn decide(slice_seen: bool, candidates: &BTreeMap<IpAddr, Candidate>) -> Decision {
    if !slice_seen {
        return Decision::Keep {
            reason: "NoEndpointSlice",
            message: "no EndpointSlice of default/kubernetes: keeping the route as it is".into(),
            degraded: true,
        };
    }
    if !candidates.values().any(|c| c.endpoint_ready) {
        return Decision::Keep {
            reason: "EmptyEndpointSlice",
            message: "no ready endpoint in default/kubernetes: keeping the route as it is".into(),
            degraded: true,
        };
    }
    let pending: Vec<_> = candidates
        .iter()
        .filter(|(_, c)| c.endpoint_ready && c.vip_present && c.probe == State::Unknown)
        .map(|(a, _)| a.to_string())
        .collect();
    if !pending.is_empty() {
        return Decision::Keep {
            reason: "Probing",
            message: format!("waiting for probes of {}", pending.join(", ")),
            degraded: false,
        };
    }
    let hops: Vec<IpAddr> = candidates
        .iter()
        .filter(|(_, c)| c.endpoint_ready && c.vip_present && c.probe == State::Up)
        .map(|(a, _)| *a)
        .collect();
    if hops.is_empty() {
        return Decision::Keep {
            reason: "NoHealthyNode",
            message: "no control-plane node is ready, holds the VIP and passes the probe: keeping the route as it is".into(),
            degraded: true,
        };
    }
    Decision::Route(hops)
}

/// Per-node status rows (`routed`: in `next_hops`).
pub fn node_rows(
    candidates: &BTreeMap<IpAddr, Candidate>,
    next_hops: &[IpAddr],
) -> Vec<NodeVIPStatus> {
    let mut rows: Vec<NodeVIPStatus> = candidates
        .iter()
        .map(|(a, c)| NodeVIPStatus {
            node: c.node.clone(),
            address: a.to_string(),
            endpoint_ready: c.endpoint_ready,
            vip_present: c.vip_present,
            leader_probe: c.probe == State::Up,
            routed: next_hops.contains(a),
        })
        .collect();
    // A next hop on the router that is no candidate any more (still routed).
    for hop in next_hops {
        if !candidates.contains_key(hop) {
            rows.push(NodeVIPStatus {
                node: String::new(),
                address: hop.to_string(),
                routed: true,
                ..Default::default()
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ready: bool, vip: bool, probe: State) -> Candidate {
        Candidate {
            node: "n".into(),
            endpoint_ready: ready,
            vip_present: vip,
            probe,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_only_nodes_passing_all_three() {
        let c = BTreeMap::from([
            (ip("10.0.0.1"), cand(true, true, State::Up)),
            (ip("10.0.0.2"), cand(true, true, State::Down)), // hung: lease still renewed
            (ip("10.0.0.3"), cand(false, true, State::Up)),  // not ready in the slice
            (ip("10.0.0.4"), cand(true, false, State::Up)),  // cannot hold the VIP
        ]);
        assert_eq!(decide(true, &c), Decision::Route(vec![ip("10.0.0.1")]));
        let rows = node_rows(&c, &[ip("10.0.0.1")]);
        assert_eq!(rows.iter().filter(|r| r.routed).count(), 1);
    }

    #[test]
    fn fail_static() {
        let none = BTreeMap::new();
        assert!(matches!(
            decide(false, &none),
            Decision::Keep {
                reason: "NoEndpointSlice",
                degraded: true,
                ..
            }
        ));
        assert!(matches!(
            decide(true, &none),
            Decision::Keep {
                reason: "EmptyEndpointSlice",
                degraded: true,
                ..
            }
        ));
        let down = BTreeMap::from([(ip("10.0.0.1"), cand(true, true, State::Down))]);
        assert!(matches!(
            decide(true, &down),
            Decision::Keep {
                reason: "NoHealthyNode",
                degraded: true,
                ..
            }
        ));
    }

    #[test]
    fn a_new_leader_waits_for_every_probe() {
        let c = BTreeMap::from([
            (ip("10.0.0.1"), cand(true, true, State::Up)),
            (ip("10.0.0.2"), cand(true, true, State::Unknown)),
        ]);
        assert!(matches!(
            decide(true, &c),
            Decision::Keep {
                reason: "Probing",
                degraded: false,
                ..
            }
        ));
    }
}
