//! Flushing stale UDP conntrack entries of the pod zone.
//!
//! Uses `ovs-ofctl ct-flush` against the bridge's management socket (OVS
//! 3.1's NXT_CT_FLUSH with partial tuples): entries whose original tuple
//! goes to `VIP:port` and whose reply tuple comes from `endpoint:port`, or,
//! for a frontend that had no endpoints, every entry to `VIP:port`.

use std::path::PathBuf;
use std::process::Stdio;

use switchyard_ovs::pipeline::zone;
use tokio::process::Command;

use crate::diff::{StaleUdpEndpoint, StaleUdpFrontend};

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot run ovs-ofctl: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("`ovs-ofctl {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Flushes conntrack entries through one bridge's management socket.
#[derive(Debug, Clone)]
pub struct ConntrackFlusher {
    mgmt_socket: PathBuf,
}

impl ConntrackFlusher {
    pub fn new(mgmt_socket: impl Into<PathBuf>) -> Self {
        Self {
            mgmt_socket: mgmt_socket.into(),
        }
    }

    /// The `ct-flush` arguments for a stale endpoint: original tuple to the
    /// frontend, reply tuple from the endpoint.
    pub fn endpoint_args(&self, stale: &StaleUdpEndpoint) -> Vec<String> {
        vec![
            "ct-flush".into(),
            format!("unix:{}", self.mgmt_socket.display()),
            format!("zone={}", zone::POD),
            format!(
                "ct_nw_dst={},ct_nw_proto=17,ct_tp_dst={}",
                stale.cluster_ip, stale.port
            ),
            format!(
                "ct_nw_src={},ct_nw_proto=17,ct_tp_src={}",
                stale.endpoint_ip, stale.endpoint_port
            ),
        ]
    }

    /// The `ct-flush` arguments for a frontend that gained endpoints.
    pub fn frontend_args(&self, stale: &StaleUdpFrontend) -> Vec<String> {
        vec![
            "ct-flush".into(),
            format!("unix:{}", self.mgmt_socket.display()),
            format!("zone={}", zone::POD),
            format!(
                "ct_nw_dst={},ct_nw_proto=17,ct_tp_dst={}",
                stale.cluster_ip, stale.port
            ),
        ]
    }

    async fn run(&self, args: Vec<String>) -> Result<(), FlushError> {
        let output = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(FlushError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Flushes the entries of stale endpoints and frontends.
    pub async fn flush(
        &self,
        endpoints: &[StaleUdpEndpoint],
        frontends: &[StaleUdpFrontend],
    ) -> Result<(), FlushError> {
        for stale in endpoints {
            self.run(self.endpoint_args(stale)).await?;
        }
        for stale in frontends {
            self.run(self.frontend_args(stale)).await?;
        }
        Ok(())
    }
}
