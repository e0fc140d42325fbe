//! Ethernet MAC addresses as pods and ports use them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: {reason}")]
pub struct MacParseError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True if the group (multicast) bit is clear.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// True if the locally-administered bit is set.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A stable, locally administered unicast address derived from `seed`
    /// (for a pod: container id and interface name). The same seed always
    /// gives the same address, so a retried ADD produces the same MAC.
    pub fn derived_local(seed: &[u8]) -> MacAddr {
        let digest = Sha256::digest(seed);
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&digest[..6]);
        octets[0] = (octets[0] & 0xfc) | 0x02;
        MacAddr(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Parses `aa:bb:cc:dd:ee:ff` (also with `-` separators), case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| MacParseError {
            input: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err("expected six hex octets separated by ':'"));
        }
        let mut octets = [0u8; 6];
        for (slot, part) in octets.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(err("each octet must be exactly two hex digits"));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err("not a hex digit"))?;
        }
        Ok(MacAddr(octets))
    }
}

impl TryFrom<&[u8]> for MacAddr {
    type Error = MacParseError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let octets: [u8; 6] = bytes.try_into().map_err(|_| MacParseError {
            input: format!("{bytes:02x?}"),
            reason: "a MAC address has exactly six octets",
        })?;
        Ok(MacAddr(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let mac: MacAddr = "0A:58:0a:F4:00:05".parse().unwrap();
        assert_eq!(mac.0, [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05]);
        assert_eq!(mac.to_string(), "0a:58:0a:f4:00:05");
        assert_eq!("0a-58-0a-f4-00-05".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0a:58:0a:f4:00",
            "0a:58:0a:f4:00:05:06",
            "0a:58:0a:f4:00:5",
            "zz:58:0a:f4:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn derived_is_stable_local_unicast() {
        let a = MacAddr::derived_local(b"abc/eth0");
        let b = MacAddr::derived_local(b"abc/eth0");
        let c = MacAddr::derived_local(b"abc/eth1");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.is_unicast() && a.is_locally_administered());
    }
}
