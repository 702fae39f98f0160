//! The cluster store: the only place cluster state lives.
//!
//! A Raft-replicated key/value store (openraft 0.9) with its log and state machine in redb files
//! under `<data_dir>/store/`, every record sealed with the data encryption key
//! `<data_dir>/keys/dek`. Today it runs one voter; node IDs, `BasicNode` addresses and the
//! network factory are in place for 3–5 managers (see [`network`]).
//!
//! Durability: [`Store::apply`] returns only after the entry was appended and fsync'd to the log,
//! committed and applied to the state machine. The log is the durable record; the state file is
//! fsync'd in batches and caught up from the log at open, before any read (see state_machine.rs).
//!
//! On-disk layout (directories 0700, files 0600):
//!
//! ```text
//! <data_dir>/keys/dek              DEK key file (swarmguard_secrets::keyfile)
//! <data_dir>/store/raft-log.wal    raft log entries, append-only        (see wal.rs)
//! <data_dir>/store/raft-log.redb   vote, purge point, node id           (see log_store.rs)
//! <data_dir>/store/state.redb      applied key/values, applied id, snapshot (see state_machine.rs)
//! ```
//!
//! Every record is sealed with the DEK, with the record's identity as AAD (`log/<index>`,
//! `sm/<key>`, `snapshot/<id>`, `meta/vote` …). State-machine keys are stored in clear.
//! Every record is decrypted and checked when the store opens, so a damaged or swapped record
//! stops [`Store::open`] with an error naming it.
//!
//! Reads ([`Store::get`], [`Store::list`]) are served from an in-memory copy of the applied state,
//! which therefore holds the plaintext values while the process runs.

mod batch;
mod error;
mod forward;
mod log_store;
mod network;
mod sealed;
mod state_machine;
mod types;
mod wal;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::sync::broadcast;

pub use error::StoreError;
// The public API for the rest of the binary; not every item is used there yet.
#[allow(unused_imports)]
pub use types::{Applied, Check, Op, Txn, TxnOutcome, Versioned};

pub use forward::{MemberView, QUORUM_GRACE};
pub use network::{CallFuture, Frame, Rpc, Transport, TransportError, MAX_FRAME_BYTES};

use log_store::LogStore;
use state_machine::{Shared, StateMachine};
use types::TypeConfig;

/// Largest value accepted for one key.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest transaction accepted (sum of keys and values of checks and ops).
pub const MAX_TXN_BYTES: usize = 4 << 20;
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 1024;

/// Tunables. [`Store::open`] uses [`StoreOptions::default`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Address other managers will use to reach this one (recorded in the membership).
    pub advertise_addr: String,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot (for followers that lag a little).
    pub keep_logs_after_snapshot: u64,
    /// How long [`Store::open`] waits for this node to become leader.
    pub leader_timeout: Duration,
    /// Compact the raft log file after this many entries were purged since the last compaction.
    pub compact_log_after_purged: u64,
    /// Make a fresh store a one-voter group at open. A manager that may join another group
    /// opens without it and calls [`Store::bootstrap`] at `swarm init`.
    pub bootstrap: bool,
    /// How long a write may wait for a leader (failover) before it is refused.
    pub write_timeout: Duration,
    /// Raft timing (ms): leader heartbeat, and the range election timeouts are drawn from.
    pub heartbeat_ms: u64,
    pub election_ms: (u64, u64),
    /// Disaster recovery: make this store the only voter of its group at `advertise_addr`,
    /// keeping its data (see [`log_store::LogStore::force_single_voter`]).
    pub force_new_cluster: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            advertise_addr: "127.0.0.1:4242".to_owned(),
            // SwarmKit's defaults (SnapshotInterval 10000, LogEntriesForSlowFollowers 500): a
            // snapshot copies and seals the whole state, so with thousands of nodes one every
            // 1000 writes cost a join storm a fifth of its rate.
            snapshot_every: 10_000,
            keep_logs_after_snapshot: 500,
            leader_timeout: Duration::from_secs(15),
            compact_log_after_purged: 10_000,
            bootstrap: true,
            write_timeout: Duration::from_secs(10),
            // openraft 0.9: a follower that followed a leader campaigns after its leader lease
            // (the election maximum) plus its election timeout (drawn once per start from the
            // range) without a heartbeat: 600–800 ms here, six to eight heartbeats missed. With
            // (300, 600) that was 0.9–1.2 s, failover above 1 s. The heartbeat is also
            // openraft's AppendEntries timeout.
            heartbeat_ms: 100,
            election_ms: (200, 400),
            force_new_cluster: false,
        }
    }
}

/// Handle to the cluster store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    node_id: u64,
    /// Set when the log database file is closed.
    log_closed: Arc<AtomicBool>,
    /// Set when the state database file is closed.
    sm_closed: Arc<AtomicBool>,
    /// Compactions of the raft log file since open (read by the tests that force one).
    #[cfg_attr(not(test), allow(dead_code))]
    log_compactions: Arc<AtomicU64>,
    /// The manager-to-manager transport, once installed (see [`Store::set_transport`]).
    transport: Arc<network::TransportSlot>,
    /// When a leader's AppendEntries last succeeded here.
    leader_heard: RwLock<Option<Instant>>,
    write_timeout: Duration,
    /// The data key, for values a layer above seals itself (secret values: `seal_field`).
    dek: Arc<swarmguard_secrets::DataKey>,
    /// Puts concurrent writes on this leader into shared entries (see [`batch`]).
    proposer: batch::Proposer,
}

/// Put it as the LAST field of a struct owning a `redb::Database`: fields drop in declaration
/// order, so the flag is set only after the database (and its file lock) is gone.
pub(crate) struct CloseGuard(Arc<AtomicBool>);

impl CloseGuard {
    pub(crate) fn new() -> (CloseGuard, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (CloseGuard(flag.clone()), flag)
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Store {
    /// Opens or creates `<data_dir>/store/` (redb files) and `<data_dir>/keys/dek` (0600), starts a
    /// single-voter openraft node, initializes membership on first start, waits until it is leader.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(data_dir, StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit options.
    pub async fn open_with(data_dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        Self::open_keyed(data_dir, opts, None).await
    }

    /// Opens an autolocked store with its data key, unwrapped by the unlock key
    /// (`keys/dek` holds it wrapped; see [`Store::write_key_file`]).
    pub async fn open_unlocked(
        data_dir: &Path,
        opts: StoreOptions,
        dek: swarmguard_secrets::DataKey,
    ) -> Result<Store, StoreError> {
        Self::open_keyed(data_dir, opts, Some(dek)).await
    }

    /// The key file's path in a data dir.
    pub fn key_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join("keys").join("dek")
    }

    /// Rewrites `keys/dek` in one atomic step: the data key wrapped under `kek` (autolock on), or
    /// in clear (`None`, autolock off).
    pub fn write_key_file(
        &self,
        data_dir: &Path,
        kek: Option<&swarmguard_secrets::kek::UnlockKey>,
    ) -> Result<(), StoreError> {
        use swarmguard_secrets::keyfile::{write_dek_file, DekFile};
        let dek = &self.inner.dek;
        let content = match kek {
            Some(kek) => DekFile::Wrapped(kek.wrap(dek).map_err(|source| StoreError::Sealed {
                record: "keys/dek".into(),
                source,
            })?),
            None => DekFile::Plain(Box::new(swarmguard_secrets::DataKey::from_bytes(
                zeroize::Zeroizing::new(*dek.expose_bytes()),
            ))),
        };
        write_dek_file(&Self::key_path(data_dir), &content)?;
        Ok(())
    }

    async fn open_keyed(
        data_dir: &Path,
        opts: StoreOptions,
        given: Option<swarmguard_secrets::DataKey>,
    ) -> Result<Store, StoreError> {
        let store_dir = data_dir.join("store");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&store_dir)
            .map_err(|source| StoreError::Io {
                path: store_dir.clone(),
                source,
            })?;
        let key_path = data_dir.join("keys").join("dek");
        let (dek, log, sm, shared) = {
            let store_dir = store_dir.clone();
            let opts = opts.clone();
            spawn_io(move || {
                let log_path = store_dir.join("raft-log.redb");
                let sm_path = store_dir.join("state.redb");
                let wal_path = log_store::wal_path(&log_path);
                let has_data = [&log_path, &sm_path, &wal_path]
                    .iter()
                    .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
                if has_data && std::fs::symlink_metadata(&key_path).is_err() {
                    // Creating a fresh key here would only make every record undecryptable.
                    return Err(StoreError::MissingKey { path: key_path });
                }
                let dek = Arc::new(match given {
                    Some(dek) => dek,
                    None => swarmguard_secrets::keyfile::load_or_create_dek(&key_path)?,
                });
                create_private_file(&log_path)?;
                create_private_file(&sm_path)?;
                let shared = Arc::new(Shared::new(1024));
                let log = LogStore::open(&log_path, dek.clone(), opts.compact_log_after_purged)?;
                let sm = StateMachine::open(&sm_path, dek.clone(), shared.clone())?;
                Ok((dek, log, sm, shared))
            })
            .await?
        };
        let (log, node_id) = log;
        if opts.force_new_cluster {
            log.force_single_voter(node_id, &opts.advertise_addr)?;
        }
        let log_closed = log.closed_flag();
        let log_compactions = log.compaction_counter();
        let sm_closed = sm.closed_flag();

        let config = Config {
            cluster_name: "swarmguard".to_owned(),
            heartbeat_interval: opts.heartbeat_ms,
            election_timeout_min: opts.election_ms.0,
            election_timeout_max: opts.election_ms.1,
            // Snapshot chunks travel in one gRPC message each, under the cluster port's limit.
            snapshot_max_chunk_size: 1 << 20,
            // openraft gives one AppendEntries a heartbeat interval to answer: a follower
            // catching up gets small batches it can take in time, or it never catches up.
            max_payload_entries: 32,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.keep_logs_after_snapshot,
            purge_batch_size: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Raft(format!("invalid raft config: {e}")))?;

        let transport = Arc::new(network::TransportSlot::default());
        let peers = network::Peers {
            slot: transport.clone(),
        };
        let raft = Raft::new(node_id, Arc::new(config), peers, log, sm)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;

        let proposer = batch::Proposer::start(raft.clone(), forward::CALL_TIMEOUT);
        let store = Store {
            inner: Arc::new(Inner {
                proposer,
                raft,
                shared,
                node_id,
                log_closed,
                sm_closed,
                log_compactions,
                transport,
                leader_heard: RwLock::new(None),
                write_timeout: opts.write_timeout,
                dek,
            }),
        };
        if let Err(e) = store.start(&opts).await {
            // Do not leave a half-started node holding the files.
            if let Err(se) = store.shutdown().await {
                tracing::warn!(error = %se, "stopping the store after a failed open");
            }
            return Err(e);
        }
        tracing::info!(node_id, "cluster store open");
        Ok(store)
    }

    /// Initializes membership on first start (when asked to) and waits for leadership while
    /// this manager is the only voter.
    async fn start(&self, opts: &StoreOptions) -> Result<(), StoreError> {
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized && !opts.bootstrap {
            tracing::info!("cluster store open, not part of a raft group yet");
            return Ok(());
        }
        if !initialized {
            return self
                .bootstrap(&opts.advertise_addr, opts.leader_timeout)
                .await;
        }
        let voters: Vec<u64> = {
            let m = self.inner.raft.metrics().borrow().clone();
            m.membership_config.membership().voter_ids().collect()
        };
        if voters == [self.inner.node_id] {
            self.wait_leader_and_replay(opts.leader_timeout).await?;
        } else {
            // Several managers: the others may not be up yet. openraft re-applied the log up to
            // the committed log id kept with it (log_store.rs); later entries apply once a leader
            // says they are committed, and reads go through a read index meanwhile.
            tracing::info!(
                voters = voters.len(),
                "cluster store open as one of several managers"
            );
        }
        Ok(())
    }

    /// Makes this fresh store a one-voter group reachable at `advertise_addr` and waits until
    /// it leads. Does nothing to a store that is part of a group already.
    pub async fn bootstrap(
        &self,
        advertise_addr: &str,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(node_id, BasicNode::new(advertise_addr));
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Raft(format!("initializing membership: {e}")))?;
            tracing::info!(node_id, "initialized single-manager raft cluster");
        }
        self.wait_leader_and_replay(timeout).await
    }

    async fn wait_leader_and_replay(&self, timeout: Duration) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let node_id = self.inner.node_id;
        raft.wait(Some(timeout))
            .metrics(
                |m| m.current_leader == Some(node_id) && m.state.is_leader(),
                "this node becomes leader",
            )
            .await
            .map_err(|e| StoreError::Timeout {
                what: format!("leadership: {e}"),
            })?;
        // Entries in the log but not yet in the state machine (a crash between the two, or state
        // commits not yet fsync'd) are re-applied now; nobody may read state before that.
        let last_log = raft.metrics().borrow().last_log_index;
        raft.wait(Some(timeout))
            .applied_index_at_least(last_log, "the state machine catches up with the log")
            .await
            .map_err(|e| StoreError::Timeout {
                what: format!("replaying the log: {e}"),
            })?;
        Ok(())
    }

    /// Whether this store is part of a raft group (bootstrapped, or joined and replicated to).
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))
    }

    /// Installs (or removes) the manager-to-manager transport.
    pub fn set_transport(&self, t: Option<Arc<dyn Transport>>) {
        self.inner.transport.set(t);
    }

    /// Waits until the applied state holds `key` (a joining manager catching up).
    pub async fn wait_for_key(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        while self.get(key).is_none() {
            if Instant::now() > deadline {
                return Err(StoreError::Timeout {
                    what: format!("{key} to replicate here"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Linearizable read barrier (read index): returns once this manager applied everything
    /// committed before the call, confirmed by a quorum through the leader.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        if self.is_leader() {
            match self.leader_read_index().await {
                Ok(_) => return Ok(()),
                // Lost leadership meanwhile: ask the new leader.
                Err(StoreError::NotLeader { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // A follower asks the leader for its read index (the leader confirms it still leads
        // with a quorum round), then waits until it applied that far itself.
        if let Some(index) = self.read_index_from_leader().await? {
            self.inner
                .raft
                .wait(Some(QUORUM_GRACE))
                .applied_index_at_least(Some(index), "reads catch up")
                .await
                .map_err(|_| self.no_quorum())?;
        }
        Ok(())
    }

    /// This manager's Raft node ID.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Applies a transaction through Raft; returns only after it is committed, applied AND durable
    /// (fsync'd). All checks pass or nothing is written.
    ///
    /// The checks are tried first against the applied state: a transaction that already fails
    /// them is answered `Conflict` without being proposed, so lost races (a retry loop under
    /// contention) never reach the log. They are checked again when the entry applies, which
    /// is what makes the outcome correct: the state may change between the two.
    pub async fn apply(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let bytes = validate(&txn)?;
        if let Some(key) = self.failed_check(&txn) {
            return Ok(TxnOutcome::Conflict { key });
        }
        self.apply_anywhere(txn, bytes).await
    }

    /// The key of the first check `txn` fails against the applied state now.
    fn failed_check(&self, txn: &Txn) -> Option<String> {
        let map = lock_read(&self.inner.shared.map);
        txn.checks
            .iter()
            .find(|c| !c.holds(map.get(c.key())))
            .map(|c| c.key().to_owned())
    }

    /// Seals a value inside a record with the store's data key, bound to `aad` (which must not
    /// start with one of the store's own prefixes: callers use `field/…`). The record holding it
    /// is sealed again by the store, so the value is under two layers at rest and under one in
    /// memory, in the Raft log's entries and in snapshots.
    pub fn seal_field(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        sealed::seal(&self.inner.dek, &sealed::aad_field(aad), plain)
    }

    /// Opens what [`Store::seal_field`] sealed with the same `aad`.
    pub fn open_field(
        &self,
        aad: &str,
        sealed_value: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        sealed::open(&self.inner.dek, &sealed::aad_field(aad), sealed_value)
    }

    /// Local read of the applied state.
    pub fn get(&self, key: &str) -> Option<Versioned> {
        lock_read(&self.inner.shared.map).get(key).cloned()
    }

    /// All keys starting with `prefix`, sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<(String, Versioned)> {
        lock_read(&self.inner.shared.map)
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `(index, changed keys)` after each committed transaction, in log order (and once with all
    /// affected keys after a snapshot install). Conflicting transactions send nothing. The channel
    /// holds 1024 notices; a receiver that falls further behind gets `RecvError::Lagged` and
    /// should re-read what it watches with [`Store::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.inner.shared.tx.subscribe()
    }

    /// [`Store::subscribe`] for the notices that change a key starting with one of
    /// `prefixes` (a whole key is a prefix too). Prefer it in loops that watch a few kinds of
    /// record: they are not woken by every other write.
    pub fn subscribe_to(&self, prefixes: &[&str]) -> broadcast::Receiver<Applied> {
        self.inner.shared.subscribe_to(prefixes)
    }

    /// Clean stop (for SIGTERM): stops Raft and waits until both database files are closed.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| StoreError::Raft(format!("shutdown: {e}")))?;
        // The state machine worker and a snapshot task may outlive the core briefly; wait for
        // them to drop their database handles so the files are closed when we return.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.inner.log_closed.load(Ordering::Acquire)
            && self.inner.sm_closed.load(Ordering::Acquire))
        {
            if Instant::now() > deadline {
                return Err(StoreError::Timeout {
                    what: "store files to close after shutdown".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!("cluster store shut down");
        Ok(())
    }

    /// Asks Raft to build a snapshot now (normally driven by [`StoreOptions::snapshot_every`]).
    pub async fn trigger_snapshot(&self) -> Result<(), StoreError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))
    }
}

/// Creates an empty file with mode 0600 if none exists, so redb never creates it with the
/// umask's default mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.chars().take(64).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty key");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("contains control characters");
    }
    Ok(())
}

/// Checks keys and sizes; returns the transaction's size as the limits count it.
fn validate(txn: &Txn) -> Result<usize, StoreError> {
    let mut size = 0usize;
    for c in &txn.checks {
        validate_key(c.key())?;
        size += c.key().len() + 8;
    }
    for op in &txn.ops {
        validate_key(op.key())?;
        size += op.key().len();
        if let Op::Put { key, value } = op {
            if value.len() > MAX_VALUE_BYTES {
                return Err(StoreError::ValueTooLarge {
                    key: key.clone(),
                    size: value.len(),
                    max: MAX_VALUE_BYTES,
                });
            }
            size += value.len();
        }
    }
    if size > MAX_TXN_BYTES {
        return Err(StoreError::TxnTooLarge {
            size,
            max: MAX_TXN_BYTES,
        });
    }
    Ok(size)
}

/// Runs blocking storage work (redb commits fsync) off the async worker threads.
pub(crate) async fn spawn_io<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %msg, "storage task panicked");
            Err(StoreError::Raft(format!(
                "storage engine panicked ({msg}); the store files may be damaged, restore them from a backup"
            )))
        }
        Err(e) => Err(StoreError::Raft(format!("storage task failed: {e}"))),
    }
}

// A panic while holding one of these locks cannot leave the data half-updated in a way the
// next reader could misread (writers replace whole entries), so poisoning is ignored.
pub(crate) fn lock_read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn lock_write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
