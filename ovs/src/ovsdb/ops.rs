//! Transaction operations (RFC 7047 section 5.2) and their results.

use serde_json::{Map, Value as Json, json};

use super::types::{Row, Uuid, Value, row_from_json, row_to_json};

/// Comparison function of a condition (`where` clause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>=`
    GreaterOrEqual,
    /// `>`
    Greater,
    /// `includes`
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Less => "<",
            Function::LessOrEqual => "<=",
            Function::Equal => "==",
            Function::NotEqual => "!=",
            Function::GreaterOrEqual => ">=",
            Function::Greater => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// A condition `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Column name (may be `_uuid`).
    pub column: String,
    /// Comparison.
    pub function: Function,
    /// Value compared against.
    pub value: Value,
}

impl Condition {
    /// `[column, function, value]`.
    pub fn new(column: &str, function: Function, value: impl Into<Value>) -> Self {
        Condition {
            column: column.to_string(),
            function,
            value: value.into(),
        }
    }

    /// `column == value`.
    pub fn eq(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Equal, value)
    }

    /// `column includes value`.
    pub fn includes(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Includes, value)
    }

    fn to_json(&self) -> Json {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// Mutator of a mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    /// `+=`
    Add,
    /// `-=`
    Subtract,
    /// `*=`
    Multiply,
    /// `/=`
    Divide,
    /// `%=`
    Modulo,
    /// `insert` (sets and maps)
    Insert,
    /// `delete` (sets and maps; for maps, a set of keys or a map)
    Delete,
}

impl Mutator {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Subtract => "-=",
            Mutator::Multiply => "*=",
            Mutator::Divide => "/=",
            Mutator::Modulo => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// A mutation `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// Column name.
    pub column: String,
    /// What to do.
    pub mutator: Mutator,
    /// Operand.
    pub value: Value,
}

impl Mutation {
    /// `[column, mutator, value]`.
    pub fn new(column: &str, mutator: Mutator, value: impl Into<Value>) -> Self {
        Mutation {
            column: column.to_string(),
            mutator,
            value: value.into(),
        }
    }

    fn to_json(&self) -> Json {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// `until` of a wait operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// Wait until the selected rows equal the given rows.
    Equal,
    /// Wait until they differ.
    NotEqual,
}

/// One database operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Insert a row; `uuid_name` lets later operations refer to it.
    Insert {
        /// Table.
        table: String,
        /// Column values.
        row: Row,
        /// Name for `["named-uuid", name]` references.
        uuid_name: Option<String>,
    },
    /// Select rows.
    Select {
        /// Table.
        table: String,
        /// Conditions (all must hold).
        conditions: Vec<Condition>,
        /// Columns to return (all when `None`).
        columns: Option<Vec<String>>,
    },
    /// Update columns of matching rows.
    Update {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// New column values.
        row: Row,
    },
    /// Mutate columns of matching rows.
    Mutate {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Mutations.
        mutations: Vec<Mutation>,
    },
    /// Delete matching rows.
    Delete {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
    },
    /// Wait until matching rows (projected to `columns`) equal or differ from `rows`.
    Wait {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Columns compared.
        columns: Vec<String>,
        /// Equal or not equal.
        until: WaitUntil,
        /// Expected rows.
        rows: Vec<Row>,
        /// Milliseconds; `Some(0)` fails at once, `None` waits forever.
        timeout_ms: Option<u64>,
    },
    /// Commit, optionally durably.
    Commit {
        /// Wait for the disk write.
        durable: bool,
    },
    /// Abort the transaction (always fails with "aborted").
    Abort,
    /// A comment for the database log.
    Comment(String),
    /// Assert that this client owns a lock.
    Assert {
        /// Lock name.
        lock: String,
    },
}

fn conditions_json(conditions: &[Condition]) -> Json {
    Json::Array(conditions.iter().map(Condition::to_json).collect())
}

impl Operation {
    /// `insert` with a `uuid-name`.
    pub fn insert(table: &str, row: Row, uuid_name: Option<&str>) -> Self {
        Operation::Insert {
            table: table.to_string(),
            row,
            uuid_name: uuid_name.map(str::to_string),
        }
    }

    /// `select` of all columns.
    pub fn select(table: &str, conditions: Vec<Condition>) -> Self {
        Operation::Select {
            table: table.to_string(),
            conditions,
            columns: None,
        }
    }

    /// `select` of some columns.
    pub fn select_columns(table: &str, conditions: Vec<Condition>, columns: &[&str]) -> Self {
        Operation::Select {
            table: table.to_string(),
            conditions,
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        }
    }

    /// `update`.
    pub fn update(table: &str, conditions: Vec<Condition>, row: Row) -> Self {
        Operation::Update {
            table: table.to_string(),
            conditions,
            row,
        }
    }

    /// `mutate`.
    pub fn mutate(table: &str, conditions: Vec<Condition>, mutations: Vec<Mutation>) -> Self {
        Operation::Mutate {
            table: table.to_string(),
            conditions,
            mutations,
        }
    }

    /// `delete`.
    pub fn delete(table: &str, conditions: Vec<Condition>) -> Self {
        Operation::Delete {
            table: table.to_string(),
            conditions,
        }
    }

    /// The RFC 7047 JSON encoding.
    pub fn to_json(&self) -> Json {
        let mut o = Map::new();
        let mut put = |k: &str, v: Json| {
            o.insert(k.to_string(), v);
        };
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                put("op", json!("insert"));
                put("table", json!(table));
                put("row", row_to_json(row));
                if let Some(name) = uuid_name {
                    put("uuid-name", json!(name));
                }
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                put("op", json!("select"));
                put("table", json!(table));
                put("where", conditions_json(conditions));
                if let Some(columns) = columns {
                    put("columns", json!(columns));
                }
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => {
                put("op", json!("update"));
                put("table", json!(table));
                put("where", conditions_json(conditions));
                put("row", row_to_json(row));
            }
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => {
                put("op", json!("mutate"));
                put("table", json!(table));
                put("where", conditions_json(conditions));
                put(
                    "mutations",
                    Json::Array(mutations.iter().map(Mutation::to_json).collect()),
                );
            }
            Operation::Delete { table, conditions } => {
                put("op", json!("delete"));
                put("table", json!(table));
                put("where", conditions_json(conditions));
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                put("op", json!("wait"));
                put("table", json!(table));
                put("where", conditions_json(conditions));
                put("columns", json!(columns));
                put(
                    "until",
                    json!(match until {
                        WaitUntil::Equal => "==",
                        WaitUntil::NotEqual => "!=",
                    }),
                );
                put("rows", Json::Array(rows.iter().map(row_to_json).collect()));
                if let Some(ms) = timeout_ms {
                    put("timeout", json!(ms));
                }
            }
            Operation::Commit { durable } => {
                put("op", json!("commit"));
                put("durable", json!(durable));
            }
            Operation::Abort => put("op", json!("abort")),
            Operation::Comment(comment) => {
                put("op", json!("comment"));
                put("comment", json!(comment));
            }
            Operation::Assert { lock } => {
                put("op", json!("assert"));
                put("lock", json!(lock));
            }
        }
        Json::Object(o)
    }
}

/// Result of one successful operation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationResult {
    /// Rows affected (update, mutate, delete).
    pub count: Option<u64>,
    /// Uuid of the inserted row (insert).
    pub uuid: Option<Uuid>,
    /// Selected rows (select).
    pub rows: Option<Vec<Row>>,
}

impl OperationResult {
    /// Parses one element of a transact reply (not an error element).
    pub(crate) fn from_json(json: &Json) -> Result<Self, String> {
        let object = match json {
            Json::Object(o) => o,
            Json::Null => return Ok(OperationResult::default()),
            other => return Err(format!("operation result is not an object: {other}")),
        };
        let count = match object.get("count") {
            None => None,
            Some(c) => Some(c.as_u64().ok_or_else(|| format!("bad count {c}"))?),
        };
        let uuid = match object.get("uuid") {
            None => None,
            Some(u) => Some(
                super::types::Atom::from_json(u)
                    .ok()
                    .and_then(|a| a.as_uuid())
                    .ok_or_else(|| format!("bad uuid {u}"))?,
            ),
        };
        let rows = match object.get("rows") {
            None => None,
            Some(Json::Array(rows)) => Some(
                rows.iter()
                    .map(|r| row_from_json(r).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => return Err(format!("rows is not an array: {other}")),
        };
        Ok(OperationResult { count, uuid, rows })
    }
}

/// Kinds of OVSDB operation errors (RFC 7047 section 5.2 and 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvsdbErrorKind {
    /// `referential integrity violation`
    ReferentialIntegrityViolation,
    /// `constraint violation`
    ConstraintViolation,
    /// `resources exhausted`
    ResourcesExhausted,
    /// `I/O error`
    IoError,
    /// `duplicate uuid-name`
    DuplicateUuidName,
    /// `domain error`
    DomainError,
    /// `range error`
    RangeError,
    /// `timed out` (a wait operation)
    TimedOut,
    /// `not supported`
    NotSupported,
    /// `aborted`
    Aborted,
    /// `not owner` (assert on a lock we do not hold)
    NotOwner,
    /// Any other error string.
    Other(String),
}

impl OvsdbErrorKind {
    /// Classifies an error string.
    pub fn from_error(error: &str) -> Self {
        match error {
            "referential integrity violation" => Self::ReferentialIntegrityViolation,
            "constraint violation" => Self::ConstraintViolation,
            "resources exhausted" => Self::ResourcesExhausted,
            "I/O error" => Self::IoError,
            "duplicate uuid-name" => Self::DuplicateUuidName,
            "domain error" => Self::DomainError,
            "range error" => Self::RangeError,
            "timed out" => Self::TimedOut,
            "not supported" => Self::NotSupported,
            "aborted" => Self::Aborted,
            "not owner" => Self::NotOwner,
            other => Self::Other(other.to_string()),
        }
    }
}

/// A failed transaction: which operation failed and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OVSDB transaction failed at {}: {error}{}",
    if *.op_index < *.op_count { format!("operation {}", .op_index) } else { "commit".to_string() },
    .details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct TransactionError {
    /// Index of the failed operation; equal to `op_count` when the commit failed.
    pub op_index: usize,
    /// Number of operations sent.
    pub op_count: usize,
    /// Classified error.
    pub kind: OvsdbErrorKind,
    /// The error string as sent.
    pub error: String,
    /// Details, if any.
    pub details: Option<String>,
}

/// Parses a transact reply: the results, or the first error.
pub(crate) fn parse_transact_reply(
    reply: &Json,
    op_count: usize,
) -> Result<Result<Vec<OperationResult>, TransactionError>, String> {
    let items = reply
        .as_array()
        .ok_or_else(|| format!("transact result is not an array: {reply}"))?;
    if items.len() < op_count {
        return Err(format!(
            "transact result has {} elements for {op_count} operations",
            items.len()
        ));
    }
    for (index, item) in items.iter().enumerate() {
        if let Some(error) = item.get("error") {
            let error = error
                .as_str()
                .ok_or_else(|| format!("error is not a string: {error}"))?;
            let details = item.get("details").map(|d| match d {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            });
            return Ok(Err(TransactionError {
                op_index: index,
                op_count,
                kind: OvsdbErrorKind::from_error(error),
                error: error.to_string(),
                details,
            }));
        }
    }
    items[..op_count]
        .iter()
        .map(OperationResult::from_json)
        .collect::<Result<Vec<_>, _>>()
        .map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_encode_byte_exact() {
        let mut row = Row::new();
        row.insert("name".into(), Value::from("p0"));
        row.insert("interfaces".into(), Value::named_uuid("i0"));
        let ops = vec![
            Operation::insert("Port", row.clone(), Some("p0")),
            Operation::select_columns("Port", vec![Condition::eq("name", "p0")], &["_uuid"]),
            Operation::update(
                "Port",
                vec![Condition::eq("name", "p0")],
                Row::from([("tag".to_string(), Value::from(5))]),
            ),
            Operation::mutate(
                "Bridge",
                vec![Condition::eq("name", "br0")],
                vec![Mutation::new(
                    "ports",
                    Mutator::Insert,
                    Value::set([super::super::types::Atom::NamedUuid(
                        super::super::types::NamedUuid::new("p0"),
                    )]),
                )],
            ),
            Operation::delete("Port", vec![Condition::new("tag", Function::Greater, 3)]),
            Operation::Wait {
                table: "Port".into(),
                conditions: vec![Condition::eq("name", "p0")],
                columns: vec!["name".into()],
                until: WaitUntil::Equal,
                rows: vec![],
                timeout_ms: Some(0),
            },
            Operation::Commit { durable: false },
            Operation::Abort,
            Operation::Comment("c".into()),
            Operation::Assert { lock: "l".into() },
        ];
        let text: Vec<String> = ops.iter().map(|o| o.to_json().to_string()).collect();
        assert_eq!(
            text,
            vec![
                r#"{"op":"insert","row":{"interfaces":["named-uuid","i0"],"name":"p0"},"table":"Port","uuid-name":"p0"}"#,
                r#"{"columns":["_uuid"],"op":"select","table":"Port","where":[["name","==","p0"]]}"#,
                r#"{"op":"update","row":{"tag":5},"table":"Port","where":[["name","==","p0"]]}"#,
                r#"{"mutations":[["ports","insert",["set",[["named-uuid","p0"]]]]],"op":"mutate","table":"Bridge","where":[["name","==","br0"]]}"#,
                r#"{"op":"delete","table":"Port","where":[["tag",">",3]]}"#,
                r#"{"columns":["name"],"op":"wait","rows":[],"table":"Port","timeout":0,"until":"==","where":[["name","==","p0"]]}"#,
                r#"{"durable":false,"op":"commit"}"#,
                r#"{"op":"abort"}"#,
                r#"{"comment":"c","op":"comment"}"#,
                r#"{"lock":"l","op":"assert"}"#,
            ]
        );
    }

    #[test]
    fn transact_reply_errors_are_typed() {
        let ok = json!([{"uuid": ["uuid", "36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01"]}, {"count": 1}, {"rows": [{"name": "a"}]}]);
        let results = parse_transact_reply(&ok, 3).unwrap().unwrap();
        assert_eq!(results[1].count, Some(1));
        assert!(results[0].uuid.is_some());
        assert_eq!(
            results[2].rows.as_ref().unwrap()[0]["name"],
            Value::from("a")
        );

        let failed = json!([{}, {"error": "timed out"}, null]);
        let err = parse_transact_reply(&failed, 3).unwrap().unwrap_err();
        assert_eq!(err.op_index, 1);
        assert_eq!(err.kind, OvsdbErrorKind::TimedOut);

        let commit =
            json!([{}, {"error": "referential integrity violation", "details": "dangling"}]);
        let err = parse_transact_reply(&commit, 1).unwrap().unwrap_err();
        assert_eq!(err.kind, OvsdbErrorKind::ReferentialIntegrityViolation);
        assert_eq!(
            err.to_string(),
            "OVSDB transaction failed at commit: referential integrity violation (dangling)"
        );

        assert!(parse_transact_reply(&json!({"a": 1}), 1).is_err());
        assert!(parse_transact_reply(&json!([]), 1).is_err());
        assert!(parse_transact_reply(&json!([{"count": "x"}]), 1).is_err());
    }
}
