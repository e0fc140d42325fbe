//! OpenAPI v3 endpoints (`/openapi/v3`, `/openapi/v3/<api|apis/group>/<version>`).
//!
//! The lab serves no schemas. It serves, per group/version, a document with one PATCH
//! operation per kind that declares the `fieldValidation` query parameter and the kind's
//! `x-kubernetes-group-version-kind`. That is exactly what `kubectl` (1.27+) looks for to
//! decide that the server validates fields itself, so `kubectl create -f` / `kubectl apply -f`
//! work with their default `--validate=strict` and skip client-side schema validation (which
//! would need full schemas). `/openapi/v2` is not served (404): kubectl then computes
//! client-side apply patches from its compiled-in types (strategic merge for built-in kinds,
//! JSON merge patch for custom resources).

use serde_json::{Map, Value, json};

use super::resources::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI document at `/openapi/<rest>`, if served.
pub fn document(registry: &Registry, rest: &[&str]) -> Option<Value> {
    match rest {
        ["v3"] => {
            let mut paths = Map::new();
            for t in registry.all() {
                let p = gv_path(&t.group, &t.version);
                let hash = format!("{:016X}", fnv(&index_key(registry, &t.group, &t.version)));
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                );
            }
            Some(json!({"paths": paths}))
        }
        ["v3", "api", version] => gv_document(registry, "", version),
        ["v3", "apis", group, version] => gv_document(registry, group, version),
        _ => None,
    }
}

fn index_key(registry: &Registry, group: &str, version: &str) -> String {
    registry
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| format!("{}:{}:{};", t.plural, t.kind, t.namespaced))
        .collect()
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn gv_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    if !registry.serves_group_version(group, version) {
        return None;
    }
    let mut paths = Map::new();
    for t in registry
        .all()
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let base = format!("/{}", gv_path(group, version));
        let path = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        paths.insert(
            path,
            json!({
                "patch": {
                    "operationId": format!("patch{}", t.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
                    ],
                    "responses": {"200": {"description": "OK"}}
                }
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Switchyard lab API server", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
