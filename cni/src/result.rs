//! The ADD success result (CNI spec section 5) and its conversion between
//! specification versions.
//!
//! [`CniResult`] has the 1.1.0 shape and is what the agent returns. The plugin
//! prints it with [`CniResult::to_output`] in the version the runtime asked for,
//! mirroring libcni's converters:
//!
//! - 1.0.0 and 1.1.0: the same layout (libcni's `types100` serves both).
//! - 0.3.0, 0.3.1, 0.4.0: every `ips[]` entry gains `version` (`"4"`/`"6"`, from
//!   the address family); interfaces lose `mtu`, `socketPath` and `pciID`
//!   (fields 1.1.0 added); routes are printed whole (libcni's route type is
//!   shared between layouts); `dns` is always present, `{}` when empty.
//!
//! [`CniResult::from_value`] reads a result of any supported version (a
//! `prevResult`), ignoring the legacy `version` field.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::version::SpecVersion;

/// A successful ADD: interfaces, addresses, routes and DNS, in the 1.1.0 shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CniResult {
    /// Every interface the attachment created, host side included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned by the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes the attachment created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings for the container.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface created by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (`eth0` in the pod, the veth's name on the host).
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path (`CNI_NETNS`) for interfaces inside the pod; absent on the host.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub sandbox: Option<String>,
    /// Socket path for socket-based interfaces (1.1.0).
    #[serde(
        rename = "socketPath",
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// PCI id of the device (1.1.0).
    #[serde(
        rename = "pciID",
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into [`CniResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
    /// Address with prefix length, `10.1.0.5/16`.
    pub address: IpNet,
    /// Default gateway for this subnet.
    #[serde(
        default,
        deserialize_with = "empty_ip_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<IpAddr>,
}

/// A route created by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop; when absent a gateway from `ips` may be used.
    #[serde(
        default,
        deserialize_with = "empty_ip_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub gw: Option<IpAddr>,
    /// Path MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority, lower wins (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope: 0 global, 253 link, 254 host (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings (result `dns`, and the configuration's well-known `dns` key).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    /// Local domain for short names.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    /// True when no field is set (the result then omits `dns` in 1.x).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

fn empty_ip_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Why a result is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The JSON does not have the shape of a result.
    #[error("result does not decode: {0}")]
    Decode(String),
    /// `ips[i].interface` points past the end of `interfaces`.
    #[error("ips[{ip}].interface is {index} but there are only {count} interfaces")]
    InterfaceIndex {
        /// Position in `ips`.
        ip: usize,
        /// The index given.
        index: u32,
        /// How many interfaces there are.
        count: usize,
    },
    /// A result in the pre-0.3.0 layout (`ip4`/`ip6`), which this plugin does not read.
    #[error("result uses the pre-0.3.0 layout (ip4/ip6), which is not supported")]
    LegacyLayout,
}

impl CniResult {
    /// Reads a result of any supported version (e.g. `prevResult`) into the
    /// 1.1.0 shape. The legacy `ips[].version` and `cniVersion` are ignored.
    pub fn from_value(value: &serde_json::Value) -> Result<CniResult, ResultError> {
        if let Some(obj) = value.as_object()
            && (obj.contains_key("ip4") || obj.contains_key("ip6"))
        {
            return Err(ResultError::LegacyLayout);
        }
        let result =
            CniResult::deserialize(value).map_err(|e| ResultError::Decode(e.to_string()))?;
        result.validate()?;
        Ok(result)
    }

    /// Checks internal consistency: every `ips[].interface` names an interface.
    pub fn validate(&self) -> Result<(), ResultError> {
        for (i, ip) in self.ips.iter().enumerate() {
            if let Some(index) = ip.interface
                && index as usize >= self.interfaces.len()
            {
                return Err(ResultError::InterfaceIndex {
                    ip: i,
                    index,
                    count: self.interfaces.len(),
                });
            }
        }
        Ok(())
    }

    /// The result a chained interface plugin prints: `prev` (the `prevResult`
    /// it was given) with `own` appended. Interface indices in `own.ips` are
    /// shifted past `prev`'s interfaces; `own.dns` fills in what `prev` left empty.
    pub fn appended_to(self, prev: CniResult) -> CniResult {
        let mut out = prev;
        let shift = out.interfaces.len() as u32;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        out.routes.extend(self.routes);
        if out.dns.is_empty() {
            out.dns = self.dns;
        }
        out
    }

    /// The result as printed on stdout for `version`, as JSON text (field
    /// order as libcni prints it).
    pub fn to_output(&self, version: SpecVersion) -> String {
        // Serializing strings, numbers and addresses cannot fail.
        if version.is_legacy_result() {
            serde_json::to_string(&LegacyOutput::new(version, self))
        } else {
            serde_json::to_string(&CurrentOutput {
                cni_version: version,
                result: self,
            })
        }
        .unwrap_or_default()
    }

    /// [`CniResult::to_output`] as a JSON value.
    pub fn to_output_value(&self, version: SpecVersion) -> serde_json::Value {
        serde_json::from_str(&self.to_output(version)).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct CurrentOutput<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: SpecVersion,
    #[serde(flatten)]
    result: &'a CniResult,
}

#[derive(Serialize)]
struct LegacyOutput<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: SpecVersion,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<LegacyInterface<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<LegacyIpConfig<'a>>,
    #[serde(skip_serializing_if = "<[Route]>::is_empty")]
    routes: &'a [Route],
    dns: &'a Dns,
}

#[derive(Serialize)]
struct LegacyInterface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
}

#[derive(Serialize)]
struct LegacyIpConfig<'a> {
    version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<u32>,
    address: &'a IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

impl<'a> LegacyOutput<'a> {
    fn new(version: SpecVersion, r: &'a CniResult) -> Self {
        LegacyOutput {
            cni_version: version,
            interfaces: r
                .interfaces
                .iter()
                .map(|i| LegacyInterface {
                    name: &i.name,
                    mac: i.mac.as_deref(),
                    sandbox: i.sandbox.as_deref(),
                })
                .collect(),
            ips: r
                .ips
                .iter()
                .map(|ip| LegacyIpConfig {
                    version: match ip.address.addr().to_canonical() {
                        IpAddr::V4(_) => "4",
                        IpAddr::V6(_) => "6",
                    },
                    interface: ip.interface,
                    address: &ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: &r.routes,
            dns: &r.dns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vethab12".into(),
                    mac: Some("0a:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/pod".into()),
                    socket_path: Some("/run/x.sock".into()),
                    pci_id: Some("0000:00:1f.6".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(1),
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                mtu: Some(1400),
                advmss: None,
                priority: None,
                table: Some(0),
                scope: None,
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: None,
                search: vec!["svc.cluster.local".into()],
                options: vec![],
            },
        }
    }

    #[test]
    fn golden_1_1_0() {
        assert_eq!(
            sample().to_output(SpecVersion::V1_1_0),
            concat!(
                r#"{"cniVersion":"1.1.0","interfaces":[{"name":"vethab12","mac":"0a:00:00:00:00:01","mtu":1450},"#,
                r#"{"name":"eth0","mac":"0a:00:00:00:00:02","mtu":1450,"sandbox":"/var/run/netns/pod","socketPath":"/run/x.sock","pciID":"0000:00:1f.6"}],"#,
                r#""ips":[{"interface":1,"address":"10.244.1.5/24","gateway":"10.244.1.1"},{"interface":1,"address":"fd00::5/64"}],"#,
                r#""routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1","mtu":1400,"table":0}],"#,
                r#""dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#
            )
        );
    }

    #[test]
    fn golden_1_0_0_keeps_layout() {
        let out = sample().to_output(SpecVersion::V1_0_0);
        assert!(
            out.starts_with(r#"{"cniVersion":"1.0.0","interfaces":"#),
            "{out}"
        );
        assert_eq!(
            out.replace("\"1.0.0\"", "\"1.1.0\""),
            sample().to_output(SpecVersion::V1_1_0)
        );
    }

    #[test]
    fn golden_0_4_0_legacy_layout() {
        assert_eq!(
            sample().to_output(SpecVersion::V0_4_0),
            concat!(
                r#"{"cniVersion":"0.4.0","interfaces":[{"name":"vethab12","mac":"0a:00:00:00:00:01"},"#,
                r#"{"name":"eth0","mac":"0a:00:00:00:00:02","sandbox":"/var/run/netns/pod"}],"#,
                r#""ips":[{"version":"4","interface":1,"address":"10.244.1.5/24","gateway":"10.244.1.1"},"#,
                r#"{"version":"6","interface":1,"address":"fd00::5/64"}],"#,
                r#""routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1","mtu":1400,"table":0}],"#,
                r#""dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#
            )
        );
    }

    #[test]
    fn legacy_empty_result_keeps_empty_dns() {
        assert_eq!(
            CniResult::default().to_output(SpecVersion::V0_3_1),
            r#"{"cniVersion":"0.3.1","dns":{}}"#
        );
        assert_eq!(
            CniResult::default().to_output(SpecVersion::V1_1_0),
            r#"{"cniVersion":"1.1.0"}"#
        );
    }

    #[test]
    fn reads_back_every_version() {
        for v in crate::version::SUPPORTED_VERSIONS {
            let value: serde_json::Value = serde_json::from_str(&sample().to_output(v)).unwrap();
            let back = CniResult::from_value(&value).unwrap();
            let mut expected = sample();
            if v.is_legacy_result() {
                for i in &mut expected.interfaces {
                    i.mtu = None;
                    i.socket_path = None;
                    i.pci_id = None;
                }
            }
            assert_eq!(back, expected, "version {v}");
        }
    }

    #[test]
    fn rejects_bad_results() {
        let bad_index = serde_json::json!({"interfaces":[{"name":"eth0"}],"ips":[{"interface":1,"address":"10.0.0.1/24"}]});
        assert!(matches!(
            CniResult::from_value(&bad_index),
            Err(ResultError::InterfaceIndex {
                ip: 0,
                index: 1,
                count: 1
            })
        ));
        let no_prefix = serde_json::json!({"ips":[{"address":"10.0.0.1"}]});
        assert!(matches!(
            CniResult::from_value(&no_prefix),
            Err(ResultError::Decode(_))
        ));
        let old = serde_json::json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.1/24"}});
        assert_eq!(CniResult::from_value(&old), Err(ResultError::LegacyLayout));
        assert!(CniResult::from_value(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn appends_own_result_to_prev_result() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "other0".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "192.168.0.2/24".parse().unwrap(),
                gateway: None,
            }],
            ..Default::default()
        };
        let merged = sample().appended_to(prev);
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.interfaces[0].name, "other0");
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.dns, sample().dns);
        merged.validate().unwrap();
    }
}
