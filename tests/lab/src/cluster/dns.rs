//! The lab's cluster DNS (`switchyard-lab dns-server`), a small CoreDNS stand-in: one per
//! node, in the node's namespace on UDP port 53 of the node address, behind the `kube-system/kube-dns` Service
//! (ClusterIP [`CLUSTER_DNS`], `internalTrafficPolicy: Local`, so each pod asks its own
//! node's resolver). It watches Services and answers `A` queries for
//! `<service>.<namespace>.svc.cluster.local` with the ClusterIP. Other names in the cluster
//! domain get NXDOMAIN, other record types of a known name an empty answer (NODATA), and
//! names outside the cluster domain NXDOMAIN too: the lab has no upstream resolver.
//! Headless and ExternalName Services get NODATA.
//!
//! Pods find it through the `resolv.conf` the runtime driver writes for their namespace
//! (`/etc/netns/<netns>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`):
//! [`resolv_conf`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::LabError;

/// The cluster DNS Service address (kubelet's `--cluster-dns`).
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of answers, seconds (CoreDNS's `kubernetes` plugin default).
const TTL: u32 = 5;

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;
const RCODE_NOTIMP: u16 = 4;

/// `resolv.conf` of a pod in `namespace`, as kubelet writes it for `dnsPolicy: ClusterFirst`.
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver {CLUSTER_DNS}\noptions ndots:5\n"
    )
}

/// What a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A name with these addresses (none: NODATA).
    Found(Vec<Ipv4Addr>),
    /// No such name.
    NoName,
}

/// The Service a name designates: `<svc>.<ns>.svc.<domain>` (any case, trailing dot or not).
pub fn service_of(name: &str) -> Option<(String, String)> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = name.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (svc, ns) = rest.split_once('.')?;
    (!svc.is_empty() && !ns.is_empty() && !ns.contains('.'))
        .then(|| (svc.to_string(), ns.to_string()))
}

/// Looks a name up among `services`.
pub fn lookup(services: &[std::sync::Arc<Service>], name: &str) -> Lookup {
    let Some((svc, ns)) = service_of(name) else {
        return Lookup::NoName;
    };
    let Some(s) = services.iter().find(|s| {
        s.metadata.name.as_deref() == Some(svc.as_str())
            && s.metadata.namespace.as_deref() == Some(ns.as_str())
    }) else {
        return Lookup::NoName;
    };
    let ip = s
        .spec
        .as_ref()
        .and_then(|sp| sp.cluster_ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    Lookup::Found(ip.into_iter().collect())
}

/// The question of a query: (name, type, end offset of the question).
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression or extended labels: not in a query's question
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).into_owned());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    msg.get(i + 3)?;
    Some((labels.join("."), qtype, i + 4))
}

/// The answer to a query (`None`: not a query worth answering).
pub fn answer(msg: &[u8], resolve: impl Fn(&str) -> Lookup) -> Option<Vec<u8>> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None; // too short, or a response
    }
    let opcode = (msg[2] >> 3) & 0x0F;
    let rd = u16::from(msg[2] & 0x01) << 8;
    let header = |rcode: u16, qd: u16, an: u16| {
        let flags: u16 = 0x8000 | (u16::from(opcode) << 11) | 0x0400 | rd | 0x0080 | rcode;
        let mut h = vec![msg[0], msg[1]];
        h.extend_from_slice(&flags.to_be_bytes());
        for n in [qd, an, 0, 0] {
            h.extend_from_slice(&n.to_be_bytes());
        }
        h
    };
    if opcode != 0 {
        return Some(header(RCODE_NOTIMP, 0, 0));
    }
    let Some((name, qtype, end)) = question(msg) else {
        return Some(header(RCODE_FORMERR, 0, 0));
    };
    let (rcode, addrs) = match resolve(&name) {
        Lookup::NoName => (RCODE_NXDOMAIN, Vec::new()),
        Lookup::Found(a) if matches!(qtype, TYPE_A | TYPE_ANY) => (0, a),
        Lookup::Found(_) => (0, Vec::new()),
    };
    let mut out = header(rcode, 1, u16::try_from(addrs.len()).unwrap_or(0));
    out.extend_from_slice(&msg[12..end]);
    for a in addrs {
        // Name: a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    Some(out)
}

/// Options of [`serve`].
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The lab API server.
    pub api_url: String,
    /// UDP address to answer on.
    pub listen: SocketAddr,
    /// File created once the Services are listed and the socket is bound.
    pub ready_file: Option<PathBuf>,
}

/// Serves until the process ends.
pub async fn serve(opts: DnsOptions) -> Result<(), LabError> {
    let client = super::up::client(&opts.api_url)?;
    let (reader, writer) = reflector::store::<Service>();
    let services = reflector::reflector(
        writer,
        watcher::watcher(Api::<Service>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(services);
        while let Some(ev) = services.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "Service watch failed; retrying");
            }
        }
    });
    reader
        .wait_until_ready()
        .await
        .map_err(|e| LabError::Other(format!("Service watch: {e}")))?;
    let sock = tokio::net::UdpSocket::bind(opts.listen)
        .await
        .map_err(|e| LabError::io(format!("binding UDP {}", opts.listen), e))?;
    if let Some(f) = &opts.ready_file {
        std::fs::write(f, b"ready\n").map_err(|e| LabError::io("writing the ready file", e))?;
    }
    tracing::info!(listen = %opts.listen, "cluster DNS answering");
    serve_socket(&sock, &reader).await
}

async fn serve_socket(
    sock: &tokio::net::UdpSocket,
    services: &Store<Service>,
) -> Result<(), LabError> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = sock
            .recv_from(&mut buf)
            .await
            .map_err(|e| LabError::io("receiving a DNS query", e))?;
        let all = services.state();
        let Some(reply) = answer(&buf[..n], |name| {
            let found = lookup(&all, name);
            tracing::debug!(%peer, name, ?found, "query");
            found
        }) else {
            continue;
        };
        if let Err(e) = sock.send_to(&reply, peer).await {
            tracing::debug!(%peer, error = %e, "could not answer");
        }
    }
}

/// A query for `name` of type `qtype` (tests and clients).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn svc(ns: &str, name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn names_map_to_cluster_ips() {
        let all = vec![
            svc("default", "web", "10.96.0.20"),
            svc("default", "db", "None"),
        ];
        assert_eq!(
            lookup(&all, "web.default.svc.cluster.local."),
            Lookup::Found(vec![Ipv4Addr::new(10, 96, 0, 20)])
        );
        assert_eq!(
            lookup(&all, "WEB.Default.svc.cluster.local"),
            Lookup::Found(vec![Ipv4Addr::new(10, 96, 0, 20)])
        );
        assert_eq!(
            lookup(&all, "db.default.svc.cluster.local"),
            Lookup::Found(vec![])
        );
        assert_eq!(lookup(&all, "web.other.svc.cluster.local"), Lookup::NoName);
        assert_eq!(
            lookup(
                &all,
                "web.default.svc.cluster.local.default.svc.cluster.local"
            ),
            Lookup::NoName
        );
        assert_eq!(lookup(&all, "example.com"), Lookup::NoName);
    }

    #[test]
    fn answers_a_nodata_and_nxdomain() {
        let resolve = |n: &str| {
            if n == "web.default.svc.cluster.local" {
                Lookup::Found(vec![Ipv4Addr::new(10, 96, 0, 20)])
            } else {
                Lookup::NoName
            }
        };
        let q = query(0x1234, "web.default.svc.cluster.local", TYPE_A);
        let r = answer(&q, resolve).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0F, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 96, 0, 20]);
        assert_eq!(&r[12..q.len()], &q[12..], "the question is echoed");

        let aaaa = answer(&query(1, "web.default.svc.cluster.local", 28), resolve).unwrap();
        assert_eq!(aaaa[3] & 0x0F, 0, "NODATA is NOERROR");
        assert_eq!(u16::from_be_bytes([aaaa[6], aaaa[7]]), 0);

        let nx = answer(&query(2, "nope.default.svc.cluster.local", TYPE_A), resolve).unwrap();
        assert_eq!(nx[3] & 0x0F, 3, "NXDOMAIN");

        assert_eq!(answer(&[0u8; 5], resolve), None);
        let mut garbage = query(3, "x", TYPE_A);
        garbage.truncate(14);
        assert_eq!(answer(&garbage, resolve).unwrap()[3] & 0x0F, 1, "FORMERR");
    }

    #[test]
    fn resolv_conf_searches_the_namespace_first() {
        let r = resolv_conf("team");
        assert!(r.starts_with("search team.svc.cluster.local svc.cluster.local cluster.local\n"));
        assert!(r.contains("nameserver 10.96.0.10\n"));
        assert!(r.contains("options ndots:5"));
    }
}
