//! `switchyard-lab`: the lab's command-line entry point.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};

#[derive(Debug, Parser)]
#[command(name = "switchyard-lab", about = "The Switchyard lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the in-memory Kubernetes API server in the foreground until SIGINT/SIGTERM.
    Apiserver {
        /// TCP port on 127.0.0.1 (0 picks a free one; the URL is printed).
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Where to write a kubeconfig pointing at the server.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        address: IpAddr,
        /// Service ClusterIP range.
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: ipnet::Ipv4Net,
        /// Cluster pod CIDR, split into per-node /24s.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: ipnet::Ipv4Net,
        /// Disable the node IPAM, ClusterIP allocation and EndpointSlice controllers.
        #[arg(long)]
        no_controllers: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Apiserver {
            port,
            kubeconfig,
            address,
            service_cidr,
            cluster_cidr,
            no_controllers,
        } => {
            let mut opts = if no_controllers {
                ApiServerOptions::without_controllers()
            } else {
                ApiServerOptions {
                    service_cidr: Some(service_cidr),
                    cluster_cidr: Some(cluster_cidr),
                    ..ApiServerOptions::default()
                }
            };
            opts.listen = SocketAddr::new(address, port);
            let server = ApiServer::start(opts).await?;
            if let Some(path) = &kubeconfig {
                server
                    .write_kubeconfig(path)
                    .with_context(|| format!("writing kubeconfig {}", path.display()))?;
            }
            println!("{}", server.url());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
            }
            server.shutdown().await;
        }
    }
    Ok(())
}
