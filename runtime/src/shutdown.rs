//! One shutdown signal that every task listens to.
//!
//! The services hand the same [`CancellationToken`] to the gRPC server, the
//! outbox relay and the consumer; cancelling it makes each of them finish its
//! in-flight work and return, and `main` waits for all of them.
pub use tokio_util::sync::CancellationToken;

/// Resolves on Ctrl-C or SIGTERM, whichever comes first.
pub async fn os_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error.message = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error.message = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token that is cancelled when the process receives Ctrl-C or SIGTERM.
pub fn on_os_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        os_signal().await;
        child.cancel();
    });
    token
}
