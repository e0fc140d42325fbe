//! The node's attachment state: what the CNI verbs and reconciliation
//! share. The attachments (in memory; their record is the OVS port's
//! `external_ids`), the address pools, the ofports in use, the per-attachment
//! locks, and the clients that reach the kernel, OVSDB, OpenFlow and the API
//! server. Also the one way an attachment is removed ([`NodeState::teardown`]),
//! which DEL, GC and reconciliation share.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ipnet::Ipv4Net;
use switchyard_ovs::openflow::{self, FlowMod};
use switchyard_ovs::ovsdb;
use switchyard_ovs::pipeline::{self, Cookie, Owner};

use crate::adds_in_flight::AddsInFlight;
use crate::apiserver::ApiClient;
use crate::attach_error::AttachError;
use crate::attachment::Attachment;
use crate::config::{AgentConfig, SegmentKind};
use crate::flows::Gateway;
use crate::ipam::{AttachmentKey, Pool};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::netns::{self, Netlink, NetnsPolicy};
use crate::uplink::Uplink;
use crate::vlan_pool::ClusterPools;

/// Name of the pool of overlay segments (the node's pod CIDR).
pub(crate) const NODE_POOL: &str = "@node";

/// Locks a std mutex, ignoring poisoning (the data stays consistent: no
/// critical section here can panic half-way).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the CNI verbs, reconciliation and the daemon.
#[derive(Debug)]
pub(crate) struct NodeState {
    pub config: AgentConfig,
    pub ovsdb: ovsdb::Client,
    pub openflow: openflow::Client,
    pub api: ApiClient,
    pub host: Netlink,
    pub policy: NetnsPolicy,
    pub pod_cidr: Ipv4Net,
    pub gateway: RwLock<Gateway>,
    /// Cluster-wide address pools of `vlan` segments (API server).
    pub cluster_pools: ClusterPools,
    /// Uplink trunks of `vlan` segments.
    pub uplinks: RwLock<Vec<Uplink>>,
    pub pools: Mutex<BTreeMap<String, Pool>>,
    pub attachments: Mutex<BTreeMap<AttachmentKey, Attachment>>,
    /// ofports requested for pods (recorded or being added).
    pub ofports: Mutex<BTreeSet<u32>>,
    pub locks: KeyLocks,
    /// ADDs a GC's valid list cannot account for (see [`AddsInFlight`]).
    pub adds: AddsInFlight,
    /// Current cookie generation; written only by a full flow resync, read
    /// (held) by requests while they install or delete a pod's flows.
    pub flow_gate: tokio::sync::RwLock<Option<u8>>,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

impl NodeState {
    /// The gateway as last ensured.
    pub fn gateway(&self) -> Gateway {
        *self.gateway.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the `pods_attached` gauge from the attachments known.
    pub fn update_gauge(&self) {
        let n = lock(&self.attachments).len();
        self.metrics
            .pods_attached
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The local pool a segment's pods take their addresses from.
    pub fn pool_name(&self, segment: &str) -> String {
        match self.config.segment(segment) {
            Some(s) if s.kind == SegmentKind::Vlan => s.name.clone(),
            _ => NODE_POOL.to_string(),
        }
    }

    /// Every allocated address with its holder, over all pools.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, AttachmentKey)> {
        lock(&self.pools)
            .values()
            .flat_map(|p| {
                p.allocations()
                    .map(|(ip, k)| (ip, k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The lowest free ofport at or above `FIRST_POD`, reserved.
    pub fn reserve_ofport(&self) -> Option<u32> {
        let mut ofports = lock(&self.ofports);
        let mut candidate = pipeline::ofport::FIRST_POD;
        for used in ofports.range(pipeline::ofport::FIRST_POD..) {
            if *used != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate >= 0xff00 {
            return None;
        }
        ofports.insert(candidate);
        Some(candidate)
    }

    /// Removes an OVS port; a missing one is fine, other failures are logged.
    pub async fn remove_port_quietly(&self, name: &str) {
        match self.ovsdb.remove_port(name).await {
            Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
            Err(e) => tracing::warn!(port = name, error = %e, "removing port failed"),
        }
    }

    /// Removes everything of one attachment: flows, port, veth, address.
    /// Each part that is already gone is fine.
    pub async fn teardown(
        &self,
        key: &AttachmentKey,
        known: Option<&Attachment>,
    ) -> Result<(), AttachError> {
        let host_ifname = netns::host_ifname(&key.container_id, &key.ifname);
        let recorded = match known {
            Some(a) => Some(a.clone()),
            None => self.recorded(key, &host_ifname).await?,
        };
        // Flows, port and veth go concurrently: each waits on another party
        // (vswitchd's main loop and reconfiguration, the kernel's RCU grace
        // periods). The ofport stays reserved until all three are done.
        let t0 = Instant::now();
        let gate = self.flow_gate.read().await;
        let flow_object = recorded.as_ref().map(|a| a.ofport).filter(|p| *p > 0);
        let (flows_done, (port, port_took), (veth, veth_took)) = tokio::join!(
            async {
                match flow_object {
                    Some(ofport) => {
                        let (c, m) = Cookie::object_mask(Owner::Agent, ofport);
                        self.openflow.flow_mod(FlowMod::delete_cookie(c, m)).await
                    }
                    None => Ok(()),
                }
            },
            async {
                let r = self.ovsdb.remove_port(&host_ifname).await;
                (r, t0.elapsed())
            },
            async {
                let r = delete_veth_on_own_socket(&key.container_id, &key.ifname).await;
                (r, t0.elapsed())
            }
        );
        tracing::debug!(?port_took, ?veth_took, flows_took = ?t0.elapsed(), "flows, port and veth removed");
        flows_done.map_err(AttachError::openflow("deleting the pod's flows"))?;
        match port {
            Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
            Err(e) => return Err(AttachError::ovsdb("removing the OVS port")(e)),
        }
        veth.map_err(|e| AttachError::DeleteInterface(Box::new(e)))?;
        for pool in lock(&self.pools).values_mut() {
            pool.release(key);
        }
        if let Some(a) = lock(&self.attachments).remove(key) {
            lock(&self.ofports).remove(&a.ofport);
        }
        drop(gate);
        crate::vlan_pool::release_for_pod(
            &self.cluster_pools,
            &self.config,
            recorded.as_ref().map(|a| a.segment.as_str()),
            key,
        )
        .await;
        self.update_gauge();
        Ok(())
    }

    /// The attachment recorded for `key`: in memory, else in OVSDB.
    pub async fn recorded(
        &self,
        key: &AttachmentKey,
        host_ifname: &str,
    ) -> Result<Option<Attachment>, AttachError> {
        if let Some(a) = lock(&self.attachments).get(key) {
            return Ok(Some(a.clone()));
        }
        let port = self
            .ovsdb
            .port(host_ifname)
            .await
            .map_err(AttachError::ovsdb("reading the OVS port"))?;
        let Some(port) = port else { return Ok(None) };
        let ofport = match self.ovsdb.interface(host_ifname).await {
            Ok(Some(i)) => i.ofport.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            _ => 0,
        };
        Ok(Attachment::from_external_ids(host_ifname, &port.external_ids, ofport).ok())
    }
}

/// Deletes a pod's veth through a netlink socket of its own, on a blocking
/// thread. The kernel handles a link deletion synchronously inside the
/// sending call and waits for RCU grace periods (10-20 ms here); on the
/// agent's shared socket every deletion would queue behind the others and
/// stall a runtime worker meanwhile, so parallel DELs would serialise.
/// (The thread stays in the agent's own namespace: no setns.)
async fn delete_veth_on_own_socket(
    container_id: &str,
    ifname: &str,
) -> Result<bool, netns::InterfaceError> {
    let (container_id, ifname) = (container_id.to_string(), ifname.to_string());
    let io_err = |source: std::io::Error| netns::InterfaceError::Io {
        step: netns::Step::DeleteHostEnd,
        ifname: netns::host_ifname(&container_id, &ifname),
        netns: "node".to_string(),
        source,
    };
    let (c, i) = (container_id.clone(), ifname.clone());
    let joined = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok::<_, std::io::Error>(runtime.block_on(async {
            let netlink = Netlink::current()?;
            netns::delete_pod_interface(&netlink, &c, &i).await
        }))
    })
    .await;
    match joined {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(io_err(e)),
        Err(e) => Err(io_err(std::io::Error::other(e))),
    }
}
