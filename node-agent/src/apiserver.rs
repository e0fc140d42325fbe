//! The few reads the agent makes from the Kubernetes API server (kube-rs):
//! the node's pod CIDR, a pod's uid and annotations, a namespace's
//! annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;

use crate::config::KubeAccess;

/// Time limit of one API request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API read failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Building the client from the kubeconfig / service account failed.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was read.
        what: String,
        /// The kube error.
        source: kube::Error,
    },
    /// The request took too long.
    #[error("{what}: no answer from the API server within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// What was read.
        what: String,
    },
}

/// A pod as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// metadata.uid.
    pub uid: String,
    /// metadata.annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A kube-rs client for the agent's reads.
#[derive(Clone)]
pub struct ApiClient {
    client: kube::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").finish_non_exhaustive()
    }
}

pub(crate) async fn bounded<T>(
    what: impl Into<String>,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    let what = what.into();
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ApiError::Request { what, source }),
        Err(_) => Err(ApiError::Timeout { what }),
    }
}

impl ApiClient {
    /// Builds a client from a kubeconfig file or the pod's service account.
    pub async fn new(access: &KubeAccess) -> Result<ApiClient, ApiError> {
        let config = match access {
            KubeAccess::InCluster => {
                kube::Config::incluster().map_err(|e| ApiError::Config(e.to_string()))?
            }
            KubeAccess::Kubeconfig(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| ApiError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(
                    kubeconfig,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| ApiError::Config(format!("{}: {e}", path.display())))?
            }
        };
        let client = kube::Client::try_from(config).map_err(|e| ApiError::Config(e.to_string()))?;
        Ok(ApiClient { client })
    }

    /// The underlying kube-rs client (for watchers).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The node's `spec.podCIDR` (first IPv4 entry of `podCIDRs` as a
    /// fallback); `None` while it is not assigned.
    pub async fn node_pod_cidr(&self, node: &str) -> Result<Option<Ipv4Net>, ApiError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node_obj = bounded(format!("reading Node {node}"), api.get(node)).await?;
        let spec = node_obj.spec.unwrap_or_default();
        let candidates = spec
            .pod_cidr
            .into_iter()
            .chain(spec.pod_cidrs.unwrap_or_default());
        Ok(candidates
            .filter_map(|c| c.parse::<Ipv4Net>().ok())
            .map(|n| n.trunc())
            .next())
    }

    /// A pod's uid and annotations; `None` if it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>, ApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = bounded(format!("reading Pod {namespace}/{name}"), api.get_opt(name)).await?;
        Ok(pod.map(|p| PodInfo {
            uid: p.metadata.uid.unwrap_or_default(),
            annotations: p.metadata.annotations.unwrap_or_default(),
        }))
    }

    /// A namespace's annotations and its `switchyard.io/network` label (empty if it does
    /// not exist).
    pub async fn namespace_annotations(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = bounded(
            format!("reading Namespace {namespace}"),
            api.get_opt(namespace),
        )
        .await?;
        Ok(ns
            .map(|n| annotations_and_network_label(&n))
            .unwrap_or_default())
    }
}

/// A namespace's annotations, with its `switchyard.io/network` label (namespace networks:
/// the pod placement waits for the namespace's own network) under the same key, and
/// `switchyard.io/namespace-network` = `finalizer` when `switchyard-controller` gave it its
/// own network (its pods never leave it: `segment::policy`).
pub fn annotations_and_network_label(ns: &Namespace) -> BTreeMap<String, String> {
    let mut out = ns.metadata.annotations.clone().unwrap_or_default();
    let finalizer = crate::segment::FINALIZER_NAMESPACE_NETWORK;
    if ns
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == finalizer)
    {
        out.insert(finalizer.to_string(), "finalizer".to_string());
    }
    if let Some(v) = ns
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::segment::LABEL_NETWORK))
    {
        out.insert(crate::segment::LABEL_NETWORK.to_string(), v.clone());
    }
    out
}
