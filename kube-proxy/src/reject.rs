//! Rejecting connections to Services without endpoints: the frontend sends
//! the packet to the proxy (controller action with [`REJECT_USERDATA`]), and
//! the proxy answers with an ICMP port unreachable from the Service address,
//! sent straight back out of the port the packet came in on. The client's
//! kernel turns it into "connection refused" (TCP) or `ECONNREFUSED` on the
//! next receive (UDP) at once, as with kube-proxy's `REJECT` rules.
//!
//! [`REJECT_USERDATA`]: crate::flows::REJECT_USERDATA

use std::net::Ipv4Addr;

/// Ethernet header length.
const ETH_LEN: usize = 14;
use switchyard_ovs::openflow::ETH_TYPE_IP;
/// IP protocol number of ICMP.
const IPPROTO_ICMP: u8 = 1;
/// ICMP destination unreachable.
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP code "port unreachable".
const ICMP_PORT_UNREACH: u8 = 3;
/// Bytes of the offending datagram quoted after its IP header (RFC 792).
const QUOTED_PAYLOAD: usize = 8;

/// Why a packet cannot be answered with a reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectError {
    #[error("packet too short ({0} bytes)")]
    Truncated(usize),
    #[error("not an IPv4 packet (ethertype {0:#06x})")]
    NotIpv4(u16),
    #[error("bad IPv4 header")]
    BadIpHeader,
    #[error("will not answer an ICMP error or a fragment")]
    NotAnswerable,
}

/// The ICMP port unreachable answering `packet` (an Ethernet frame with an
/// IPv4 header): Ethernet and IP addresses swapped, TTL 64, the offending
/// IP header plus 8 bytes of its payload quoted.
pub fn icmp_port_unreachable(packet: &[u8]) -> Result<Vec<u8>, RejectError> {
    if packet.len() < ETH_LEN + 20 {
        return Err(RejectError::Truncated(packet.len()));
    }
    let ethertype = u16::from_be_bytes([packet[12], packet[13]]);
    if ethertype != ETH_TYPE_IP {
        return Err(RejectError::NotIpv4(ethertype));
    }
    let ip = &packet[ETH_LEN..];
    let version = ip[0] >> 4;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if version != 4 || header_len < 20 || ip.len() < header_len {
        return Err(RejectError::BadIpHeader);
    }
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total_len < header_len {
        return Err(RejectError::BadIpHeader);
    }
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    let protocol = ip[9];
    if fragment_offset != 0 || protocol == IPPROTO_ICMP {
        // Never answer an error with an error (RFC 1122 3.2.2); only the
        // first fragment carries the ports.
        return Err(RejectError::NotAnswerable);
    }
    let src: [u8; 4] = [ip[12], ip[13], ip[14], ip[15]];
    let dst: [u8; 4] = [ip[16], ip[17], ip[18], ip[19]];
    let available = ip.len().min(total_len);
    let quoted = &ip[..available.min(header_len + QUOTED_PAYLOAD)];

    let icmp_len = 8 + quoted.len();
    let ip_len = 20 + icmp_len;
    let mut out = Vec::with_capacity(ETH_LEN + ip_len);
    // Ethernet: back to the sender, from the address it sent to.
    out.extend_from_slice(&packet[6..12]);
    out.extend_from_slice(&packet[0..6]);
    out.extend_from_slice(&ETH_TYPE_IP.to_be_bytes());
    // IPv4 header.
    let ip_start = out.len();
    out.push(0x45);
    out.push(0xc0); // DSCP CS6 (network control), as Linux sends ICMP errors.
    out.extend_from_slice(&u16::try_from(ip_len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, DF
    out.push(64);
    out.push(IPPROTO_ICMP);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    let checksum = internet_checksum(&out[ip_start..]);
    out[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    // ICMP.
    let icmp_start = out.len();
    out.extend_from_slice(&[ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(quoted);
    let checksum = internet_checksum(&out[icmp_start..]);
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&checksum.to_be_bytes());
    Ok(out)
}

/// Source and destination of an IPv4 frame, for logs.
pub fn addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ip = packet.get(ETH_LEN..ETH_LEN + 20)?;
    Some((
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    ))
}

/// RFC 1071 checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP SYN 10.244.0.5:40000 -> 10.96.0.10:80 from 0a:58:0a:f4:00:05 to
    /// the gateway MAC 02:00:00:00:00:01.
    fn syn() -> Vec<u8> {
        let mut p = vec![
            0x02, 0, 0, 0, 0, 0x01, 0x0a, 0x58, 0x0a, 0xf4, 0, 0x05, 0x08, 0x00,
        ];
        let ip = [
            0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 244, 0, 5, 10, 96, 0, 10,
        ];
        let mut ip = ip.to_vec();
        let c = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&ip);
        p.extend_from_slice(&[
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
        ]);
        p
    }

    #[test]
    fn port_unreachable_is_byte_exact() {
        let reply = icmp_port_unreachable(&syn()).unwrap();
        let expected: Vec<u8> = [
            // Ethernet: to the pod, from the gateway MAC.
            &[
                0x0a, 0x58, 0x0a, 0xf4, 0, 0x05, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00,
            ][..],
            // IPv4: 56 bytes, DF, TTL 64, ICMP, VIP -> pod.
            &[
                0x45, 0xc0, 0, 56, 0, 0, 0x40, 0, 64, 1, 0x24, 0xa3, 10, 96, 0, 10, 10, 244, 0, 5,
            ][..],
            // ICMP 3/3, checksum, unused (checksums cross-checked with a Python RFC 1071 sum).
            &[3, 3, 0x60, 0x6b, 0, 0, 0, 0][..],
        ]
        .concat();
        assert_eq!(&reply[..expected.len()], &expected[..]);
        // Quoted: the original IP header and the first 8 bytes of TCP.
        assert_eq!(&reply[expected.len()..], &syn()[14..14 + 28]);
        // Both checksums verify.
        assert_eq!(internet_checksum(&reply[14..34]), 0);
        assert_eq!(internet_checksum(&reply[34..]), 0);
    }

    #[test]
    fn errors_fragments_and_junk_are_not_answered() {
        assert_eq!(
            icmp_port_unreachable(&[0; 10]),
            Err(RejectError::Truncated(10))
        );
        let mut arp = syn();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            icmp_port_unreachable(&arp),
            Err(RejectError::NotIpv4(0x0806))
        );
        let mut icmp = syn();
        icmp[14 + 9] = 1;
        assert_eq!(
            icmp_port_unreachable(&icmp),
            Err(RejectError::NotAnswerable)
        );
        let mut fragment = syn();
        fragment[14 + 7] = 0x10;
        assert_eq!(
            icmp_port_unreachable(&fragment),
            Err(RejectError::NotAnswerable)
        );
        let mut bad = syn();
        bad[14] = 0x43;
        assert_eq!(icmp_port_unreachable(&bad), Err(RejectError::BadIpHeader));
    }
}
