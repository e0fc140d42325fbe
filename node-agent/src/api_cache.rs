//! ADD's API reads from watched caches, so that pods keep starting while the
//! API server is unreachable.
//!
//! ADD reads the pod's namespace (always) and the pod (when the runtime did
//! not pass its annotations) to decide its segment. Both come from
//! reflector stores fed by watches (every Namespace; this node's Pods, by
//! `spec.nodeName`), stripped to metadata. A miss (not listed yet, just
//! created, or a cached pod whose uid is not the one the runtime names)
//! asks the API server; only when that fails too is the answer unknown
//! (error 104). Reconciliation never uses the cache: it decides what to
//! tear down and asks the API server itself ([`ApiReads::pod_fresh`]).
//!
//! [`ApiReads::pod_fresh`]: crate::drivers::ApiReads::pod_fresh

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::apiserver::{ApiClient, ApiError, PodInfo};
use crate::drivers::ApiReads;

/// The agent's API reads: cached for ADD, direct for reconciliation.
#[derive(Debug, Clone)]
pub struct CachedApi {
    direct: ApiClient,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
}

impl CachedApi {
    /// Starts the watches (in tasks that run as long as the runtime) and
    /// returns at once; until the first lists arrive every read asks the
    /// API server.
    pub fn start(direct: ApiClient, node_name: &str) -> Self {
        let (namespaces, ns_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let client = direct.client();
        let every = watcher::Config::default();
        let ns_stream = watcher(Api::<Namespace>::all(client.clone()), every)
            .default_backoff()
            .modify(strip_to_metadata)
            .reflect(ns_writer)
            .touched_objects();
        tokio::spawn(drain("namespaces", ns_stream));
        let this_node = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let pod_stream = watcher(Api::<Pod>::all(client), this_node)
            .default_backoff()
            .modify(|p: &mut Pod| {
                p.spec = None;
                p.status = None;
                p.metadata.managed_fields = None;
            })
            .reflect(pod_writer)
            .touched_objects();
        tokio::spawn(drain("pods", pod_stream));
        Self {
            direct,
            namespaces,
            pods,
        }
    }

    /// Waits up to `limit` for both caches' first lists (start-up can serve
    /// ADD without them: reads then ask the API server).
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            let _ = self.namespaces.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
        })
        .await
        .is_ok()
    }
}

fn strip_to_metadata(ns: &mut Namespace) {
    ns.spec = None;
    ns.status = None;
    ns.metadata.managed_fields = None;
}

/// Runs a reflector's stream; errors are retried by its backoff.
async fn drain<S, K>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<K, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::debug!(cache = what, error = %e, "API watch interrupted; the cache keeps its objects");
        }
    }
}

impl ApiReads for CachedApi {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>> {
        async move {
            let cached = self.pods.get(&ObjectRef::new(name).within(namespace));
            match cached {
                Some(p) => Ok(Some(PodInfo {
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                    annotations: p.metadata.annotations.clone().unwrap_or_default(),
                })),
                None => self.direct.pod(namespace, name).await,
            }
        }
        .boxed()
    }

    fn pod_fresh<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ApiError>> {
        self.direct.pod(namespace, name).boxed()
    }

    fn namespace_annotations<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ApiError>> {
        async move {
            match self.namespaces.get(&ObjectRef::new(namespace)) {
                Some(ns) => Ok(crate::apiserver::annotations_and_network_label(&ns)),
                None => self.direct.namespace_annotations(namespace).await,
            }
        }
        .boxed()
    }
}
