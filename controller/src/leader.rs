//! Leader election on a Lease: shared with `switchyard-cpvip`, it lives in `switchyard-api`.

pub use switchyard_api::leader::*;
