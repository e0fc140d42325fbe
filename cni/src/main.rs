//! `switchyard`: the CNI plugin binary. It validates the runtime's input,
//! forwards ADD/DEL/CHECK/STATUS/GC to `switchyard-agent` over its Unix socket,
//! answers VERSION itself, and prints the CNI result or error on stdout.
//! Logs go to `logFile` (or stderr), never stdout.

mod logfile;
mod timing;

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use switchyard_cni::{
    CniEnv, CniError, CniRequest, Command, ErrorCode, LogLevel, NetworkConfig, SUPPORTED_VERSIONS,
    SpecVersion, Verb, call_agent_marked, config::requested_version, parse_config,
    protocol::MAX_CONFIG_LEN,
};

/// What ends up on stdout: nothing, a result/VERSION document, or an error.
enum Outcome {
    Silent,
    Print(String),
}

fn main() -> ExitCode {
    timing::start();
    let mut cni_version = SpecVersion::LATEST.as_str().to_owned();
    let outcome = run(&mut cni_version);
    let code = print(outcome, &cni_version);
    timing::mark("printed");
    timing::report();
    code
}

fn print(outcome: Result<Outcome, CniError>, cni_version: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(Outcome::Silent) => ExitCode::SUCCESS,
        Ok(Outcome::Print(text)) => {
            // If stdout is gone there is no one left to tell.
            let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code, msg = %e.msg, details = %e.details, "CNI request failed");
            let _ = writeln!(stdout, "{}", e.to_output(cni_version)).and_then(|()| stdout.flush());
            ExitCode::FAILURE
        }
    }
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS.map(|v| v.as_str()).join(", ")
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn run(cni_version: &mut String) -> Result<Outcome, CniError> {
    let Some(command) = env_var("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        eprintln!(
            "switchyard CNI plugin {}; CNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            supported_list()
        );
        return Err(CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            "required env variables [CNI_COMMAND] missing",
            "this is a CNI plugin: the container runtime runs it with CNI_COMMAND and the network configuration on stdin",
        ));
    };
    let command = Command::parse(&command)?;
    if command == Command::Version {
        return Ok(Outcome::Print(version_output(cni_version)));
    }

    // Stdin first, so that even environment errors are printed in the
    // caller's cniVersion.
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            "cannot read the network configuration",
            format!("reading stdin: {e}"),
        )
    })?;
    if let Some(v) = requested_version(&stdin)
        && v.parse::<SpecVersion>().is_ok()
    {
        *cni_version = v;
    }
    check_config_size(stdin.len())?;
    let env = CniEnv::from_lookup(command, env_var)?;
    let config = match parse_config(&stdin) {
        Ok(config) => config,
        // A pod must never stay Terminating because of its network
        // configuration: DEL needs only the container id and interface
        // name, so a configuration it cannot fully read (an unsupported
        // version, an ipam section, a malformed prevResult) is read for
        // what DEL needs and the rest is ignored.
        Err(e) if command == Command::Del => {
            tracing::warn!(code = e.code, msg = %e.msg, "DEL with a configuration that does not parse; going on with what DEL needs");
            *cni_version = SpecVersion::LATEST.as_str().to_owned();
            del_config(&stdin)?
        }
        Err(e) => return Err(e),
    };
    init_logging(&config);
    check_verb_for_version(command, &config)?;
    check_verb_input(command, &env, &config)?;

    let verb = Verb::from_command(command).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            "unexpected CNI_COMMAND",
            command.as_str(),
        )
    })?;
    // The JSON parse above proved stdin is UTF-8.
    let stdin = String::from_utf8_lossy(&stdin).into_owned();
    tracing::info!(
        command = command.as_str(),
        container = env.container_id.as_deref().unwrap_or(""),
        ifname = env.ifname.as_deref().unwrap_or(""),
        "forwarding to switchyard-agent"
    );
    let socket = config.agent_socket.clone();
    let timeout = config.timeout();
    let version = config.cni_version;
    let prev_result = config.prev_result.clone();
    let request = CniRequest::new(verb, env, config, stdin);
    timing::mark("input");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                "cannot start the I/O runtime",
                e.to_string(),
            )
        })?;
    timing::mark("runtime");
    let outcome = runtime.block_on(call_agent_marked(&socket, &request, timeout, timing::mark));
    let outcome = match (verb, outcome) {
        // The agent is down or restarting: DEL is queued for it (it runs
        // queued DELs when it starts, and reconciles besides), so the pod
        // does not stay Terminating.
        (Verb::Del, Err(e)) if e.kind() == Some(ErrorCode::TryAgainLater) => {
            match switchyard_cni::pending::queue_del(&socket, &request) {
                Ok(path) => {
                    tracing::warn!(msg = %e.msg, queued = %path.display(), "switchyard-agent unreachable; DEL queued for it");
                    return Ok(Outcome::Silent);
                }
                Err(queue_error) => {
                    tracing::error!(error = %queue_error, "DEL could not be queued");
                    Err(e)
                }
            }
        }
        (_, outcome) => outcome,
    };
    let outcome = outcome.map_err(|e| match (verb, e.kind()) {
        // For STATUS an unreachable or silent agent means "cannot serve ADD".
        (Verb::Status, Some(ErrorCode::TryAgainLater)) => CniError {
            code: ErrorCode::PluginNotAvailable.code(),
            ..e
        },
        _ => e,
    })?;

    match (verb, outcome) {
        (Verb::Add, Some(result)) => {
            let result = match prev_result {
                Some(prev) => result.appended_to(prev),
                None => result,
            };
            Ok(Outcome::Print(result.to_output(version)))
        }
        (Verb::Add, None) => Err(CniError::new(
            ErrorCode::InvalidAgentReply,
            "switchyard-agent returned no result for ADD",
            "the agent's ADD reply must carry a result; this is an agent bug",
        )),
        _ => Ok(Outcome::Silent),
    }
}

/// VERSION: `cniVersion` echoes the input's (libcni sends `{"cniVersion":..}`),
/// defaulting to the latest when stdin is a terminal, empty or undecodable.
fn version_output(cni_version: &mut String) -> String {
    let mut stdin = Vec::new();
    if !std::io::stdin().is_terminal() {
        // VERSION does not need stdin; an unreadable one is not an error.
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    if let Some(v) = requested_version(&stdin) {
        *cni_version = v;
    }
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS.map(|v| v.as_str()),
    })
    .to_string()
}

fn check_verb_for_version(command: Command, config: &NetworkConfig) -> Result<(), CniError> {
    let v = config.cni_version;
    let allowed = match command {
        Command::Check => v.has_check(),
        Command::Status | Command::Gc => v.has_status_and_gc(),
        _ => true,
    };
    if allowed {
        Ok(())
    } else {
        let since = if command == Command::Check {
            "0.4.0"
        } else {
            "1.1.0"
        };
        Err(CniError::new(
            ErrorCode::IncompatibleCniVersion,
            format!("config version does not allow {}", command.as_str()),
            format!(
                "{} exists since CNI {since}; the configuration says {v}",
                command.as_str()
            ),
        ))
    }
}

fn check_verb_input(
    command: Command,
    env: &CniEnv,
    config: &NetworkConfig,
) -> Result<(), CniError> {
    match command {
        Command::Add | Command::Check => {
            if let Some(netns) = &env.netns {
                check_netns(netns)?;
            }
            if command == Command::Check && config.prev_result.is_none() {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    "CHECK needs prevResult",
                    "the runtime must pass the result of the ADD as prevResult",
                ));
            }
        }
        Command::Gc if config.valid_attachments.is_none() => {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "GC needs cni.dev/valid-attachments",
                "without the list of valid attachments GC would remove every pod's resources; nothing was changed",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// CNI_NETNS must exist and must not be the plugin's own network namespace.
fn check_netns(netns: &Path) -> Result<(), CniError> {
    let target = std::fs::metadata(netns).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            "invalid CNI_NETNS",
            format!("CNI_NETNS {}: {e}", netns.display()),
        )
    })?;
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net")
        && own.dev() == target.dev()
        && own.ino() == target.ino()
    {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironmentVariables,
            "invalid CNI_NETNS",
            format!(
                "CNI_NETNS {} is the plugin's own (host) network namespace",
                netns.display()
            ),
        ));
    }
    Ok(())
}

fn init_logging(config: &NetworkConfig) {
    let level = match config.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    let max_bytes = config
        .log_file_max_bytes
        .unwrap_or(logfile::DEFAULT_MAX_BYTES);
    let file = config
        .log_file
        .as_ref()
        .map(|path| logfile::open(path, max_bytes).map_err(|e| (path, e)));
    match file {
        Some(Ok(file)) => {
            let _ = builder.with_writer(Mutex::new(file)).try_init();
        }
        Some(Err((path, e))) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!(path = %path.display(), error = %e, "cannot open logFile; logging to stderr");
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

/// A network configuration larger than [`MAX_CONFIG_LEN`] is refused with 7
/// (permanent): the request carries it twice (raw and parsed) and must fit
/// one protocol frame; retrying (11) would fail the same way forever.
fn check_config_size(len: usize) -> Result<(), CniError> {
    if len > MAX_CONFIG_LEN {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "the network configuration is too large",
            format!(
                "{len} bytes on stdin; switchyard accepts at most {MAX_CONFIG_LEN} bytes (with the prevResult and the chained plugins' results)"
            ),
        ));
    }
    Ok(())
}

/// The configuration of a DEL whose stdin does not parse as a whole: the
/// fields DEL uses (`name`, `agentSocket`, `timeoutSeconds`, `logFile`,
/// `logLevel`) where readable, defaults otherwise; `cniVersion` the latest.
fn del_config(stdin: &[u8]) -> Result<NetworkConfig, CniError> {
    let raw: serde_json::Value = serde_json::from_slice(stdin).unwrap_or_default();
    let mut minimal = serde_json::json!({
        "cniVersion": SpecVersion::LATEST.as_str(),
        "name": "switchyard",
        "type": "switchyard",
    });
    for key in [
        "name",
        "agentSocket",
        "timeoutSeconds",
        "logFile",
        "logLevel",
        "logFileMaxBytes",
    ] {
        if let Some(v) = raw.get(key) {
            let mut candidate = minimal.clone();
            candidate[key] = v.clone();
            if parse_config(candidate.to_string().as_bytes()).is_ok() {
                minimal = candidate;
            }
        }
    }
    parse_config(minimal.to_string().as_bytes())
}
