//! The CNI environment (`CNI_*` variables) and its validation per verb.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};

/// The value of `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove the container from the network (idempotent).
    Del,
    /// Check the attachment is as expected (0.4.0+).
    Check,
    /// Is the plugin ready for ADD (1.1.0+)?
    Status,
    /// Remove resources of attachments not in `cni.dev/valid-attachments` (1.1.0+).
    Gc,
    /// Report supported versions (answered by the binary itself).
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND` (exact upper-case names, as the spec writes them).
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironmentVariables,
                    format!("unknown CNI_COMMAND: {other:?}"),
                    "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION",
                ));
            }
        })
    }

    /// The name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The variables the spec requires for this command.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }
}

/// The attachment environment of one invocation, validated for its verb.
///
/// For ADD and CHECK `container_id`, `netns` and `ifname` are always set; for
/// DEL `container_id` and `ifname` are (a DEL may come without netns); for
/// STATUS and GC they are `None` (the runtime sets them empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniEnv {
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: interface to create in the pod.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads and validates the environment for `command` through `lookup`
    /// (`std::env::var` in the binary). Empty values count as unset, as in libcni.
    pub fn from_lookup(
        command: Command,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<CniEnv, CniError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let missing: Vec<&str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                format!("required env variables [{}] missing", missing.join(",")),
                format!(
                    "CNI {} needs {}",
                    command.as_str(),
                    command.required_env().join(", ")
                ),
            ));
        }
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = CniEnv {
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            ..CniEnv::default()
        };
        if attachment {
            let container_id = get("CNI_CONTAINERID").unwrap_or_default();
            validate_container_id(&container_id)?;
            let ifname = get("CNI_IFNAME").unwrap_or_default();
            validate_ifname(&ifname)?;
            env.container_id = Some(container_id);
            env.ifname = Some(ifname);
            env.netns = get("CNI_NETNS").map(PathBuf::from);
            env.args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        }
        Ok(env)
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphanumeric() || (!first && matches!(c, '_' | '.' | '-'))
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| is_name_char(c, true)) && chars.all(|c| is_name_char(c, false))
}

/// `CNI_CONTAINERID`: non-empty, alphanumeric first, then alphanumerics, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if valid_name(id) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            "invalid characters in CNI_CONTAINERID",
            format!(
                "CNI_CONTAINERID {id:?} must start with a letter or digit followed by letters, digits, '_', '.' or '-'"
            ),
        ))
    }
}

/// A network `name`: same character rules as a container id.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "invalid network name",
            format!(
                "name {name:?} must start with a letter or digit followed by letters, digits, '_', '.' or '-'"
            ),
        ))
    }
}

/// `CNI_IFNAME`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace
/// (the kernel's rules, as libcni checks them).
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            format!("invalid CNI_IFNAME: {p}"),
            format!("CNI_IFNAME {name:?} must be a valid Linux interface name"),
        )),
    }
}

/// `CNI_ARGS`, `K=V;K=V`, with the keys Kubernetes runtimes pass.
///
/// As libcni's `LoadArgs`: a key this plugin does not know is an error unless
/// `IgnoreUnknown` is `1`/`true` (kubelet and containerd always set it). Unknown
/// keys are kept in `other` either way.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniArgs {
    /// `IgnoreUnknown`.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`.
    pub k8s_pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub k8s_pod_name: Option<String>,
    /// `K8S_POD_UID`.
    pub k8s_pod_uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub k8s_pod_infra_container_id: Option<String>,
    /// Every other key, in order of name.
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses a `CNI_ARGS` value. Empty pairs (`;;`) are skipped.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironmentVariables,
                    "invalid CNI_ARGS",
                    format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
                ));
            };
            let value = value.to_owned();
            match key {
                "IgnoreUnknown" => {
                    args.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => {
                            return Err(CniError::new(
                                ErrorCode::InvalidEnvironmentVariables,
                                "invalid CNI_ARGS",
                                format!("CNI_ARGS IgnoreUnknown={value:?} is not a boolean"),
                            ));
                        }
                    }
                }
                "K8S_POD_NAMESPACE" => args.k8s_pod_namespace = Some(value),
                "K8S_POD_NAME" => args.k8s_pod_name = Some(value),
                "K8S_POD_UID" => args.k8s_pod_uid = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.k8s_pod_infra_container_id = Some(value),
                _ => {
                    args.other.insert(key.to_owned(), value);
                }
            }
        }
        if !args.ignore_unknown
            && let Some(key) = args.other.keys().next()
        {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                format!("unknown CNI_ARGS key {key:?}"),
                "switchyard knows K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID; add IgnoreUnknown=1 to pass others",
            ));
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn parses_kubernetes_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;X=y",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.k8s_pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.k8s_pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("u-1"));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.other.get("X").map(String::as_str), Some("y"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("X=y").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("IgnoreUnknown=maybe").unwrap_err().code, 4);
    }

    #[test]
    fn validates_names() {
        for ok in ["a", "0abc", "a_b.c-d", "f9a1c1"] {
            validate_container_id(ok).unwrap();
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "a:b", "ä"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code, 4, "{bad:?}");
        }
        for ok in ["eth0", "a", "123456789012345", "net-1.2"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad:?}");
        }
        assert_eq!(validate_network_name("bad name").unwrap_err().code, 7);
    }

    #[test]
    fn requires_env_per_verb() {
        let e = CniEnv::from_lookup(Command::Add, lookup(&[("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_CONTAINERID,CNI_NETNS"), "{}", e.msg);
        let env = CniEnv::from_lookup(
            Command::Del,
            lookup(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", ""),
            ]),
        )
        .unwrap();
        assert_eq!(env.netns, None);
        let env = CniEnv::from_lookup(
            Command::Status,
            lookup(&[
                ("CNI_CONTAINERID", ""),
                ("CNI_IFNAME", ""),
                ("CNI_PATH", "/a:/b"),
            ]),
        )
        .unwrap();
        assert_eq!(env.container_id, None);
        assert_eq!(env.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            CniEnv::from_lookup(Command::Gc, lookup(&[]))
                .unwrap_err()
                .code,
            4
        );
    }
}
