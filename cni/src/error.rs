//! CNI errors: the spec's well-known codes and Switchyard's plugin codes (100+).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::version::SpecVersion;

/// Every error code the `switchyard` plugin can print.
///
/// Codes below 100 are the CNI specification's well-known codes; 100 and up are
/// Switchyard's own, returned by the agent (documented in `docs/cni.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not supported, or the verb does
    /// not exist in that version (CHECK before 0.4.0, STATUS/GC before 1.1.0).
    IncompatibleCniVersion = 1,
    /// 2: a configuration field has a value the plugin does not support; the
    /// message names the key and value.
    UnsupportedField = 2,
    /// 3: the container is unknown or does not exist; the runtime needs no cleanup.
    UnknownContainer = 3,
    /// 4: a required `CNI_*` environment variable is missing or invalid; the
    /// message names the variables.
    InvalidEnvironmentVariables = 4,
    /// 5: I/O failure, e.g. reading stdin.
    IoFailure = 5,
    /// 6: stdin is not valid JSON, or a value cannot be decoded.
    DecodingFailure = 6,
    /// 7: the network configuration is invalid (missing `name`, a field of the
    /// wrong type, a missing `prevResult` for CHECK, ...).
    InvalidNetworkConfig = 7,
    /// 11: transient condition; the runtime should retry later. Returned when the
    /// agent socket does not exist or refuses connections, when the agent is not
    /// ready, or when it does not answer within `timeoutSeconds`.
    TryAgainLater = 11,
    /// 50 (STATUS): the plugin cannot service ADD requests.
    PluginNotAvailable = 50,
    /// 51 (STATUS): the plugin cannot service ADD requests and existing pods may
    /// have limited connectivity.
    LimitedConnectivity = 51,
    /// 100: the pod's network request is invalid: a bad VLAN (outside 1..4094),
    /// unknown segment, malformed annotation, address outside the pool.
    InvalidPodNetworkRequest = 100,
    /// 101: no free address left in the segment's IP pool.
    IpPoolExhausted = 101,
    /// 102: an Open vSwitch operation (OVSDB transaction, OpenFlow) failed.
    OvsFailure = 102,
    /// 103: a network namespace, veth, address or route operation failed, or
    /// the interface `CNI_IFNAME` already exists in the container.
    InterfaceFailure = 103,
    /// 104: the Kubernetes API server could not be reached or refused a read
    /// needed for the request (pod, namespace, node).
    ApiServerFailure = 104,
    /// 105: CHECK found the attachment not as it should be.
    CheckFailed = 105,
    /// 106: the `switchyard` binary and the agent speak different protocol
    /// versions; install the binary that ships with the running agent.
    ProtocolMismatch = 106,
    /// 107: the agent sent something that is not a valid protocol reply.
    InvalidAgentReply = 107,
    /// 199: unexpected failure inside the agent (a bug); see the agent's log.
    AgentInternal = 199,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::IncompatibleCniVersion,
        ErrorCode::UnsupportedField,
        ErrorCode::UnknownContainer,
        ErrorCode::InvalidEnvironmentVariables,
        ErrorCode::IoFailure,
        ErrorCode::DecodingFailure,
        ErrorCode::InvalidNetworkConfig,
        ErrorCode::TryAgainLater,
        ErrorCode::PluginNotAvailable,
        ErrorCode::LimitedConnectivity,
        ErrorCode::InvalidPodNetworkRequest,
        ErrorCode::IpPoolExhausted,
        ErrorCode::OvsFailure,
        ErrorCode::InterfaceFailure,
        ErrorCode::ApiServerFailure,
        ErrorCode::CheckFailed,
        ErrorCode::ProtocolMismatch,
        ErrorCode::InvalidAgentReply,
        ErrorCode::AgentInternal,
    ];

    /// The numeric code printed in the CNI error.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number, if it is one of the above.
    pub fn from_code(code: u32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// A CNI error: what the plugin prints on stdout (with `cniVersion`) and what the
/// agent returns over the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct CniError {
    /// Numeric code; see [`ErrorCode`]. Kept as a number so codes from a newer
    /// agent survive the trip.
    pub code: u32,
    /// Short, human message.
    pub msg: String,
    /// What happened in detail and what to do about it.
    #[serde(default)]
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl CniError {
    /// A new error with a code, a short message and details.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code: code.code(),
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The well-known or Switchyard code, if the number is one.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    /// The error as printed on stdout for `version` (the same shape in every
    /// version: `cniVersion`, `code`, `msg`, `details`), as compact JSON.
    pub fn to_output(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Output<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let out = Output {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// [`CniError::to_output`] for a known version.
    pub fn to_output_for(&self, version: SpecVersion) -> String {
        self.to_output(version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        let numbers: Vec<u32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            numbers,
            [
                1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103, 104, 105, 106, 107, 199
            ]
        );
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
        }
        assert_eq!(ErrorCode::from_code(8), None);
    }

    #[test]
    fn error_json_is_byte_exact() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent not reachable", "start it");
        assert_eq!(
            e.to_output("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"agent not reachable","details":"start it"}"#
        );
        let e = CniError::new(ErrorCode::IoFailure, "x", "");
        assert_eq!(
            e.to_output_for(SpecVersion::V0_4_0),
            r#"{"cniVersion":"0.4.0","code":5,"msg":"x"}"#
        );
    }
}
