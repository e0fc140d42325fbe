//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge
//! patch good enough for the core types the lab uses.

use serde_json::{Map, Value};

/// Error applying a patch; becomes a 422 (or 400) for the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn unescape_pointer_token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(Vec<String>, String), PatchError> {
    if path.is_empty() {
        return Err(PatchError("JSON patch path must not be empty".into()));
    }
    let tokens: Vec<String> = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError(format!("invalid JSON pointer {path:?}")))?
        .split('/')
        .map(unescape_pointer_token)
        .collect();
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| PatchError("empty path".into()))?;
    Ok((parents.to_vec(), last.clone()))
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    parents: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for token in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(token),
            Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError(format!("path {path:?} does not exist")))?;
    }
    Ok(cur)
}

fn pointer_get(doc: &Value, path: &str) -> Result<Value, PatchError> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| PatchError(format!("path {path:?} does not exist")))
}

fn op_add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parents, last) = split_pointer(path)?;
    match parent_mut(doc, &parents, path)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| PatchError(format!("index out of range in {path:?}")))?
            };
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(PatchError(format!(
            "cannot add at {path:?}: parent is not a container"
        ))),
    }
}

fn op_remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parents, last) = split_pointer(path)?;
    let missing = || PatchError(format!("path {path:?} does not exist"));
    match parent_mut(doc, &parents, path)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let idx = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(idx))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch. On error the document may be partly modified: callers work on a copy.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError("a JSON patch must be an array of operations".into()))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError(format!("operation {op} has no path")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError(format!("operation {name} on {path:?} has no value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError(format!("operation {name} on {path:?} has no from")))
        };
        match name {
            "add" => op_add(doc, path, value()?)?,
            "remove" => {
                op_remove(doc, path)?;
            }
            "replace" => {
                op_remove(doc, path)?;
                op_add(doc, path, value()?)?;
            }
            "move" => {
                let v = op_remove(doc, from()?)?;
                op_add(doc, path, v)?;
            }
            "copy" => {
                let v = pointer_get(doc, from()?)?;
                op_add(doc, path, v)?;
            }
            "test" => {
                if pointer_get(doc, path)? != value()? {
                    return Err(PatchError(format!("test operation failed at {path:?}")));
                }
            }
            other => {
                return Err(PatchError(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Merge key of a list field in the core types (`patchMergeKey`), by field name.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "taints" => "key",
        "hostAliases" => "ip",
        "ports" => {
            let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
            if has("containerPort") {
                "containerPort"
            } else if has("port") {
                "port"
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// Primitive lists whose `patchStrategy` is `merge` (union of values).
fn is_merging_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch for built-in kinds: like a merge patch, but lists with a known
/// merge key merge element by element (`$patch: delete` removes one), `finalizers` merges as a
/// set, `$deleteFromPrimitiveList/<f>` removes values and `$setElementOrder/<f>` / `$retainKeys`
/// directives are accepted (ordering is not enforced).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        if let Some(m) = replacement.as_object_mut() {
            m.remove("$patch");
        }
        *target = replacement;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return Ok(());
    };
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match value {
            Value::Array(patch_items) => {
                let existing = target_map.get(key).and_then(Value::as_array).cloned();
                let merged = match existing {
                    Some(mut current) => {
                        if is_merging_primitive_list(key) {
                            for v in patch_items {
                                if !current.contains(v) {
                                    current.push(v.clone());
                                }
                            }
                            current
                        } else if let Some(mk) = merge_key(key, patch_items) {
                            merge_keyed_list(current, patch_items, mk)?
                        } else {
                            patch_items.clone()
                        }
                    }
                    None => patch_items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect(),
                };
                target_map.insert(key.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                strategic_merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value)?;
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn merge_keyed_list(
    mut current: Vec<Value>,
    patch_items: &[Value],
    key: &str,
) -> Result<Vec<Value>, PatchError> {
    for item in patch_items {
        let Some(k) = item.get(key) else {
            return Err(PatchError(format!(
                "list element {item} has no merge key {key:?}"
            )));
        };
        let pos = current.iter().position(|c| c.get(key) == Some(k));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut current[i], item)?,
            (None, false) => current.push(item.clone()),
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3]}));
        assert_eq!(doc, json!({"a": [3]}));
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "remove", "path": "/list/0"},
                {"op": "copy", "from": "/list", "path": "/copy"},
                {"op": "move", "from": "/copy", "path": "/moved"},
                {"op": "test", "path": "/moved", "value": [2, 3]}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "x", "b/c": "2"}}, "list": [2, 3], "moved": [2, 3]})
        );
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/list", "value": []}])
            )
            .is_err()
        );
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "y"}
        ]}, "metadata": {"finalizers": ["f1"]}});
        strategic_merge_patch(
            &mut pod,
            &json!({
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "spec": {"containers": [
                    {"name": "a", "image": "x2", "ports": [{"containerPort": 81}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "z"}
                ]},
                "metadata": {"finalizers": ["f2"]}
            }),
        )
        .unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x2", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81}]},
                {"name": "c", "image": "z"}
            ]}, "metadata": {"finalizers": ["f1", "f2"]}})
        );
        strategic_merge_patch(
            &mut pod,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        )
        .unwrap();
        assert_eq!(pod["metadata"]["finalizers"], json!(["f2"]));
    }
}
