//! Switchyard service proxy: Services and EndpointSlices in, the desired
//! state of the switch's service tables (and the changes to it) out.
//!
//! Data flow: [`service_model`] turns API objects into a [`DesiredState`];
//! [`diff`] turns two desired states into a [`ChangeSet`] with stable group ids.

pub mod diff;
pub mod fixtures;
pub mod service_model;
pub mod synthetic;

pub use diff::{
    AddedPort, ChangeSet, ChangedPort, GroupId, GroupIdAllocator, GroupIdsExhausted, RemovedPort,
    StaleUdpEndpoint, StaleUdpFrontend, diff,
};
pub use service_model::{
    DesiredState, Endpoint, NoEndpointsAction, Protocol, ServiceKey, ServicePortName,
    ServicePortState, build_desired_state,
};
