//! The node's Open vSwitch: OVSDB, the bridge's OpenFlow management socket
//! and `ovs-vswitchd`'s control socket, all under one run directory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use switchyard_ovs::openflow::{self, ALL_GROUPS, FlowStats, FlowStatsRequest, Group, GroupStats};
use switchyard_ovs::ovsdb::{self, InterfaceRow, Operation, PortRow, Row, Value, vswitch};
use switchyard_ovs::unixctl::Unixctl;
use switchyard_pipeline::ofport;

use crate::Error;
use crate::cli::Global;

/// `external_ids` keys the agent writes on a pod's Port and Interface
/// (`switchyard_agent::attachment`).
pub mod keys {
    /// `switchyard.io/owner` (`switchyard-agent`).
    pub const OWNER: &str = "switchyard.io/owner";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "switchyard.io/pod-namespace";
    /// Pod name.
    pub const POD_NAME: &str = "switchyard.io/pod-name";
    /// Container id.
    pub const CONTAINER_ID: &str = "switchyard.io/container-id";
    /// The pod-side interface name (CNI_IFNAME).
    pub const IFNAME: &str = "switchyard.io/ifname";
    /// The pod's network namespace.
    pub const NETNS: &str = "switchyard.io/netns";
    /// Address with prefix length.
    pub const IP: &str = "switchyard.io/ip";
    /// MAC.
    pub const MAC: &str = "switchyard.io/mac";
    /// Segment.
    pub const SEGMENT: &str = "switchyard.io/segment";
    /// VLAN (0 = untagged).
    pub const VLAN: &str = "switchyard.io/vlan";
    /// The pod's default gateway.
    pub const GATEWAY: &str = "switchyard.io/gateway";
}

/// The gateway port's name.
pub const GATEWAY_PORT: &str = "sy-gw0";
/// The tunnel port's name.
pub const TUNNEL_PORT: &str = "sy-tun0";

/// Where the node's OVS is.
#[derive(Debug, Clone)]
pub struct Ovs {
    /// The run directory.
    pub rundir: PathBuf,
    /// The bridge.
    pub bridge: String,
    /// The OVSDB endpoint.
    pub ovsdb_endpoint: String,
    /// Time limit of each request.
    pub timeout: Duration,
}

/// What kind of port of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A pod's veth (agent's `external_ids`).
    Pod,
    /// `sy-gw0`.
    Gateway,
    /// `sy-tun0`.
    Tunnel,
    /// A `vlan` segment's trunk uplink.
    Uplink,
    /// The bridge's own internal port.
    Bridge,
    /// Anything else.
    Other,
}

impl PortKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Pod => "pod",
            PortKind::Gateway => "gateway",
            PortKind::Tunnel => "tunnel",
            PortKind::Uplink => "uplink",
            PortKind::Bridge => "bridge",
            PortKind::Other => "other",
        }
    }
}

/// One port of the bridge with its (first) interface.
#[derive(Debug, Clone, Serialize)]
pub struct PortInfo {
    /// Port (and interface) name.
    pub name: String,
    /// What it is.
    pub kind: PortKind,
    /// OpenFlow port number (`None` while vswitchd has not attached it, -1 on failure).
    pub ofport: Option<i64>,
    /// Interface type (`""` for a system device such as a veth).
    pub interface_type: String,
    /// Access VLAN.
    pub tag: Option<u16>,
    /// Trunk VLANs.
    pub trunks: Vec<u16>,
    /// Interface options (tunnel settings).
    pub options: BTreeMap<String, String>,
    /// Interface and Port `external_ids` (the Port's win).
    pub external_ids: BTreeMap<String, String>,
    /// MAC in use.
    pub mac: Option<String>,
    /// vswitchd's error for the interface.
    pub error: Option<String>,
}

impl PortInfo {
    /// An `external_ids` value.
    pub fn id(&self, key: &str) -> Option<&str> {
        self.external_ids.get(key).map(String::as_str)
    }

    /// The ofport as a number, if attached.
    pub fn ofport_u32(&self) -> Option<u32> {
        self.ofport
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    }
}

fn classify(bridge: &str, port: &PortRow, iface: Option<&InterfaceRow>) -> PortKind {
    let itype = iface.map(|i| i.interface_type.as_str()).unwrap_or("");
    let ofp = iface.and_then(|i| i.ofport);
    let ids = &port.external_ids;
    let iface_ids = iface.map(|i| &i.external_ids);
    let is_pod = |m: &BTreeMap<String, String>| m.contains_key(keys::POD_NAME);
    if is_pod(ids) || iface_ids.is_some_and(is_pod) {
        PortKind::Pod
    } else if port.name == bridge {
        PortKind::Bridge
    } else if matches!(itype, "geneve" | "vxlan" | "gre" | "stt")
        || port.name == TUNNEL_PORT
        || ofp == Some(i64::from(ofport::TUNNEL))
    {
        PortKind::Tunnel
    } else if port.name == GATEWAY_PORT || ofp == Some(i64::from(ofport::GATEWAY)) {
        PortKind::Gateway
    } else if !port.trunks.is_empty()
        || ofp.is_some_and(|p| {
            (i64::from(ofport::UPLINK)..=i64::from(ofport::LAST_UPLINK)).contains(&p)
        })
    {
        PortKind::Uplink
    } else {
        PortKind::Other
    }
}

fn row_uuid(row: &Row) -> ovsdb::Uuid {
    row.get("_uuid")
        .and_then(Value::as_uuid)
        .unwrap_or_default()
}

impl Ovs {
    /// From the command line.
    pub fn new(global: &Global) -> Self {
        Self {
            rundir: global.ovs_rundir.clone(),
            bridge: global.bridge.clone(),
            ovsdb_endpoint: global
                .ovsdb
                .clone()
                .unwrap_or_else(|| format!("unix:{}", global.ovs_rundir.join("db.sock").display())),
            timeout: Duration::from_secs(global.timeout.max(1)),
        }
    }

    fn ovsdb_err(&self) -> impl FnOnce(ovsdb::Error) -> Error + '_ {
        move |source| Error::Ovsdb {
            endpoint: self.ovsdb_endpoint.clone(),
            source: Box::new(source),
        }
    }

    /// An OVSDB connection (no reconnects: one command's worth).
    pub async fn ovsdb(&self) -> Result<ovsdb::Client, Error> {
        let endpoint = self.ovsdb_endpoint.parse().map_err(self.ovsdb_err())?;
        let mut config = ovsdb::ClientConfig::new(endpoint);
        config.reconnect = false;
        config.inactivity_probe = None;
        match tokio::time::timeout(self.timeout, ovsdb::Client::connect_with(config)).await {
            Ok(r) => r.map_err(self.ovsdb_err()),
            Err(_) => Err((self.ovsdb_err())(ovsdb::Error::Timeout {
                timeout: self.timeout,
                what: "the connection".into(),
            })),
        }
    }

    /// The bridge's management socket.
    pub fn mgmt_socket(&self) -> PathBuf {
        self.rundir.join(format!("{}.mgmt", self.bridge))
    }

    fn of_err(&self, what: &'static str) -> impl FnOnce(openflow::Error) -> Error + '_ {
        move |source| Error::OpenFlow {
            what,
            path: self.mgmt_socket(),
            source: Box::new(source),
        }
    }

    /// An OpenFlow connection to the bridge.
    pub async fn openflow(&self) -> Result<openflow::Client, Error> {
        let mut config = openflow::ClientConfig::new(self.mgmt_socket());
        config.request_timeout = self.timeout;
        config.probe_interval = None;
        match tokio::time::timeout(self.timeout, openflow::Client::connect(config)).await {
            Ok(r) => r.map_err(self.of_err("connect")),
            Err(_) => Err(Error::Io {
                what: format!("connecting to {}", self.mgmt_socket().display()),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            }),
        }
    }

    /// Every flow with its counters.
    pub async fn flows(&self, of: &openflow::Client) -> Result<Vec<FlowStats>, Error> {
        of.dump_flows(FlowStatsRequest::all())
            .await
            .map_err(self.of_err("dump-flows"))
    }

    /// Every group.
    pub async fn groups(&self, of: &openflow::Client) -> Result<Vec<Group>, Error> {
        of.dump_groups(ALL_GROUPS)
            .await
            .map_err(self.of_err("dump-groups"))
    }

    /// Every group's counters.
    pub async fn group_stats(&self, of: &openflow::Client) -> Result<Vec<GroupStats>, Error> {
        of.group_stats(ALL_GROUPS)
            .await
            .map_err(self.of_err("dump-group-stats"))
    }

    /// `ovs-appctl -t ovs-vswitchd METHOD PARAMS...`.
    pub async fn appctl(&self, method: &str, params: &[&str]) -> Result<String, Error> {
        let ctl = Unixctl::for_daemon(&self.rundir, "ovs-vswitchd")?;
        Ok(ctl.call(method, params, self.timeout).await?)
    }

    /// `ovs-appctl -t DAEMON METHOD PARAMS...` for another daemon (`ovsdb-server`).
    pub async fn appctl_daemon(
        &self,
        daemon: &str,
        method: &str,
        params: &[&str],
    ) -> Result<String, Error> {
        let ctl = Unixctl::for_daemon(&self.rundir, daemon)?;
        Ok(ctl.call(method, params, self.timeout).await?)
    }

    /// The bridge's ports with their interfaces, by ofport.
    pub async fn ports(&self, db: &ovsdb::Client) -> Result<Vec<PortInfo>, Error> {
        let bridge = db
            .bridge(&self.bridge)
            .await
            .map_err(self.ovsdb_err())?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "bridge {} does not exist in OVSDB {} (--bridge)",
                    self.bridge, self.ovsdb_endpoint
                ))
            })?;
        let results = db
            .transact(
                vswitch::DB,
                &[
                    Operation::select("Port", vec![]),
                    Operation::select("Interface", vec![]),
                ],
            )
            .await
            .map_err(self.ovsdb_err())?;
        let rows = |i: usize| {
            results
                .get(i)
                .and_then(|r| r.rows.clone())
                .unwrap_or_default()
        };
        let ifaces: BTreeMap<ovsdb::Uuid, InterfaceRow> = rows(1)
            .iter()
            .map(|r| (row_uuid(r), InterfaceRow::from_row(row_uuid(r), r)))
            .collect();
        let mut out = Vec::new();
        for row in rows(0) {
            let port = PortRow::from_row(row_uuid(&row), &row);
            if !bridge.ports.contains(&port.uuid) {
                continue;
            }
            let iface = port.interfaces.iter().find_map(|u| ifaces.get(u));
            let mut external_ids = iface.map(|i| i.external_ids.clone()).unwrap_or_default();
            external_ids.extend(port.external_ids.clone());
            out.push(PortInfo {
                kind: classify(&self.bridge, &port, iface),
                name: port.name.clone(),
                ofport: iface.and_then(|i| i.ofport),
                interface_type: iface.map(|i| i.interface_type.clone()).unwrap_or_default(),
                tag: port.tag,
                trunks: port.trunks.clone(),
                options: iface.map(|i| i.options.clone()).unwrap_or_default(),
                external_ids,
                mac: iface.and_then(|i| i.mac_in_use.clone()),
                error: iface.and_then(|i| i.error.clone()),
            });
        }
        out.sort_by_key(|p| (p.ofport.unwrap_or(i64::MAX), p.name.clone()));
        Ok(out)
    }
}

/// The node's address on its gateway port (`ip -4 addr show dev sy-gw0`).
pub fn gateway_address() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", GATEWAY_PORT])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}
