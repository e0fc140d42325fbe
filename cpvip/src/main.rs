//! `switchyard-cpvip`: see `docs/control-plane-vip.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use switchyard_cpvip::{Options, metrics};
use switchyard_daemon::{LeaderFlags, LogFormat, secs};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-cpvip",
    about = "A highly available Kubernetes API address: the VIP on lo of the healthy control planes, one ECMP route on the upstream router"
)]
struct Cli {
    /// Only set arp_ignore=1 / arp_announce=2 (the init container) and exit.
    #[arg(long)]
    only_arp_sysctls: bool,
    /// This node's name.
    #[arg(long, env = "NODE_NAME", required_unless_present = "only_arp_sysctls")]
    node_name: Option<String>,
    /// This node's address: the route's next hop for it (the apiserver's advertise address).
    #[arg(long, env = "NODE_IP", required_unless_present = "only_arp_sysctls")]
    node_address: Option<IpAddr>,
    /// Namespace of the Leases and of the router credentials Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    namespace: String,
    /// Cluster name: the `switchyard.io/cluster` tag of the route.
    #[arg(long, env = "SWITCHYARD_CLUSTER_NAME", default_value = "")]
    cluster_name: String,
    /// Kubeconfig reaching this node's own apiserver (never the VIP); default: in-cluster
    /// or $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// PEM CA bundle of the apiservers: the `/readyz` probes verify the certificate
    /// against it, with the VIP as the expected name.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    apiserver_ca: PathBuf,
    /// This node's apiserver (`IP:port`), overriding the ControlPlaneVIP's `localEndpoint`.
    #[arg(long)]
    local_endpoint: Option<SocketAddr>,
    #[command(flatten)]
    leader: LeaderFlags,
    /// Seconds between read-compare-repair passes of the route (at most 10).
    #[arg(long, default_value_t = 5.0)]
    drift_period: f64,
    /// Seconds a node waits for the leader to confirm it left the route before it removes
    /// the VIP anyway.
    #[arg(long, default_value_t = 10.0)]
    leave_timeout: f64,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9467")]
    metrics_address: SocketAddr,
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    switchyard_daemon::log::init(cli.log_format, "info");
    if cli.only_arp_sysctls {
        switchyard_cpvip::vip::set_arp_sysctls()?;
        return Ok(());
    }
    let (Some(node), Some(node_address)) = (cli.node_name.clone(), cli.node_address) else {
        anyhow::bail!("--node-name and --node-address are required");
    };
    anyhow::ensure!(
        !cli.cluster_name.is_empty()
            && cli
                .cluster_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "--cluster-name must be non-empty letters, digits and '-'"
    );
    let timings = cli.leader.timings()?;
    anyhow::ensure!(
        cli.drift_period <= 10.0,
        "--drift-period must be at most 10 s"
    );
    let apiserver_ca = std::fs::read(&cli.apiserver_ca)
        .with_context(|| format!("reading --apiserver-ca {}", cli.apiserver_ca.display()))?;
    let client = switchyard_daemon::kube_client(cli.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let server = tokio::spawn(metrics::serve(cli.metrics_address, metrics.clone()));
    let opts = Options {
        node,
        node_address,
        namespace: cli.namespace,
        cluster: cli.cluster_name,
        apiserver_ca,
        timings,
        drift_period: secs(cli.drift_period),
        leave_timeout: secs(cli.leave_timeout),
        local_endpoint: cli.local_endpoint,
        manage_vip: true,
    };
    let shutdown = switchyard_daemon::shutdown_signal();
    switchyard_cpvip::run(client, opts, metrics, shutdown).await;
    server.abort();
    Ok(())
}
