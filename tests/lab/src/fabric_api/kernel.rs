//! Routes in the fabric namespace's kernel, over netlink: one route per network in the main
//! table, a multipath (ECMP) route when it has more than one next hop.
//!
//! SNAT rules go into the nftables table [`NAT_TABLE`] (owned by the fabric API, replaced as
//! a whole in one `nft -f -` transaction on every change): in its `postrouting` chain,
//! `oifname <out> ip saddr { <sources> } snat to <address>`, so only traffic leaving toward
//! the internet is translated (traffic between the fabric's VLANs keeps its addresses).
//!
//! The fabric API runs inside the fabric namespace (`ip netns exec`), so its netlink socket and
//! the `nft` it runs are that namespace's: no `setns` anywhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol,
};
use rtnetlink::RouteMessageBuilder;

use super::store::{Kernel, Snat};

/// The nftables table of the fabric API's SNAT rules (`nft list table ip switchyard-fabric-nat`).
pub const NAT_TABLE: &str = "switchyard-fabric-nat";

/// The whole [`NAT_TABLE`] for `rules`, as one `nft -f -` script that replaces what is there.
pub fn nat_script(out_interface: &str, rules: &[Snat]) -> String {
    use std::fmt::Write;
    let mut s = format!("table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\n");
    let _ = writeln!(s, "table ip {NAT_TABLE} {{");
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for r in rules {
        let sources = r
            .sources
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "\t\toifname \"{out_interface}\" ip saddr {{ {sources} }} snat to {} comment \"{}\"",
            r.translated, r.id
        );
    }
    s.push_str("\t}\n}\n");
    s
}

/// Routes written by the fabric API carry this protocol (`ip route` shows `proto static`).
const PROTO: RouteProtocol = RouteProtocol::Static;
const MAIN_TABLE: u32 = 254;

/// The kernel of the namespace this process runs in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// Interface toward the internet: SNAT rules apply to traffic leaving through it.
    nat_out: String,
}

impl Netlink {
    /// Opens a netlink connection (spawned on the current tokio runtime); SNAT rules apply to
    /// traffic leaving through `nat_out`.
    pub fn open(nat_out: &str) -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            nat_out: nat_out.to_string(),
        })
    }

    /// The route message; next hops of the other address family are refused.
    fn message(network: IpNet, next_hops: &[IpAddr]) -> Result<RouteMessage, String> {
        if let Some(h) = next_hops
            .iter()
            .find(|h| h.is_ipv4() != matches!(network, IpNet::V4(_)))
        {
            return Err(format!("next hop {h} is not of the family of {network}"));
        }
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(network.network(), network.prefix_len())
            .map_err(|e| e.to_string())?
            .table_id(MAIN_TABLE)
            .protocol(PROTO);
        let b = match next_hops {
            [one] => b.gateway(*one).map_err(|e| e.to_string())?,
            many => b.multipath(
                many.iter()
                    .map(|ip| {
                        let mut hop = RouteNextHop::default();
                        hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::from(*ip))];
                        hop
                    })
                    .collect(),
            ),
        };
        Ok(b.build())
    }

    async fn find(&self, network: IpNet) -> Result<Option<RouteMessage>, String> {
        let filter = match network {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut dump = self.handle.route().get(filter).execute();
        while let Some(m) = dump.try_next().await.map_err(|e| e.to_string())? {
            if m.header.destination_prefix_length != network.prefix_len() {
                continue;
            }
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            if table != MAIN_TABLE {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => address(d),
                _ => None,
            });
            if dst == Some(network.network()) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The next hops of a route message: its gateway, or the gateways of its multipath.
fn next_hops(m: &RouteMessage) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in &m.attributes {
        match a {
            RouteAttribute::Gateway(g) => out.extend(address(g)),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    for ha in &h.attributes {
                        if let RouteAttribute::Gateway(g) = ha {
                            out.extend(address(g));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Kernel for Netlink {
    fn apply<'a>(
        &'a self,
        network: IpNet,
        next_hops: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            if next_hops.is_empty() {
                return Err("no next hops".into());
            }
            self.handle
                .route()
                .add(Self::message(network, next_hops)?)
                .replace()
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn remove(&self, network: IpNet) -> BoxFuture<'_, Result<(), String>> {
        async move {
            // Whatever route to the network is there (also one edited by hand).
            while let Some(m) = self.find(network).await? {
                self.handle
                    .route()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        .boxed()
    }

    fn read(&self, network: IpNet) -> BoxFuture<'_, Result<Vec<IpAddr>, String>> {
        async move {
            Ok(self
                .find(network)
                .await?
                .map(|m| next_hops(&m))
                .unwrap_or_default())
        }
        .boxed()
    }

    fn apply_nat<'a>(&'a self, rules: &'a [Snat]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            use tokio::io::AsyncWriteExt;
            let script = nat_script(&self.nat_out, rules);
            let mut child = tokio::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("running nft: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(script.as_bytes())
                    .await
                    .map_err(|e| format!("writing to nft: {e}"))?;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| format!("running nft: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "nft -f - failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nat_table_is_replaced_whole() {
        let rules = [Snat {
            id: "lab-ns-blue".into(),
            sources: vec![
                "10.30.0.0/26".parse().unwrap(),
                "10.30.0.64/26".parse().unwrap(),
            ],
            translated: "198.18.20.1".parse().unwrap(),
        }];
        assert_eq!(
            nat_script("internet", &rules),
            "table ip switchyard-fabric-nat {}\n\
             delete table ip switchyard-fabric-nat\n\
             table ip switchyard-fabric-nat {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"internet\" ip saddr { 10.30.0.0/26, 10.30.0.64/26 } snat to 198.18.20.1 comment \"lab-ns-blue\"\n\
             \t}\n}\n"
        );
        // No rules: the table stays, empty (its chain accepts everything).
        assert!(nat_script("internet", &[]).ends_with("policy accept;\n\t}\n}\n"));
    }
}
