//! The watches feeding the policy caches: every NetworkPolicy, every Pod
//! (peers live on every node) and every Namespace, each reduced at once to
//! the compiler's values. A relist replaces a cache in one step, under the
//! lock, so the compiler never sees half a list.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::model::{PodInfo, Policy, namespace_labels};
use super::{Caches, NetworkPolicies, lock};

const POLICIES: u8 = 1;
const PODS: u8 = 2;
const NAMESPACES: u8 = 4;
/// Every watch listed once.
pub(super) const ALL_LISTED: u8 = POLICIES | PODS | NAMESPACES;

type Key = (String, String);

fn key<K: kube::Resource>(o: &K) -> Key {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// How one kind enters the caches (each records what changed).
trait Kind:
    kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static
{
    const BIT: u8;
    fn apply(c: &mut Caches, o: &Self);
    fn delete(c: &mut Caches, o: &Self);
    /// Replaces every object of the kind with `list` (a relist).
    fn replace(c: &mut Caches, list: &[Self]);
}

impl Kind for NetworkPolicy {
    const BIT: u8 = POLICIES;
    fn apply(c: &mut Caches, o: &Self) {
        match Policy::from_api(o) {
            Ok(p) => c.set_policy(key(o), Some(p)),
            Err(e) => {
                // Nothing changes for a policy that cannot be read: the
                // version before stays (none for a new one).
                let (ns, name) = key(o);
                tracing::warn!(policy = %format!("{ns}/{name}"), error = %e, "NetworkPolicy refused");
            }
        }
    }
    fn delete(c: &mut Caches, o: &Self) {
        c.set_policy(key(o), None);
    }
    fn replace(c: &mut Caches, list: &[Self]) {
        let mut new = BTreeMap::new();
        for o in list {
            match Policy::from_api(o) {
                Ok(p) => {
                    new.insert(key(o), p);
                }
                Err(e) => {
                    // The version before stays, if any.
                    let (ns, name) = key(o);
                    tracing::warn!(policy = %format!("{ns}/{name}"), error = %e, "NetworkPolicy refused");
                    if let Some(p) = c.policies.get(&key(o)) {
                        new.insert(key(o), p.clone());
                    }
                }
            }
        }
        c.replace_policies(new);
    }
}

impl Kind for Pod {
    const BIT: u8 = PODS;
    fn apply(c: &mut Caches, o: &Self) {
        c.set_pod(key(o), Some(PodInfo::from_api(o)));
    }
    fn delete(c: &mut Caches, o: &Self) {
        c.set_pod(key(o), None);
    }
    fn replace(c: &mut Caches, list: &[Self]) {
        c.replace_pods(
            list.iter()
                .map(|o| (key(o), PodInfo::from_api(o)))
                .collect(),
        );
    }
}

impl Kind for Namespace {
    const BIT: u8 = NAMESPACES;
    fn apply(c: &mut Caches, o: &Self) {
        c.set_namespace(
            o.metadata.name.clone().unwrap_or_default(),
            Some(namespace_labels(o)),
        );
    }
    fn delete(c: &mut Caches, o: &Self) {
        c.set_namespace(o.metadata.name.clone().unwrap_or_default(), None);
    }
    fn replace(c: &mut Caches, list: &[Self]) {
        c.replace_namespaces(
            list.iter()
                .map(|o| {
                    (
                        o.metadata.name.clone().unwrap_or_default(),
                        namespace_labels(o),
                    )
                })
                .collect(),
        );
    }
}

pub(super) fn spawn(this: Arc<NetworkPolicies>, client: kube::Client) {
    let every = watcher::Config::default;
    let policies = watcher(Api::<NetworkPolicy>::all(client.clone()), every());
    let pods = watcher(Api::<Pod>::all(client.clone()), every());
    let namespaces = watcher(Api::<Namespace>::all(client), every());
    tokio::spawn(run(this.clone(), policies.default_backoff()));
    tokio::spawn(run(this.clone(), pods.default_backoff()));
    tokio::spawn(run(this, namespaces.default_backoff()));
}

async fn run<K: Kind>(
    this: Arc<NetworkPolicies>,
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relist.clear(),
            Ok(watcher::Event::InitApply(o)) => relist.push(o),
            Ok(watcher::Event::InitDone) => {
                {
                    let mut c = lock(&this.caches);
                    K::replace(&mut c, &relist);
                    relist.clear();
                    c.listed |= K::BIT;
                    let listed = c.listed;
                    this.listed.send_replace(listed);
                }
                this.touch();
            }
            Ok(watcher::Event::Apply(o)) => {
                K::apply(&mut lock(&this.caches), &o);
                this.touch();
            }
            Ok(watcher::Event::Delete(o)) => {
                K::delete(&mut lock(&this.caches), &o);
                this.touch();
            }
            Err(e) => {
                tracing::debug!(error = %e, "policy watch interrupted; the cache keeps its objects");
            }
        }
    }
}
