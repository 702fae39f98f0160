//! Group proposals: the leader puts the transactions that arrive while a write is in flight
//! into one Raft entry.
//!
//! openraft 0.9's core waits for each log append to be flushed before it takes the next one,
//! so one `client_write` per transaction means one fsync per transaction, one after the other:
//! the log writer's group commit never sees two appends at once, and throughput does not grow
//! with concurrent clients. Here one task takes every transaction queued since its last
//! proposal (bounded in count and bytes) and proposes them as one [`Proposal`]; the state
//! machine applies them in order, each on its own (one's failed check does not affect the
//! others), and each caller gets its own outcome only after the entry is fsync'd, committed and
//! applied, as before. At most [`IN_FLIGHT`] proposals are pending, so while one is written the
//! next one fills up.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::types::{Proposal, Txn, TxnOutcome, TypeConfig};
use super::StoreError;

/// Most transactions in one entry.
const MAX_TXNS: usize = 512;
/// Most bytes (as [`super::validate`] counts them) in one entry: the limit of one transaction,
/// so an entry is never larger than the largest single transaction already is (one entry must
/// fit in one AppendEntries frame). A transaction alone is always proposed.
const MAX_BYTES: usize = super::MAX_TXN_BYTES;
/// Proposals pending at once: one being written while the next one collects.
const IN_FLIGHT: usize = 2;
/// Transactions waiting for a proposal before callers wait to queue theirs.
const QUEUE: usize = 4096;

/// How a proposal failed; copied to every transaction in it.
#[derive(Clone)]
enum Failure {
    Unknown(String),
    Raft(String),
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> StoreError {
        match f {
            Failure::Unknown(m) => StoreError::Unknown(m),
            Failure::Raft(m) => StoreError::Raft(m),
        }
    }
}

struct Queued {
    txn: Txn,
    bytes: usize,
    done: oneshot::Sender<Result<TxnOutcome, Failure>>,
}

/// The queue into the proposing task (which ends when this is dropped), and the proposal
/// slots it shares with callers that find nothing in flight.
pub(crate) struct Proposer {
    queue: mpsc::Sender<Queued>,
    slots: Arc<Semaphore>,
    raft: Raft<TypeConfig>,
    timeout: Duration,
}

impl Proposer {
    /// Starts the proposing task; each proposal waits at most `timeout` for its commit.
    pub(crate) fn start(raft: Raft<TypeConfig>, timeout: Duration) -> Proposer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run(raft.clone(), rx, slots.clone(), timeout));
        Proposer {
            queue,
            slots,
            raft,
            timeout,
        }
    }

    /// Proposes `txn` (of `bytes`, as validated) and waits for its outcome.
    pub(crate) async fn write(&self, txn: Txn, bytes: usize) -> Result<TxnOutcome, StoreError> {
        let (done, rx) = oneshot::channel();
        let queued = Queued { txn, bytes, done };
        // Nobody queued and a slot free: propose alone from here, without the two task hops
        // through the proposing task (a lone client's latency). The slot is released even if
        // this caller goes away meanwhile; the semaphore hands freed slots to the proposing
        // task first when it waits, so queued writes are not overtaken.
        let idle = self.queue.capacity() == self.queue.max_capacity();
        match idle
            .then(|| self.slots.clone().try_acquire_owned().ok())
            .flatten()
        {
            Some(slot) => {
                propose(&self.raft, vec![queued], self.timeout).await;
                drop(slot);
            }
            None => self
                .queue
                .send(queued)
                .await
                .map_err(|_| StoreError::Raft("the store is shutting down".into()))?,
        }
        match rx.await {
            Ok(r) => r.map_err(StoreError::from),
            // The proposal was dropped with the task: it may have been proposed.
            Err(_) => Err(StoreError::Unknown(
                "the store stopped while the write was pending".into(),
            )),
        }
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Queued>,
    slots: Arc<Semaphore>,
    timeout: Duration,
) {
    let mut carry: Option<Queued> = None;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Everything that arrives while waiting for a slot joins this proposal.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_TXNS {
            match rx.try_recv() {
                Ok(q) if bytes + q.bytes <= MAX_BYTES => {
                    bytes += q.bytes;
                    batch.push(q);
                }
                Ok(q) => {
                    carry = Some(q);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch, timeout).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry and answers each transaction.
async fn propose(raft: &Raft<TypeConfig>, batch: Vec<Queued>, timeout: Duration) {
    let (txns, waiting): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|q| (q.txn, q.done)).unzip();
    let n = txns.len();
    let result = match tokio::time::timeout(timeout, raft.client_write(Proposal::batch(txns))).await
    {
        Err(_) => Err(Failure::Unknown(
            "the leader did not commit the write in time".into(),
        )),
        Ok(Ok(resp)) if resp.data.outcomes.len() == n => Ok(resp.data.outcomes),
        Ok(Ok(resp)) => Err(Failure::Raft(format!(
            "state machine returned {} outcomes for {n} transactions",
            resp.data.outcomes.len()
        ))),
        // This manager led when it proposed: the entry may still commit under the next leader,
        // so a retry could apply it twice. The caller must read before retrying.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
            Failure::Unknown("leadership changed while the write was pending".into()),
        ),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Failure::Raft(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(f))) => Err(Failure::Raft(f.to_string())),
    };
    match result {
        Ok(outcomes) => {
            for (done, outcome) in waiting.into_iter().zip(outcomes) {
                // A caller that gave up is fine: its write is committed all the same.
                let _ = done.send(Ok(outcome));
            }
        }
        Err(f) => {
            for done in waiting {
                let _ = done.send(Err(f.clone()));
            }
        }
    }
}
