//! switchyard-agent entry point: flags + YAML config, then the daemon until
//! SIGTERM/SIGINT. Run it in the node's network namespace (the one
//! ovs-vswitchd runs in).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchyard_agent::Agent;
use switchyard_agent::config::{AgentConfig, Flags};
use tokio::signal::unix::{SignalKind, signal};

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    tracing::info!(node = %config.node_name, bridge = %config.bridge, segments = config.segments.len(), "configuration loaded");
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut handle = tokio::select! {
        started = Agent::start(config) => started.context("start-up failed")?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        () = handle.wait() => tracing::error!("a serving task ended; shutting down"),
    }
    handle.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match AgentConfig::from_flags(&flags, std::env::var("NODE_NAME").ok()) {
        Ok(config) => config,
        Err(err) => {
            let err = anyhow::Error::new(err).context("invalid configuration");
            eprintln!("switchyard-agent: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    switchyard_daemon::log::init(config.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("switchyard-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
