//! Service logs (`docker service logs`), brokered as SwarmKit does: the Engine API opens a
//! subscription; every node with a task of the service that listens (`ListenSubscriptions`) is
//! sent it; nodes publish lines (`PublishLogs`) and close; the subscription ends when every
//! node closed (or at once for nodes not listening, with SwarmKit's "not available" text).
//!
//! Everything here is bounded: lines per subscription in flight, bytes per line, subscriptions
//! per node, and a node may only publish into a subscription it was sent, for its own tasks.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::error::{Code, ControlError};
use super::Control;

/// Lines buffered per subscription before a publishing node waits.
const LINES_IN_FLIGHT: usize = 256;
/// Largest log line forwarded (dockerd's json-file splits at 16 KiB).
pub const MAX_LINE: usize = 64 * 1024;
/// Subscriptions open at once (each holds a reader of the Engine API).
const MAX_SUBSCRIPTIONS: usize = 256;

/// What a node is asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub service_ids: Vec<String>,
    pub follow: bool,
    /// SwarmKit's encoding: 0 all, `-(N+1)` the last N.
    pub tail: i64,
    /// Only lines logged at or after this Unix time (nanoseconds).
    pub since_ns: Option<i128>,
    pub stdout: bool,
    pub stderr: bool,
    pub close: bool,
}

/// One log line, or the end of a node's contribution with an error.
#[derive(Debug)]
pub enum LogEvent {
    Line {
        node_id: String,
        service_id: String,
        task_id: String,
        /// Unix nanoseconds.
        timestamp_ns: i128,
        stderr: bool,
        data: Vec<u8>,
    },
    /// A node that cannot contribute (not listening, or gone).
    Warning(String),
}

struct Sub {
    tx: mpsc::Sender<LogEvent>,
    pending: HashSet<String>,
    request: Subscription,
}

#[derive(Default)]
pub struct Broker {
    listeners: Mutex<HashMap<String, mpsc::Sender<Subscription>>>,
    subs: Mutex<HashMap<String, Sub>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    /// A node's `ListenSubscriptions` stream: subscriptions for it arrive on the receiver.
    pub fn listen_logs(&self, node_id: &str) -> mpsc::Receiver<Subscription> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.logs.listeners).insert(node_id.to_string(), tx);
        rx
    }

    /// Opens a subscription to the logs of `service_id` on `nodes`. Nodes not listening are
    /// reported as warnings at once.
    pub fn subscribe_logs(
        &self,
        mut request: Subscription,
        nodes: HashSet<String>,
    ) -> Result<(String, mpsc::Receiver<LogEvent>), ControlError> {
        let (tx, rx) = mpsc::channel(LINES_IN_FLIGHT);
        request.id = swarmguard_ca::new_id();
        let mut pending = HashSet::new();
        let mut warnings = Vec::new();
        {
            let listeners = lock(&self.logs.listeners);
            for n in &nodes {
                match listeners.get(n) {
                    Some(l) if l.try_send(request.clone()).is_ok() => {
                        pending.insert(n.clone());
                    }
                    _ => warnings.push(format!("node {n} is not available")),
                }
            }
        }
        for w in warnings {
            let _ = tx.try_send(LogEvent::Warning(w));
        }
        let id = request.id.clone();
        let mut subs = lock(&self.logs.subs);
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(ControlError::Unavailable(
                "too many log subscriptions open; try again later".into(),
            ));
        }
        if !pending.is_empty() {
            subs.insert(
                request.id.clone(),
                Sub {
                    tx,
                    pending,
                    request,
                },
            );
        }
        Ok((id, rx))
    }

    /// Ends a subscription the reader left: nodes are told to stop.
    pub fn end_logs(&self, id: &str) {
        let Some(sub) = lock(&self.logs.subs).remove(id) else {
            return;
        };
        let listeners = lock(&self.logs.listeners);
        for n in &sub.pending {
            if let Some(l) = listeners.get(n) {
                let mut close = sub.request.clone();
                close.close = true;
                let _ = l.try_send(close);
            }
        }
    }

    /// The sender for lines of subscription `id` from `node_id`, if it was sent there.
    pub fn log_sink(
        &self,
        id: &str,
        node_id: &str,
    ) -> Result<mpsc::Sender<LogEvent>, ControlError> {
        let subs = lock(&self.logs.subs);
        let sub = subs
            .get(id)
            .ok_or_else(|| ControlError::rpc(Code::NotFound, "unknown subscription ID"))?;
        if !sub.pending.contains(node_id) {
            return Err(ControlError::rpc(
                Code::PermissionDenied,
                "this node was not asked for this subscription",
            ));
        }
        Ok(sub.tx.clone())
    }

    /// `node_id` finished publishing into `id` (or its stream broke, with `warning`).
    pub fn log_node_done(&self, id: &str, node_id: &str, warning: Option<String>) {
        let mut subs = lock(&self.logs.subs);
        let Some(sub) = subs.get_mut(id) else { return };
        if !sub.pending.remove(node_id) {
            return;
        }
        if let Some(w) = warning {
            let _ = sub.tx.try_send(LogEvent::Warning(w));
        }
        if sub.pending.is_empty() && !sub.request.follow {
            subs.remove(id);
        }
    }
}
