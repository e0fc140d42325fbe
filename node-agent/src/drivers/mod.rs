//! The seams between the agent's logic and the outside world: one small
//! trait each in front of the kernel ([`PodLinks`]: the pod's netns, veth
//! and addresses), OVSDB ([`Ports`]), OpenFlow ([`FlowSink`]) and the API
//! server's reads ([`ApiReads`]). The CNI verbs and reconciliation call
//! only these; the real implementations wrap `netns`, `ovsdb::Client`,
//! `openflow::Client` and `ApiClient`, and unit tests put in-memory fakes
//! behind them (`drivers::fake`), so ADD, its rollback, DEL, CHECK, GC and
//! reconciliation run without root in milliseconds.
//!
//! Start-up and the datapath modules (bridge, gateway, tunnel, uplinks)
//! keep using the concrete clients.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use switchyard_ovs::openflow::{self, FlowMod, FlowStats, FlowStatsRequest, PortStatus};
use switchyard_ovs::ovsdb::{self, PortRow, PortSpec};
use tokio::sync::broadcast;

use crate::apiserver::{ApiClient, ApiError, PodInfo};
use crate::attachment;
use crate::mac::MacAddr;
use crate::netns::{
    self, InterfaceError, Netlink, Netns, NetnsError, NetnsPolicy, PodInterface, PodInterfaceSpec,
    PodInterfaceState,
};

#[cfg(test)]
pub(crate) mod fake;

/// Pod interfaces: the pod's netns, its veth pair and addresses.
pub trait PodLinks: Send + Sync + fmt::Debug {
    /// Opens a pod's netns to check it is usable; the path as recorded.
    fn open_netns(&self, path: &Path) -> Result<PathBuf, NetnsError>;
    /// Builds the pod interface (veth pair, address, routes, MTU).
    fn create<'a>(
        &'a self,
        netns: &'a Path,
        spec: &'a PodInterfaceSpec,
    ) -> BoxFuture<'a, Result<PodInterface, InterfaceError>>;
    /// Deletes a pod interface by its host end; `Ok(false)` if it was gone.
    fn delete<'a>(
        &'a self,
        container_id: &'a str,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, InterfaceError>>;
    /// Reads back the pod end (CHECK).
    fn inspect<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<PodInterfaceState, InterfaceError>>;
    /// The MAC of a host-side link, if it exists.
    fn host_mac<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<MacAddr>>;
    /// The host ends on the node named as the agent names them.
    fn host_ends(&self) -> BoxFuture<'_, Result<Vec<String>, InterfaceError>>;
    /// Deletes a host end by name (the pod end goes with it); `Ok(false)` if it was gone.
    fn delete_host_end<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, InterfaceError>>;
    /// Sends a gratuitous ARP from the pod end (best effort).
    fn announce(
        &self,
        netns: PathBuf,
        ifindex: u32,
        mac: MacAddr,
        ip: Ipv4Addr,
    ) -> BoxFuture<'static, std::io::Result<()>>;
}

/// OVSDB: the pods' ports on the bridge.
pub trait Ports: Send + Sync + fmt::Debug {
    /// Whether the OVSDB connection is up.
    fn is_connected(&self) -> bool;
    /// Adds a port (and its interface) to `bridge`.
    fn add_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a PortSpec,
    ) -> BoxFuture<'a, Result<(), ovsdb::Error>>;
    /// Removes a port (`Error::PortNotFound` if there is none).
    fn remove_port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ovsdb::Error>>;
    /// Waits until vswitchd gave the interface an ofport.
    fn wait_ofport<'a>(
        &'a self,
        name: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<u16, ovsdb::Error>>;
    /// The interface's ofport now (0 if none yet), `None` if there is no
    /// such interface.
    fn ofport<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<u32>, ovsdb::Error>>;
    /// A port by name.
    fn port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<PortRow>, ovsdb::Error>>;
    /// Every port the agent owns (its `switchyard.io/owner` external id).
    fn agent_ports(&self) -> BoxFuture<'_, Result<Vec<PortRow>, ovsdb::Error>>;
    /// Every interface's ofport (0 while it has none), in one read.
    fn interface_ofports(&self) -> BoxFuture<'_, Result<BTreeMap<String, u32>, ovsdb::Error>>;
}

/// The switch's confirmation of a queued flow mod ([`FlowSink::flow_mod_queued`]).
pub type FlowConfirmation = BoxFuture<'static, Result<(), openflow::Error>>;

/// OpenFlow: the agent's flows on the bridge.
pub trait FlowSink: Send + Sync + fmt::Debug {
    /// Whether the OpenFlow connection is up.
    fn is_connected(&self) -> bool;
    /// Applies flow mods in one atomic, ordered bundle.
    fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>>;
    /// Applies one flow mod.
    fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>>;
    /// Queues one flow mod before returning, so every mod sent afterwards
    /// is applied after it; the future (spawnable) confirms it. Fails at
    /// once when there is no connection.
    fn flow_mod_queued(&self, fm: FlowMod) -> Result<FlowConfirmation, openflow::Error>;
    /// Dumps the flows a request selects.
    fn dump(&self, req: FlowStatsRequest)
    -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>>;
    /// The switch's port status messages from now on (`ovs-vswitchd` sends
    /// one as it attaches a port, before it writes the `ofport` to OVSDB);
    /// `None` where there are none, and then only OVSDB tells the ofport.
    fn port_status(&self) -> Option<broadcast::Receiver<PortStatus>> {
        None
    }
}

/// The API server reads the verbs and reconciliation need.
pub trait ApiReads: Send + Sync + fmt::Debug {
    /// A pod's uid and annotations; `None` if it does not exist. May come
    /// from a watch cache (ADD's reads, see `crate::api_cache`).
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>>;
    /// The pod as the API server has it now (reconciliation: what to tear
    /// down must not be decided from a cache that may lag).
    fn pod_fresh<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>> {
        self.pod(namespace, name)
    }
    /// A namespace's annotations (empty if it does not exist).
    fn namespace_annotations<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ApiError>>;
}

/// The four drivers together, as the agent's state holds them.
#[derive(Debug, Clone)]
pub struct Drivers {
    /// Pod interfaces.
    pub links: Arc<dyn PodLinks>,
    /// OVSDB.
    pub ports: Arc<dyn Ports>,
    /// OpenFlow.
    pub flows: Arc<dyn FlowSink>,
    /// API server reads.
    pub api: Arc<dyn ApiReads>,
}

/// The real [`PodLinks`]: netlink in the node namespace, the pod's
/// namespace entered on the dedicated netns thread.
#[derive(Debug)]
pub struct NetnsLinks {
    host: Arc<Netlink>,
    policy: NetnsPolicy,
}

impl NetnsLinks {
    /// Pod interfaces made through `host` (the node namespace's netlink),
    /// pod namespaces accepted by `policy`.
    pub fn new(host: Arc<Netlink>, policy: NetnsPolicy) -> NetnsLinks {
        NetnsLinks { host, policy }
    }
}

impl PodLinks for NetnsLinks {
    fn open_netns(&self, path: &Path) -> Result<PathBuf, NetnsError> {
        Netns::open(path, &self.policy).map(|ns| ns.path().to_path_buf())
    }

    fn create<'a>(
        &'a self,
        netns: &'a Path,
        spec: &'a PodInterfaceSpec,
    ) -> BoxFuture<'a, Result<PodInterface, InterfaceError>> {
        async move {
            let ns = Netns::open(netns, &self.policy)?;
            netns::create_pod_interface(&self.host, &ns, spec).await
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        container_id: &'a str,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, InterfaceError>> {
        delete_veth_on_own_socket(container_id, ifname).boxed()
    }

    fn inspect<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<PodInterfaceState, InterfaceError>> {
        async move {
            let ns = Netns::open(netns, &self.policy)?;
            netns::inspect_pod_interface(&ns, ifname).await
        }
        .boxed()
    }

    fn host_mac<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<MacAddr>> {
        async move {
            let link = self.host.link_by_name(name).await.ok()??;
            netns::link_mac(&link)
        }
        .boxed()
    }

    fn host_ends(&self) -> BoxFuture<'_, Result<Vec<String>, InterfaceError>> {
        async move {
            let names = self
                .host
                .link_names()
                .await
                .map_err(|source| InterfaceError::Netlink {
                    step: netns::Step::ListLinks,
                    ifname: format!("{}*", netns::HOST_IFNAME_PREFIX),
                    netns: "node".to_string(),
                    source,
                })?;
            Ok(names
                .into_iter()
                .filter(|n| netns::is_host_ifname(n))
                .collect())
        }
        .boxed()
    }

    fn delete_host_end<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, InterfaceError>> {
        async move { netns::delete_host_end(&self.host, name).await }.boxed()
    }

    fn announce(
        &self,
        path: PathBuf,
        ifindex: u32,
        mac: MacAddr,
        ip: Ipv4Addr,
    ) -> BoxFuture<'static, std::io::Result<()>> {
        let opened = Netns::open(&path, &self.policy);
        async move {
            let ns = opened.map_err(std::io::Error::other)?;
            netns::run_in_netns(&ns, move || {
                netns::arp::send_gratuitous_arp(ifindex, mac, ip)
            })
            .await
            .map_err(std::io::Error::other)?
        }
        .boxed()
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
) -> Result<bool, InterfaceError> {
    let (container_id, ifname) = (container_id.to_string(), ifname.to_string());
    let io_err = |source: std::io::Error| InterfaceError::Io {
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

impl Ports for ovsdb::Client {
    fn is_connected(&self) -> bool {
        ovsdb::Client::is_connected(self)
    }

    fn add_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a PortSpec,
    ) -> BoxFuture<'a, Result<(), ovsdb::Error>> {
        ovsdb::Client::add_port(self, bridge, port)
            .map(|r| r.map(drop))
            .boxed()
    }

    fn remove_port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), ovsdb::Error>> {
        ovsdb::Client::remove_port(self, name).boxed()
    }

    fn wait_ofport<'a>(
        &'a self,
        name: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<u16, ovsdb::Error>> {
        self.interface_ofport(name, timeout).boxed()
    }

    fn ofport<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<u32>, ovsdb::Error>> {
        async move {
            Ok(self
                .interface(name)
                .await?
                .map(|i| i.ofport.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)))
        }
        .boxed()
    }

    fn port<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<PortRow>, ovsdb::Error>> {
        ovsdb::Client::port(self, name).boxed()
    }

    fn agent_ports(&self) -> BoxFuture<'_, Result<Vec<PortRow>, ovsdb::Error>> {
        self.find_ports_by_external_id(attachment::KEY_OWNER, attachment::OWNER_VALUE)
            .boxed()
    }

    fn interface_ofports(&self) -> BoxFuture<'_, Result<BTreeMap<String, u32>, ovsdb::Error>> {
        async move {
            let select = ovsdb::Operation::select_columns("Interface", vec![], &["name", "ofport"]);
            let results = self.transact("Open_vSwitch", &[select]).await?;
            Ok(results
                .first()
                .and_then(|r| r.rows.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|row| {
                    let name = row.get("name")?.as_str()?.to_string();
                    let ofport = row
                        .get("ofport")
                        .and_then(ovsdb::Value::as_integer)
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(0);
                    Some((name, ofport))
                })
                .collect())
        }
        .boxed()
    }
}

impl FlowSink for openflow::Client {
    fn is_connected(&self) -> bool {
        self.state().connected
    }

    fn bundle(&self, mods: Vec<FlowMod>) -> BoxFuture<'_, Result<(), openflow::Error>> {
        self.bundle_flow_mods(mods).boxed()
    }

    fn flow_mod(&self, fm: FlowMod) -> BoxFuture<'_, Result<(), openflow::Error>> {
        openflow::Client::flow_mod(self, fm).boxed()
    }

    fn flow_mod_queued(&self, fm: FlowMod) -> Result<FlowConfirmation, openflow::Error> {
        Ok(openflow::Client::flow_mod_queued(self, fm)?.boxed())
    }

    fn dump(
        &self,
        req: FlowStatsRequest,
    ) -> BoxFuture<'_, Result<Vec<FlowStats>, openflow::Error>> {
        self.dump_flows(req).boxed()
    }

    fn port_status(&self) -> Option<broadcast::Receiver<PortStatus>> {
        Some(openflow::Client::port_status(self))
    }
}

impl ApiReads for ApiClient {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>> {
        ApiClient::pod(self, namespace, name).boxed()
    }

    fn namespace_annotations<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ApiError>> {
        ApiClient::namespace_annotations(self, namespace).boxed()
    }
}
