//! CNI ADD: placement (segment and VLAN), an address, the pod's veth, its
//! OVS port and its flows; and the rollback of a failed ADD, which undoes
//! exactly the steps that ran ([`Undo`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net};
use switchyard_cni::{CniRequest, CniResult, Dns, Interface, IpConfig, Route};
use switchyard_ovs::openflow::{FlowMod, PortReason, PortStatus};
use switchyard_ovs::ovsdb::{self, PortSpec};
use switchyard_pipeline::{Cookie, Owner};
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::attach_error::AttachError;
use crate::attachment::Attachment;
use crate::config::DatapathType;
use crate::flows;
use crate::ipam::AttachmentKey;
use crate::mac::MacAddr;
use crate::netns::{self, PodInterfaceSpec};
use crate::reserved_port::OFPORT_TIMEOUT;
use crate::segment::{self, Placement};
use crate::state::{NodeState, lock};

/// An ADD request, resolved from the CNI request.
#[derive(Debug, Clone)]
pub(crate) struct AddRequest {
    pub key: AttachmentKey,
    /// The pod's namespace and name; both empty for a standalone attachment
    /// (the runtime named no pod).
    pub pod_namespace: String,
    pub pod_name: String,
    /// A standalone attachment's segment from the network configuration's
    /// `args.cni.segment` (else the node's default).
    pub standalone_segment: Option<String>,
    /// K8S_POD_UID ("" if not sent).
    pub pod_uid: String,
    /// CNI_NETNS (required unless the attachment exists).
    pub netns: Option<PathBuf>,
    /// The network config's MTU, if any (else the agent's).
    pub mtu: Option<u32>,
    /// The pod's annotations if the runtime passed them (then the Pod is not read).
    pub runtime_annotations: BTreeMap<String, String>,
}

impl AddRequest {
    /// Whether the runtime named no pod (podman, nerdctl, any libcni program).
    pub fn is_standalone(&self) -> bool {
        self.pod_namespace.is_empty()
    }

    /// What an ADD request names; fails on a missing attachment or pod identity.
    pub fn from_cni(req: &CniRequest) -> Result<AddRequest, AttachError> {
        let key = super::attachment_key(req, "ADD")?;
        let identity = super::pod_identity(req)?;
        let standalone_segment = match identity {
            Some(_) => None,
            None => req
                .config
                .args
                .as_ref()
                .and_then(|a| a.get("cni")?.get("segment")?.as_str())
                .map(str::to_string),
        };
        let (pod_namespace, pod_name) = identity.unwrap_or_default();
        Ok(AddRequest {
            key,
            pod_namespace,
            pod_name,
            standalone_segment,
            pod_uid: req.env.args.k8s_pod_uid.clone().unwrap_or_default(),
            netns: req.env.netns.clone(),
            mtu: req.config.mtu,
            runtime_annotations: req.config.runtime_config.pod_annotations.clone(),
        })
    }
}

/// An attachment ADD made (or found), with the host end's MAC if known.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub attachment: Attachment,
    pub host_mac: Option<MacAddr>,
}

/// CNI ADD at the edge: readiness, the request resolved, the result built.
pub(super) async fn add(state: &NodeState, req: &CniRequest) -> Result<CniResult, AttachError> {
    admit(state)?;
    let request = AddRequest::from_cni(req)?;
    let attached = attach(state, &request).await?;
    Ok(result_for(
        &attached.attachment,
        attached.host_mac,
        req.config.dns.clone().unwrap_or_default(),
    ))
}

/// Refuses an ADD while the agent starts or OVS is unreachable (retry).
fn admit(state: &NodeState) -> Result<(), AttachError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(AttachError::NotReady);
    }
    if !state.io.ports.is_connected() || !state.io.flows.is_connected() {
        return Err(AttachError::OvsUnreachable);
    }
    Ok(())
}

fn result_for(a: &Attachment, host_mac: Option<MacAddr>, dns: Dns) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: a.host_ifname.clone(),
                mac: host_mac.map(|m| m.to_string()),
                ..Interface::default()
            },
            Interface {
                name: a.key.ifname.clone(),
                mac: Some(a.mac.to_string()),
                mtu: Some(a.mtu),
                sandbox: Some(a.netns.display().to_string()),
                ..Interface::default()
            },
        ],
        ips: vec![IpConfig {
            interface: Some(1),
            address: IpNet::V4(a.address),
            gateway: a.gateway.map(std::net::IpAddr::V4),
        }],
        routes: a
            .gateway
            .map(|gw| Route {
                dst: "0.0.0.0/0".parse().unwrap_or(IpNet::V4(Ipv4Net::default())),
                gw: Some(std::net::IpAddr::V4(gw)),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
            .into_iter()
            .collect(),
        dns,
    }
}

/// Attaches the pod (or returns the attachment a repeated ADD finds). On
/// failure every step that ran is undone and the address released.
pub(crate) async fn attach(state: &NodeState, req: &AddRequest) -> Result<Attached, AttachError> {
    let key = &req.key;
    let _guard = state.locks.lock(key).await;
    // Declared after the guard so it is dropped first: a GC waiting for
    // this lock sees the ADD's end (and the local record) once it has it.
    let _in_flight = state.adds.begin_add(key);

    let existing = lock(&state.attachments).get(key).cloned();
    if let Some(a) = existing {
        tracing::info!("attachment exists; returning its result");
        let mac = state.io.links.host_mac(&a.host_ifname).await;
        return Ok(Attached {
            attachment: a,
            host_mac: mac,
        });
    }

    let netns_path = req.netns.clone().ok_or(AttachError::NetnsRequired)?;
    let t0 = Instant::now();
    let pod_netns = state
        .io
        .links
        .open_netns(&netns_path)
        .map_err(AttachError::Netns)?;
    let placement = place_when_ready(state, req).await?;
    tracing::debug!(segment = %placement.segment, vlan = placement.vlan, elapsed = ?t0.elapsed(), "placement");
    // Held until the attachment is recorded (or rolled back): one pod per
    // static MAC on a segment of this node.
    let _mac_claim = match placement.static_mac {
        Some(mac) => Some(state.mac_claims.claim(
            &placement.segment,
            mac,
            key,
            &state.attachments,
        )?),
        None => None,
    };
    let (address, gateway_ip) = allocate(state, key, &placement).await?;

    let mut undo = Undo {
        key: key.clone(),
        host_ifname: None,
        port: None,
        flow_objects: Vec::new(),
        requested_ofport: None,
    };
    match wire(
        state, req, &pod_netns, &placement, address, gateway_ip, &mut undo,
    )
    .await
    {
        Ok((a, built)) => {
            // Isolation from the first packet: the policies selecting the
            // pod are in before ADD returns (before its process runs). A
            // standalone attachment is no pod: no policy selects it.
            if !a.is_standalone()
                && let Err(e) = police(state, &a).await
            {
                roll_back(state, undo).await;
                return Err(e);
            }
            // Best effort and off the ADD's critical path: nothing on
            // br-int needs it (OVS answers every ARP and L3 forwarding
            // rewrites MACs by destination address; the pod's own
            // gratuitous ARP is dropped by the ARP responder), so it
            // only informs listeners outside the pipeline.
            let host_mac = Some(built.host_mac);
            let announce = state.io.links.announce(
                pod_netns,
                built.pod_ifindex,
                built.pod_mac,
                built.address.addr(),
            );
            tokio::spawn(
                async move {
                    if let Err(e) = announce.await {
                        tracing::debug!(error = %e, "gratuitous ARP not sent");
                    }
                }
                .in_current_span(),
            );
            Ok(Attached {
                attachment: a,
                host_mac,
            })
        }
        Err(e) => {
            roll_back(state, undo).await;
            Err(e)
        }
    }
}

/// Installs the NetworkPolicy flows that concern the new pod.
async fn police(state: &NodeState, a: &Attachment) -> Result<(), AttachError> {
    let t0 = Instant::now();
    let fail = |e: crate::policy::PolicyError| match e {
        crate::policy::PolicyError::Flows(source) => AttachError::OpenFlow {
            what: "installing the pod's NetworkPolicy flows",
            source,
        },
        other => AttachError::ReadPod(crate::apiserver::ApiError::Timeout {
            what: other.to_string(),
        }),
    };
    state
        .policy
        .ensure_pod(&a.pod_namespace, &a.pod_name)
        .await
        .map_err(fail)?;
    let stats = state.sync_policies().await.map_err(fail)?;
    tracing::debug!(flow_mods = stats.flow_mods, elapsed = ?t0.elapsed(), "policy flows installed");
    Ok(())
}

/// [`place`], retried while the namespace's own network is not ready, for at most
/// [`NETWORK_WAIT`]; then CNI error 11 naming what it waits for (kubelet retries).
async fn place_when_ready(state: &NodeState, req: &AddRequest) -> Result<Placement, AttachError> {
    let deadline = std::time::Instant::now() + NETWORK_WAIT;
    loop {
        match place(state, req).await {
            Err(AttachError::Placement(crate::segment::SegmentError::NetworkNotReady {
                ..
            })) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// How long an ADD waits for its namespace's own network (namespace networks).
const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Segment and VLAN from the pod's (unless the runtime passed its
/// annotations) and its namespace's annotations, read concurrently.
async fn place(state: &NodeState, req: &AddRequest) -> Result<Placement, AttachError> {
    if req.is_standalone() {
        return Ok(segment::decide_standalone(
            req.standalone_segment.as_deref(),
            &state.segments(),
            &state.config.default_segment,
        )?);
    }
    let from_runtime = !req.runtime_annotations.is_empty();
    let pod_read = async {
        if from_runtime {
            Ok(None)
        } else {
            let api = &state.io.api;
            match api.pod(&req.pod_namespace, &req.pod_name).await {
                // A cached pod of the same name but another uid (deleted
                // and created again): ask the API server.
                Ok(Some(p))
                    if !req.pod_uid.is_empty() && !p.uid.is_empty() && p.uid != req.pod_uid =>
                {
                    api.pod_fresh(&req.pod_namespace, &req.pod_name).await
                }
                other => other,
            }
            .map(Some)
        }
    };
    let (pod, namespace) = tokio::join!(
        pod_read,
        state.io.api.namespace_annotations(&req.pod_namespace)
    );
    let pod_annotations = match pod {
        Ok(None) => req.runtime_annotations.clone(),
        Ok(Some(Some(p))) => p.annotations,
        Ok(Some(None)) => {
            return Err(AttachError::PodNotFound {
                namespace: req.pod_namespace.clone(),
                name: req.pod_name.clone(),
            });
        }
        Err(e) => return Err(AttachError::ReadPod(e)),
    };
    let namespace_annotations = namespace.map_err(AttachError::ReadNamespace)?;
    Ok(segment::decide(
        &req.pod_namespace,
        &pod_annotations,
        &namespace_annotations,
        &state.segments(),
        &state.config.default_segment,
    )?)
}

/// The pod's address: `vlan` segments allocate cluster-wide first (API
/// server, optimistic concurrency); the local pool then records it.
async fn allocate(
    state: &NodeState,
    key: &AttachmentKey,
    placement: &Placement,
) -> Result<(Ipv4Net, Option<Ipv4Addr>), AttachError> {
    let static_ip = crate::vlan_pool::allocate_for_pod(
        &state.cluster_pools,
        &state.segments(),
        &placement.segment,
        key,
        placement.static_ip,
    )
    .await?
    .or(placement.static_ip);
    let pool_name = state.pool_name(&placement.segment);
    let mut pools = lock(&state.pools);
    let pool = pools
        .get_mut(&pool_name)
        .ok_or_else(|| AttachError::NoPool {
            segment: placement.segment.clone(),
        })?;
    // Overlay segments take their addresses from the node's pod CIDR (a
    // `vlan` segment's static address was checked against its subnet).
    if let Some(ip) = placement.static_ip
        && !pool.contains(ip)
    {
        return Err(crate::segment::SegmentError::StaticIpOutsideSegment {
            ip,
            segment: placement.segment.clone(),
            range: format!("this node's pod CIDR {}", pool.network()),
        }
        .into());
    }
    let ip = match static_ip {
        Some(ip) => pool.allocate_specific(key, ip),
        None => pool.allocate(key),
    }?;
    // The pod's subnet and gateway: those of the subnet its address is in (a `vlan`
    // segment's appended subnets have their own).
    let (subnet, gateway) = pool
        .subnet_of(ip)
        .unwrap_or((pool.network(), pool.gateway()));
    let net = Ipv4Net::new(ip, subnet.prefix_len()).unwrap_or_else(|_| Ipv4Net::from(ip));
    Ok((net, gateway))
}

/// The veth, the OVS port (with the attachment in its `external_ids`) and
/// the flows, each noted in `undo` before it is made.
async fn wire(
    state: &NodeState,
    req: &AddRequest,
    pod_netns: &std::path::Path,

    placement: &Placement,
    address: Ipv4Net,
    gateway_ip: Option<Ipv4Addr>,
    undo: &mut Undo,
) -> Result<(Attachment, netns::PodInterface), AttachError> {
    let key = &req.key;
    let mtu = req.mtu.unwrap_or(state.config.mtu);
    let spec = PodInterfaceSpec {
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
        address,
        gateway: gateway_ip,
        mtu,
        mac: placement.static_mac,
        disable_tx_checksum: state.config.datapath_type == DatapathType::Netdev,
        gratuitous_arp: false,
    };
    undo.host_ifname = Some(netns::host_ifname(&key.container_id, &key.ifname));
    let t0 = Instant::now();
    let built = state
        .io
        .links
        .create(pod_netns, &spec)
        .await
        .map_err(|e| AttachError::CreateInterface(Box::new(e)))?;
    tracing::debug!(elapsed = ?t0.elapsed(), "veth created");
    let t0 = Instant::now();
    let mut a = Attachment {
        key: key.clone(),
        pod_namespace: req.pod_namespace.clone(),
        pod_name: req.pod_name.clone(),
        pod_uid: req.pod_uid.clone(),
        netns: pod_netns.to_path_buf(),
        address,
        gateway: gateway_ip,
        mac: built.pod_mac,
        segment: placement.segment.clone(),
        vlan: placement.vlan,
        mtu,
        host_ifname: built.host_ifname.clone(),
        ofport: 0,
    };
    let mut port = PortSpec::new(&a.host_ifname);
    let requested = state.reserve_ofport();
    undo.requested_ofport = requested;
    port.ofport_request = requested.and_then(|p| u16::try_from(p).ok());
    if a.vlan != 0 {
        port = port.with_tag(a.vlan);
    }
    for (k, v) in a.external_ids() {
        port = port.with_external_id(&k, &v);
    }
    undo.port = Some(a.host_ifname.clone());
    // The flows only need the ofport, which is the requested one unless
    // vswitchd could not honour the request: install them while the
    // port is added and vswitchd attaches it (checked below).
    let gate = state.flow_gate.read().await;
    let generation = gate.unwrap_or(1);
    let gateway = state.gateway();
    let pod_template = a.pod_port();
    let install = |ofport: u32| {
        let pod = flows::PodPort {
            ofport,
            ..pod_template
        };
        let mods = flows::pod_flows(generation, &gateway, &pod)
            .into_iter()
            .chain(crate::uplink::pod_flows(
                generation,
                &pod,
                state.segment(&placement.segment).as_ref(),
            ))
            .map(FlowMod::add)
            .collect();
        state.io.flows.bundle(mods)
    };
    if let Some(r) = requested {
        undo.flow_objects.push(r);
    }
    let flows_early = async {
        match requested {
            Some(r) => install(r).await.map(|()| true),
            None => Ok(false),
        }
    };
    let attach = async {
        // Subscribed before the port is added: the switch says nothing twice.
        let mut attached = state.io.flows.port_status();
        match state.io.ports.add_port(&state.config.bridge, &port).await {
            Ok(_) => {}
            Err(ovsdb::Error::PortExists(_)) => {
                // Left over from an earlier attempt that died half-way.
                tracing::info!(port = %a.host_ifname, "replacing a leftover OVS port");
                state.remove_port_quietly(&a.host_ifname).await;
                attached = state.io.flows.port_status();
                state
                    .io
                    .ports
                    .add_port(&state.config.bridge, &port)
                    .await
                    .map_err(AttachError::ovsdb("adding the OVS port"))?;
            }
            Err(e) => return Err(AttachError::ovsdb("adding the OVS port")(e)),
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "port added");
        attached_ofport(state, &a.host_ifname, attached).await
    };
    let (installed, ofport) = tokio::join!(flows_early, attach);
    let installed = installed.map_err(AttachError::openflow("installing the pod's flows"))?;
    a.ofport = u32::from(ofport?);
    tracing::debug!(elapsed = ?t0.elapsed(), "ofport assigned, flows installed");
    if requested != Some(a.ofport) {
        tracing::info!(requested = ?requested, got = a.ofport, "vswitchd gave another ofport than requested");
        {
            let mut ofports = lock(&state.ofports);
            if let Some(r) = requested {
                ofports.remove(&r);
            }
            ofports.insert(a.ofport);
        }
        undo.requested_ofport = Some(a.ofport);
        undo.flow_objects.push(a.ofport);
        if installed && let Some(r) = requested {
            let (c, m) = Cookie::object_mask(Owner::Agent, r);
            state
                .io
                .flows
                .flow_mod(FlowMod::delete_cookie(c, m))
                .await
                .map_err(AttachError::openflow(
                    "deleting flows of the requested ofport",
                ))?;
        }
        install(a.ofport)
            .await
            .map_err(AttachError::openflow("installing the pod's flows"))?;
    }
    lock(&state.attachments).insert(key.clone(), a.clone());
    drop(gate);
    state.update_gauge();
    tracing::info!(ip = %a.address, mac = %a.mac, vlan = a.vlan, segment = %a.segment, port = %a.host_ifname, ofport = a.ofport, "pod attached");
    Ok((a, built))
}

/// What an ADD has done so far, to undo on failure (the address is always
/// released).
#[derive(Debug)]
struct Undo {
    key: AttachmentKey,
    host_ifname: Option<String>,
    port: Option<String>,
    /// Ofports whose flows may have been installed.
    flow_objects: Vec<u32>,
    requested_ofport: Option<u32>,
}

/// Undoes a failed ADD: flows, port, veth, the ofport reservation and the
/// address (local and cluster-wide). Failures are logged.
/// The ofport `ovs-vswitchd` gave the port `name`: from its port status on
/// the OpenFlow connection (sent as it attaches the port, a few ms before
/// the ofport reaches OVSDB at 200 ports) or from OVSDB, whichever comes
/// first. Only an `Add` counts: a change or removal may be a leftover port
/// of the same name going away. A missed status (no connection, a lagging
/// subscriber) leaves OVSDB to tell, within [`OFPORT_TIMEOUT`].
async fn attached_ofport(
    state: &NodeState,
    name: &str,
    status: Option<broadcast::Receiver<PortStatus>>,
) -> Result<u16, AttachError> {
    let from_ovsdb = state.io.ports.wait_ofport(name, OFPORT_TIMEOUT);
    let Some(mut status) = status else {
        return from_ovsdb
            .await
            .map_err(AttachError::ovsdb("waiting for the port's ofport"));
    };
    let from_switch = async move {
        loop {
            match status.recv().await {
                Ok(s) if s.name == name && s.reason == PortReason::Add => {
                    match u16::try_from(s.port_no) {
                        Ok(ofport) if ofport > 0 && ofport < OFPP_MAX => return ofport,
                        _ => {}
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::select! {
        ofport = from_ovsdb => ofport.map_err(AttachError::ovsdb("waiting for the port's ofport")),
        ofport = from_switch => {
            tracing::debug!(port = name, ofport, "attached (port status)");
            Ok(ofport)
        }
    }
}

/// OpenFlow's first reserved port number (`OFPP_MAX`); ports are below it.
const OFPP_MAX: u16 = 0xff00;

async fn roll_back(state: &NodeState, undo: Undo) {
    if let Some(p) = undo.requested_ofport {
        lock(&state.ofports).remove(&p);
    }
    for ofport in &undo.flow_objects {
        let (c, m) = Cookie::object_mask(Owner::Agent, *ofport);
        if let Err(e) = state.io.flows.flow_mod(FlowMod::delete_cookie(c, m)).await {
            tracing::warn!(error = %e, "rollback: deleting flows failed");
        }
    }
    if let Some(port) = &undo.port {
        state.remove_port_quietly(port).await;
    }
    if undo.host_ifname.is_some()
        && let Err(e) = state
            .io
            .links
            .delete(&undo.key.container_id, &undo.key.ifname)
            .await
    {
        tracing::warn!(error = %e, "rollback: deleting veth failed");
    }
    for pool in lock(&state.pools).values_mut() {
        pool.release(&undo.key);
    }
    crate::vlan_pool::release_for_pod(&state.cluster_pools, &state.segments(), None, &undo.key)
        .await;
    tracing::info!("rolled back");
}
