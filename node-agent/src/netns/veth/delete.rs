//! Deleting a pod interface by its host end.

use super::link::delete_link;
use super::{InterfaceError, Step, host_ifname, is_host_ifname, validate_ifname};
use crate::netns::Netlink;

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

/// Deletes a host end the agent named (and with it the pod end) by its name; `Ok(false)` if it
/// was gone. A name not of the agent's form is refused, so nothing else is ever deleted.
pub async fn delete_host_end(host: &Netlink, name: &str) -> Result<bool, InterfaceError> {
    if !is_host_ifname(name) {
        return Err(InterfaceError::InvalidName {
            name: name.to_string(),
            reason: "it is not a host end the agent names",
        });
    }
    delete_link(host, name, Step::DeleteHostEnd).await
}
