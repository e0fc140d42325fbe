//! Where the ARP answer lives: the node kernel's proxy-ARP table. For each address it owns the
//! agent adds a proxy neighbour entry on the interface holding the node's InternalIP (`ip
//! neigh add proxy ADDR dev IF protocol 0x53`, the agent's tag) and sets that interface's
//! `proxy_delay` to 0; the kernel then answers ARP requests for the address on that
//! interface with the interface's MAC. A gratuitous ARP (a broadcast request from and for the
//! address, [`crate::netns::arp`]) goes out of the same interface when the node takes an
//! address over.
//!
//! The kernel answers only while it would forward the address elsewhere: the proxy routes
//! every LoadBalancer address with a frontend into `sy-gw0`, so a node answers only once its
//! proxy serves the address, and never for an address nothing on the node serves. Only
//! entries with the agent's tag are listed and deleted.
//!
//! Behind [`ArpResponder`] so the announcement loop is unit-tested with a fake.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use futures::future::BoxFuture;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteProtocol;

use crate::mac::MacAddr;
use crate::netns::Netlink;

/// Tag (neighbour `protocol`) of the agent's proxy entries (`ip neigh show proxy` shows
/// `proto 83`); the agent's routes carry the same number.
pub const PROXY_PROTOCOL: u8 = 0x53;

/// Why announcing failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// No interface holds the node's address.
    #[error("no interface holds the node address {0}")]
    NoInterface(Ipv4Addr),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was done.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// A sysctl or raw socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Answers ARP for addresses on one interface and announces them.
pub trait ArpResponder: Send + Sync + fmt::Debug {
    /// The addresses answered for now (tagged entries on the interface).
    fn held(&self) -> BoxFuture<'_, Result<BTreeSet<Ipv4Addr>, AnnounceError>>;
    /// Starts answering for `address`.
    fn claim(&self, address: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>>;
    /// Stops answering for `address`.
    fn release(&self, address: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>>;
    /// Sends one gratuitous ARP for `address`.
    fn gratuitous_arp(&self, address: Ipv4Addr) -> Result<(), AnnounceError>;
}

/// The interface the node's InternalIP is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC.
    pub mac: MacAddr,
}

/// The kernel's proxy-ARP table on one interface.
pub struct KernelResponder {
    netlink: Netlink,
    iface: Interface,
}

impl fmt::Debug for KernelResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelResponder")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

fn netlink_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> AnnounceError {
    let what = what.into();
    move |source| AnnounceError::Netlink { what, source }
}

/// The interface holding `address` in the calling thread's namespace.
pub async fn interface_of(
    netlink: &Netlink,
    address: Ipv4Addr,
) -> Result<Interface, AnnounceError> {
    let mut addrs = netlink.handle().address().get().execute();
    let mut index = None;
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(netlink_err("listing addresses"))?
    {
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address))
        {
            index = Some(msg.header.index);
            break;
        }
    }
    let index = index.ok_or(AnnounceError::NoInterface(address))?;
    let link = netlink
        .handle()
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(netlink_err(format!("reading link {index}")))?
        .ok_or(AnnounceError::NoInterface(address))?;
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mac = crate::netns::link_mac(&link).ok_or(AnnounceError::NoInterface(address))?;
    Ok(Interface { index, name, mac })
}

impl KernelResponder {
    /// Answers on `iface`: sets its `proxy_delay` to 0 (the kernel otherwise delays proxied
    /// answers to broadcast requests by up to 0.8 s).
    pub fn new(netlink: Netlink, iface: Interface) -> Result<KernelResponder, AnnounceError> {
        let path = format!("/proc/sys/net/ipv4/neigh/{}/proxy_delay", iface.name);
        std::fs::write(&path, "0").map_err(|source| AnnounceError::Io {
            what: format!("writing {path}"),
            source,
        })?;
        Ok(KernelResponder { netlink, iface })
    }

    /// The interface.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    fn entry(&self, address: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = self.iface.index;
        m.header.flags = NeighbourFlags::Proxy;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                address,
            )));
        m
    }
}

impl ArpResponder for KernelResponder {
    fn held(&self) -> BoxFuture<'_, Result<BTreeSet<Ipv4Addr>, AnnounceError>> {
        Box::pin(async move {
            let mut dump = self
                .netlink
                .handle()
                .neighbours()
                .get()
                .proxies()
                .set_address_family(AddressFamily::Inet)
                .execute();
            let mut out = BTreeSet::new();
            while let Some(msg) = dump
                .try_next()
                .await
                .map_err(netlink_err("listing proxy neighbours"))?
            {
                let ours = msg.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Protocol(p) if *p == RouteProtocol::from(PROXY_PROTOCOL))
                });
                if !ours || msg.header.ifindex != self.iface.index {
                    continue;
                }
                out.extend(msg.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                }));
            }
            Ok(out)
        })
    }

    fn claim(&self, address: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>> {
        Box::pin(async move {
            let mut req = self
                .netlink
                .handle()
                .neighbours()
                .add(self.iface.index, IpAddr::V4(address))
                .flags(NeighbourFlags::Proxy)
                .state(NeighbourState::Permanent)
                .replace();
            req.message_mut()
                .attributes
                .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                    PROXY_PROTOCOL,
                )));
            req.execute()
                .await
                .map_err(netlink_err(format!("adding the proxy entry {address}")))
        })
    }

    fn release(&self, address: Ipv4Addr) -> BoxFuture<'_, Result<(), AnnounceError>> {
        Box::pin(async move {
            match self
                .netlink
                .handle()
                .neighbours()
                .del(self.entry(address))
                .execute()
                .await
            {
                Ok(()) => Ok(()),
                // Gone already.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
                Err(e) => Err(netlink_err(format!("deleting the proxy entry {address}"))(
                    e,
                )),
            }
        })
    }

    fn gratuitous_arp(&self, address: Ipv4Addr) -> Result<(), AnnounceError> {
        crate::netns::arp::send_gratuitous_arp(self.iface.index, self.iface.mac, address).map_err(
            |source| AnnounceError::Io {
                what: format!("gratuitous ARP for {address} on {}", self.iface.name),
                source,
            },
        )
    }
}
