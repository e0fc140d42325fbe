//! One static MAC per segment on this node: an ADD with a static MAC
//! (`switchyard.io/mac`) claims it for its segment before it builds
//! anything, and holds the claim until its attachment is recorded (or it
//! failed). A claim is refused when an attachment of the node on the same
//! segment has that MAC (static or derived) or another ADD in flight has
//! claimed it.
//!
//! Scope: this node. Two pods on different nodes with the same static MAC
//! on one `vlan` segment are not detected: the cluster-wide records of a
//! `vlan` segment (`vlan_pool`) hold addresses, not MACs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::SegmentError;
use crate::attachment::Attachment;
use crate::ipam::AttachmentKey;
use crate::mac::MacAddr;
use crate::state::lock;

/// Static MACs claimed by ADDs in flight, per segment.
#[derive(Debug, Default)]
pub struct MacClaims {
    claims: Mutex<BTreeMap<(String, MacAddr), AttachmentKey>>,
}

/// A claim, released when dropped (after the ADD recorded its attachment
/// or rolled back).
#[derive(Debug)]
pub struct MacClaim<'a> {
    owner: &'a MacClaims,
    slot: (String, MacAddr),
}

impl Drop for MacClaim<'_> {
    fn drop(&mut self) {
        lock(&self.owner.claims).remove(&self.slot);
    }
}

impl MacClaims {
    /// Claims `mac` on `segment` for `key`. `attachments` is the node's
    /// attachment map: it is read while the claims are locked, so an ADD
    /// that records its attachment before dropping its claim is always
    /// seen in one of the two.
    pub fn claim<'a>(
        &'a self,
        segment: &str,
        mac: MacAddr,
        key: &AttachmentKey,
        attachments: &Mutex<BTreeMap<AttachmentKey, Attachment>>,
    ) -> Result<MacClaim<'a>, SegmentError> {
        let slot = (segment.to_string(), mac);
        let mut claims = lock(&self.claims);
        let in_use = |holder: &AttachmentKey| SegmentError::MacInUse {
            mac,
            segment: segment.to_string(),
            holder: holder.to_string(),
        };
        if let Some(holder) = claims.get(&slot).filter(|k| *k != key) {
            return Err(in_use(holder));
        }
        if let Some(holder) = lock(attachments)
            .values()
            .find(|a| a.segment == segment && a.mac == mac && a.key != *key)
        {
            return Err(in_use(&holder.key));
        }
        claims.insert(slot.clone(), key.clone());
        Ok(MacClaim { owner: self, slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(container: &str, segment: &str, mac: MacAddr) -> Attachment {
        Attachment {
            key: AttachmentKey::new(container, "eth0"),
            pod_namespace: "ns".into(),
            pod_name: container.into(),
            pod_uid: String::new(),
            netns: "/run/netns/x".into(),
            address: "10.244.0.5/24".parse().unwrap(),
            gateway: None,
            mac,
            segment: segment.into(),
            vlan: 0,
            mtu: 1450,
            host_ifname: format!("veth{container}"),
            ofport: 5,
        }
    }

    #[test]
    fn a_mac_in_use_on_the_segment_is_refused_elsewhere_it_is_free() {
        let mac: MacAddr = "02:00:00:00:00:09".parse().unwrap();
        let attachments = Mutex::new(BTreeMap::from([(
            AttachmentKey::new("c1", "eth0"),
            attachment("c1", "blue", mac),
        )]));
        let claims = MacClaims::default();
        let e = claims
            .claim("blue", mac, &AttachmentKey::new("c2", "eth0"), &attachments)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod annotation switchyard.io/mac=02:00:00:00:00:09 is refused: another pod of segment \"blue\" on this node uses that MAC (c1/eth0); choose another or remove the annotation"
        );
        // Another segment is another L2 network; the holder itself may
        // claim its own MAC again (a repeated ADD).
        assert!(
            claims
                .claim(
                    "green",
                    mac,
                    &AttachmentKey::new("c2", "eth0"),
                    &attachments
                )
                .is_ok()
        );
        assert!(
            claims
                .claim("blue", mac, &AttachmentKey::new("c1", "eth0"), &attachments)
                .is_ok()
        );
    }

    #[test]
    fn a_claim_in_flight_refuses_a_second_until_dropped() {
        let mac: MacAddr = "02:00:00:00:00:0a".parse().unwrap();
        let attachments = Mutex::new(BTreeMap::new());
        let claims = MacClaims::default();
        let first = claims
            .claim("blue", mac, &AttachmentKey::new("c1", "eth0"), &attachments)
            .unwrap();
        let e = claims
            .claim("blue", mac, &AttachmentKey::new("c2", "eth0"), &attachments)
            .unwrap_err();
        assert!(matches!(e, SegmentError::MacInUse { .. }), "{e}");
        // The first ADD failed and rolled back: its claim is gone.
        drop(first);
        let second = claims
            .claim("blue", mac, &AttachmentKey::new("c2", "eth0"), &attachments)
            .unwrap();
        // It succeeded: its attachment is recorded, then the claim dropped;
        // the attachment keeps refusing others.
        lock(&attachments).insert(
            AttachmentKey::new("c2", "eth0"),
            attachment("c2", "blue", mac),
        );
        drop(second);
        assert!(
            claims
                .claim("blue", mac, &AttachmentKey::new("c3", "eth0"), &attachments)
                .is_err()
        );
    }
}
