//! The API objects the announcement depends on: Nodes, Services, EndpointSlices and IPPools,
//! each watched and reduced at once to what [`super::eligibility`] needs. [`Inputs`] are
//! published only once all four kinds were listed, and again after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use switchyard_api::IPPool;
use tokio::sync::watch;

use super::eligibility::{Inputs, L2Pool, LbService, NodeFacts, slice_ready_nodes};

/// What is kept of each object of one kind, by `namespace/name`, with a relist in progress.
#[derive(Debug)]
struct Folded<V> {
    known: BTreeMap<String, V>,
    listing: Option<BTreeMap<String, V>>,
    listed: bool,
}

impl<V> Default for Folded<V> {
    fn default() -> Self {
        Folded {
            known: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }
}

fn key<K: kube::Resource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

impl<V> Folded<V> {
    /// Applies one event; whether `known` changed (a relist always counts).
    fn apply<K: kube::Resource>(
        &mut self,
        event: watcher::Event<K>,
        extract: impl Fn(&K) -> Option<V>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let (Some(l), Some(v)) = (self.listing.as_mut(), extract(&o)) {
                    l.insert(key(&o), v);
                }
                false
            }
            watcher::Event::InitDone => {
                self.known = self.listing.take().unwrap_or_default();
                self.listed = true;
                true
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                match extract(&o) {
                    Some(v) => {
                        self.known.insert(k, v);
                        true
                    }
                    None => self.known.remove(&k).is_some(),
                }
            }
            watcher::Event::Delete(o) => self.known.remove(&key(&o)).is_some(),
        }
    }
}

/// The four caches.
#[derive(Debug, Default)]
struct Caches {
    nodes: Folded<NodeFacts>,
    services: Folded<LbService>,
    slices: Folded<(String, BTreeSet<String>)>,
    pools: Folded<L2Pool>,
}

impl Caches {
    fn inputs(&self) -> Option<Inputs> {
        if !(self.nodes.listed && self.services.listed && self.slices.listed && self.pools.listed) {
            return None;
        }
        let mut ready_nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (svc, nodes) in self.slices.known.values() {
            ready_nodes
                .entry(svc.clone())
                .or_default()
                .extend(nodes.iter().cloned());
        }
        Some(Inputs {
            nodes: self.nodes.known.clone(),
            pools: self.pools.known.clone(),
            services: self.services.known.clone(),
            ready_nodes,
        })
    }
}

/// Retry delays of a failed watch: 0.5 s doubling to 5 s (kube's default grows to 30 s, too
/// slow for an IPPool CRD installed after the agents started).
#[derive(Debug)]
struct Retry(Duration);

const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(RETRY_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}

/// One event of the four watches (boxed: a Node is large).
enum Event {
    Node(Box<watcher::Event<Node>>),
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Pool(Box<watcher::Event<IPPool>>),
}

/// Watches until every stream ends (never, in practice: watchers retry with backoff),
/// publishing [`Inputs`] into `out` after every change once everything was listed.
pub async fn run(client: kube::Client, out: watch::Sender<Option<Arc<Inputs>>>) {
    let cfg = watcher::Config::default;
    let nodes = watcher(Api::<Node>::all(client.clone()), cfg())
        .backoff(Retry(RETRY_FIRST))
        .map(|e| e.map(|e| Event::Node(Box::new(e))));
    let services = watcher(Api::<Service>::all(client.clone()), cfg())
        .backoff(Retry(RETRY_FIRST))
        .map(|e| e.map(|e| Event::Service(Box::new(e))));
    let slices = watcher(Api::<EndpointSlice>::all(client.clone()), cfg())
        .backoff(Retry(RETRY_FIRST))
        .map(|e| e.map(|e| Event::Slice(Box::new(e))));
    let pools = watcher(Api::<IPPool>::all(client), cfg())
        .backoff(Retry(RETRY_FIRST))
        .map(|e| e.map(|e| Event::Pool(Box::new(e))));
    let mut events = futures::stream::select_all([
        nodes.boxed(),
        services.boxed(),
        slices.boxed(),
        pools.boxed(),
    ]);
    let mut caches = Caches::default();
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Node(e)) => caches.nodes.apply(*e, |n| Some(NodeFacts::of(n))),
            Ok(Event::Service(e)) => caches.services.apply(*e, LbService::of),
            Ok(Event::Slice(e)) => caches.slices.apply(*e, slice_ready_nodes),
            Ok(Event::Pool(e)) => caches.pools.apply(*e, L2Pool::of),
            Err(e) => {
                tracing::debug!(error = %e, "L2 announcement watch interrupted; the cache keeps its objects");
                false
            }
        };
        if changed && let Some(inputs) = caches.inputs() {
            out.send_if_modified(|cur| {
                if cur.as_deref() == Some(&inputs) {
                    return false;
                }
                *cur = Some(Arc::new(inputs));
                true
            });
        }
    }
}
