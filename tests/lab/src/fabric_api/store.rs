//! The fabric API's objects and its answers, independent of HTTP framing and of netlink.
//!
//! The objects (tier-1 static routes and SNAT rules as the NSX-T Policy API carries them) live
//! in memory; the route itself lives in the kernel ([`Kernel`]), and every read reports the
//! kernel's next hops, so a route edited out of band (by `ip route`, or by the fault API) shows
//! as it really is. The SNAT rules are applied as one whole set ([`Kernel::apply_nat`]) on
//! every change; reads report the objects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::StatusCode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const ROUTES: &str = "/policy/api/v1/infra/tier-1s/";
const REALIZED: &str = "/policy/api/v1/infra/realized-state/status?intent_path=";
const PAGE: usize = 50;

/// One SNAT rule as applied: traffic from `sources` leaving toward the internet gets
/// `translated` as its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    /// The rule's id (a comment in the kernel's rule).
    pub id: String,
    /// Source networks.
    pub sources: Vec<IpNet>,
    /// The address they leave with.
    pub translated: IpAddr,
}

/// Where routes are applied: the fabric namespace's kernel (netlink), or a fake in tests.
pub trait Kernel: Send + Sync {
    /// Installs (replaces) the route to `network` over `next_hops` (ECMP when more than one).
    fn apply<'a>(
        &'a self,
        network: IpNet,
        next_hops: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Removes the route to `network` (missing: fine).
    fn remove(&self, network: IpNet) -> BoxFuture<'_, Result<(), String>>;
    /// The next hops of the route to `network` now (empty: no route).
    fn read(&self, network: IpNet) -> BoxFuture<'_, Result<Vec<IpAddr>, String>>;
    /// Replaces every SNAT rule at once with `rules` (enabled ones, ordered by id). The default
    /// accepts them without applying anything (kernels of tests that only do routes).
    fn apply_nat<'a>(&'a self, rules: &'a [Snat]) -> BoxFuture<'a, Result<(), String>> {
        let _ = rules;
        Box::pin(async { Ok(()) })
    }
}

/// Injected faults (`PUT /lab/v1/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Answer Policy API requests with this HTTP status (e.g. 503).
    pub status: Option<u16>,
    /// Only this many times (then the fault clears); `None`: until changed.
    pub count: Option<u32>,
    /// Delay every Policy API answer by this many milliseconds.
    pub latency_ms: u64,
}

/// One Policy API request as served (`GET /lab/v1/requests`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    /// Milliseconds since the server started.
    pub at_ms: u64,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Inner {
    /// (tier-1, id) -> the object as last PUT (with `_revision`).
    objects: BTreeMap<(String, String), Value>,
    /// (tier-1, id) -> the NAT rule as last PUT (with `_revision`).
    nat: BTreeMap<(String, String), Value>,
    revision: i64,
    faults: Faults,
    served: Vec<Served>,
}

/// The fabric API's state.
pub struct Store {
    kernel: Box<dyn Kernel>,
    inner: Mutex<Inner>,
    /// Held across a write's revision check and kernel change (writes are serialized).
    writes: tokio::sync::Mutex<()>,
    started: Instant,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// An answer: status and JSON body.
pub type Answer = (StatusCode, Value);

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    let message = message.into();
    (
        status,
        json!({"httpStatus": status.canonical_reason().unwrap_or_default(),
               "error_code": status.as_u16(), "error_message": message}),
    )
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `/policy/api/v1/infra/tier-1s/<t1>/static-routes[/<id>]` -> (t1, id).
fn route_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix(ROUTES)?;
    let (t1, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("static-routes")?;
    if !valid_id(t1) {
        return None;
    }
    match rest {
        "" => Some((t1.to_string(), None)),
        r => {
            let id = r.strip_prefix('/')?;
            valid_id(id).then(|| (t1.to_string(), Some(id.to_string())))
        }
    }
}

/// `/policy/api/v1/infra/tier-1s/<t1>/nat/USER/nat-rules[/<id>]` -> (t1, id).
fn nat_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix(ROUTES)?;
    let (t1, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("nat/USER/nat-rules")?;
    if !valid_id(t1) {
        return None;
    }
    match rest {
        "" => Some((t1.to_string(), None)),
        r => {
            let id = r.strip_prefix('/')?;
            valid_id(id).then(|| (t1.to_string(), Some(id.to_string())))
        }
    }
}

/// The rule a NAT object asks for (`None`: disabled), or why it is refused.
fn snat_of(id: &str, obj: &Value) -> Result<Option<Snat>, String> {
    let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("action") != "SNAT" {
        return Err(format!(
            "action {:?}: the lab fabric does SNAT only",
            field("action")
        ));
    }
    let mut sources = Vec::new();
    for part in field("source_network")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let net = part
            .parse::<IpNet>()
            .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("source_network {part:?} is not a CIDR"))?;
        if !matches!(net, IpNet::V4(_)) {
            return Err(format!(
                "source_network {net}: the lab fabric does IPv4 only"
            ));
        }
        sources.push(net);
    }
    if sources.is_empty() {
        return Err("source_network is missing".into());
    }
    let translated = field("translated_network")
        .parse::<IpAddr>()
        .ok()
        .filter(IpAddr::is_ipv4)
        .ok_or_else(|| {
            format!(
                "translated_network {:?} is not an IPv4 address",
                field("translated_network")
            )
        })?;
    let enabled = obj.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    sources.sort();
    sources.dedup();
    Ok(enabled.then(|| Snat {
        id: id.to_string(),
        sources,
        translated,
    }))
}

fn network_of(obj: &Value) -> Option<IpNet> {
    obj.get("network")?.as_str()?.parse().ok()
}

fn hops_of(obj: &Value) -> Result<Vec<IpAddr>, String> {
    let Some(list) = obj.get("next_hops").and_then(Value::as_array) else {
        return Err("next_hops is missing".into());
    };
    let mut out = Vec::new();
    for h in list {
        let ip = h
            .get("ip_address")
            .and_then(Value::as_str)
            .ok_or("a next hop has no ip_address")?;
        out.push(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("next hop {ip:?} is not an address"))?,
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn hops_json(hops: &[IpAddr]) -> Value {
    Value::Array(
        hops.iter()
            .map(|h| json!({"ip_address": h.to_string(), "admin_distance": 1}))
            .collect(),
    )
}

fn cursor(query: &str) -> usize {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("cursor="))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

impl Store {
    /// A store applying routes through `kernel`.
    pub fn new(kernel: Box<dyn Kernel>) -> Self {
        Self {
            kernel,
            inner: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object as read now: next hops from the kernel.
    async fn realized_view(&self, mut obj: Value) -> Value {
        if let Some(net) = network_of(&obj)
            && let Ok(hops) = self.kernel.read(net).await
        {
            obj["next_hops"] = hops_json(&hops);
        }
        obj
    }

    /// Serves one request. `authorization`/`allow_overwrite`: whether those headers were sent
    /// (both are refused: the client certificate is the only credential, and overwriting
    /// objects owned by others is not how Switchyard works).
    pub async fn handle(
        &self,
        method: &str,
        path: &str,
        authorization: bool,
        allow_overwrite: bool,
        body: &[u8],
    ) -> Answer {
        if let Some(lab) = path.strip_prefix("/lab/v1/") {
            return self.lab(method, lab, body).await;
        }
        let faults = {
            let mut inner = self.lock();
            let f = inner.faults.clone();
            if f.status.is_some() {
                match inner.faults.count {
                    Some(0) => inner.faults = Faults::default(),
                    Some(n) => inner.faults.count = Some(n - 1),
                    None => {}
                }
            }
            f
        };
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let answer = match (faults.status, faults.count) {
            (Some(code), c) if c != Some(0) => error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "injected fault",
            ),
            _ if authorization => error(
                StatusCode::BAD_REQUEST,
                "Authorization is not accepted here: authenticate with the client certificate",
            ),
            _ if allow_overwrite => error(
                StatusCode::BAD_REQUEST,
                "X-Allow-Overwrite is not accepted by the lab fabric",
            ),
            _ => self.policy(method, path, body).await,
        };
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        if inner.served.len() >= 10_000 {
            inner.served.drain(..1000);
        }
        inner.served.push(Served {
            at_ms,
            method: method.to_string(),
            path: path.to_string(),
            status: answer.0.as_u16(),
        });
        answer
    }

    async fn policy(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        if let Some(intent) = path.strip_prefix(REALIZED) {
            return self.realized(&unescape(intent)).await;
        }
        let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
        if let Some((t1, id)) = nat_path(path_only) {
            return self.nat(method, t1, id, query, body).await;
        }
        let Some((t1, id)) = route_path(path_only) else {
            return error(StatusCode::NOT_FOUND, format!("no such path {path_only}"));
        };
        match (method, id) {
            ("GET", None) => self.list(&t1, query).await,
            ("GET", Some(id)) => {
                let obj = self.lock().objects.get(&(t1, id.clone())).cloned();
                match obj {
                    Some(o) => (StatusCode::OK, self.realized_view(o).await),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("static route {id} not found"),
                    ),
                }
            }
            ("PUT", Some(id)) => {
                let _w = self.writes.lock().await;
                self.put(t1, id, body).await
            }
            ("DELETE", Some(id)) => {
                let _w = self.writes.lock().await;
                self.delete(t1, id).await
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} {path_only}"),
            ),
        }
    }

    async fn list(&self, t1: &str, query: &str) -> Answer {
        let start = cursor(query);
        let all: Vec<Value> = self
            .lock()
            .objects
            .iter()
            .filter(|((t, _), _)| t == t1)
            .map(|(_, o)| o.clone())
            .collect();
        let mut results = Vec::new();
        for o in all.iter().skip(start).take(PAGE) {
            results.push(self.realized_view(o.clone()).await);
        }
        let mut out = json!({"results": results, "result_count": all.len()});
        if start + PAGE < all.len() {
            out["cursor"] = json!((start + PAGE).to_string());
        }
        (StatusCode::OK, out)
    }

    async fn put(&self, t1: String, id: String, body: &[u8]) -> Answer {
        let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
            return error(StatusCode::BAD_REQUEST, "the body is not JSON");
        };
        let Some(network) = network_of(&obj) else {
            return error(StatusCode::BAD_REQUEST, "network is missing or not a CIDR");
        };
        let hops = match hops_of(&obj) {
            Ok(h) if h.is_empty() => {
                return error(StatusCode::BAD_REQUEST, "next_hops is empty");
            }
            Ok(h) => h,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let key = (t1, id.clone());
        {
            let inner = self.lock();
            let current = inner
                .objects
                .get(&key)
                .and_then(|o| o.get("_revision"))
                .and_then(Value::as_i64);
            let sent = obj.get("_revision").and_then(Value::as_i64);
            if current != sent {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "static route {id}: _revision {sent:?} does not match {current:?} (read it first)"
                    ),
                );
            }
        }
        if let Err(e) = self.kernel.apply(network, &hops).await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("applying the route: {e}"),
            );
        }
        let mut inner = self.lock();
        inner.revision += 1;
        obj["_revision"] = json!(inner.revision);
        obj["id"] = json!(id);
        obj["path"] = json!(format!("/infra/tier-1s/{}/static-routes/{id}", key.0));
        obj["resource_type"] = json!("StaticRoutes");
        inner.objects.insert(key, obj.clone());
        (StatusCode::OK, obj)
    }

    async fn delete(&self, t1: String, id: String) -> Answer {
        let obj = self.lock().objects.get(&(t1.clone(), id.clone())).cloned();
        if let Some(o) = obj {
            if let Some(net) = network_of(&o)
                && let Err(e) = self.kernel.remove(net).await
            {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("removing the route: {e}"),
                );
            }
            self.lock().objects.remove(&(t1, id));
        }
        (StatusCode::OK, json!({}))
    }

    /// The NAT rules' verbs.
    async fn nat(
        &self,
        method: &str,
        t1: String,
        id: Option<String>,
        query: &str,
        body: &[u8],
    ) -> Answer {
        match (method, id) {
            ("GET", None) => {
                let start = cursor(query);
                let all: Vec<Value> = self
                    .lock()
                    .nat
                    .iter()
                    .filter(|((t, _), _)| *t == t1)
                    .map(|(_, o)| o.clone())
                    .collect();
                let results: Vec<Value> = all.iter().skip(start).take(PAGE).cloned().collect();
                let mut out = json!({"results": results, "result_count": all.len()});
                if start + PAGE < all.len() {
                    out["cursor"] = json!((start + PAGE).to_string());
                }
                (StatusCode::OK, out)
            }
            ("GET", Some(id)) => match self.lock().nat.get(&(t1, id.clone())).cloned() {
                Some(o) => (StatusCode::OK, o),
                None => error(StatusCode::NOT_FOUND, format!("NAT rule {id} not found")),
            },
            ("PUT", Some(id)) => {
                let _w = self.writes.lock().await;
                self.put_nat(t1, id, body).await
            }
            ("DELETE", Some(id)) => {
                let _w = self.writes.lock().await;
                let key = (t1, id);
                if !self.lock().nat.contains_key(&key) {
                    return (StatusCode::OK, json!({}));
                }
                let rules = self.snat_rules(Some(&key), None);
                if let Err(e) = self.kernel.apply_nat(&rules).await {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("applying the NAT rules: {e}"),
                    );
                }
                self.lock().nat.remove(&key);
                (StatusCode::OK, json!({}))
            }
            (m, _) => error(StatusCode::METHOD_NOT_ALLOWED, format!("{m} on NAT rules")),
        }
    }

    /// Every enabled SNAT rule, without `skip`, with `extra` (ordered by tier-1 and id).
    fn snat_rules(
        &self,
        skip: Option<&(String, String)>,
        extra: Option<(&(String, String), Snat)>,
    ) -> Vec<Snat> {
        let inner = self.lock();
        let mut all: BTreeMap<&(String, String), Snat> = inner
            .nat
            .iter()
            .filter(|(k, _)| Some(*k) != skip)
            .filter_map(|(k, o)| Some((k, snat_of(&k.1, o).ok()??)))
            .collect();
        if let Some((k, r)) = extra {
            all.insert(k, r);
        }
        all.into_values().collect()
    }

    async fn put_nat(&self, t1: String, id: String, body: &[u8]) -> Answer {
        let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
            return error(StatusCode::BAD_REQUEST, "the body is not JSON");
        };
        let rule = match snat_of(&id, &obj) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let key = (t1, id.clone());
        {
            let inner = self.lock();
            let current = inner
                .nat
                .get(&key)
                .and_then(|o| o.get("_revision"))
                .and_then(Value::as_i64);
            let sent = obj.get("_revision").and_then(Value::as_i64);
            if current != sent {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "NAT rule {id}: _revision {sent:?} does not match {current:?} (read it first)"
                    ),
                );
            }
        }
        let rules = self.snat_rules(Some(&key), rule.map(|r| (&key, r)));
        if let Err(e) = self.kernel.apply_nat(&rules).await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("applying the NAT rules: {e}"),
            );
        }
        let mut inner = self.lock();
        inner.revision += 1;
        obj["_revision"] = json!(inner.revision);
        obj["id"] = json!(id);
        obj["path"] = json!(format!("/infra/tier-1s/{}/nat/USER/nat-rules/{id}", key.0));
        obj["resource_type"] = json!("PolicyNatRule");
        inner.nat.insert(key, obj.clone());
        (StatusCode::OK, obj)
    }

    async fn realized(&self, intent: &str) -> Answer {
        let Some((t1, Some(id))) = route_path(&format!("/policy/api/v1{intent}")) else {
            return error(StatusCode::BAD_REQUEST, format!("intent_path {intent:?}"));
        };
        let obj = self.lock().objects.get(&(t1, id)).cloned();
        let state = match obj {
            None => "UNKNOWN",
            Some(o) => {
                let want = hops_of(&o).unwrap_or_default();
                let have = match network_of(&o) {
                    Some(n) => self.kernel.read(n).await.unwrap_or_default(),
                    None => Vec::new(),
                };
                if want == have {
                    "SUCCESS"
                } else {
                    "IN_PROGRESS"
                }
            }
        };
        (
            StatusCode::OK,
            json!({"consolidated_status": {"consolidated_status": state}, "intent_path": intent}),
        )
    }

    /// The lab's own endpoints: faults, the request log, out-of-band kernel edits.
    async fn lab(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        match (method, path) {
            ("GET", "faults") => (StatusCode::OK, json!(self.lock().faults)),
            ("PUT", "faults") => match serde_json::from_slice::<Faults>(body) {
                Ok(f) => {
                    self.lock().faults = f.clone();
                    (StatusCode::OK, json!(f))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            },
            ("GET", "requests") => (StatusCode::OK, json!(self.lock().served)),
            ("PUT", "kernel-routes") => {
                let Ok(v) = serde_json::from_slice::<Value>(body) else {
                    return error(StatusCode::BAD_REQUEST, "the body is not JSON");
                };
                let Some(network) = network_of(&v) else {
                    return error(StatusCode::BAD_REQUEST, "network is missing");
                };
                let hops = match hops_of(&v) {
                    Ok(h) => h,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let r = if hops.is_empty() {
                    self.kernel.remove(network).await
                } else {
                    self.kernel.apply(network, &hops).await
                };
                match r {
                    Ok(()) => (StatusCode::OK, v),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            _ => error(StatusCode::NOT_FOUND, format!("no such lab path {path}")),
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
