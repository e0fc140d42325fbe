//! `service NS/NAME`: per Service port, the ClusterIP frontend flows with
//! counters, the select group (and chained sub-groups) with buckets and
//! per-bucket counters, learned session-affinity entries, and which
//! endpoints this node's proxy uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use switchyard_ovs::openflow::{Action, Bucket, Field, Group, GroupStats, fmt_actions};
use switchyard_pipeline::table;

use crate::Error;
use crate::flows::{FlowView, match_value};
use crate::kube::api_err;
use crate::output::{Render, Table};
use crate::ovs::Ovs;

/// What one bucket leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketTarget {
    /// DNAT (directly or, with session affinity, through ENDPOINT_DNAT) to an endpoint.
    Endpoint(String),
    /// A chained sub-group.
    Group(u32),
    /// Something else (the actions say what).
    Other,
}

/// A bucket with its counters.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    /// Bucket id.
    pub bucket_id: u32,
    /// Weight.
    pub weight: Option<u16>,
    /// Where it leads.
    pub target: BucketTarget,
    /// Packets through it.
    pub packets: u64,
    /// Bytes through it.
    pub bytes: u64,
    /// Its actions.
    pub actions: String,
}

/// A group with its counters.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// Group id.
    pub group_id: u32,
    /// The port's group, or a sub-group of it (chained groups).
    pub parent: Option<u32>,
    /// Type and selection method.
    pub kind: String,
    /// Packets through the group.
    pub packets: u64,
    /// Buckets.
    pub buckets: Vec<BucketView>,
}

/// A learned affinity entry (SESSION_AFFINITY).
#[derive(Debug, Clone, Serialize)]
pub struct AffinityEntry {
    /// The client address.
    pub client: String,
    /// The remembered endpoint.
    pub endpoint: String,
    /// Idle timeout in seconds.
    pub idle_timeout: u16,
    /// Packets that used it.
    pub packets: u64,
}

/// An endpoint from the EndpointSlices and whether this node uses it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointUse {
    /// `IP:PORT`.
    pub endpoint: String,
    /// The endpoint's node.
    pub node: Option<String>,
    /// `ready` condition.
    pub ready: bool,
    /// `serving` condition.
    pub serving: bool,
    /// `terminating` condition.
    pub terminating: bool,
    /// Whether a bucket of this node's group leads to it.
    pub used_here: bool,
    /// Packets of the buckets leading to it.
    pub packets: u64,
}

/// One Service port.
#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    /// Port name.
    pub name: String,
    /// Protocol.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// Target port as written in the Service.
    pub target_port: String,
    /// What a new connection meets: `group N`, `reject`, `drop`, or `not programmed`.
    pub decision: String,
    /// Frontend flows (SERVICE_LB) with counters.
    pub frontends: Vec<FlowView>,
    /// The port's group and its sub-groups.
    pub groups: Vec<GroupView>,
    /// Learned affinity entries.
    pub affinity: Vec<AffinityEntry>,
    /// The endpoints of the EndpointSlices and their use here.
    pub endpoints: Vec<EndpointUse>,
}

/// What `service` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Type.
    pub service_type: String,
    /// ClusterIPs.
    pub cluster_ips: Vec<String>,
    /// `ClientIP` affinity timeout, if any.
    pub session_affinity_seconds: Option<i32>,
    /// Ports.
    pub ports: Vec<PortReport>,
}

fn u32_of(v: u128) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// Where a bucket's actions lead.
pub fn bucket_target(bucket: &Bucket) -> BucketTarget {
    let mut reg3 = None;
    let mut reg4 = None;
    for a in &bucket.actions {
        match a {
            Action::Group(g) => return BucketTarget::Group(*g),
            Action::Ct(ct) => {
                if let Some(nat) = &ct.nat
                    && nat.dst == Some(true)
                    && let Some((ip, _)) = nat.addrs
                {
                    return BucketTarget::Endpoint(match nat.ports {
                        Some((p, _)) => format!("{ip}:{p}"),
                        None => ip.to_string(),
                    });
                }
            }
            Action::SetField(m) if m.field == Field::Reg(3) => reg3 = Some(u32_of(m.value)),
            Action::SetField(m) if m.field == Field::Reg(4) => {
                let shift = m
                    .mask
                    .map(|mask| u32_of(mask).trailing_zeros())
                    .unwrap_or(0);
                reg4 = Some((u32_of(m.value) >> shift) & 0xffff);
            }
            _ => {}
        }
    }
    match (reg3, reg4) {
        (Some(ip), Some(port)) => BucketTarget::Endpoint(format!("{}:{port}", Ipv4Addr::from(ip))),
        (Some(ip), None) => BucketTarget::Endpoint(Ipv4Addr::from(ip).to_string()),
        _ => BucketTarget::Other,
    }
}

/// A group and, recursively, the sub-groups its buckets lead to.
pub fn group_tree(
    root: u32,
    groups: &BTreeMap<u32, &Group>,
    stats: &BTreeMap<u32, &GroupStats>,
) -> Vec<GroupView> {
    let mut out = Vec::new();
    let mut queue = vec![(root, None)];
    let mut seen = BTreeSet::new();
    while let Some((id, parent)) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(g) = groups.get(&id) else { continue };
        let st = stats.get(&id);
        let kind = match &g.selection {
            Some(s) => format!("{},selection_method={}", g.group_type.name(), s.method),
            None => g.group_type.name().to_string(),
        };
        let buckets: Vec<BucketView> = g
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (packets, bytes) = st.and_then(|s| s.buckets.get(i)).copied().unwrap_or((0, 0));
                BucketView {
                    bucket_id: b.bucket_id,
                    weight: b.weight,
                    target: bucket_target(b),
                    packets,
                    bytes,
                    actions: fmt_actions(&b.actions),
                }
            })
            .collect();
        for b in buckets.iter().rev() {
            if let BucketTarget::Group(sub) = b.target {
                queue.push((sub, Some(id)));
            }
        }
        out.push(GroupView {
            group_id: id,
            parent,
            kind,
            packets: st.map(|s| s.packet_count).unwrap_or(0),
            buckets,
        });
    }
    out
}

fn hex_to_u32(v: &str) -> Option<u32> {
    let v = v.split('/').next()?;
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A learned SESSION_AFFINITY flow's client and endpoint.
pub fn affinity_entry(f: &FlowView) -> Option<AffinityEntry> {
    let client = match_value(&f.matches, "nw_src")?.to_string();
    let mut ip = None;
    let mut port = None;
    for a in f.actions.split(',') {
        if let Some((value, dst)) = a
            .strip_prefix("set_field:")
            .and_then(|s| s.split_once("->"))
        {
            let value = hex_to_u32(value);
            if dst == "reg3" {
                ip = value;
            } else if dst.starts_with("reg4") {
                port = value.map(|v| v & 0xffff);
            }
        } else if let Some((value, dst)) = a.strip_prefix("load:").and_then(|s| s.split_once("->"))
        {
            let value = hex_to_u32(value);
            if dst.starts_with("NXM_NX_REG3") {
                ip = value;
            } else if dst.starts_with("NXM_NX_REG4") {
                port = value.map(|v| v & 0xffff);
            }
        }
    }
    let endpoint = match (ip, port) {
        (Some(ip), Some(p)) => format!("{}:{p}", Ipv4Addr::from(ip)),
        (Some(ip), None) => Ipv4Addr::from(ip).to_string(),
        _ => f.actions.clone(),
    };
    Some(AffinityEntry {
        client,
        endpoint,
        idle_timeout: f.idle_timeout,
        packets: f.packets,
    })
}

/// What a frontend flow decides.
fn decision(f: &FlowView) -> Option<String> {
    if f.actions.contains("controller") {
        Some("reject (no endpoints: ICMP port unreachable)".into())
    } else if let Some(g) = f.actions.split(',').find_map(|a| a.strip_prefix("group:")) {
        Some(format!("group {g}"))
    } else if f.actions.contains("resubmit") {
        Some("session affinity, then group".into())
    } else if f.actions.is_empty() || f.actions == "drop" || f.actions.starts_with("note:") {
        Some("drop (no local endpoints)".into())
    } else {
        None
    }
}

/// Runs `service`.
pub async fn run(
    ovs: &Ovs,
    kube: ::kube::Client,
    ns: &str,
    name: &str,
) -> Result<ServiceReport, Error> {
    let services: ::kube::Api<Service> = ::kube::Api::namespaced(kube.clone(), ns);
    let svc = services
        .get_opt(name)
        .await
        .map_err(api_err(format!("get service {ns}/{name}")))?
        .ok_or_else(|| Error::NotFound(format!("service {ns}/{name} does not exist")))?;
    let slices: ::kube::Api<EndpointSlice> = ::kube::Api::namespaced(kube, ns);
    let slices = slices
        .list(
            &::kube::api::ListParams::default()
                .labels(&format!("kubernetes.io/service-name={name}")),
        )
        .await
        .map_err(api_err(format!("list endpointslices of {ns}/{name}")))?
        .items;
    let spec = svc.spec.unwrap_or_default();
    let cluster_ips: Vec<String> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<IpAddr>().is_ok())
        .collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10800)
    });

    let of = ovs.openflow().await?;
    let flows: Vec<FlowView> = ovs.flows(&of).await?.iter().map(FlowView::new).collect();
    let groups = ovs.groups(&of).await?;
    let stats = ovs.group_stats(&of).await?;
    let groups: BTreeMap<u32, &Group> = groups.iter().map(|g| (g.group_id, g)).collect();
    let stats: BTreeMap<u32, &GroupStats> = stats.iter().map(|s| (s.group_id, s)).collect();

    let mut ports = Vec::new();
    for p in spec.ports.unwrap_or_default() {
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let proto_kw = protocol.to_lowercase();
        let port = u16::try_from(p.port).unwrap_or(0);
        let is_frontend = |f: &FlowView| {
            cluster_ips.iter().any(|ip| f.matches_field("nw_dst", ip))
                && f.matches_dst_port(&proto_kw, port)
                && match_value(&f.matches, &proto_kw).is_some()
        };
        let frontends: Vec<FlowView> = flows
            .iter()
            .filter(|f| f.table == table::SERVICE_LB.id() && f.owner == "proxy" && is_frontend(f))
            .cloned()
            .collect();
        let group_ids: BTreeSet<u32> = frontends
            .iter()
            .filter_map(|f| f.object)
            .filter(|g| groups.contains_key(g))
            .collect();
        let mut port_groups = Vec::new();
        for g in &group_ids {
            port_groups.extend(group_tree(*g, &groups, &stats));
        }
        let affinity_entries: Vec<AffinityEntry> = flows
            .iter()
            .filter(|f| {
                f.table == table::SESSION_AFFINITY.id()
                    && f.owner == "proxy"
                    && is_frontend(f)
                    && match_value(&f.matches, "nw_src").is_some()
            })
            .filter_map(affinity_entry)
            .collect();
        let decision = frontends
            .iter()
            .filter_map(decision)
            .find(|d| d.starts_with("group") || d.starts_with("reject") || d.starts_with("drop"))
            .or_else(|| frontends.iter().find_map(decision))
            .unwrap_or_else(|| "not programmed on this node (no SERVICE_LB flow)".into());
        // Endpoints of this port from the slices (by port name).
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for g in &port_groups {
            for b in &g.buckets {
                if let BucketTarget::Endpoint(e) = &b.target {
                    *used.entry(e.clone()).or_default() += b.packets;
                }
            }
        }
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in &slices {
            let Some(sp) = slice
                .ports
                .iter()
                .flatten()
                .find(|sp| sp.name.clone().unwrap_or_default() == port_name)
            else {
                continue;
            };
            let Some(target) = sp.port else { continue };
            for ep in &slice.endpoints {
                let cond = ep.conditions.clone().unwrap_or_default();
                for addr in &ep.addresses {
                    let key = format!("{addr}:{target}");
                    endpoints.push(EndpointUse {
                        used_here: used.contains_key(&key),
                        packets: used.get(&key).copied().unwrap_or(0),
                        endpoint: key,
                        node: ep.node_name.clone(),
                        ready: cond.ready.unwrap_or(true),
                        serving: cond.serving.unwrap_or(cond.ready.unwrap_or(true)),
                        terminating: cond.terminating.unwrap_or(false),
                    });
                }
            }
        }
        endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        ports.push(PortReport {
            name: port_name,
            protocol,
            port,
            target_port: p
                .target_port
                .map(|t| match t {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => {
                        i.to_string()
                    }
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                })
                .unwrap_or_else(|| port.to_string()),
            decision,
            frontends,
            groups: port_groups,
            affinity: affinity_entries,
            endpoints,
        });
    }
    Ok(ServiceReport {
        namespace: ns.to_string(),
        name: name.to_string(),
        service_type: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
        cluster_ips,
        session_affinity_seconds: affinity,
        ports,
    })
}

impl Render for ServiceReport {
    fn render(&self) -> String {
        let mut out = format!(
            "Service:    {}/{}\nType:       {}\nClusterIP:  {}\nAffinity:   {}\n",
            self.namespace,
            self.name,
            self.service_type,
            if self.cluster_ips.is_empty() {
                "None".to_string()
            } else {
                self.cluster_ips.join(",")
            },
            self.session_affinity_seconds
                .map(|s| format!("ClientIP ({s} s)"))
                .unwrap_or_else(|| "None".into())
        );
        for p in &self.ports {
            out.push_str(&format!(
                "\nPort {} {}/{} -> {}: {}\n",
                if p.name.is_empty() {
                    "<unnamed>"
                } else {
                    &p.name
                },
                p.port,
                p.protocol,
                p.target_port,
                p.decision
            ));
            out.push_str("  Frontends (table 31 SERVICE_LB):\n");
            let mut t = Table::new(&["priority", "packets", "match", "actions"]);
            for f in &p.frontends {
                t.row([
                    f.priority.to_string(),
                    f.packets.to_string(),
                    f.matches.clone(),
                    f.actions.clone(),
                ]);
            }
            out.push_str(&t.render_indented(4));
            for g in &p.groups {
                out.push_str(&format!(
                    "  Group {}{} ({}, {} packets):\n",
                    g.group_id,
                    g.parent
                        .map(|p| format!(" (sub-group of {p})"))
                        .unwrap_or_default(),
                    g.kind,
                    g.packets
                ));
                let mut t = Table::new(&["bucket", "weight", "target", "packets", "bytes"]);
                for b in &g.buckets {
                    t.row([
                        b.bucket_id.to_string(),
                        b.weight.map(|w| w.to_string()).unwrap_or_default(),
                        match &b.target {
                            BucketTarget::Endpoint(e) => e.clone(),
                            BucketTarget::Group(g) => format!("group {g}"),
                            BucketTarget::Other => b.actions.clone(),
                        },
                        b.packets.to_string(),
                        b.bytes.to_string(),
                    ]);
                }
                out.push_str(&t.render_indented(4));
            }
            if !p.affinity.is_empty() {
                out.push_str("  Affinity (table 30 SESSION_AFFINITY, learned):\n");
                let mut t = Table::new(&["client", "endpoint", "idle-timeout", "packets"]);
                for a in &p.affinity {
                    t.row([
                        a.client.clone(),
                        a.endpoint.clone(),
                        a.idle_timeout.to_string(),
                        a.packets.to_string(),
                    ]);
                }
                out.push_str(&t.render_indented(4));
            }
            out.push_str("  Endpoints (EndpointSlices):\n");
            let mut t = Table::new(&[
                "endpoint",
                "node",
                "ready",
                "serving",
                "terminating",
                "used-here",
                "packets",
            ]);
            for e in &p.endpoints {
                t.row([
                    e.endpoint.clone(),
                    e.node.clone().unwrap_or_default(),
                    e.ready.to_string(),
                    e.serving.to_string(),
                    e.terminating.to_string(),
                    if e.used_here { "yes" } else { "no" }.to_string(),
                    e.packets.to_string(),
                ]);
            }
            if t.is_empty() {
                out.push_str("    none\n");
            } else {
                out.push_str(&t.render_indented(4));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_ovs::openflow::{Ct, MatchField, Nat};

    #[test]
    fn buckets_lead_to_endpoints_or_sub_groups() {
        let dnat = Bucket::new(
            0,
            vec![Action::Ct(Ct {
                commit: true,
                nat: Some(Nat::dst(
                    IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)),
                    Some(8080),
                )),
                ..Ct::default()
            })],
        );
        assert_eq!(
            bucket_target(&dnat),
            BucketTarget::Endpoint("10.244.1.5:8080".into())
        );
        let chained = Bucket::new(1, vec![Action::Group(0x0100_0005)]);
        assert_eq!(bucket_target(&chained), BucketTarget::Group(0x0100_0005));
        let affinity = Bucket::new(
            2,
            vec![
                Action::SetField(MatchField::exact(
                    Field::Reg(3),
                    u128::from(u32::from(Ipv4Addr::new(10, 244, 2, 7))),
                )),
                Action::SetField(MatchField::masked(Field::Reg(4), 0x2_1f90, 0x3_ffff)),
            ],
        );
        assert_eq!(
            bucket_target(&affinity),
            BucketTarget::Endpoint("10.244.2.7:8080".into())
        );
    }

    #[test]
    fn chained_groups_are_followed_with_their_counters() {
        let top = Group::new(
            5,
            switchyard_ovs::openflow::GroupType::Select,
            vec![
                vec![Action::Group(0x0100_0005)],
                vec![Action::Group(0x0200_0005)],
            ],
        );
        let sub = |id| {
            Group::new(
                id,
                switchyard_ovs::openflow::GroupType::Select,
                vec![vec![]],
            )
        };
        let (s1, s2) = (sub(0x0100_0005), sub(0x0200_0005));
        let groups: BTreeMap<u32, &Group> = [(5, &top), (0x0100_0005, &s1), (0x0200_0005, &s2)]
            .into_iter()
            .collect();
        let st = GroupStats {
            group_id: 5,
            ref_count: 1,
            packet_count: 9,
            byte_count: 0,
            buckets: vec![(4, 0), (5, 0)],
        };
        let stats: BTreeMap<u32, &GroupStats> = [(5, &st)].into_iter().collect();
        let tree = group_tree(5, &groups, &stats);
        assert_eq!(
            tree.iter().map(|g| g.group_id).collect::<Vec<_>>(),
            vec![5, 0x0100_0005, 0x0200_0005]
        );
        assert_eq!(tree[0].packets, 9);
        assert_eq!(tree[0].buckets[1].packets, 5);
        assert_eq!(tree[1].parent, Some(5));
    }

    #[test]
    fn learned_affinity_flows_name_client_and_endpoint() {
        let f = FlowView {
            table: 30,
            table_name: "SESSION_AFFINITY".into(),
            priority: 200,
            owner: "proxy".into(),
            cookie: "0x5359020000000005".into(),
            object: Some(5),
            packets: 2,
            bytes: 0,
            idle_timeout: 10800,
            matches: "tcp,reg4=0x10000/0x30000,nw_src=10.244.1.9,nw_dst=10.96.0.20,tp_dst=80"
                .into(),
            actions: "load:0xaf40205->NXM_NX_REG3[],load:0x21f90->NXM_NX_REG4[0..17]".into(),
        };
        let e = affinity_entry(&f).unwrap();
        assert_eq!(e.client, "10.244.1.9");
        assert_eq!(e.endpoint, "10.244.2.5:8080");
    }
}
