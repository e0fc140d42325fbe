//! Per-attachment async mutexes: requests for the same container id and
//! interface are serialised, different attachments run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::ipam::AttachmentKey;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// A table of async mutexes, one per key in use.
#[derive(Debug, Default)]
pub struct KeyLocks {
    slots: Arc<Mutex<HashMap<AttachmentKey, Slot>>>,
}

/// Holds the lock of one key; the slot is dropped when nobody uses it.
#[derive(Debug)]
pub struct KeyGuard {
    key: AttachmentKey,
    guard: Option<OwnedMutexGuard<()>>,
    slots: Arc<Mutex<HashMap<AttachmentKey, Slot>>>,
}

impl KeyLocks {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &AttachmentKey) -> KeyGuard {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let guard = slot.lock_owned().await;
        KeyGuard {
            key: key.clone(),
            guard: Some(guard),
            slots: self.slots.clone(),
        }
    }

    /// Number of keys with a live slot (for tests).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key is locked or awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Only the table holds the slot: nobody waits for it.
        if slots
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_serialises_other_keys_do_not() {
        let locks = Arc::new(KeyLocks::default());
        let a = AttachmentKey::new("a", "eth0");
        let b = AttachmentKey::new("b", "eth0");
        let held = locks.lock(&a).await;
        // Another key is free.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.lock(&b))
            .await
            .expect("other key blocked");
        drop(other);
        // The same key waits until the holder lets go.
        let locks2 = locks.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move {
            let _g = locks2.lock(&a2).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter never got the lock")
            .unwrap();
        assert!(locks.is_empty());
    }
}
