//! kube-proxy's endpoint choice: the endpoints of a Service port from its
//! EndpointSlices ([`collect_endpoints`]), and which of them serve it under
//! its traffic policy ([`choose_endpoints`], [`cluster_usable`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tracing::{debug, warn};

use crate::objects::{EndpointAddress, Slice, SliceEndpoint};
use crate::service_model::{Endpoint, Protocol, ServicePortName};

/// All endpoints the slices list for one Service port, duplicates merged
/// (the local, then ready, then serving copy wins; ties keep the first slice
/// by name), sorted by IP then port.
pub(crate) fn collect_endpoints(
    name: &ServicePortName,
    slices: &[&Slice],
    node_name: &str,
) -> Vec<Endpoint> {
    let mut merged: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        if !slice.ipv4 {
            debug!(
                service_port = %name,
                slice = slice.name(),
                "non-IPv4 EndpointSlice skipped"
            );
            continue;
        }
        for slice_port in &slice.ports {
            if slice_port.name.as_deref().unwrap_or("") != &*name.port {
                continue;
            }
            match Protocol::from_api(slice_port.protocol.as_deref()) {
                Ok(protocol) if protocol == name.protocol => {}
                _ => continue,
            }
            let Some(port) = slice_port
                .port
                .and_then(|port| u16::try_from(port).ok())
                .filter(|port| *port != 0)
            else {
                warn!(
                    service_port = %name,
                    slice = slice.name(),
                    port = ?slice_port.port,
                    "EndpointSlice port without a valid number ignored"
                );
                continue;
            };
            for slice_endpoint in &slice.endpoints {
                let Some(endpoint) = endpoint_of(name, slice_endpoint, port, node_name) else {
                    continue;
                };
                match merged.get(&(endpoint.ip, endpoint.port)) {
                    Some(existing) if existing.merge_rank() >= endpoint.merge_rank() => {}
                    _ => {
                        merged.insert((endpoint.ip, endpoint.port), endpoint);
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}

fn endpoint_of(
    name: &ServicePortName,
    slice_endpoint: &SliceEndpoint,
    port: u16,
    node_name: &str,
) -> Option<Endpoint> {
    let ip = match &slice_endpoint.address {
        None => {
            debug!(service_port = %name, "endpoint without addresses ignored");
            return None;
        }
        Some(EndpointAddress::Other(address)) => {
            warn!(service_port = %name, address = &**address, "endpoint address is not IPv4, ignored");
            return None;
        }
        Some(EndpointAddress::V4(ip)) => *ip,
    };
    let ready = slice_endpoint.ready.unwrap_or(true);
    let serving = slice_endpoint.serving.unwrap_or(true);
    let terminating = slice_endpoint.terminating.unwrap_or(false);
    let node = slice_endpoint.node_name.clone();
    let is_local = !node_name.is_empty() && node.as_deref() == Some(node_name);
    Some(Endpoint {
        ip,
        port,
        node_name: node,
        ready,
        serving,
        terminating,
        is_local,
    })
}

/// kube-proxy's endpoint choice (CategorizeEndpoints without topology hints).
/// Returns the usable endpoints for the port's traffic policy, and whether
/// the cluster has any usable endpoint at all.
/// Also returns the port's serving set (see [`ServicePortState::serving`]).
pub(crate) fn choose_endpoints(all: Vec<Endpoint>, policy_local: bool) -> ChosenEndpoints {
    let cluster_has_endpoints = all.iter().any(|e| e.ready || e.serving_terminating());
    let candidate = |e: &Endpoint| !policy_local || e.is_local;
    let any_ready = all.iter().any(|e| candidate(e) && e.ready);
    let mut chosen = Vec::new();
    let mut serving = Vec::new();
    for e in all {
        if !candidate(&e) {
            continue;
        }
        let usable = if any_ready {
            e.ready
        } else {
            e.serving_terminating()
        };
        if usable || e.serving {
            serving.push((e.ip, e.port));
        }
        if usable {
            chosen.push(e);
        }
    }
    ChosenEndpoints {
        chosen,
        serving,
        cluster_has_endpoints,
    }
}

/// Every usable endpoint of the cluster (ready ones; serving and
/// terminating ones when none is ready), whatever the traffic policy.
pub(crate) fn cluster_usable(all: &[Endpoint]) -> Vec<Endpoint> {
    choose_endpoints(all.to_vec(), false).chosen
}

pub(crate) struct ChosenEndpoints {
    pub(crate) chosen: Vec<Endpoint>,
    pub(crate) serving: Vec<(Ipv4Addr, u16)>,
    pub(crate) cluster_has_endpoints: bool,
}
