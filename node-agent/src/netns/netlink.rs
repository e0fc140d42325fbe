//! An rtnetlink connection bound to one network namespace.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use super::path::{Netns, NetnsError};
use super::thread::run_in_netns;
use crate::mac::MacAddr;

/// An rtnetlink handle whose socket lives in a given namespace, usable from
/// any task of the caller's runtime. Dropping it closes the connection.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
    netns: String,
}

impl Netlink {
    /// A connection in the calling thread's namespace: for the agent, the
    /// node's own namespace. Must be called inside a tokio runtime.
    pub fn current() -> Result<Netlink, NetnsError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetnsError::Io {
                path: "/proc/thread-self/ns/net".into(),
                op: "opening netlink socket",
                source,
            })?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
            netns: "node".to_string(),
        })
    }

    /// A connection inside `netns`: the socket is created on a dedicated
    /// thread that entered the namespace (a netlink socket belongs to the
    /// namespace it was created in), then driven by the caller's runtime.
    pub async fn open_in(netns: &Netns) -> Result<Netlink, NetnsError> {
        let label = netns.to_string();
        let socket = run_in_netns(netns, || Socket::new(NETLINK_ROUTE))
            .await?
            .map_err(|source| NetnsError::Io {
                path: label.clone().into(),
                op: "opening netlink socket",
                source,
            })?;
        Ok(Self::from_socket(socket, label))
    }

    /// [`Netlink::open_in`], plus an `AF_INET` datagram socket of the same
    /// namespace for interface ioctls (ethtool), made on the same trip to
    /// the namespace (one thread instead of two): a socket acts in the
    /// namespace it was created in, from any thread.
    pub async fn open_in_with_ioctl_socket(
        netns: &Netns,
    ) -> Result<(Netlink, OwnedFd), NetnsError> {
        let label = netns.to_string();
        let (socket, ioctl) = run_in_netns(netns, || {
            let socket = Socket::new(NETLINK_ROUTE)?;
            let ioctl = super::ethtool::ioctl_socket()?;
            Ok::<_, std::io::Error>((socket, ioctl))
        })
        .await?
        .map_err(|source| NetnsError::Io {
            path: label.clone().into(),
            op: "opening netlink and ioctl sockets",
            source,
        })?;
        Ok((Self::from_socket(socket, label), ioctl))
    }

    fn from_socket(socket: Socket, label: String) -> Netlink {
        // SAFETY: the descriptor comes from `into_raw_fd` of a netlink socket
        // we own, so TokioSocket takes sole ownership of an open socket; the
        // only callers are the async fns above, so we are inside a tokio
        // runtime, which TokioSocket needs to register the descriptor.
        #[allow(unsafe_code)]
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        Netlink {
            handle,
            connection: tokio::spawn(connection),
            netns: label,
        }
    }

    /// The rtnetlink handle.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Describes the namespace for error messages ("node" or the path).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The link named `name` in this namespace. The kernel answers a name
    /// it does not know with the error ENODEV rather than with `None`.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
        self.handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
    }

    /// The names of every link in this namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, rtnetlink::Error> {
        let links: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .collect())
    }
}

/// The link's MAC address, if it has one.
pub fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => MacAddr::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
