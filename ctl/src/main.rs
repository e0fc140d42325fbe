// `switchyardctl` (and `kubectl-switchyard`, the same program): parses the
// command line, runs one command, prints its result.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchyard_ctl::cli::{Cli, Command};
use switchyard_ctl::output::emit;
use switchyard_ctl::ovs::Ovs;
use switchyard_ctl::{bundle, kube, node, pod, policy, service, trace};

async fn run(cli: Cli) -> anyhow::Result<String> {
    let ovs = Ovs::new(&cli.global);
    let kubeconfig = cli.global.kubeconfig.as_deref();
    Ok(match &cli.command {
        Command::Pod(args) => {
            let (ns, name) = kube::split_name(&args.pod)?;
            let report = pod::run(
                &ovs,
                kube::client(kubeconfig, ovs.timeout).await,
                &ns,
                &name,
            )
            .await?;
            emit(args.output.format, &report)?
        }
        Command::Service(args) => {
            let (ns, name) = kube::split_name(&args.service)?;
            let client = kube::client(kubeconfig, ovs.timeout).await?;
            let report = service::run(&ovs, client, &ns, &name).await?;
            emit(args.output.format, &report)?
        }
        Command::Policy(args) => {
            let (ns, name) = kube::split_name(&args.policy)?;
            let client = kube::client(kubeconfig, ovs.timeout).await?;
            let report = policy::run(&ovs, client, &ns, &name, args.agent_address).await?;
            emit(args.output.format, &report)?
        }
        Command::Trace(args) => emit(args.output.format, &trace::run(&ovs, args).await?)?,
        Command::Node(args) => emit(args.output.format, &node::run(&ovs, args).await)?,
        Command::SupportBundle(args) => bundle::run(&ovs, args)
            .await
            .with_context(|| format!("writing the support bundle {}", args.output.display()))?,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
