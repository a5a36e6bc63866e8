//! Where the library's logs go in Python: stderr, warnings and errors only
//! (a step held back by other workers, a shard being retried, a refusal),
//! unless `PARAMSERVE_LOG` filters otherwise (`info`, `debug`, `off`, or
//! any `RUST_LOG` directive such as `ps_worker=debug`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The environment variable that filters the logs.
const FILTER_VAR: &str = "PARAMSERVE_LOG";

/// Installs the log subscriber once per process; a later call, or one in a
/// process that already has a subscriber, changes nothing.
pub(crate) fn init() {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
