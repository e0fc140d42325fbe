//! OVSDB client (RFC 7047 JSON-RPC) for the `Open_vSwitch` database.
//!
//! The original design named the `ovsdb` crate from crates.io. Its published
//! version (0.0.6) implements only `select`, and its codec mishandles escaped
//! quotes inside strings and several messages arriving in one read, so this
//! client is our own, built on `tokio-util`'s codec framework:
//!
//! - [`codec`]: framing of concatenated JSON values on a stream socket;
//! - [`types`]: atoms, sets, maps, uuids and named uuids with their JSON encoding;
//! - [`ops`]: all transaction operations and typed operation errors;
//! - [`monitor`]: `monitor`/`monitor_cond` requests and `update`/`update2` notifications;
//! - [`client`]: the connection (Unix or TCP), requests, `echo`, locks,
//!   reconnect with backoff and monitor re-establishment;
//! - [`vswitch`]: typed helpers for the agent (bridges, ports, ofports,
//!   `other_config`); each reads or writes in one transaction, there is no
//!   local replica of the tables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_ovs::ovsdb::Error> {
//! use std::time::Duration;
//! use switchyard_ovs::ovsdb::{BridgeSpec, Client, PortSpec};
//! let client = Client::connect("unix:/var/run/openvswitch/db.sock").await?;
//! client.ensure_bridge(&BridgeSpec::netdev("br-int")).await?;
//! client
//!     .add_port("br-int", &PortSpec::new("veth1234").with_tag(100).with_external_id("pod", "ns/a"))
//!     .await?;
//! let ofport = client.interface_ofport("veth1234", Duration::from_secs(5)).await?;
//! # let _ = ofport; Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod error;
pub mod monitor;
pub mod ops;
pub mod schema;
pub mod types;
pub mod vswitch;

pub use client::{Client, ClientConfig, ConnectionEvent, Endpoint, LockEvent};
pub use codec::{CodecError, JsonCodec};
pub use error::{Error, Result};
pub use monitor::{
    Monitor, MonitorEvent, MonitorRequest, RowUpdate, RowUpdate2, TableUpdates, TableUpdates2,
    Updates,
};
pub use ops::{
    Condition, Function, Mutation, Mutator, Operation, OperationResult, OvsdbErrorKind,
    TransactionError, WaitUntil,
};
pub use schema::{ColumnType, Schema};
pub use types::{Atom, NamedUuid, Row, Uuid, Value};
pub use vswitch::{
    AddedPort, BridgeRow, BridgeSpec, InterfaceRow, OpenVswitchRow, PortRow, PortSpec,
};
