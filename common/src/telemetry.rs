//! Tracing bootstrap shared by the binaries and the tests.
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The log filter of every binary unless `RUST_LOG` says otherwise. lapin
/// is held to errors: it logs every message the broker returns (an
/// unroutable outbox row on each retry) at WARN, payload and all, and the
/// relay reports those itself.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=error";

/// Installs a fmt subscriber filtered by `RUST_LOG` (or `default_filter`).
///
/// Safe to call more than once: later calls are no-ops, which lets every test
/// call it.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .try_init();
}

/// [`init`], logging to stderr: for a process whose stdout is a protocol
/// (the bench's child services print their address there).
pub fn init_stderr(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_target(false)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
}

/// Test output stays silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init(DEFAULT_FILTER);
    }
}

/// Formats an error with its whole cause chain, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}
