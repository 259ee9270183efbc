//! Tracing bootstrap shared by the binaries and the tests.
use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The log filter of every binary unless `RUST_LOG` says otherwise. lapin
/// is held to errors: it logs every message the broker returns (an
/// unroutable outbox row on each retry) at WARN, payload and all, and the
/// relay reports those itself.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=error";

/// Installs a fmt subscriber on stdout, filtered by `RUST_LOG` (or
/// `default_filter`).
///
/// Safe to call more than once: later calls are no-ops, which lets every test
/// call it.
pub fn init(default_filter: &str) {
    install(
        default_filter,
        std::io::stdout,
        std::io::stdout().is_terminal(),
    );
}

/// [`init`], logging to stderr: for a process whose stdout is a protocol
/// (the bench's child services print their address there).
pub fn init_stderr(default_filter: &str) {
    install(
        default_filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

fn install<W>(default_filter: &str, writer: W, ansi: bool)
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_target(false)
                .with_writer(writer)
                .with_ansi(ansi),
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
