//! How the daemons stop: on Ctrl-C or SIGTERM (what container runtimes and systemd send).

/// Resolves on the first Ctrl-C or SIGTERM.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// One signal for several servers: every [`wait`] on a clone of the receiver resolves once the
/// process is told to stop. Call inside a tokio runtime.
pub fn on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves when `stop` says so.
pub async fn wait(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
