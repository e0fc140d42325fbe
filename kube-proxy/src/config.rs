//! The proxy's command line: [`Flags`], parsed by the `switchyard-proxy`
//! binary, and public so that other crates (the deployment checks) can parse
//! the DaemonSet's arguments with the same parser.

use std::net::SocketAddr;
use std::path::PathBuf;

#[cfg(test)]
use clap::CommandFactory;
use clap::Parser;
use clap::builder::TypedValueParser as _;

/// Switchyard service proxy: ClusterIP load balancing in OVS.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Flags {
    /// This node's name, as EndpointSlices name it.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// kubeconfig file; default: in-cluster config or $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// OVS run directory holding `<bridge>.mgmt` and ovs-vswitchd's control socket.
    #[arg(long, env = "OVS_RUNDIR", default_value = "/var/run/openvswitch")]
    pub ovs_rundir: PathBuf,
    /// The integration bridge.
    #[arg(long, default_value = "br-int")]
    pub bridge: String,
    /// Address serving /metrics, /healthz, /readyz and /proxyMode (all addresses by default,
    /// for Prometheus on the host network; 127.0.0.1:PORT keeps it on the node).
    #[arg(long, default_value = "0.0.0.0:10249")]
    pub metrics_address: SocketAddr,
    /// Address of kube-proxy's health server (/healthz with lastUpdated, /livez),
    /// which load balancers probe; an empty value disables it.
    #[arg(long, default_value = crate::healthcheck::DEFAULT_HEALTHZ_BIND_ADDRESS)]
    pub healthz_bind_address: OptionalAddr,
    /// Full resync period in seconds (0 = never; start and reconnects still resync).
    #[arg(long, default_value_t = 300)]
    pub resync_period: u64,
    /// Debounce window for bursts of API changes, in milliseconds (0: apply each change at
    /// once; changes already queued are still applied together).
    #[arg(long, default_value_t = 0)]
    pub debounce_ms: u64,
    /// Most ICMP rejects sent per second for Services without endpoints.
    #[arg(long, default_value_t = 1000)]
    pub reject_rate: u32,
    /// Endpoints per OVS select group (1-512). A Service port with more endpoints is
    /// balanced over chained groups, up to 125 groups per port.
    #[arg(long, default_value_t = crate::groups::DEFAULT_BUCKETS_PER_GROUP,
          value_parser = clap::value_parser!(u16).range(1..=512).map(usize::from))]
    pub buckets_per_group: usize,
    /// CIDRs (comma-separated) whose node addresses serve NodePorts: every address of the
    /// node's interfaces inside one of them. Default: the Node's InternalIP.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<ipnet::Ipv4Net>,
    /// CIDRs (comma-separated) that a Service's `spec.externalIPs` may come from; an
    /// external IP outside them gets no frontend (logged). Guards against CVE-2020-8554
    /// (any user who can create Services intercepting any address). Default: any address.
    #[arg(long, value_delimiter = ',')]
    pub external_ip_cidrs: Vec<ipnet::Ipv4Net>,
    /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = switchyard_daemon::LogFormat::Text)]
    pub log_format: switchyard_daemon::LogFormat,
}

/// `ADDR:PORT`, or empty for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Ok(Self(None));
        }
        text.parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|_| format!("{text:?} is not ADDR:PORT (e.g. 0.0.0.0:10256; empty disables)"))
    }
}

impl std::fmt::Display for OptionalAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_node_name() {
        let flags = Flags::try_parse_from(["switchyard-proxy", "--node-name=n1"]).unwrap();
        assert_eq!(flags.node_name, "n1");
        assert_eq!(flags.bridge, "br-int");
        assert_eq!(flags.metrics_address, "0.0.0.0:10249".parse().unwrap());
        assert_eq!(flags.resync_period, 300);
        assert_eq!(flags.debounce_ms, 0);
        assert_eq!(flags.reject_rate, 1000);
        assert_eq!(flags.buckets_per_group, 512);
        assert_eq!(
            flags.healthz_bind_address,
            OptionalAddr(Some("0.0.0.0:10256".parse().unwrap()))
        );
        let parse = |value: &str| {
            Flags::try_parse_from([
                "switchyard-proxy",
                "--node-name=n1",
                &format!("--healthz-bind-address={value}"),
            ])
        };
        assert_eq!(parse("").unwrap().healthz_bind_address, OptionalAddr(None));
        assert_eq!(
            parse("127.0.0.1:1").unwrap().healthz_bind_address,
            OptionalAddr(Some("127.0.0.1:1".parse().unwrap()))
        );
        for bad in ["10256", "nowhere:1", "0"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("healthz-bind-address") && err.contains("not ADDR:PORT"),
                "{err}"
            );
        }
        assert!(flags.nodeport_addresses.is_empty());
        let flags = Flags::try_parse_from([
            "switchyard-proxy",
            "--node-name=n1",
            "--nodeport-addresses=10.0.0.0/8,192.168.1.0/24",
        ])
        .unwrap();
        assert_eq!(flags.nodeport_addresses.len(), 2);
        for bad in ["0", "513", "x"] {
            let err = Flags::try_parse_from([
                "switchyard-proxy",
                "--node-name=n1",
                &format!("--buckets-per-group={bad}"),
            ])
            .unwrap_err();
            assert!(err.to_string().contains("buckets-per-group"), "{err}");
        }
        Flags::command().debug_assert();
    }
}
