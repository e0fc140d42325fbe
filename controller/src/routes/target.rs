//! A router driver from a `RouteTarget` and its credentials Secret: shared with
//! `switchyard-cpvip`, it lives in `switchyard-router`.

pub use switchyard_router::target::*;
