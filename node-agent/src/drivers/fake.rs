//! In-memory fakes of the four drivers, for unit tests without root: one
//! [`FakeNode`] plays the kernel, OVSDB, OpenFlow and the API server, keeps
//! what each holds in a [`World`] the tests inspect, and fails the step a
//! test names ([`FailAt`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use switchyard_ovs::openflow::{
    self, ALL_TABLES, Flow, FlowMod, FlowModCommand, FlowStats, FlowStatsRequest,
};
use switchyard_ovs::ovsdb::{self, PortRow, PortSpec};
use switchyard_pipeline as pipeline;

use super::{ApiReads, Drivers, FlowSink, PodLinks, Ports};
use crate::apiserver::{ApiError, PodInfo};
use crate::attachment;
use crate::mac::MacAddr;
use crate::netns::{
    self, InterfaceError, NetnsError, PodInterface, PodInterfaceSpec, PodInterfaceState, RouteEntry,
};

/// A step a test makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FailAt {
    /// Building the veth pair.
    CreateVeth,
    /// Adding the OVS port.
    AddPort,
    /// Waiting for the port's ofport.
    WaitOfport,
    /// Every flow bundle.
    Flows,
    /// Reading pods and namespaces.
    Api,
}

/// A pod end as the fake kernel holds it.
#[derive(Debug, Clone)]
pub(crate) struct FakeVeth {
    pub netns: PathBuf,
    pub pod_ifname: String,
    pub pod_mac: MacAddr,
    pub addresses: Vec<ipnet::Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
}

/// Everything the fakes hold.
#[derive(Debug, Default)]
pub(crate) struct World {
    /// Network namespaces that exist.
    pub netns: BTreeSet<PathBuf>,
    /// Veth pairs by host end name.
    pub veths: BTreeMap<String, FakeVeth>,
    /// OVS ports by name, with their ofport (0: none yet).
    pub ports: BTreeMap<String, (PortRow, u32)>,
    /// Installed flows.
    pub flows: Vec<Flow>,
    /// Pods in the API server.
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// Steps that fail.
    pub fail: BTreeSet<FailAt>,
    /// Ofports vswitchd refuses to honour as `ofport_request`.
    pub refuse_requests: bool,
    /// Ports whose removal fails (OVSDB refuses the transaction).
    pub stuck_ports: BTreeSet<String>,
}

impl World {
    /// The flows whose cookie object is `ofport` (one pod's flows).
    pub fn pod_flows(&self, ofport: u32) -> Vec<&Flow> {
        let (c, m) = pipeline::Cookie::object_mask(pipeline::Owner::Agent, ofport);
        self.flows
            .iter()
            .filter(|f| f.cookie & m == c & m)
            .collect()
    }

    fn next_ofport(&self) -> u32 {
        let used: BTreeSet<u32> = self.ports.values().map(|(_, p)| *p).collect();
        (pipeline::ofport::FIRST_POD + 100..)
            .find(|p| !used.contains(p))
            .unwrap_or(0)
    }
}

/// The kernel, OVSDB, OpenFlow and the API server, in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeNode(Arc<Mutex<World>>);

impl FakeNode {
    /// What the fakes hold now.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fake as the four drivers.
    pub fn drivers(&self) -> Drivers {
        Drivers {
            links: Arc::new(self.clone()),
            ports: Arc::new(self.clone()),
            flows: Arc::new(self.clone()),
            api: Arc::new(self.clone()),
        }
    }

    fn fails(&self, step: FailAt) -> bool {
        self.world().fail.contains(&step)
    }
}

fn injected(what: &str) -> String {
    format!("injected failure: {what}")
}

fn ovsdb_failure(what: &str) -> ovsdb::Error {
    ovsdb::Error::Rpc {
        method: "transact".into(),
        error: injected(what),
        details: None,
    }
}

impl PodLinks for FakeNode {
    fn open_netns(&self, path: &Path) -> Result<PathBuf, NetnsError> {
        if self.world().netns.contains(path) {
            Ok(path.to_path_buf())
        } else {
            Err(NetnsError::NotFound(path.to_path_buf()))
        }
    }

    fn create<'a>(
        &'a self,
        netns: &'a Path,
        spec: &'a PodInterfaceSpec,
    ) -> BoxFuture<'a, Result<PodInterface, InterfaceError>> {
        let out = (|| {
            if self.fails(FailAt::CreateVeth) {
                return Err(InterfaceError::InvalidSpec(injected("veth")));
            }
            let mut w = self.world();
            if !w.netns.contains(netns) {
                return Err(NetnsError::NotFound(netns.to_path_buf()).into());
            }
            let host_ifname = netns::host_ifname(&spec.container_id, &spec.ifname);
            let pod_mac = spec.pod_mac();
            w.veths.insert(
                host_ifname.clone(),
                FakeVeth {
                    netns: netns.to_path_buf(),
                    pod_ifname: spec.ifname.clone(),
                    pod_mac,
                    addresses: vec![spec.address],
                    gateway: spec.gateway,
                },
            );
            Ok(PodInterface {
                host_ifname,
                host_ifindex: 10,
                host_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
                pod_ifname: spec.ifname.clone(),
                pod_ifindex: 2,
                pod_mac,
                sandbox: netns.to_path_buf(),
                address: spec.address,
                gateway: spec.gateway,
                mtu: spec.mtu,
            })
        })();
        async move { out }.boxed()
    }

    fn delete<'a>(
        &'a self,
        container_id: &'a str,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, InterfaceError>> {
        let existed = self
            .world()
            .veths
            .remove(&netns::host_ifname(container_id, ifname))
            .is_some();
        async move { Ok(existed) }.boxed()
    }

    fn inspect<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<PodInterfaceState, InterfaceError>> {
        let w = self.world();
        let found = w
            .veths
            .values()
            .find(|v| v.netns == netns && v.pod_ifname == ifname)
            .map(|v| PodInterfaceState {
                ifname: ifname.to_string(),
                ifindex: 2,
                mac: Some(v.pod_mac),
                mtu: None,
                up: true,
                addresses: v.addresses.clone(),
                routes: v
                    .gateway
                    .map(|gw| RouteEntry {
                        destination: ipnet::Ipv4Net::default(),
                        gateway: Some(gw),
                        link_scope: false,
                    })
                    .into_iter()
                    .collect(),
                tx_checksum: false,
            })
            .ok_or_else(|| InterfaceError::NotFound {
                ifname: ifname.to_string(),
                netns: netns.display().to_string(),
            });
        async move { found }.boxed()
    }

    fn host_mac<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<MacAddr>> {
        let mac = self
            .world()
            .veths
            .contains_key(name)
            .then_some(MacAddr([0x02, 0, 0, 0, 0, 1]));
        async move { mac }.boxed()
    }

    fn host_ends(&self) -> BoxFuture<'_, Result<Vec<String>, InterfaceError>> {
        let names = self.world().veths.keys().cloned().collect();
        async move { Ok(names) }.boxed()
    }

    fn delete_host_end<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, InterfaceError>> {
        let existed = self.world().veths.remove(name).is_some();
        async move { Ok(existed) }.boxed()
    }

    fn announce(
        &self,
        _netns: PathBuf,
        _ifindex: u32,
        _mac: MacAddr,
        _ip: Ipv4Addr,
    ) -> BoxFuture<'static, std::io::Result<()>> {
        async { Ok(()) }.boxed()
    }
}

impl Ports for FakeNode {
    fn is_connected(&self) -> bool {
        true
    }

    fn add_port<'a>(
        &'a self,
        _bridge: &'a str,
        port: &'a PortSpec,
    ) -> BoxFuture<'a, Result<(), ovsdb::Error>> {
        let out = (|| {
            if self.fails(FailAt::AddPort) {
                return Err(ovsdb_failure("add port"));
            }
            let mut w = self.world();
            if w.ports.contains_key(&port.name) {
                return Err(ovsdb::Error::PortExists(port.name.clone()));
            }
            let ofport = match port.ofport_request {
                Some(p) if !w.refuse_requests => u32::from(p),
                _ => w.next_ofport(),
            };
            let row = PortRow {
                name: port.name.clone(),
                tag: port.tag,
                external_ids: port.port_external_ids.clone(),
                ..PortRow::default()
            };
            w.ports.insert(port.name.clone(), (row, ofport));
            Ok(())
        })();
        async move { out }.boxed()
    }

    fn remove_port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ovsdb::Error>> {
        if self.world().stuck_ports.contains(name) {
            let out = Err(ovsdb_failure("remove port"));
            return async move { out }.boxed();
        }
        let out = match self.world().ports.remove(name) {
            Some(_) => Ok(()),
            None => Err(ovsdb::Error::PortNotFound(name.to_string())),
        };
        async move { out }.boxed()
    }

    fn wait_ofport<'a>(
        &'a self,
        name: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<u16, ovsdb::Error>> {
        let out = if self.fails(FailAt::WaitOfport) {
            Err(ovsdb_failure("wait for ofport"))
        } else {
            match self.world().ports.get(name) {
                Some((_, p)) if *p > 0 => Ok(u16::try_from(*p).unwrap_or(0)),
                _ => Err(ovsdb_failure("no ofport")),
            }
        };
        async move { out }.boxed()
    }

    fn ofport<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<u32>, ovsdb::Error>> {
        let out = self.world().ports.get(name).map(|(_, p)| *p);
        async move { Ok(out) }.boxed()
    }

    fn port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<PortRow>, ovsdb::Error>> {
        let out = self.world().ports.get(name).map(|(row, _)| row.clone());
        async move { Ok(out) }.boxed()
    }

    fn agent_ports(&self) -> BoxFuture<'_, Result<Vec<PortRow>, ovsdb::Error>> {
        let out = self
            .world()
            .ports
            .values()
            .filter(|(row, _)| {
                row.external_ids
                    .get(attachment::KEY_OWNER)
                    .map(String::as_str)
                    == Some(attachment::OWNER_VALUE)
            })
            .map(|(row, _)| row.clone())
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn interface_ofports(&self) -> BoxFuture<'_, Result<BTreeMap<String, u32>, ovsdb::Error>> {
        let out = self
            .world()
            .ports
            .iter()
            .map(|(name, (_, p))| (name.clone(), *p))
            .collect();
        async move { Ok(out) }.boxed()
    }
}

fn selects(cookie: u64, mask: u64, flow: &Flow) -> bool {
    flow.cookie & mask == cookie & mask
}

fn apply(flows: &mut Vec<Flow>, fm: FlowMod) {
    match fm.command {
        FlowModCommand::Add => {
            flows.retain(|f| {
                !(f.table == fm.flow.table
                    && f.priority == fm.flow.priority
                    && f.matches == fm.flow.matches)
            });
            flows.push(fm.flow);
        }
        FlowModCommand::Delete | FlowModCommand::DeleteStrict => flows.retain(|f| {
            !(selects(fm.flow.cookie, fm.cookie_mask, f)
                && (fm.flow.table == ALL_TABLES || f.table == fm.flow.table)
                && fm.flow.matches.iter().all(|m| f.matches.contains(m)))
        }),
        FlowModCommand::Modify | FlowModCommand::ModifyStrict => {}
    }
}

impl FlowSink for FakeNode {
    fn is_connected(&self) -> bool {
        true
    }

    fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>> {
        let out = if self.fails(FailAt::Flows) {
            Err(openflow::Error::NotConnected)
        } else {
            let mut w = self.world();
            for fm in mods {
                apply(&mut w.flows, fm);
            }
            Ok(())
        };
        async move { out }.boxed()
    }

    fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>> {
        // Deletes always work (so a rollback after a failed bundle cleans up).
        apply(&mut self.world().flows, fm);
        async { Ok(()) }.boxed()
    }

    fn flow_mod_queued(&self, fm: FlowMod) -> Result<super::FlowConfirmation, openflow::Error> {
        apply(&mut self.world().flows, fm);
        Ok(async { Ok(()) }.boxed())
    }

    fn dump(
        &self,
        req: FlowStatsRequest,
    ) -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>> {
        let out = self
            .world()
            .flows
            .iter()
            .filter(|f| selects(req.cookie, req.cookie_mask, f))
            .filter(|f| req.table == ALL_TABLES || f.table == req.table)
            .map(|f| FlowStats {
                flow: f.clone(),
                packet_count: 0,
                byte_count: 0,
                duration_sec: 0,
                idle_age: None,
            })
            .collect();
        async move { Ok(out) }.boxed()
    }
}

impl ApiReads for FakeNode {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>> {
        let out = if self.fails(FailAt::Api) {
            Err(ApiError::Timeout {
                what: injected("pod read"),
            })
        } else {
            Ok(self
                .world()
                .pods
                .get(&(namespace.to_string(), name.to_string()))
                .cloned())
        };
        async move { out }.boxed()
    }

    fn namespace_annotations<'a>(
        &'a self,
        _namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ApiError>> {
        let out = if self.fails(FailAt::Api) {
            Err(ApiError::Timeout {
                what: injected("namespace read"),
            })
        } else {
            Ok(BTreeMap::new())
        };
        async move { out }.boxed()
    }
}
