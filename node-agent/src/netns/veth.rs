//! The pod's interface: a veth pair whose host end stays in the node
//! namespace (to become an OVS port) and whose peer is created directly in
//! the pod namespace, named CNI_IFNAME, with MAC, MTU, address and routes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage, State,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteScope};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use super::netlink::{Netlink, link_mac};
use super::path::{Netns, NetnsError};
use super::thread::run_in_netns;
use super::{arp, ethtool};
use crate::mac::MacAddr;

/// Prefix of every host-side veth name the agent creates.
pub const HOST_IFNAME_PREFIX: &str = "sy";

/// The host end's name for a pod interface: `sy` + 11 hex digits of
/// SHA-256(container id, ifname); 13 characters, stable across retries.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{}", &hex[..11])
}

/// Checks a Linux interface name (CNI_IFNAME).
pub fn validate_ifname(name: &str) -> Result<(), InterfaceError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("it contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InterfaceError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What to build for one pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME: the name inside the pod.
    pub ifname: String,
    /// Pod address and prefix length.
    pub address: Ipv4Net,
    /// Default gateway; `None` adds no default route.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of both ends.
    pub mtu: u32,
    /// Pod MAC; `None` derives a stable one from container id and ifname.
    pub mac: Option<MacAddr>,
    /// Turn off transmit checksum offload on the pod end (netdev datapath).
    pub disable_tx_checksum: bool,
    /// Announce the address with a gratuitous ARP.
    pub gratuitous_arp: bool,
}

impl PodInterfaceSpec {
    /// The MAC the pod end gets.
    pub fn pod_mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            MacAddr::derived_local(format!("{}/{}", self.container_id, self.ifname).as_bytes())
        })
    }
}

/// What was built: what a CNI result and the OVS port need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Host end name (the OVS port name).
    pub host_ifname: String,
    /// Host end index in the node namespace.
    pub host_ifindex: u32,
    /// Host end MAC.
    pub host_mac: MacAddr,
    /// Pod end name.
    pub pod_ifname: String,
    /// Pod end index in the pod namespace.
    pub pod_ifindex: u32,
    /// Pod end MAC.
    pub pod_mac: MacAddr,
    /// The netns path (CNI result `sandbox`).
    pub sandbox: PathBuf,
    /// Pod address.
    pub address: Ipv4Net,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MTU.
    pub mtu: u32,
}

/// One IPv4 route of the main table through the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination (0.0.0.0/0 for the default route).
    pub destination: Ipv4Net,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Link scope (on-link, no next hop needed).
    pub link_scope: bool,
}

/// The interface as it is now (for CNI CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceState {
    /// Name.
    pub ifname: String,
    /// Index.
    pub ifindex: u32,
    /// MAC.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses with prefix.
    pub addresses: Vec<Ipv4Net>,
    /// IPv4 main-table routes through it.
    pub routes: Vec<RouteEntry>,
    /// Transmit checksum offload state.
    pub tx_checksum: bool,
}

/// A step of building or inspecting a pod interface (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Looking a link up by name.
    LookUpLink,
    /// Removing a leftover host end.
    RemoveLeftover,
    /// Creating the veth pair.
    CreateVeth,
    /// Setting a link up.
    SetUp,
    /// Adding the pod address.
    AddAddress,
    /// Adding the on-link route to the gateway.
    AddGatewayRoute,
    /// Adding the default route.
    AddDefaultRoute,
    /// Turning off transmit checksum offload.
    DisableTxChecksum,
    /// Sending the gratuitous ARP.
    SendGratuitousArp,
    /// Deleting the host end.
    DeleteHostEnd,
    /// Listing addresses.
    ListAddresses,
    /// Listing routes.
    ListRoutes,
    /// Reading transmit checksum offload.
    ReadTxChecksum,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::LookUpLink => "looking up link",
            Step::RemoveLeftover => "removing leftover host end",
            Step::CreateVeth => "creating veth pair",
            Step::SetUp => "setting link up",
            Step::AddAddress => "adding address",
            Step::AddGatewayRoute => "adding on-link route to gateway",
            Step::AddDefaultRoute => "adding default route",
            Step::DisableTxChecksum => "disabling tx checksum offload",
            Step::SendGratuitousArp => "sending gratuitous ARP",
            Step::DeleteHostEnd => "deleting host end",
            Step::ListAddresses => "listing addresses",
            Step::ListRoutes => "listing routes",
            Step::ReadTxChecksum => "reading tx checksum offload",
        })
    }
}

/// Why building, deleting or inspecting a pod interface failed. Each
/// variant names the step, the interface and the namespace.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// Interface name unusable.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Bad request values.
    #[error("invalid pod interface request: {0}")]
    InvalidSpec(String),
    /// CNI_IFNAME is taken inside the pod.
    #[error(
        "interface {ifname} already exists in netns {netns}; remove it or use another CNI_IFNAME"
    )]
    AlreadyExists {
        /// The name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// Interface missing (CHECK).
    #[error("interface {ifname} not found in netns {netns}")]
    NotFound {
        /// The name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// A netlink request failed.
    #[error("{step} {ifname} in netns {netns}: {source}")]
    Netlink {
        /// The step.
        step: Step,
        /// The interface.
        ifname: String,
        /// The namespace.
        netns: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A socket or ioctl failed.
    #[error("{step} {ifname} in netns {netns}: {source}")]
    Io {
        /// The step.
        step: Step,
        /// The interface.
        ifname: String,
        /// The namespace.
        netns: String,
        /// The error.
        source: std::io::Error,
    },
    /// Opening or entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

/// Link by name in the connection's namespace; `None` if there is none.
async fn find_link(netlink: &Netlink, name: &str) -> Result<Option<LinkMessage>, InterfaceError> {
    match netlink.link_by_name(name).await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(InterfaceError::Netlink {
            step: Step::LookUpLink,
            ifname: name.to_string(),
            netns: netlink.netns().to_string(),
            source,
        }),
    }
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

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

    if find_link(host, &host_name).await?.is_some() {
        tracing::info!(host_ifname = %host_name, "removing leftover host end of an earlier attempt");
        delete_link(host, &host_name, Step::RemoveLeftover).await?;
    }
    let pod = Netlink::open_in(pod_netns).await?;
    if find_link(&pod, &spec.ifname).await?.is_some() {
        return Err(InterfaceError::AlreadyExists {
            ifname: spec.ifname.clone(),
            netns: pod_label,
        });
    }

    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.ifname.clone())
        .mtu(spec.mtu)
        .address(pod_mac.0.to_vec())
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&pod_netns.fd()))
        .build();
    let veth = LinkVeth::new(&host_name, &spec.ifname)
        .mtu(spec.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.handle()
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|source| InterfaceError::Netlink {
            step: Step::CreateVeth,
            ifname: format!("{host_name} (peer {} in {pod_label})", spec.ifname),
            netns: host.netns().to_string(),
            source,
        })?;

    match configure(host, &pod, pod_netns, spec, &host_name, pod_mac).await {
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

async fn configure(
    host: &Netlink,
    pod: &Netlink,
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

    let host_link = existing_link(host, host_name).await?;
    let host_index = host_link.header.index;
    let pod_link = existing_link(pod, &ifname).await?;
    let pod_index = pod_link.header.index;

    pod.handle()
        .address()
        .add(
            pod_index,
            IpAddr::V4(spec.address.addr()),
            spec.address.prefix_len(),
        )
        .execute()
        .await
        .map_err(nl_err(Step::AddAddress))?;
    set_link_up(pod, pod_index, &ifname).await?;
    set_link_up(host, host_index, host_name).await?;

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
        let name = ifname.clone();
        run_in_netns(pod_netns, move || ethtool::set_tx_checksum(&name, false))
            .await?
            .map_err(io_err(Step::DisableTxChecksum))?;
    }
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

fn not_found(netlink: &Netlink, name: &str) -> InterfaceError {
    InterfaceError::NotFound {
        ifname: name.to_string(),
        netns: netlink.netns().to_string(),
    }
}

/// Link by name in the connection's namespace; [`InterfaceError::NotFound`]
/// if there is none.
async fn existing_link(netlink: &Netlink, name: &str) -> Result<LinkMessage, InterfaceError> {
    find_link(netlink, name)
        .await?
        .ok_or_else(|| not_found(netlink, name))
}

/// Sets the link `index` (named `name`) administratively up.
async fn set_link_up(netlink: &Netlink, index: u32, name: &str) -> Result<(), InterfaceError> {
    netlink
        .handle()
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|source| InterfaceError::Netlink {
            step: Step::SetUp,
            ifname: name.to_string(),
            netns: netlink.netns().to_string(),
            source,
        })
}

async fn delete_link(netlink: &Netlink, name: &str, step: Step) -> Result<bool, InterfaceError> {
    let Some(link) = find_link(netlink, name).await? else {
        return Ok(false);
    };
    match netlink
        .handle()
        .link()
        .del(link.header.index)
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        // Gone between lookup and delete (e.g. the pod netns was destroyed).
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(source) => Err(InterfaceError::Netlink {
            step,
            ifname: name.to_string(),
            netns: netlink.netns().to_string(),
            source,
        }),
    }
}

/// Deletes a pod interface by its host end (which removes the peer in the
/// pod namespace too). Idempotent: returns `Ok(false)` if it was already
/// gone, including when the pod namespace no longer exists. Needs no access
/// to the pod namespace.
pub async fn delete_pod_interface(
    host: &Netlink,
    container_id: &str,
    ifname: &str,
) -> Result<bool, InterfaceError> {
    validate_ifname(ifname)?;
    let name = host_ifname(container_id, ifname);
    let existed = delete_link(host, &name, Step::DeleteHostEnd).await?;
    tracing::debug!(host_ifname = %name, existed, "pod interface deleted");
    Ok(existed)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("sy") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("0123456789abcdef", "net1"));
        assert_ne!(a, host_ifname("0123456789abcdee", "eth0"));
        // Golden value: the name must not change between releases, or the
        // agent could not find the ports it made before an upgrade.
        assert_eq!(host_ifname("c1", "eth0"), "syd72e032fedd");
    }

    #[test]
    fn ifname_validation() {
        for good in ["eth0", "net1", "a", "fifteen-chars-x"] {
            validate_ifname(good).unwrap();
        }
        for bad in ["", "sixteen-chars-xx", ".", "..", "a/b", "a b", "a:b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn derived_pod_mac_is_stable() {
        let spec = PodInterfaceSpec {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            address: "10.0.0.2/24".parse().unwrap(),
            gateway: None,
            mtu: 1450,
            mac: None,
            disable_tx_checksum: false,
            gratuitous_arp: false,
        };
        assert_eq!(spec.pod_mac(), MacAddr::derived_local(b"abc/eth0"));
    }
}
