//! What the switch served before this proxy started, read back from its
//! flows and groups, and which UDP conntrack entries a restart makes stale.
//!
//! The watcher's first change set is computed against an empty state, so it
//! calls every UDP Service port with endpoints "newly serving" and would
//! flush all entries to its `VIP:port`: live flows that the adopted groups
//! keep serving would lose the reply in flight and may move to another
//! backend. Compared with what the switch served instead, a restart flushes
//! only what changed while the proxy was down:
//!
//! - an endpoint in a port's buckets (or, with session affinity, in its
//!   endpoint DNAT flows) that the new state no longer serves;
//! - every entry to a `VIP:port` that had no endpoints on the switch and now
//!   has some, or that the switch did not serve at all.
//!
//! An endpoint the old proxy kept only as "serving" (a terminating pod
//! draining next to ready ones, not in the buckets) and that went away while
//! the proxy was down is not known here, so its entries are left to expire.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use switchyard_ovs::openflow::{Action, Field, Flow, Group};

use switchyard_pipeline::table;

use crate::diff::{GroupId, StaleUdpEndpoint, StaleUdpFrontend};
use crate::external::frontend_addresses;
use crate::groups::{cluster_group_id, local_group_id};
use crate::service_model::{DesiredState, Protocol, ServicePortName};

/// One UDP Service port as the switch served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPort {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Endpoints (IP, port) DNATed to (by the port's group, its sub-groups
    /// and its local-endpoints group).
    pub endpoints: BTreeSet<(Ipv4Addr, u16)>,
    /// Every frontend address: the ClusterIP's and the external frontends'
    /// (`SERVICE_EXTERNAL_FRONTEND`).
    pub frontends: BTreeSet<(Ipv4Addr, u16)>,
}

/// The UDP Service ports found on the switch at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedBefore {
    ports: BTreeMap<ServicePortName, ServedPort>,
}

/// The `VIP:port` a proxy frontend flow matches, if it is one.
fn frontend_address(flow: &Flow) -> Option<(Ipv4Addr, u16)> {
    let exact = |field: Field| {
        flow.matches
            .iter()
            .find(|m| m.field == field && m.mask.is_none())
            .map(|m| m.value)
    };
    let vip = Ipv4Addr::from(u32::try_from(exact(Field::Ipv4Dst)?).ok()?);
    let port = u16::try_from(exact(Field::UdpDst)?).ok()?;
    Some((vip, port))
}

/// The endpoint of a `ct(commit, nat(dst=IP:port))` among `actions`.
fn dnat_endpoint(actions: &[Action]) -> Option<(Ipv4Addr, u16)> {
    actions.iter().find_map(|action| match action {
        Action::Ct(ct) if ct.commit => {
            let nat = ct.nat.as_ref()?;
            match (nat.dst, nat.addrs, nat.ports) {
                (Some(true), Some((IpAddr::V4(ip), _)), Some((port, _))) => Some((ip, port)),
                _ => None,
            }
        }
        _ => None,
    })
}

impl ServedBefore {
    /// Reads the UDP ports from the proxy's flows (`ports`: each adopted
    /// port's name and group id; `flows`: the proxy's flows of the service
    /// LB, endpoint DNAT and external frontend tables) and its groups.
    pub fn read(
        ports: &[(ServicePortName, GroupId)],
        flows: &[Flow],
        groups: &[Group],
        object_of: impl Fn(&Flow) -> Option<u32>,
    ) -> Self {
        // One pass over the flows and groups, so reading back N ports costs
        // O(flows + groups), not N passes.
        let mut flows_of: HashMap<u32, Vec<&Flow>> = HashMap::new();
        for flow in flows {
            if let Some(object) = object_of(flow) {
                flows_of.entry(object).or_default().push(flow);
            }
        }
        let group_of: HashMap<u32, &Group> = groups.iter().map(|g| (g.group_id, g)).collect();
        let mut served = Self::default();
        for (name, group_id) in ports {
            if name.protocol != Protocol::Udp {
                continue;
            }
            let ours = flows_of
                .get(group_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let Some((cluster_ip, port)) = ours
                .iter()
                .filter(|f| f.table == table::SERVICE_LB.id())
                .find_map(|f| frontend_address(f))
            else {
                continue;
            };
            let frontends: BTreeSet<(Ipv4Addr, u16)> = ours
                .iter()
                .filter(|f| f.table != table::ENDPOINT_DNAT.id())
                .filter_map(|f| frontend_address(f))
                .collect();
            // A chained port group's buckets lead to its sub-groups'.
            let bucket_actions = group_of
                .get(group_id)
                .into_iter()
                .chain(group_of.get(&local_group_id(*group_id)))
                .chain(group_of.get(&cluster_group_id(*group_id)))
                .flat_map(|g| g.buckets.iter().map(|b| &b.actions))
                .flat_map(|actions| {
                    let chained = actions.iter().filter_map(|a| match a {
                        Action::Group(sub) => group_of.get(sub),
                        _ => None,
                    });
                    std::iter::once(actions)
                        .chain(chained.flat_map(|g| g.buckets.iter().map(|b| &b.actions)))
                });
            let endpoints: BTreeSet<(Ipv4Addr, u16)> = ours
                .iter()
                .map(|f| &f.actions)
                .chain(bucket_actions)
                .filter_map(|actions| dnat_endpoint(actions))
                .collect();
            served.ports.insert(
                name.clone(),
                ServedPort {
                    cluster_ip,
                    port,
                    endpoints,
                    frontends,
                },
            );
        }
        served
    }

    /// The ports read.
    pub fn ports(&self) -> &BTreeMap<ServicePortName, ServedPort> {
        &self.ports
    }

    /// The entries a switch to `state` makes stale (see the module docs).
    pub fn stale_in(&self, state: &DesiredState) -> (Vec<StaleUdpEndpoint>, Vec<StaleUdpFrontend>) {
        let mut endpoints = Vec::new();
        let mut frontends = Vec::new();
        for (name, served) in &self.ports {
            let new = state.get(name);
            let new_addresses = new.map(|n| frontend_addresses(n)).unwrap_or_default();
            for &address in &served.frontends {
                let still = new.filter(|_| new_addresses.contains(&address));
                for &(endpoint_ip, endpoint_port) in &served.endpoints {
                    let kept = still.is_some_and(|new| {
                        new.serving
                            .binary_search(&(endpoint_ip, endpoint_port))
                            .is_ok()
                    });
                    if !kept {
                        endpoints.push(StaleUdpEndpoint {
                            name: name.clone(),
                            cluster_ip: address.0,
                            port: address.1,
                            endpoint_ip,
                            endpoint_port,
                        });
                    }
                }
            }
        }
        for (name, new) in state.iter() {
            if new.protocol != Protocol::Udp || new.serving.is_empty() {
                continue;
            }
            let served = self
                .ports
                .get(name)
                .filter(|served| !served.endpoints.is_empty());
            for address in frontend_addresses(new) {
                if !served.is_some_and(|served| served.frontends.contains(&address)) {
                    frontends.push(StaleUdpFrontend {
                        name: name.clone(),
                        cluster_ip: address.0,
                        port: address.1,
                    });
                }
            }
        }
        (endpoints, frontends)
    }
}
