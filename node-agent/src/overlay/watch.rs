//! The overlay's two watches, Node objects and the `vlan` segments'
//! allocation objects (`SegmentAddress`), what they keep of each object ([`remote_node`],
//! [`vlan_placements`]), the list that seeds the first resync, and the
//! loop that applies every change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::{Overlay, RemoteNode};
use switchyard_api::SegmentAddress;

/// A Node object's pod CIDR and InternalIP, when it has both.
pub fn remote_node(node: &Node) -> Option<RemoteNode> {
    let spec = node.spec.as_ref()?;
    let pod_cidr = spec
        .pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find_map(|c| c.parse::<Ipv4Net>().ok())?
        .trunc();
    let ip = internal_ip(node)?;
    Some(RemoteNode {
        pod_cidr,
        ip,
        vlan_pods: BTreeSet::new(),
    })
}

/// Which node holds the address of a `vlan` segment allocation object (a
/// map of one entry; `None` when malformed).
pub fn vlan_placements(obj: &SegmentAddress) -> Option<BTreeMap<Ipv4Addr, String>> {
    let (ip, node, _) = crate::vlan_pool::entry_of(obj)?;
    Some(BTreeMap::from([(ip, node)]))
}

/// `nodes` with the `vlan` segment pods of `placements` (per object)
/// filled in.
fn with_vlan_pods(
    nodes: &BTreeMap<String, RemoteNode>,
    placements: &BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
) -> BTreeMap<String, RemoteNode> {
    let mut out = nodes.clone();
    for (addr, node) in placements.values().flatten() {
        if let Some(n) = out.get_mut(node) {
            n.vlan_pods.insert(*addr);
        }
    }
    out
}

/// A Node object's first IPv4 InternalIP (the tunnel endpoint).
pub(super) fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// One event of the overlay's two watches (boxed: a Node is large).
enum Watched {
    Node(Box<Result<Option<watcher::Event<Node>>, watcher::Error>>),
    Ipam(Box<Result<Option<watcher::Event<SegmentAddress>>, watcher::Error>>),
}

/// Applies one watch event to `known` (what `extract` keeps of each object,
/// by name), `listing` holding a re-list in progress; whether `known`
/// changed (always after a re-list).
fn fold_event<K: kube::Resource, V: PartialEq>(
    event: watcher::Event<K>,
    listing: &mut Option<BTreeMap<String, V>>,
    known: &mut BTreeMap<String, V>,
    extract: impl Fn(&K) -> Option<V>,
) -> bool {
    match event {
        watcher::Event::Init => {
            *listing = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(object) => {
            if let (Some(l), Some(name), Some(v)) = (
                listing.as_mut(),
                object.meta().name.clone(),
                extract(&object),
            ) {
                l.insert(name, v);
            }
            false
        }
        watcher::Event::InitDone => {
            *known = listing.take().unwrap_or_default();
            true
        }
        watcher::Event::Apply(object) => {
            let Some(name) = object.meta().name.clone() else {
                return false;
            };
            match extract(&object) {
                Some(v) if known.get(&name) == Some(&v) => false,
                Some(v) => {
                    known.insert(name, v);
                    true
                }
                None => known.remove(&name).is_some(),
            }
        }
        watcher::Event::Delete(object) => object
            .meta()
            .name
            .as_ref()
            .is_some_and(|n| known.remove(n).is_some()),
    }
}

/// What the overlay's two watches have shown so far. Nothing is applied
/// until both have finished their first list: before that, the remote nodes
/// installed from [`Overlay::seed`] stand. (Applying after only the
/// allocation objects' first list, with no Node known yet, removed every remote
/// node's flows for the few milliseconds until the Node list came: packets
/// to other nodes then went to the host, came back post-DNAT through the
/// gateway and committed conntrack entries that later broke the Service
/// connections they belonged to.)
#[derive(Default)]
struct WatchedView {
    nodes: BTreeMap<String, RemoteNode>,
    nodes_listing: Option<BTreeMap<String, RemoteNode>>,
    nodes_listed: bool,
    placements: BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
    placements_listing: Option<BTreeMap<String, BTreeMap<Ipv4Addr, String>>>,
    placements_listed: bool,
}

impl WatchedView {
    /// A Node event; the remote nodes to install if they may have changed.
    fn on_node(&mut self, event: watcher::Event<Node>) -> Option<BTreeMap<String, RemoteNode>> {
        self.nodes_listed |= matches!(event, watcher::Event::InitDone);
        let changed = fold_event(event, &mut self.nodes_listing, &mut self.nodes, remote_node);
        self.desired_if(changed)
    }

    /// An allocation object event; the remote nodes to install if they may
    /// have changed.
    fn on_ipam(
        &mut self,
        event: watcher::Event<SegmentAddress>,
    ) -> Option<BTreeMap<String, RemoteNode>> {
        self.placements_listed |= matches!(event, watcher::Event::InitDone);
        let changed = fold_event(
            event,
            &mut self.placements_listing,
            &mut self.placements,
            vlan_placements,
        );
        self.desired_if(changed)
    }

    /// The allocation objects cannot be listed because their type is not
    /// served (the SegmentAddress CRD is not installed): there are none, so
    /// the Node watch alone decides; the watch keeps retrying.
    fn ipam_not_served(&mut self) -> Option<BTreeMap<String, RemoteNode>> {
        let first = !self.placements_listed;
        self.placements_listed = true;
        let changed = !self.placements.is_empty() || first;
        self.placements.clear();
        self.desired_if(changed)
    }

    fn desired_if(&self, changed: bool) -> Option<BTreeMap<String, RemoteNode>> {
        (changed && self.nodes_listed && self.placements_listed)
            .then(|| with_vlan_pods(&self.nodes, &self.placements))
    }
}

impl Overlay {
    /// Learns the remote nodes from one Node list before the agent's first
    /// full flow resync, so that a restarted agent installs its new flow
    /// generation with the overlay flows already in it. Without this, the
    /// resync deletes the previous generation (and with it every path to the
    /// other nodes) until the Node watch catches up a few milliseconds later.
    /// A failed list is logged and left to the watch.
    pub async fn seed(&self, client: kube::Client) {
        let node_api: Api<Node> = Api::all(client.clone());
        // Bounded: a start-up must not hang on one unanswered request (the watch lists
        // again anyway).
        let nodes = match crate::apiserver::bounded(
            "listing Nodes",
            node_api.list(&Default::default()),
        )
        .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing Nodes before the first resync failed; the watch will add them");
                return;
            }
        };
        let desired: BTreeMap<String, RemoteNode> = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, remote_node(n)?)))
            .collect();
        let ipam_api: Api<SegmentAddress> = Api::all(client);
        let listed = crate::apiserver::bounded(
            "listing SegmentAddresses",
            ipam_api.list(&Default::default()),
        )
        .await;
        let placements: BTreeMap<String, BTreeMap<Ipv4Addr, String>> = match listed {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|o| Some((o.metadata.name.clone()?, vlan_placements(o)?)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing the vlan segments' allocation objects before the first resync failed; the watch will add their pods");
                BTreeMap::new()
            }
        };
        if let Err(e) = self.apply(with_vlan_pods(&desired, &placements)).await {
            tracing::warn!(error = %e, "recording remote nodes failed; the watch will add them");
        }
    }
    /// Watches Node objects and the `vlan` segments' allocation objects until
    /// `stop`, applying every change; keeps the node's routes to remote pod
    /// CIDRs in line meanwhile.
    pub async fn run(self: Arc<Self>, client: kube::Client, mut stop: watch::Receiver<bool>) {
        let routes = tokio::spawn(self.clone().keep_routes());
        let config = watcher::Config::default();
        // Each stream backs off on its own (0.8 s doubling to 30 s, reset by
        // a success): a missing SegmentAddress CRD neither floods the log
        // nor holds up Node events.
        let mut node_events = watcher(Api::<Node>::all(client.clone()), config.clone())
            .default_backoff()
            .boxed();
        let mut ipam_events = watcher(Api::<SegmentAddress>::all(client), config)
            .default_backoff()
            .boxed();
        let mut view = WatchedView::default();
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                ev = node_events.try_next() => Watched::Node(Box::new(ev)),
                ev = ipam_events.try_next() => Watched::Ipam(Box::new(ev)),
            };
            let (what, failed) = match event {
                Watched::Node(ev) => match *ev {
                    Ok(None) => break,
                    Err(e) => ("Nodes", e),
                    Ok(Some(ev)) => {
                        if let Some(desired) = view.on_node(ev) {
                            self.apply_until_done(desired, &mut stop).await;
                        }
                        continue;
                    }
                },
                Watched::Ipam(ev) => match *ev {
                    Ok(None) => break,
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(s)))
                        if s.code == 404 =>
                    {
                        if let Some(desired) = view.ipam_not_served() {
                            self.apply_until_done(desired, &mut stop).await;
                        }
                        (
                            "the vlan segments' allocation objects (SegmentAddress CRD not installed)",
                            watcher::Error::InitialListFailed(kube::Error::Api(s)),
                        )
                    }
                    Err(e) => ("the vlan segments' allocation objects", e),
                    Ok(Some(ev)) => {
                        if let Some(desired) = view.on_ipam(ev) {
                            self.apply_until_done(desired, &mut stop).await;
                        }
                        continue;
                    }
                },
            };
            tracing::warn!(error = %failed, "watching {what} failed; retrying with backoff");
        }
        routes.abort();
    }

    /// [`Overlay::apply`], retried until it works or `stop`; a full resync
    /// would also pick the nodes up, but only after a reconnect.
    async fn apply_until_done(
        &self,
        desired: BTreeMap<String, RemoteNode>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut attempt = 0u32;
        while let Err(e) = self.apply(desired.clone()).await {
            attempt += 1;
            tracing::warn!(error = %e, attempt, "updating overlay flows failed; retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> RemoteNode {
        RemoteNode {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            ip: "192.168.100.2".parse().unwrap(),
            vlan_pods: BTreeSet::new(),
        }
    }

    fn address(name: &str, ip: &str, node: &str) -> SegmentAddress {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchyard.io/v1alpha1", "kind": "SegmentAddress",
            "metadata": {"name": name},
            "spec": {"segment": "vlan100", "address": ip, "node": node,
                     "containerID": "c1", "interface": "eth0"}
        }))
        .unwrap()
    }

    #[test]
    fn vlan_pods_come_from_the_allocation_objects() {
        let placements =
            vlan_placements(&address("vlan100.10.100.0.7", "10.100.0.7", "n2")).unwrap();
        assert_eq!(placements.len(), 1, "{placements:?}");
        assert_eq!(vlan_placements(&address("x", "not-an-address", "n2")), None);
        assert_eq!(vlan_placements(&address("y", "10.100.0.8", "")), None);
        let nodes = BTreeMap::from([("n2".to_string(), node())]);
        let both = with_vlan_pods(&nodes, &BTreeMap::from([("o".to_string(), placements)]));
        assert_eq!(both.len(), 1, "nodes not known stay unknown: {both:?}");
        assert_eq!(
            both["n2"].vlan_pods,
            BTreeSet::from(["10.100.0.7".parse().unwrap()])
        );
    }

    fn node_object(name: &str, cidr: &str, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn nothing_is_applied_until_both_watches_have_listed() {
        use watcher::Event;
        // The IPAM list completes first: applying then would remove every
        // remote node (none known yet) until the Node list comes.
        let mut view = WatchedView::default();
        assert_eq!(view.on_ipam(Event::Init), None);
        let obj = address("vlan100.10.100.0.7", "10.100.0.7", "n2");
        assert_eq!(view.on_ipam(Event::InitApply(obj)), None);
        assert_eq!(view.on_ipam(Event::InitDone), None, "Nodes not listed yet");
        assert_eq!(view.on_node(Event::Init), None);
        let n2 = node_object("n2", "10.244.1.0/24", "192.168.100.2");
        assert_eq!(view.on_node(Event::InitApply(n2.clone())), None);
        let desired = view.on_node(Event::InitDone).expect("both listed");
        assert_eq!(desired.len(), 1);
        assert_eq!(
            desired["n2"].vlan_pods,
            BTreeSet::from(["10.100.0.7".parse().unwrap()])
        );
        // From then on, every change applies; an unchanged object does not.
        assert_eq!(view.on_node(Event::Apply(n2)), None);
        let n3 = node_object("n3", "10.244.2.0/24", "192.168.100.3");
        assert_eq!(
            view.on_node(Event::Apply(n3.clone())).map(|d| d.len()),
            Some(2)
        );
        assert_eq!(view.on_node(Event::Delete(n3)).map(|d| d.len()), Some(1));

        // The other order: the Node list first waits for the IPAM list, so
        // the vlan pods installed by the seed are not dropped meanwhile.
        let mut view = WatchedView::default();
        view.on_node(Event::Init);
        let n2 = node_object("n2", "10.244.1.0/24", "192.168.100.2");
        view.on_node(Event::InitApply(n2));
        assert_eq!(view.on_node(Event::InitDone), None, "IPAM not listed yet");
        view.on_ipam(Event::Init);
        let desired = view.on_ipam(Event::InitDone).expect("both listed");
        assert_eq!(desired.len(), 1);

        // No SegmentAddress CRD: the Node list alone decides.
        let mut view = WatchedView::default();
        view.on_node(Event::Init);
        let n2 = node_object("n2", "10.244.1.0/24", "192.168.100.2");
        view.on_node(Event::InitApply(n2));
        assert_eq!(view.on_node(Event::InitDone), None);
        assert_eq!(view.ipam_not_served().map(|d| d.len()), Some(1));
        assert_eq!(view.ipam_not_served(), None, "nothing changed");
    }

    #[test]
    fn remote_node_needs_cidr_and_internal_ip() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n2"},
                {"type": "InternalIP", "address": "192.168.100.2"}
            ]}
        }))
        .unwrap();
        assert_eq!(remote_node(&n), Some(node()));
        let no_ip: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.1.0/24"}
        }))
        .unwrap();
        assert_eq!(remote_node(&no_ip), None);
        assert_eq!(node().next_hop(), "10.244.1.1".parse::<Ipv4Addr>().unwrap());
    }
}
