//! The VIP on `lo` and the ARP sysctls, in a network namespace of the test's own (a thread
//! that unshares its network namespace; `ip` and `/proc/sys/net` follow the thread). Needs
//! root; skipped with a message otherwise.

use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_cpvip::vip;

#[test]
fn vip_goes_on_lo_as_a_host_route_and_arp_is_never_answered_for_it() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (a network namespace of its own)");
        return;
    }
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
        // A fresh namespace: the defaults.
        assert_eq!(read("/proc/sys/net/ipv4/conf/all/arp_ignore"), "0");
        vip::set_arp_sysctls().unwrap();
        for iface in ["all", "lo"] {
            assert_eq!(
                read(&format!("/proc/sys/net/ipv4/conf/{iface}/arp_ignore")),
                "1"
            );
            assert_eq!(
                read(&format!("/proc/sys/net/ipv4/conf/{iface}/arp_announce")),
                "2"
            );
        }
        // A /28 in the spec still goes on lo as a /32: the rest of the prefix is not local.
        let net: IpNet = "198.51.100.16/28".parse().unwrap();
        assert!(!vip::present(&net).unwrap());
        vip::add(&net).unwrap();
        vip::add(&net).unwrap(); // idempotent
        assert!(vip::present(&net).unwrap());
        let out = std::process::Command::new("ip")
            .args(["-o", "addr", "show", "dev", "lo"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("198.51.100.16/32"), "{text}");
        // The kernel treats the VIP as local; its neighbours are not.
        let route = std::process::Command::new("ip")
            .args(["route", "get", "198.51.100.17"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&route.stdout).starts_with("local"));
        let ip: IpAddr = "198.51.100.16".parse().unwrap();
        let local = std::process::Command::new("ip")
            .args(["route", "show", "table", "local", &ip.to_string()])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&local.stdout).contains("local 198.51.100.16"));
        vip::remove(&net).unwrap();
        vip::remove(&net).unwrap(); // idempotent
        assert!(!vip::present(&net).unwrap());
    })
    .join()
    .unwrap();
}
