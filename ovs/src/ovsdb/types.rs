//! OVSDB data: atoms, sets, maps and rows with their RFC 7047 JSON encoding
//! (section 5.1).
//!
//! | Rust | JSON |
//! |---|---|
//! | `Atom::Integer(5)` | `5` |
//! | `Atom::Real(1.5)` | `1.5` |
//! | `Atom::Boolean(true)` | `true` |
//! | `Atom::String("a")` | `"a"` |
//! | `Atom::Uuid(u)` | `["uuid","<u>"]` |
//! | `Atom::NamedUuid("p")` | `["named-uuid","p"]` |
//! | `Value::Set(vec![a, b])` | `["set",[a,b]]` |
//! | `Value::Map(vec![(k, v)])` | `["map",[[k,v]]]` |
//!
//! A one-element set may be sent as its bare atom; [`Value::Atom`] keeps what
//! was on the wire and the accessors (`as_set`, `as_optional_*`) treat both
//! forms alike.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value as Json, json};

pub use uuid::Uuid;

/// Error for JSON that is not a valid OVSDB datum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB value {json}: {reason}")]
pub struct DatumError {
    /// The offending JSON (shortened).
    pub json: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn datum_error(json: &Json, reason: &'static str) -> DatumError {
    DatumError {
        json: short_json(json),
        reason,
    }
}

/// `json` as text, cut to 200 bytes (at a character boundary) for errors and logs.
pub(crate) fn short_json(json: &Json) -> String {
    let mut text = json.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A name for a row inserted in the same transaction (`uuid-name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedUuid(pub String);

impl NamedUuid {
    /// A named uuid. OVSDB requires `[_a-zA-Z][_a-zA-Z0-9]*`.
    pub fn new(name: impl Into<String>) -> Self {
        NamedUuid(name.into())
    }
}

impl fmt::Display for NamedUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One OVSDB atom.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Atom {
    /// `integer`
    Integer(i64),
    /// `real`
    Real(f64),
    /// `boolean`
    Boolean(bool),
    /// `string`
    String(String),
    /// `uuid` of an existing row.
    Uuid(Uuid),
    /// `uuid` of a row inserted in the same transaction.
    NamedUuid(NamedUuid),
}

impl Atom {
    /// The RFC 7047 JSON encoding.
    pub fn to_json(&self) -> Json {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.to_string()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n.0]),
        }
    }

    /// Parses the RFC 7047 JSON encoding of an atom.
    pub fn from_json(json: &Json) -> Result<Self, DatumError> {
        match json {
            Json::Bool(b) => Ok(Atom::Boolean(*b)),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Atom::Integer(i))
                } else if let Some(r) = n.as_f64() {
                    Ok(Atom::Real(r))
                } else {
                    Err(datum_error(json, "number out of range"))
                }
            }
            Json::String(s) => Ok(Atom::String(s.clone())),
            Json::Array(items) => match items.as_slice() {
                [Json::String(tag), Json::String(id)] if tag == "uuid" => Uuid::parse_str(id)
                    .map(Atom::Uuid)
                    .map_err(|_| datum_error(json, "malformed uuid")),
                [Json::String(tag), Json::String(name)] if tag == "named-uuid" => {
                    Ok(Atom::NamedUuid(NamedUuid(name.clone())))
                }
                _ => Err(datum_error(json, "expected an atom")),
            },
            _ => Err(datum_error(json, "expected an atom")),
        }
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer atom.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The uuid, if this is a uuid atom.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean atom.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom::String(s.to_string())
    }
}
impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom::String(s)
    }
}
impl From<i64> for Atom {
    fn from(i: i64) -> Self {
        Atom::Integer(i)
    }
}
impl From<bool> for Atom {
    fn from(b: bool) -> Self {
        Atom::Boolean(b)
    }
}
impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Self {
        Atom::Uuid(u)
    }
}
impl From<NamedUuid> for Atom {
    fn from(n: NamedUuid) -> Self {
        Atom::NamedUuid(n)
    }
}

/// An OVSDB datum: an atom, a set or a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A single atom (also the wire form of a one-element set).
    Atom(Atom),
    /// `["set", [...]]`
    Set(Vec<Atom>),
    /// `["map", [[k, v], ...]]`
    Map(Vec<(Atom, Atom)>),
}

impl Value {
    /// The empty set (also "no value" of an optional column).
    pub fn empty_set() -> Self {
        Value::Set(Vec::new())
    }

    /// A set of atoms.
    pub fn set<A: Into<Atom>>(items: impl IntoIterator<Item = A>) -> Self {
        Value::Set(items.into_iter().map(Into::into).collect())
    }

    /// An optional value: the atom, or the empty set.
    pub fn optional<A: Into<Atom>>(item: Option<A>) -> Self {
        match item {
            Some(a) => Value::Atom(a.into()),
            None => Value::empty_set(),
        }
    }

    /// A map of string keys to string values.
    pub fn string_map<K: AsRef<str>, V: AsRef<str>>(
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Value::Map(
            items
                .into_iter()
                .map(|(k, v)| (Atom::from(k.as_ref()), Atom::from(v.as_ref())))
                .collect(),
        )
    }

    /// A uuid reference.
    pub fn uuid(u: Uuid) -> Self {
        Value::Atom(Atom::Uuid(u))
    }

    /// A reference to a row inserted in the same transaction.
    pub fn named_uuid(name: &str) -> Self {
        Value::Atom(Atom::NamedUuid(NamedUuid::new(name)))
    }

    /// The RFC 7047 JSON encoding.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Atom(a) => a.to_json(),
            Value::Set(items) => {
                json!(["set", items.iter().map(Atom::to_json).collect::<Vec<_>>()])
            }
            Value::Map(pairs) => json!([
                "map",
                pairs
                    .iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Parses the RFC 7047 JSON encoding of a datum.
    pub fn from_json(json: &Json) -> Result<Self, DatumError> {
        if let Json::Array(items) = json
            && let [Json::String(tag), body] = items.as_slice()
        {
            match (tag.as_str(), body) {
                ("set", Json::Array(atoms)) => {
                    return atoms
                        .iter()
                        .map(Atom::from_json)
                        .collect::<Result<_, _>>()
                        .map(Value::Set);
                }
                ("map", Json::Array(pairs)) => {
                    return pairs
                        .iter()
                        .map(|pair| match pair {
                            Json::Array(kv) if kv.len() == 2 => {
                                Ok((Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?))
                            }
                            _ => Err(datum_error(pair, "map entry is not a [key, value] pair")),
                        })
                        .collect::<Result<_, _>>()
                        .map(Value::Map);
                }
                ("set" | "map", _) => {
                    return Err(datum_error(json, "set/map body is not an array"));
                }
                _ => {}
            }
        }
        Atom::from_json(json).map(Value::Atom)
    }

    /// The elements when read as a set (a bare atom is a one-element set;
    /// a map gives nothing).
    pub fn as_set(&self) -> &[Atom] {
        match self {
            Value::Atom(a) => std::slice::from_ref(a),
            Value::Set(items) => items,
            Value::Map(_) => &[],
        }
    }

    /// The pairs when read as a map (an empty set is an empty map).
    pub fn as_map(&self) -> &[(Atom, Atom)] {
        match self {
            Value::Map(pairs) => pairs,
            _ => &[],
        }
    }

    /// A string-to-string map (non-string entries skipped).
    pub fn to_string_map(&self) -> BTreeMap<String, String> {
        self.as_map()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect()
    }

    /// The single atom of a scalar or a one-element set.
    pub fn as_single(&self) -> Option<&Atom> {
        match self.as_set() {
            [a] => Some(a),
            _ => None,
        }
    }

    /// A string scalar / optional string.
    pub fn as_str(&self) -> Option<&str> {
        self.as_single().and_then(Atom::as_str)
    }

    /// An integer scalar / optional integer.
    pub fn as_integer(&self) -> Option<i64> {
        self.as_single().and_then(Atom::as_integer)
    }

    /// A boolean scalar / optional boolean.
    pub fn as_bool(&self) -> Option<bool> {
        self.as_single().and_then(Atom::as_bool)
    }

    /// A uuid scalar / optional uuid.
    pub fn as_uuid(&self) -> Option<Uuid> {
        self.as_single().and_then(Atom::as_uuid)
    }

    /// All uuids of a set of references.
    pub fn uuids(&self) -> Vec<Uuid> {
        self.as_set().iter().filter_map(Atom::as_uuid).collect()
    }

    /// All integers of a set of integers.
    pub fn integers(&self) -> Vec<i64> {
        self.as_set().iter().filter_map(Atom::as_integer).collect()
    }
}

impl<A: Into<Atom>> From<A> for Value {
    fn from(a: A) -> Self {
        Value::Atom(a.into())
    }
}

impl Serialize for Atom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Atom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Json::deserialize(d)?;
        Atom::from_json(&json).map_err(D::Error::custom)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Json::deserialize(d)?;
        Value::from_json(&json).map_err(D::Error::custom)
    }
}

/// A row: column name to datum. Columns not present were not sent.
pub type Row = BTreeMap<String, Value>;

/// Parses a JSON object into a [`Row`].
pub fn row_from_json(json: &Json) -> Result<Row, DatumError> {
    let object = json
        .as_object()
        .ok_or_else(|| datum_error(json, "row is not a JSON object"))?;
    object
        .iter()
        .map(|(column, value)| Ok((column.clone(), Value::from_json(value)?)))
        .collect()
}

/// Encodes a [`Row`] as a JSON object.
pub fn row_to_json(row: &Row) -> Json {
    Json::Object(
        row.iter()
            .map(|(column, value)| (column.clone(), value.to_json()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(value: Value, text: &str) {
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
        let back: Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn json_encoding_is_byte_exact() {
        let u = Uuid::parse_str("36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01").unwrap();
        roundtrip(Value::from(5), "5");
        roundtrip(Value::from(-1), "-1");
        roundtrip(Value::Atom(Atom::Real(1.5)), "1.5");
        roundtrip(Value::from(true), "true");
        roundtrip(Value::from("a\"b"), r#""a\"b""#);
        roundtrip(
            Value::uuid(u),
            r#"["uuid","36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01"]"#,
        );
        roundtrip(Value::named_uuid("port0"), r#"["named-uuid","port0"]"#);
        roundtrip(Value::empty_set(), r#"["set",[]]"#);
        roundtrip(Value::set([100i64, 200]), r#"["set",[100,200]]"#);
        roundtrip(
            Value::string_map([("k8s-pod", "ns/a"), ("x", "y")]),
            r#"["map",[["k8s-pod","ns/a"],["x","y"]]]"#,
        );
        roundtrip(
            Value::Set(vec![Atom::Uuid(u), Atom::NamedUuid(NamedUuid::new("p"))]),
            r#"["set",[["uuid","36bd63e0-6f3c-4a44-8c4f-3c1b5c2d9e01"],["named-uuid","p"]]]"#,
        );
    }

    #[test]
    fn accessors_treat_atom_as_one_element_set() {
        let tag: Value = serde_json::from_str("7").unwrap();
        assert_eq!(tag.as_integer(), Some(7));
        assert_eq!(tag.integers(), vec![7]);
        let none: Value = serde_json::from_str(r#"["set",[]]"#).unwrap();
        assert_eq!(none.as_integer(), None);
        assert!(none.to_string_map().is_empty());
        let map: Value = serde_json::from_str(r#"["map",[["a","1"]]]"#).unwrap();
        assert_eq!(map.to_string_map()["a"], "1");
    }

    #[test]
    fn invalid_values_are_errors() {
        for bad in [
            r#"["uuid","nope"]"#,
            r#"["set",{}]"#,
            r#"["map",[["a"]]]"#,
            r#"["map",[1]]"#,
            r#"{"a":1}"#,
            "null",
            r#"["frob",1]"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
        assert!(row_from_json(&json!([1])).is_err());
    }
}
