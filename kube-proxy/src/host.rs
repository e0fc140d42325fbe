//! The host side of the external frontends: how traffic to a node port, an
//! external IP or a LoadBalancer address gets from the node's network stack
//! into `br-int` (where [`crate::external`]'s flows balance it).
//!
//! - One nftables table, `ip switchyard-proxy` ([`TABLE`]), owned by the
//!   proxy and replaced as a whole in one atomic `nft -f -` transaction
//!   ([`HostRules::nft_script`]: add, delete and redefine the table); the
//!   host's other tables are never touched. Sets, not a rule per Service:
//!   - `prerouting` (nat, dstnat): `ip daddr @nodeport_addresses` and
//!     `meta l4proto . th dport @nodeports_local` -> `dnat to`
//!     [`NODEPORT_VIP_LOCAL`]; `... @nodeports_cluster` -> `dnat to`
//!     [`NODEPORT_VIP_CLUSTER`] (the port is unchanged);
//!   - `output` (nat, dstnat): the node's own connections to a node port,
//!     whatever its traffic policy, -> [`NODEPORT_VIP_CLUSTER`] (the node
//!     uses every endpoint);
//!   - `source_ranges` (filter, prerouting, before dstnat): a LoadBalancer
//!     address of a port with `loadBalancerSourceRanges`, `@source_range_targets`
//!     (`address . protocol . port`), from a source outside its ranges
//!     (`@source_ranges_allowed`, an interval set of `address . protocol .
//!     port . source prefix`), not from `sy-gw0` -> `drop`. The node's own
//!     connections are not filtered (pods are, in `br-int`);
//!   - `postrouting` (nat, srcnat): to [`NODEPORT_VIP_CLUSTER`], or to an
//!     `address . protocol . port` of `@external_masquerade` (external and
//!     LoadBalancer IPs of `externalTrafficPolicy: Cluster` ports), out of
//!     `sy-gw0` and not in from `sy-gw0` -> `masquerade` (the source becomes
//!     the gateway address, so an endpoint on another node replies through
//!     this node, which un-NATs the reply). ETP Local traffic is not
//!     masqueraded: the endpoint sees the client's address. And anything
//!     from [`OUTSIDE_SNAT_IP`] -> `masquerade`: a Service connection of the
//!     gateway port that `br-int` DNATed to an endpoint outside the pod
//!     networks and sent back out of `sy-gw0` SNATed to that address
//!     ([`crate::flows::outside_flows`]) leaves with the address of the
//!     interface it goes out of (the node's underlay address; the gateway
//!     address when it goes into `sy-gw0` again, to a node port of this node).
//! - Routes ([`sync_routes`]): [`NODEPORT_VIP_CLUSTER`], [`NODEPORT_VIP_LOCAL`],
//!   [`OUTSIDE_SNAT_IP`] (the un-masqueraded replies of those connections;
//!   `src` = the first node-port address, [`HostRules::route_sources`])
//!   and every external or LoadBalancer IP with a frontend `via
//!   169.254.169.253 dev sy-gw0 onlink` (the next hop OVS answers ARP for,
//!   as for the Service CIDR), tagged with [`ROUTE_PROTOCOL`]; only routes
//!   with that tag are ever deleted. They are re-applied every
//!   [`REFRESH`] (a restarted `ovs-vswitchd` recreates `sy-gw0` without
//!   them). Forwarding (`net.ipv4.ip_forward=1`) must be on in the node,
//!   as for pod egress; the proxy does not change it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use switchyard_pipeline::OUTSIDE_SNAT_IP;

use crate::external::{NODEPORT_VIP_CLUSTER, NODEPORT_VIP_LOCAL, NodeContext};
use crate::service_model::{DesiredState, Protocol};

/// The proxy's nftables table (family `ip`).
pub const TABLE: &str = "switchyard-proxy";

/// The node's gateway port (the agent creates it).
pub const GATEWAY_PORT: &str = "sy-gw0";

/// The fixed next hop whose ARP OVS answers (the agent routes the Service
/// CIDR through it too).
pub const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);

/// Route protocol number of the proxy's routes (`ip route` shows
/// `proto 0x54`; the agent's are `0x53`).
pub const ROUTE_PROTOCOL: u8 = 0x54;

/// How often the routes are re-applied without a change.
pub const REFRESH: Duration = Duration::from_secs(10);

/// What the host must hold for a desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRules {
    /// Node addresses serving node ports.
    pub nodeport_addresses: BTreeSet<Ipv4Addr>,
    /// Node ports of `externalTrafficPolicy: Cluster` ports.
    pub nodeports_cluster: BTreeSet<(Protocol, u16)>,
    /// Node ports of `externalTrafficPolicy: Local` ports.
    pub nodeports_local: BTreeSet<(Protocol, u16)>,
    /// External and LoadBalancer IPs of ETP Cluster ports, masqueraded.
    pub external_masquerade: BTreeSet<(Ipv4Addr, Protocol, u16)>,
    /// LoadBalancer `address . protocol . port` with source ranges.
    pub source_range_targets: BTreeSet<(Ipv4Addr, Protocol, u16)>,
    /// Their allowed sources.
    pub source_ranges_allowed: BTreeSet<(Ipv4Addr, Protocol, u16, ipnet::Ipv4Net)>,
    /// Addresses routed into `sy-gw0`: the node-port VIPs,
    /// [`OUTSIDE_SNAT_IP`] and every external and LoadBalancer IP.
    pub routes: BTreeSet<Ipv4Addr>,
    /// Preferred source addresses of some of [`Self::routes`]: the node's
    /// first node-port address for [`OUTSIDE_SNAT_IP`], so a server of the
    /// node itself (an endpoint on the node's address) that answers from an
    /// unbound UDP socket answers from that address, as it was asked, and
    /// not from the gateway address the route's device would give.
    pub route_sources: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

fn nft_proto(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn elements<T>(out: &mut String, items: impl IntoIterator<Item = T>, show: impl Fn(T) -> String) {
    let items: Vec<String> = items.into_iter().map(show).collect();
    if !items.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(", "));
    }
}

impl HostRules {
    /// The rules of `state` on a node described by `node`.
    pub fn of(state: &DesiredState, node: &NodeContext) -> Self {
        let mut rules = Self {
            nodeport_addresses: node.addresses.iter().copied().collect(),
            routes: BTreeSet::from([NODEPORT_VIP_CLUSTER, NODEPORT_VIP_LOCAL, OUTSIDE_SNAT_IP]),
            route_sources: node
                .addresses
                .first()
                .map(|a| BTreeMap::from([(OUTSIDE_SNAT_IP, *a)]))
                .unwrap_or_default(),
            ..Self::default()
        };
        for (_, port) in state.iter() {
            let ext = &port.external;
            if let Some(np) = ext.node_port {
                if ext.local {
                    rules.nodeports_local.insert((port.protocol, np));
                } else {
                    rules.nodeports_cluster.insert((port.protocol, np));
                }
            }
            for ip in &ext.ranged_ips {
                rules
                    .source_range_targets
                    .insert((*ip, port.protocol, port.port));
                for range in &ext.source_ranges {
                    rules
                        .source_ranges_allowed
                        .insert((*ip, port.protocol, port.port, *range));
                }
            }
            for ip in &ext.ips {
                rules.routes.insert(*ip);
                if !ext.local {
                    rules
                        .external_masquerade
                        .insert((*ip, port.protocol, port.port));
                }
            }
        }
        rules
    }

    /// The `nft -f -` script that replaces the proxy's table with these
    /// rules in one transaction.
    pub fn nft_script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table ip {TABLE}");
        let _ = writeln!(s, "delete table ip {TABLE}");
        let _ = writeln!(s, "table ip {TABLE} {{");
        s.push_str("\tset nodeport_addresses {\n\t\ttype ipv4_addr\n");
        elements(&mut s, &self.nodeport_addresses, |a| a.to_string());
        s.push_str("\t}\n");
        for (name, ports) in [
            ("nodeports_cluster", &self.nodeports_cluster),
            ("nodeports_local", &self.nodeports_local),
        ] {
            let _ = writeln!(s, "\tset {name} {{\n\t\ttype inet_proto . inet_service");
            elements(&mut s, ports, |(p, n)| format!("{} . {n}", nft_proto(*p)));
            s.push_str("\t}\n");
        }
        s.push_str("\tset external_masquerade {\n\t\ttype ipv4_addr . inet_proto . inet_service\n");
        elements(&mut s, &self.external_masquerade, |(a, p, n)| {
            format!("{a} . {} . {n}", nft_proto(*p))
        });
        s.push_str("\t}\n");
        s.push_str(
            "\tset source_range_targets {\n\t\ttype ipv4_addr . inet_proto . inet_service\n",
        );
        elements(&mut s, &self.source_range_targets, |(a, p, n)| {
            format!("{a} . {} . {n}", nft_proto(*p))
        });
        s.push_str("\t}\n");
        s.push_str(
            "\tset source_ranges_allowed {\n\t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr\n\t\tflags interval\n",
        );
        elements(&mut s, &self.source_ranges_allowed, |(a, p, n, r)| {
            format!("{a} . {} . {n} . {r}", nft_proto(*p))
        });
        s.push_str("\t}\n");
        let target = "ip daddr . meta l4proto . th dport";
        let _ = writeln!(
            s,
            "\tchain source_ranges {{\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n\
             \t\tiifname != \"{GATEWAY_PORT}\" {target} @source_range_targets {target} . ip saddr != @source_ranges_allowed drop\n\t}}"
        );
        let nodeport = "ip daddr @nodeport_addresses meta l4proto . th dport";
        let _ = writeln!(
            s,
            "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\t{nodeport} @nodeports_local dnat to {NODEPORT_VIP_LOCAL}\n\
             \t\t{nodeport} @nodeports_cluster dnat to {NODEPORT_VIP_CLUSTER}\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
             \t\t{nodeport} @nodeports_local dnat to {NODEPORT_VIP_CLUSTER}\n\
             \t\t{nodeport} @nodeports_cluster dnat to {NODEPORT_VIP_CLUSTER}\n\t}}"
        );
        let out = format!("oifname \"{GATEWAY_PORT}\" iifname != \"{GATEWAY_PORT}\"");
        let _ = writeln!(
            s,
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\t{out} ip daddr {NODEPORT_VIP_CLUSTER} masquerade\n\
             \t\t{out} ip daddr . meta l4proto . th dport @external_masquerade masquerade\n\
             \t\tip saddr {OUTSIDE_SNAT_IP} masquerade\n\t}}"
        );
        s.push_str("}\n");
        s
    }
}

/// Errors of the host side.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("running nft: {0}")]
    NftSpawn(#[source] std::io::Error),
    #[error("nft -f - failed: {0}")]
    Nft(String),
    #[error("{what}: {source}")]
    Route {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening netlink: {0}")]
    Netlink(#[source] std::io::Error),
}

/// Runs `nft -f -` (`nft` from PATH) with `script` (with `check`: `nft -c`,
/// nothing is changed).
pub fn run_nft(script: &str, check: bool) -> Result<(), HostError> {
    let mut cmd = Command::new("nft");
    if check {
        cmd.arg("-c");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HostError::NftSpawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(HostError::NftSpawn)?;
    }
    let out = child.wait_with_output().map_err(HostError::NftSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// An installed route of the proxy: output interface and preferred source.
type Installed = (u32, Option<Ipv4Addr>);

/// The proxy's routes in the main table: destination -> output interface
/// and preferred source.
async fn own_routes(
    handle: &rtnetlink::Handle,
) -> Result<BTreeMap<Ipv4Addr, Installed>, HostError> {
    let mut routes = handle
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = BTreeMap::new();
    while let Some(msg) = routes.try_next().await.map_err(|source| HostError::Route {
        what: "listing routes".into(),
        source,
    })? {
        if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
            || msg.header.destination_prefix_length != 32
        {
            continue;
        }
        let dst = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let oif = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let source = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(dst) = dst {
            out.insert(dst, (oif.unwrap_or(0), source));
        }
    }
    Ok(out)
}

fn route_message(
    ip: Ipv4Addr,
    (index, source): Installed,
) -> netlink_packet_route::route::RouteMessage {
    let builder = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .gateway(NEXT_HOP)
        .output_interface(index)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .onlink();
    match source {
        Some(source) => builder.pref_source(source).build(),
        None => builder.build(),
    }
}

/// Makes the proxy's routes exactly `wanted` (each `via` [`NEXT_HOP`] `dev`
/// [`GATEWAY_PORT`] `onlink`, with the preferred source of `sources` if it
/// has one): adds (replaces) those missing, on another interface or with
/// another source, deletes the proxy's other routes. Nothing to do (Ok)
/// while `sy-gw0` does not exist.
pub async fn sync_routes(
    handle: &rtnetlink::Handle,
    wanted: &BTreeSet<Ipv4Addr>,
    sources: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) -> Result<(), HostError> {
    let link = handle
        .link()
        .get()
        .match_name(GATEWAY_PORT.to_string())
        .execute()
        .try_next()
        .await;
    let index = match link {
        Ok(Some(link)) => link.header.index,
        Ok(None) => return Ok(()),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.to_io().raw_os_error() == Some(libc::ENODEV) =>
        {
            return Ok(());
        }
        Err(source) => {
            return Err(HostError::Route {
                what: format!("looking up {GATEWAY_PORT}"),
                source,
            });
        }
    };
    let own = own_routes(handle).await?;
    for (&ip, &installed) in &own {
        if !wanted.contains(&ip) {
            match handle
                .route()
                .del(route_message(ip, installed))
                .execute()
                .await
            {
                Ok(()) => debug!(%ip, "route removed"),
                Err(source) => {
                    return Err(HostError::Route {
                        what: format!("deleting the route to {ip}"),
                        source,
                    });
                }
            }
        }
    }
    // Only what is missing or points elsewhere (one request per route,
    // thousands with many LoadBalancer IPs).
    for (ip, route) in wanted
        .iter()
        .map(|ip| (ip, (index, sources.get(ip).copied())))
        .filter(|(ip, route)| own.get(ip) != Some(route))
    {
        handle
            .route()
            .add(route_message(*ip, route))
            .replace()
            .execute()
            .await
            .map_err(|source| HostError::Route {
                what: format!("routing {ip} via {NEXT_HOP} dev {GATEWAY_PORT}"),
                source,
            })?;
    }
    Ok(())
}

/// Keeps the host in line with the latest desired state: the nftables
/// table (replaced when its text changes, and every [`REFRESH`] when it
/// failed) and the routes (re-applied on every change and every
/// [`REFRESH`]), from the first state on. Returns when `states` closes.
pub async fn run(node: Arc<NodeContext>, mut states: watch::Receiver<Option<Arc<DesiredState>>>) {
    let handle = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            tokio::spawn(connection);
            Some(handle)
        }
        Err(err) => {
            warn!(error = %HostError::Netlink(err), "no netlink: external IP and node port routes are not managed");
            None
        }
    };
    let mut applied: Option<String> = None;
    // Nothing is applied before the first desired state (sent once both
    // initial lists are complete): a restarted proxy must not replace the
    // previous one's table and routes with empty ones meanwhile, which would
    // stop every node port and external address until then.
    let mut rules = loop {
        if let Some(state) = states.borrow_and_update().clone() {
            break HostRules::of(&state, &node);
        }
        if states.changed().await.is_err() {
            return;
        }
    };
    loop {
        if let Some(state) = states.borrow_and_update().clone() {
            rules = HostRules::of(&state, &node);
        }
        let script = rules.nft_script();
        if applied.as_deref() != Some(script.as_str()) {
            let to_run = script.clone();
            match tokio::task::spawn_blocking(move || run_nft(&to_run, false)).await {
                Ok(Ok(())) => {
                    info!(
                        nodeports = rules.nodeports_cluster.len() + rules.nodeports_local.len(),
                        masqueraded_external_ips = rules.external_masquerade.len(),
                        "nftables table {TABLE} replaced"
                    );
                    applied = Some(script);
                }
                Ok(Err(err)) => warn!(%err, "nftables table {TABLE} not replaced; retrying"),
                Err(err) => warn!(%err, "nft task failed"),
            }
        }
        if let Some(handle) = &handle
            && let Err(err) = sync_routes(handle, &rules.routes, &rules.route_sources).await
        {
            warn!(%err, "proxy routes not in place yet");
        }
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}
