//! switchyard-proxy: watches Services and EndpointSlices and programs the
//! service tables of `br-int` over OpenFlow (see the library docs).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_ovs::openflow::{Client, ClientConfig};
use switchyard_pipeline::group as group_ids;
use switchyard_proxy::config::Flags;
use switchyard_proxy::conntrack::ConntrackFlusher;
use switchyard_proxy::groups::{GroupLayout, PORT_GROUP_LAST};
use switchyard_proxy::healthcheck::{self, ServiceHealthServer};
use switchyard_proxy::metrics::{self, HttpState, Metrics};
use switchyard_proxy::switch::{self, SwitchWriter};
use switchyard_proxy::{GroupIdAllocator, HealthChecks, WatchConfig, watch_with_health};

async fn kube_client(flags: &Flags) -> anyhow::Result<kube::Client> {
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no usable Kubernetes client configuration")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
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

async fn run(flags: Flags) -> anyhow::Result<()> {
    let client = kube_client(&flags).await?;
    let metrics = Arc::new(Metrics::new());
    let resync = (flags.resync_period > 0).then(|| Duration::from_secs(flags.resync_period));
    let state = HttpState {
        metrics: Arc::clone(&metrics),
        // A healthy proxy syncs at least every resync period.
        max_sync_age: resync.map_or(Duration::MAX, |period| period * 2 + Duration::from_secs(60)),
    };
    let (bound, server) = metrics::bind(flags.metrics_address, state.clone())
        .await
        .with_context(|| format!("binding {}", flags.metrics_address))?;
    tracing::info!(%bound, "serving /metrics, /healthz and /proxyMode");
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

    let switch = connect_switch(&flags).await;
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

    let config = WatchConfig {
        node_name: flags.node_name.clone(),
        debounce: Duration::from_millis(flags.debounce_ms),
    };
    let (tx, updates) = tokio::sync::mpsc::channel(64);
    let watcher = tokio::spawn(watch_with_health(
        client,
        config,
        groups,
        tx,
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
    service_health.abort();
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let flags = Flags::parse();
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
