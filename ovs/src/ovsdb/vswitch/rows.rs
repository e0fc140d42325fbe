//! The `Open_vSwitch`, `Bridge`, `Port` and `Interface` rows as typed
//! values, and the column readers that build them.

use std::collections::BTreeMap;

use super::super::types::{Row, Uuid, Value};

/// The `Open_vSwitch` root row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenVswitchRow {
    /// Row uuid.
    pub uuid: Uuid,
    /// Bridges referenced.
    pub bridges: Vec<Uuid>,
    /// `other_config`.
    pub other_config: BTreeMap<String, String>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// `next_cfg`.
    pub next_cfg: i64,
    /// `cur_cfg` (what vswitchd has applied).
    pub cur_cfg: i64,
}

/// A `Bridge` row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BridgeRow {
    /// Row uuid.
    pub uuid: Uuid,
    /// Name.
    pub name: String,
    /// `datapath_type` (`netdev` for the userspace datapath).
    pub datapath_type: String,
    /// Ports.
    pub ports: Vec<Uuid>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// `other_config`.
    pub other_config: BTreeMap<String, String>,
    /// `fail_mode`, if set.
    pub fail_mode: Option<String>,
    /// `protocols`.
    pub protocols: Vec<String>,
    /// `datapath_id` as reported by vswitchd.
    pub datapath_id: Option<String>,
}

/// A `Port` row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PortRow {
    /// Row uuid.
    pub uuid: Uuid,
    /// Name.
    pub name: String,
    /// Interfaces.
    pub interfaces: Vec<Uuid>,
    /// Access VLAN.
    pub tag: Option<u16>,
    /// Trunk VLANs.
    pub trunks: Vec<u16>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
}

/// An `Interface` row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InterfaceRow {
    /// Row uuid.
    pub uuid: Uuid,
    /// Name.
    pub name: String,
    /// `type` (empty for a system device such as a veth).
    pub interface_type: String,
    /// OpenFlow port number once vswitchd has attached it; -1 on failure.
    pub ofport: Option<i64>,
    /// `options`.
    pub options: BTreeMap<String, String>,
    /// `external_ids`.
    pub external_ids: BTreeMap<String, String>,
    /// `error`, if vswitchd reported one.
    pub error: Option<String>,
    /// `mac_in_use`.
    pub mac_in_use: Option<String>,
}

pub(super) fn get<'a>(row: &'a Row, column: &str) -> Option<&'a Value> {
    row.get(column)
}

pub(super) fn string(row: &Row, column: &str) -> String {
    get(row, column)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub(super) fn opt_string(row: &Row, column: &str) -> Option<String> {
    get(row, column).and_then(Value::as_str).map(str::to_string)
}

pub(super) fn map(row: &Row, column: &str) -> BTreeMap<String, String> {
    get(row, column)
        .map(Value::to_string_map)
        .unwrap_or_default()
}

fn uuids(row: &Row, column: &str) -> Vec<Uuid> {
    get(row, column).map(Value::uuids).unwrap_or_default()
}

fn vlans(values: Vec<i64>) -> Vec<u16> {
    values
        .into_iter()
        .filter_map(|v| u16::try_from(v).ok())
        .collect()
}

pub(super) fn row_uuid(row: &Row) -> Uuid {
    get(row, "_uuid")
        .and_then(Value::as_uuid)
        .unwrap_or_default()
}

impl OpenVswitchRow {
    /// Reads a row (columns that are absent get defaults).
    pub fn from_row(uuid: Uuid, row: &Row) -> Self {
        OpenVswitchRow {
            uuid,
            bridges: uuids(row, "bridges"),
            other_config: map(row, "other_config"),
            external_ids: map(row, "external_ids"),
            next_cfg: get(row, "next_cfg")
                .and_then(Value::as_integer)
                .unwrap_or(0),
            cur_cfg: get(row, "cur_cfg").and_then(Value::as_integer).unwrap_or(0),
        }
    }
}

impl BridgeRow {
    /// Reads a row (columns that are absent get defaults).
    pub fn from_row(uuid: Uuid, row: &Row) -> Self {
        BridgeRow {
            uuid,
            name: string(row, "name"),
            datapath_type: string(row, "datapath_type"),
            ports: uuids(row, "ports"),
            external_ids: map(row, "external_ids"),
            other_config: map(row, "other_config"),
            fail_mode: opt_string(row, "fail_mode"),
            protocols: get(row, "protocols")
                .map(|v| {
                    v.as_set()
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            datapath_id: opt_string(row, "datapath_id"),
        }
    }
}

impl PortRow {
    /// Reads a row (columns that are absent get defaults).
    pub fn from_row(uuid: Uuid, row: &Row) -> Self {
        PortRow {
            uuid,
            name: string(row, "name"),
            interfaces: uuids(row, "interfaces"),
            tag: get(row, "tag")
                .and_then(Value::as_integer)
                .and_then(|t| u16::try_from(t).ok()),
            trunks: vlans(get(row, "trunks").map(Value::integers).unwrap_or_default()),
            external_ids: map(row, "external_ids"),
        }
    }
}

impl InterfaceRow {
    /// Reads a row (columns that are absent get defaults).
    pub fn from_row(uuid: Uuid, row: &Row) -> Self {
        InterfaceRow {
            uuid,
            name: string(row, "name"),
            interface_type: string(row, "type"),
            ofport: get(row, "ofport").and_then(Value::as_integer),
            options: map(row, "options"),
            external_ids: map(row, "external_ids"),
            error: opt_string(row, "error"),
            mac_in_use: opt_string(row, "mac_in_use"),
        }
    }
}
