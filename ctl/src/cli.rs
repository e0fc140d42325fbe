//! The command line.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

/// Debug Switchyard on a node: where a pod is plugged in, how a Service is
/// balanced, where a packet goes, what a NetworkPolicy does here, the
/// node's state, and a support bundle.
///
/// Run it on the node as root (or in the node's Switchyard pod): it reads
/// the node's OVSDB, OpenFlow tables and ovs-vswitchd control socket from
/// --ovs-rundir, and the API server (Pods, Services, EndpointSlices) through
/// a kubeconfig. Installed as `kubectl-switchyard` it is also the kubectl
/// plugin `kubectl switchyard ...`.
#[derive(Debug, Parser)]
#[command(name = "switchyardctl", version, propagate_version = true)]
pub struct Cli {
    /// Where the node's OVS is and how to reach the API server.
    #[command(flatten)]
    pub global: Global,
    /// What to show.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// OVS run directory: `db.sock`, `<bridge>.mgmt` and ovs-vswitchd's control socket.
    #[arg(
        long,
        env = "OVS_RUNDIR",
        default_value = "/var/run/openvswitch",
        global = true
    )]
    pub ovs_rundir: PathBuf,
    /// OVSDB endpoint (`unix:PATH` or `tcp:HOST:PORT`) [default: unix:<ovs-rundir>/db.sock].
    #[arg(long, global = true)]
    pub ovsdb: Option<String>,
    /// The integration bridge.
    #[arg(long, default_value = "br-int", global = true)]
    pub bridge: String,
    /// kubeconfig file [default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Time limit, in seconds, for connecting to OVSDB, OpenFlow and the API server, and for
    /// each OpenFlow, ovs-appctl and API request.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A pod's node, OVS port and ofport, VLAN and segment, address, MAC, veth
    /// names, and the flows that match it, table by table with packet counters.
    Pod(PodArgs),
    /// A Service's ClusterIP frontends with counters, their groups and buckets
    /// with per-bucket counters, session-affinity entries, and the endpoints
    /// this node uses.
    Service(ServiceArgs),
    /// Trace a packet through br-int with ofproto/trace (fields filled in),
    /// table by table with names, across conntrack recirculations, to the
    /// final decision.
    Trace(TraceArgs),
    /// OVSDB and OpenFlow reachability, flows per table and per owner, ports
    /// by kind, tunnel peers, segments, agent and proxy health.
    Node(NodeArgs),
    /// Collect flows, groups, OVSDB, conntrack, routes, nftables, versions
    /// and logs into one .tar.gz (no Secrets, no kubeconfig).
    SupportBundle(BundleArgs),
    /// A NetworkPolicy as this node enforces it: the local pods it selects
    /// (with their isolation drop counters), its rules, and each rule's
    /// packet and byte counters.
    #[command(visible_alias = "netpol")]
    Policy(PolicyArgs),
}

/// `-o`, as kubectl has it.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: Format,
}

/// `pod`.
#[derive(Debug, Args)]
pub struct PodArgs {
    /// The pod: NAMESPACE/NAME (NAME alone: namespace `default`).
    #[arg(value_name = "NAMESPACE/NAME")]
    pub pod: String,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The Service: NAMESPACE/NAME (NAME alone: namespace `default`).
    #[arg(value_name = "NAMESPACE/NAME")]
    pub service: String,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Transport protocol of a traced packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// TCP (a SYN).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The ovs-ofctl keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Send from this pod (NAMESPACE/NAME, on this node): its port, MAC and
    /// address. Without it the packet comes from the node through its
    /// gateway port `sy-gw0`.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub from_pod: Option<String>,
    /// Destination address and port.
    #[arg(long, value_name = "IP:PORT")]
    pub to: SocketAddrV4,
    /// Transport protocol.
    #[arg(long, value_enum, default_value_t)]
    pub protocol: Protocol,
    /// Source port.
    #[arg(long, default_value_t = 40000)]
    pub src_port: u16,
    /// Source address when tracing from the node [default: the address of `sy-gw0`].
    #[arg(long, value_name = "IP")]
    pub src_ip: Option<std::net::Ipv4Addr>,
    /// Conntrack state to assume at each recirculation in turn (ofproto/trace
    /// `--ct-next`, e.g. `trk,est`); without it every one is `trk,new`.
    #[arg(long = "ct-state", value_name = "FLAGS")]
    pub ct_states: Vec<String>,
    /// Also print ofproto/trace's own text.
    #[arg(long)]
    pub raw: bool,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The agent's metrics and health address (its `listen-address`).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub agent_address: SocketAddr,
    /// The proxy's metrics and health address (its `--metrics-address`; the
    /// DaemonSet in deploy/ uses 127.0.0.1:9466).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub proxy_address: SocketAddr,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The NetworkPolicy: NAMESPACE/NAME (NAME alone: namespace `default`).
    #[arg(value_name = "NAMESPACE/NAME")]
    pub policy: String,
    /// The agent's metrics address (its `listen-address`): the rule counters.
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub agent_address: SocketAddr,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `support-bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The archive to write (gzip-compressed tar).
    #[arg(short = 'o', long = "output", value_name = "FILE.tar.gz")]
    pub output: PathBuf,
    /// The agent's log file(s); `*` may appear in the file name. In the lab:
    /// `<state>/nodes/<node>/agent.log`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/containers/switchyard-*_switchyard-system_agent-*.log"
    )]
    pub agent_log: Vec<PathBuf>,
    /// The proxy's log file(s). In the lab: `<state>/nodes/<node>/proxy.log`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/containers/switchyard-*_switchyard-system_proxy-*.log"
    )]
    pub proxy_log: Vec<PathBuf>,
    /// The CNI plugin's log file(s) (the conflist's `logFile`). In the lab:
    /// `<state>/nodes/<node>/cni.log`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/switchyard-cni.log"
    )]
    pub cni_log: Vec<PathBuf>,
    /// The OVS daemons' log files [default: `*.log` in --ovs-rundir and /var/log/openvswitch].
    #[arg(long, value_name = "PATH")]
    pub ovs_log: Vec<PathBuf>,
    /// Keep at most this many bytes of the end of each log file.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_log_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn support_bundle_and_output_format_both_use_dash_o() {
        let cli = Cli::try_parse_from(["switchyardctl", "support-bundle", "-o", "/tmp/b.tar.gz"])
            .unwrap();
        assert!(
            matches!(cli.command, Command::SupportBundle(ref b) if b.output == std::path::Path::new("/tmp/b.tar.gz"))
        );
        let cli =
            Cli::try_parse_from(["switchyardctl", "pod", "default/web", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Pod(ref p) if p.output.format == Format::Json));
        assert_eq!(cli.global.bridge, "br-int");
    }

    #[test]
    fn trace_needs_a_destination() {
        assert!(Cli::try_parse_from(["switchyardctl", "trace"]).is_err());
        let cli = Cli::try_parse_from([
            "switchyardctl",
            "trace",
            "--from-pod",
            "default/client",
            "--to",
            "10.96.0.10:80",
            "--protocol",
            "udp",
        ])
        .unwrap();
        let Command::Trace(t) = cli.command else {
            panic!()
        };
        assert_eq!(t.protocol, Protocol::Udp);
        assert_eq!(t.to.port(), 80);
    }
}
