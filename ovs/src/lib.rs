//! Open vSwitch clients.
//!
//! - [`ovsdb`]: our own async OVSDB (RFC 7047) client on `tokio-util` (the
//!   published `ovsdb` crate, 0.0.6, implements only `select` and its codec
//!   mishandles escaped quotes and several messages per read), with
//!   monitors and typed helpers for bridges and ports.
//! - [`openflow`]: a native OpenFlow 1.5 (and 1.3) client.
//! - [`pipeline`]: the `br-int` pipeline shared by the node agent and the
//!   service proxy (table numbers, registers, conntrack zones, ct_mark bits,
//!   cookie spaces).
//! - [`unixctl`]: the `ovs-appctl` control socket (e.g. `revalidator/wait`).

pub mod openflow;
pub mod ovsdb;
pub mod unixctl;
