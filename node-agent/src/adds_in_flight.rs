//! Which ADDs a CNI GC cannot know about.
//!
//! The runtime computes a GC's valid-attachments list from the ADDs that
//! have returned, so the list cannot name an attachment whose ADD is still
//! running, nor one whose ADD returned after the GC was issued. Such an
//! attachment must survive the GC: an ADD allocates its `vlan` segment
//! address cluster-wide (its `SegmentAddress` object) a moment before it records it in
//! the node's local pool, and a GC that listed the objects in that gap used
//! to release the address of a pod that was then started with it (and a GC
//! waiting for an attachment's lock used to tear down the pod the ADD had
//! just finished).
//!
//! The mechanism: every ADD holds an [`AddInFlight`] from the moment it has
//! its attachment's lock (before any allocation) until just before it lets
//! the lock go (after its local record); when it ends while a GC runs, the
//! tracker notes the end on its logical clock. A GC takes a [`GcView`]
//! first; [`GcView::protects`] is true for a key whose ADD is in flight now
//! or ended after the view was taken. The GC skips those keys when tearing
//! down, and asks the view (then the live local pools) for each allocation
//! object after listing them, so an object it reads was
//! either created by an ADD still in flight (protected) or by one that has
//! already recorded it locally (kept). The ends are only noted while a GC
//! runs and forgotten when the last GC ends, so the tracker holds nothing
//! between GCs but the ADDs in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ipam::AttachmentKey;

#[derive(Debug, Default)]
struct State {
    /// Logical clock: ticks at each GC start and each ADD end.
    clock: u64,
    /// ADDs running, per key (a count: ADDs of one key are serialised by its
    /// lock, but the count keeps the bookkeeping exact regardless).
    in_flight: HashMap<AttachmentKey, usize>,
    /// When each ADD that ended while a GC ran ended.
    ended: HashMap<AttachmentKey, u64>,
    /// GCs running.
    gcs: usize,
}

/// The ADDs in flight and those that ended while a GC ran.
#[derive(Debug, Default, Clone)]
pub struct AddsInFlight {
    state: Arc<Mutex<State>>,
}

/// Marks one ADD in flight until dropped.
#[derive(Debug)]
pub struct AddInFlight {
    key: AttachmentKey,
    state: Arc<Mutex<State>>,
}

/// A GC's view: which keys it must leave alone.
#[derive(Debug)]
pub struct GcView {
    since: u64,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AddsInFlight {
    /// Marks an ADD of `key` in flight (call with its lock held, before it
    /// allocates anything; drop before the lock).
    pub fn begin_add(&self, key: &AttachmentKey) -> AddInFlight {
        *lock(&self.state).in_flight.entry(key.clone()).or_default() += 1;
        AddInFlight {
            key: key.clone(),
            state: self.state.clone(),
        }
    }

    /// Starts a GC's view (take it before looking at anything to collect).
    pub fn begin_gc(&self) -> GcView {
        let mut s = lock(&self.state);
        s.gcs += 1;
        s.clock += 1;
        GcView {
            since: s.clock,
            state: self.state.clone(),
        }
    }

    /// Number of keys with an ADD in flight or a noted end (for tests).
    pub fn len(&self) -> usize {
        let s = lock(&self.state);
        s.in_flight.len() + s.ended.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for AddInFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(n) = s.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.in_flight.remove(&self.key);
            }
        }
        s.clock += 1;
        if s.gcs > 0 {
            let now = s.clock;
            s.ended.insert(self.key.clone(), now);
        }
    }
}

impl GcView {
    /// Whether an ADD of `key` is in flight or ended after this view was
    /// taken: the runtime's valid list cannot account for it.
    pub fn protects(&self, key: &AttachmentKey) -> bool {
        let s = lock(&self.state);
        s.in_flight.contains_key(key) || s.ended.get(key).is_some_and(|&t| t > self.since)
    }
}

impl Drop for GcView {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.gcs -= 1;
        if s.gcs == 0 {
            s.ended.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gc_protects_adds_in_flight_and_those_ending_after_it_started() {
        let adds = AddsInFlight::default();
        let before = AttachmentKey::new("before", "eth0");
        let running = AttachmentKey::new("running", "eth0");
        let later = AttachmentKey::new("later", "eth0");
        // An ADD that returned before the GC: the runtime's list decides.
        drop(adds.begin_add(&before));
        let running_add = adds.begin_add(&running);
        let gc = adds.begin_gc();
        assert!(!gc.protects(&before));
        assert!(gc.protects(&running));
        assert!(!gc.protects(&later));
        // Ending while the GC runs keeps it protected.
        drop(running_add);
        assert!(gc.protects(&running));
        // An ADD that starts and ends during the GC too.
        let later_add = adds.begin_add(&later);
        assert!(gc.protects(&later));
        drop(later_add);
        assert!(gc.protects(&later));
        // A GC started after those ends leaves them to its list.
        let next = adds.begin_gc();
        assert!(!next.protects(&running) && !next.protects(&later));
        assert!(gc.protects(&later));
        drop(gc);
        drop(next);
        assert!(adds.is_empty());
    }

    #[test]
    fn ends_without_a_gc_are_not_kept() {
        let adds = AddsInFlight::default();
        let k = AttachmentKey::new("c", "eth0");
        let a = adds.begin_add(&k);
        assert_eq!(adds.len(), 1);
        drop(a);
        assert!(adds.is_empty());
    }
}
