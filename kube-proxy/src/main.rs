//! switchyard-proxy entry point. For now it watches Services and
//! EndpointSlices and logs each desired-state update; the OpenFlow writer
//! that installs them is assembled on top of the library.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_proxy::{GroupIdAllocator, WatchConfig, watch};

/// Switchyard service proxy.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// This node's name, as EndpointSlices name it.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Debounce window for bursts of API changes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    debounce_ms: u64,
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no usable Kubernetes client configuration")?;
    let config = WatchConfig {
        node_name: flags.node_name,
        debounce: Duration::from_millis(flags.debounce_ms),
    };
    let groups = Arc::new(Mutex::new(GroupIdAllocator::new()));
    let (tx, mut updates) = tokio::sync::mpsc::channel(8);
    let watcher = tokio::spawn(watch(client, config, Arc::clone(&groups), tx));
    while let Some(update) = updates.recv().await {
        tracing::info!(
            generation = update.generation,
            service_ports = update.state.len(),
            added = update.changes.added.len(),
            removed = update.changes.removed.len(),
            changed = update.changes.changed.len(),
            stale_udp_endpoints = update.changes.stale_udp_endpoints.len(),
            "desired state update"
        );
        // Nothing installs groups yet, so removed ones are gone at once.
        groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release_all_retired();
    }
    watcher.await.context("watch task panicked")??;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchyard-proxy: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}
