//! What Switchyard's daemons (`switchyard-agent`, `switchyard-proxy`,
//! `switchyard-controller`, `switchyard-cpvip`) share, so that each `main` is
//! only its own flags and tasks:
//!
//! - [`log`]: `--log-format text|json`, `RUST_LOG`, ANSI colour only when
//!   stderr is a terminal;
//! - [`kube_client`]: a client from `--kubeconfig` or the in-cluster /
//!   `$KUBECONFIG` configuration;
//! - [`LeaderFlags`]: the Lease timings flags of the leader-elected daemons;
//! - [`http`]: the `/metrics`, `/healthz`, `/readyz` server with
//!   [`Health`] (liveness heartbeats and readiness conditions) and
//!   [`probe`] (readiness conditions kept by periodic checks).
//!
//! A crate of its own rather than a module of `switchyard-api`: that crate is
//! the CRD types and leader election, used by the router library, the
//! manifest generator and the lab; an HTTP server, a log subscriber and clap
//! are for binaries only.

pub mod http;
pub mod log;
pub mod probe;

use std::path::Path;
use std::time::Duration;

pub use http::{Health, Heartbeat};
pub use log::LogFormat;
use switchyard_api::leader::Timings;

/// Why no Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig file does not give a usable configuration.
    #[error("using kubeconfig {path}: {source}")]
    Use {
        /// The file.
        path: String,
        /// The error.
        source: kube::config::KubeconfigError,
    },
    /// Neither in-cluster nor `$KUBECONFIG`/`~/.kube/config` configuration.
    #[error("no usable Kubernetes client configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// A client from `kubeconfig` when given, else the in-cluster service account
/// or `$KUBECONFIG` / `~/.kube/config`.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| ClientError::Read {
                    path: shown.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| ClientError::Use {
                    path: shown,
                    source,
                })?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The Lease timings flags of a leader-elected daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderFlags {
    /// Seconds a leader Lease not renewed stays its holder's.
    #[arg(long, default_value_t = 15.0)]
    pub lease_duration: f64,
    /// Seconds after which a leader that could not renew stops leading (< lease duration).
    #[arg(long, default_value_t = 10.0)]
    pub renew_deadline: f64,
    /// Seconds between renewals / acquisition attempts.
    #[arg(long, default_value_t = 2.0)]
    pub retry_period: f64,
}

/// Why [`LeaderFlags`] were refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaderFlagsError {
    /// The leader would keep leading after others may take the Lease.
    #[error("--renew-deadline must be shorter than --lease-duration")]
    RenewDeadline,
}

impl LeaderFlags {
    /// The timings, checked.
    pub fn timings(&self) -> Result<Timings, LeaderFlagsError> {
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaderFlagsError::RenewDeadline);
        }
        Ok(Timings {
            lease_duration: secs(self.lease_duration),
            renew_deadline: secs(self.renew_deadline),
            retry_period: secs(self.retry_period),
        })
    }
}

/// Seconds given on the command line as a duration (at least 50 ms).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() { s.max(0.05) } else { 0.05 })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let wait = |s: Option<tokio::signal::unix::Signal>| async move {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = wait(term.take()) => tracing::info!("SIGTERM: shutting down"),
        () = wait(int.take()) => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        leader: LeaderFlags,
    }

    #[test]
    fn leader_flags_default_and_check() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let t = cli.leader.timings().unwrap();
        assert_eq!(t.lease_duration, Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["x", "--renew-deadline=20"]).unwrap();
        assert!(matches!(
            cli.leader.timings(),
            Err(LeaderFlagsError::RenewDeadline)
        ));
    }
}
