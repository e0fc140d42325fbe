//! The `switchyard` CNI plugin's library: CNI specification types (versions,
//! environment, network configuration, results, errors) and the CNI<->agent
//! protocol shared by the `switchyard` binary and `switchyard-agent`.
//!
//! # Data flow
//!
//! runtime --env + stdin--> `switchyard` binary: [`env::CniEnv::from_lookup`],
//! [`config::parse_config`] --[`protocol::CniRequest`] over the agent's Unix
//! socket ([`client::call_agent`])--> agent ([`server::serve`] +
//! [`server::CniHandler`]) --[`protocol::CniReply`]--> binary, which prints the
//! [`result::CniResult`] in the requested version
//! ([`result::CniResult::to_output`]) or the [`error::CniError`]
//! ([`error::CniError::to_output`]).
//!
//! # Agent quick start
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchyard_cni::{CniError, CniHandler, CniRequest, CniResult, serve};
//!
//! struct Agent;
//! impl CniHandler for Agent {
//!     async fn add(&self, req: CniRequest) -> Result<CniResult, CniError> { todo!() }
//!     async fn del(&self, req: CniRequest) -> Result<(), CniError> { Ok(()) }
//!     async fn check(&self, req: CniRequest) -> Result<(), CniError> { Ok(()) }
//!     async fn status(&self, req: CniRequest) -> Result<(), CniError> { Ok(()) }
//!     async fn gc(&self, req: CniRequest) -> Result<(), CniError> { Ok(()) }
//! }
//! # async fn run() -> std::io::Result<()> {
//! let listener = switchyard_cni::bind_agent_socket(switchyard_cni::DEFAULT_AGENT_SOCKET.as_ref())?;
//! serve(listener, Arc::new(Agent)).await
//! # }
//! ```
//!
//! # Why own types, not `cni-plugin` or `rscni-types`
//!
//! - `cni-plugin` 0.2.1 (the crate the original design named) is archived and
//!   stops at spec 1.0.0: no STATUS, no GC, no 1.1.0 result fields.
//! - `rscni-types` 0.2 covers 0.3.0 to 1.1.0 and is a reasonable type
//!   library, but it is a young single-maintainer 0.x crate. Its types would be
//!   the wire format of our agent protocol too, so every change there would
//!   become a protocol change here.
//! - What we need beyond the types (per-verb environment validation, CNI_ARGS
//!   with Kubernetes keys, Switchyard's configuration keys, error code enum,
//!   framing, handler trait, libcni-exact version conversion with golden tests)
//!   is most of the work either way; the spec types themselves are about 300
//!   lines. Owning them keeps the protocol stable and lets the conversion follow
//!   libcni byte for byte (see [`result`]).

pub mod client;
pub mod config;
pub mod env;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod pending;
pub mod protocol;
pub mod result;
pub mod server;
pub mod version;

pub use client::{call_agent, call_agent_marked};
pub use config::{
    DEFAULT_AGENT_SOCKET, DEFAULT_TIMEOUT_SECONDS, GcAttachment, LogLevel, NetworkConfig,
    POD_ANNOTATIONS_KEY, RuntimeConfig, parse_config,
};
pub use env::{CniArgs, CniEnv, Command};
pub use error::{CniError, ErrorCode};
pub use protocol::{
    CniClientCodec, CniReply, CniRequest, CniServerCodec, MAX_FRAME_LEN, PROTOCOL_VERSION, Verb,
};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use server::{
    CniHandler, ServeLimits, bind_agent_socket, serve, serve_until, serve_with_limits,
};
pub use version::{SUPPORTED_VERSIONS, SpecVersion};
