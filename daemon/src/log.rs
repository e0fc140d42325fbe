//! Logging of every Switchyard binary: to stderr, filtered by `RUST_LOG`
//! (default `info`), as plain text (ANSI colour codes only when stderr is a
//! terminal, so a container log or a file never holds escape sequences) or as
//! one JSON object per line (`--log-format json`: `timestamp`, `level`,
//! `target`, `fields.message` and the event's fields, `span` and `spans` with
//! the fields of the enclosing spans, e.g. the agent's `cni` span).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Whether text logs get colour: only when stderr is a terminal.
pub fn colour() -> bool {
    std::io::stderr().is_terminal()
}

/// Installs the global subscriber (a no-op when one is installed already):
/// `RUST_LOG` or else `default_filter` (e.g. `info`), to stderr, in `format`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
