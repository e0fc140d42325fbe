//! The node's gateway: the bridge, its internal port `sy-gw0` (fixed ofport
//! `pipeline::ofport::GATEWAY`) holding the first address of the node's pod
//! CIDR in the agent's own (the node's) network namespace, with the pod
//! CIDR routed on it as a connected route; and [`keep_routes`], which keeps
//! the routes the node sends through it (the overlay's to remote pod CIDRs,
//! `host_services`' for the Service CIDR) in place.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;
use rtnetlink::LinkUnspec;
use switchyard_ovs::ovsdb::{self, BridgeSpec, PortSpec};
use switchyard_pipeline as pipeline;
use tokio::sync::Notify;

use crate::config::AgentConfig;
use crate::flows::Gateway;
use crate::mac::MacAddr;
use crate::netns::{Netlink, link_mac};
use crate::reserved_port::{Found, OFPORT_TIMEOUT, Ofport, ReservedPort, ReservedPortError, Step};

/// Name of the gateway port and of its device in the node namespace.
pub const GATEWAY_PORT: &str = "sy-gw0";

/// Why the bridge or gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An OVSDB operation failed.
    #[error("{what}: {source}")]
    Ovsdb {
        /// What was done.
        what: String,
        /// The error.
        source: ovsdb::Error,
    },
    /// The gateway port could not be set up.
    #[error(transparent)]
    Port(#[from] ReservedPortError),
    /// A netlink operation in the node namespace failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was done.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// The gateway device did not appear in the node namespace.
    #[error(
        "device {GATEWAY_PORT} did not appear in the agent's network namespace; the agent must run in the same network namespace as ovs-vswitchd"
    )]
    DeviceMissing,
}

fn ovsdb_err(what: impl Into<String>) -> impl FnOnce(ovsdb::Error) -> GatewayError {
    let what = what.into();
    move |source| GatewayError::Ovsdb { what, source }
}

/// Creates or updates the bridge: datapath type from the config, fail mode
/// secure (no NORMAL flooding while the agent's flows are absent), OpenFlow
/// 1.0 (for `ovs-ofctl`'s default), 1.3 and 1.5 (the agent's and proxy's).
pub async fn ensure_bridge(
    ovsdb: &ovsdb::Client,
    config: &AgentConfig,
) -> Result<(), GatewayError> {
    let spec = BridgeSpec {
        name: config.bridge.clone(),
        datapath_type: Some(config.datapath_type.as_ovsdb_str().to_string()),
        fail_mode: Some("secure".to_string()),
        protocols: vec![
            "OpenFlow10".to_string(),
            "OpenFlow13".to_string(),
            "OpenFlow15".to_string(),
        ],
        ..BridgeSpec::default()
    };
    ovsdb
        .ensure_bridge(&spec)
        .await
        .map_err(ovsdb_err(format!("ensuring bridge {}", config.bridge)))?;
    Ok(())
}

/// The gateway address of a node with `pod_cidr`: its first address.
pub fn gateway_address(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr
        .hosts()
        .next()
        .unwrap_or_else(|| pod_cidr.network())
}

/// Ensures the gateway port and its address; returns the gateway as the
/// flows need it.
pub async fn ensure_gateway(
    ovsdb: &ovsdb::Client,
    netlink: &Netlink,
    config: &AgentConfig,
    pod_cidr: Ipv4Net,
) -> Result<Gateway, GatewayError> {
    let gateway_ip = gateway_address(pod_cidr);
    let port = ReservedPort {
        role: "gateway port",
        spec: PortSpec::new(GATEWAY_PORT)
            .with_type("internal")
            .with_external_id(crate::attachment::KEY_OWNER, "switchyard-agent-gateway"),
        ofport: Ofport::Pinned(pipeline::ofport::GATEWAY),
    };
    let existing = ovsdb
        .port(GATEWAY_PORT)
        .await
        .map_err(port.error(Step::Read))?;
    // Any port of that name is kept.
    let found = Found::of(existing.as_ref(), |_| true);
    port.ensure(ovsdb, &config.bridge, found).await?;
    let mac = configure_device(netlink, config.mtu, gateway_ip, pod_cidr.prefix_len()).await?;
    // The node kernel must not answer ARP for its other addresses on the
    // gateway (lab notes: arp_ignore=1); best effort.
    let sysctl = format!("/proc/sys/net/ipv4/conf/{GATEWAY_PORT}/arp_ignore");
    if let Err(e) = std::fs::write(&sysctl, "1") {
        tracing::warn!(path = %sysctl, error = %e, "cannot set arp_ignore on the gateway");
    }
    tracing::info!(%gateway_ip, %pod_cidr, %mac, "gateway ready");
    Ok(Gateway {
        ofport: pipeline::ofport::GATEWAY,
        mac,
        ip: gateway_ip,
    })
}

/// Brings `sy-gw0` up with the address and MTU; returns its MAC.
async fn configure_device(
    netlink: &Netlink,
    mtu: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<MacAddr, GatewayError> {
    let nl = |what: &str| {
        let what = format!("{what} {GATEWAY_PORT}");
        move |source| GatewayError::Netlink { what, source }
    };
    // The tap appears shortly after the ofport; poll with a deadline.
    let deadline = tokio::time::Instant::now() + OFPORT_TIMEOUT;
    let link = loop {
        match netlink.link_by_name(GATEWAY_PORT).await {
            Ok(Some(link)) => break link,
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return Err(GatewayError::DeviceMissing),
        }
    };
    let index = link.header.index;
    let mac = link_mac(&link).ok_or(GatewayError::DeviceMissing)?;
    netlink
        .handle()
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl("setting up"))?;
    match netlink
        .handle()
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(msg))
            if msg.to_io().raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(nl(&format!("adding {ip}/{prefix} to"))(e)),
    }
    Ok(mac)
}

/// How often the routes through the gateway are re-applied even without a
/// change (a restarted vswitchd recreates the gateway device without them).
pub const ROUTE_REFRESH: Duration = Duration::from_secs(10);
/// Route protocol number marking the agent's routes (`ip route` shows
/// `proto 0x53`); only routes with it are ever deleted.
pub const ROUTE_PROTOCOL: u8 = 0x53;

/// Keeps the routes `wanted` returns (CIDR to next hop) through the gateway:
/// applies them, then again whenever `changed` is notified and every
/// [`ROUTE_REFRESH`]; routes it installed that are no longer wanted are
/// deleted. `what` names the routes in log lines. Never returns unless
/// netlink cannot be opened (then it logs why).
pub async fn keep_routes<F, Fut>(what: &str, changed: &Notify, mut wanted: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BTreeMap<Ipv4Net, Ipv4Addr>>,
{
    let netlink = match Netlink::current() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot open netlink for {what}");
            return;
        }
    };
    let mut installed: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    loop {
        let wanted = wanted().await;
        match sync_routes(&netlink, &wanted, &installed).await {
            Ok(()) => installed = wanted,
            Err(e) => tracing::warn!(error = %e, "{what} not in place yet"),
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(ROUTE_REFRESH) => {}
        }
    }
}

/// Routes each wanted CIDR `via <next hop> dev sy-gw0 onlink` (replace, so
/// re-applying is harmless) and deletes routes of CIDRs no longer wanted.
async fn sync_routes(
    netlink: &Netlink,
    wanted: &BTreeMap<Ipv4Net, Ipv4Addr>,
    installed: &BTreeMap<Ipv4Net, Ipv4Addr>,
) -> Result<(), GatewayError> {
    let link =
        netlink
            .link_by_name(GATEWAY_PORT)
            .await
            .map_err(|source| GatewayError::Netlink {
                what: format!("looking up {GATEWAY_PORT}"),
                source,
            })?;
    let Some(link) = link else {
        return Ok(());
    };
    let index = link.header.index;
    let message = |cidr: &Ipv4Net, via: Ipv4Addr| {
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(via)
            .output_interface(index)
            .protocol(netlink_packet_route::route::RouteProtocol::Other(
                ROUTE_PROTOCOL,
            ))
            .onlink()
            .build()
    };
    for (cidr, via) in installed {
        if wanted.get(cidr) != Some(via) {
            match netlink
                .handle()
                .route()
                .del(message(cidr, *via))
                .execute()
                .await
            {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m))
                    if m.to_io().raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(GatewayError::Netlink {
                        what: format!("deleting the route to {cidr}"),
                        source,
                    });
                }
            }
        }
    }
    for (cidr, via) in wanted {
        netlink
            .handle()
            .route()
            .add(message(cidr, *via))
            .replace()
            .execute()
            .await
            .map_err(|source| GatewayError::Netlink {
                what: format!("routing {cidr} via {via} dev {GATEWAY_PORT}"),
                source,
            })?;
    }
    Ok(())
}
