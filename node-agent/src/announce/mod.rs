//! L2 announcement of LoadBalancer addresses (IPPools with `announce.mode: L2`, the default):
//! for each such address one node answers ARP, and a node that takes an address over says so
//! with gratuitous ARPs. No coordination beyond the API objects and heartbeats: every agent
//! computes the same order of eligible nodes per address and acts only for itself.
//!
//! - [`eligibility`] (pure): the order of eligible nodes per address (pool `nodeSelector`,
//!   Ready, not excluded, alive, a ready local endpoint for `externalTrafficPolicy: Local`),
//!   by rendezvous hashing of (address, node name).
//! - [`liveness`] (pure) and [`heartbeat`]: which peers are alive, from UDP heartbeats over the
//!   underlay every 200 ms (dead after 1 s of silence, back after 2 s of steady heartbeats).
//! - [`responder`]: the ARP answer (the kernel's proxy-ARP table on the interface of the
//!   node's InternalIP) and the gratuitous ARP, behind a trait; [`speaker`]: makes the
//!   responder hold exactly this node's addresses and schedules the gratuitous ARPs.
//! - [`watch`]: Nodes, Services, EndpointSlices and IPPools reduced to [`eligibility::Inputs`].
//! - [`metrics`]: `switchyard_agent_lb_l2_*` (addresses held, takeovers, releases, peers
//!   alive, peer deaths).
//!
//! [`run`] ties them together: one task, a 50 ms tick. Heartbeats go out only while some
//! IPPool is L2. A (re)started agent, or one whose heartbeats just began, changes nothing for
//! [`Timing::rejoin_after`] plus one interval (peers hear from it, it hears from them),
//! keeping what a previous agent left in the kernel meanwhile, so an agent restart does not
//! move addresses. Design and measurements: `docs/load-balancer.md`.

pub mod eligibility;
pub mod heartbeat;
pub mod liveness;
pub mod metrics;
pub mod responder;
pub mod speaker;
pub mod watch;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch as channel;

use self::eligibility::{Inputs, owned_by, plan};
use self::heartbeat::{HEARTBEAT_PORT, Heartbeat, accept};
use self::liveness::{Change, Liveness, Timing};
use self::responder::{KernelResponder, interface_of};
use self::speaker::Speaker;
use crate::netns::Netlink;

/// Resolution of liveness decisions.
const TICK: Duration = Duration::from_millis(50);
/// How often the kernel's entries are read back (repairs out-of-band deletions).
const REREAD: Duration = Duration::from_secs(10);
/// How often a missing interface is complained about.
const COMPLAIN: Duration = Duration::from_secs(30);

/// What woke the loop.
enum Wake {
    Stop,
    Received(Option<(usize, SocketAddr)>),
    Send,
    Tick,
    Inputs(bool),
}

fn peer_address(inputs: &Option<Arc<Inputs>>, node: &str) -> Option<Ipv4Addr> {
    inputs.as_ref()?.nodes.get(node)?.address
}

/// Announces this node's share of the L2 addresses until `stop`.
pub async fn run(
    client: kube::Client,
    node: String,
    metrics: metrics::AnnounceMetrics,
    mut stop: channel::Receiver<bool>,
) {
    let timing = Timing::default();
    let (tx, mut inputs_rx) = channel::channel(None);
    let watcher = tokio::spawn(watch::run(client, tx));
    let socket = loop {
        match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, HEARTBEAT_PORT))).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(port = HEARTBEAT_PORT, error = %e, "cannot bind the heartbeat socket; L2 announcement waits");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => { watcher.abort(); return; }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let started = Instant::now();
    let grace = timing.rejoin_after + timing.interval;
    let mut liveness = Liveness::new(timing);
    let mut speaker: Option<Speaker<KernelResponder>> = None;
    let mut tick = tokio::time::interval(TICK);
    let mut send = tokio::time::interval(timing.interval);
    let mut seq: u64 = 0;
    let mut buf = [0u8; 512];
    let mut dirty = true;
    let mut last_reread = Instant::now();
    let mut last_complaint: Option<Instant> = None;
    let mut beating_since: Option<Instant> = None;
    let mut next_attempt = started;
    loop {
        let wake = tokio::select! {
            _ = stop.wait_for(|s| *s) => Wake::Stop,
            received = socket.recv_from(&mut buf) => Wake::Received(received.ok()),
            _ = send.tick() => Wake::Send,
            _ = tick.tick() => Wake::Tick,
            changed = inputs_rx.changed() => Wake::Inputs(changed.is_ok()),
        };
        match wake {
            Wake::Stop | Wake::Inputs(false) => break,
            Wake::Received(Some((n, from))) => {
                let inputs = inputs_rx.borrow().clone();
                if let Some(hb) = accept(&buf[..n], from, |name| peer_address(&inputs, name))
                    && hb.node != node
                    && let Some(change) = liveness.heard(&hb.node, Instant::now())
                {
                    tracing::info!(?change, "L2 announcement: peer liveness");
                    dirty = true;
                }
            }
            Wake::Received(None) | Wake::Tick => {}
            Wake::Send => {
                let inputs = inputs_rx.borrow().clone();
                // Heartbeats only while some pool is L2 (they cost n² datagrams).
                if inputs.as_ref().is_none_or(|i| i.pools.is_empty()) {
                    beating_since = None;
                    continue;
                }
                beating_since.get_or_insert_with(Instant::now);
                seq += 1;
                let data = Heartbeat {
                    node: node.clone(),
                    seq,
                }
                .encode();
                if let (Some(inputs), Some(data)) = (inputs, data) {
                    for (name, facts) in &inputs.nodes {
                        if *name == node {
                            continue;
                        }
                        if let Some(ip) = facts.address
                            && let Err(e) = socket.send_to(&data, (ip, HEARTBEAT_PORT)).await
                        {
                            tracing::trace!(peer = %name, error = %e, "heartbeat not sent");
                        }
                    }
                }
            }
            Wake::Inputs(true) => {
                if let Some(inputs) = inputs_rx.borrow().clone() {
                    liveness.retain(|n| inputs.nodes.contains_key(n));
                }
                dirty = true;
            }
        }
        let now = Instant::now();
        let mut regarp = false;
        for change in liveness.tick(now) {
            tracing::info!(?change, "L2 announcement: peer liveness");
            if matches!(change, Change::Died { .. }) {
                metrics.peer_deaths.inc();
            }
            regarp |= matches!(change, Change::Alive { returned: true, .. });
            dirty = true;
        }
        let Some(inputs) = inputs_rx.borrow().clone() else {
            continue;
        };
        // Decide only once the peers had time to hear this agent and it them (with no L2
        // pool: once started, to release what a previous agent left).
        let since = if inputs.pools.is_empty() {
            Some(started)
        } else {
            beating_since
        };
        if since.is_none_or(|t| now.duration_since(t) < grace) {
            continue;
        }
        if speaker.is_none() {
            if now < next_attempt {
                continue;
            }
            next_attempt = now + Duration::from_secs(1);
            match responder_for(&inputs, &node).await {
                Ok(r) => {
                    tracing::info!(interface = %r.interface().name, "L2 announcement: answering ARP on the node address's interface");
                    speaker = Some(Speaker::new(r));
                }
                Err(e) => {
                    if last_complaint.is_none_or(|t| now.duration_since(t) > COMPLAIN) {
                        tracing::warn!(error = %e, "L2 announcement not possible yet");
                        last_complaint = Some(now);
                    }
                    continue;
                }
            }
        }
        let Some(speaker) = speaker.as_mut() else {
            continue;
        };
        if now.duration_since(last_reread) > REREAD {
            speaker.reread();
            last_reread = now;
            dirty = true;
        }
        if dirty {
            let mut alive = liveness.alive();
            metrics.peers_alive.set(alive.len() as i64);
            alive.insert(node.clone());
            let order = plan(&inputs, &alive);
            let want: BTreeSet<Ipv4Addr> = owned_by(&order, &node);
            let report = speaker.sync(&want, now).await;
            for a in &report.claimed {
                tracing::info!(address = %a, order = ?order.get(a), "L2 announcement: answering ARP (taken over)");
            }
            for a in &report.released {
                tracing::info!(address = %a, order = ?order.get(a), "L2 announcement: no longer answering ARP");
            }
            for e in &report.errors {
                tracing::warn!(error = %e, "L2 announcement: retrying");
            }
            metrics.takeovers.inc_by(report.claimed.len() as u64);
            metrics.releases.inc_by(report.released.len() as u64);
            metrics.addresses.set(speaker.held().len() as i64);
            dirty = !report.errors.is_empty();
        }
        if regarp {
            speaker.announce_all(now);
        }
        for e in speaker.send_due(now) {
            tracing::warn!(error = %e, "gratuitous ARP not sent");
        }
    }
    watcher.abort();
}

async fn responder_for(
    inputs: &Inputs,
    node: &str,
) -> Result<KernelResponder, responder::AnnounceError> {
    let address = inputs
        .nodes
        .get(node)
        .and_then(|n| n.address)
        .ok_or(responder::AnnounceError::NoInterface(Ipv4Addr::UNSPECIFIED))?;
    let netlink = Netlink::current().map_err(|e| responder::AnnounceError::Io {
        what: "opening netlink".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let iface = interface_of(&netlink, address).await?;
    KernelResponder::new(netlink, iface)
}
