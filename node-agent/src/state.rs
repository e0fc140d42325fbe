//! The node's attachment state: what the CNI verbs and reconciliation
//! share. The attachments (in memory; their record is the OVS port's
//! `external_ids`), the address pools, the ofports in use, the per-attachment
//! locks, and the clients that reach the kernel, OVSDB, OpenFlow and the API
//! server. Also the one way an attachment is removed ([`NodeState::teardown`]),
//! which DEL, GC and reconciliation share.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
#[cfg(test)]
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ipnet::Ipv4Net;
use switchyard_ovs::openflow::FlowMod;
use switchyard_ovs::ovsdb;
use switchyard_pipeline::{self as pipeline, Cookie, Owner};
use tracing::Instrument;

use crate::adds_in_flight::AddsInFlight;
use crate::attach_error::AttachError;
use crate::attachment::Attachment;
use crate::config::{AgentConfig, SegmentConfig, SegmentKind};
use crate::drivers::Drivers;
use crate::flows::Gateway;
use crate::ipam::{AttachmentKey, Pool};
use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::netns;
use crate::policy::{LocalPod, NetworkPolicies, PolicyError, UpdateStats};
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
    /// The segments in effect: the configuration file's, then the API's `Segment` objects
    /// (`segment_watch`); replaced as a whole on every change.
    pub segments: RwLock<Arc<Vec<SegmentConfig>>>,
    /// The kernel, OVSDB, OpenFlow and the API server, behind traits.
    pub io: Drivers,
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
    /// Static MACs claimed by ADDs in flight (one per segment on this node).
    pub mac_claims: crate::segment::MacClaims,
    /// Current cookie generation; written only by a full flow resync, read
    /// (held) by requests while they install or delete a pod's flows.
    pub flow_gate: tokio::sync::RwLock<Option<u8>>,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// NetworkPolicy: the caches and the installed policy flows.
    pub policy: Arc<NetworkPolicies>,
}

impl NodeState {
    /// This node's attached pods, as the policy compiler reads them.
    pub fn local_pods(&self) -> Vec<LocalPod> {
        local_pods(lock(&self.attachments).values())
    }

    /// Brings the NetworkPolicy flows up to date with the caches and this
    /// node's pods (one bundle with the difference). Before the first full
    /// resync there is nothing to update: that resync installs them.
    pub async fn sync_policies(&self) -> Result<UpdateStats, PolicyError> {
        let gate = self.flow_gate.read().await;
        let Some(generation) = *gate else {
            return Ok(UpdateStats::default());
        };
        self.policy
            .update(
                generation,
                &self.local_pods(),
                self.io.flows.as_ref(),
                Some(&self.metrics),
            )
            .await
    }

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

    /// The segments in effect (file and API).
    pub fn segments(&self) -> Arc<Vec<SegmentConfig>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One segment in effect, by name.
    pub fn segment(&self, name: &str) -> Option<SegmentConfig> {
        self.segments().iter().find(|s| s.name == name).cloned()
    }

    /// The addresses this node's recorded attachments hold in `segment`.
    pub fn held_in(&self, segment: &str) -> Vec<(AttachmentKey, Ipv4Addr)> {
        lock(&self.attachments)
            .values()
            .filter(|a| a.segment == segment)
            .map(|a| (a.key.clone(), a.address.addr()))
            .collect()
    }

    /// The local pool a segment's pods take their addresses from.
    pub fn pool_name(&self, segment: &str) -> String {
        match self.segment(segment) {
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
        match self.io.ports.remove_port(name).await {
            Ok(()) | Err(ovsdb::Error::PortNotFound(_)) => {}
            Err(e) => tracing::warn!(port = name, error = %e, "removing port failed"),
        }
    }

    /// Removes everything of one attachment: flows, port, veth, address.
    /// Each part that is already gone is fine. Returns once vswitchd
    /// confirmed the flows' removal (reconciliation and GC: what they leave
    /// is what they report).
    pub async fn teardown(
        &self,
        key: &AttachmentKey,
        known: Option<&Attachment>,
    ) -> Result<(), AttachError> {
        self.teardown_with(key, known, FlowRemoval::Confirmed).await
    }

    /// [`NodeState::teardown`] for CNI DEL: returns once the flows' removal
    /// is queued on the OpenFlow connection, ahead of anything sent later;
    /// its confirmation is logged when it comes.
    pub async fn teardown_for_del(&self, key: &AttachmentKey) -> Result<(), AttachError> {
        self.teardown_with(key, None, FlowRemoval::Queued).await
    }

    async fn teardown_with(
        &self,
        key: &AttachmentKey,
        known: Option<&Attachment>,
        flow_removal: FlowRemoval,
    ) -> Result<(), AttachError> {
        let host_ifname = netns::host_ifname(&key.container_id, &key.ifname);
        let recorded = match known {
            Some(a) => Some(a.clone()),
            None => self.recorded(key, &host_ifname).await?,
        };
        // The flows' delete is queued on the OpenFlow connection first: any
        // flow sent later (a new pod given this ofport or address) reaches
        // vswitchd after it. A DEL does not wait for its confirmation: with
        // DELs side by side vswitchd is busy reconfiguring for their port
        // removals and the barrier reply came last (8-way DEL p99 120 ms
        // against 67 ms for the veth). A delete lost with the connection
        // is done by the resync after the reconnect (older generations go).
        // Port and veth go concurrently, each waiting on another party
        // (ovsdb-server, the kernel's RCU grace periods).
        let t0 = Instant::now();
        let gate = self.flow_gate.read().await;
        let flow_object = recorded.as_ref().map(|a| a.ofport).filter(|p| *p > 0);
        let flows_queued = match flow_object {
            Some(ofport) => {
                let (c, m) = Cookie::object_mask(Owner::Agent, ofport);
                Some(self.io.flows.flow_mod_queued(FlowMod::delete_cookie(c, m)))
            }
            None => None,
        };
        let ((port, port_took), (veth, veth_took)) = tokio::join!(
            async {
                let r = self.io.ports.remove_port(&host_ifname).await;
                (r, t0.elapsed())
            },
            async {
                let r = self.io.links.delete(&key.container_id, &key.ifname).await;
                (r, t0.elapsed())
            }
        );
        tracing::debug!(?port_took, ?veth_took, all_took = ?t0.elapsed(), "flows queued, port and veth removed");
        if let Some(queued) = flows_queued {
            let confirmation = queued.map_err(AttachError::openflow(DELETING_FLOWS))?;
            match flow_removal {
                FlowRemoval::Confirmed => confirmation
                    .await
                    .map_err(AttachError::openflow(DELETING_FLOWS))?,
                FlowRemoval::Queued => log_when_confirmed(confirmation),
            }
        }
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
            // Its policy flows go with the next update.
            self.policy.poke();
        }
        drop(gate);
        crate::vlan_pool::release_for_pod(
            &self.cluster_pools,
            &self.segments(),
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
            .io
            .ports
            .port(host_ifname)
            .await
            .map_err(AttachError::ovsdb("reading the OVS port"))?;
        let Some(port) = port else { return Ok(None) };
        let ofport = match self.io.ports.ofport(host_ifname).await {
            Ok(Some(p)) => p,
            _ => 0,
        };
        Ok(Attachment::from_external_ids(host_ifname, &port.external_ids, ofport).ok())
    }
}

/// What a failed removal of a pod's flows was doing.
const DELETING_FLOWS: &str = "deleting the pod's flows";

/// Logs the switch's confirmation of a queued flow removal when it comes.
fn log_when_confirmed(confirmation: crate::drivers::FlowConfirmation) {
    tokio::spawn(
        async move {
            let t0 = Instant::now();
            match confirmation.await {
                Ok(()) => tracing::debug!(took = ?t0.elapsed(), "pod's flows deleted"),
                Err(e) => tracing::warn!(error = %e, "deleting the pod's flows was not confirmed; the resync after a reconnect removes them"),
            }
        }
        .in_current_span(),
    );
}

/// Whether a teardown waits for vswitchd to confirm the flows' removal.
#[derive(Debug, Clone, Copy)]
enum FlowRemoval {
    Confirmed,
    Queued,
}

#[cfg(test)]
impl NodeState {
    /// A node's state on top of `io` (fakes): pod CIDR 10.244.1.0/24, ready, with
    /// the segments of `segments_yaml` (a config file's `segments:`) or the
    /// default overlay segment. The API client of the cluster-wide pools
    /// points nowhere (`vlan` segment ADDs are not run through fakes).
    pub(crate) fn for_tests(io: Drivers, segments_yaml: Option<&str>) -> NodeState {
        use std::sync::RwLock;
        use std::sync::atomic::AtomicBool;

        use crate::config::{AgentConfig, FileConfig, Flags};
        use crate::ipam::Pool;

        let flags = Flags {
            node_name: Some("node-1".into()),
            ..Flags::default()
        };
        let file = segments_yaml
            .map(|y| FileConfig::from_yaml(y, Path::new("test.yaml")).expect("segments"))
            .unwrap_or_default();
        let config = AgentConfig::merge(&flags, file, None).expect("config");
        let pod_cidr: ipnet::Ipv4Net = "10.244.1.0/24".parse().expect("cidr");
        let mut pools = BTreeMap::new();
        pools.insert(NODE_POOL.to_string(), Pool::for_node_cidr(pod_cidr));
        for seg in &config.segments {
            if let Some(subnet) = seg.subnet {
                pools.insert(
                    seg.name.clone(),
                    Pool::new(subnet, seg.gateway).expect("pool"),
                );
            }
        }
        let nowhere = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("uri"),
        ))
        .expect("kube client");
        NodeState {
            cluster_pools: crate::vlan_pool::ClusterPools::new(nowhere, &config.node_name),
            segments: RwLock::new(Arc::new(config.segments.clone())),
            config,
            io,
            pod_cidr,
            gateway: RwLock::new(crate::flows::Gateway {
                ofport: pipeline::ofport::GATEWAY,
                mac: crate::mac::MacAddr([0x02, 0, 0, 0, 0, 0xfe]),
                ip: Ipv4Addr::new(10, 244, 1, 1),
            }),
            uplinks: RwLock::new(Vec::new()),
            pools: Mutex::new(pools),
            attachments: Mutex::new(BTreeMap::new()),
            ofports: Mutex::new(BTreeSet::new()),
            locks: crate::keylock::KeyLocks::default(),
            adds: crate::adds_in_flight::AddsInFlight::default(),
            mac_claims: Default::default(),
            flow_gate: tokio::sync::RwLock::new(Some(1)),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            policy: Arc::new(NetworkPolicies::new(None, Ipv4Addr::new(10, 244, 0, 1))),
        }
    }
}

/// The policy compiler's view of attachments (those with an ofport).
pub(crate) fn local_pods<'a>(attachments: impl Iterator<Item = &'a Attachment>) -> Vec<LocalPod> {
    attachments
        .filter(|a| a.ofport > 0)
        .map(|a| LocalPod {
            namespace: a.pod_namespace.clone(),
            name: a.pod_name.clone(),
            ofport: a.ofport,
            ip: a.address.addr(),
        })
        .collect()
}
