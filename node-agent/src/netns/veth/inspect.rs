//! Reading the pod end back for CNI CHECK.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope};
use rtnetlink::RouteMessageBuilder;

use super::link::{existing_link, link_mtu};
use super::{InterfaceError, PodInterfaceState, RouteEntry, Step, validate_ifname};
use crate::netns::{Netlink, Netns, ethtool, link_mac, run_in_netns};

/// Reads back the pod end for CNI CHECK: MAC, MTU, state, IPv4 addresses,
/// main-table IPv4 routes through it, transmit checksum offload.
pub async fn inspect_pod_interface(
    pod_netns: &Netns,
    ifname: &str,
) -> Result<PodInterfaceState, InterfaceError> {
    validate_ifname(ifname)?;
    let label = pod_netns.to_string();
    let pod = Netlink::open_in(pod_netns).await?;
    let link = existing_link(&pod, ifname).await?;
    let index = link.header.index;
    let nl_err = |step| {
        let label = label.clone();
        move |source| InterfaceError::Netlink {
            step,
            ifname: ifname.to_string(),
            netns: label,
            source,
        }
    };

    let mut addresses = Vec::new();
    let mut stream = pod
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(nl_err(Step::ListAddresses))?
    {
        if msg.header.family != AddressFamily::Inet || msg.header.index != index {
            continue;
        }
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        if let Some(ip) = address
            && let Ok(net) = Ipv4Net::new(ip, msg.header.prefix_len)
        {
            addresses.push(net);
        }
    }

    let mut routes = Vec::new();
    let mut stream = pod
        .handle()
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = stream.try_next().await.map_err(nl_err(Step::ListRoutes))? {
        let table = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(msg.header.table));
        let oif = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if msg.header.address_family != AddressFamily::Inet
            || table != u32::from(RouteHeader::RT_TABLE_MAIN)
            || oif != Some(index)
        {
            continue;
        }
        let destination = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let gateway = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if let Ok(destination) = Ipv4Net::new(destination, msg.header.destination_prefix_length) {
            routes.push(RouteEntry {
                destination,
                gateway,
                link_scope: msg.header.scope == RouteScope::Link,
            });
        }
    }

    let name = ifname.to_string();
    let tx_checksum = run_in_netns(pod_netns, move || ethtool::tx_checksum(&name))
        .await?
        .map_err(|source| InterfaceError::Io {
            step: Step::ReadTxChecksum,
            ifname: ifname.to_string(),
            netns: label.clone(),
            source,
        })?;

    Ok(PodInterfaceState {
        ifname: ifname.to_string(),
        ifindex: index,
        mac: link_mac(&link),
        mtu: link_mtu(&link),
        up: link.header.flags.contains(LinkFlags::Up),
        addresses,
        routes,
        tx_checksum,
    })
}
