//! Shared helpers of the lab's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use switchyard_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};

/// Starts a server on a free loopback port.
pub async fn start(opts: ApiServerOptions) -> ApiServerHandle {
    ApiServer::start(opts).await.expect("lab API server starts")
}

/// A kube-rs client for the server (plain HTTP, default namespace `default`).
pub fn client(server: &ApiServerHandle) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("server URL parses"));
    kube::Client::try_from(config).expect("kube client builds")
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
