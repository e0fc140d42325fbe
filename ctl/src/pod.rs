//! `pod NS/NAME`: where a pod is plugged in, and the flows that match it.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::Error;
use crate::flows::{self, FlowView};
use crate::output::{Render, Table};
use crate::ovs::{Ovs, PortInfo, PortKind, keys};

/// One interface of the pod (a pod normally has one, `eth0`).
#[derive(Debug, Clone, Serialize)]
pub struct PodInterface {
    /// OVS port = host-side veth name.
    pub port: String,
    /// OpenFlow port number.
    pub ofport: Option<i64>,
    /// The pod-side interface (CNI_IFNAME).
    pub pod_interface: String,
    /// The pod's address with prefix length.
    pub address: String,
    /// The pod's MAC.
    pub mac: String,
    /// The segment.
    pub segment: String,
    /// The VLAN (0 = untagged, the overlay).
    pub vlan: u16,
    /// The Port's `tag` column.
    pub tag: Option<u16>,
    /// The pod's default gateway.
    pub gateway: Option<String>,
    /// Container id.
    pub container_id: String,
    /// The pod's network namespace.
    pub netns: String,
}

impl PodInterface {
    /// From the port's `external_ids`.
    pub fn from_port(p: &PortInfo) -> Self {
        let id = |k: &str| p.id(k).unwrap_or_default().to_string();
        Self {
            port: p.name.clone(),
            ofport: p.ofport,
            pod_interface: id(keys::IFNAME),
            address: id(keys::IP),
            mac: id(keys::MAC),
            segment: id(keys::SEGMENT),
            vlan: p.id(keys::VLAN).and_then(|v| v.parse().ok()).unwrap_or(0),
            tag: p.tag,
            gateway: p.id(keys::GATEWAY).map(str::to_string),
            container_id: id(keys::CONTAINER_ID),
            netns: id(keys::NETNS),
        }
    }

    /// The address without prefix length.
    pub fn ip(&self) -> &str {
        self.address.split('/').next().unwrap_or_default()
    }
}

/// What `pod` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PodReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it runs on (from the API; `None` when the API was not reachable).
    pub node: Option<String>,
    /// Its interfaces on this node's bridge.
    pub interfaces: Vec<PodInterface>,
    /// The flows that match it, by table.
    pub flows: Vec<FlowView>,
}

/// The bridge's ports of pod `ns/name`.
pub fn pod_ports<'a>(ports: &'a [PortInfo], ns: &str, name: &str) -> Vec<&'a PortInfo> {
    ports
        .iter()
        .filter(|p| {
            p.kind == PortKind::Pod
                && p.id(keys::POD_NAMESPACE) == Some(ns)
                && p.id(keys::POD_NAME) == Some(name)
        })
        .collect()
}

/// Whether a flow belongs to or matches one of the interfaces: the agent's
/// cookie object is its ofport, or the match names its in_port, output port
/// (`reg1`), address or MAC.
pub fn flow_matches(f: &FlowView, ifaces: &[PodInterface]) -> bool {
    ifaces.iter().any(|i| {
        let ofport = i.ofport.and_then(|p| u64::try_from(p).ok());
        let by_cookie =
            f.owner == "agent" && i.ofport.is_some_and(|p| f.object.map(i64::from) == Some(p));
        by_cookie
            || ofport.is_some_and(|p| f.matches_number("in_port", p) || f.matches_number("reg1", p))
            || ["nw_src", "nw_dst", "arp_spa", "arp_tpa"]
                .iter()
                .any(|k| f.matches_field(k, i.ip()))
            || ["dl_src", "dl_dst", "arp_sha", "arp_tha"]
                .iter()
                .any(|k| !i.mac.is_empty() && f.matches_field(k, &i.mac))
    })
}

/// Runs `pod`.
pub async fn run(
    ovs: &Ovs,
    kube: Result<::kube::Client, Error>,
    ns: &str,
    name: &str,
) -> Result<PodReport, Error> {
    let node = match kube {
        Ok(client) => {
            let pods: ::kube::Api<Pod> = ::kube::Api::namespaced(client, ns);
            match pods.get_opt(name).await {
                Ok(Some(pod)) => pod.spec.and_then(|s| s.node_name),
                Ok(None) => {
                    tracing::warn!(
                        "pod {ns}/{name} does not exist in the API (looking in OVS anyway)"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!("cannot read pod {ns}/{name} from the API: {e}");
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!("no API access, the node is not shown: {e}");
            None
        }
    };
    let db = ovs.ovsdb().await?;
    let ports = ovs.ports(&db).await?;
    let interfaces: Vec<PodInterface> = pod_ports(&ports, ns, name)
        .into_iter()
        .map(PodInterface::from_port)
        .collect();
    if interfaces.is_empty() {
        let where_ = node
            .as_deref()
            .map(|n| format!("; the API says it runs on node {n}: run switchyardctl there"))
            .unwrap_or_default();
        return Err(Error::NotFound(format!(
            "pod {ns}/{name} has no port on bridge {} of this node{where_}",
            ovs.bridge
        )));
    }
    let of = ovs.openflow().await?;
    let flows = ovs
        .flows(&of)
        .await?
        .iter()
        .map(FlowView::new)
        .filter(|f| flow_matches(f, &interfaces))
        .collect();
    Ok(PodReport {
        namespace: ns.to_string(),
        name: name.to_string(),
        node,
        interfaces,
        flows: flows::sorted(flows),
    })
}

impl Render for PodReport {
    fn render(&self) -> String {
        let mut out = format!(
            "Pod:   {}/{}\nNode:  {}\n\n",
            self.namespace,
            self.name,
            self.node.as_deref().unwrap_or("<unknown: no API access>")
        );
        let mut t = Table::new(&[
            "interface",
            "port",
            "ofport",
            "vlan",
            "segment",
            "address",
            "mac",
            "gateway",
        ]);
        for i in &self.interfaces {
            t.row([
                i.pod_interface.clone(),
                i.port.clone(),
                i.ofport
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                i.vlan.to_string(),
                i.segment.clone(),
                i.address.clone(),
                i.mac.clone(),
                i.gateway.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
        out.push_str(&format!(
            "\nveth: {} (host, OVS port) <-> {} (in the pod)\n",
            self.interfaces
                .first()
                .map(|i| i.port.as_str())
                .unwrap_or(""),
            self.interfaces
                .first()
                .map(|i| i.pod_interface.as_str())
                .unwrap_or("")
        ));
        let agent = self.flows.iter().filter(|f| f.owner == "agent").count();
        out.push_str(&format!(
            "\nFlows matching the pod ({} of the agent, {} of the proxy):\n",
            agent,
            self.flows.len() - agent
        ));
        out.push_str(&flows::render_by_table(&self.flows));
        out
    }
}
