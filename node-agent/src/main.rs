//! switchyard-agent entry point. For now it parses and validates the
//! configuration (so `--help` and config errors work); the daemon (CNI
//! server, OVS wiring, reconciliation) is assembled on top of the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchyard_agent::config::{AgentConfig, Flags};

fn run() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config = AgentConfig::from_flags(&flags, std::env::var("NODE_NAME").ok())
        .context("invalid configuration")?;
    tracing::info!(node = %config.node_name, bridge = %config.bridge, segments = config.segments.len(), "configuration loaded");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
