//! `node`: is everything reachable and programmed on this node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use switchyard_pipeline::{Cookie, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::NodeArgs;
use crate::flows::{FlowView, match_value, owner_name};
use crate::output::{Render, Table};
use crate::ovs::{Ovs, PortInfo, PortKind, keys};

/// A connection check.
#[derive(Debug, Clone, Serialize)]
pub struct Reachability {
    /// What was tried (endpoint, socket, URL).
    pub target: String,
    /// Whether it answered.
    pub ok: bool,
    /// What it said, or why not.
    pub detail: String,
}

/// Flows of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableCount {
    /// Table number.
    pub table: u8,
    /// Table name.
    pub name: String,
    /// The daemon that programs it (from the pipeline declaration).
    pub declared_owner: String,
    /// A reserved slot (no flows expected).
    pub reserved: bool,
    /// Flows.
    pub flows: usize,
    /// Of them, the agent's.
    pub agent: usize,
    /// Of them, the proxy's.
    pub proxy: usize,
    /// Packets matched by all of them.
    pub packets: u64,
}

/// Flows of one owner.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerCount {
    /// `agent`, `proxy`, `other`.
    pub owner: String,
    /// Flows.
    pub flows: usize,
    /// Cookie generations in use (one after a completed resync; learned
    /// affinity flows use their own).
    pub generations: Vec<u8>,
}

/// A remote node the tunnel leads to.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelPeer {
    /// Its pod CIDR.
    pub pod_cidr: String,
    /// Its address (`tun_dst`).
    pub node_address: String,
    /// Packets sent there (the L3_FORWARDING flows' counters).
    pub packets: u64,
}

/// A segment seen on this node.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentUse {
    /// Segment name.
    pub segment: String,
    /// VLAN (0 = overlay).
    pub vlan: u16,
    /// Pod interfaces on this node.
    pub pods: usize,
}

/// What `node` shows.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The bridge.
    pub bridge: String,
    /// OVSDB.
    pub ovsdb: Reachability,
    /// The bridge's OpenFlow management socket.
    pub openflow: Reachability,
    /// `ovs-vswitchd`'s control socket.
    pub vswitchd: Reachability,
    /// The agent's `/healthz`.
    pub agent: Reachability,
    /// The proxy's `/healthz`.
    pub proxy: Reachability,
    /// Flows per table.
    pub tables: Vec<TableCount>,
    /// Flows per cookie owner.
    pub owners: Vec<OwnerCount>,
    /// Groups on the bridge.
    pub groups: usize,
    /// Ports by kind.
    pub ports: Vec<PortInfo>,
    /// Tunnel peers.
    pub tunnel_peers: Vec<TunnelPeer>,
    /// Segments of this node's pods.
    pub segments: Vec<SegmentUse>,
}

/// `GET /healthz` over plain HTTP/1.0.
pub async fn healthz(addr: SocketAddr, timeout: Duration) -> Reachability {
    let target = format!("http://{addr}/healthz");
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Reachability {
            target,
            ok: false,
            detail: format!("no answer within {timeout:?}"),
        },
        Ok(Err(e)) => Reachability {
            target,
            ok: false,
            detail: e.to_string(),
        },
        Ok(Ok(reply)) => {
            let status = reply.lines().next().unwrap_or_default().to_string();
            let body = reply
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.trim())
                .unwrap_or_default();
            let ok = status.split_whitespace().nth(1) == Some("200");
            Reachability {
                target,
                ok,
                detail: if body.is_empty() {
                    status
                } else {
                    format!("{status}: {body}")
                },
            }
        }
    }
}

/// Tunnel peers from L3_FORWARDING's remote-node flows.
pub fn tunnel_peers(flows: &[FlowView]) -> Vec<TunnelPeer> {
    let mut peers: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in flows
        .iter()
        .filter(|f| f.table == table::L3_FORWARDING.id())
    {
        let Some(dst) = f.actions.split(',').find_map(|a| {
            a.strip_prefix("set_field:")
                .and_then(|a| a.strip_suffix("->tun_dst"))
        }) else {
            continue;
        };
        let Some(cidr) = match_value(&f.matches, "nw_dst") else {
            continue;
        };
        *peers
            .entry((cidr.to_string(), dst.to_string()))
            .or_default() += f.packets;
    }
    peers
        .into_iter()
        .filter(|((cidr, _), _)| cidr.contains('/'))
        .map(|((pod_cidr, node_address), packets)| TunnelPeer {
            pod_cidr,
            node_address,
            packets,
        })
        .collect()
}

/// Flows per table, every declared table listed (and any other in use).
pub fn table_counts(flows: &[FlowView]) -> Vec<TableCount> {
    let mut out: BTreeMap<u8, TableCount> = table::PIPELINE
        .iter()
        .map(|t| {
            (
                t.id(),
                TableCount {
                    table: t.id(),
                    name: t.name().to_string(),
                    declared_owner: owner_name(Cookie::new(t.owner(), 0, 0).value()).to_string(),
                    reserved: t.is_reserved(),
                    flows: 0,
                    agent: 0,
                    proxy: 0,
                    packets: 0,
                },
            )
        })
        .collect();
    for f in flows {
        let t = out.entry(f.table).or_insert_with(|| TableCount {
            table: f.table,
            name: f.table_name.clone(),
            declared_owner: "-".into(),
            reserved: false,
            flows: 0,
            agent: 0,
            proxy: 0,
            packets: 0,
        });
        t.flows += 1;
        t.packets += f.packets;
        match f.owner.as_str() {
            "agent" => t.agent += 1,
            "proxy" => t.proxy += 1,
            _ => {}
        }
    }
    out.into_values().collect()
}

/// Flows per owner with their generations.
pub fn owner_counts(flows: &[FlowView]) -> Vec<OwnerCount> {
    let mut out: BTreeMap<String, (usize, std::collections::BTreeSet<u8>)> = BTreeMap::new();
    for f in flows {
        let e = out.entry(f.owner.clone()).or_default();
        e.0 += 1;
        if let Some(c) = u64::from_str_radix(f.cookie.trim_start_matches("0x"), 16)
            .ok()
            .and_then(Cookie::from_value)
        {
            e.1.insert(c.generation);
        }
    }
    out.into_iter()
        .map(|(owner, (flows, generations))| OwnerCount {
            owner,
            flows,
            generations: generations.into_iter().collect(),
        })
        .collect()
}

/// Runs `node`: every part is tried; a part that fails is reported, not fatal.
pub async fn run(ovs: &Ovs, args: &NodeArgs) -> NodeReport {
    let mut report = NodeReport {
        bridge: ovs.bridge.clone(),
        ovsdb: Reachability {
            target: ovs.ovsdb_endpoint.clone(),
            ok: false,
            detail: String::new(),
        },
        openflow: Reachability {
            target: ovs.mgmt_socket().display().to_string(),
            ok: false,
            detail: String::new(),
        },
        vswitchd: Reachability {
            target: format!("{}/ovs-vswitchd.<pid>.ctl", ovs.rundir.display()),
            ok: false,
            detail: String::new(),
        },
        agent: healthz(args.agent_address, ovs.timeout).await,
        proxy: healthz(args.proxy_address, ovs.timeout).await,
        tables: Vec::new(),
        owners: Vec::new(),
        groups: 0,
        ports: Vec::new(),
        tunnel_peers: Vec::new(),
        segments: Vec::new(),
    };
    match ovs.ovsdb().await {
        Ok(db) => match ovs.ports(&db).await {
            Ok(ports) => {
                report.ovsdb.ok = true;
                report.ovsdb.detail =
                    format!("connected, bridge {} has {} ports", ovs.bridge, ports.len());
                let mut segs: BTreeMap<(String, u16), usize> = BTreeMap::new();
                for p in ports.iter().filter(|p| p.kind == PortKind::Pod) {
                    let seg = p.id(keys::SEGMENT).unwrap_or("?").to_string();
                    let vlan = p.id(keys::VLAN).and_then(|v| v.parse().ok()).unwrap_or(0);
                    *segs.entry((seg, vlan)).or_default() += 1;
                }
                report.segments = segs
                    .into_iter()
                    .map(|((segment, vlan), pods)| SegmentUse {
                        segment,
                        vlan,
                        pods,
                    })
                    .collect();
                report.ports = ports;
            }
            Err(e) => report.ovsdb.detail = e.to_string(),
        },
        Err(e) => report.ovsdb.detail = e.to_string(),
    }
    match ovs.appctl("version", &[]).await {
        Ok(v) => {
            report.vswitchd.ok = true;
            report.vswitchd.detail = v.lines().next().unwrap_or_default().to_string();
        }
        Err(e) => report.vswitchd.detail = e.to_string(),
    }
    match ovs.openflow().await {
        Ok(of) => {
            report.openflow.ok = true;
            match ovs.flows(&of).await {
                Ok(stats) => {
                    let flows: Vec<FlowView> = stats.iter().map(FlowView::new).collect();
                    report.openflow.detail = format!(
                        "connected (OpenFlow 1.{}), {} flows",
                        of.version().map(|v| v.saturating_sub(1)).unwrap_or(0),
                        flows.len()
                    );
                    report.tables = table_counts(&flows);
                    report.owners = owner_counts(&flows);
                    report.tunnel_peers = tunnel_peers(&flows);
                }
                Err(e) => {
                    report.openflow.ok = false;
                    report.openflow.detail = e.to_string();
                }
            }
            if let Ok(groups) = ovs.groups(&of).await {
                report.groups = groups.len();
            }
        }
        Err(e) => report.openflow.detail = e.to_string(),
    }
    report
}

fn status(r: &Reachability) -> String {
    format!(
        "{:<4} {}  {}",
        if r.ok { "ok" } else { "FAIL" },
        r.target,
        r.detail
    )
}

impl Render for NodeReport {
    fn render(&self) -> String {
        let mut out = format!(
            "Bridge:     {}\nOVSDB:      {}\nOpenFlow:   {}\nvswitchd:   {}\nAgent:      {}\nProxy:      {}\n",
            self.bridge,
            status(&self.ovsdb),
            status(&self.openflow),
            status(&self.vswitchd),
            status(&self.agent),
            status(&self.proxy)
        );
        out.push_str("\nFlows per table:\n");
        let mut t = Table::new(&[
            "table", "name", "owner", "flows", "agent", "proxy", "packets",
        ]);
        for c in &self.tables {
            t.row([
                c.table.to_string(),
                if c.reserved {
                    format!("{} (reserved)", c.name)
                } else {
                    c.name.clone()
                },
                c.declared_owner.clone(),
                c.flows.to_string(),
                c.agent.to_string(),
                c.proxy.to_string(),
                c.packets.to_string(),
            ]);
        }
        out.push_str(&t.render_indented(2));
        out.push_str("\nFlows per owner:\n");
        let mut t = Table::new(&["owner", "flows", "generations"]);
        for o in &self.owners {
            t.row([
                o.owner.clone(),
                o.flows.to_string(),
                o.generations
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
        out.push_str(&t.render_indented(2));
        out.push_str(&format!("  groups: {}\n", self.groups));
        out.push_str("\nPorts:\n");
        let mut t = Table::new(&["kind", "port", "ofport", "type", "vlan", "detail"]);
        let mut ports: Vec<&PortInfo> = self.ports.iter().collect();
        ports.sort_by_key(|p| (p.kind, p.ofport));
        for p in ports {
            let detail = match p.kind {
                PortKind::Pod => format!(
                    "{}/{} {}",
                    p.id(keys::POD_NAMESPACE).unwrap_or("?"),
                    p.id(keys::POD_NAME).unwrap_or("?"),
                    p.id(keys::IP).unwrap_or("")
                ),
                PortKind::Tunnel => p
                    .options
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                PortKind::Uplink => format!(
                    "trunks {}",
                    p.trunks
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => p.error.clone().unwrap_or_default(),
            };
            t.row([
                p.kind.name().to_string(),
                p.name.clone(),
                p.ofport
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into()),
                if p.interface_type.is_empty() {
                    "system".into()
                } else {
                    p.interface_type.clone()
                },
                p.tag.map(|t| t.to_string()).unwrap_or_default(),
                detail,
            ]);
        }
        out.push_str(&t.render_indented(2));
        out.push_str("\nTunnel peers:\n");
        if self.tunnel_peers.is_empty() {
            out.push_str("  none\n");
        } else {
            let mut t = Table::new(&["pod-cidr", "node", "packets"]);
            for p in &self.tunnel_peers {
                t.row([
                    p.pod_cidr.clone(),
                    p.node_address.clone(),
                    p.packets.to_string(),
                ]);
            }
            out.push_str(&t.render_indented(2));
        }
        out.push_str("\nSegments (pods on this node):\n");
        if self.segments.is_empty() {
            out.push_str("  none\n");
        } else {
            let mut t = Table::new(&["segment", "vlan", "pods"]);
            for s in &self.segments {
                t.row([s.segment.clone(), s.vlan.to_string(), s.pods.to_string()]);
            }
            out.push_str(&t.render_indented(2));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::table_name;

    fn flow(table: u8, cookie: u64, matches: &str, actions: &str, packets: u64) -> FlowView {
        FlowView {
            table,
            table_name: table_name(table),
            priority: 100,
            owner: owner_name(cookie).into(),
            cookie: format!("{cookie:#x}"),
            object: None,
            packets,
            bytes: 0,
            idle_timeout: 0,
            matches: matches.into(),
            actions: actions.into(),
        }
    }

    #[test]
    fn counts_name_every_declared_table() {
        let agent = 0x5359_0101_0000_0000;
        let proxy = 0x5359_0203_0000_0005;
        let flows = vec![
            flow(0, agent, "", "drop", 1),
            flow(31, proxy, "tcp,nw_dst=10.96.0.1,tp_dst=80", "group:5", 4),
            flow(31, agent, "", "goto_table:32", 2),
        ];
        let counts = table_counts(&flows);
        let lb = counts.iter().find(|c| c.name == "SERVICE_LB").unwrap();
        assert_eq!((lb.flows, lb.agent, lb.proxy, lb.packets), (2, 1, 1, 6));
        assert_eq!(lb.declared_owner, "proxy");
        assert!(
            counts
                .iter()
                .any(|c| c.name == "EGRESS_POLICY" && !c.reserved && c.flows == 0)
        );
        let owners = owner_counts(&flows);
        assert_eq!(owners[0].owner, "agent");
        assert_eq!(owners[0].generations, vec![1]);
        assert_eq!(owners[1].generations, vec![3]);
    }

    #[test]
    fn tunnel_peers_come_from_remote_node_flows() {
        let flows = vec![
            flow(
                40,
                0x5359_0101_0002_0000,
                "ip,nw_dst=10.244.1.0/24",
                "set_field:10.252.77.2->tun_dst,move:NXM_NX_REG5[]->NXM_NX_TUN_ID[0..31],set_field:0x1->reg1,goto_table:60",
                7,
            ),
            flow(
                40,
                0x5359_0101_0000_0010,
                "ip,nw_dst=10.244.0.2",
                "goto_table:50",
                1,
            ),
        ];
        let peers = tunnel_peers(&flows);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node_address, "10.252.77.2");
        assert_eq!(peers[0].pod_cidr, "10.244.1.0/24");
        assert_eq!(peers[0].packets, 7);
    }
}
