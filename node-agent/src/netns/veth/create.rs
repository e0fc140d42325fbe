//! Creating the veth pair: the request's checks, the pair created up with
//! its peer directly in the pod namespace (a leftover host end of an
//! earlier attempt removed if the name is taken), then the pod side
//! configured (`configure.rs`) or the pair deleted again.

use std::net::Ipv4Addr;

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::configure::configure;
use super::error::errno;
use super::link::{delete_link, find_link};
use super::{InterfaceError, PodInterface, PodInterfaceSpec, Step, host_ifname, validate_ifname};
use crate::netns::{Netlink, Netns};

/// Builds the pod interface. On failure after the veth pair exists, the
/// pair is deleted again, so nothing half-made stays behind. A leftover host
/// end from an earlier failed attempt for the same container and ifname is
/// removed first.
pub async fn create_pod_interface(
    host: &Netlink,
    pod_netns: &Netns,
    spec: &PodInterfaceSpec,
) -> Result<PodInterface, InterfaceError> {
    validate_ifname(&spec.ifname)?;
    if !(68..=65535).contains(&spec.mtu) {
        return Err(InterfaceError::InvalidSpec(format!(
            "MTU {} is outside 68..=65535",
            spec.mtu
        )));
    }
    let pod_mac = spec.pod_mac();
    if !pod_mac.is_unicast() || pod_mac.is_zero() {
        return Err(InterfaceError::InvalidSpec(format!(
            "MAC {pod_mac} is not a unicast address"
        )));
    }
    let not_unicast = |ip: Ipv4Addr| {
        ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
    };
    if not_unicast(spec.address.addr()) {
        return Err(InterfaceError::InvalidSpec(format!(
            "pod address {} is not a unicast address",
            spec.address
        )));
    }
    if let Some(gateway) = spec.gateway
        && not_unicast(gateway)
    {
        return Err(InterfaceError::InvalidSpec(format!(
            "gateway {gateway} is not a unicast address"
        )));
    }
    if spec.gateway == Some(spec.address.addr()) {
        return Err(InterfaceError::InvalidSpec(format!(
            "gateway {} equals the pod address",
            spec.address.addr()
        )));
    }
    let host_name = host_ifname(&spec.container_id, &spec.ifname);
    let pod_label = pod_netns.to_string();

    let (pod, ioctl) = Netlink::open_in_with_ioctl_socket(pod_netns).await?;

    // The host end is created up (no link-up request for it); the pod end
    // cannot be (the kernel brings the peer up before the host end is
    // registered: ENOTCONN), configure() sets it up.
    let veth = || {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.ifname.clone())
            .mtu(spec.mtu)
            .address(pod_mac.0.to_vec())
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&pod_netns.fd()))
            .build();
        LinkVeth::new(&host_name, &spec.ifname)
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .up()
            .build()
    };
    let create_err = |source| InterfaceError::Netlink {
        step: Step::CreateVeth,
        ifname: format!("{host_name} (peer {} in {pod_label})", spec.ifname),
        netns: host.netns().to_string(),
        source,
    };
    // Created first, looked at only if a name is taken (EEXIST): a
    // leftover host end of an earlier attempt is removed and the pair
    // made again; CNI_IFNAME taken in the pod is an error. The usual ADD
    // makes no lookups.
    match host.handle().link().add(veth()).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            if find_link(host, &host_name).await?.is_some() {
                tracing::info!(host_ifname = %host_name, "removing leftover host end of an earlier attempt");
                delete_link(host, &host_name, Step::RemoveLeftover).await?;
            }
            if find_link(&pod, &spec.ifname).await?.is_some() {
                return Err(InterfaceError::AlreadyExists {
                    ifname: spec.ifname.clone(),
                    netns: pod_label,
                });
            }
            host.handle()
                .link()
                .add(veth())
                .execute()
                .await
                .map_err(create_err)?;
        }
        Err(e) => return Err(create_err(e)),
    }

    match configure(host, &pod, &ioctl, pod_netns, spec, &host_name, pod_mac).await {
        Ok(built) => {
            tracing::debug!(host_ifname = %built.host_ifname, pod_ifname = %built.pod_ifname, netns = %pod_label, "pod interface created");
            Ok(built)
        }
        Err(err) => {
            if let Err(cleanup) = delete_link(host, &host_name, Step::DeleteHostEnd).await {
                tracing::warn!(host_ifname = %host_name, error = %cleanup, "rollback of veth pair failed");
            }
            Err(err)
        }
    }
}
