//! Transmit checksum offload through the legacy ethtool ioctl.
//!
//! OVS's userspace datapath does not complete partial checksums, so on a
//! `netdev` bridge the pod end of the veth must compute them itself
//! (`ethtool -K eth0 tx off`). These functions act in the network namespace
//! of the calling thread (call them through [`super::run_in_netns`]), or,
//! those ending in `_on`, in the namespace their socket was created in.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x0000_0016;
const ETHTOOL_STXCSUM: u32 = 0x0000_0017;

/// `struct ethtool_value` from `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on
/// 64-bit Linux: 16 bytes of name, a 24-byte union).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    pad: [u8; 16],
}

fn check_name(ifname: &str) -> io::Result<()> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    Ok(())
}

/// An `AF_INET` datagram socket for the ioctl, in the calling thread's
/// namespace.
pub fn ioctl_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    check_name(ifname)?;
    ethtool_value_on(&ioctl_socket()?, ifname, cmd, data)
}

/// The ioctl on `sock`, which acts in the namespace it was created in.
fn ethtool_value_on(sock: &OwnedFd, ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    check_name(ifname)?;
    let bytes = ifname.as_bytes();
    let mut value = EthtoolValue { cmd, data };
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        pad: [0; 16],
    };
    for (slot, byte) in request.name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a correctly laid out `struct ifreq` whose name is
    // NUL-terminated (checked length < IFNAMSIZ, zero-filled) and whose
    // ifr_data points at `value`, a live `struct ethtool_value`; both outlive
    // the call, and SIOCETHTOOL with GTXCSUM/STXCSUM reads/writes only them.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            SIOCETHTOOL as _,
            &mut request as *mut IfreqData,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns transmit checksum offload of `ifname` on or off.
pub fn set_tx_checksum(ifname: &str, enabled: bool) -> io::Result<()> {
    ethtool_value(ifname, ETHTOOL_STXCSUM, u32::from(enabled)).map(|_| ())
}

/// [`set_tx_checksum`] through `sock`, an [`ioctl_socket`] created in the
/// interface's namespace (usable from any thread, no `setns`).
pub fn set_tx_checksum_on(sock: &OwnedFd, ifname: &str, enabled: bool) -> io::Result<()> {
    ethtool_value_on(sock, ifname, ETHTOOL_STXCSUM, u32::from(enabled)).map(|_| ())
}

/// Whether transmit checksum offload of `ifname` is on.
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    ethtool_value(ifname, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<super::IfreqData>(), 40);
        assert_eq!(std::mem::size_of::<super::EthtoolValue>(), 8);
    }

    #[test]
    fn refuses_bad_names_before_any_syscall() {
        assert!(super::tx_checksum("").is_err());
        assert!(super::tx_checksum("a-name-that-is-too-long").is_err());
    }
}
