//! Monitor requests and the `update`/`update2` notifications they produce
//! (RFC 7047 section 4.1.5/4.1.6 and the `monitor_cond` extension of
//! ovsdb-server(7)).

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;

use super::ops::Condition;
use super::types::{Row, Uuid, row_from_json};

/// What to monitor in one table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonitorRequest {
    /// Columns to report (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Report the initial contents (default true).
    pub initial: bool,
    /// Report inserts.
    pub insert: bool,
    /// Report deletes.
    pub delete: bool,
    /// Report modifications.
    pub modify: bool,
    /// `monitor_cond` only: rows to report (all when `None`).
    pub conditions: Option<Vec<Condition>>,
}

impl MonitorRequest {
    /// All columns, all kinds of change, initial contents.
    pub fn all() -> Self {
        MonitorRequest {
            columns: None,
            initial: true,
            insert: true,
            delete: true,
            modify: true,
            conditions: None,
        }
    }

    /// Some columns, all kinds of change, initial contents.
    pub fn columns(columns: &[&str]) -> Self {
        MonitorRequest {
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
            ..Self::all()
        }
    }

    pub(crate) fn to_json(&self, conditional: bool) -> Json {
        let mut o = Map::new();
        if let Some(columns) = &self.columns {
            o.insert("columns".into(), json!(columns));
        }
        o.insert(
            "select".into(),
            json!({"initial": self.initial, "insert": self.insert, "delete": self.delete, "modify": self.modify}),
        );
        if conditional && let Some(conditions) = &self.conditions {
            let where_: Vec<Json> = conditions
                .iter()
                .map(|c| json!([c.column, c.function.as_str(), c.value.to_json()]))
                .collect();
            o.insert("where".into(), Json::Array(where_));
        }
        Json::Object(o)
    }
}

/// One row change of an `update` (protocol version 1) notification.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowUpdate {
    /// Old contents (for modify: only changed columns); absent for inserts.
    pub old: Option<Row>,
    /// New contents (all monitored columns); absent for deletes.
    pub new: Option<Row>,
}

/// One row change of an `update2` notification.
#[derive(Debug, Clone, PartialEq)]
pub enum RowUpdate2 {
    /// Initial contents (reply to the monitor request).
    Initial(Row),
    /// A new row.
    Insert(Row),
    /// A deleted row (contents when the server sends them).
    Delete(Option<Row>),
    /// Changed columns as a diff: scalars hold the new value, sets the
    /// elements to add or remove (symmetric difference), maps the pairs to
    /// add, change or remove.
    Modify(Row),
}

/// Table name -> row uuid -> change, protocol version 1.
pub type TableUpdates = BTreeMap<String, BTreeMap<Uuid, RowUpdate>>;
/// Table name -> row uuid -> change, `update2`.
pub type TableUpdates2 = BTreeMap<String, BTreeMap<Uuid, RowUpdate2>>;

/// Updates of either protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Updates {
    /// From `monitor` (`update` notifications).
    V1(TableUpdates),
    /// From `monitor_cond` (`update2` notifications).
    V2(TableUpdates2),
}

/// One event of a monitor subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorEvent {
    /// True for the initial contents: forget everything seen before. Sent once
    /// after the monitor is created and again after each reconnect.
    pub reset: bool,
    /// The changes.
    pub updates: Updates,
}

/// Which monitor method a subscription uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorVersion {
    /// `monitor` with `update` notifications.
    V1,
    /// `monitor_cond` with `update2` notifications.
    V2,
}

impl MonitorVersion {
    pub(crate) fn method(self) -> &'static str {
        match self {
            MonitorVersion::V1 => "monitor",
            MonitorVersion::V2 => "monitor_cond",
        }
    }

    pub(crate) fn notification(self) -> &'static str {
        match self {
            MonitorVersion::V1 => "update",
            MonitorVersion::V2 => "update2",
        }
    }

    pub(crate) fn parse(self, json: &Json) -> Result<Updates, String> {
        match self {
            MonitorVersion::V1 => parse_updates(json).map(Updates::V1),
            MonitorVersion::V2 => parse_updates2(json).map(Updates::V2),
        }
    }
}

/// A live monitor: its id and the stream of events (first: the initial
/// contents with `reset = true`).
#[derive(Debug)]
pub struct Monitor {
    pub(crate) id: String,
    /// Events in order. Ends when the client shuts down or the monitor is cancelled.
    pub events: mpsc::UnboundedReceiver<MonitorEvent>,
}

impl Monitor {
    /// The monitor id used on the wire.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn tables(json: &Json) -> Result<&Map<String, Json>, String> {
    json.as_object()
        .ok_or_else(|| format!("table updates are not an object: {json}"))
}

fn rows_of<'a>(table: &str, json: &'a Json) -> Result<Vec<(Uuid, &'a Json)>, String> {
    json.as_object()
        .ok_or_else(|| format!("updates of table {table} are not an object"))?
        .iter()
        .map(|(uuid, change)| {
            Uuid::parse_str(uuid)
                .map(|u| (u, change))
                .map_err(|_| format!("bad row uuid {uuid:?} in table {table}"))
        })
        .collect()
}

fn optional_row(change: &Json, key: &str) -> Result<Option<Row>, String> {
    match change.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(row) => row_from_json(row).map(Some).map_err(|e| e.to_string()),
    }
}

/// Parses `<table-updates>` of an `update` notification or `monitor` reply.
pub fn parse_updates(json: &Json) -> Result<TableUpdates, String> {
    let mut out = TableUpdates::new();
    for (table, rows) in tables(json)? {
        let entry = out.entry(table.clone()).or_default();
        for (uuid, change) in rows_of(table, rows)? {
            if !change.is_object() {
                return Err(format!("row update of {table} {uuid} is not an object"));
            }
            entry.insert(
                uuid,
                RowUpdate {
                    old: optional_row(change, "old")?,
                    new: optional_row(change, "new")?,
                },
            );
        }
    }
    Ok(out)
}

/// Parses `<table-updates2>` of an `update2` notification or `monitor_cond` reply.
pub fn parse_updates2(json: &Json) -> Result<TableUpdates2, String> {
    let mut out = TableUpdates2::new();
    for (table, rows) in tables(json)? {
        let entry = out.entry(table.clone()).or_default();
        for (uuid, change) in rows_of(table, rows)? {
            let object = change
                .as_object()
                .ok_or_else(|| format!("row update2 of {table} {uuid} is not an object"))?;
            let (kind, row) = object
                .iter()
                .next()
                .filter(|_| object.len() == 1)
                .ok_or_else(|| format!("row update2 of {table} {uuid} needs exactly one member"))?;
            let parse = |row: &Json| row_from_json(row).map_err(|e| e.to_string());
            let update = match kind.as_str() {
                "initial" => RowUpdate2::Initial(parse(row)?),
                "insert" => RowUpdate2::Insert(parse(row)?),
                "modify" => RowUpdate2::Modify(parse(row)?),
                "delete" => RowUpdate2::Delete(match row {
                    Json::Null => None,
                    other => Some(parse(other)?),
                }),
                other => return Err(format!("unknown row update2 kind {other:?}")),
            };
            entry.insert(uuid, update);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::types::Value;

    #[test]
    fn parses_update_and_update2() {
        let u = "36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01";
        let v1 = parse_updates(&json!({"Port": {u: {"new": {"name": "p", "tag": 5}}}})).unwrap();
        let change = &v1["Port"][&Uuid::parse_str(u).unwrap()];
        assert!(change.old.is_none());
        assert_eq!(change.new.as_ref().unwrap()["tag"], Value::from(5));

        let v2 =
            parse_updates2(&json!({"Port": {u: {"modify": {"tag": ["set", [5, 6]]}}}})).unwrap();
        assert!(matches!(
            v2["Port"][&Uuid::parse_str(u).unwrap()],
            RowUpdate2::Modify(_)
        ));
        let del = parse_updates2(&json!({"Port": {u: {"delete": null}}})).unwrap();
        assert_eq!(
            del["Port"][&Uuid::parse_str(u).unwrap()],
            RowUpdate2::Delete(None)
        );

        for bad in [
            json!([]),
            json!({"Port": []}),
            json!({"Port": {"not-a-uuid": {"insert": {}}}}),
            json!({"Port": {u: {"frob": {}}}}),
            json!({"Port": {u: {"insert": {}, "delete": null}}}),
            json!({"Port": {u: {"insert": {"name": {"x": 1}}}}}),
        ] {
            assert!(parse_updates2(&bad).is_err(), "{bad}");
        }
        assert!(parse_updates(&json!({"Port": {u: 5}})).is_err());
    }

    #[test]
    fn request_encoding() {
        let r = MonitorRequest {
            conditions: Some(vec![Condition::eq("name", "p")]),
            ..MonitorRequest::columns(&["name"])
        };
        assert_eq!(
            r.to_json(true).to_string(),
            r#"{"columns":["name"],"select":{"delete":true,"initial":true,"insert":true,"modify":true},"where":[["name","==","p"]]}"#
        );
        assert!(r.to_json(false).get("where").is_none());
    }
}
