//! Link lookups, link up and link deletion by name, shared by creating,
//! deleting and inspecting a pod interface.

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::LinkUnspec;

use super::error::{InterfaceError, Step, errno};
use crate::netns::Netlink;

/// Link by name in the connection's namespace; `None` if there is none.
pub(super) async fn find_link(
    netlink: &Netlink,
    name: &str,
) -> Result<Option<LinkMessage>, InterfaceError> {
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

pub(super) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub(super) fn not_found(netlink: &Netlink, name: &str) -> InterfaceError {
    InterfaceError::NotFound {
        ifname: name.to_string(),
        netns: netlink.netns().to_string(),
    }
}

/// Link by name in the connection's namespace; [`InterfaceError::NotFound`]
/// if there is none.
pub(super) async fn existing_link(
    netlink: &Netlink,
    name: &str,
) -> Result<LinkMessage, InterfaceError> {
    find_link(netlink, name)
        .await?
        .ok_or_else(|| not_found(netlink, name))
}

/// Sets the link `index` (named `name`) administratively up.
pub(super) async fn set_link_up(
    netlink: &Netlink,
    index: u32,
    name: &str,
) -> Result<(), InterfaceError> {
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

pub(super) async fn delete_link(
    netlink: &Netlink,
    name: &str,
    step: Step,
) -> Result<bool, InterfaceError> {
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
