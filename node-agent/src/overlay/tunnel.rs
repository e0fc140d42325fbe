//! The tunnel port `sy-tun0` and what its encapsulation leaves of the
//! underlay's MTU for pods.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use switchyard_ovs::ovsdb::{self, PortSpec};
use switchyard_pipeline::ofport;

use super::OverlayError;
use super::watch::internal_ip;
use crate::config::TunnelType;
use crate::netns::Netlink;
use crate::reserved_port::{Found, Ofport, ReservedPort, Step};

/// Name of the flow-based tunnel port on the bridge.
pub const TUNNEL_PORT: &str = "sy-tun0";
/// Bytes Geneve (without options) or VXLAN add to an inner Ethernet frame
/// over IPv4: outer IPv4 20 + UDP 8 + tunnel header 8 + inner Ethernet 14.
pub const ENCAP_OVERHEAD: u32 = 50;

/// Creates `sy-tun0` (flow-based `remote_ip` and key, `ofport_request`
/// [`ofport::TUNNEL`]) or replaces it when its type differs.
pub async fn ensure_tunnel_port(
    ovsdb: &ovsdb::Client,
    bridge: &str,
    tunnel: TunnelType,
) -> Result<(), OverlayError> {
    let kind = match tunnel {
        TunnelType::Geneve => "geneve",
        TunnelType::Vxlan => "vxlan",
    };
    let port = ReservedPort {
        role: "tunnel port",
        spec: PortSpec::new(TUNNEL_PORT)
            .with_type(kind)
            .with_option("remote_ip", "flow")
            .with_option("key", "flow")
            .with_external_id(crate::attachment::KEY_OWNER, "switchyard-agent-tunnel"),
        ofport: Ofport::Pinned(ofport::TUNNEL),
    };
    let existing = ovsdb
        .interface(TUNNEL_PORT)
        .await
        .map_err(port.error(Step::Read))?;
    let found = Found::of(existing.as_ref(), |i| {
        i.interface_type == kind
            && port
                .spec
                .options
                .iter()
                .all(|(key, value)| i.options.get(key) == Some(value))
    });
    if found == Found::Different {
        tracing::info!(port = TUNNEL_PORT, kind, "replacing the tunnel port");
    }
    port.ensure(ovsdb, bridge, found).await?;
    Ok(())
}

/// The pod MTU the underlay allows: the MTU of the interface holding this
/// node's InternalIP (the tunnel endpoint) minus [`ENCAP_OVERHEAD`]; `None`
/// when the Node has no InternalIP or no local interface holds it.
pub async fn pod_mtu_from_underlay(
    client: kube::Client,
    node_name: &str,
    netlink: &Netlink,
) -> Option<u32> {
    let nodes: Api<Node> = Api::all(client);
    let node = tokio::time::timeout(Duration::from_secs(10), nodes.get(node_name))
        .await
        .ok()?
        .ok()?;
    let ip = internal_ip(&node)?;
    let mut addresses = netlink.handle().address().get().execute();
    let mut index = None;
    while let Ok(Some(msg)) = addresses.try_next().await {
        let holds = msg.attributes.iter().any(|a| {
            matches!(a, netlink_packet_route::address::AddressAttribute::Local(std::net::IpAddr::V4(v))
                | netlink_packet_route::address::AddressAttribute::Address(std::net::IpAddr::V4(v)) if *v == ip)
        });
        if holds {
            index = Some(msg.header.index);
            break;
        }
    }
    let link = netlink
        .handle()
        .link()
        .get()
        .match_index(index?)
        .execute()
        .try_next()
        .await
        .ok()??;
    let mtu = link.attributes.iter().find_map(|a| match a {
        netlink_packet_route::link::LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })?;
    tracing::info!(%ip, underlay_mtu = mtu, pod_mtu = mtu.saturating_sub(ENCAP_OVERHEAD), "pod MTU from the underlay");
    Some(mtu.saturating_sub(ENCAP_OVERHEAD))
}
