//! The Switchyard lab.
//!
//! # In-memory Kubernetes API server
//!
//! [`apiserver::ApiServer`] serves enough of the Kubernetes API over plain HTTP on loopback
//! for kube-rs clients and the real `kubectl` to work unchanged through the kubeconfig from
//! [`apiserver::ApiServerHandle::write_kubeconfig`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
//! let server = ApiServer::start(ApiServerOptions::default()).await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/lab.kubeconfig"))?;
//! println!("{}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The binary runs the same server in the foreground:
//! `switchyard-lab apiserver --port 6443 --kubeconfig /tmp/lab.kubeconfig`.

pub mod apiserver;
pub mod controllers;
pub mod kubeconfig;
