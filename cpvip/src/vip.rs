//! The VIP on the node's `lo`, and the ARP settings that keep the node from answering ARP
//! for it (`arp_ignore=1`: answer only for addresses of the receiving interface;
//! `arp_announce=2`: never use the VIP as an ARP source).
//!
//! Uses `ip` (iproute2) in the daemon's own network namespace (the host's: host networking).

use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;

/// A failed `ip`/sysctl step.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct VipError {
    what: String,
    message: String,
}

fn ip(args: &[&str]) -> Result<String, VipError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| VipError {
            what: format!("ip {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(VipError {
            what: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets `arp_ignore=1` and `arp_announce=2` on `all` and `lo` (IPv4; IPv6 has no ARP).
pub fn set_arp_sysctls() -> Result<(), VipError> {
    for (iface, key, value) in [
        ("all", "arp_ignore", "1"),
        ("all", "arp_announce", "2"),
        ("lo", "arp_ignore", "1"),
        ("lo", "arp_announce", "2"),
    ] {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
        std::fs::write(&path, value).map_err(|e| VipError {
            what: format!("writing {value} to {path}"),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// The host address of `net` as it is put on `lo`: `/32` (`/128`), so that the node never
/// treats the rest of a wider prefix as local.
fn host(net: &IpNet) -> String {
    let addr: IpAddr = net.addr();
    let len = if addr.is_ipv4() { 32 } else { 128 };
    format!("{addr}/{len}")
}

/// Whether `lo` holds the VIP.
pub fn present(net: &IpNet) -> Result<bool, VipError> {
    let out = ip(&["-o", "addr", "show", "dev", "lo"])?;
    let want = host(net);
    Ok(out.split_whitespace().any(|w| w == want))
}

/// Puts the VIP on `lo` (idempotent).
pub fn add(net: &IpNet) -> Result<(), VipError> {
    if present(net)? {
        return Ok(());
    }
    ip(&["addr", "add", &host(net), "dev", "lo"]).map(|_| ())
}

/// Removes the VIP from `lo` (idempotent).
pub fn remove(net: &IpNet) -> Result<(), VipError> {
    if !present(net)? {
        return Ok(());
    }
    ip(&["addr", "del", &host(net), "dev", "lo"]).map(|_| ())
}
