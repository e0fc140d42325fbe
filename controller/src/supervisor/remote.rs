//! Every call the controller makes to the supervisor cluster, through the client built from
//! the kubeconfig Secret, in the one supervisor namespace. The RBAC scan keeps these apart
//! from the guest's (`deploy/tests/rbac.rs`): they are granted in the supervisor by
//! `deploy/supervisor-role.yaml`, not by the guest's roles.

use futures::Stream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};

/// The supervisor namespace, as the guest's credentials reach it.
#[derive(Clone)]
pub struct Remote {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Calls through `client`, in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Remote {
            client,
            namespace: namespace.to_string(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Watch of the Services carrying `selector` (with backoff on errors).
    pub fn watch_services(
        &self,
        selector: &str,
    ) -> impl Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Send + use<> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        watcher(services, watcher::Config::default().labels(selector)).default_backoff()
    }

    /// Watch of the EndpointSlices carrying `selector` (with backoff on errors).
    pub fn watch_slices(
        &self,
        selector: &str,
    ) -> impl Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>> + Send + use<>
    {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        watcher(slices, watcher::Config::default().labels(selector)).default_backoff()
    }

    /// Creates a Service.
    pub async fn create_service(&self, svc: &Service) -> Result<Service, kube::Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        services.create(&PostParams::default(), svc).await
    }

    /// Replaces a Service (its resourceVersion guards the write).
    pub async fn replace_service(&self, svc: &Service) -> Result<Service, kube::Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = svc.metadata.name.clone().unwrap_or_default();
        services.replace(&name, &PostParams::default(), svc).await
    }

    /// Reads a Service.
    pub async fn get_service(&self, name: &str) -> Result<Option<Service>, kube::Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        services.get_opt(name).await
    }

    /// Deletes a Service (absent: fine).
    pub async fn delete_service(&self, name: &str) -> Result<(), kube::Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        match services.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Creates an EndpointSlice.
    pub async fn create_slice(&self, slice: &EndpointSlice) -> Result<(), kube::Error> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        slices
            .create(&PostParams::default(), slice)
            .await
            .map(|_| ())
    }

    /// Replaces an EndpointSlice (its resourceVersion guards the write).
    pub async fn replace_slice(&self, slice: &EndpointSlice) -> Result<(), kube::Error> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = slice.metadata.name.clone().unwrap_or_default();
        slices
            .replace(&name, &PostParams::default(), slice)
            .await
            .map(|_| ())
    }

    /// Reads an EndpointSlice.
    pub async fn get_slice(&self, name: &str) -> Result<Option<EndpointSlice>, kube::Error> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        slices.get_opt(name).await
    }

    /// Deletes an EndpointSlice (absent: fine).
    pub async fn delete_slice(&self, name: &str) -> Result<(), kube::Error> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        match slices.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            r => r.map(|_| ()),
        }
    }
}
