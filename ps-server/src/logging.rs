//! The binaries' logs: `tracing` to stderr, filtered by `RUST_LOG`, as text
//! or JSON lines. Text carries ANSI colours only when stderr is a terminal,
//! so a log written to a file or a pipe is plain.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How a process writes its logs (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's log subscriber: stderr, filtered by `RUST_LOG`
/// or else `default_filter` (e.g. `info`), written as `format` says.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
