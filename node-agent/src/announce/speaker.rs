//! The node's side of ownership: makes the responder answer for exactly the addresses this
//! node owns, and schedules gratuitous ARPs: a burst ([`GARP_BURST`]) for every address it
//! takes over, for every address it holds after a restart, and for every address it holds
//! when a peer comes back (that peer may have claimed them while it was cut off).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::responder::{AnnounceError, ArpResponder};

/// When the gratuitous ARPs of a burst go out, after its start: the first at once, repeats
/// for a lost packet or a neighbour that was busy.
pub const GARP_BURST: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// What one [`Speaker::sync`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Addresses now answered for.
    pub claimed: Vec<Ipv4Addr>,
    /// Addresses no longer answered for.
    pub released: Vec<Ipv4Addr>,
    /// Failures (retried on the next sync).
    pub errors: Vec<String>,
}

/// The addresses this node answers for, over a responder.
#[derive(Debug)]
pub struct Speaker<R> {
    responder: R,
    held: Option<BTreeSet<Ipv4Addr>>,
    garps: Vec<(Instant, Ipv4Addr)>,
    synced_once: bool,
}

impl<R: ArpResponder> Speaker<R> {
    /// Nothing known yet: the first sync reads what the responder holds (a previous agent's
    /// entries).
    pub fn new(responder: R) -> Speaker<R> {
        Speaker {
            responder,
            held: None,
            garps: Vec::new(),
            synced_once: false,
        }
    }

    /// The responder.
    pub fn responder(&self) -> &R {
        &self.responder
    }

    /// The addresses answered for (empty before the first sync).
    pub fn held(&self) -> BTreeSet<Ipv4Addr> {
        self.held.clone().unwrap_or_default()
    }

    fn burst(&mut self, address: Ipv4Addr, now: Instant) {
        self.garps.retain(|(_, a)| *a != address);
        self.garps
            .extend(GARP_BURST.iter().map(|d| (now + *d, address)));
    }

    /// Schedules a burst for every address held.
    pub fn announce_all(&mut self, now: Instant) {
        for a in self.held() {
            self.burst(a, now);
        }
    }

    /// Forgets what is known, so the next sync reads the responder again (periodic repair of
    /// entries removed behind the agent's back). Announces nothing by itself: a node cut off
    /// from its peers re-announcing its addresses when its link returns would take them from
    /// the node that took over before the others count it alive again.
    pub fn reread(&mut self) {
        self.held = None;
    }

    /// Answers for exactly `want`.
    pub async fn sync(&mut self, want: &BTreeSet<Ipv4Addr>, now: Instant) -> SyncReport {
        let mut report = SyncReport::default();
        let first = !self.synced_once;
        let held = match &self.held {
            Some(h) => h.clone(),
            None => match self.responder.held().await {
                Ok(h) => h,
                Err(e) => {
                    report.errors.push(e.to_string());
                    return report;
                }
            },
        };
        let mut now_held = held.clone();
        for a in want.difference(&held) {
            match self.responder.claim(*a).await {
                Ok(()) => {
                    now_held.insert(*a);
                    report.claimed.push(*a);
                    self.burst(*a, now);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for a in held.difference(want) {
            match self.responder.release(*a).await {
                Ok(()) => {
                    now_held.remove(a);
                    report.released.push(*a);
                    self.garps.retain(|(_, g)| g != a);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if first {
            // After a restart: the addresses kept are announced again.
            for a in held.intersection(want) {
                self.burst(*a, now);
            }
        }
        self.held = Some(now_held);
        self.synced_once = true;
        report
    }

    /// Sends the gratuitous ARPs due at `now`; the errors.
    pub fn send_due(&mut self, now: Instant) -> Vec<AnnounceError> {
        let (due, later): (Vec<_>, Vec<_>) = self.garps.drain(..).partition(|(t, _)| *t <= now);
        self.garps = later;
        due.into_iter()
            .filter_map(|(_, a)| self.responder.gratuitous_arp(a).err())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;

    #[derive(Debug, Default)]
    struct Fake {
        entries: Mutex<BTreeSet<Ipv4Addr>>,
        garps: Mutex<Vec<Ipv4Addr>>,
        fail_claims: bool,
    }

    impl ArpResponder for Fake {
        fn held(&self) -> BoxFuture<'_, Result<BTreeSet<Ipv4Addr>, AnnounceError>> {
            Box::pin(async move { Ok(self.entries.lock().unwrap().clone()) })
        }
        fn claim(&self, a: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>> {
            Box::pin(async move {
                if self.fail_claims {
                    return Err(AnnounceError::NoInterface(a));
                }
                self.entries.lock().unwrap().insert(a);
                Ok(())
            })
        }
        fn release(&self, a: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>> {
            Box::pin(async move {
                self.entries.lock().unwrap().remove(&a);
                Ok(())
            })
        }
        fn gratuitous_arp(&self, a: Ipv4Addr) -> Result<(), AnnounceError> {
            self.garps.lock().unwrap().push(a);
            Ok(())
        }
    }

    fn set(a: &[u8]) -> BTreeSet<Ipv4Addr> {
        a.iter().map(|x| Ipv4Addr::new(10, 0, 0, *x)).collect()
    }

    fn garps(s: &Speaker<Fake>) -> Vec<u8> {
        s.responder()
            .garps
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.octets()[3])
            .collect()
    }

    #[tokio::test]
    async fn takeover_claims_and_sends_a_burst_release_stops_it() {
        let t0 = Instant::now();
        let mut s = Speaker::new(Fake::default());
        let r = s.sync(&set(&[1]), t0).await;
        assert_eq!(r.claimed, set(&[1]).into_iter().collect::<Vec<_>>());
        s.send_due(t0);
        assert_eq!(garps(&s), [1]);
        s.send_due(t0 + Duration::from_millis(499));
        assert_eq!(garps(&s), [1]);
        s.send_due(t0 + Duration::from_secs(5));
        assert_eq!(garps(&s), [1, 1, 1]);
        // Released: no more answers, and a pending burst is dropped.
        let t1 = t0 + Duration::from_secs(10);
        s.sync(&set(&[2]), t1).await;
        s.send_due(t1);
        let r = s.sync(&set(&[]), t1).await;
        assert_eq!(r.released.len(), 1);
        assert!(s.responder().entries.lock().unwrap().is_empty());
        s.send_due(t1 + Duration::from_secs(5));
        assert_eq!(garps(&s), [1, 1, 1, 2]);
    }

    #[tokio::test]
    async fn a_restart_keeps_held_entries_and_announces_them_again() {
        let t0 = Instant::now();
        let fake = Fake::default();
        fake.entries.lock().unwrap().extend(set(&[1, 2]));
        let mut s = Speaker::new(fake);
        let r = s.sync(&set(&[1]), t0).await;
        assert!(r.claimed.is_empty(), "{r:?}");
        assert_eq!(r.released, set(&[2]).into_iter().collect::<Vec<_>>());
        s.send_due(t0);
        assert_eq!(garps(&s), [1]);
        assert_eq!(s.held(), set(&[1]));
        // A periodic re-read announces nothing.
        s.send_due(t0 + Duration::from_secs(5));
        let before = garps(&s).len();
        s.reread();
        s.sync(&set(&[1]), t0 + Duration::from_secs(10)).await;
        s.send_due(t0 + Duration::from_secs(15));
        assert_eq!(garps(&s).len(), before);
    }

    #[tokio::test]
    async fn a_returning_peer_makes_every_held_address_announced() {
        let t0 = Instant::now();
        let mut s = Speaker::new(Fake::default());
        s.sync(&set(&[1, 2]), t0).await;
        s.send_due(t0 + Duration::from_secs(5));
        let before = garps(&s).len();
        s.announce_all(t0 + Duration::from_secs(6));
        s.send_due(t0 + Duration::from_secs(6));
        assert_eq!(garps(&s)[before..], [1, 2]);
    }

    #[tokio::test]
    async fn failed_claims_are_retried_and_reported() {
        let t0 = Instant::now();
        let mut s = Speaker::new(Fake {
            fail_claims: true,
            ..Fake::default()
        });
        let r = s.sync(&set(&[1]), t0).await;
        assert_eq!(r.errors.len(), 1);
        assert!(s.held().is_empty());
        let r = s.sync(&set(&[1]), t0).await;
        assert_eq!(r.errors.len(), 1, "tried again");
        assert!(s.send_due(t0).is_empty());
        assert!(garps(&s).is_empty());
    }
}
