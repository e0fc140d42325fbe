//! Switchyard service proxy: Services and EndpointSlices in, the desired
//! state of the switch's service tables (and the changes to it) out.
//!
//! Data flow: [`service_model`] turns API objects into a [`DesiredState`];
//! [`diff`](mod@diff) turns two desired states into a [`ChangeSet`] with stable group ids;
//! [`watch`](mod@watch) feeds watch events into a [`cluster_cache::ClusterCache`] and,
//! per debounced burst, lets a [`recompute::Recomputer`] emit an [`Update`];
//! [`flows`] renders a port's flows and group ([`groups`] chains groups
//! for ports with more endpoints than one group holds), [`program`] turns a change set
//! (or a whole state) into flow and group mods, and [`switch`] sends them to
//! `br-int` in atomic bundles, answers rejects ([`reject`]) and flushes
//! stale UDP conntrack entries ([`conntrack`]; after a restart judged
//! against what the switch served, [`served`]); [`metrics`] serves
//! `/metrics`, `/healthz` and `/proxyMode`; [`healthcheck`] serves kube-proxy's
//! node health URLs (`:10256/healthz`, `/livez`) and each ETP-Local
//! LoadBalancer Service's `healthCheckNodePort` from the [`HealthChecks`] the
//! recompute publishes; [`config`] is the binary's command line.

pub mod cluster_cache;
pub mod config;
pub mod conntrack;
pub mod diff;
pub mod endpoints;
pub mod external;
pub mod fixtures;
pub mod flows;
pub mod groups;
pub mod healthcheck;
pub mod host;
pub mod metrics;
pub mod objects;
pub mod program;
pub mod recompute;
pub mod reject;
pub mod served;
pub mod service_model;
pub mod switch;
pub mod synthetic;
pub mod watch;

pub use diff::{
    AddedPort, ChangeSet, ChangedPort, GroupId, GroupIdAllocator, GroupIdTaken, GroupIdsExhausted,
    RemovedPort, StaleUdpEndpoint, StaleUdpFrontend, diff, diff_services,
};
pub use recompute::{HealthChecks, Recomputer, SharedGroupIds, Update};
pub use service_model::{
    DesiredState, Endpoint, HealthCheck, NoEndpointsAction, Protocol, ServiceKey, ServicePortName,
    ServicePortState, ServiceType, build_desired_state,
};
pub use watch::{WatchConfig, WatchError, watch, watch_with_health};
