//! Flushing stale UDP conntrack entries of the pod zone with NXT_CT_FLUSH
//! (OVS 3.1+, partial tuples) over the OpenFlow connection: entries whose
//! original tuple goes to `VIP:port` and whose reply tuple comes from
//! `endpoint:port`, or, for a frontend that had no endpoints, every entry to
//! `VIP:port` (what `ovs-ofctl ct-flush` does; the messages are
//! byte-identical to its, see `ovs/tests/openflow_golden.rs`).
//!
//! One flush right after the bundle is not enough. The bundle changes the
//! OpenFlow tables at once, but the datapath keeps using its cached
//! megaflows until `ovs-vswitchd`'s revalidators have gone over them, which
//! takes from a few milliseconds to, on a busy node, a second or more. A
//! packet of the flushed flow that arrives in that window misses conntrack
//! and meets the cached `ct(commit,nat(dst=<removed endpoint>))` again: the
//! entry is back, and as long as the client keeps sending it never times
//! out. So every flush is repeated once the revalidators have finished a
//! round started after it (`revalidator/wait` on the unixctl socket), or,
//! when that socket cannot be used, after [`FALLBACK_DELAY`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_ovs::openflow::{Client, CtTuple, Error};
use switchyard_ovs::unixctl::Unixctl;
use switchyard_pipeline::zone;
use tracing::{debug, warn};

use crate::diff::{StaleUdpEndpoint, StaleUdpFrontend};
use crate::metrics::{FlushPass, Metrics};

/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;

/// `(orig, reply)` tuples matching the entries of a stale endpoint.
pub fn endpoint_tuples(stale: &StaleUdpEndpoint) -> (CtTuple, CtTuple) {
    (
        CtTuple {
            dst: Some(IpAddr::V4(stale.cluster_ip)),
            dst_port: Some(stale.port),
            ..CtTuple::default()
        },
        CtTuple {
            src: Some(IpAddr::V4(stale.endpoint_ip)),
            src_port: Some(stale.endpoint_port),
            ..CtTuple::default()
        },
    )
}

/// The original tuple matching every entry to a frontend.
pub fn frontend_tuple(stale: &StaleUdpFrontend) -> CtTuple {
    CtTuple {
        dst: Some(IpAddr::V4(stale.cluster_ip)),
        dst_port: Some(stale.port),
        ..CtTuple::default()
    }
}

/// A frontend address: every connection to it is DNATed to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub ip_proto: u8,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// `(orig, reply)` tuples matching the entries to `frontend` that were
/// committed without DNAT: their reply would come from the frontend address
/// itself. Such an entry is made when a packet crosses the pipeline while
/// the agent's flows are installed and the proxy's are not (right after
/// `ovs-vswitchd` restarts): the agent commits every new connection. Later
/// packets of that 5-tuple can never be DNATed (NAT cannot be added to a
/// committed connection), so the flow is black-holed for as long as the
/// client keeps it alive. A DNATed entry's reply comes from an endpoint, so
/// these tuples never match one.
pub fn unnatted_tuples(frontend: &Frontend) -> (CtTuple, CtTuple) {
    (
        CtTuple {
            dst: Some(IpAddr::V4(frontend.ip)),
            dst_port: Some(frontend.port),
            ..CtTuple::default()
        },
        CtTuple {
            src: Some(IpAddr::V4(frontend.ip)),
            src_port: Some(frontend.port),
            ..CtTuple::default()
        },
    )
}

/// How long `revalidator/wait` may take before the repeat flush goes ahead.
pub const REVALIDATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait before the repeat flush when the unixctl socket cannot be used
/// (several revalidator rounds of an idle node: `max-revalidator` is 500 ms).
pub const FALLBACK_DELAY: Duration = Duration::from_secs(2);

/// Flushes conntrack entries of the pod zone through one bridge.
#[derive(Debug, Clone)]
pub struct ConntrackFlusher {
    client: Client,
    /// OVS run directory holding `ovs-vswitchd`'s unixctl socket; `None`
    /// for no repeat flush.
    ovs_rundir: Option<Arc<PathBuf>>,
    metrics: Arc<Metrics>,
}

impl ConntrackFlusher {
    /// A flusher that repeats each flush after revalidation (see the module
    /// docs); `ovs_rundir` holds `ovs-vswitchd.pid` and its `.ctl` socket.
    pub fn new(client: Client, ovs_rundir: Option<PathBuf>, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            ovs_rundir: ovs_rundir.map(Arc::new),
            metrics,
        }
    }

    /// Flushes now, then again in the background once the datapath no longer
    /// holds megaflows from before the flush. Returns the first flush's
    /// result; a failed repeat is logged and counted.
    pub async fn flush_and_repeat(
        &self,
        endpoints: &[StaleUdpEndpoint],
        frontends: &[StaleUdpFrontend],
    ) -> Result<(), Error> {
        self.flush(endpoints, frontends).await?;
        self.metrics
            .conntrack_flushes
            .get_or_create(&FlushPass::FIRST)
            .inc();
        let Some(rundir) = self.ovs_rundir.clone() else {
            return Ok(());
        };
        let this = self.clone();
        let endpoints = endpoints.to_vec();
        let frontends = frontends.to_vec();
        tokio::spawn(async move {
            let pass = wait_for_revalidation(&rundir).await;
            match this.flush(&endpoints, &frontends).await {
                Ok(()) => {
                    debug!(
                        endpoints = endpoints.len(),
                        frontends = frontends.len(),
                        pass = pass.pass,
                        "stale UDP conntrack entries flushed again"
                    );
                    this.metrics.conntrack_flushes.get_or_create(&pass).inc();
                }
                Err(err) => {
                    warn!(%err, "repeat flush of stale UDP conntrack entries failed");
                    this.metrics.conntrack_flush_failures.inc();
                }
            }
        });
        Ok(())
    }

    /// Flushes, in the background, the entries of `frontends` committed
    /// without DNAT (see [`unnatted_tuples`]), and again once the datapath's
    /// cached flows from before are revalidated away. Failures are logged
    /// and counted.
    pub fn flush_unnatted_in_background(&self, frontends: Vec<Frontend>) {
        if frontends.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.flush_unnatted(&frontends).await {
                warn!(%err, "un-NATed conntrack entries of frontends not flushed");
                this.metrics.conntrack_flush_failures.inc();
                return;
            }
            this.metrics
                .conntrack_unnatted_flushes
                .get_or_create(&FlushPass::FIRST)
                .inc();
            let Some(rundir) = this.ovs_rundir.clone() else {
                return;
            };
            let pass = wait_for_revalidation(&rundir).await;
            match this.flush_unnatted(&frontends).await {
                Ok(()) => {
                    debug!(
                        frontends = frontends.len(),
                        pass = pass.pass,
                        "un-NATed conntrack entries flushed again"
                    );
                    this.metrics
                        .conntrack_unnatted_flushes
                        .get_or_create(&pass)
                        .inc();
                }
                Err(err) => {
                    warn!(%err, "repeat flush of un-NATed conntrack entries failed");
                    this.metrics.conntrack_flush_failures.inc();
                }
            }
        });
    }

    async fn flush_unnatted(&self, frontends: &[Frontend]) -> Result<(), Error> {
        for frontend in frontends {
            let (orig, reply) = unnatted_tuples(frontend);
            self.client
                .ct_flush(Some(zone::POD.id()), frontend.ip_proto, orig, reply)
                .await?;
        }
        Ok(())
    }

    /// Flushes the entries of stale endpoints and frontends.
    pub async fn flush(
        &self,
        endpoints: &[StaleUdpEndpoint],
        frontends: &[StaleUdpFrontend],
    ) -> Result<(), Error> {
        for stale in endpoints {
            let (orig, reply) = endpoint_tuples(stale);
            self.client
                .ct_flush(Some(zone::POD.id()), IPPROTO_UDP, orig, reply)
                .await?;
        }
        for stale in frontends {
            self.client
                .ct_flush(
                    Some(zone::POD.id()),
                    IPPROTO_UDP,
                    frontend_tuple(stale),
                    CtTuple::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Returns once `ovs-vswitchd`'s revalidators have finished a round started
/// after this call, or after [`FALLBACK_DELAY`] if that cannot be asked;
/// says which.
async fn wait_for_revalidation(rundir: &std::path::Path) -> FlushPass {
    let result = match Unixctl::for_daemon(rundir, "ovs-vswitchd") {
        Ok(ctl) => ctl
            .call("revalidator/wait", &[], REVALIDATION_TIMEOUT)
            .await
            .map(drop),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => FlushPass::AFTER_REVALIDATION,
        Err(err) => {
            debug!(%err, delay = ?FALLBACK_DELAY, "cannot wait for revalidation; waiting a fixed delay");
            tokio::time::sleep(FALLBACK_DELAY).await;
            FlushPass::AFTER_DELAY
        }
    }
}
