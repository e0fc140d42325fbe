//! `switchyardctl`: the operators' debugging CLI for a Switchyard node.
//!
//! It runs on a node (or in the node's Switchyard pod), reads the node's
//! OVSDB, OpenFlow tables and `ovs-vswitchd` control socket, and asks the API
//! server for Pods, Services and EndpointSlices when a command needs them.
//! Every command returns a value that prints as a table
//! ([`output::Render`]) or serialises to JSON/YAML (`-o json|yaml`).
//!
//! - [`pod`]: where a pod is plugged in and the flows that match it;
//! - [`service`]: a Service's frontends, groups, buckets, affinity entries
//!   and the endpoints this node uses;
//! - [`trace`]: `ofproto/trace` with the fields filled in, parsed into steps
//!   with table names, across conntrack recirculations;
//! - [`policy`]: a NetworkPolicy's selected local pods, rules and per-rule
//!   counters;
//! - [`node`]: connectivity, flow counts per table and owner, ports, health;
//! - [`bundle`]: a support bundle (`.tar.gz`) without secrets.
//!
//! Shared plumbing: [`cli`] (the command line), [`ovs`] (the node's OVS),
//! [`flows`] (flows with table names and owners), [`kube`] (the API),
//! [`output`] (tables, JSON, YAML), [`error`].

pub mod bundle;
pub mod cli;
pub mod error;
pub mod flows;
pub mod kube;
pub mod node;
pub mod output;
pub mod ovs;
pub mod pod;
pub mod policy;
pub mod service;
pub mod trace;

pub use error::Error;
