//! The network configuration the runtime passes on stdin, parsed and validated.
//!
//! `{"cniVersion":"1.0.0","name":"switchyard","type":"switchyard"}` is a
//! complete configuration. Optional keys: `agentSocket`, `timeoutSeconds`,
//! `logFile`, `logLevel`, `mtu`, `dns`; protocol keys: `capabilities`,
//! `runtimeConfig`, `args`, `prevResult`, `cni.dev/valid-attachments`.
//! Unknown keys are ignored; a known key of the wrong type is error 7.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, ErrorCode};
use crate::result::{CniResult, Dns};
use crate::version::SpecVersion;

/// Where the agent listens unless `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/switchyard/cni.sock";
/// How long the binary waits for the agent unless `timeoutSeconds` says
/// otherwise: below kubelet's 2-minute sandbox timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 90;
/// The runtimeConfig key containerd and CRI-O use for the pod's annotations.
pub const POD_ANNOTATIONS_KEY: &str = "io.kubernetes.cri.pod-annotations";

/// How much the binary logs to `logFile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings (the default).
    #[default]
    Warn,
    /// Each request and its outcome.
    Info,
    /// Request details.
    Debug,
    /// Everything.
    Trace,
}

/// One attachment the runtime still considers valid (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    /// `CNI_CONTAINERID` of the attachment's ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment's ADD.
    pub ifname: String,
}

/// `runtimeConfig`: capability arguments from the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `io.kubernetes.cri.pod-annotations`: the pod's annotations.
    #[serde(rename = "io.kubernetes.cri.pod-annotations", default)]
    pub pod_annotations: BTreeMap<String, String>,
    /// Every other capability argument (`portMappings`, `bandwidth`, `mac`, ...), as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The parsed network configuration of one invocation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// `cniVersion`: the version results and errors are printed in.
    pub cni_version: SpecVersion,
    /// `name` of the network.
    pub name: String,
    /// `type` (the binary's name, normally `switchyard`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// `agentSocket`: the agent's Unix socket.
    pub agent_socket: PathBuf,
    /// `timeoutSeconds`: deadline for the agent's answer.
    pub timeout_seconds: u64,
    /// `logFile`: where the binary logs; none means stderr.
    pub log_file: Option<PathBuf>,
    /// `logLevel`.
    pub log_level: LogLevel,
    /// `logFileMaxBytes`: the size past which `logFile` is rotated to
    /// `<logFile>.1` (0: never); unset, 5 MiB. Read by the binary only (not
    /// sent to the agent).
    #[serde(skip)]
    pub log_file_max_bytes: Option<u64>,
    /// `mtu` for the pod interface, if the administrator sets one.
    pub mtu: Option<u32>,
    /// `dns` (well-known key): DNS settings to report in the result.
    pub dns: Option<Dns>,
    /// `capabilities` the configuration declares.
    pub capabilities: BTreeMap<String, bool>,
    /// `runtimeConfig`.
    pub runtime_config: RuntimeConfig,
    /// `args` (convention: `{"cni": {...}}`), as given.
    pub args: Option<Value>,
    /// `prevResult`, converted to the 1.1.0 shape.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC); libcni also writes it as `cni.dev/attachments`.
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

impl NetworkConfig {
    /// The deadline for the agent's answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
}

/// The `cniVersion` string of a configuration, if it has one: used to print an
/// error in the caller's version even when the rest of the input is bad.
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<V>(stdin)
        .ok()
        .map(|v| v.cni_version)
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg, details)
}

/// Reads an optional field; `null` counts as absent; a wrong type is error 7
/// naming the key.
fn field<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<Option<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            invalid(
                format!("invalid value for {key:?}"),
                format!("network configuration key {key:?}: {e}"),
            )
        }),
    }
}

/// Parses and validates stdin as a network configuration.
///
/// Errors: 6 if stdin is not a JSON object; 1 if `cniVersion` is missing or
/// not supported; 7 for a missing or malformed `name`/`type`, a wrong-typed
/// known key, an out-of-range `mtu`/`timeoutSeconds`, or a `prevResult` that is
/// not a valid result; 2 for an `ipam` section (the agent does IPAM).
pub fn parse_config(stdin: &[u8]) -> Result<NetworkConfig, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            "network configuration is not valid JSON",
            format!("error decoding stdin: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(CniError::new(
            ErrorCode::DecodingFailure,
            "network configuration is not a JSON object",
            "stdin must hold one JSON object",
        ));
    };

    let cni_version = match obj.get("cniVersion") {
        None | Some(Value::Null) => {
            return Err(CniError::new(
                ErrorCode::IncompatibleCniVersion,
                "missing cniVersion",
                "a configuration without cniVersion means 0.1.0, which switchyard does not support; use 1.0.0 or 1.1.0",
            ));
        }
        Some(Value::String(s)) => s.parse::<SpecVersion>().map_err(|e| {
            CniError::new(
                ErrorCode::IncompatibleCniVersion,
                "incompatible CNI version",
                e.to_string(),
            )
        })?,
        Some(other) => {
            return Err(invalid(
                "invalid value for \"cniVersion\"",
                format!("cniVersion must be a string, got {other}"),
            ));
        }
    };

    if let Some(ipam) = obj.get("ipam") {
        return Err(CniError::new(
            ErrorCode::UnsupportedField,
            format!("unsupported field \"ipam\": {ipam}"),
            "switchyard-agent allocates addresses itself (segment pools); remove the ipam section from the network configuration",
        ));
    }
    let name: String = field(&obj, "name")?
        .ok_or_else(|| invalid("missing network name", "the configuration needs \"name\""))?;
    crate::env::validate_network_name(&name)?;
    let plugin_type: String = field(&obj, "type")?.ok_or_else(|| {
        invalid(
            "missing plugin type",
            "the configuration needs \"type\": \"switchyard\"",
        )
    })?;

    let timeout_seconds = field::<u64>(&obj, "timeoutSeconds")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=3600).contains(&timeout_seconds) {
        return Err(invalid(
            "invalid value for \"timeoutSeconds\"",
            format!("timeoutSeconds must be between 1 and 3600, got {timeout_seconds}"),
        ));
    }
    let mtu = field::<u32>(&obj, "mtu")?;
    if let Some(m) = mtu
        && !(68..=65535).contains(&m)
    {
        return Err(invalid(
            "invalid value for \"mtu\"",
            format!("mtu must be between 68 and 65535, got {m}"),
        ));
    }

    let args = field::<Map<String, Value>>(&obj, "args")?.map(Value::Object);
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(CniResult::from_value(v).map_err(|e| {
            invalid(
                "invalid prevResult",
                format!("prevResult is not a valid CNI result: {e}"),
            )
        })?),
    };
    let valid_attachments = match field::<Vec<GcAttachment>>(&obj, "cni.dev/valid-attachments")? {
        Some(a) => Some(a),
        None => field(&obj, "cni.dev/attachments")?,
    };

    Ok(NetworkConfig {
        cni_version,
        name,
        plugin_type,
        agent_socket: field(&obj, "agentSocket")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
        timeout_seconds,
        log_file: field::<PathBuf>(&obj, "logFile")?.filter(|p| !p.as_os_str().is_empty()),
        log_level: field(&obj, "logLevel")?.unwrap_or_default(),
        log_file_max_bytes: field(&obj, "logFileMaxBytes")?,
        mtu,
        dns: field(&obj, "dns")?,
        capabilities: field(&obj, "capabilities")?.unwrap_or_default(),
        runtime_config: field(&obj, "runtimeConfig")?.unwrap_or_default(),
        args,
        prev_result,
        valid_attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_config(br#"{"cniVersion":"1.0.0","name":"switchyard","type":"switchyard"}"#)
            .unwrap();
        assert_eq!(c.cni_version, SpecVersion::V1_0_0);
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.timeout_seconds, 90);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.prev_result, None);
    }

    #[test]
    fn full_config() {
        let c = parse_config(
            br#"{"cniVersion":"1.1.0","name":"sy","type":"switchyard","agentSocket":"/tmp/a.sock",
                "timeoutSeconds":5,"logFile":"/tmp/l","logLevel":"debug","mtu":1450,"unknownKey":{"x":1},
                "dns":{"nameservers":["10.96.0.10"]},"capabilities":{"io.kubernetes.cri.pod-annotations":true},
                "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"switchyard.io/vlan":"100"},"portMappings":[]},
                "args":{"cni":{"ips":["10.0.0.5"]}},
                "prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}],"ips":[{"interface":0,"address":"10.0.0.5/24"}]},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.timeout(), Duration::from_secs(5));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(
            c.runtime_config
                .pod_annotations
                .get("switchyard.io/vlan")
                .map(String::as_str),
            Some("100")
        );
        assert!(c.runtime_config.other.contains_key("portMappings"));
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
        assert_eq!(
            c.valid_attachments,
            Some(vec![GcAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn error_codes() {
        let code = |s: &str| parse_config(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{"), 6);
        assert_eq!(code("[]"), 6);
        assert_eq!(code(r#"{"name":"a","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"a","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"a","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":1,"name":"a","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a b","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a"}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"a","type":"t","mtu":"1500"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"a","type":"t","mtu":10}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"a","type":"t","timeoutSeconds":0}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"a","type":"t","logLevel":"loud"}"#),
            7
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","runtimeConfig":{"io.kubernetes.cri.pod-annotations":[1]}}"#
            ),
            7
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"a","type":"t","prevResult":{"ips":[{"address":"x"}]}}"#
            ),
            7
        );
        let e = parse_config(br#"{"cniVersion":"1.0.0","name":"a","type":"t","agentSocket":5}"#)
            .unwrap_err();
        assert!(e.msg.contains("agentSocket"), "{e}");
    }

    #[test]
    fn requested_version_is_best_effort() {
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0","x":"#), None);
        assert_eq!(
            requested_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
    }
}
