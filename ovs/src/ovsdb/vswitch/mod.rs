//! Typed helpers for the `Open_vSwitch` database, as the node agent needs
//! them: bridges, ports with their interface, VLAN settings and external ids,
//! ofports, and `Open_vSwitch.other_config`. Each helper is one transaction
//! (plus a read where the target's uuid must be looked up first) and guards
//! its assumptions with `wait` operations, so a concurrent change makes it
//! fail cleanly instead of half-applying.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::client::Client;
use super::error::{Error, Result};
use super::ops::{Condition, Mutation, Mutator, Operation, OvsdbErrorKind, WaitUntil};
use super::types::{Atom, NamedUuid, Row, Uuid, Value};

/// The database name.
pub const DB: &str = "Open_vSwitch";

mod rows;
mod specs;

pub use rows::{BridgeRow, InterfaceRow, OpenVswitchRow, PortRow};
use rows::{get, opt_string, row_uuid, string};
pub use specs::{AddedPort, BridgeSpec, PortSpec};

fn wait_rows(
    table: &str,
    conditions: Vec<Condition>,
    until: WaitUntil,
    rows: Vec<Row>,
) -> Operation {
    Operation::Wait {
        table: table.to_string(),
        conditions,
        columns: vec!["name".to_string()],
        until,
        rows,
        timeout_ms: Some(0),
    }
}

fn name_row(name: &str) -> Row {
    Row::from([("name".to_string(), Value::from(name))])
}

fn merge_map(column: &str, entries: &BTreeMap<String, String>) -> Vec<Mutation> {
    if entries.is_empty() {
        return Vec::new();
    }
    vec![
        Mutation::new(
            column,
            Mutator::Delete,
            Value::set(entries.keys().map(String::as_str)),
        ),
        Mutation::new(column, Mutator::Insert, Value::string_map(entries)),
    ]
}

/// What a guard `wait` in a transaction protects.
enum Guard {
    BridgeExists(String),
    PortAbsent(String),
}

impl Client {
    async fn select_root(&self) -> Result<Option<OpenVswitchRow>> {
        let results = self
            .transact(DB, &[Operation::select("Open_vSwitch", vec![])])
            .await?;
        Ok(results[0]
            .rows
            .as_ref()
            .and_then(|rows| rows.first())
            .map(|row| OpenVswitchRow::from_row(row_uuid(row), row)))
    }

    /// Reads the `Open_vSwitch` root row (one round trip).
    pub async fn open_vswitch(&self) -> Result<OpenVswitchRow> {
        self.select_root().await?.ok_or(Error::NoRootRow)
    }

    /// Reads a bridge by name.
    pub async fn bridge(&self, name: &str) -> Result<Option<BridgeRow>> {
        let results = self
            .transact(
                DB,
                &[Operation::select(
                    "Bridge",
                    vec![Condition::eq("name", name)],
                )],
            )
            .await?;
        Ok(first_row(&results[0]).map(|row| BridgeRow::from_row(row_uuid(row), row)))
    }

    /// Creates the bridge if missing (with its internal port, referenced from
    /// the `Open_vSwitch` root row, which is created if absent), or updates
    /// the given settings of an existing one. Returns the bridge uuid.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<Uuid> {
        if spec.name.is_empty() {
            return Err(Error::InvalidArgument("bridge name is empty".into()));
        }
        // A concurrent creator makes the guards fail; look again then.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.ensure_bridge_once(spec).await {
                Err(Error::Transaction(err))
                    if err.kind == OvsdbErrorKind::TimedOut && attempts < 3 =>
                {
                    tracing::debug!(bridge = %spec.name, "bridge changed concurrently; retrying");
                }
                other => return other,
            }
        }
    }

    async fn ensure_bridge_once(&self, spec: &BridgeSpec) -> Result<Uuid> {
        let read = self
            .transact(
                DB,
                &[
                    Operation::select_columns(
                        "Bridge",
                        vec![Condition::eq("name", spec.name.as_str())],
                        &["_uuid"],
                    ),
                    Operation::select_columns("Open_vSwitch", vec![], &["_uuid", "bridges"]),
                ],
            )
            .await?;
        let existing = first_row(&read[0]).map(row_uuid);
        let root = first_row(&read[1]).map(|row| OpenVswitchRow::from_row(row_uuid(row), row));

        let mut settings = Row::new();
        if let Some(dp) = &spec.datapath_type {
            settings.insert("datapath_type".into(), Value::from(dp.as_str()));
        }
        if let Some(mode) = &spec.fail_mode {
            settings.insert("fail_mode".into(), Value::from(mode.as_str()));
        }
        if !spec.protocols.is_empty() {
            settings.insert(
                "protocols".into(),
                Value::set(spec.protocols.iter().map(String::as_str)),
            );
        }
        let mut ops = Vec::new();
        let bridge_ref: Atom = match existing {
            Some(uuid) => {
                let this = vec![Condition::eq("_uuid", Value::uuid(uuid))];
                if !settings.is_empty() {
                    ops.push(Operation::update("Bridge", this.clone(), settings));
                }
                let mut mutations = merge_map("external_ids", &spec.external_ids);
                mutations.extend(merge_map("other_config", &spec.other_config));
                if !mutations.is_empty() {
                    ops.push(Operation::mutate("Bridge", this, mutations));
                }
                Atom::Uuid(uuid)
            }
            None => {
                ops.push(wait_rows(
                    "Bridge",
                    vec![Condition::eq("name", spec.name.as_str())],
                    WaitUntil::Equal,
                    vec![],
                ));
                let mut iface = name_row(&spec.name);
                iface.insert("type".into(), Value::from("internal"));
                ops.push(Operation::insert("Interface", iface, Some("iface")));
                let mut port = name_row(&spec.name);
                port.insert("interfaces".into(), Value::named_uuid("iface"));
                ops.push(Operation::insert("Port", port, Some("port")));
                let mut bridge = name_row(&spec.name);
                bridge.extend(settings);
                bridge.insert("ports".into(), Value::named_uuid("port"));
                bridge.insert("external_ids".into(), Value::string_map(&spec.external_ids));
                bridge.insert("other_config".into(), Value::string_map(&spec.other_config));
                ops.push(Operation::insert("Bridge", bridge, Some("bridge")));
                Atom::NamedUuid(NamedUuid::new("bridge"))
            }
        };
        let bridge_index = ops.len().checked_sub(1);
        match &root {
            Some(root) if existing.is_some_and(|u| root.bridges.contains(&u)) => {}
            Some(root) => ops.push(Operation::mutate(
                "Open_vSwitch",
                vec![Condition::eq("_uuid", Value::uuid(root.uuid))],
                vec![Mutation::new(
                    "bridges",
                    Mutator::Insert,
                    Value::Set(vec![bridge_ref]),
                )],
            )),
            None => {
                ops.push(Operation::Wait {
                    table: "Open_vSwitch".into(),
                    conditions: vec![],
                    columns: vec!["_uuid".into()],
                    until: WaitUntil::Equal,
                    rows: vec![],
                    timeout_ms: Some(0),
                });
                ops.push(Operation::insert(
                    "Open_vSwitch",
                    Row::from([("bridges".to_string(), Value::Set(vec![bridge_ref]))]),
                    None,
                ));
            }
        }
        if ops.is_empty() {
            return existing.ok_or_else(|| Error::BridgeNotFound(spec.name.clone()));
        }
        let results = self.transact(DB, &ops).await?;
        if let Some(uuid) = existing {
            // The update/mutate must still have found the row.
            if let Some(count) = results.first().and_then(|r| r.count)
                && count == 0
            {
                return Err(Error::BridgeNotFound(spec.name.clone()));
            }
            return Ok(uuid);
        }
        bridge_index
            .and_then(|i| results[i].uuid)
            .ok_or_else(|| Error::MalformedReply {
                method: "transact".into(),
                reason: "insert of Bridge returned no uuid".into(),
            })
    }

    /// Deletes a bridge (and its ports) by name.
    pub async fn delete_bridge(&self, name: &str) -> Result<()> {
        let Some(bridge) = self.bridge(name).await? else {
            return Err(Error::BridgeNotFound(name.to_string()));
        };
        let results = self
            .transact(
                DB,
                &[Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::new(
                        "bridges",
                        Mutator::Delete,
                        Value::set([bridge.uuid]),
                    )],
                )],
            )
            .await?;
        if results[0].count.unwrap_or(0) == 0 {
            return Err(Error::NoRootRow);
        }
        Ok(())
    }

    /// Adds a port with one interface to `bridge` in one transaction.
    /// Fails with [`Error::BridgeNotFound`] or [`Error::PortExists`] without
    /// changing anything.
    pub async fn add_port(&self, bridge: &str, port: &PortSpec) -> Result<AddedPort> {
        let added = self.add_ports(bridge, std::slice::from_ref(port)).await?;
        Ok(added[0])
    }

    /// Adds many ports to `bridge` in one transaction (all or nothing).
    pub async fn add_ports(&self, bridge: &str, ports: &[PortSpec]) -> Result<Vec<AddedPort>> {
        let mut names = BTreeSet::new();
        for port in ports {
            port.validate()?;
            if !names.insert(port.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "port {} given twice",
                    port.name
                )));
            }
        }
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let mut ops = Vec::with_capacity(ports.len() * 3 + 2);
        let mut guards = Vec::new();
        guards.push((ops.len(), Guard::BridgeExists(bridge.to_string())));
        ops.push(wait_rows(
            "Bridge",
            vec![Condition::eq("name", bridge)],
            WaitUntil::Equal,
            vec![name_row(bridge)],
        ));
        let mut inserted = Vec::with_capacity(ports.len());
        let mut port_refs = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            guards.push((ops.len(), Guard::PortAbsent(port.name.clone())));
            ops.push(wait_rows(
                "Port",
                vec![Condition::eq("name", port.name.as_str())],
                WaitUntil::Equal,
                vec![],
            ));
            let iface_name = format!("iface{i}");
            let port_name = format!("port{i}");
            let mut iface = name_row(&port.name);
            if let Some(t) = &port.interface_type {
                iface.insert("type".into(), Value::from(t.as_str()));
            }
            if !port.options.is_empty() {
                iface.insert("options".into(), Value::string_map(&port.options));
            }
            if !port.interface_external_ids.is_empty() {
                iface.insert(
                    "external_ids".into(),
                    Value::string_map(&port.interface_external_ids),
                );
            }
            if let Some(ofport) = port.ofport_request {
                iface.insert("ofport_request".into(), Value::from(i64::from(ofport)));
            }
            if let Some(mtu) = port.mtu_request {
                iface.insert("mtu_request".into(), Value::from(i64::from(mtu)));
            }
            let iface_index = ops.len();
            ops.push(Operation::insert("Interface", iface, Some(&iface_name)));
            let mut row = name_row(&port.name);
            row.insert("interfaces".into(), Value::named_uuid(&iface_name));
            if let Some(tag) = port.tag {
                row.insert("tag".into(), Value::from(i64::from(tag)));
            }
            if let Some(mode) = &port.vlan_mode {
                row.insert("vlan_mode".into(), Value::from(mode.as_str()));
            }
            if !port.trunks.is_empty() {
                row.insert(
                    "trunks".into(),
                    Value::set(port.trunks.iter().map(|t| i64::from(*t))),
                );
            }
            if !port.port_external_ids.is_empty() {
                row.insert(
                    "external_ids".into(),
                    Value::string_map(&port.port_external_ids),
                );
            }
            let port_index = ops.len();
            ops.push(Operation::insert("Port", row, Some(&port_name)));
            inserted.push((port_index, iface_index));
            port_refs.push(Atom::NamedUuid(NamedUuid::new(port_name)));
        }
        ops.push(Operation::mutate(
            "Bridge",
            vec![Condition::eq("name", bridge)],
            vec![Mutation::new(
                "ports",
                Mutator::Insert,
                Value::Set(port_refs),
            )],
        ));
        let results = match self.transact(DB, &ops).await {
            Err(Error::Transaction(err)) if err.kind == OvsdbErrorKind::TimedOut => {
                return Err(match guards.into_iter().find(|(i, _)| *i == err.op_index) {
                    Some((_, Guard::BridgeExists(name))) => Error::BridgeNotFound(name),
                    Some((_, Guard::PortAbsent(name))) => Error::PortExists(name),
                    None => Error::Transaction(err),
                });
            }
            other => other?,
        };
        inserted
            .into_iter()
            .map(|(p, i)| match (results[p].uuid, results[i].uuid) {
                (Some(port), Some(interface)) => Ok(AddedPort { port, interface }),
                _ => Err(Error::MalformedReply {
                    method: "transact".into(),
                    reason: "insert returned no uuid".into(),
                }),
            })
            .collect()
    }

    /// Removes a port (and its interfaces) by name from whichever bridge holds it.
    pub async fn remove_port(&self, name: &str) -> Result<()> {
        self.remove_ports(&[name]).await
    }

    /// Removes many ports by name in one transaction (all or nothing).
    pub async fn remove_ports(&self, names: &[&str]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let lookup: Vec<Operation> = if names.len() == 1 {
            vec![Operation::select_columns(
                "Port",
                vec![Condition::eq("name", names[0])],
                &["_uuid", "name"],
            )]
        } else {
            vec![Operation::select_columns(
                "Port",
                vec![],
                &["_uuid", "name"],
            )]
        };
        let results = self.transact(DB, &lookup).await?;
        let by_name: BTreeMap<String, Uuid> = results[0]
            .rows
            .iter()
            .flatten()
            .map(|row| (string(row, "name"), row_uuid(row)))
            .collect();
        let mut ops = Vec::with_capacity(names.len());
        for name in names {
            let uuid = by_name
                .get(*name)
                .ok_or_else(|| Error::PortNotFound(name.to_string()))?;
            ops.push(Operation::mutate(
                "Bridge",
                vec![Condition::includes("ports", Value::set([*uuid]))],
                vec![Mutation::new("ports", Mutator::Delete, Value::set([*uuid]))],
            ));
        }
        let results = self.transact(DB, &ops).await?;
        if let Some(i) = results.iter().position(|r| r.count.unwrap_or(0) == 0) {
            // Removed concurrently between the lookup and the mutation.
            return Err(Error::PortNotFound(names[i].to_string()));
        }
        Ok(())
    }

    /// Reads a port by name.
    pub async fn port(&self, name: &str) -> Result<Option<PortRow>> {
        let results = self
            .transact(
                DB,
                &[Operation::select("Port", vec![Condition::eq("name", name)])],
            )
            .await?;
        Ok(first_row(&results[0]).map(|row| PortRow::from_row(row_uuid(row), row)))
    }

    /// Reads an interface by name.
    pub async fn interface(&self, name: &str) -> Result<Option<InterfaceRow>> {
        let results = self
            .transact(
                DB,
                &[Operation::select(
                    "Interface",
                    vec![Condition::eq("name", name)],
                )],
            )
            .await?;
        Ok(first_row(&results[0]).map(|row| InterfaceRow::from_row(row_uuid(row), row)))
    }

    /// Ports whose `external_ids` has `key=value`.
    pub async fn find_ports_by_external_id(&self, key: &str, value: &str) -> Result<Vec<PortRow>> {
        self.select_by_external_id("Port", key, value, PortRow::from_row)
            .await
    }

    /// Interfaces whose `external_ids` has `key=value`.
    pub async fn find_interfaces_by_external_id(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<InterfaceRow>> {
        self.select_by_external_id("Interface", key, value, InterfaceRow::from_row)
            .await
    }

    /// The rows of `table` whose `external_ids` has `key=value`, each made
    /// into a `T` from its uuid and columns.
    async fn select_by_external_id<T>(
        &self,
        table: &str,
        key: &str,
        value: &str,
        from_row: impl Fn(Uuid, &Row) -> T,
    ) -> Result<Vec<T>> {
        let results = self
            .transact(
                DB,
                &[Operation::select(
                    table,
                    vec![Condition::includes(
                        "external_ids",
                        Value::string_map([(key, value)]),
                    )],
                )],
            )
            .await?;
        Ok(results[0]
            .rows
            .iter()
            .flatten()
            .map(|row| from_row(row_uuid(row), row))
            .collect())
    }

    /// Waits (on the server, one round trip) until vswitchd has given the
    /// interface an ofport, and returns it. Fails with
    /// [`Error::InterfaceFailed`] if vswitchd could not attach it (ofport -1),
    /// [`Error::InterfaceNotFound`] if it does not exist, [`Error::Timeout`]
    /// after `timeout`.
    pub async fn interface_ofport(&self, name: &str, timeout: Duration) -> Result<u16> {
        let this = vec![Condition::eq("name", name)];
        let ops = [
            Operation::Wait {
                table: "Interface".into(),
                conditions: this.clone(),
                columns: vec!["ofport".into()],
                until: WaitUntil::NotEqual,
                rows: vec![Row::from([("ofport".to_string(), Value::empty_set())])],
                timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            },
            Operation::select_columns("Interface", this, &["ofport", "error"]),
        ];
        let results = match self.transact(DB, &ops).await {
            Err(Error::Transaction(err)) if err.kind == OvsdbErrorKind::TimedOut => {
                return Err(Error::Timeout {
                    timeout,
                    what: format!("an ofport on interface {name}"),
                });
            }
            other => other?,
        };
        let row =
            first_row(&results[1]).ok_or_else(|| Error::InterfaceNotFound(name.to_string()))?;
        match get(row, "ofport").and_then(Value::as_integer) {
            Some(ofport) if ofport > 0 => {
                u16::try_from(ofport).map_err(|_| Error::MalformedReply {
                    method: "transact".into(),
                    reason: format!("ofport {ofport} out of range"),
                })
            }
            _ => Err(Error::InterfaceFailed {
                name: name.to_string(),
                error: opt_string(row, "error").unwrap_or_else(|| "ofport -1".into()),
            }),
        }
    }

    /// Sets `Open_vSwitch.other_config:key=value` (e.g. `flow-restore-wait=true`).
    pub async fn set_other_config(&self, key: &str, value: &str) -> Result<()> {
        let entries = BTreeMap::from([(key.to_string(), value.to_string())]);
        let results = self
            .transact(
                DB,
                &[Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    merge_map("other_config", &entries),
                )],
            )
            .await?;
        if results[0].count.unwrap_or(0) == 0 {
            return Err(Error::NoRootRow);
        }
        Ok(())
    }

    /// Sets keys of `external_ids` of the named row of `table` (`Port`,
    /// `Interface` or `Bridge`); other keys are kept.
    pub async fn set_external_ids(
        &self,
        table: &str,
        name: &str,
        entries: &BTreeMap<String, String>,
    ) -> Result<()> {
        if !matches!(table, "Port" | "Interface" | "Bridge") {
            return Err(Error::InvalidArgument(format!(
                "set_external_ids on table {table:?}"
            )));
        }
        let mutations = merge_map("external_ids", entries);
        if mutations.is_empty() {
            return Ok(());
        }
        let results = self
            .transact(
                DB,
                &[Operation::mutate(
                    table,
                    vec![Condition::eq("name", name)],
                    mutations,
                )],
            )
            .await?;
        if results[0].count.unwrap_or(0) == 0 {
            return Err(match table {
                "Port" => Error::PortNotFound(name.to_string()),
                "Interface" => Error::InterfaceNotFound(name.to_string()),
                _ => Error::BridgeNotFound(name.to_string()),
            });
        }
        Ok(())
    }

    /// Increments `Open_vSwitch.next_cfg` and returns the new value; once
    /// `cur_cfg` reaches it, ovs-vswitchd has applied every change committed
    /// before (what `ovs-vsctl` waits for); read it with [`Client::open_vswitch`].
    pub async fn increment_next_cfg(&self) -> Result<i64> {
        let results = self
            .transact(
                DB,
                &[
                    Operation::mutate(
                        "Open_vSwitch",
                        vec![],
                        vec![Mutation::new("next_cfg", Mutator::Add, 1)],
                    ),
                    Operation::select_columns("Open_vSwitch", vec![], &["next_cfg"]),
                ],
            )
            .await?;
        if results[0].count.unwrap_or(0) == 0 {
            return Err(Error::NoRootRow);
        }
        first_row(&results[1])
            .and_then(|row| get(row, "next_cfg"))
            .and_then(Value::as_integer)
            .ok_or_else(|| Error::MalformedReply {
                method: "transact".into(),
                reason: "select of next_cfg returned no value".into(),
            })
    }

    /// Removes `Open_vSwitch.other_config:key`.
    pub async fn remove_other_config(&self, key: &str) -> Result<()> {
        let results = self
            .transact(
                DB,
                &[Operation::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::new(
                        "other_config",
                        Mutator::Delete,
                        Value::set([key]),
                    )],
                )],
            )
            .await?;
        if results[0].count.unwrap_or(0) == 0 {
            return Err(Error::NoRootRow);
        }
        Ok(())
    }
}

fn first_row(result: &super::ops::OperationResult) -> Option<&Row> {
    result.rows.as_ref().and_then(|rows| rows.first())
}
