//! Gratuitous ARP from a pod interface, so neighbours (the bridge, the
//! gateway, other pods) learn a reused IP's new MAC at once.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::mac::MacAddr;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
/// Length of a padded Ethernet frame (without FCS).
pub const FRAME_LEN: usize = 60;

/// A gratuitous ARP request announcing `ip` at `mac`: broadcast Ethernet,
/// sender and target protocol address both `ip`, target hardware address
/// zero, padded to the 60-byte Ethernet minimum.
pub fn gratuitous_arp_frame(mac: MacAddr, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    frame[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes()); // protocol: IPv4
    frame[18] = 6; // hardware address length
    frame[19] = 4; // protocol address length
    frame[20..22].copy_from_slice(&1u16.to_be_bytes()); // operation: request
    frame[22..28].copy_from_slice(&mac.0); // sender hardware address
    frame[28..32].copy_from_slice(&ip.octets()); // sender protocol address
    // 32..38: target hardware address, zero
    frame[38..42].copy_from_slice(&ip.octets()); // target protocol address
    frame
}

/// Sends a gratuitous ARP out of interface `ifindex` of the calling
/// thread's network namespace (call through [`super::run_in_netns`]).
pub fn send_gratuitous_arp(ifindex: u32, mac: MacAddr, ip: Ipv4Addr) -> io::Result<()> {
    let frame = gratuitous_arp_frame(mac, ip);
    // SAFETY: plain socket(2) call with constant arguments; the result is
    // checked before use.
    #[allow(unsafe_code)]
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created, valid descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: sockaddr_ll is a plain C struct for which all-zero is valid.
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex too large"))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&MacAddr::BROADCAST.0);

    // SAFETY: `frame` and `addr` are live for the call; the lengths passed
    // are their exact sizes; `sock` is an open AF_PACKET socket.
    #[allow(unsafe_code)]
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of gratuitous ARP",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frame_is_byte_exact() {
        let frame = gratuitous_arp_frame(
            MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]),
            Ipv4Addr::new(10, 244, 1, 5),
        );
        #[rustfmt::skip]
        let golden: [u8; 60] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, // source
            0x08, 0x06,                         // ethertype ARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet/IPv4, lengths 6/4
            0x00, 0x01,                         // request
            0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05, // sender MAC
            10, 244, 1, 5,                      // sender IP
            0, 0, 0, 0, 0, 0,                   // target MAC
            10, 244, 1, 5,                      // target IP
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
        ];
        assert_eq!(frame, golden);
    }
}
