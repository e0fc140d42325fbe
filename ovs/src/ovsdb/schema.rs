//! Database schemas (RFC 7047 section 3.2), as far as a client needs them:
//! table and column names and column types (to tell scalars, sets and maps
//! apart when applying `update2` diffs).

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// Error for a schema that does not have the RFC 7047 shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB schema: {0}")]
pub struct SchemaError(pub String);

/// A database schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Database name, e.g. `Open_vSwitch`.
    pub name: String,
    /// Schema version, e.g. `8.3.1`.
    pub version: String,
    /// Tables by name.
    pub tables: BTreeMap<String, TableSchema>,
    /// The schema as received.
    pub json: Json,
}

/// A table schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Columns by name (without `_uuid`/`_version`).
    pub columns: BTreeMap<String, ColumnType>,
    /// Whether rows survive without references (`isRoot`).
    pub is_root: bool,
}

/// Type of a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// Atomic type of the keys: `integer`, `real`, `boolean`, `string`, `uuid`.
    pub key: String,
    /// Atomic type of the values, for maps.
    pub value: Option<String>,
    /// Minimum number of elements.
    pub min: u64,
    /// Maximum number of elements (`u64::MAX` for "unlimited").
    pub max: u64,
}

impl ColumnType {
    /// Whether the column is a map.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// Whether the column holds exactly one atom.
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == 1
    }

    /// Whether the column is a set (including optional 0..1 columns).
    pub fn is_set(&self) -> bool {
        !self.is_map() && !self.is_scalar()
    }
}

fn base_type(json: &Json) -> Result<String, SchemaError> {
    match json {
        Json::String(s) => Ok(s.clone()),
        Json::Object(o) => o
            .get("type")
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| SchemaError(format!("base type without \"type\": {json}"))),
        _ => Err(SchemaError(format!("bad base type {json}"))),
    }
}

fn column_type(json: &Json) -> Result<ColumnType, SchemaError> {
    if let Json::String(_) = json {
        return Ok(ColumnType {
            key: base_type(json)?,
            value: None,
            min: 1,
            max: 1,
        });
    }
    let object = json
        .as_object()
        .ok_or_else(|| SchemaError(format!("bad column type {json}")))?;
    let key = base_type(
        object
            .get("key")
            .ok_or_else(|| SchemaError(format!("column type without key: {json}")))?,
    )?;
    let value = object.get("value").map(base_type).transpose()?;
    let min = match object.get("min") {
        None => 1,
        Some(m) => m
            .as_u64()
            .ok_or_else(|| SchemaError(format!("bad min in {json}")))?,
    };
    let max = match object.get("max") {
        None => 1,
        Some(Json::String(s)) if s == "unlimited" => u64::MAX,
        Some(m) => m
            .as_u64()
            .ok_or_else(|| SchemaError(format!("bad max in {json}")))?,
    };
    Ok(ColumnType {
        key,
        value,
        min,
        max,
    })
}

impl Schema {
    /// Parses a schema as returned by `get_schema`.
    pub fn from_json(json: &Json) -> Result<Self, SchemaError> {
        let name = json
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| SchemaError("missing name".into()))?
            .to_string();
        let version = json
            .get("version")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let tables_json = json
            .get("tables")
            .and_then(Json::as_object)
            .ok_or_else(|| SchemaError("missing tables".into()))?;
        let mut tables = BTreeMap::new();
        for (table, tjson) in tables_json {
            let columns_json = tjson
                .get("columns")
                .and_then(Json::as_object)
                .ok_or_else(|| SchemaError(format!("table {table} without columns")))?;
            let mut columns = BTreeMap::new();
            for (column, cjson) in columns_json {
                let ty = cjson
                    .get("type")
                    .ok_or_else(|| SchemaError(format!("column {table}.{column} without type")))?;
                columns.insert(column.clone(), column_type(ty)?);
            }
            let is_root = tjson.get("isRoot").and_then(Json::as_bool).unwrap_or(false);
            tables.insert(table.clone(), TableSchema { columns, is_root });
        }
        Ok(Schema {
            name,
            version,
            tables,
            json: json.clone(),
        })
    }

    /// Type of `table.column`, if both exist.
    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnType> {
        self.tables.get(table)?.columns.get(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_column_kinds() {
        let schema = Schema::from_json(&json!({
            "name": "DB", "version": "1.0.0",
            "tables": {"Port": {"isRoot": false, "columns": {
                "name": {"type": "string"},
                "tag": {"type": {"key": {"type": "integer", "minInteger": 0, "maxInteger": 4095}, "min": 0, "max": 1}},
                "trunks": {"type": {"key": "integer", "min": 0, "max": 4096}},
                "interfaces": {"type": {"key": {"type": "uuid", "refTable": "Interface"}, "min": 1, "max": "unlimited"}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
            }}}
        }))
        .unwrap();
        assert!(schema.column("Port", "name").unwrap().is_scalar());
        assert!(schema.column("Port", "tag").unwrap().is_set());
        assert_eq!(schema.column("Port", "interfaces").unwrap().max, u64::MAX);
        assert!(schema.column("Port", "external_ids").unwrap().is_map());
        assert!(Schema::from_json(&json!({"name": "x"})).is_err());
    }
}
