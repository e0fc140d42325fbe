//! The NSX-T Policy API subset for tier-1 static routes, spoken by both drivers.
//!
//! - `GET /policy/api/v1/infra/tier-1s/<t1>/static-routes` (paged by `cursor`)
//! - `GET|PUT|DELETE /policy/api/v1/infra/tier-1s/<t1>/static-routes/<id>`
//! - `GET /policy/api/v1/infra/realized-state/status?intent_path=/infra/tier-1s/<t1>/static-routes/<id>`
//!
//! The same driver writes SNAT rules ([`crate::nat`]: tier-1 NAT rules, `nat/USER/nat-rules`).
//!
//! Writes are read-then-write: the object is read first; one without this cluster's tag is
//! never modified or deleted; an update carries the `_revision` read (a concurrent change
//! gets 412, retriable). Authentication is the TLS client certificate only: no
//! `Authorization` header, no `X-Allow-Overwrite`.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{RouterDriver, RouterError, StaticRoute, TAG_CLUSTER, TAG_OWNER, valid_id};

pub(crate) const BASE: &str = "/policy/api/v1/infra";

/// Where and as whom a Policy API driver connects.
#[derive(Clone)]
pub struct PolicyConfig {
    /// Base URL, `https://host[:port]` (no path).
    pub endpoint: String,
    /// Tier-1 gateway id holding the routes.
    pub tier1: String,
    /// Value of the [`TAG_CLUSTER`] tag.
    pub cluster: String,
    /// PEM CA bundle the router's certificate is verified against (system roots are not used).
    pub ca_pem: Vec<u8>,
    /// PEM client certificate (chain): the principal identity.
    pub cert_pem: Vec<u8>,
    /// PEM private key of the client certificate.
    pub key_pem: Vec<u8>,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("endpoint", &self.endpoint)
            .field("tier1", &self.tier1)
            .field("cluster", &self.cluster)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A driver speaking the Policy API subset (`nsx` or `lab`).
#[derive(Clone)]
pub struct PolicyDriver {
    name: &'static str,
    endpoint: String,
    tier1: String,
    cluster: String,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for PolicyDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyDriver")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("tier1", &self.tier1)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Tag {
    #[serde(default)]
    pub(crate) scope: String,
    #[serde(default)]
    pub(crate) tag: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NextHop {
    ip_address: String,
    #[serde(default = "one")]
    admin_distance: u32,
}

fn one() -> u32 {
    1
}

/// A static route as the Policy API carries it (the fields Switchyard uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiRoute {
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    next_hops: Vec<NextHop>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(rename = "_revision", default, skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ListResult {
    #[serde(default)]
    results: Vec<Value>,
    #[serde(default)]
    cursor: Option<String>,
}

impl ApiRoute {
    fn tag(&self, scope: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.scope == scope)
            .map(|t| t.tag.as_str())
    }

    fn to_route(&self, path: &str) -> Result<StaticRoute, RouterError> {
        let bad = |message: String| RouterError::BadResponse {
            path: path.to_string(),
            message,
        };
        let network: IpNet = self
            .network
            .parse()
            .map_err(|_| bad(format!("network {:?} is not a CIDR", self.network)))?;
        let hops = self
            .next_hops
            .iter()
            .map(|h| {
                h.ip_address
                    .parse::<IpAddr>()
                    .map_err(|_| bad(format!("next hop {:?} is not an address", h.ip_address)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StaticRoute::new(
            self.id.clone(),
            network,
            hops,
            self.tag(TAG_OWNER).unwrap_or_default(),
            self.display_name.clone(),
        ))
    }
}

/// The JSON body Switchyard PUTs for a route (exposed for tests and the fabric API).
pub fn route_body(route: &StaticRoute, cluster: &str, revision: Option<i64>) -> Value {
    let body = ApiRoute {
        resource_type: "StaticRoutes".into(),
        id: route.id.clone(),
        display_name: route.display_name.clone(),
        network: route.network.to_string(),
        next_hops: route
            .next_hops
            .iter()
            .map(|ip| NextHop {
                ip_address: ip.to_string(),
                admin_distance: 1,
            })
            .collect(),
        tags: vec![
            Tag {
                scope: TAG_CLUSTER.into(),
                tag: cluster.into(),
            },
            Tag {
                scope: TAG_OWNER.into(),
                tag: route.owner.clone(),
            },
        ],
        revision,
    };
    serde_json::to_value(body).unwrap_or(Value::Null)
}

impl PolicyDriver {
    /// The `nsx` driver: NSX-T Manager's Policy API.
    pub fn nsx(cfg: PolicyConfig) -> Result<Self, RouterError> {
        Self::new("nsx", cfg)
    }

    /// The `lab` driver: the lab's fabric API (`switchyard-lab fabric-api`).
    pub fn lab(cfg: PolicyConfig) -> Result<Self, RouterError> {
        Self::new("lab", cfg)
    }

    fn new(name: &'static str, cfg: PolicyConfig) -> Result<Self, RouterError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| RouterError::Config(format!("endpoint {endpoint:?} is not a URL")))?;
        if uri.scheme_str() != Some("https") {
            return Err(RouterError::Config(format!(
                "endpoint {endpoint:?}: only https is allowed"
            )));
        }
        if !uri.path().trim_end_matches('/').is_empty() {
            return Err(RouterError::Config(format!(
                "endpoint {endpoint:?}: give the base URL without a path"
            )));
        }
        if !valid_id(&cfg.tier1) {
            return Err(RouterError::Config(format!(
                "tier-1 id {:?} is not a valid id",
                cfg.tier1
            )));
        }
        if cfg.cluster.is_empty() {
            return Err(RouterError::Config("the cluster tag value is empty".into()));
        }
        let tls = crate::tls::client_config(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem)
            .map_err(|e| RouterError::Config(e.to_string()))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            name,
            endpoint,
            tier1: cfg.tier1,
            cluster: cfg.cluster,
            timeout: cfg.timeout,
            client,
        })
    }

    /// The cluster tag value.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The tier-1 gateway id.
    pub(crate) fn tier1(&self) -> &str {
        &self.tier1
    }

    fn routes_path(&self) -> String {
        format!("{BASE}/tier-1s/{}/static-routes", self.tier1)
    }

    fn route_path(&self, id: &str) -> Result<String, RouterError> {
        if !valid_id(id) {
            return Err(RouterError::Config(format!(
                "route id {id:?} is not a valid id"
            )));
        }
        Ok(format!("{}/{id}", self.routes_path()))
    }

    /// One request; `Ok((status, body))` for every HTTP answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), RouterError> {
        let m = method.to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint))
            .header(http::header::ACCEPT, "application/json");
        let payload = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| RouterError::Config(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| classify(&m, path, &e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| RouterError::Transport {
                    method: m.clone(),
                    path: path.to_string(),
                    message: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(RouterError::Timeout {
                method: m,
                path: path.to_string(),
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }

    /// A request whose success is 2xx; other answers become [`RouterError::Http`].
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        ok_404: bool,
    ) -> Result<Option<Bytes>, RouterError> {
        let m = method.to_string();
        let (status, bytes) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(Some(bytes));
        }
        if ok_404 && status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Err(RouterError::Http {
            method: m,
            path: path.to_string(),
            status: status.as_u16(),
            message: error_message(&bytes),
        })
    }

    async fn get_raw(&self, id: &str) -> Result<Option<ApiRoute>, RouterError> {
        let path = self.route_path(id)?;
        let Some(bytes) = self.call(Method::GET, &path, None, true).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RouterError::BadResponse {
                path,
                message: e.to_string(),
            })
    }

    fn ours(&self, r: &ApiRoute) -> bool {
        r.tag(TAG_CLUSTER) == Some(self.cluster.as_str())
    }

    pub(crate) fn not_owned(&self, id: &str) -> RouterError {
        RouterError::NotOwned {
            id: id.to_string(),
            cluster: self.cluster.clone(),
        }
    }

    /// Every object of a collection, following `cursor` (objects of any shape).
    pub(crate) async fn list_raw(&self, base: &str) -> Result<Vec<Value>, RouterError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("{base}?cursor={}", query_escape(c)),
                None => base.to_string(),
            };
            let bytes = self
                .call(Method::GET, &path, None, false)
                .await?
                .unwrap_or_default();
            let page: ListResult =
                serde_json::from_slice(&bytes).map_err(|e| RouterError::BadResponse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            out.extend(page.results);
            match page.cursor {
                Some(c) if !c.is_empty() && cursor.as_deref() != Some(c.as_str()) => {
                    cursor = Some(c)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn list_impl(&self) -> Result<Vec<StaticRoute>, RouterError> {
        let base = self.routes_path();
        let mut out = Vec::new();
        for item in self.list_raw(&base).await? {
            // Objects of others may have any shape: only ours must parse.
            let Ok(r) = serde_json::from_value::<ApiRoute>(item) else {
                continue;
            };
            if self.ours(&r) {
                out.push(r.to_route(&base)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn get_impl(&self, id: &str) -> Result<Option<StaticRoute>, RouterError> {
        let path = self.route_path(id)?;
        match self.get_raw(id).await? {
            None => Ok(None),
            Some(r) if self.ours(&r) => r.to_route(&path).map(Some),
            Some(_) => Err(self.not_owned(id)),
        }
    }

    async fn put_impl(&self, route: &StaticRoute) -> Result<(), RouterError> {
        let path = self.route_path(&route.id)?;
        if route.next_hops.is_empty() {
            return Err(RouterError::Config(format!(
                "route {}: refusing to write empty next hops (delete the route instead)",
                route.id
            )));
        }
        let revision = match self.get_raw(&route.id).await? {
            None => None,
            Some(r) if self.ours(&r) => r.revision,
            Some(_) => return Err(self.not_owned(&route.id)),
        };
        let body = route_body(route, &self.cluster, revision);
        self.call(Method::PUT, &path, Some(body), false).await?;
        Ok(())
    }

    async fn delete_impl(&self, id: &str) -> Result<(), RouterError> {
        let path = self.route_path(id)?;
        match self.get_raw(id).await? {
            None => return Ok(()),
            Some(r) if self.ours(&r) => {}
            Some(_) => return Err(self.not_owned(id)),
        }
        self.call(Method::DELETE, &path, None, true).await?;
        Ok(())
    }

    async fn realized_impl(&self, id: &str) -> Result<bool, RouterError> {
        let intent = format!("/infra/tier-1s/{}/static-routes/{id}", self.tier1);
        self.route_path(id)?;
        let path = format!(
            "{BASE}/realized-state/status?intent_path={}",
            query_escape(&intent)
        );
        let bytes = self
            .call(Method::GET, &path, None, false)
            .await?
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| RouterError::BadResponse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let state = v
            .pointer("/consolidated_status/consolidated_status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(state == "SUCCESS")
    }
}

impl RouterDriver for PolicyDriver {
    fn name(&self) -> &str {
        self.name
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StaticRoute>, RouterError>> {
        self.list_impl().boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StaticRoute>, RouterError>> {
        self.get_impl(id).boxed()
    }

    fn put<'a>(&'a self, route: &'a StaticRoute) -> BoxFuture<'a, Result<(), RouterError>> {
        self.put_impl(route).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>> {
        self.delete_impl(id).boxed()
    }

    fn realized<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, RouterError>> {
        self.realized_impl(id).boxed()
    }

    fn nat(&self) -> Option<&dyn crate::NatDriver> {
        Some(self)
    }
}

/// The `error_message` of an NSX error body, else the body (shortened).
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(m) = v.get("error_message").and_then(Value::as_str)
    {
        return m.to_string();
    }
    let s = String::from_utf8_lossy(body);
    s.chars().take(200).collect()
}

pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A TLS failure (anywhere in the error's sources) is not a transport failure.
fn classify(method: &str, path: &str, e: &(dyn std::error::Error + 'static)) -> RouterError {
    let mut tls = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            tls = Some(r.to_string());
            break;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                tls = Some(r.to_string());
                break;
            }
            // tokio-rustls reports handshake failures as InvalidData.
            if io.kind() == std::io::ErrorKind::InvalidData {
                tls = Some(io.to_string());
                break;
            }
        }
        let text = err.to_string();
        if text.contains("peer certificate") || text.contains("received fatal alert") {
            tls = Some(text);
            break;
        }
        cur = err.source();
    }
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    match tls {
        Some(t) => RouterError::Tls {
            method: method.to_string(),
            path: path.to_string(),
            message: t,
        },
        None => RouterError::Transport {
            method: method.to_string(),
            path: path.to_string(),
            message,
        },
    }
}
