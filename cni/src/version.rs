//! CNI specification versions this plugin speaks, and what each one allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CNI specification version the plugin supports.
///
/// Ordered by release, so `v >= SpecVersion::V0_4_0` reads "v knows CHECK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0: rich result type, chaining.
    V0_3_0,
    /// 0.3.1: typo fixes only.
    V0_3_1,
    /// 0.4.0: CHECK, prevResult on DEL.
    V0_4_0,
    /// 1.0.0: `ips[].version` removed.
    V1_0_0,
    /// 1.1.0: STATUS, GC, new interface and route fields.
    V1_1_0,
}

/// Every version VERSION reports, oldest first.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::V0_3_0,
    SpecVersion::V0_3_1,
    SpecVersion::V0_4_0,
    SpecVersion::V1_0_0,
    SpecVersion::V1_1_0,
];

impl SpecVersion {
    /// The newest version this plugin implements.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// The version as written in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether the CHECK verb exists in this version (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    /// Whether the STATUS and GC verbs exist in this version (1.1.0 and later).
    pub fn has_status_and_gc(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// Whether results use the 0.3.x/0.4.0 layout (`ips[].version`, no 1.1.0
    /// interface fields, `dns` always present).
    pub fn is_legacy_result(self) -> bool {
        self < SpecVersion::V1_0_0
    }
}

impl Default for SpecVersion {
    fn default() -> Self {
        SpecVersion::LATEST
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cniVersion` this plugin does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI version {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
pub struct UnsupportedVersion(pub String);

impl FromStr for SpecVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_owned()))
    }
}

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(v.as_str().parse::<SpecVersion>(), Ok(v));
        }
        assert!("0.2.0".parse::<SpecVersion>().is_err());
        assert!("1.2.0".parse::<SpecVersion>().is_err());
        assert!("".parse::<SpecVersion>().is_err());
        assert!(!SpecVersion::V0_3_1.has_check());
        assert!(SpecVersion::V0_4_0.has_check());
        assert!(!SpecVersion::V1_0_0.has_status_and_gc());
        assert!(SpecVersion::V1_1_0.has_status_and_gc());
    }
}
