//! A manager of several that restarts with a state that does not know its swarm yet (killed
//! before its applied state reached the state file, and before the committed log id did):
//! it cannot load its security material from the state, yet only a leader's commit index,
//! which arrives over the cluster port, lets it re-apply its own log.
//!
//! So it serves the Raft service alone on its recorded listen address, with the certificate,
//! key and root it keeps on disk, to manager certificates of its cluster ([`Gate::Joining`]), and
//! dials the others with the same certificate, until the state holds the cluster again; then
//! the supervisor loads the material as usual and the full cluster port takes over.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::join::serve_raft_only;
use super::raft::{Dialer, Gate};
use crate::control::ca::local::LocalIdentity;
use crate::control::Control;

/// The Raft-only port of a recovering manager. Stop it with [`Recovering::stop`].
pub struct Recovering {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recovering {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Starts the Raft-only port when this manager is a member of a Raft group and has a recorded
/// identity but no security material (the state lacks the cluster). `None` otherwise, or when
/// the recorded files cannot serve (logged).
pub async fn start(control: &Arc<Control>) -> Option<Recovering> {
    if control.local_identity().is_some() {
        return None;
    }
    let data_dir = &control.config().data_dir;
    let recorded = LocalIdentity::read_recorded(data_dir).ok()?;
    match control.store().is_initialized().await {
        Ok(true) => {}
        _ => return None,
    }
    match serve(control, data_dir, &recorded).await {
        Ok(r) => {
            tracing::warn!(
                addr = %recorded.listen_addr,
                "this manager's state does not know its swarm yet: serving only Raft with the certificate on disk until the swarm's state is back"
            );
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serve Raft with the certificate on disk: this manager waits for its state");
            None
        }
    }
}

async fn serve(
    control: &Arc<Control>,
    data_dir: &Path,
    recorded: &LocalIdentity,
) -> Result<Recovering, String> {
    let root = std::fs::read(data_dir.join("certificates").join("swarm-root-ca.crt"))
        .map_err(|e| format!("swarm-root-ca.crt: {e}"))?;
    let (cert, key) = LocalIdentity::read_pair(data_dir, &control.key_codec())
        .map_err(|e| format!("this manager's certificate: {e}"))?;
    let id =
        swarmguard_ca::read_node_certificate(&cert).map_err(|e| format!("swarm-node.crt: {e}"))?;
    if id.node_id != recorded.node_id {
        return Err("swarm-node.crt names another node than node.json".into());
    }
    let server = crate::tls::server_config(&root, &cert, &key).map_err(|e| e.to_string())?;
    let client =
        crate::agent::tls::verified(&root, Some((&cert, &key))).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(recorded.listen_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", recorded.listen_addr))?;
    let store = control.store().clone();
    let gate = Gate::Joining {
        store: store.clone(),
        cluster_id: id.cluster_id,
    };
    let (stop, tasks) = serve_raft_only(listener, server, gate);
    store.set_transport(Some(Arc::new(Dialer::new(client))));
    Ok(Recovering { stop, tasks })
}
