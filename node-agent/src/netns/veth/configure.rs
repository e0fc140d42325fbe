//! Configuring the pod side of a new veth pair (its host end created up):
//! the pod address, the pod end up, the routes to the gateway, transmit
//! checksum offload and the gratuitous ARP; the host end is looked up
//! meanwhile.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, State};
use netlink_packet_route::route::RouteScope;
use rtnetlink::RouteMessageBuilder;

use super::link::{existing_link, not_found, set_link_up};
use super::{InterfaceError, PodInterface, PodInterfaceSpec, Step};
use crate::mac::MacAddr;
use crate::netns::{Netlink, Netns, arp, ethtool, link_mac, run_in_netns};

/// Gives the pair its address, pod end up, routes, offload and ARP. `ioctl` is an
/// `AF_INET` socket made in the pod namespace (ethtool).
pub(super) async fn configure(
    host: &Netlink,
    pod: &Netlink,
    ioctl: &OwnedFd,
    pod_netns: &Netns,
    spec: &PodInterfaceSpec,
    host_name: &str,
    pod_mac: MacAddr,
) -> Result<PodInterface, InterfaceError> {
    let pod_label = pod_netns.to_string();
    let ifname = spec.ifname.clone();
    // Errors of the steps in the pod namespace.
    let nl_err = |step| {
        let (ifname, netns) = (ifname.clone(), pod_label.clone());
        move |source| InterfaceError::Netlink {
            step,
            ifname,
            netns,
            source,
        }
    };
    let io_err = |step| {
        let (ifname, netns) = (ifname.clone(), pod_label.clone());
        move |source| InterfaceError::Io {
            step,
            ifname,
            netns,
            source,
        }
    };
    let add_route = async |route, step| {
        pod.handle()
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl_err(step))
    };

    // The host end (its index and MAC, for the result) on the node's
    // socket while the pod side is configured on the pod's.
    let pod_side = async {
        let pod_link = existing_link(pod, &ifname).await?;
        let pod_index = pod_link.header.index;
        // Sent together on the pod's socket (the kernel takes them in
        // order); the routes below need both.
        let address = async {
            pod.handle()
                .address()
                .add(
                    pod_index,
                    IpAddr::V4(spec.address.addr()),
                    spec.address.prefix_len(),
                )
                .execute()
                .await
                .map_err(nl_err(Step::AddAddress))
        };
        tokio::try_join!(address, set_link_up(pod, pod_index, &ifname))?;
        if let Some(gateway) = spec.gateway {
            if !spec.address.contains(&gateway) {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gateway, 32)
                    .output_interface(pod_index)
                    .scope(RouteScope::Link)
                    .build();
                add_route(route, Step::AddGatewayRoute).await?;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(pod_index)
                .build();
            add_route(route, Step::AddDefaultRoute).await?;
        }
        if spec.disable_tx_checksum {
            ethtool::set_tx_checksum_on(ioctl, &ifname, false)
                .map_err(io_err(Step::DisableTxChecksum))?;
        }
        Ok::<_, InterfaceError>(pod_link)
    };
    let (host_link, pod_link) = tokio::join!(existing_link(host, host_name), pod_side);
    let (host_link, pod_link) = (host_link?, pod_link?);
    let host_index = host_link.header.index;
    let pod_index = pod_link.header.index;

    if spec.gratuitous_arp {
        // Until the kernel's link watcher has seen the carrier, the device
        // transmits through a no-op qdisc that drops everything: wait for
        // operational state UP first, or the announcement is lost.
        if !wait_oper_up(pod, pod_index, OPER_UP_TIMEOUT).await {
            tracing::warn!(ifname = %ifname, netns = %pod_label, "pod interface not operationally up; sending gratuitous ARP anyway");
        }
        let ip = spec.address.addr();
        run_in_netns(pod_netns, move || {
            arp::send_gratuitous_arp(pod_index, pod_mac, ip)
        })
        .await?
        .map_err(io_err(Step::SendGratuitousArp))?;
    }

    let host_mac = link_mac(&host_link).ok_or_else(|| not_found(host, host_name))?;
    Ok(PodInterface {
        host_ifname: host_name.to_string(),
        host_ifindex: host_index,
        host_mac,
        pod_ifname: ifname,
        pod_ifindex: pod_index,
        pod_mac: link_mac(&pod_link).unwrap_or(pod_mac),
        sandbox: pod_netns.path().to_path_buf(),
        address: spec.address,
        gateway: spec.gateway,
        mtu: spec.mtu,
    })
}

/// How long an ADD waits for the pod end to become operationally up.
const OPER_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Polls the link's operational state until it is UP or `timeout` passes.
async fn wait_oper_up(netlink: &Netlink, index: u32, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let link = netlink
            .handle()
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        if let Ok(Some(link)) = link
            && link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
