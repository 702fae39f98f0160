//! Process plumbing shared by the trust server and the trust signer: the ready file tests and
//! supervisors wait for, and the shutdown signal. Both servers use it; it uses neither, so the
//! two stay independent of each other.

use std::net::SocketAddr;

/// Atomically write the bound address to `path` (for --ready-file).
pub fn write_ready_file(path: &std::path::Path, local: SocketAddr) -> std::io::Result<()> {
    swarmguard_secrets::atomic::write_atomic(
        path,
        local.to_string().as_bytes(),
        0o644,
        swarmguard_secrets::atomic::Placement::Replace,
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
