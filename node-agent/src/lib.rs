//! Switchyard node agent library (the `switchyard-agent` daemon).
//!
//! The modules, by what changes together:
//!
//! - The daemon: [`daemon`] ([`Agent::start`], [`AgentHandle`],
//!   [`StartError`], re-reconciling after reconnects), `wait_for` (what
//!   start-up waits for), [`config`] (`flags`, `file`, `segment`, `error`),
//!   [`metrics`], [`apiserver`] (reads).
//! - The CNI verbs: `cni/` (the edge: request resolution, spans, metrics,
//!   the one mapping of [`attach_error::AttachError`] to CNI codes) with one
//!   file per verb, `add` (with its rollback), `del`, `check`, `gc` and
//!   `status`.
//! - The attachment state: `state` (what the verbs and reconciliation share,
//!   and teardown), [`reconcile`] (rebuild from OVSDB, stale decisions, flow
//!   resync), [`attachment`] (one attachment and its `external_ids`),
//!   [`ipam`], [`vlan_pool`] (cluster-wide `vlan` addresses), [`segment`]
//!   (placement), [`keylock`], [`adds_in_flight`].
//! - The datapath: [`flows`], [`gateway`] (with the routes through it),
//!   [`overlay`] (`watch`, `flows`, `routes`, `tunnel`), [`host_services`]
//!   (the node's routes for Services), [`uplink`], [`egress`],
//!   [`reserved_port`] (the agent's own ports), [`next_hop`].
//! - LoadBalancer L2 announcement: [`announce`] (eligibility, liveness,
//!   heartbeats, the ARP responder; one task started by the daemon).
//! - The seams: [`drivers`] (traits in front of netlink/netns, OVSDB,
//!   OpenFlow and the API server reads, their real implementations, and
//!   in-memory fakes for unit tests).
//! - The kernel: [`netns`] (netns thread, `veth/`: the pod interface), [`mac`].
//!
//! Dependencies point one way: the daemon uses the CNI layer and
//! reconciliation, both use the state, the state uses the datapath and
//! kernel modules; none of these imports a module above it.

pub mod adds_in_flight;
pub mod announce;
pub mod api_cache;
pub mod apiserver;
pub mod attach_error;
pub mod attachment;
mod cni;
pub mod config;
pub mod daemon;
pub mod drivers;
pub mod egress;
pub mod flows;
pub mod gateway;
pub mod host_services;
pub mod ipam;
pub mod keylock;
pub mod mac;
pub mod metrics;
pub mod netns;
pub mod next_hop;
pub mod overlay;
pub mod policy;
pub mod reconcile;
pub mod reserved_port;
pub mod segment;
pub mod segment_watch;
mod state;
pub mod uplink;
pub mod vlan_pool;
mod wait_for;

pub use daemon::{Agent, AgentHandle, StartError};
pub use reconcile::ReconcileError;
