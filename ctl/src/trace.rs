//! `trace`: a packet through `br-int` with `ofproto/trace` (through
//! `ovs-vswitchd`'s control socket), with `in_port`, MACs, addresses and
//! ports filled in, parsed into passes (one per conntrack recirculation;
//! `ofproto/trace` follows them and simulates the NAT of `ct(nat(...))`)
//! and steps (one per table, with the pipeline's table names), ending in the
//! final decision.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;
use switchyard_pipeline::{Cookie, ofport};

use crate::Error;
use crate::cli::{Protocol, TraceArgs};
use crate::flows::{owner_name, table_name};
use crate::kube::split_name;
use crate::output::Render;
use crate::ovs::{GATEWAY_PORT, Ovs, PortInfo, PortKind, gateway_address};
use crate::pod::{PodInterface, pod_ports};

/// The MAC the agent answers for the node's next hops (the Service CIDR's
/// and other nodes' pod CIDRs): what the node's own packets carry.
pub const NEXT_HOP_MAC: &str = "aa:bb:cc:dd:ee:ff";

/// Where a traced packet comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Input port.
    pub in_port: u32,
    /// Source MAC.
    pub dl_src: String,
    /// Destination MAC.
    pub dl_dst: String,
    /// Source address.
    pub nw_src: Ipv4Addr,
}

/// The `ofproto/trace` flow for a packet from `src` to `to`.
pub fn request_flow(src: &Source, to: SocketAddrV4, protocol: Protocol, src_port: u16) -> String {
    let mut flow = format!(
        "in_port={},{},dl_src={},dl_dst={},nw_src={},nw_dst={},nw_ttl=64,tp_src={src_port},tp_dst={}",
        src.in_port,
        protocol.keyword(),
        src.dl_src,
        src.dl_dst,
        src.nw_src,
        to.ip(),
        to.port()
    );
    if protocol == Protocol::Tcp {
        flow.push_str(",tcp_flags=syn");
    }
    flow
}

/// One table visited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The bridge (`br-int`, or another one a tunnel output continues in).
    pub bridge: String,
    /// Table number.
    pub table: u8,
    /// Table name (the pipeline's, for the traced bridge).
    pub table_name: String,
    /// The matching flow's match (`None`: no flow matched).
    pub flow_match: Option<String>,
    /// Its priority.
    pub priority: Option<u16>,
    /// Its cookie.
    pub cookie: Option<String>,
    /// `agent`, `proxy` or `other`.
    pub owner: Option<String>,
    /// The actions and `ofproto/trace`'s notes (`-> ...`), in order.
    pub actions: Vec<String>,
    /// What this step decided, in words.
    pub decision: String,
}

/// One pass through the pipeline (the first, or after a recirculation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pass {
    /// The recirculation id (`None` for the first pass).
    pub recirc_id: Option<String>,
    /// The conntrack state assumed (`trk|new`, ...).
    pub ct_state: Option<String>,
    /// The NAT `ofproto/trace` simulated before this pass: (before, after).
    pub nat: Option<(String, String)>,
    /// The table the pass resumed at.
    pub resumed_at: Option<u8>,
    /// The flow entering the pass.
    pub flow: String,
    /// Tables visited.
    pub steps: Vec<Step>,
    /// The datapath actions of the pass.
    pub datapath_actions: String,
}

/// How the trace ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decision {
    /// Out of a port of the bridge.
    Output {
        /// The ofport.
        port: u32,
        /// Its name, when known.
        port_name: Option<String>,
    },
    /// Into the overlay tunnel, to another node.
    Tunnel {
        /// The remote node's address.
        remote: Option<String>,
    },
    /// To the controller: the proxy's reject (ICMP port unreachable).
    Controller,
    /// Dropped.
    Drop,
}

impl Decision {
    /// In words.
    pub fn describe(&self) -> String {
        match self {
            Decision::Output { port, port_name } => match port_name {
                Some(n) => format!("output to port {port} ({n})"),
                None => format!("output to port {port}"),
            },
            Decision::Tunnel { remote } => format!(
                "output to the tunnel (sy-tun0) towards {}",
                remote.as_deref().unwrap_or("another node")
            ),
            Decision::Controller => {
                "to the controller: rejected by the proxy (no endpoints: ICMP port unreachable)"
                    .into()
            }
            Decision::Drop => "drop".into(),
        }
    }
}

/// A parsed trace.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    /// Where the packet comes from, in words.
    pub from: String,
    /// The flow given to `ofproto/trace`.
    pub request: String,
    /// The passes.
    pub passes: Vec<Pass>,
    /// The final decision.
    pub decision: Decision,
    /// `ofproto/trace`'s text (with `--raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

fn parse_table_line(line: &str) -> Option<(u8, String)> {
    let t = line.trim_start();
    let (num, rest) = t.split_once(". ")?;
    let table = num.parse().ok()?;
    Some((table, rest.to_string()))
}

/// `MATCH, priority N, cookie C` (the match may be empty: `priority 0, cookie C`).
fn split_flow_head(rest: &str) -> (Option<String>, Option<u16>, Option<String>) {
    if rest.trim_end_matches('.') == "No match" {
        return (None, None, None);
    }
    let mut matches = rest;
    let mut cookie = None;
    if let Some((head, c)) = matches.rsplit_once(", cookie ") {
        cookie = Some(c.trim().to_string());
        matches = head;
    } else if let Some(c) = matches.strip_prefix("cookie ") {
        cookie = Some(c.trim().to_string());
        matches = "";
    }
    let mut priority = None;
    if let Some((head, p)) = matches.rsplit_once("priority ") {
        priority = p.trim().parse().ok();
        matches = head.trim_end_matches(", ").trim_end_matches(',');
    }
    (Some(matches.trim().to_string()), priority, cookie)
}

fn step_decision(step: &Step, bridge: &str) -> String {
    let name = |t: u8| {
        if step.bridge == bridge {
            format!("{t} {}", table_name(t))
        } else {
            t.to_string()
        }
    };
    if step.flow_match.is_none() {
        return "no flow matched: drop".into();
    }
    let mut parts = Vec::new();
    let mut bucket = None;
    for a in &step.actions {
        let a = a.trim();
        if let Some(b) = a.strip_prefix("-> using bucket ") {
            bucket = Some(b.to_string());
        } else if let Some(g) = a.strip_prefix("group:") {
            parts.push(format!("group {g}"));
        } else if a.starts_with("ct(") {
            let table = a
                .split([',', '(', ')'])
                .find_map(|p| p.strip_prefix("table="))
                .and_then(|t| t.parse().ok());
            let nat = a
                .split_once("nat(dst=")
                .and_then(|(_, r)| r.split(')').next())
                .map(|d| format!("DNAT to {d}"));
            let mut words = vec![
                if a.contains("commit") {
                    "conntrack commit"
                } else {
                    "conntrack"
                }
                .to_string(),
            ];
            if let Some(n) = nat {
                words.push(n);
            } else if a.contains(",nat") || a.contains("(nat") {
                words.push("un-NAT replies".into());
            }
            if let Some(t) = table {
                words.push(format!("recirculate to {}", name(t)));
            }
            parts.push(words.join(", "));
        } else if let Some(t) = a.strip_prefix("goto_table:").and_then(|t| t.parse().ok()) {
            parts.push(format!("-> {}", name(t)));
        } else if let Some(r) = a
            .strip_prefix("resubmit(,")
            .and_then(|r| r.strip_suffix(')'))
        {
            if let Ok(t) = r.parse() {
                parts.push(format!("resubmit to {}", name(t)));
            }
        } else if let Some(p) = a.strip_prefix("output:") {
            parts.push(format!("output to port {p}"));
        } else if a == "NORMAL" {
            parts.push("NORMAL switching".into());
        } else if a.starts_with("controller(") {
            parts.push("to the controller (reject)".into());
        } else if let Some(v) = a
            .strip_prefix("set_field:")
            .and_then(|s| s.strip_suffix("->tun_dst"))
        {
            parts.push(format!("tunnel to {v}"));
        } else if a == "drop" && step.actions.len() == 1 {
            parts.push("drop".into());
        }
    }
    if let (Some(b), Some(g)) = (bucket, parts.iter_mut().find(|p| p.starts_with("group "))) {
        g.push_str(&format!(", bucket {b}"));
    }
    if parts.is_empty() {
        if step.actions.is_empty() {
            "drop".into()
        } else {
            "actions only (no next table): end of this pass".into()
        }
    } else {
        parts.join("; ")
    }
}

/// Parses `ofproto/trace` output for a trace on `bridge`.
pub fn parse(text: &str, bridge: &str) -> Vec<Pass> {
    let mut passes = vec![Pass::default()];
    let mut current_bridge = bridge.to_string();
    let mut in_nat = false;
    let mut nat_before = String::new();
    for line in text.lines() {
        let pass = passes.last_mut().expect("one pass at least");
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("recirc(") {
            let (id, tail) = rest.split_once(')').unwrap_or((rest, ""));
            let ct_state = tail
                .split_once("ct_state=")
                .map(|(_, s)| s.split_whitespace().next().unwrap_or("").to_string());
            passes.push(Pass {
                recirc_id: Some(id.to_string()),
                ct_state,
                ..Pass::default()
            });
            current_bridge = bridge.to_string();
            continue;
        }
        if trimmed.starts_with("Replacing src/dst") {
            in_nat = true;
            continue;
        }
        if in_nat {
            if let Some(b) = trimmed.strip_prefix("Initial flow:") {
                nat_before = b.trim().to_string();
                continue;
            }
            if let Some(a) = trimmed.strip_prefix("Modified flow:") {
                let after = a.trim().to_string();
                if !after.is_empty() && after != nat_before {
                    pass.nat = Some((std::mem::take(&mut nat_before), after));
                }
                in_nat = false;
                continue;
            }
        }
        if let Some(f) = trimmed.strip_prefix("Flow: ") {
            if pass.flow.is_empty() {
                pass.flow = f.to_string();
            }
            continue;
        }
        if let Some(b) = trimmed
            .strip_prefix("bridge(\"")
            .and_then(|b| b.strip_suffix("\")"))
        {
            current_bridge = b.to_string();
            continue;
        }
        if let Some(t) = trimmed.strip_prefix("Resuming from table ") {
            pass.resumed_at = t.parse().ok();
            continue;
        }
        if let Some(a) = trimmed.strip_prefix("Datapath actions: ") {
            pass.datapath_actions = a.to_string();
            continue;
        }
        // A table line starts at column 0 or 1 ("10. ...", " 0. ...").
        let indent = line.len() - line.trim_start().len();
        if indent <= 2
            && let Some((table, rest)) = parse_table_line(line)
        {
            let (flow_match, priority, cookie) = split_flow_head(&rest);
            let owner = cookie
                .as_deref()
                .and_then(|c| u64::from_str_radix(c.trim_start_matches("0x"), 16).ok())
                .filter(|c| Cookie::from_value(*c).is_some())
                .map(|c| owner_name(c).to_string());
            pass.steps.push(Step {
                bridge: current_bridge.clone(),
                table,
                table_name: if current_bridge == bridge {
                    table_name(table)
                } else {
                    format!("{current_bridge} table {table}")
                },
                flow_match,
                priority,
                cookie,
                owner,
                actions: Vec::new(),
                decision: String::new(),
            });
            continue;
        }
        if indent >= 4
            && !trimmed.is_empty()
            && let Some(step) = pass.steps.last_mut()
            && !trimmed.starts_with("Final flow:")
            && !trimmed.starts_with("Megaflow:")
            && trimmed != "thaw"
        {
            step.actions.push(trimmed.to_string());
        }
    }
    for pass in &mut passes {
        for step in &mut pass.steps {
            step.decision = step_decision(step, bridge);
        }
    }
    passes.retain(|p| !p.steps.is_empty() || !p.flow.is_empty());
    passes
}

/// The final decision: the last pass's outputs on the traced bridge.
pub fn decide(passes: &[Pass], bridge: &str, port_names: &BTreeMap<u32, String>) -> Decision {
    if passes
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| s.actions.iter().any(|a| a.starts_with("controller(")))
    {
        return Decision::Controller;
    }
    let Some(last) = passes.last() else {
        return Decision::Drop;
    };
    let mut remote = None;
    let mut output = None;
    for step in last.steps.iter().filter(|s| s.bridge == bridge) {
        for a in &step.actions {
            if let Some(v) = a
                .strip_prefix("set_field:")
                .and_then(|s| s.strip_suffix("->tun_dst"))
            {
                remote = Some(v.to_string());
            }
            if let Some(p) = a.strip_prefix("output:") {
                output = p.parse::<u32>().ok();
            } else if a == "IN_PORT" || a.starts_with("in_port") {
                output = None;
            }
        }
    }
    match output {
        Some(p) if p == ofport::TUNNEL || port_names.get(&p).is_some_and(|n| n == "sy-tun0") => {
            Decision::Tunnel { remote }
        }
        Some(port) => Decision::Output {
            port,
            port_name: port_names.get(&port).cloned(),
        },
        None if last.datapath_actions.trim() == "drop" || last.datapath_actions.is_empty() => {
            Decision::Drop
        }
        None => Decision::Drop,
    }
}

/// Runs `trace`.
pub async fn run(ovs: &Ovs, args: &TraceArgs) -> Result<TraceReport, Error> {
    let db = ovs.ovsdb().await?;
    let ports = ovs.ports(&db).await?;
    let gateway = ports.iter().find(|p| p.kind == PortKind::Gateway);
    let gateway_mac = gateway.and_then(|p| p.mac.clone()).ok_or_else(|| {
        Error::NotFound(format!(
            "bridge {} has no gateway port {GATEWAY_PORT} with a MAC: is the agent running?",
            ovs.bridge
        ))
    })?;
    let (src, from) = match &args.from_pod {
        Some(pod) => {
            let (ns, name) = split_name(pod)?;
            let port = pod_ports(&ports, &ns, &name).into_iter().next().ok_or_else(|| {
                Error::NotFound(format!(
                    "pod {ns}/{name} has no port on bridge {} of this node (trace from the pod's node)",
                    ovs.bridge
                ))
            })?;
            let iface = PodInterface::from_port(port);
            let in_port = port
                .ofport_u32()
                .ok_or_else(|| Error::NotFound(format!("port {} has no ofport yet", port.name)))?;
            let nw_src = iface.ip().parse().map_err(|_| {
                Error::NotFound(format!(
                    "port {} records no valid address ({:?})",
                    port.name, iface.address
                ))
            })?;
            let from = format!(
                "pod {ns}/{name} ({}, port {} ofport {in_port}, VLAN {})",
                iface.address, port.name, iface.vlan
            );
            (
                Source {
                    in_port,
                    dl_src: iface.mac.clone(),
                    dl_dst: gateway_mac,
                    nw_src,
                },
                from,
            )
        }
        None => {
            let in_port = gateway
                .and_then(PortInfo::ofport_u32)
                .unwrap_or(ofport::GATEWAY);
            let nw_src = args.src_ip.or_else(gateway_address).ok_or_else(|| {
                Error::Usage(format!(
                    "cannot read the address of {GATEWAY_PORT} (run in the node's network namespace, or pass --src-ip)"
                ))
            })?;
            (
                Source {
                    in_port,
                    dl_src: gateway_mac,
                    dl_dst: NEXT_HOP_MAC.to_string(),
                    nw_src,
                },
                format!("the node ({nw_src}, gateway port {GATEWAY_PORT} ofport {in_port})"),
            )
        }
    };
    let request = request_flow(&src, args.to, args.protocol, args.src_port);
    let mut params: Vec<&str> = vec![ovs.bridge.as_str(), request.as_str()];
    for s in &args.ct_states {
        params.push("--ct-next");
        params.push(s);
    }
    let text = ovs.appctl("ofproto/trace", &params).await?;
    let passes = parse(&text, &ovs.bridge);
    let names: BTreeMap<u32, String> = ports
        .iter()
        .filter_map(|p| Some((p.ofport_u32()?, p.name.clone())))
        .collect();
    let decision = decide(&passes, &ovs.bridge, &names);
    Ok(TraceReport {
        from,
        request,
        passes,
        decision,
        raw: args.raw.then_some(text),
    })
}

impl Render for TraceReport {
    fn render(&self) -> String {
        let mut out = format!("From:    {}\nTrace:   {}\n", self.from, self.request);
        for (i, pass) in self.passes.iter().enumerate() {
            out.push('\n');
            match &pass.recirc_id {
                None => out.push_str(&format!("Pass {} (as received)\n", i + 1)),
                Some(id) => out.push_str(&format!(
                    "Pass {} (recirculation {id} after conntrack, ct_state={}{})\n",
                    i + 1,
                    pass.ct_state.as_deref().unwrap_or("?"),
                    pass.resumed_at
                        .map(|t| format!(", resumed at table {t} {}", table_name(t)))
                        .unwrap_or_default()
                )),
            }
            if let Some((before, after)) = &pass.nat {
                out.push_str(&format!("  NAT: {before}  =>  {after}\n"));
            }
            for s in &pass.steps {
                out.push_str(&format!(
                    "  {:>3} {:<18} {}\n",
                    s.table, s.table_name, s.decision
                ));
                if let Some(m) = &s.flow_match {
                    out.push_str(&format!(
                        "      flow: {}{} priority {}{}\n",
                        if m.is_empty() { "*" } else { m },
                        ",",
                        s.priority.map(|p| p.to_string()).unwrap_or_default(),
                        s.owner
                            .as_deref()
                            .map(|o| format!(" ({o})"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        out.push_str(&format!("\nDecision: {}\n", self.decision.describe()));
        if let Some(raw) = &self.raw {
            out.push_str("\n--- ofproto/trace ---\n");
            out.push_str(raw);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNAT: &str = include_str!("../testdata/trace-service-dnat.txt");
    const REJECT: &str = include_str!("../testdata/trace-service-reject.txt");
    const CROSS: &str = include_str!("../testdata/trace-cross-node.txt");

    fn names() -> BTreeMap<u32, String> {
        [
            (1, "sy-tun0"),
            (2, "sy-gw0"),
            (16, "sy3420ab2e92c"),
            (17, "sye5ab6a5c934"),
        ]
        .into_iter()
        .map(|(p, n)| (p, n.to_string()))
        .collect()
    }

    #[test]
    fn request_flows_fill_in_every_field() {
        let src = Source {
            in_port: 17,
            dl_src: "e6:ab:6a:5c:93:44".into(),
            dl_dst: "4a:ed:c3:6b:e2:47".into(),
            nw_src: Ipv4Addr::new(10, 244, 0, 3),
        };
        assert_eq!(
            request_flow(&src, "10.96.0.1:80".parse().unwrap(), Protocol::Tcp, 40000),
            "in_port=17,tcp,dl_src=e6:ab:6a:5c:93:44,dl_dst=4a:ed:c3:6b:e2:47,nw_src=10.244.0.3,nw_dst=10.96.0.1,nw_ttl=64,tp_src=40000,tp_dst=80,tcp_flags=syn"
        );
        assert!(
            !request_flow(&src, "10.96.0.1:53".parse().unwrap(), Protocol::Udp, 1)
                .contains("tcp_flags")
        );
    }

    #[test]
    fn a_service_connection_is_three_passes_with_the_dnat_shown() {
        let passes = parse(DNAT, "br-int");
        assert_eq!(passes.len(), 3, "{passes:#?}");
        let tables: Vec<Vec<&str>> = passes
            .iter()
            .map(|p| p.steps.iter().map(|s| s.table_name.as_str()).collect())
            .collect();
        assert_eq!(tables[0], ["CLASSIFIER", "SPOOF_GUARD", "CONNTRACK"]);
        assert_eq!(
            tables[1],
            ["CONNTRACK_STATE", "SESSION_AFFINITY", "SERVICE_LB"]
        );
        assert_eq!(
            tables[2],
            [
                "L3_FORWARDING",
                "L2_FORWARDING",
                "CONNTRACK_COMMIT",
                "OUTPUT"
            ]
        );
        assert_eq!(passes[1].recirc_id.as_deref(), Some("0x1"));
        assert_eq!(passes[1].ct_state.as_deref(), Some("trk|new"));
        assert_eq!(passes[1].resumed_at, Some(21));
        let lb = &passes[1].steps[2];
        assert_eq!(lb.owner.as_deref(), Some("proxy"));
        assert_eq!(lb.priority, Some(200));
        assert_eq!(
            lb.flow_match.as_deref(),
            Some("tcp,reg4=0/0x30000,nw_dst=10.96.0.1,tp_dst=80")
        );
        assert!(lb.decision.contains("group 3, bucket 0"), "{}", lb.decision);
        assert!(
            lb.decision.contains("DNAT to 10.244.0.2:8080"),
            "{}",
            lb.decision
        );
        assert!(
            lb.decision.contains("recirculate to 40 L3_FORWARDING"),
            "{}",
            lb.decision
        );
        let (before, after) = passes[2].nat.clone().unwrap();
        assert!(
            before.contains("nw_dst=10.96.0.1") && after.contains("nw_dst=10.244.0.2,tp_dst=8080")
        );
        assert_eq!(passes[0].steps[0].decision, "-> 10 SPOOF_GUARD");
        assert!(
            passes[0].steps[2]
                .decision
                .starts_with("conntrack, un-NAT replies, recirculate to 21 CONNTRACK_STATE")
        );
        assert_eq!(passes[0].steps[0].flow_match.as_deref(), Some("in_port=17"));
        assert_eq!(
            decide(&passes, "br-int", &names()),
            Decision::Output {
                port: 16,
                port_name: Some("sy3420ab2e92c".into())
            }
        );
    }

    #[test]
    fn a_service_without_endpoints_ends_at_the_controller() {
        let passes = parse(REJECT, "br-int");
        assert_eq!(passes.len(), 2);
        let last = passes[1].steps.last().unwrap();
        assert_eq!(last.table_name, "SERVICE_LB");
        assert_eq!(last.decision, "to the controller (reject)");
        assert_eq!(decide(&passes, "br-int", &names()), Decision::Controller);
    }

    #[test]
    fn a_cross_node_packet_leaves_through_the_tunnel() {
        let passes = parse(CROSS, "br-int");
        let last = passes.last().unwrap();
        let ul = last.steps.last().unwrap();
        assert_eq!(ul.bridge, "br-ul");
        assert_eq!(ul.table_name, "br-ul table 0");
        assert_eq!(ul.owner, None);
        let l3 = last.steps.iter().find(|s| s.table == 40).unwrap();
        assert!(
            l3.decision.contains("tunnel to 10.252.77.2"),
            "{}",
            l3.decision
        );
        assert_eq!(
            decide(&passes, "br-int", &names()),
            Decision::Tunnel {
                remote: Some("10.252.77.2".into())
            }
        );
    }

    #[test]
    fn no_match_is_a_drop() {
        let text = "Flow: in_port=99\n\nbridge(\"br-int\")\n----------------\n 0. No match.\n    drop\n\nFinal flow: unchanged\nMegaflow: recirc_id=0\nDatapath actions: drop\n";
        let passes = parse(text, "br-int");
        assert_eq!(passes[0].steps[0].flow_match, None);
        assert_eq!(passes[0].steps[0].decision, "no flow matched: drop");
        assert_eq!(decide(&passes, "br-int", &names()), Decision::Drop);
    }
}
