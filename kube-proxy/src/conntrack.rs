//! Flushing stale UDP conntrack entries of the pod zone with NXT_CT_FLUSH
//! (OVS 3.1+, partial tuples) over the OpenFlow connection: entries whose
//! original tuple goes to `VIP:port` and whose reply tuple comes from
//! `endpoint:port`, or, for a frontend that had no endpoints, every entry to
//! `VIP:port` (what `ovs-ofctl ct-flush` does; the messages are
//! byte-identical to its, see `ovs/tests/openflow_golden.rs`).

use std::net::IpAddr;

use switchyard_ovs::openflow::{Client, CtTuple, Error};
use switchyard_ovs::pipeline::zone;

use crate::diff::{StaleUdpEndpoint, StaleUdpFrontend};

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

/// Flushes conntrack entries of the pod zone through one bridge.
#[derive(Debug, Clone)]
pub struct ConntrackFlusher {
    client: Client,
}

impl ConntrackFlusher {
    pub fn new(client: Client) -> Self {
        Self { client }
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
                .ct_flush(Some(zone::POD), IPPROTO_UDP, orig, reply)
                .await?;
        }
        for stale in frontends {
            self.client
                .ct_flush(
                    Some(zone::POD),
                    IPPROTO_UDP,
                    frontend_tuple(stale),
                    CtTuple::default(),
                )
                .await?;
        }
        Ok(())
    }
}
