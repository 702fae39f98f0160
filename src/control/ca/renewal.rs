//! This manager renews its own certificate at a random 50–80 % of its lifetime, as agents and
//! SwarmKit nodes do; the new pair reaches the cluster port without a restart (through
//! [`super::security::Security::refresh`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::local::LocalIdentity;
use crate::control::Control;

/// The certificate is looked at this often, so a new swarm (or a renewal by other means) gets
/// its own renewal point, and a failed renewal is retried this much later.
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// How often the certificate is looked at while a root rotation runs (or outside a swarm).
const ROTATION_LOOK: Duration = Duration::from_secs(1);

/// Runs until `stop`; the old certificate serves while a renewal is retried.
pub async fn keep_own_certificate_fresh(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    // The certificate's NotAfter and the renewal point drawn for it.
    let mut plan: Option<(SystemTime, Instant)> = None;
    let mut events = control.subscribe_to(&[
        crate::control::records::CLUSTER_KEY,
        crate::control::records::NODE_PREFIX,
    ]);
    loop {
        let now = Instant::now();
        let due = next_renewal(&control, &mut plan, now);
        if plan.is_some() && due <= now {
            match control.renew_own_certificate().await {
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing this manager's certificate failed; retrying in a minute");
                    plan = plan.map(|(na, _)| (na, now + LOOK_EVERY));
                }
            }
        }
        if let Err(e) = control.sync_own_certificate().await {
            tracing::warn!(error = %e, "cannot bring this manager's certificate in line with a root rotation");
        }
        // During a root rotation look often: the leader may mark this manager ROTATE.
        let rotating = control
            .cluster()
            .is_ok_and(|c| c.record.root_rotation.is_some());
        // Also wake when the cluster record or this node's record changes: a rotation that
        // starts, or the leader marking this manager ROTATE, is acted on at once. Outside a
        // swarm look often, so a manager that just joined reports its TLS info at once.
        let own_key = control
            .security
            .current()
            .map(|m| crate::control::records::node_key(&m.identity.node_id));
        let look = if rotating || own_key.is_none() {
            ROTATION_LOOK
        } else {
            LOOK_EVERY
        };
        let wake = due.min(now + look).max(now + Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = crate::util::until_true(&mut stop) => return,
                _ = tokio::time::sleep_until(wake) => break,
                ev = events.recv() => match ev {
                    Ok(applied) => {
                        let ours = |k: &String| {
                            k == crate::control::records::CLUSTER_KEY || own_key.as_ref() == Some(k)
                        };
                        if applied.keys.iter().any(ours) {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// When to renew next: the plan's point while the certificate is the same, a fresh random
/// point for a new certificate, a minute from now outside a swarm.
fn next_renewal(
    control: &Control,
    plan: &mut Option<(SystemTime, Instant)>,
    now: Instant,
) -> Instant {
    let validity = control
        .local_identity()
        .and_then(|_| LocalIdentity::certificate_validity(&control.config().data_dir).ok());
    match validity {
        Some((not_before, not_after)) => {
            let at = match *plan {
                Some((na, at)) if na == not_after => at,
                _ => now + swarmguard_ca::renewal_delay(not_before, not_after),
            };
            *plan = Some((not_after, at));
            at
        }
        None => {
            *plan = None;
            now + LOOK_EVERY
        }
    }
}
