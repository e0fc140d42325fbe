//! DEL's OVS port removals, coalesced: the ports of concurrent DELs go out
//! in one lookup and one removal transaction, so `ovs-vswitchd`
//! reconfigures the bridge once for all of them instead of once per port
//! (its main loop, which also answers the OpenFlow barriers of the DELs'
//! flow deletions, was busy reconfiguring one port after the other). One
//! batch is in flight at a time; ports that arrive meanwhile go in the
//! next. A lone DEL's port goes out at once, as before.

use std::sync::Mutex;

use switchyard_ovs::ovsdb;
use tokio::sync::oneshot;

use crate::drivers::Ports;
use crate::state::lock;

type Outcome = Option<Result<(), ovsdb::Error>>;

/// Port removals waiting for the next batch.
#[derive(Debug, Default)]
pub(crate) struct PortRemovals {
    pending: Mutex<Vec<(String, oneshot::Sender<Outcome>)>>,
    flush: tokio::sync::Mutex<()>,
}

impl PortRemovals {
    /// Removes the port `name` (`Error::PortNotFound` if there is none),
    /// batched with the removals of other callers waiting at the same time.
    pub async fn remove(&self, ports: &dyn Ports, name: &str) -> Result<(), ovsdb::Error> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).push((name.to_string(), tx));
        {
            // Whoever holds the lock first after a port was queued removes
            // it with every other queued port (the caller itself at the
            // latest).
            let _flushing = self.flush.lock().await;
            let batch = std::mem::take(&mut *lock(&self.pending));
            if !batch.is_empty() {
                let names: Vec<&str> = batch.iter().map(|(n, _)| n.as_str()).collect();
                let outcomes = ports.remove_ports_each(&names).await;
                match outcomes {
                    Ok(outcomes) if outcomes.len() == batch.len() => {
                        for ((_, tx), outcome) in batch.into_iter().zip(outcomes) {
                            let _ = tx.send(Some(outcome));
                        }
                    }
                    other => {
                        if let Err(e) = other {
                            tracing::debug!(error = %e, ports = batch.len(), "batched port removal failed; each port alone");
                        }
                        for (_, tx) in batch {
                            let _ = tx.send(None);
                        }
                    }
                }
            }
        }
        match rx.await {
            Ok(Some(outcome)) => outcome,
            // The batch failed as a whole: this port alone, for its own
            // outcome and error.
            _ => ports.remove_port(name).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_ovs::ovsdb::PortRow;

    use super::*;
    use crate::drivers::fake::FakeNode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_removals_each_get_their_own_outcome() {
        let ovs = Arc::new(FakeNode::default());
        for name in ["sya", "syb", "syc", "systuck"] {
            let row = PortRow {
                name: name.to_string(),
                ..PortRow::default()
            };
            ovs.world().ports.insert(name.to_string(), (row, 0));
        }
        ovs.world().stuck_ports.insert("systuck".to_string());
        let removals = Arc::new(PortRemovals::default());
        let tasks: Vec<_> = ["sya", "syb", "syc", "synone", "systuck"]
            .into_iter()
            .map(|name| {
                let (ovs, removals) = (ovs.clone(), removals.clone());
                tokio::spawn(async move { removals.remove(&*ovs, name).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
        assert!(matches!(
            outcomes[3],
            Err(ovsdb::Error::PortNotFound(ref n)) if n == "synone"
        ));
        assert!(outcomes[4].is_err(), "{outcomes:?}");
        let left: Vec<String> = ovs.world().ports.keys().cloned().collect();
        assert_eq!(left, ["systuck"]);
    }
}
