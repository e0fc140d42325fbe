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

impl IPPoolSpec {
    /// The pool's addresses (every address of each CIDR, and each range).
    pub fn addresses(&self) -> PoolAddresses {
        let mut out = PoolAddresses::default();
        for cidr in &self.cidrs {
            match cidr.trim().parse::<ipnet::IpNet>() {
                Ok(net) => out.ranges.push(AddressRange {
                    first: net.network(),
                    last: net.broadcast(),
                }),
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
        assert_eq!(a.len(), 6);
        assert_eq!(a.errors.len(), 2);
        let all: Vec<String> = a.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(
            all,
            [
                "192.0.2.0",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3",
                "198.51.100.10",
                "198.51.100.11"
            ]
        );
        assert!(a.contains("198.51.100.11".parse().unwrap()));
        assert!(!a.contains("198.51.100.12".parse().unwrap()));
        assert!(a.ranges[0].overlaps(&AddressRange {
            first: "192.0.2.3".parse().unwrap(),
            last: "192.0.2.9".parse().unwrap()
        }));
    }
}
