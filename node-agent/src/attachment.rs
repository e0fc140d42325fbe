//! One pod interface wired to `br-int`, and how it is recorded in the OVS
//! port's `external_ids` (the agent's only persistent state).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::ipam::AttachmentKey;
use crate::mac::MacAddr;

/// Prefix of every external_ids key the agent writes.
pub const KEY_PREFIX: &str = "switchyard.io/";
/// Marks a port as the agent's: `switchyard.io/owner=switchyard-agent`.
pub const KEY_OWNER: &str = "switchyard.io/owner";
/// Value of [`KEY_OWNER`].
pub const OWNER_VALUE: &str = "switchyard-agent";
/// Pod namespace.
pub const KEY_POD_NAMESPACE: &str = "switchyard.io/pod-namespace";
/// Pod name.
pub const KEY_POD_NAME: &str = "switchyard.io/pod-name";
/// Pod uid (may be empty when the runtime did not pass it).
pub const KEY_POD_UID: &str = "switchyard.io/pod-uid";
/// CNI_CONTAINERID.
pub const KEY_CONTAINER_ID: &str = "switchyard.io/container-id";
/// CNI_IFNAME.
pub const KEY_IFNAME: &str = "switchyard.io/ifname";
/// CNI_NETNS.
pub const KEY_NETNS: &str = "switchyard.io/netns";
/// Pod address with prefix length, e.g. `10.244.1.5/24`.
pub const KEY_IP: &str = "switchyard.io/ip";
/// Pod interface MAC.
pub const KEY_MAC: &str = "switchyard.io/mac";
/// Segment name.
pub const KEY_SEGMENT: &str = "switchyard.io/segment";
/// VLAN (0 = untagged).
pub const KEY_VLAN: &str = "switchyard.io/vlan";
/// Default gateway given to the pod.
pub const KEY_GATEWAY: &str = "switchyard.io/gateway";
/// MTU of the pod interface.
pub const KEY_MTU: &str = "switchyard.io/mtu";

/// Everything the agent knows about one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Container id + interface name.
    pub key: AttachmentKey,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod uid ("" if unknown).
    pub pod_uid: String,
    /// Network namespace path.
    pub netns: PathBuf,
    /// Address and prefix.
    pub address: Ipv4Net,
    /// Pod gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Pod MAC.
    pub mac: MacAddr,
    /// Segment name.
    pub segment: String,
    /// VLAN (0 = untagged).
    pub vlan: u16,
    /// Pod MTU.
    pub mtu: u32,
    /// Host veth name = OVS port name.
    pub host_ifname: String,
    /// OpenFlow port number (0 while unknown).
    pub ofport: u32,
}

impl Attachment {
    /// The external_ids written to the OVS port and interface.
    pub fn external_ids(&self) -> BTreeMap<String, String> {
        let mut ids = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            ids.insert(k.to_string(), v);
        };
        put(KEY_OWNER, OWNER_VALUE.to_string());
        put(KEY_POD_NAMESPACE, self.pod_namespace.clone());
        put(KEY_POD_NAME, self.pod_name.clone());
        put(KEY_POD_UID, self.pod_uid.clone());
        put(KEY_CONTAINER_ID, self.key.container_id.clone());
        put(KEY_IFNAME, self.key.ifname.clone());
        put(KEY_NETNS, self.netns.display().to_string());
        put(KEY_IP, self.address.to_string());
        put(KEY_MAC, self.mac.to_string());
        put(KEY_SEGMENT, self.segment.clone());
        put(KEY_VLAN, self.vlan.to_string());
        if let Some(gw) = self.gateway {
            put(KEY_GATEWAY, gw.to_string());
        }
        put(KEY_MTU, self.mtu.to_string());
        ids
    }

    /// Whether the attachment is no pod's (its runtime named none): kept
    /// while its network namespace exists, never judged against the API.
    pub fn is_standalone(&self) -> bool {
        self.pod_namespace.is_empty()
    }

    /// Rebuilds an attachment from a port's external_ids; `None` (with the
    /// reason) if a required key is missing or malformed.
    pub fn from_external_ids(
        port_name: &str,
        ids: &BTreeMap<String, String>,
        ofport: u32,
    ) -> Result<Attachment, String> {
        let get = |k: &str| {
            ids.get(k)
                .cloned()
                .ok_or_else(|| format!("port {port_name}: external_ids has no {k}"))
        };
        let parse_err = |k: &str, v: &str| format!("port {port_name}: {k}={v:?} is malformed");
        let address_text = get(KEY_IP)?;
        let address: Ipv4Net = address_text
            .parse()
            .map_err(|_| parse_err(KEY_IP, &address_text))?;
        let mac_text = get(KEY_MAC)?;
        let mac: MacAddr = mac_text
            .parse()
            .map_err(|_| parse_err(KEY_MAC, &mac_text))?;
        let vlan_text = get(KEY_VLAN)?;
        let vlan: u16 = vlan_text
            .parse()
            .map_err(|_| parse_err(KEY_VLAN, &vlan_text))?;
        let gateway = match ids.get(KEY_GATEWAY) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| parse_err(KEY_GATEWAY, v))?),
        };
        let mtu = match ids.get(KEY_MTU) {
            None => crate::config::DEFAULT_MTU,
            Some(v) => v.parse().map_err(|_| parse_err(KEY_MTU, v))?,
        };
        Ok(Attachment {
            key: AttachmentKey::new(get(KEY_CONTAINER_ID)?, get(KEY_IFNAME)?),
            pod_namespace: get(KEY_POD_NAMESPACE)?,
            pod_name: get(KEY_POD_NAME)?,
            pod_uid: ids.get(KEY_POD_UID).cloned().unwrap_or_default(),
            netns: PathBuf::from(get(KEY_NETNS)?),
            address,
            gateway,
            mac,
            segment: get(KEY_SEGMENT)?,
            vlan,
            mtu,
            host_ifname: port_name.to_string(),
            ofport,
        })
    }

    /// The pod as the flows see it.
    pub fn pod_port(&self) -> crate::flows::PodPort {
        crate::flows::PodPort {
            ofport: self.ofport,
            mac: self.mac,
            ip: self.address.addr(),
            vlan: self.vlan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_round_trip() {
        let a = Attachment {
            key: AttachmentKey::new("c1", "eth0"),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u-1".into(),
            netns: "/run/netns/p1".into(),
            address: "10.244.0.5/24".parse().unwrap(),
            gateway: Some("10.244.0.1".parse().unwrap()),
            mac: "0a:58:0a:f4:00:05".parse().unwrap(),
            segment: "default".into(),
            vlan: 100,
            mtu: 1450,
            host_ifname: "syd72e032fedd".into(),
            ofport: 9,
        };
        let ids = a.external_ids();
        assert_eq!(ids[KEY_IP], "10.244.0.5/24");
        assert_eq!(ids[KEY_VLAN], "100");
        assert!(ids.keys().all(|k| k.starts_with(KEY_PREFIX)));
        let back = Attachment::from_external_ids("syd72e032fedd", &ids, 9).unwrap();
        assert_eq!(back, a);
        let mut broken = ids.clone();
        broken.insert(KEY_VLAN.into(), "x".into());
        assert!(Attachment::from_external_ids("p", &broken, 9).is_err());
    }
}
