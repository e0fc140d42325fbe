//! A local replica of the `Open_vSwitch`, `Bridge`, `Port` and `Interface`
//! tables, fed by a `monitor_cond` subscription, like the OVS IDL. Reads take
//! no round trip; [`VswitchCache::wait_for`] waits for a condition with a
//! deadline. After a reconnect the client re-issues the monitor and the cache
//! is rebuilt from the fresh initial contents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Client;
use super::error::{Error, Result};
use super::monitor::{MonitorEvent, MonitorRequest, RowUpdate2, Updates};
use super::schema::Schema;
use super::types::{Atom, Row, Uuid, Value};
use super::vswitch::{BridgeRow, DB, InterfaceRow, OpenVswitchRow, PortRow};

/// Tables the cache replicates.
pub const CACHED_TABLES: &[&str] = &["Open_vSwitch", "Bridge", "Port", "Interface"];

/// A consistent view of the cached tables at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Times the contents were (re)built from a monitor's initial contents:
    /// 1 after start, +1 per reconnect.
    pub generation: u64,
    /// Table -> uuid -> row.
    pub tables: BTreeMap<String, HashMap<Uuid, Arc<Row>>>,
}

impl Snapshot {
    fn rows(&self, table: &str) -> impl Iterator<Item = (&Uuid, &Arc<Row>)> {
        self.tables.get(table).into_iter().flatten()
    }

    fn by_name(&self, table: &str, name: &str) -> Option<(Uuid, &Row)> {
        self.rows(table)
            .find(|(_, row)| row.get("name").and_then(Value::as_str) == Some(name))
            .map(|(u, r)| (*u, r.as_ref()))
    }

    /// The `Open_vSwitch` root row.
    pub fn root(&self) -> Option<OpenVswitchRow> {
        self.rows("Open_vSwitch")
            .next()
            .map(|(u, r)| OpenVswitchRow::from_row(*u, r))
    }

    /// All bridges.
    pub fn bridges(&self) -> Vec<BridgeRow> {
        self.rows("Bridge")
            .map(|(u, r)| BridgeRow::from_row(*u, r))
            .collect()
    }

    /// A bridge by name.
    pub fn bridge(&self, name: &str) -> Option<BridgeRow> {
        self.by_name("Bridge", name)
            .map(|(u, r)| BridgeRow::from_row(u, r))
    }

    /// All ports.
    pub fn ports(&self) -> Vec<PortRow> {
        self.rows("Port")
            .map(|(u, r)| PortRow::from_row(*u, r))
            .collect()
    }

    /// A port by name.
    pub fn port(&self, name: &str) -> Option<PortRow> {
        self.by_name("Port", name)
            .map(|(u, r)| PortRow::from_row(u, r))
    }

    /// All interfaces.
    pub fn interfaces(&self) -> Vec<InterfaceRow> {
        self.rows("Interface")
            .map(|(u, r)| InterfaceRow::from_row(*u, r))
            .collect()
    }

    /// An interface by name.
    pub fn interface(&self, name: &str) -> Option<InterfaceRow> {
        self.by_name("Interface", name)
            .map(|(u, r)| InterfaceRow::from_row(u, r))
    }

    /// The bridge a port belongs to.
    pub fn bridge_of_port(&self, port: Uuid) -> Option<BridgeRow> {
        self.bridges().into_iter().find(|b| b.ports.contains(&port))
    }

    /// Ports of a bridge.
    pub fn ports_of_bridge(&self, bridge: &str) -> Vec<PortRow> {
        let Some(bridge) = self.bridge(bridge) else {
            return Vec::new();
        };
        self.ports()
            .into_iter()
            .filter(|p| bridge.ports.contains(&p.uuid))
            .collect()
    }

    /// Ports whose `external_ids` has `key=value`.
    pub fn ports_by_external_id(&self, key: &str, value: &str) -> Vec<PortRow> {
        self.ports()
            .into_iter()
            .filter(|p| p.external_ids.get(key).map(String::as_str) == Some(value))
            .collect()
    }

    /// Interfaces whose `external_ids` has `key=value`.
    pub fn interfaces_by_external_id(&self, key: &str, value: &str) -> Vec<InterfaceRow> {
        self.interfaces()
            .into_iter()
            .filter(|i| i.external_ids.get(key).map(String::as_str) == Some(value))
            .collect()
    }

    /// Applies monitor updates (a reset replaces everything).
    pub fn apply(&mut self, schema: Option<&Schema>, event: &MonitorEvent) {
        if event.reset {
            self.tables.clear();
            self.generation += 1;
        }
        match &event.updates {
            Updates::V1(tables) => {
                for (table, rows) in tables {
                    let t = self.tables.entry(table.clone()).or_default();
                    for (uuid, change) in rows {
                        match &change.new {
                            Some(new) => {
                                t.insert(*uuid, Arc::new(new.clone()));
                            }
                            None => {
                                t.remove(uuid);
                            }
                        }
                    }
                }
            }
            Updates::V2(tables) => {
                for (table, rows) in tables {
                    let t = self.tables.entry(table.clone()).or_default();
                    for (uuid, change) in rows {
                        match change {
                            RowUpdate2::Initial(row) | RowUpdate2::Insert(row) => {
                                t.insert(*uuid, Arc::new(row.clone()));
                            }
                            RowUpdate2::Delete(_) => {
                                t.remove(uuid);
                            }
                            RowUpdate2::Modify(diff) => {
                                let row = t.entry(*uuid).or_default();
                                apply_diff(Arc::make_mut(row), diff, |column| {
                                    schema.and_then(|s| s.column(table, column))
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Applies an `update2` "modify" diff to a row.
fn apply_diff<'s>(
    row: &mut Row,
    diff: &Row,
    column_type: impl Fn(&str) -> Option<&'s super::schema::ColumnType>,
) {
    for (column, change) in diff {
        let ty = column_type(column);
        let is_map = ty.is_some_and(|t| t.is_map()) || matches!(change, Value::Map(_));
        let is_set = !is_map && ty.is_some_and(|t| t.is_set());
        if is_map {
            let mut pairs: Vec<(Atom, Atom)> = row
                .get(column)
                .map(|v| v.as_map().to_vec())
                .unwrap_or_default();
            for (k, v) in change.as_map() {
                match pairs.iter().position(|(pk, _)| pk == k) {
                    Some(i) if pairs[i].1 == *v => {
                        pairs.remove(i);
                    }
                    Some(i) => pairs[i].1 = v.clone(),
                    None => pairs.push((k.clone(), v.clone())),
                }
            }
            row.insert(column.clone(), Value::Map(pairs));
        } else if is_set {
            let mut items: Vec<Atom> = row
                .get(column)
                .map(|v| v.as_set().to_vec())
                .unwrap_or_default();
            for atom in change.as_set() {
                match items.iter().position(|a| a == atom) {
                    Some(i) => {
                        items.remove(i);
                    }
                    None => items.push(atom.clone()),
                }
            }
            row.insert(column.clone(), Value::Set(items));
        } else {
            row.insert(column.clone(), change.clone());
        }
    }
}

/// The cache handle. Dropping it stops the background task and cancels the monitor.
#[derive(Debug)]
pub struct VswitchCache {
    rx: watch::Receiver<Arc<Snapshot>>,
    task: JoinHandle<()>,
}

impl VswitchCache {
    /// Reads the schema, starts a `monitor_cond` on the cached tables and
    /// returns once the initial contents are loaded.
    pub async fn start(client: &Client) -> Result<Self> {
        let schema = client.get_schema(DB).await?;
        let requests: BTreeMap<String, MonitorRequest> = CACHED_TABLES
            .iter()
            .map(|t| (t.to_string(), MonitorRequest::all()))
            .collect();
        let mut monitor = client.monitor_cond(DB, &requests).await?;
        let mut snapshot = Snapshot::default();
        // The first event (initial contents) is queued before monitor_cond returns.
        let first = monitor.events.recv().await.ok_or(Error::Closed)?;
        snapshot.apply(Some(&schema), &first);
        let (tx, rx) = watch::channel(Arc::new(snapshot.clone()));
        let task = tokio::spawn(async move {
            while let Some(event) = monitor.events.recv().await {
                snapshot.apply(Some(&schema), &event);
                tx.send_replace(Arc::new(snapshot.clone()));
            }
            tracing::debug!("OVSDB cache monitor ended");
        });
        Ok(VswitchCache { rx, task })
    }

    /// The current contents (no round trip).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits until `condition` returns `Some` on the cache contents, up to
    /// `timeout`. `what` names the condition in the timeout error.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Result<T> {
        let mut rx = self.rx.clone();
        let wait = async {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                if let Some(value) = condition(&snapshot) {
                    return Ok(value);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    timeout,
                    what: what.to_string(),
                })
            })
    }

    /// Waits until the interface has an ofport (> 0) in the cache.
    pub async fn wait_for_ofport(&self, interface: &str, timeout: Duration) -> Result<u16> {
        let ofport = self
            .wait_for(
                &format!("an ofport on interface {interface}"),
                timeout,
                |s| s.interface(interface).and_then(|i| i.ofport),
            )
            .await?;
        u16::try_from(ofport)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::InterfaceFailed {
                name: interface.to_string(),
                error: self
                    .snapshot()
                    .interface(interface)
                    .and_then(|i| i.error)
                    .unwrap_or_else(|| format!("ofport {ofport}")),
            })
    }
}

impl VswitchCache {
    /// Waits until ovs-vswitchd reports `cur_cfg >= next_cfg` (the value
    /// returned by [`Client::increment_next_cfg`]), i.e. it has applied
    /// everything committed before that increment.
    pub async fn wait_cur_cfg(&self, next_cfg: i64, timeout: Duration) -> Result<()> {
        self.wait_for(
            &format!("ovs-vswitchd to apply configuration {next_cfg}"),
            timeout,
            |s| (s.root()?.cur_cfg >= next_cfg).then_some(()),
        )
        .await
    }
}

impl Drop for VswitchCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::monitor::parse_updates2;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_json(&json!({"name": "Open_vSwitch", "version": "1", "tables": {"Port": {"columns": {
            "name": {"type": "string"},
            "tag": {"type": {"key": "integer", "min": 0, "max": 1}},
            "trunks": {"type": {"key": "integer", "min": 0, "max": 4096}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
        }}}}))
        .unwrap()
    }

    #[test]
    fn update2_diffs_apply_to_sets_maps_and_scalars() {
        let u = "36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01";
        let uuid = Uuid::parse_str(u).unwrap();
        let schema = schema();
        let mut snap = Snapshot::default();
        let event = |reset, j| MonitorEvent {
            reset,
            updates: Updates::V2(parse_updates2(&j).unwrap()),
        };
        snap.apply(
            Some(&schema),
            &event(
                true,
                json!({"Port": {u: {"initial": {"name": "p", "tag": 3, "trunks": ["set", [1, 2]],
                    "external_ids": ["map", [["a", "1"], ["b", "2"]]]}}}}),
            ),
        );
        assert_eq!(snap.generation, 1);
        assert_eq!(snap.port("p").unwrap().tag, Some(3));
        // tag 3 -> 5 is the diff {3, 5}; trunks toggles 2 and adds 7; map:
        // a changes, b is removed, c is added; name is a scalar.
        snap.apply(
            Some(&schema),
            &event(
                false,
                json!({"Port": {u: {"modify": {"tag": ["set", [3, 5]], "trunks": ["set", [2, 7]],
                    "external_ids": ["map", [["a", "9"], ["b", "2"], ["c", "3"]]], "name": "q"}}}}),
            ),
        );
        let port = snap.port("q").unwrap();
        assert_eq!(port.uuid, uuid);
        assert_eq!(port.tag, Some(5));
        assert_eq!(port.trunks, vec![1, 7]);
        assert_eq!(
            port.external_ids,
            BTreeMap::from([("a".into(), "9".into()), ("c".into(), "3".into())])
        );
        // Removing the tag: diff {5} toggles it off.
        snap.apply(
            Some(&schema),
            &event(false, json!({"Port": {u: {"modify": {"tag": 5}}}})),
        );
        assert_eq!(snap.port("q").unwrap().tag, None);
        snap.apply(
            Some(&schema),
            &event(false, json!({"Port": {u: {"delete": null}}})),
        );
        assert!(snap.ports().is_empty());
        // A reset forgets everything.
        snap.apply(Some(&schema), &event(true, json!({})));
        assert_eq!(snap.generation, 2);
    }
}
