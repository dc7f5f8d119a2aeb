//! Waiting for the signal to stop: SIGTERM (orchestrators) or SIGINT (Ctrl-C).

use tracing::info;

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(stream) => stream,
            Err(err) => {
                // Without a SIGTERM handler we still stop on Ctrl-C.
                tracing::warn!(%err, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        info!("interrupt received");
    }
}
