//! Which peer agents are alive, from their heartbeats: a pure state machine per peer, driven
//! by [`Liveness::heard`] (a heartbeat arrived) and [`Liveness::tick`] (time passed).
//!
//! - A peer never heard of is unknown (not alive); its first heartbeat makes it alive at once
//!   (start-up: nobody is "coming back").
//! - Alive, then silent for [`Timing::down_after`]: dead.
//! - Dead, then heard again: rejoining; alive only after heartbeats for
//!   [`Timing::rejoin_after`] without a silence of `down_after`. A link that flaps therefore
//!   moves an address back at most once per `rejoin_after`, and a node that comes back takes
//!   its addresses back only once every other node has seen it steadily.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The timing of heartbeats and of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an agent sends a heartbeat to every peer.
    pub interval: Duration,
    /// Silence after which a peer is dead.
    pub down_after: Duration,
    /// Steady heartbeats a dead peer needs to be alive again.
    pub rejoin_after: Duration,
}

impl Default for Timing {
    /// 200 ms heartbeats, dead after 1 s (5 missed), back after 2 s.
    fn default() -> Self {
        Timing {
            interval: Duration::from_millis(200),
            down_after: Duration::from_secs(1),
            rejoin_after: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    Dead,
    Rejoining { since: Instant },
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    state: State,
    last_heard: Instant,
}

/// A change of a peer's liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Alive: first heard (`returned: false`) or back after being dead (`returned: true`).
    Alive {
        /// The peer.
        node: String,
        /// It had been dead.
        returned: bool,
    },
    /// Silent for `down_after`.
    Died {
        /// The peer.
        node: String,
        /// How long since its last heartbeat.
        silent_for: Duration,
    },
}

/// The liveness of every peer heard of.
#[derive(Debug, Clone)]
pub struct Liveness {
    timing: Timing,
    peers: BTreeMap<String, Peer>,
}

impl Liveness {
    /// No peer known.
    pub fn new(timing: Timing) -> Liveness {
        Liveness {
            timing,
            peers: BTreeMap::new(),
        }
    }

    /// The timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// A heartbeat from `node` arrived at `now`.
    pub fn heard(&mut self, node: &str, now: Instant) -> Option<Change> {
        match self.peers.get_mut(node) {
            None => {
                self.peers.insert(
                    node.to_string(),
                    Peer {
                        state: State::Alive,
                        last_heard: now,
                    },
                );
                Some(Change::Alive {
                    node: node.to_string(),
                    returned: false,
                })
            }
            Some(p) => {
                if p.state == State::Dead {
                    p.state = State::Rejoining { since: now };
                }
                p.last_heard = p.last_heard.max(now);
                None
            }
        }
    }

    /// Moves every peer on to `now`: deaths and returns, in name order.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let t = self.timing;
        let mut out = Vec::new();
        for (name, p) in &mut self.peers {
            let silent_for = now.saturating_duration_since(p.last_heard);
            match p.state {
                State::Alive if silent_for > t.down_after => {
                    p.state = State::Dead;
                    out.push(Change::Died {
                        node: name.clone(),
                        silent_for,
                    });
                }
                State::Rejoining { .. } if silent_for > t.down_after => p.state = State::Dead,
                State::Rejoining { since }
                    if now.saturating_duration_since(since) >= t.rejoin_after =>
                {
                    p.state = State::Alive;
                    out.push(Change::Alive {
                        node: name.clone(),
                        returned: true,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// The peers alive now (as of the last [`Liveness::tick`]).
    pub fn alive(&self) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state == State::Alive)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forgets peers that are no longer Nodes.
    pub fn retain(&mut self, known: impl Fn(&str) -> bool) {
        self.peers.retain(|n, _| known(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn beat(l: &mut Liveness, node: &str, from: Instant, until_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut t = 0;
        while t <= until_ms {
            let now = from + MS * t as u32;
            changes.extend(l.heard(node, now));
            changes.extend(l.tick(now));
            t += 200;
        }
        changes
    }

    #[test]
    fn first_heartbeat_makes_a_peer_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        assert!(l.alive().is_empty());
        assert_eq!(
            l.heard("b", t0),
            Some(Change::Alive {
                node: "b".into(),
                returned: false
            })
        );
        assert_eq!(l.alive(), BTreeSet::from(["b".to_string()]));
        assert_eq!(l.heard("b", t0 + 200 * MS), None);
    }

    #[test]
    fn silence_longer_than_down_after_kills_and_only_once() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.heard("b", t0);
        assert!(
            l.tick(t0 + 1000 * MS).is_empty(),
            "exactly 1 s is not yet dead"
        );
        let died = l.tick(t0 + 1001 * MS);
        assert_eq!(
            died,
            [Change::Died {
                node: "b".into(),
                silent_for: 1001 * MS
            }]
        );
        assert!(l.alive().is_empty());
        assert!(l.tick(t0 + 5000 * MS).is_empty());
    }

    #[test]
    fn a_dead_peer_returns_only_after_steady_heartbeats() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.heard("b", t0);
        l.tick(t0 + 1500 * MS);
        // Heard again at 3 s: rejoining, not alive for 2 s of heartbeats.
        let t1 = t0 + 3000 * MS;
        let changes = beat(&mut l, "b", t1, 1800);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(l.alive().is_empty());
        let changes = beat(&mut l, "b", t1 + 2000 * MS, 0);
        assert_eq!(
            changes,
            [Change::Alive {
                node: "b".into(),
                returned: true
            }]
        );
        assert_eq!(l.alive(), BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn a_flapping_peer_stays_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.heard("b", t0);
        l.tick(t0 + 1500 * MS);
        // Up 1.2 s, down 1.2 s, up 1.2 s ...: never 2 s steady.
        let mut changes = Vec::new();
        for cycle in 0..5u32 {
            let start = t0 + 2000 * MS + 2400 * MS * cycle;
            changes.extend(beat(&mut l, "b", start, 1200));
            changes.extend(l.tick(start + 2400 * MS));
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert!(l.alive().is_empty());
    }

    #[test]
    fn heartbeats_out_of_order_do_not_move_time_back() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.heard("b", t0 + 900 * MS);
        l.heard("b", t0);
        assert!(l.tick(t0 + 1800 * MS).is_empty());
    }

    #[test]
    fn retain_forgets_removed_nodes() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.heard("b", t0);
        l.heard("c", t0);
        l.retain(|n| n == "c");
        assert_eq!(l.alive(), BTreeSet::from(["c".to_string()]));
    }
}
