//! switchyard-proxy: watches Services and EndpointSlices and programs the
//! service tables of `br-int` over OpenFlow (see the library docs).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use switchyard_daemon::probe::Check;
use switchyard_ovs::openflow::{Client, ClientConfig};
use switchyard_ovs::ovsdb;
use switchyard_pipeline::group as group_ids;
use switchyard_proxy::config::Flags;
use switchyard_proxy::conntrack::ConntrackFlusher;
use switchyard_proxy::external::NodeContext;
use switchyard_proxy::groups::{GroupLayout, PORT_GROUP_LAST};
use switchyard_proxy::healthcheck::{self, ServiceHealthServer};
use switchyard_proxy::metrics::{self, HttpState, Metrics};
use switchyard_proxy::switch::{self, SwitchWriter};
use switchyard_proxy::{GroupIdAllocator, HealthChecks, WatchConfig, watch_with_health};

/// IPv4 addresses of the node's interfaces.
async fn local_addresses() -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    use futures::TryStreamExt;
    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    let task = tokio::spawn(connection);
    let mut stream = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.context("listing addresses")? {
        for attribute in &msg.attributes {
            if let netlink_packet_route::address::AddressAttribute::Local(std::net::IpAddr::V4(
                ip,
            ))
            | netlink_packet_route::address::AddressAttribute::Address(std::net::IpAddr::V4(
                ip,
            )) = attribute
            {
                out.push(*ip);
            }
        }
    }
    task.abort();
    Ok(out)
}

/// How long the start waits for its Node object (with an InternalIP)
/// before it goes on without node-port addresses.
const NODE_WAIT: Duration = Duration::from_secs(3);

/// The node's addresses and gateway for the external frontends, from its
/// Node object. Without one (or without an InternalIP, when the node-port
/// addresses are not given as CIDRs) within [`NODE_WAIT`], the proxy runs
/// without node-port addresses (logged): ClusterIPs and external IPs work,
/// node ports only through the node-port VIPs.
async fn node_context(client: &kube::Client, flags: &Flags) -> anyhow::Result<NodeContext> {
    let nodes: Api<Node> = Api::all(client.clone());
    let local = if flags.nodeport_addresses.is_empty() {
        Vec::new()
    } else {
        local_addresses().await?
    };
    let end = tokio::time::Instant::now() + NODE_WAIT;
    let mut context = NodeContext {
        external_ip_cidrs: flags.external_ip_cidrs.clone(),
        ..NodeContext::default()
    };
    loop {
        match nodes.get(&flags.node_name).await {
            Ok(node) => {
                context = NodeContext {
                    external_ip_cidrs: flags.external_ip_cidrs.clone(),
                    ..switchyard_proxy::external::node_context(
                        &node,
                        &flags.nodeport_addresses,
                        &local,
                    )
                };
                if !context.addresses.is_empty() || !flags.nodeport_addresses.is_empty() {
                    return Ok(context);
                }
            }
            Err(err) => tracing::debug!(%err, node = flags.node_name, "cannot read the Node yet"),
        }
        if tokio::time::Instant::now() >= end {
            tracing::warn!(
                node = flags.node_name,
                "no Node object with an InternalIP: NodePorts are not served on node addresses"
            );
            return Ok(context);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect_switch(flags: &Flags) -> Client {
    let config = ClientConfig::for_bridge(&flags.ovs_rundir, &flags.bridge);
    let mut delay = Duration::from_millis(100);
    loop {
        match Client::connect(config.clone()).await {
            Ok(client) => return client,
            Err(err) => {
                tracing::warn!(%err, "cannot reach the bridge yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The proxy's readiness conditions (`/readyz`): `ovsdb` (ovsdb-server answers an echo
/// on `<ovs-rundir>/db.sock`), `openflow` (the bridge answers an echo) and
/// `initial-sync` (a sync of every Service reached the switch).
fn readiness_checks(
    flags: &Flags,
    metrics: Arc<Metrics>,
    switch: Arc<std::sync::OnceLock<Client>>,
) -> Vec<Check> {
    let endpoint = format!("unix:{}", flags.ovs_rundir.join("db.sock").display());
    let ovsdb: Arc<tokio::sync::Mutex<Option<ovsdb::Client>>> = Arc::default();
    vec![
        Check::new("ovsdb", move || {
            let (ovsdb, endpoint) = (Arc::clone(&ovsdb), endpoint.clone());
            async move {
                let mut slot = ovsdb.lock().await;
                if slot.is_none() {
                    *slot = Some(
                        ovsdb::Client::connect(&endpoint)
                            .await
                            .map_err(|e| format!("{endpoint}: {e}"))?,
                    );
                }
                let client = slot.as_ref().ok_or("no client")?;
                client.echo().await.map_err(|e| e.to_string())
            }
        }),
        Check::new("openflow", move || {
            let switch = switch.get().cloned();
            async move {
                let switch = switch.ok_or("not connected yet")?;
                switch.echo().await.map_err(|e| e.to_string())
            }
        }),
        Check::new("initial-sync", move || {
            let done = metrics.last_sync_age().is_some();
            async move {
                if done {
                    Ok(())
                } else {
                    Err("no sync reached the switch yet".to_string())
                }
            }
        }),
    ]
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let client = switchyard_daemon::kube_client(flags.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let resync = (flags.resync_period > 0).then(|| Duration::from_secs(flags.resync_period));
    let state = HttpState {
        metrics: Arc::clone(&metrics),
        // A healthy proxy syncs at least every resync period.
        max_sync_age: resync.map_or(Duration::MAX, |period| period * 2 + Duration::from_secs(60)),
    };
    let health = switchyard_daemon::Health::new();
    let switch_slot = Arc::new(std::sync::OnceLock::new());
    let probes = tokio::spawn(switchyard_daemon::probe::run(
        health.clone(),
        readiness_checks(&flags, Arc::clone(&metrics), Arc::clone(&switch_slot)),
    ));
    let (bound, server) = metrics::bind(flags.metrics_address, state.clone(), health)
        .await
        .with_context(|| format!("binding {}", flags.metrics_address))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz and /proxyMode");
    let server = tokio::spawn(server);
    let health_server = match flags.healthz_bind_address.0 {
        Some(addr) => {
            let (bound, server) = healthcheck::bind_proxy_health(addr, state.clone())
                .await
                .with_context(|| format!("binding the healthz address {addr}"))?;
            tracing::info!(%bound, "serving kube-proxy's /healthz and /livez");
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let health_server = async move {
        match health_server {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    // Health check node ports of ETP-Local LoadBalancer Services, on all addresses.
    let (health_checks, health_rx) = tokio::sync::watch::channel(Arc::new(HealthChecks::new()));
    let service_health = tokio::spawn(
        ServiceHealthServer::new(std::net::Ipv4Addr::UNSPECIFIED.into(), state).run(health_rx),
    );

    let node = Arc::new(node_context(&client, &flags).await?);
    tracing::info!(addresses = ?node.addresses, gateway = ?node.gateway, "node-port addresses");

    let switch = connect_switch(&flags).await;
    let _ = switch_slot.set(switch.clone());
    // Port group ids stay below 2^24: the bits above number their sub-groups.
    let groups = Arc::new(Mutex::new(GroupIdAllocator::with_range(
        group_ids::PROXY_FIRST,
        PORT_GROUP_LAST,
    )));
    let flusher = ConntrackFlusher::new(
        switch.clone(),
        Some(flags.ovs_rundir.clone()),
        Arc::clone(&metrics),
    );
    let writer = SwitchWriter::start(
        switch.clone(),
        Arc::clone(&groups),
        Some(flusher),
        Arc::clone(&metrics),
    )
    .await
    .context("reading the bridge")?
    .with_group_layout(GroupLayout::new(flags.buckets_per_group));
    let rejects = tokio::spawn(switch::answer_rejects(
        switch.clone(),
        Arc::clone(&metrics),
        flags.reject_rate,
    ));

    // Every update goes to the switch writer and, when a frontend came,
    // went or changed, its state to the host side (nftables table and
    // routes of the external frontends; an endpoint change cannot change
    // them), straight from the watch loop.
    let (host_tx, host_rx) = tokio::sync::watch::channel(None);
    let host = tokio::spawn(switchyard_proxy::host::run(Arc::clone(&node), host_rx));
    let config = WatchConfig {
        node_name: flags.node_name.clone(),
        debounce: Duration::from_millis(flags.debounce_ms),
        node: Arc::clone(&node),
        frontends: Some(Arc::new(host_tx)),
    };
    let (to_switch, updates) = tokio::sync::mpsc::channel(64);
    let watcher = tokio::spawn(watch_with_health(
        client,
        config,
        groups,
        to_switch,
        Some(health_checks),
    ));
    let writing = tokio::spawn(switch::run(writer, updates, resync, Duration::from_secs(1)));
    tokio::select! {
        result = watcher => result.context("watch task panicked")?.context("watch failed")?,
        result = writing => result.context("switch writer panicked")?,
        result = server => result.context("metrics server panicked")?.context("metrics server failed")?,
        result = health_server => result.context("healthz server panicked")?.context("healthz server failed")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    rejects.abort();
    probes.abort();
    service_health.abort();
    host.abort();
    Ok(())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    switchyard_daemon::log::init(flags.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchyard-proxy: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}
