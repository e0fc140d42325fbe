//! The addresses of a pool: its CIDRs and ranges as inclusive ranges of integers.

use std::net::IpAddr;

use crate::IPPoolSpec;

/// An invalid CIDR or range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a CIDR.
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    /// Not `first-last` with first <= last of one family.
    #[error("invalid range {0:?} (want FIRST-LAST, same family, FIRST <= LAST)")]
    Range(String),
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressRange {
    /// First address.
    pub first: IpAddr,
    /// Last address.
    pub last: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

impl AddressRange {
    /// Number of addresses.
    pub fn len(&self) -> u128 {
        to_u128(self.last) - to_u128(self.first) + 1
    }

    /// Never empty (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4()
            && (to_u128(self.first)..=to_u128(self.last)).contains(&to_u128(ip))
    }

    /// The addresses in order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.first.is_ipv4();
        (to_u128(self.first)..=to_u128(self.last)).map(move |n| from_u128(v4, n))
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.first.is_ipv4() == other.first.is_ipv4()
            && to_u128(self.first) <= to_u128(other.last)
            && to_u128(other.first) <= to_u128(self.last)
    }
}

/// The valid ranges of a pool and the errors of its invalid entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolAddresses {
    /// Valid ranges, in the order of the spec (CIDRs, then ranges).
    pub ranges: Vec<AddressRange>,
    /// Entries that could not be parsed.
    pub errors: Vec<AddressError>,
}

impl PoolAddresses {
    /// Whether `ip` is one of the pool's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// Number of addresses (saturating).
    pub fn len(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.len()))
    }

    /// Whether the pool has no valid address.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every address, in order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ranges.iter().flat_map(|r| r.iter())
    }
}

/// The addresses a pool takes from a CIDR: IPv4 without the network and broadcast
/// addresses (a host given one of them is unreachable or answers for the whole subnet),
/// except /31 and /32, which have none (RFC 3021); IPv6 without the Subnet-Router anycast
/// address (the all-zero host, RFC 4291, which routers answer), except /127 and /128.
/// Host bits of the CIDR are ignored.
pub fn cidr_range(net: ipnet::IpNet) -> AddressRange {
    let (first, last) = (to_u128(net.network()), to_u128(net.broadcast()));
    let v4 = net.network().is_ipv4();
    let (first, last) = match net {
        ipnet::IpNet::V4(n) if n.prefix_len() <= 30 => (first + 1, last - 1),
        ipnet::IpNet::V6(n) if n.prefix_len() <= 126 => (first + 1, last),
        _ => (first, last),
    };
    AddressRange {
        first: from_u128(v4, first),
        last: from_u128(v4, last),
    }
}

impl IPPoolSpec {
    /// The pool's addresses: each CIDR's host addresses (see [`cidr_range`]) and each
    /// range exactly as written.
    pub fn addresses(&self) -> PoolAddresses {
        let mut out = PoolAddresses::default();
        for cidr in &self.cidrs {
            match cidr.trim().parse::<ipnet::IpNet>() {
                Ok(net) => out.ranges.push(cidr_range(net)),
                Err(_) => out.errors.push(AddressError::Cidr(cidr.clone())),
            }
        }
        for range in &self.ranges {
            let parsed = range.split_once('-').and_then(|(a, b)| {
                let first: IpAddr = a.trim().parse().ok()?;
                let last: IpAddr = b.trim().parse().ok()?;
                (first.is_ipv4() == last.is_ipv4() && to_u128(first) <= to_u128(last))
                    .then_some(AddressRange { first, last })
            });
            match parsed {
                Some(r) => out.ranges.push(r),
                None => out.errors.push(AddressError::Range(range.clone())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_ranges() {
        let spec = IPPoolSpec {
            cidrs: vec!["192.0.2.0/30".into(), "nope".into()],
            ranges: vec![
                "198.51.100.10 - 198.51.100.11".into(),
                "10.0.0.2-10.0.0.1".into(),
            ],
            ..Default::default()
        };
        let a = spec.addresses();
        assert_eq!(a.len(), 4);
        assert_eq!(a.errors.len(), 2);
        let all: Vec<String> = a.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(
            all,
            ["192.0.2.1", "192.0.2.2", "198.51.100.10", "198.51.100.11"]
        );
        assert!(a.contains("198.51.100.11".parse().unwrap()));
        assert!(!a.contains("198.51.100.12".parse().unwrap()));
        assert!(a.ranges[0].overlaps(&AddressRange {
            first: "192.0.2.2".parse().unwrap(),
            last: "192.0.2.9".parse().unwrap()
        }));
        assert!(!a.contains("192.0.2.0".parse().unwrap()));
        assert!(!a.contains("192.0.2.3".parse().unwrap()));
    }

    fn listed(cidr: &str) -> Vec<String> {
        let spec = IPPoolSpec {
            cidrs: vec![cidr.into()],
            ..Default::default()
        };
        spec.addresses().iter().map(|ip| ip.to_string()).collect()
    }

    #[test]
    fn cidrs_skip_network_and_broadcast_but_ranges_are_taken_as_written() {
        assert_eq!(listed("198.18.20.0/29").first().unwrap(), "198.18.20.1");
        assert_eq!(listed("198.18.20.0/29").last().unwrap(), "198.18.20.6");
        assert_eq!(listed("198.18.20.0/29").len(), 6);
        assert_eq!(listed("198.18.20.0/30"), ["198.18.20.1", "198.18.20.2"]);
        assert_eq!(listed("198.18.20.0/31"), ["198.18.20.0", "198.18.20.1"]);
        assert_eq!(listed("198.18.20.7/32"), ["198.18.20.7"]);
        // Host bits are ignored: the CIDR's network.
        assert_eq!(listed("198.18.20.5/30"), ["198.18.20.5", "198.18.20.6"]);
        assert_eq!(
            listed("2001:db8::/126"),
            ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
        );
        assert_eq!(listed("2001:db8::/127"), ["2001:db8::", "2001:db8::1"]);
        let ranges = IPPoolSpec {
            ranges: vec!["198.18.20.0-198.18.20.255".into()],
            ..Default::default()
        }
        .addresses();
        assert_eq!(ranges.len(), 256);
        assert!(ranges.contains("198.18.20.0".parse().unwrap()));
        assert!(ranges.contains("198.18.20.255".parse().unwrap()));
    }
}
