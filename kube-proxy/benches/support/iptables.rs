//! kube-proxy's iptables mode as the baseline of the service proxy
//! benches (`datapath`, `datapath_api`): the nat table it generates for the
//! same Services, loaded with `iptables-restore --noflush` into a scratch
//! network namespace, and what it writes for one changed endpoint.
//!
//! NodePort and LoadBalancer Services get what kube-proxy adds for them:
//! a `KUBE-NODEPORTS` rule per node port and a `KUBE-SERVICES` rule per
//! LoadBalancer IP, both to the port's `KUBE-EXT-*` chain; for
//! `externalTrafficPolicy: Cluster` that chain marks for masquerade and
//! jumps to `KUBE-SVC-*`; for `Local` it sends pod and node traffic to
//! `KUBE-SVC-*` and everything else to `KUBE-SVL-*`, which balances over
//! this node's endpoints only (or drops with none). `KUBE-FW-*` chains
//! exist only for `loadBalancerSourceRanges`, which these Services do not
//! set, so there are none (as kube-proxy would write it).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_ovs_harness::Netns;
use switchyard_proxy::DesiredState;

/// Endpoints per Service in the benches.
const ENDPOINTS: usize = 10;

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[index]
}

/// kube-proxy's chain name suffix: first 16 base32 characters of the
/// SHA-256 of the port name (and endpoint); any stable 16-character hash
/// gives the same rule-set sizes.
fn chain_hash(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let mut value = hasher.finish();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(16);
    for _ in 0..16 {
        out.push(alphabet[(value % 32) as usize] as char);
        value /= 32;
        if value == 0 {
            value = 0x9e37_79b9_7f4a_7c15;
        }
    }
    out
}

struct IptService {
    name: String,
    vip: String,
    endpoints: Vec<String>,
    /// Which of `endpoints` run on this node (same order).
    local: Vec<bool>,
    node_port: Option<u16>,
    lb_ips: Vec<String>,
    /// `externalTrafficPolicy: Local`.
    etp_local: bool,
}

impl IptService {
    fn external(&self) -> bool {
        self.node_port.is_some() || !self.lb_ips.is_empty()
    }
}

fn ipt_services(state: &DesiredState) -> Vec<IptService> {
    state
        .iter()
        .map(|(name, port)| IptService {
            name: name.to_string(),
            vip: port.cluster_ip.to_string(),
            endpoints: port
                .endpoints
                .iter()
                .map(|e| format!("{}:{}", e.ip, e.port))
                .collect(),
            local: port.endpoints.iter().map(|e| e.is_local).collect(),
            node_port: port.external.node_port,
            lb_ips: port.external.ips.iter().map(|ip| ip.to_string()).collect(),
            etp_local: port.external.local,
        })
        .collect()
}

fn ext_chain(service: &IptService) -> String {
    format!("KUBE-EXT-{}", chain_hash(&service.name))
}

fn svl_chain(service: &IptService) -> String {
    format!("KUBE-SVL-{}", chain_hash(&service.name))
}

/// `KUBE-NODEPORTS`, in full.
fn nodeports_rules(out: &mut String, services: &[IptService]) {
    for service in services {
        if let Some(np) = service.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -m comment --comment \"{}\" -m tcp -p tcp --dport {np} -j {}",
                service.name,
                ext_chain(service)
            );
        }
    }
}

/// The chains (other than `KUBE-SVC-*` and `KUBE-SEP-*`) of one external
/// Service.
fn external_chain_rules(out: &mut String, service: &IptService) {
    let ext = ext_chain(service);
    let svc = svc_chain(service);
    if !service.etp_local {
        let _ = writeln!(
            out,
            "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
            service.name
        );
        let _ = writeln!(out, "-A {ext} -j {svc}");
        return;
    }
    let svl = svl_chain(service);
    let _ = writeln!(
        out,
        "-A {ext} -s 10.128.0.0/9 -m comment --comment \"pod traffic for {} external destinations\" -j {svc}",
        service.name
    );
    let _ = writeln!(
        out,
        "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
        service.name
    );
    let _ = writeln!(
        out,
        "-A {ext} -m comment --comment \"route LOCAL traffic for {} external destinations\" -m addrtype --src-type LOCAL -j {svc}",
        service.name
    );
    let _ = writeln!(out, "-A {ext} -j {svl}");
    let local: Vec<&String> = service
        .endpoints
        .iter()
        .zip(&service.local)
        .filter(|(_, local)| **local)
        .map(|(ep, _)| ep)
        .collect();
    if local.is_empty() {
        let _ = writeln!(
            out,
            "-A {svl} -m comment --comment \"{} has no local endpoints\" -j KUBE-MARK-DROP",
            service.name
        );
    }
    let n = local.len();
    for (i, ep) in local.into_iter().enumerate() {
        let sep = sep_chain(service, ep);
        if i + 1 < n {
            let probability = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {svl} -m comment --comment \"{} -> {ep}\" -m statistic --mode random --probability {probability:.10} -j {sep}",
                service.name
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svl} -m comment --comment \"{} -> {ep}\" -j {sep}",
                service.name
            );
        }
    }
}

/// The chain declarations of one Service (without its endpoints').
fn declare_service_chains(out: &mut String, service: &IptService) {
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(service));
    if service.external() {
        let _ = writeln!(out, ":{} - [0:0]", ext_chain(service));
        if service.etp_local {
            let _ = writeln!(out, ":{} - [0:0]", svl_chain(service));
        }
    }
}

fn svc_chain(service: &IptService) -> String {
    format!("KUBE-SVC-{}", chain_hash(&service.name))
}

fn sep_chain(service: &IptService, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!("{}{endpoint}", service.name))
    )
}

fn kube_services_rules(out: &mut String, services: &[IptService]) {
    for service in services {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport 80 -j {}",
            service.name,
            service.vip,
            svc_chain(service)
        );
        for ip in &service.lb_ips {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -m comment --comment \"{} loadbalancer IP\" -m tcp -p tcp -d {ip}/32 --dport 80 -j {}",
                service.name,
                ext_chain(service)
            );
        }
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
}

fn service_chain_rules(out: &mut String, service: &IptService) {
    let svc = svc_chain(service);
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport 80 ! -s 10.128.0.0/9 -j KUBE-MARK-MASQ",
        service.name, service.vip
    );
    let n = service.endpoints.len();
    for (i, ep) in service.endpoints.iter().enumerate() {
        let sep = sep_chain(service, ep);
        if i + 1 < n {
            let probability = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{} -> {ep}\" -m statistic --mode random --probability {probability:.10} -j {sep}",
                service.name
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{} -> {ep}\" -j {sep}",
                service.name
            );
        }
    }
}

fn endpoint_chain_rules(out: &mut String, service: &IptService, ep: &str) {
    let sep = sep_chain(service, ep);
    let ip = ep.split(':').next().unwrap_or_default();
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {} -s {ip}/32 -j KUBE-MARK-MASQ",
        service.name
    );
    let _ = writeln!(
        out,
        "-A {sep} -m comment --comment {} -m tcp -p tcp -j DNAT --to-destination {ep}",
        service.name
    );
}

/// The full nat table as kube-proxy writes it.
fn iptables_full(services: &[IptService]) -> String {
    let mut out = String::with_capacity(services.len() * 2048);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-MARK-DROP - [0:0]\n");
    for service in services {
        declare_service_chains(&mut out, service);
        for ep in &service.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(service, ep));
        }
    }
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    out.push_str("-A KUBE-MARK-DROP -j MARK --or-mark 0x8000\n");
    kube_services_rules(&mut out, services);
    nodeports_rules(&mut out, services);
    for service in services {
        service_chain_rules(&mut out, service);
        if service.external() {
            external_chain_rules(&mut out, service);
        }
        for ep in &service.endpoints {
            endpoint_chain_rules(&mut out, service, ep);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy writes when one Service's endpoint `old` became `new`:
/// the top-level chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`) in full, the
/// Service's chains (`KUBE-SVC`, and `KUBE-EXT` / `KUBE-SVL` when it has
/// them), the new endpoint's chain, and the deletion of the old one
/// (unchanged endpoint chains are not rewritten).
fn iptables_change(services: &[IptService], changed: usize, old: &str, new: &str) -> String {
    let service = &services[changed];
    let mut out = String::with_capacity(services.len() * 200);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    declare_service_chains(&mut out, service);
    let _ = writeln!(out, ":{} - [0:0]", sep_chain(service, new));
    let _ = writeln!(out, ":{} - [0:0]", sep_chain(service, old));
    kube_services_rules(&mut out, services);
    nodeports_rules(&mut out, services);
    service_chain_rules(&mut out, service);
    if service.external() {
        external_chain_rules(&mut out, service);
    }
    endpoint_chain_rules(&mut out, service, new);
    let _ = writeln!(out, "-X {}", sep_chain(service, old));
    out.push_str("COMMIT\n");
    out
}

/// `iptables-legacy-restore` unless `SY_BENCH_IPTABLES=nft`.
pub fn restore_binary() -> &'static str {
    match std::env::var("SY_BENCH_IPTABLES").as_deref() {
        Ok("nft") => "iptables-nft-restore",
        _ => "iptables-legacy-restore",
    }
}

/// Time of one `iptables-restore --noflush`; `Err` with its message when
/// it refuses the input.
fn iptables_restore(netns: &Netns, input: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            restore_binary(),
            "-w",
            "--noflush",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write rules");
    let out = child.wait_with_output().expect("iptables-restore exits");
    if out.status.success() {
        Ok(started.elapsed())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The baseline's timings for one size.
pub struct Baseline {
    /// `iptables-restore` of the full nat table, or its error message.
    pub full: Result<Duration, String>,
    /// p50 and p99 of the one-change restores (`None` if the full load was
    /// refused or no change was asked for).
    pub change: Option<(Duration, Duration)>,
}

impl Baseline {
    /// The table cells `[full, full ratio, change p50 / p99, p99 ratio]`
    /// next to the proxy's full sync and change p99 (`refused` / `-` where
    /// the baseline has no figure).
    pub fn cells(&self, proxy_full: Duration, proxy_change_p99: Duration) -> [String; 4] {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let ratio = |baseline: Duration, proxy: Duration| {
            format!("{:.1}x", baseline.as_secs_f64() / proxy.as_secs_f64())
        };
        let (full, full_ratio) = match &self.full {
            Ok(t) => (format!("{:.0} ms", ms(*t)), ratio(*t, proxy_full)),
            Err(_) => ("refused".to_owned(), "-".to_owned()),
        };
        let (change, change_ratio) = match self.change {
            Some((p50, p99)) => (
                format!("{:.1} / {:.1} ms", ms(p50), ms(p99)),
                ratio(p99, proxy_change_p99),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        [full, full_ratio, change, change_ratio]
    }
}

/// Loads the nat table kube-proxy generates for `state` into a fresh
/// scratch namespace, then times `changes` one-endpoint changes on
/// different Services.
pub fn run(state: &DesiredState, changes: usize) -> Baseline {
    let netns = Netns::new("sy-ipt").expect("scratch netns");
    let mut ipt = ipt_services(state);
    let full = iptables_restore(&netns, &iptables_full(&ipt));
    if let Err(err) = &full {
        eprintln!("{} services: iptables full load refused: {err}", ipt.len());
    }
    let mut times = Vec::with_capacity(changes);
    for round in 0..changes {
        if full.is_err() {
            break;
        }
        let index = (round * 104_729) % ipt.len();
        let slot = round % ENDPOINTS;
        let old = ipt[index].endpoints[slot].clone();
        let new = format!("12.0.{}.{}:8080", round / 250, round % 250 + 1);
        ipt[index].endpoints[slot] = new.clone();
        ipt[index].local[slot] = false;
        let input = iptables_change(&ipt, index, &old, &new);
        times.push(iptables_restore(&netns, &input).expect("iptables change"));
    }
    let change =
        (!times.is_empty()).then(|| (percentile(&mut times, 0.5), percentile(&mut times, 0.99)));
    Baseline { full, change }
}
