//! Switchyard node agent library. Modules follow the data flow of a pod ADD:
//! configuration, then segment/VLAN choice, then address allocation, then the
//! pod's interface in its network namespace, then its OVS port and flows.
//!
//! [`agent::Agent::start`] assembles the daemon (`switchyard-agent`).

pub mod adds_in_flight;
pub mod agent;
pub mod apiserver;
pub mod attachment;
pub mod config;
pub mod egress;
pub mod flows;
pub mod gateway;
pub mod ipam;
pub mod keylock;
pub mod mac;
pub mod metrics;
pub mod netns;
pub mod overlay;
pub mod reserved_port;
pub mod segment;
pub mod uplink;
pub mod vlan_pool;

pub use agent::{Agent, AgentHandle, StartError};
