//! The `scale` subresource of Deployments and ReplicaSets (`autoscaling/v1` `Scale`), what
//! `kubectl scale` reads and writes: GET, PUT (with the Scale's resourceVersion as a
//! precondition) and PATCH (merge, JSON or strategic merge of the Scale).

use axum::http::Method;
use serde_json::{Value, json};

use super::error::ApiError;
use super::resources::ResourceType;
use super::store::Store;

/// Whether `rt` has a `scale` subresource here.
pub fn has_scale(rt: &ResourceType) -> bool {
    rt.group == "apps" && matches!(rt.plural.as_str(), "deployments" | "replicasets")
}

/// The Scale of an object.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector
        }
    })
}

fn replicas_of(scale: &Value) -> Result<i64, ApiError> {
    match scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => Ok(n.as_i64().unwrap_or(0)),
        None | Some(Value::Null) => Ok(0),
        Some(v) => Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            scale
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            format!("spec.replicas: Invalid value: {v}: must be greater than or equal to 0"),
        )),
    }
}

/// Serves `.../NAME/scale`.
pub fn serve(
    store: &Store,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    method: &Method,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let obj = store.get(rt, ns, name)?;
    let new_scale = match *method {
        Method::GET => return Ok(scale_of(&obj)),
        Method::PUT => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("the Scale is not valid JSON: {e}")))?,
        Method::PATCH => {
            // Patch the Scale as the client sees it, then carry its replicas over.
            let mut current = scale_of(&obj);
            let ct = content_type.split(';').next().unwrap_or_default().trim();
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            match ct {
                "application/json-patch+json" => super::patch::json_patch(&mut current, &patch)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    super::patch::merge_patch(&mut current, &patch)
                }
                _ => return Err(ApiError::unsupported_media_type(content_type)),
            }
            current
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {}/scale",
                rt.plural
            )));
        }
    };
    let replicas = replicas_of(&new_scale)?;
    let mut updated = obj.clone();
    updated["spec"]["replicas"] = json!(replicas);
    // A PUT's resourceVersion is a precondition (409 when stale); a PATCH applies to the
    // current object.
    if *method == Method::PUT
        && let Some(rv) = new_scale
            .pointer("/metadata/resourceVersion")
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        updated["metadata"]["resourceVersion"] = rv.clone();
    }
    let stored = store.update(rt, ns, name, updated, false)?;
    Ok(scale_of(&stored))
}
