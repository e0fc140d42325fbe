//! `switchyard-lab`: the lab's command-line entry point.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchyard_lab::apiserver::{ApiServer, ApiServerOptions};
use switchyard_lab::cluster::state::{DEFAULT_STATE_DIR, StateDir};
use switchyard_lab::cluster::{demo, echo, runtime, status, up};
use switchyard_lab::fabric_api;

#[derive(Debug, Parser)]
#[command(name = "switchyard-lab", about = "The Switchyard lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct StateArgs {
    /// State directory: records every process, namespace and interface of the lab.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[command(flatten)]
    state: StateArgs,
    /// Prefix of namespace and interface names (1-10 characters).
    #[arg(long, default_value = up::DEFAULT_NAME)]
    name: String,
    /// Underlay subnet between the host and the nodes (the API server listens on its last address).
    #[arg(long, default_value = up::DEFAULT_UNDERLAY)]
    underlay_cidr: ipnet::Ipv4Net,
    /// Do not start switchyard-agent on the nodes.
    #[arg(long)]
    no_agent: bool,
    /// Do not start switchyard-proxy on the nodes.
    #[arg(long)]
    no_proxy: bool,
    /// Directory with switchyard, switchyard-agent, switchyard-proxy [default: next to this binary, then PATH].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where node underlay addresses live: `ovs` (on the tap of an OVS bridge br-ul holding eth0, fixed MAC, as userspace tunnels need) or `veth` (on eth0).
    #[arg(long, value_enum, default_value = "ovs")]
    underlay_mode: switchyard_lab::cluster::state::UnderlayMode,
    /// Add a `fabric` namespace (VLAN-aware router, trunked to every node's trunk0) and an `internet` namespace.
    #[arg(long)]
    fabric: bool,
    /// VLANs of the fabric (comma-separated); each becomes a `vlan` segment of the agents.
    #[arg(long, value_delimiter = ',', default_value = "100,200")]
    vlans: Vec<u16>,
    /// The first N nodes are control planes: an apiserver relay (TLS on :6443) and
    /// switchyard-cpvip each; the fabric routes the control-plane VIP over the healthy ones
    /// (needs --fabric; docs/control-plane-vip.md).
    #[arg(long, default_value_t = 0)]
    control_planes: usize,
    /// The control-plane VIP (with --control-planes).
    #[arg(long, default_value_t = switchyard_lab::cluster::control_plane::DEFAULT_VIP)]
    control_plane_vip: Ipv4Addr,
    /// With --control-planes: plain stateless ECMP in the fabric (by default it keeps an
    /// established connection on the node it started on when the route changes).
    #[arg(long)]
    no_flow_pinning: bool,
}

impl UpArgs {
    fn options(&self) -> up::UpOptions {
        up::UpOptions {
            nodes: self.nodes,
            state: StateDir::new(&self.state.state_dir),
            name: self.name.clone(),
            underlay: self.underlay_cidr,
            agent: !self.no_agent,
            proxy: !self.no_proxy,
            bin_dir: self.bin_dir.clone(),
            fabric_vlans: self.fabric.then(|| self.vlans.clone()),
            underlay_mode: self.underlay_mode,
            control_planes: self.control_planes,
            control_plane_vip: self.control_plane_vip,
            flow_pinning: !self.no_flow_pinning,
        }
    }
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
        /// Address published as the endpoint of the `default/kubernetes` Service (default:
        /// --address, or the default route's source address when that is 0.0.0.0).
        #[arg(long)]
        advertise_address: Option<Ipv4Addr>,
        /// Service ClusterIP range.
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: ipnet::Ipv4Net,
        /// Cluster pod CIDR, split into per-node /24s.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: ipnet::Ipv4Net,
        /// Disable the node IPAM, ClusterIP allocation and EndpointSlice controllers.
        #[arg(long)]
        no_controllers: bool,
        /// The endpoints of `default/kubernetes` are the apiservers (relays) holding an
        /// unexpired endpoint Lease in kube-system, on this port, as kube-apiserver's lease
        /// endpoint reconciler keeps them (`up --control-planes`), instead of this server.
        #[arg(long, conflicts_with = "no_controllers")]
        endpoint_leases_port: Option<u16>,
        /// State directory of a netns lab (`up` sets it): `kubectl exec` runs in its pods'
        /// network namespaces and `kubectl logs` reads their log files.
        #[arg(long)]
        lab_state_dir: Option<PathBuf>,
    },
    /// Bring up a lab of N node namespaces (root). Returns when it is up; it runs in the background.
    Up(UpArgs),
    /// Remove everything a lab made (processes by pid, namespaces, interfaces), also after a crash.
    Down(StateArgs),
    /// Show nodes, daemons, pods with their IPs, OVS ports and VLANs.
    Status(StateArgs),
    /// Bring up 3 nodes (with the fabric and internet namespaces), create pods and Services with
    /// kubectl, show traffic between them and from the internet (NodePort, LoadBalancer).
    Demo {
        #[command(flatten)]
        up: UpArgs,
        /// Remove the lab at the end.
        #[arg(long)]
        teardown: bool,
    },
    /// The runtime driver (started by `up`): runs pods through the CNI plugin.
    #[command(hide = true)]
    Runtime(StateArgs),
    /// Client of echo servers: sends COUNT requests, prints each answer (the backend's name)
    /// on its own line, or `-` for no answer; exits 1 if any request got no answer.
    EchoClient {
        /// Address:port to send HTTP GETs to.
        #[arg(long, conflicts_with = "udp", required_unless_present = "udp")]
        http: Option<SocketAddr>,
        /// Address:port to send UDP datagrams to.
        #[arg(long)]
        udp: Option<SocketAddr>,
        /// Number of requests.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
        /// Local UDP port to send from (0: a new ephemeral port per request).
        #[arg(long, default_value_t = 0, requires = "udp")]
        source_port: u16,
        /// Milliseconds from the start of one request to the start of the next (0: back to
        /// back); answers are printed as they come.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// The lab's router API (started by `up --fabric` in the fabric namespace): the NSX-T
    /// Policy API subset for tier-1 static routes over HTTPS with client certificates, applied
    /// as ECMP routes with netlink, with fault injection (see `fabric_api`).
    FabricApi {
        /// Address:port to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Server certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Server key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// CA that client certificates must be signed by (PEM).
        #[arg(long)]
        client_ca: PathBuf,
        /// File to write the address to once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// A control-plane node's apiserver for the control-plane VIP: TLS relay to the lab API
    /// server with its own `/readyz` and switches (`PUT /mode` ok|fail|hang|die on the
    /// control address; see `relay`).
    ApiserverRelay {
        /// TLS address:port to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The lab API server (plain HTTP address:port).
        #[arg(long)]
        upstream: SocketAddr,
        /// Server certificate (PEM; the VIP and the node's address in its SANs).
        #[arg(long)]
        cert: PathBuf,
        /// Server key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Plain-HTTP control address:port (`PUT /mode`).
        #[arg(long)]
        control: SocketAddr,
        /// File to write the TLS address to once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Renew an endpoint Lease for this address in the lab API server (every 5 s, 15 s
        /// duration; `apiserver --endpoint-leases-port` lists it in `default/kubernetes`).
        #[arg(long)]
        lease_address: Option<Ipv4Addr>,
    },
    /// The lab's cluster DNS resolver (started by `up` in each node): A records of
    /// `<service>.<namespace>.svc.cluster.local` from the Services' ClusterIPs.
    #[command(hide = true)]
    DnsServer {
        /// The lab API server URL.
        #[arg(long)]
        api_url: String,
        /// UDP address to answer on.
        #[arg(long, default_value = "0.0.0.0:53")]
        listen: SocketAddr,
        /// File to create once it answers.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// A pod process: answers HTTP and UDP with its name.
    EchoServer {
        /// Name to answer with.
        #[arg(long, env = "POD_NAME")]
        name: String,
        /// HTTP port (0: none).
        #[arg(long, default_value_t = 8080)]
        http: u16,
        /// UDP port (0: none).
        #[arg(long, default_value_t = 5353)]
        udp: u16,
        /// File to create once the ports are bound.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// More TCP ports answering as the HTTP port (repeatable).
        #[arg(long = "extra-http")]
        extra_http: Vec<u16>,
        /// More UDP ports answering as the UDP port (repeatable).
        #[arg(long = "extra-udp")]
        extra_udp: Vec<u16>,
    },
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run_apiserver(
    mut opts: ApiServerOptions,
    kubeconfig: Option<PathBuf>,
    endpoint_leases_port: Option<u16>,
) -> anyhow::Result<()> {
    let leased = match (endpoint_leases_port, opts.service_cidr) {
        (Some(port), Some(cidr)) => {
            // The built-in keeper (one endpoint: this server) is replaced by the Lease one.
            opts.kubernetes_service = false;
            let mut keeper = switchyard_lab::controllers::KubernetesService::new(
                cidr,
                std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            )
            .map_err(anyhow::Error::msg)?;
            keeper.endpoint_leases = true;
            Some(keeper)
        }
        _ => None,
    };
    let server = ApiServer::start(opts).await?;
    let (_stop_keeper, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(keeper) = leased {
        // In place before the kubeconfig (the sign of readiness) is written.
        keeper.reconcile(server.store());
        switchyard_lab::controllers::spawn_kubernetes_service(server.store(), keeper, stop_rx);
    }
    if let Some(path) = &kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apiserver {
            port,
            kubeconfig,
            address,
            advertise_address,
            service_cidr,
            cluster_cidr,
            no_controllers,
            endpoint_leases_port,
            lab_state_dir,
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
            opts.advertise_address = advertise_address;
            opts.pod_runtime = lab_state_dir.map(|dir| {
                std::sync::Arc::new(switchyard_lab::cluster::pods::LabPods::new(StateDir::new(
                    dir,
                )))
                    as std::sync::Arc<dyn switchyard_lab::apiserver::pods::PodRuntime>
            });
            tokio_runtime()?.block_on(run_apiserver(opts, kubeconfig, endpoint_leases_port))
        }
        Command::Up(args) => {
            let opts = args.options();
            let report = up::up(&opts)?;
            println!(
                "Lab {:?} is up ({} nodes).",
                report.info.name,
                report.info.nodes.len()
            );
            demo::print_up_report(&opts.state, &report);
            if let (Some(cp), Some(f)) = (&report.info.control_planes, &report.info.fabric) {
                println!(
                    "\nControl planes {}: the fabric routes the VIP {} over those whose apiserver relay is ready.\nip netns exec {} kubectl --kubeconfig {} get nodes",
                    cp.nodes.join(", "),
                    cp.vip,
                    f.internet_netns,
                    switchyard_lab::cluster::control_plane::vip_kubeconfig_path(&opts.state)
                        .display()
                );
            }
            let exe = report.info.binaries.lab.display();
            println!(
                "\nkubectl --kubeconfig {} get nodes -o wide\n{exe} status --state-dir {}\n{exe} down --state-dir {}",
                opts.state.kubeconfig().display(),
                opts.state.root().display(),
                opts.state.root().display()
            );
            Ok(())
        }
        Command::Down(args) => {
            let state = StateDir::new(&args.state_dir);
            if !up::has_lab(&state) {
                println!(
                    "No lab state (journal, lab.json) in {}: nothing to remove.",
                    state.root().display()
                );
                return Ok(());
            }
            let r = up::down(&state)?;
            println!(
                "Lab removed: stopped {} processes, deleted {} namespaces and {} host interfaces.",
                r.processes, r.namespaces, r.links
            );
            Ok(())
        }
        Command::Status(args) => {
            print!("{}", status::status(&StateDir::new(&args.state_dir))?);
            Ok(())
        }
        Command::Demo { up, teardown } => demo::demo(&demo::DemoOptions {
            // The demo reaches NodePort and LoadBalancer Services from the
            // `internet` namespace behind the fabric: always bring it up.
            up: up::UpOptions {
                fabric_vlans: Some(up.vlans.clone()),
                ..up.options()
            },
            teardown,
        })
        .map_err(Into::into),
        Command::Runtime(args) => tokio_runtime()?
            .block_on(runtime::run(StateDir::new(&args.state_dir)))
            .map_err(Into::into),
        Command::EchoClient {
            http,
            udp,
            count,
            timeout,
            source_port,
            interval_ms,
        } => {
            let timeout = std::time::Duration::from_secs(timeout);
            let failures = tokio_runtime()?.block_on(async {
                let mut failures = 0;
                let interval = std::time::Duration::from_millis(interval_ms);
                let mut next = tokio::time::Instant::now();
                for _ in 0..count {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                    let r = match (http, udp) {
                        (Some(t), _) => echo::http_request(t, timeout).await,
                        (None, Some(t)) => echo::udp_request_from(source_port, t, timeout).await,
                        (None, None) => Err(std::io::Error::other("give --http or --udp")),
                    };
                    match r {
                        Ok(name) => {
                            use std::io::Write as _;
                            println!("{name}");
                            let _ = std::io::stdout().flush();
                        }
                        Err(e) => {
                            failures += 1;
                            println!("-");
                            tracing::debug!(error = %e, "no answer");
                        }
                    }
                }
                failures
            });
            if failures > 0 {
                anyhow::bail!("{failures} of {count} requests got no answer");
            }
            Ok(())
        }
        Command::FabricApi {
            listen,
            cert,
            key,
            client_ca,
            ready_file,
        } => tokio_runtime()?
            .block_on(fabric_api::run(
                listen,
                fabric_api::ServerTls {
                    cert,
                    key,
                    client_ca,
                },
                ready_file,
            ))
            .context("fabric API"),
        Command::ApiserverRelay {
            listen,
            upstream,
            cert,
            key,
            control,
            ready_file,
            lease_address,
        } => tokio_runtime()?
            .block_on(switchyard_lab::relay::run(
                switchyard_lab::relay::RelayConfig {
                    listen,
                    upstream,
                    cert,
                    key,
                },
                control,
                ready_file,
                lease_address,
            ))
            .context("apiserver relay"),
        Command::DnsServer {
            api_url,
            listen,
            ready_file,
        } => tokio_runtime()?
            .block_on(switchyard_lab::cluster::dns::serve(
                switchyard_lab::cluster::dns::DnsOptions {
                    api_url,
                    listen,
                    ready_file,
                },
            ))
            .context("cluster DNS"),
        Command::EchoServer {
            name,
            http,
            udp,
            ready_file,
            extra_http,
            extra_udp,
        } => tokio_runtime()?
            .block_on(echo::run(echo::EchoOptions {
                name,
                http_port: http,
                udp_port: udp,
                ready_file,
                extra_http_ports: extra_http,
                extra_udp_ports: extra_udp,
            }))
            .context("echo server"),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
