//! Tracing bootstrap shared by the binaries and the tests.
use std::{io::IsTerminal, sync::OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::{
    EnvFilter,
    filter::{FilterExt as _, LevelFilter, Targets},
    fmt,
    prelude::*,
};

/// The log filter of every binary unless `RUST_LOG` says otherwise. lapin
/// is held to errors: its info and debug lines are about its own I/O loop.
/// (What it logs of a returned message is held back whatever `RUST_LOG`
/// says: see [`LAPIN_RETURNS`].)
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=error";

/// lapin's target for a message the broker returns (an unroutable outbox
/// row, on every retry): it logs it at WARN with the whole message, body
/// included (lapin 4.12, `src/returned_messages.rs`, "Server returned us a
/// message"), whether or not the publisher takes the return from its
/// confirm, and lapin has no switch for it. A body holds members' personal
/// data (a nickname), so every layer, logs and exported spans alike, holds
/// this target to ERROR with a filter of its own that no `RUST_LOG`
/// directive can lift. The relay reports unroutable rows itself, without
/// their bodies. A service adopting the outbox library should do the same.
pub const LAPIN_RETURNS: &str = "lapin::returned_messages";

/// A per-layer filter letting everything up to `level` through, except
/// lapin's returned messages below ERROR (see [`LAPIN_RETURNS`]).
pub fn without_message_bodies(level: LevelFilter) -> Targets {
    Targets::new()
        .with_default(level)
        .with_target(LAPIN_RETURNS, LevelFilter::ERROR)
}

/// `[telemetry]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// An OTLP/gRPC collector (e.g. `http://127.0.0.1:4317`) to export
    /// spans to; unset, spans are only used to carry trace ids (logs and
    /// propagation), not exported.
    pub otlp_endpoint: Option<String>,
}

/// The tracer provider, kept for [`flush`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the subscriber on stdout: logs filtered by `RUST_LOG` (or
/// `default_filter`), and OpenTelemetry spans for trace context (exported
/// when `cfg.otlp_endpoint` is set).
///
/// Safe to call more than once: later calls are no-ops, which lets every test
/// call it.
pub fn init(default_filter: &str, cfg: &TelemetrySettings) {
    install(
        default_filter,
        cfg,
        std::io::stdout,
        std::io::stdout().is_terminal(),
    );
}

/// [`init`], logging to stderr: for a process whose stdout is a protocol
/// (the bench's child services print their address there).
pub fn init_stderr(default_filter: &str, cfg: &TelemetrySettings) {
    install(
        default_filter,
        cfg,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

/// Exports the spans still buffered; call before the process exits.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

fn install<W>(default_filter: &str, cfg: &TelemetrySettings, writer: W, ansi: bool)
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let mut provider = SdkTracerProvider::builder();
    if let Some(endpoint) = &cfg.otlp_endpoint {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => eprintln!("telemetry: OTLP export to {endpoint} is off: {e}"),
        }
    }
    let provider = provider.build();
    let tracer = provider.tracer("memberflow");
    if PROVIDER.set(provider).is_err() {
        return;
    }
    // Spans are made regardless of the log filter, so trace context flows
    // even when logs are quiet.
    let _ = tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_target(false)
                .with_writer(writer)
                .with_ansi(ansi)
                .with_filter(filter.and(without_message_bodies(LevelFilter::TRACE))),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(without_message_bodies(LevelFilter::INFO)),
        )
        .try_init();
}

/// Test output stays silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init(DEFAULT_FILTER, &TelemetrySettings::default());
    }
}

pub use memberflow_infra::error_chain;
