//! The proxy's OpenFlow flows and groups as pure functions of the desired
//! state (tables, registers, zones and priorities are declared in
//! `switchyard_pipeline`).
//!
//! Per Service port with group id `G` (cookie object `G`):
//!
//! ```text
//! T31 SERVICE_LB  prio 200  proto,nw_dst=VIP,tp_dst=PORT,reg4[16..17]=0
//!     endpoints, no affinity: load:1->reg4[16..17], group:G
//!     endpoints, ClientIP:    load:G->reg6, load:1->reg4[16..17], resubmit(,30), resubmit(,31)
//!                  prio 200   ... reg4[16..17]=1 -> group:G
//!     none (Reject):          controller(userdata=SYRJ) -> ICMP port unreachable
//!     none (Drop):            drop
//! group G  select, hash over the 5-tuple, one bucket per endpoint:
//!     no affinity: ct(commit,zone=POD,nat(dst=EP:EP_PORT),exec(ct_mark=SERVICE),table=L3)
//!     affinity:    load reg3=EP, reg4[0..17]=EP_PORT|Selected, resubmit(,32)
//! T32 ENDPOINT_DNAT (affinity only) prio 200
//!     proto,reg6=G,reg3=EP,reg4=EP_PORT|Selected/0x3ffff
//!     -> learn(T30 ...), ct(commit,zone=POD,nat(dst=EP:EP_PORT),exec(ct_mark=SERVICE),table=L3)
//! ```
//!
//! The buckets DNAT directly (as OVN's load balancers do) instead of going
//! through per-endpoint flows in ENDPOINT_DNAT: one flow per frontend instead
//! of one per endpoint. ENDPOINT_DNAT is used only for session affinity,
//! where a learned flow in SESSION_AFFINITY has chosen the endpoint into
//! reg3/reg4 and NAT cannot take its address from a register.
//!
//! Session affinity: SESSION_AFFINITY is entered by the agent's `goto_table`
//! with state 0, where nothing of the proxy matches. An affinity frontend
//! loads the port's group id into reg6 (`reg::SERVICE_PORT`), sets state
//! NeedsEndpoint and resubmits to SESSION_AFFINITY: a learned flow
//! (`nw_src=client,reg6=G,reg4[16..17]=1`, idle timeout = the Service's
//! `timeoutSeconds`) loads the endpoint and state Selected, or the proxy's
//! priority-1 flow for state NeedsEndpoint ends the resubmit without loading
//! anything (so the agent's pass-through is never taken from inside it). The
//! second resubmit, to the frontend's own table, then either balances
//! through the group (state NeedsEndpoint; the bucket loads its endpoint and
//! state Selected) or, finding no frontend for state Selected, goes on to
//! SERVICE_LB's Selected flow; either way the endpoint's ENDPOINT_DNAT flow
//! learns and DNATs. Because the learned flows and ENDPOINT_DNAT match reg6
//! and not the destination, every frontend of the port (ClusterIP, node
//! port, external and LoadBalancer IPs) shares one affinity per client, as
//! in kube-proxy; ETP-Local external frontends load their local group's id
//! instead (`GL`, with its own ENDPOINT_DNAT flows for the local endpoints),
//! so a client pinned through them stays on this node. Learned flows carry
//! the cookie generation [`LEARNED_GENERATION`], which full resyncs never
//! delete.
//!
//! Generic flows (cookie object 0): the two session-affinity helpers above,
//! the hairpin flows described in `switchyard_pipeline`'s crate
//! docs (one per local endpoint address in L3_FORWARDING), and the path of
//! endpoints outside the pod networks for connections from the gateway port
//! ([`outside_flows`]).

use std::net::{IpAddr, Ipv4Addr};

use switchyard_ovs::openflow::{
    Action, Bucket, Ct, Field, Flow, Group, GroupType, Learn, LearnSpec, MatchField, Nat,
    PacketInReason, SelectionMethod, SubField, ct_state, port,
};
use switchyard_pipeline::{
    Cookie, EndpointPortAndState, HAIRPIN_SNAT_IP, OUTSIDE_SNAT_IP, Owner, PortKind, ServiceState,
    ct_mark, ofport, priority, reg, table, zone,
};

use crate::diff::GroupId;
use crate::service_model::{
    Endpoint, NoEndpointsAction, Protocol, ServicePortName, ServicePortState,
};

pub use switchyard_ovs::openflow::ETH_TYPE_IP;

/// Cookie generation of learned session-affinity flows; never used for a
/// round of installation, so generation cleanups leave them alone.
pub const LEARNED_GENERATION: u8 = 0xff;

/// Cookie object of the generic flows (group ids start at 1).
pub const GENERIC_OBJECT: u32 = 0;

/// Userdata of the controller action of rejecting frontends.
pub const REJECT_USERDATA: &[u8] = b"SYRJ";

/// Longest idle timeout OpenFlow can express; longer affinity timeouts
/// (the API allows up to a day) are capped to it.
pub const MAX_AFFINITY_TIMEOUT: u16 = u16::MAX;

/// The proxy's cookie for `generation` and `object`.
pub fn cookie(generation: u8, object: u32) -> u64 {
    Cookie::new(Owner::Proxy, generation, object).value()
}

/// The endpoint's port with state EndpointSelected (reg4[0..17]).
fn selected(port: u16) -> EndpointPortAndState {
    EndpointPortAndState {
        port,
        state: ServiceState::EndpointSelected,
    }
}

/// IP protocol number.
pub fn ip_proto(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn dst_port_field(protocol: Protocol) -> Field {
    match protocol {
        Protocol::Tcp => Field::TcpDst,
        Protocol::Udp => Field::UdpDst,
        Protocol::Sctp => Field::SctpDst,
    }
}

fn src_port_field(protocol: Protocol) -> Field {
    match protocol {
        Protocol::Tcp => Field::TcpSrc,
        Protocol::Udp => Field::UdpSrc,
        Protocol::Sctp => Field::SctpSrc,
    }
}

/// `proto,nw_dst=VIP,tp_dst=PORT`.
fn frontend_match(state: &ServicePortState) -> Vec<MatchField> {
    vec![
        MatchField::eth_type(ETH_TYPE_IP),
        MatchField::ip_proto(ip_proto(state.protocol)),
        MatchField::ipv4_dst(state.cluster_ip, 32),
        MatchField::exact(dst_port_field(state.protocol), u128::from(state.port)),
    ]
}

fn with_matches(mut flow: Flow, matches: Vec<MatchField>) -> Flow {
    flow.matches.extend(matches);
    flow
}

/// `ct(commit,zone=POD,nat(dst=EP:PORT),exec(ct_mark=SERVICE),table=...)`,
/// continuing after the Service stage (L3_FORWARDING, or the egress policy
/// slot once it is in use).
pub fn dnat_action(endpoint_ip: Ipv4Addr, endpoint_port: u16) -> Action {
    Action::Ct(Ct {
        commit: true,
        zone: zone::POD.ct(),
        table: Some(table::ENDPOINT_DNAT.next().id()),
        nat: Some(Nat::dst(IpAddr::V4(endpoint_ip), Some(endpoint_port))),
        exec: vec![ct_mark::SERVICE.set()],
        ..Ct::default()
    })
}

/// The flows of one Service port (frontends and, with affinity, endpoint
/// DNAT; then its external frontends, [`crate::external::frontend_flows`]).
pub fn port_flows(
    generation: u8,
    group_id: GroupId,
    name: &ServicePortName,
    state: &ServicePortState,
) -> Vec<Flow> {
    let c = cookie(generation, group_id);
    let note = Action::note(name.to_string().as_bytes());
    let frontend = || {
        with_matches(
            table::SERVICE_LB.flow(priority::SERVICE).cookie(c),
            frontend_match(state),
        )
    };
    let mut flows = Vec::new();
    match state.no_endpoints_action() {
        Some(NoEndpointsAction::Reject) => flows.push(
            frontend()
                .matching(reg::SERVICE_STATE.matching(ServiceState::None))
                .action(note)
                .action(Action::controller(
                    PacketInReason::Action,
                    REJECT_USERDATA.to_vec(),
                )),
        ),
        Some(NoEndpointsAction::Drop) => flows.push(
            frontend()
                .matching(reg::SERVICE_STATE.matching(ServiceState::None))
                .action(note),
        ),
        None if state.session_affinity.is_some() => {
            let mut first = frontend()
                .matching(reg::SERVICE_STATE.matching(ServiceState::None))
                .action(note);
            first
                .actions
                .extend(affinity_lookup(group_id, table::SERVICE_LB));
            flows.push(first);
            flows.push(
                frontend()
                    .matching(reg::SERVICE_STATE.matching(ServiceState::NeedsEndpoint))
                    .action(Action::Group(group_id)),
            );
            flows.extend(affinity_dnat_flows(generation, group_id, state));
        }
        None => flows.push(
            frontend()
                .matching(reg::SERVICE_STATE.matching(ServiceState::None))
                .action(note)
                .action(reg::SERVICE_STATE.load(ServiceState::NeedsEndpoint))
                .action(Action::Group(group_id)),
        ),
    }
    flows.extend(crate::external::frontend_flows(
        generation, group_id, name, state,
    ));
    flows
}

/// The actions of an affinity frontend for a new connection: remember the
/// chosen group `chosen` in reg6, look the client up in SESSION_AFFINITY,
/// then come back to the frontend's own `table` with state NeedsEndpoint
/// (balance through `chosen`) or Selected (on to ENDPOINT_DNAT).
pub fn affinity_lookup(chosen: GroupId, table: switchyard_pipeline::Table) -> Vec<Action> {
    vec![
        reg::SERVICE_PORT.load(chosen),
        reg::SERVICE_STATE.load(ServiceState::NeedsEndpoint),
        table::SESSION_AFFINITY.resubmit(),
        table.resubmit(),
    ]
}

/// The ENDPOINT_DNAT flows of an affinity Service port: one per endpoint
/// for the port's group `G`, and for its external groups when it has them
/// (one per cluster endpoint for `GC`, one per local endpoint for `GL`). Each
/// (re)learns the client's choice, then DNATs. Empty without affinity.
///
/// The `learn` sits here and not in the group's bucket because OVS does not
/// execute `learn` inside group buckets (it is silently skipped; seen with
/// `ofproto/trace` on OVS 3.1). Passing here on every new connection, also
/// when a learned flow chose the endpoint, refreshes the affinity the way
/// kube-proxy's `recent --set` does.
pub fn affinity_dnat_flows(
    generation: u8,
    group_id: GroupId,
    state: &ServicePortState,
) -> Vec<Flow> {
    let Some(timeout) = state.session_affinity else {
        return Vec::new();
    };
    let flow = |chosen: GroupId, endpoint: &Endpoint| {
        table::ENDPOINT_DNAT
            .flow(priority::SERVICE)
            .cookie(cookie(generation, group_id))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ip_proto(ip_proto(state.protocol)))
            .matching(reg::SERVICE_PORT.matching(chosen))
            .matching(reg::ENDPOINT_IP.matching(endpoint.ip))
            .matching(reg::ENDPOINT_PORT_AND_STATE.matching(selected(endpoint.port)))
            .action(affinity_learn(group_id, state, timeout))
            .action(dnat_action(endpoint.ip, endpoint.port))
    };
    let mut flows: Vec<Flow> = state
        .endpoints
        .iter()
        .map(|endpoint| flow(group_id, endpoint))
        .collect();
    if state.external.has_cluster_group() {
        let cluster = crate::groups::cluster_group_id(group_id);
        flows.extend(
            state
                .external
                .cluster_endpoints
                .iter()
                .map(|endpoint| flow(cluster, endpoint)),
        );
    }
    if state.external.has_local_group() {
        let local = crate::groups::local_group_id(group_id);
        flows.extend(
            state
                .external
                .local_endpoints
                .iter()
                .map(|endpoint| flow(local, endpoint)),
        );
    }
    flows
}

/// The `learn` that records a client's endpoint choice in SESSION_AFFINITY.
fn affinity_learn(group_id: GroupId, state: &ServicePortState, timeout: u32) -> Action {
    let timeout = u16::try_from(timeout).unwrap_or(MAX_AFFINITY_TIMEOUT);
    Action::Learn(Learn {
        table: table::SESSION_AFFINITY.id(),
        idle_timeout: timeout,
        priority: priority::SERVICE.value(),
        cookie: cookie(LEARNED_GENERATION, group_id),
        specs: vec![
            LearnSpec::match_value(Field::EthType, u128::from(ETH_TYPE_IP)),
            LearnSpec::match_value(Field::IpProto, u128::from(ip_proto(state.protocol))),
            LearnSpec::copy_match(Field::Ipv4Src),
            LearnSpec::MatchField {
                dst: reg::SERVICE_PORT.subfield(),
                src: reg::SERVICE_PORT.subfield(),
            },
            LearnSpec::MatchValue {
                dst: reg::SERVICE_STATE.subfield(),
                value: ServiceState::NeedsEndpoint as u128,
            },
            LearnSpec::LoadField {
                src: reg::ENDPOINT_IP.subfield(),
                dst: reg::ENDPOINT_IP.subfield(),
            },
            LearnSpec::LoadField {
                src: reg::ENDPOINT_PORT_AND_STATE.subfield(),
                dst: reg::ENDPOINT_PORT_AND_STATE.subfield(),
            },
        ],
        ..Learn::default()
    })
}

/// The select group of a port whose endpoints fit one group: one bucket
/// per endpoint (see the module docs). Ports with more endpoints are served
/// by chained groups ([`crate::groups`]).
pub fn port_group(group_id: GroupId, state: &ServicePortState) -> Group {
    let buckets = state
        .endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| endpoint_bucket(index, endpoint, state))
        .collect();
    select_group(group_id, state.protocol, 0, buckets)
}

/// The bucket of `endpoint`, with id `index` (its place in the port's
/// endpoints).
pub fn endpoint_bucket(index: usize, endpoint: &Endpoint, state: &ServicePortState) -> Bucket {
    let actions = if state.session_affinity.is_some() {
        vec![
            reg::ENDPOINT_IP.load(endpoint.ip),
            reg::ENDPOINT_PORT_AND_STATE.load(selected(endpoint.port)),
            table::ENDPOINT_DNAT.resubmit(),
        ]
    } else {
        vec![dnat_action(endpoint.ip, endpoint.port)]
    };
    Bucket::new(u32::try_from(index).unwrap_or(u32::MAX), actions).weight(100)
}

/// A select group hashing the 5-tuple with hash basis `basis` (OVS's
/// `selection_method_param`): chained groups use different bases so that
/// the choice of a sub-group does not bias the choice inside it.
pub fn select_group(
    group_id: GroupId,
    protocol: Protocol,
    basis: u64,
    buckets: Vec<Bucket>,
) -> Group {
    let mut selection = SelectionMethod::hash(&[
        Field::IpProto,
        Field::Ipv4Src,
        Field::Ipv4Dst,
        src_port_field(protocol),
        dst_port_field(protocol),
    ]);
    selection.param = basis;
    Group {
        group_id,
        group_type: GroupType::Select,
        selection: Some(selection),
        buckets,
    }
}

/// Flows that do not depend on any Service: the session-affinity helpers and
/// the hairpin flows that are not per address.
pub fn generic_flows(generation: u8) -> Vec<Flow> {
    let c = cookie(generation, GENERIC_OBJECT);
    vec![
        // Inside the affinity resubmit: no learned flow, load nothing.
        table::SESSION_AFFINITY
            .flow(priority::AFFINITY_MISS)
            .cookie(c)
            .matching(reg::SERVICE_STATE.matching(ServiceState::NeedsEndpoint)),
        // A learned flow chose the endpoint: DNAT to it.
        table::SERVICE_LB
            .flow(priority::SERVICE_SELECTED)
            .cookie(c)
            .matching(reg::SERVICE_STATE.matching(ServiceState::EndpointSelected))
            .action(table::SERVICE_LB.next().goto()),
        // A reply to a hairpin connection: un-SNAT, then the pod zone.
        table::CONNTRACK
            .flow(priority::HAIRPIN)
            .cookie(c)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(HAIRPIN_SNAT_IP, 32))
            .action(reg::HAIRPIN_SET.load())
            .action(Action::Ct(Ct {
                zone: zone::HAIRPIN.ct(),
                table: Some(table::CONNTRACK.id()),
                nat: Some(Nat::existing()),
                ..Ct::default()
            })),
        // Hairpin packets leave through the port they came in on.
        table::OUTPUT
            .flow(priority::HAIRPIN)
            .cookie(c)
            .matching(reg::HAIRPIN_SET.matching())
            .action(Action::Output(port::IN_PORT)),
    ]
    .into_iter()
    .chain(outside_flows(generation))
    .collect()
}

/// The path of a Service connection that came in from the gateway port (the
/// node's own, or a client outside reaching a node port, external or
/// LoadBalancer IP, which the host masqueraded to the gateway address) and
/// was DNATed to an endpoint outside the pod networks (another host, a node
/// port, the API server): no route of `br-int` takes it, and L3_FORWARDING's
/// route to the gateway cannot send it out of the port it came in on. So:
///
/// ```text
/// T40 L3_FORWARDING prio 50   ip,in_port=GATEWAY,ct_state=-rpl+trk,ct_zone=POD,ct_mark=SERVICE
///     -> reg4[18]=1, ct(commit,zone=OUTSIDE_SNAT,nat(src=169.254.169.251),exec(ct_mark=SERVICE),table=L3)
///        (again in L3_FORWARDING, now in zone OUTSIDE_SNAT: the route to the
///        gateway, and OUTPUT's hairpin flow sends it out of in_port)
/// T40 L3_FORWARDING prio 50   ip,reg0[0..3]=Gateway,ct_state=-rpl+trk,ct_zone=GATEWAY_SNAT,ct_mark=SERVICE
///     -> the same without reg4[18]: a `vlan` segment pod's Service connection,
///        which the agent SNATed to the gateway address (its own port is not the gateway's)
/// T40 L3_FORWARDING prio 50   ip,in_port=GATEWAY,ct_state=+rpl+trk,ct_zone=POD,ct_mark=SERVICE
///     -> reg4[18]=1, eth_dst=eth_src, next table
///        (a reply, un-NATed, to the gateway port's own connection: back out of in_port)
/// T20 CONNTRACK     prio 300  ip,in_port=GATEWAY,nw_dst=169.254.169.251
///     -> ct(zone=OUTSIDE_SNAT,nat,table=CONNTRACK)   (the reply: un-SNAT, then the pod zone)
/// T20 CONNTRACK     prio 301  ip,in_port=GATEWAY,nw_dst=169.254.169.251,ct_zone=OUTSIDE_SNAT -> drop
///     (no such connection: never round again)
/// ```
///
/// The source becomes [`OUTSIDE_SNAT_IP`] because a packet arriving on
/// `sy-gw0` from the node's own gateway address is a martian to the node;
/// the node then masquerades it to the address of the interface it leaves
/// by ([`crate::host`]) and routes the reply's un-masqueraded destination,
/// [`OUTSIDE_SNAT_IP`], back into `sy-gw0`. Un-SNATed (zone OUTSIDE_SNAT)
/// and un-DNATed (zone POD) the reply is again a packet of the gateway
/// port's connection, to the gateway address, and goes back out of
/// `in_port` (or, for a `vlan` segment pod, un-SNATed by the agent too, is
/// routed to the pod). Pods' own connections to such endpoints leave through
/// the gateway port (the route to the gateway) and are untouched.
pub fn outside_flows(generation: u8) -> Vec<Flow> {
    let c = cookie(generation, GENERIC_OBJECT);
    let l3 = |state: u32| {
        table::L3_FORWARDING
            .flow(priority::SERVICE_TO_OUTSIDE)
            .cookie(c)
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ct_state(
                ct_state::TRK | state,
                ct_state::TRK | ct_state::RPL,
            ))
            .matching(ct_mark::SERVICE.matching())
    };
    let snat = || {
        Action::Ct(Ct {
            commit: true,
            zone: zone::OUTSIDE_SNAT.ct(),
            table: Some(table::L3_FORWARDING.id()),
            nat: Some(Nat::src(IpAddr::V4(OUTSIDE_SNAT_IP), None)),
            exec: vec![ct_mark::SERVICE.set()],
            ..Ct::default()
        })
    };
    let to_outside = |p| {
        table::CONNTRACK
            .flow(p)
            .cookie(c)
            .matching(MatchField::in_port(ofport::GATEWAY))
            .matching(MatchField::eth_type(ETH_TYPE_IP))
            .matching(MatchField::ipv4_dst(OUTSIDE_SNAT_IP, 32))
    };
    vec![
        l3(0)
            .matching(MatchField::in_port(ofport::GATEWAY))
            .matching(zone::POD.matching())
            .action(reg::HAIRPIN_SET.load())
            .action(snat()),
        l3(0)
            .matching(reg::PORT_KIND.matching(PortKind::Gateway))
            .matching(zone::GATEWAY_SNAT.matching())
            .action(snat()),
        l3(ct_state::RPL)
            .matching(MatchField::in_port(ofport::GATEWAY))
            .matching(zone::POD.matching())
            .action(reg::HAIRPIN_SET.load())
            .action(Action::Move {
                src: SubField::whole(Field::EthSrc),
                dst: SubField::whole(Field::EthDst),
            })
            .action(table::L3_FORWARDING.next().goto()),
        to_outside(priority::OUTSIDE_UNSNAT).action(Action::Ct(Ct {
            zone: zone::OUTSIDE_SNAT.ct(),
            table: Some(table::CONNTRACK.id()),
            nat: Some(Nat::existing()),
            ..Ct::default()
        })),
        to_outside(priority::OUTSIDE_UNSNAT_MISS).matching(zone::OUTSIDE_SNAT.matching()),
    ]
}

/// The hairpin flow for one local endpoint address: a service connection
/// from `ip` DNATed to `ip` is SNATed to [`HAIRPIN_SNAT_IP`].
pub fn hairpin_flow(generation: u8, ip: Ipv4Addr) -> Flow {
    table::L3_FORWARDING
        .flow(priority::HAIRPIN)
        .cookie(cookie(generation, GENERIC_OBJECT))
        .matching(MatchField::eth_type(ETH_TYPE_IP))
        .matching(MatchField::ipv4_src(ip, 32))
        .matching(MatchField::ipv4_dst(ip, 32))
        .matching(MatchField::ct_state(
            ct_state::TRK,
            ct_state::TRK | ct_state::RPL,
        ))
        .matching(zone::POD.matching())
        .matching(ct_mark::SERVICE.matching())
        .action(reg::HAIRPIN_SET.load())
        .action(Action::Ct(Ct {
            commit: true,
            zone: zone::HAIRPIN.ct(),
            table: Some(table::L3_FORWARDING.id()),
            nat: Some(Nat::src(IpAddr::V4(HAIRPIN_SNAT_IP), None)),
            exec: vec![ct_mark::SERVICE.with(ct_mark::HAIRPIN).set()],
            ..Ct::default()
        }))
}

/// Addresses of the local endpoints of a port (hairpin candidates).
pub fn local_endpoint_ips(state: &ServicePortState) -> impl Iterator<Item = Ipv4Addr> + '_ {
    state
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.is_local)
        .map(|endpoint| endpoint.ip)
}
