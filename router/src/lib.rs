//! Router drivers: static routes with ECMP next hops, and SNAT rules ([`nat`]), on an upstream
//! router, tagged as Switchyard's.
//!
//! A [`RouterDriver`] lists, reads, writes and deletes [`StaticRoute`]s. Every route it writes
//! carries two tags: [`TAG_CLUSTER`] (the cluster name: which Switchyard owns it) and
//! [`TAG_OWNER`] (which component and object inside that cluster: the LoadBalancer controller
//! writes `lb`, the control-plane VIP daemon `cpvip`). A driver never modifies or deletes an
//! object that does not carry its cluster's tag: [`RouterError::NotOwned`].
//!
//! Two drivers speak the same NSX-T Policy API subset ([`policy`]): `nsx` against NSX-T
//! (tier-1 static routes) and `lab` against the lab's fabric API (`switchyard-lab fabric-api`).
//! Both authenticate with a client certificate (NSX principal identity) over TLS verified
//! against a given CA bundle; neither sends basic auth or `X-Allow-Overwrite`.
//!
//! Errors say whether trying again can help ([`RouterError::retriable`]): 5xx, 429, 412
//! (a concurrent change), timeouts and connection failures are; 4xx, TLS and ownership
//! errors are not.

pub mod nat;
pub mod policy;
pub mod target;
mod tls;

use std::fmt;
use std::net::IpAddr;

use futures::future::BoxFuture;
use ipnet::IpNet;

pub use nat::{NatDriver, NatRule, TAG_NAMESPACE_UID};
pub use policy::{PolicyConfig, PolicyDriver};
pub use tls::TlsError;

/// Tag scope: the cluster that owns a route (value: the cluster name).
pub const TAG_CLUSTER: &str = "switchyard.io/cluster";
/// Tag scope: the component/object inside the cluster that owns a route.
pub const TAG_OWNER: &str = "switchyard.io/owner";

/// A static route as Switchyard writes it: one network, its ECMP next hops, and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// Object id on the router (path segment: `[A-Za-z0-9_.-]`, at most 255 characters).
    pub id: String,
    /// Destination, e.g. `192.0.2.10/32`.
    pub network: IpNet,
    /// Next hops, each with equal weight (ECMP). Sorted and deduplicated by [`Self::new`].
    pub next_hops: Vec<IpAddr>,
    /// Value of the [`TAG_OWNER`] tag.
    pub owner: String,
    /// Human-readable name (`display_name`).
    pub display_name: String,
}

impl StaticRoute {
    /// A route with next hops sorted and deduplicated (the form [`RouterDriver::get`] returns).
    pub fn new(
        id: impl Into<String>,
        network: IpNet,
        mut next_hops: Vec<IpAddr>,
        owner: impl Into<String>,
        display_name: impl Into<String>,
    ) -> Self {
        next_hops.sort();
        next_hops.dedup();
        Self {
            id: id.into(),
            network,
            next_hops,
            owner: owner.into(),
            display_name: display_name.into(),
        }
    }

    /// Whether `other` routes the same network over the same next hops with the same owner.
    pub fn same_route(&self, other: &StaticRoute) -> bool {
        self.network == other.network
            && self.owner == other.owner
            && sorted(&self.next_hops) == sorted(&other.next_hops)
    }
}

fn sorted(v: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Whether an id is usable as a path segment on every driver.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// What went wrong talking to a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The router answered with an error status.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Http {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The error message of the body (or the body).
        message: String,
    },
    /// No answer in time.
    #[error("{method} {path}: no answer within {secs:.1} s")]
    Timeout {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The timeout.
        secs: f64,
    },
    /// Could not connect or the connection broke (not a TLS verification failure).
    #[error("{method} {path}: {message}")]
    Transport {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The TLS handshake failed: the router's certificate is not trusted, or ours was refused.
    #[error("{method} {path}: TLS: {message}")]
    Tls {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// What failed.
        message: String,
    },
    /// An object with this id exists but is not tagged as this cluster's: left alone.
    #[error("object {id} exists and is not tagged {TAG_CLUSTER}={cluster}: not touching it")]
    NotOwned {
        /// Object id.
        id: String,
        /// This driver's cluster.
        cluster: String,
    },
    /// The router's answer could not be understood.
    #[error("{path}: unexpected answer: {message}")]
    BadResponse {
        /// Request path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The driver's configuration is unusable (endpoint, credentials, CA bundle, id).
    #[error("router driver configuration: {0}")]
    Config(String),
}

impl RouterError {
    /// Whether the same request may succeed later: 5xx, 429, 412/409 (a concurrent change),
    /// timeouts and connection failures. 4xx, TLS failures, ownership and configuration
    /// errors are not retriable.
    pub fn retriable(&self) -> bool {
        match self {
            RouterError::Http { status, .. } => {
                *status >= 500 || *status == 429 || *status == 412 || *status == 409
            }
            RouterError::Timeout { .. } | RouterError::Transport { .. } => true,
            RouterError::Tls { .. }
            | RouterError::NotOwned { .. }
            | RouterError::BadResponse { .. }
            | RouterError::Config(_) => false,
        }
    }

    /// A short label for metrics: `http_5xx`, `http_4xx`, `timeout`, `transport`, `tls`,
    /// `not_owned`, `bad_response`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            RouterError::Http { status, .. } if *status >= 500 => "http_5xx",
            RouterError::Http { .. } => "http_4xx",
            RouterError::Timeout { .. } => "timeout",
            RouterError::Transport { .. } => "transport",
            RouterError::Tls { .. } => "tls",
            RouterError::NotOwned { .. } => "not_owned",
            RouterError::BadResponse { .. } => "bad_response",
            RouterError::Config(_) => "config",
        }
    }
}

/// A router holding Switchyard's static routes.
///
/// Implementations only ever modify objects tagged with their cluster; [`Self::list`] returns
/// only those. Object-safe (the controller picks a driver at run time).
pub trait RouterDriver: Send + Sync + fmt::Debug {
    /// Driver name (`nsx`, `lab`), for logs and metrics.
    fn name(&self) -> &str;

    /// Every static route tagged with this driver's cluster (any owner).
    fn list(&self) -> BoxFuture<'_, Result<Vec<StaticRoute>, RouterError>>;

    /// The route with this id, if it exists and is this cluster's (`NotOwned` otherwise).
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StaticRoute>, RouterError>>;

    /// Creates or replaces the route (tagged with the cluster and the route's owner). Fails
    /// with `NotOwned` if an untagged object has the id.
    fn put<'a>(&'a self, route: &'a StaticRoute) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Deletes the route; a missing one is not an error. Fails with `NotOwned` (and deletes
    /// nothing) if the object is not this cluster's.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Whether the router reports the route as realized (applied to its data plane).
    fn realized<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, RouterError>>;

    /// The same router's NAT rules, if the driver can write them ([`NatDriver`]).
    fn nat(&self) -> Option<&dyn NatDriver> {
        None
    }
}
