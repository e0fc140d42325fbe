//! The fabric API in the test's own process: a fresh lab PKI, the server on `127.0.0.1`, and
//! an in-memory kernel ([`MemoryKernel`]) instead of the fabric namespace's routes. For tests
//! of the router driver's clients (the controller's Route mode, the control-plane VIP) that
//! need the real API, its TLS and its faults, but no network namespaces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use ipnet::IpNet;

use super::pki::{self, PkiFiles};
use super::{FabricApi, Kernel, ServerTls};

/// Routes kept in a map: what the fabric API applied, readable and editable by the test.
#[derive(Debug, Default, Clone)]
pub struct MemoryKernel(Arc<Mutex<BTreeMap<IpNet, Vec<IpAddr>>>>);

impl MemoryKernel {
    fn routes_mut(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpNet, Vec<IpAddr>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every route now.
    pub fn routes(&self) -> BTreeMap<IpNet, Vec<IpAddr>> {
        self.routes_mut().clone()
    }

    /// The next hops of the route to `network` (`10.0.0.1/32`), sorted, as text; `None`
    /// without a route.
    pub fn next_hops(&self, network: &str) -> Option<Vec<String>> {
        let network: IpNet = network.parse().expect("a network like 10.0.0.1/32");
        let mut hops: Vec<String> = self
            .routes_mut()
            .get(&network)?
            .iter()
            .map(ToString::to_string)
            .collect();
        hops.sort();
        Some(hops)
    }

    /// Edits a route behind the API's back (as `ip route replace` in the fabric would).
    pub fn set_out_of_band(&self, network: IpNet, next_hops: Vec<IpAddr>) {
        self.routes_mut().insert(network, next_hops);
    }
}

impl Kernel for MemoryKernel {
    fn apply<'a>(
        &'a self,
        network: IpNet,
        next_hops: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<(), String>> {
        self.routes_mut().insert(network, next_hops.to_vec());
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, network: IpNet) -> BoxFuture<'_, Result<(), String>> {
        self.routes_mut().remove(&network);
        Box::pin(async { Ok(()) })
    }

    fn read(&self, network: IpNet) -> BoxFuture<'_, Result<Vec<IpAddr>, String>> {
        let hops = self.routes_mut().get(&network).cloned().unwrap_or_default();
        Box::pin(async move { Ok(hops) })
    }
}

/// A fabric API served from this process.
#[derive(Debug)]
pub struct InProcess {
    /// The server (its address: [`FabricApi::addr`]).
    pub api: FabricApi,
    /// The lab CA, the server's and the client's certificates, in the caller's directory.
    pub files: PkiFiles,
    /// The routes it applied.
    pub kernel: MemoryKernel,
}

impl InProcess {
    /// Generates a PKI in `dir` (server `127.0.0.1`, client certificate `client_cn`) and starts
    /// the API on a free port of `127.0.0.1`.
    pub async fn start(dir: &Path, client_cn: &str) -> Self {
        let files = pki::generate(dir, &["127.0.0.1".parse().expect("ip")], &[], client_cn)
            .expect("lab PKI");
        let kernel = MemoryKernel::default();
        let tls = ServerTls {
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
            client_ca: files.ca.clone(),
        };
        let api = FabricApi::start(
            "127.0.0.1:0".parse().expect("addr"),
            &tls,
            Box::new(kernel.clone()),
        )
        .await
        .expect("fabric API starts");
        Self { api, files, kernel }
    }

    /// The data of a RouteTarget's credentials Secret for this API: `tls.crt`, `tls.key`
    /// (the client certificate) and `ca.crt` (the lab CA).
    pub fn credentials(&self) -> BTreeMap<String, Vec<u8>> {
        let read = |p: &Path| std::fs::read(p).expect("PKI file");
        BTreeMap::from([
            ("tls.crt".to_owned(), read(&self.files.client_cert)),
            ("tls.key".to_owned(), read(&self.files.client_key)),
            ("ca.crt".to_owned(), read(&self.files.ca)),
        ])
    }
}
