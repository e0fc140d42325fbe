//! The HTTP front end: routing of Kubernetes API paths onto the store, discovery, and watch
//! streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::error::ApiError;
use super::openapi;
use super::protobuf;
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    DeleteOptions, DeleteOutcome, EventType, ListQuery, Store, StoredEvent, WatchStart,
};
use super::table;

/// Shared state of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The object store.
    pub store: Arc<Store>,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Flips to `true` on shutdown; ends every watch stream.
    pub shutdown: watch::Receiver<bool>,
    /// Runs `pods/exec` and serves `pods/log` (the lab's kubelet); `None`: they are refused.
    pub pods: Option<Arc<dyn super::pods::PodRuntime>>,
}

fn json_response(code: u16, body: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_default()
}

/// A stored object encoded as the requested version: `kind` and `apiVersion` first (as
/// kube-apiserver writes them), then its other fields, straight from the shared stored
/// object (a list or a watch event does not copy what it sends).
struct Typed<'a> {
    api_version: &'a str,
    kind: &'a str,
    object: &'a Value,
}

impl serde::Serialize for Typed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(fields) = self.object.as_object() else {
            return self.object.serialize(serializer);
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind)?;
        map.serialize_entry("apiVersion", self.api_version)?;
        for (name, value) in fields {
            if name != "apiVersion" && name != "kind" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// A list response whose items are encoded as [`Typed`].
#[derive(serde::Serialize)]
struct ListBody<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<Typed<'a>>,
}

impl<'a> ListBody<'a> {
    fn new(
        rt: &'a ResourceType,
        api_version: &'a str,
        metadata: Value,
        items: &'a [Arc<Value>],
    ) -> Self {
        Self {
            kind: format!("{}List", rt.kind),
            api_version,
            metadata,
            items: items
                .iter()
                .map(|object| Typed {
                    api_version,
                    kind: &rt.kind,
                    object,
                })
                .collect(),
        }
    }
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// Which resource a path names.
#[derive(Debug)]
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_path: bool,
}

/// Media types negotiated from `Accept`.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    table: bool,
}

fn negotiate(headers: &HeaderMap) -> Result<Negotiated, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*")
        .to_string();
    let mut json_ok = false;
    let mut table = false;
    for part in accept.split(',') {
        let part = part.trim();
        let mt = part.split(';').next().unwrap_or("").trim();
        if matches!(mt, "application/json" | "*/*" | "application/*" | "") {
            if part.contains("as=Table") {
                table = true;
            } else if part.contains("as=") {
                // PartialObjectMetadata(List) or aggregated discovery: not served, fall through.
                continue;
            }
            json_ok = true;
        }
    }
    if !json_ok {
        return Err(ApiError::not_acceptable(&accept));
    }
    Ok(Negotiated { table })
}

/// The one handler for every request.
pub async fn handle(
    state: axum::extract::State<HttpState>,
    req: axum::extract::Request,
) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    if let Some((ns, name, sub)) = super::pods::pod_subresource(uri.path()) {
        let (ns, name) = (ns.to_string(), name.to_string());
        tracing::debug!(%method, %uri, "request");
        let result = match (sub, &method) {
            ("exec", &Method::GET | &Method::POST) => {
                super::pods::exec(&state, &ns, &name, req).await
            }
            ("log", &Method::GET) => super::pods::log(&state, &ns, &name, req).await,
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on pods/{sub}"
            ))),
        };
        return result.unwrap_or_else(|e| {
            tracing::debug!(%method, %uri, code = e.code, reason = e.reason, "request failed");
            error_response(&e)
        });
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let body = match axum::body::to_bytes(body, super::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::request_too_large(&e.to_string())),
    };
    let path = uri.path().to_string();
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(&uri)
        .map(|q: axum::extract::Query<HashMap<String, String>>| q.0)
        .unwrap_or_default();
    tracing::debug!(%method, %uri, "request");
    match route(&state, &method, &path, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code, reason = e.reason, "request failed");
            error_response(&e)
        }
    }
}

async fn route(
    state: &HttpState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only = |r: Value| -> Result<Response, ApiError> {
        if method == Method::GET {
            Ok(json_response(200, &r))
        } else {
            Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )))
        }
    };
    match segs.as_slice() {
        ["version"] => return get_only(version_info()),
        ["healthz"] | ["livez"] | ["readyz"] => {
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("ok"))
                .unwrap_or_default());
        }
        ["api"] => return get_only(state.store.registry().core_versions()),
        ["apis"] => return get_only(state.store.registry().group_list()),
        ["api", "v1"] => {
            return get_only(
                state
                    .store
                    .registry()
                    .resource_list("", "v1")
                    .ok_or_else(|| ApiError::no_route(path))?,
            );
        }
        ["apis", g] => {
            return get_only(
                state
                    .store
                    .registry()
                    .group(g)
                    .ok_or_else(|| ApiError::no_route(path))?,
            );
        }
        ["apis", g, v] => {
            return get_only(
                state
                    .store
                    .registry()
                    .resource_list(g, v)
                    .ok_or_else(|| ApiError::no_route(path))?,
            );
        }
        ["openapi", rest @ ..] => {
            return match openapi::document(&state.store.registry(), rest) {
                Some(doc) => get_only(doc),
                None => Err(ApiError::no_route(path)),
            };
        }
        _ => {}
    }
    let target = parse_target(state, &segs).ok_or_else(|| ApiError::no_route(path))?;
    let neg = negotiate(headers)?;
    resource_request(state, method, target, query, headers, body, neg).await
}

fn parse_target(state: &HttpState, segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let lookup = |plural: &str| state.store.resource_type(group, version, plural);
    let (rt, namespace, name, sub) = match rest {
        ["namespaces", ns, "status" | "finalize"] if group.is_empty() => {
            (lookup("namespaces")?, None, Some(*ns), Some(rest[2]))
        }
        ["namespaces", ns, res, tail @ ..] => {
            let rt = lookup(res)?;
            if !rt.namespaced {
                return None;
            }
            match tail {
                [] => (rt, Some(*ns), None, None),
                [name] => (rt, Some(*ns), Some(*name), None),
                [name, sub] => (rt, Some(*ns), Some(*name), Some(*sub)),
                _ => return None,
            }
        }
        [res] => (lookup(res)?, None, None, None),
        [res, name] => {
            let rt = lookup(res)?;
            if rt.namespaced {
                return None;
            }
            (rt, None, Some(*name), None)
        }
        [res, name, sub] => {
            let rt = lookup(res)?;
            if rt.namespaced {
                return None;
            }
            (rt, None, Some(*name), Some(*sub))
        }
        _ => return None,
    };
    Some(Target {
        rt,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
        watch_path,
    })
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-switchyard-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string()))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })
}

fn list_query(query: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let bad = |e: super::selector::SelectorError| ApiError::bad_request(e.to_string());
    Ok(ListQuery {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(bad)?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(bad)?,
        limit: query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

fn is_true(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "1" || v == "true")
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &HttpState,
    method: &Method,
    t: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    neg: Negotiated,
) -> Result<Response, ApiError> {
    let store = &state.store;
    let rt = &t.rt;
    let ns = t.namespace.clone().unwrap_or_default();
    let render_one = |obj: Value, code: u16| -> Response {
        if neg.table && method == Method::GET {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            json_response(
                code,
                &table::table(rt, &[obj], json!({"resourceVersion": rv})),
            )
        } else {
            json_response(code, &obj)
        }
    };
    if t.subresource.as_deref() == Some("scale")
        && super::scale::has_scale(rt)
        && let Some(name) = &t.name
    {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let scale = super::scale::serve(store, rt, &ns, name, method, content_type, &body)?;
        return Ok(json_response(200, &scale));
    }
    if let Some(sub) = &t.subresource
        && sub != "status"
    {
        return Err(ApiError::no_route(&format!("{}/{sub}", rt.plural)));
    }
    if t.subresource.is_some() && !rt.status_subresource {
        return Err(ApiError::no_route(&format!("{}/status", rt.plural)));
    }
    let status = t.subresource.is_some();
    if *method != Method::GET && query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the lab API server (nothing was changed)",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parse_body = |body: &[u8]| -> Result<Value, ApiError> {
        if content_type.contains("protobuf") {
            // kubectl's imperative generators send protobuf for a few core kinds.
            return protobuf::decode(body)
                .map_err(|e| ApiError::unsupported_body(&content_type, &e.0));
        }
        if content_type.contains("cbor") {
            return Err(ApiError::unsupported_body(
                &content_type,
                "CBOR is not supported",
            ));
        }
        parse_body(body)
    };
    match (&t.name, method.clone()) {
        (None, Method::GET) => {
            if t.watch_path || is_true(query, "watch") {
                return watch_response(state, rt, t.namespace.as_deref(), query, neg);
            }
            let q = list_query(query)?;
            let list = store.list(rt, t.namespace.as_deref(), &q)?;
            let items = list.items;
            let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
            if let Some(c) = list.continue_token {
                meta["continue"] = json!(c);
                meta["remainingItemCount"] = json!(list.remaining);
            }
            if neg.table {
                let items: Vec<Value> = items
                    .iter()
                    .map(|o| Store::with_version(rt, Value::clone(o)))
                    .collect();
                return Ok(json_response(200, &table::table(rt, &items, meta)));
            }
            let api_version = rt.api_version();
            Ok(json_response(
                200,
                &ListBody::new(rt, &api_version, meta, &items),
            ))
        }
        (None, Method::POST) => {
            let obj = parse_body(&body)?;
            let created = store.create(rt, t.namespace.as_deref(), obj)?;
            Ok(json_response(201, &created))
        }
        (None, Method::DELETE) => {
            let q = list_query(query)?;
            let list = store.list(rt, t.namespace.as_deref(), &q)?;
            let rv = list.resource_version;
            let opts = delete_options(query, &body)?;
            let mut deleted = Vec::new();
            for item in list.items {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let item_ns = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match store.delete(rt, item_ns, name, &opts) {
                    Ok(DeleteOutcome::Deleted(o) | DeleteOutcome::Terminating(o)) => {
                        deleted.push(o)
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            ))
        }
        (Some(name), Method::GET) => Ok(render_one(store.get(rt, &ns, name)?, 200)),
        (Some(name), Method::PUT) => {
            let obj = parse_body(&body)?;
            Ok(json_response(
                200,
                &store.update(rt, &ns, name, obj, status)?,
            ))
        }
        (Some(name), Method::PATCH) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let existed = store.get(rt, &ns, name).is_ok();
            let obj = store.patch(rt, &ns, name, &ct, &body, status)?;
            Ok(json_response(if existed { 200 } else { 201 }, &obj))
        }
        (Some(name), Method::DELETE) if !status => {
            let opts = delete_options(query, &body)?;
            match store.delete(rt, &ns, name, &opts)? {
                DeleteOutcome::Deleted(o) => Ok(json_response(200, &o)),
                DeleteOutcome::Terminating(o) => Ok(json_response(200, &o)),
            }
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported here"
        ))),
    }
}

fn delete_options(query: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        grace_period_seconds: query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        ..DeleteOptions::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = parse_body(body)?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period_seconds = Some(g);
        }
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(opts)
}

/// Selector state of one watch.
#[derive(Debug)]
struct WatchFilter {
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: bool,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The watch event type a stored event turns into for this watcher, if any.
    fn translate(&self, e: &StoredEvent) -> Option<&'static str> {
        if e.key.group != self.rt.group || e.key.resource != self.rt.plural {
            return None;
        }
        if let Some(ns) = &self.namespace
            && &e.key.namespace != ns
        {
            return None;
        }
        let now = self.matches(&e.object);
        let kind = match e.kind {
            EventType::Added | EventType::Deleted => now.then_some(e.kind.as_str()),
            EventType::Modified => {
                let before = e.old.as_ref().is_none_or(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(kind)
    }

    fn encode(&self, kind: &str, obj: &Value) -> Bytes {
        #[derive(serde::Serialize)]
        struct Event<'a, T> {
            #[serde(rename = "type")]
            kind: &'a str,
            object: T,
        }
        let mut line = if self.table {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            let object = table::table(
                &self.rt,
                &[Store::with_version(&self.rt, obj.clone())],
                json!({"resourceVersion": rv}),
            );
            serde_json::to_vec(&Event { kind, object })
        } else {
            let api_version = self.rt.api_version();
            let object = Typed {
                api_version: &api_version,
                kind: &self.rt.kind,
                object: obj,
            };
            serde_json::to_vec(&Event { kind, object })
        }
        .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

fn watch_response(
    state: &HttpState,
    rt: &ResourceType,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
    neg: Negotiated,
) -> Result<Response, ApiError> {
    let q = list_query(query)?;
    let filter = WatchFilter {
        rt: rt.clone(),
        namespace: namespace.map(str::to_string),
        labels: q.labels,
        fields: q.fields,
        table: neg.table,
    };
    let bookmarks = is_true(query, "allowWatchBookmarks");
    let send_initial = is_true(query, "sendInitialEvents");
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let start = if send_initial || rv.is_empty() || rv == "0" {
        WatchStart::InitialState
    } else {
        WatchStart::After(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        )
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let handle = match state.store.watch(rt, namespace, start) {
        Ok(h) => h,
        Err(e) => {
            // Like the real API server: 200, then one ERROR event carrying the Status.
            let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
                .unwrap_or_default();
            line.push(b'\n');
            let _ = tx.try_send(Bytes::from(line));
            return Ok(stream_response(rx));
        }
    };
    let mut shutdown = state.shutdown.clone();
    let interval = state.bookmark_interval;
    tokio::spawn(async move {
        let mut live = handle.live;
        let mut progress = handle.backlog_rv;
        for e in &handle.backlog {
            if let Some(kind) = filter.translate(e)
                && tx.send(filter.encode(kind, &e.object)).await.is_err()
            {
                return;
            }
        }
        if send_initial && bookmarks && tx.send(filter.bookmark(progress, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    if bookmarks && tx.send(filter.bookmark(progress, false)).await.is_err() {
                        return;
                    }
                }
                r = live.recv() => match r {
                    Ok(e) => {
                        if e.rv <= handle.backlog_rv {
                            continue;
                        }
                        progress = e.rv;
                        if let Some(kind) = filter.translate(&e)
                            && tx.send(filter.encode(kind, &e.object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that cannot keep up is closed; the client resumes from its last rv.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(stream_response(rx))
}
