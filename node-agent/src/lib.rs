//! Switchyard node agent library. Modules follow the data flow of a pod ADD:
//! configuration, then segment/VLAN choice, then address allocation, then the
//! pod's interface in its network namespace.

pub mod config;
pub mod ipam;
pub mod mac;
pub mod netns;
pub mod segment;
