//! The errors of every command.

use std::path::PathBuf;

/// What went wrong, with what the user can check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// OVSDB cannot be reached or answered with an error.
    #[error("OVSDB at {endpoint}: {source} (is ovsdb-server running? --ovs-rundir / OVS_RUNDIR)")]
    Ovsdb {
        /// The endpoint used.
        endpoint: String,
        /// The reason.
        #[source]
        source: Box<switchyard_ovs::ovsdb::Error>,
    },
    /// The bridge's OpenFlow management socket cannot be used.
    #[error(
        "OpenFlow {what} on {path}: {source} (is ovs-vswitchd running? --bridge, --ovs-rundir)"
    )]
    OpenFlow {
        /// The request.
        what: &'static str,
        /// The management socket.
        path: PathBuf,
        /// The reason.
        #[source]
        source: Box<switchyard_ovs::openflow::Error>,
    },
    /// An `ovs-appctl` command failed.
    #[error(transparent)]
    Unixctl(#[from] Box<switchyard_ovs::unixctl::Error>),
    /// No usable kubeconfig / in-cluster configuration.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// An API request failed.
    #[error("API request {what}: {source}")]
    Api {
        /// The request.
        what: String,
        /// The reason.
        #[source]
        source: Box<::kube::Error>,
    },
    /// The object asked for does not exist (here).
    #[error("{0}")]
    NotFound(String),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a file, or running a tool, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The result could not be encoded (JSON/YAML).
    #[error("cannot encode the output: {0}")]
    Encode(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl From<switchyard_ovs::unixctl::Error> for Error {
    fn from(e: switchyard_ovs::unixctl::Error) -> Self {
        Error::Unixctl(Box::new(e))
    }
}
