//! `switchyard-controller`: see `docs/load-balancer.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use switchyard_controller::{Options, metrics};
use switchyard_daemon::{LeaderFlags, LogFormat, secs};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-controller",
    about = "LoadBalancer addresses from IPPools, and namespace networks"
)]
struct Cli {
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "switchyard-controller")]
    lease_name: String,
    /// This replica's identity (unique per replica).
    #[arg(long, env = "POD_NAME")]
    identity: String,
    #[command(flatten)]
    leader: LeaderFlags,
    /// Seconds between full passes without changes (at most 10).
    #[arg(long, default_value_t = 10.0)]
    resync: f64,
    /// Seconds between reads of each RouteTarget without changes (Route mode: a route edited
    /// or lost on the router is repaired within this plus one request; at most 10).
    #[arg(long, default_value_t = 5.0)]
    route_resync: f64,
    /// Cluster name: the `switchyard.io/cluster` tag of the routes written on routers (the
    /// same for both replicas; distinct per cluster sharing a router).
    #[arg(long, env = "SWITCHYARD_CLUSTER_NAME")]
    cluster_name: String,
    /// Namespace networks: `label` (namespaces labelled `switchyard.io/network: dedicated`)
    /// or `all` (every namespace but `default` and `kube-*`); unset: off.
    #[arg(long)]
    namespace_networks: Option<String>,
    /// Namespace networks: the VLANs to give out, `FIRST-LAST`.
    #[arg(long, default_value = "1000-1999")]
    namespace_vlans: String,
    /// Namespace networks: the supernet subnets are carved from.
    #[arg(long, default_value = "10.64.0.0/16")]
    namespace_supernet: String,
    /// Namespace networks: prefix length of each subnet.
    #[arg(long, default_value_t = 26)]
    namespace_subnet_prefix: u8,
    /// Namespace networks: the nodes' uplink NIC the VLANs are trunked to.
    #[arg(long, default_value = "eth1")]
    namespace_uplink: String,
    /// Namespace networks: the `usage: Egress` IPPool SNAT addresses come from (default:
    /// every Egress pool, by name).
    #[arg(long)]
    namespace_egress_pool: Option<String>,
    /// Namespace networks: percentage of a segment's addresses in use at which a subnet is
    /// appended.
    #[arg(long, default_value_t = 90)]
    namespace_append_at: u8,
    /// Namespace networks: the RouteTarget whose router gets each namespace's SNAT rule (its
    /// subnets translated to its SNAT address); unset: SNAT addresses are allocated but no
    /// rule is written.
    #[arg(long)]
    namespace_route_target: Option<String>,
    /// Where LoadBalancer addresses come from: `pool` (this cluster's IPPools) or `supervisor`
    /// (a LoadBalancer Service in the supervisor cluster per Service, whose address is copied
    /// back; needs --supervisor-kubeconfig-secret).
    #[arg(long, value_enum, default_value_t = Provider::Pool)]
    provider: Provider,
    /// Supervisor mode: the Secret in the controller's namespace whose key `kubeconfig` reaches
    /// the supervisor (https, inline CA and credentials only).
    #[arg(long)]
    supervisor_kubeconfig_secret: Option<String>,
    /// Supervisor mode: the supervisor namespace the Services are made in (default: the
    /// kubeconfig context's namespace).
    #[arg(long)]
    supervisor_namespace: Option<String>,
    /// Namespace of the agents' IPAM ConfigMaps.
    #[arg(long, default_value = "switchyard-system")]
    ipam_namespace: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_address: SocketAddr,
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Provider {
    /// This cluster's IPPools.
    Pool,
    /// A supervisor cluster's load balancer.
    Supervisor,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    switchyard_daemon::log::init(cli.log_format, "info");
    anyhow::ensure!(
        !cli.cluster_name.is_empty()
            && cli
                .cluster_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "--cluster-name must be non-empty letters, digits and '-'"
    );
    let timings = cli.leader.timings()?;
    let namespace_networks = match &cli.namespace_networks {
        None => None,
        Some(opt_in) => {
            let mut c = switchyard_controller::namespaces::Config::from_flags(
                opt_in,
                &cli.namespace_vlans,
                &cli.namespace_supernet,
                cli.namespace_subnet_prefix,
                &cli.namespace_uplink,
            )
            .map_err(anyhow::Error::msg)?;
            c.egress_pool = cli.namespace_egress_pool.clone();
            c.route_target = cli.namespace_route_target.clone();
            anyhow::ensure!(
                (1..=100).contains(&cli.namespace_append_at),
                "--namespace-append-at must be 1..=100"
            );
            c.append_at_percent = cli.namespace_append_at;
            c.system_namespaces.push(cli.namespace.clone());
            Some(c)
        }
    };
    let supervisor = match (cli.provider, cli.supervisor_kubeconfig_secret.clone()) {
        (Provider::Pool, None) => None,
        (Provider::Pool, Some(_)) => {
            anyhow::bail!("--supervisor-kubeconfig-secret needs --provider supervisor")
        }
        (Provider::Supervisor, None) => {
            anyhow::bail!("--provider supervisor needs --supervisor-kubeconfig-secret")
        }
        (Provider::Supervisor, Some(secret)) => Some(switchyard_controller::supervisor::Config {
            secret,
            namespace: cli.supervisor_namespace.clone(),
        }),
    };
    let client = switchyard_daemon::kube_client(None)
        .await
        .context("connecting to the API server")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let server = tokio::spawn(metrics::serve(cli.metrics_address, metrics.clone()));
    let opts = Options {
        namespace: cli.namespace,
        lease_name: cli.lease_name,
        identity: cli.identity,
        timings,
        resync: secs(cli.resync.min(10.0)),
        route_resync: secs(cli.route_resync.clamp(1.0, 10.0)),
        cluster: cli.cluster_name,
        namespace_networks,
        ipam_namespace: cli.ipam_namespace,
        supervisor,
    };
    let shutdown = switchyard_daemon::shutdown_signal();
    switchyard_controller::run(client, opts, metrics, shutdown).await;
    server.abort();
    Ok(())
}
