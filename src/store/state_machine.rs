//! The state machine, in `<data_dir>/store/state.redb`, mirrored in memory for reads.
//!
//! Tables:
//! - `kv`: key → `version ‖ created ‖ value`, sealed with AAD `sm/<key>`. Keys stay in clear: they
//!   are object names such as `node/<id>` and carry no secret material.
//! - `sm_meta`: `"applied"` → last applied log id and membership (AAD `sm-meta/applied`).
//! - `snapshot`: snapshot id → `meta_len (u32 LE) ‖ meta JSON ‖ data`, sealed with AAD
//!   `snapshot/<id>`; at most one row.
//!
//! An `apply` batch changes the in-memory state at once and leaves its sealed records in
//! [`Pending`]; after [`DURABLE_EVERY_BATCHES`] batches or [`DURABLE_EVERY`] of time (by the
//! `state-flush` thread, so no apply waits for the file), with every snapshot and at close,
//! everything pending is written with the new last-applied id in one fsync'd redb
//! transaction, so the state machine on disk is always a prefix of the log. Durability comes from
//! the log: after a crash the file is at its last commit and openraft re-applies the rest from the
//! log, which is never purged past a snapshot (and a snapshot commit includes everything pending).
//! One transaction per many batches instead of one per batch: a redb commit costs far more CPU
//! than sealing the records.
//!
//! Snapshot data handed to openraft (and, later, sent to other managers over mTLS) is plaintext;
//! each manager seals it at rest with its own DEK.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use swarmguard_secrets::DataKey;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use super::error::StoreError;
use super::sealed::{self, aad_sm, aad_snapshot, AAD_APPLIED};
use super::types::{b64, Applied, Op, Response, TxnOutcome, TypeConfig, Versioned};
use super::{lock_read, lock_write, spawn_io, CloseGuard};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAP: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// Format version of snapshot data.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Clone, Default, Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// State shared between the state machine and [`super::Store`] readers.
pub(crate) struct Shared {
    pub(crate) map: RwLock<BTreeMap<String, Versioned>>,
    /// Every notice.
    pub(crate) tx: broadcast::Sender<Applied>,
    /// Notices for subscribers that watch some key prefixes only (see [`Shared::subscribe_to`]).
    topics: Mutex<Vec<Topic>>,
    /// Notices a channel holds before a slow receiver lags.
    capacity: usize,
}

/// The subscribers of one set of key prefixes.
struct Topic {
    prefixes: Vec<String>,
    tx: broadcast::Sender<Applied>,
}

impl Shared {
    /// Notices go out on channels of `capacity`.
    pub(crate) fn new(capacity: usize) -> Shared {
        Shared {
            map: RwLock::new(BTreeMap::new()),
            tx: broadcast::channel(capacity).0,
            topics: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// Receives the notices that change at least one key starting with one of `prefixes`.
    /// A loop that watches a few records is then not woken (a task wake-up on another
    /// thread, each time) by every write elsewhere, such as each secret create in a burst.
    pub(crate) fn subscribe_to(&self, prefixes: &[&str]) -> broadcast::Receiver<Applied> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = topics.iter().find(|t| t.prefixes == prefixes) {
            return t.tx.subscribe();
        }
        let tx = broadcast::Sender::new(self.capacity);
        let rx = tx.subscribe();
        topics.push(Topic {
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            tx,
        });
        rx
    }

    #[cfg(test)]
    pub(crate) fn topics_in_use(&self) -> usize {
        self.topics.lock().unwrap().len()
    }

    /// Sends `n` to every subscriber and to the topics it concerns; forgets topics nobody
    /// listens to any more.
    pub(crate) fn notify(&self, n: Applied) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.retain(|t| t.tx.receiver_count() > 0);
        for t in topics.iter() {
            if n.keys
                .iter()
                .any(|k| t.prefixes.iter().any(|p| k.starts_with(p.as_str())))
            {
                // Nobody listening between the check and now is fine.
                let _ = t.tx.send(n.clone());
            }
        }
        drop(topics);
        let _ = self.tx.send(n);
    }
}

/// The state database and its close flag.
pub(crate) struct SmDb {
    db: Database,
    closed: Arc<AtomicBool>,
    /// Held for each write of pending state, so writes reach the file in apply order while
    /// applies keep adding to [`Pending`].
    flushing: Mutex<()>,
    /// Must stay the last field (see [`CloseGuard`]).
    _guard: CloseGuard,
}

impl std::ops::Deref for SmDb {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Applied changes not yet in the state file, in apply order (later writes replace earlier ones).
#[derive(Default)]
struct Pending {
    /// Key → sealed record, or `None` for a deletion.
    kv: BTreeMap<String, Option<Vec<u8>>>,
    /// The sealed last-applied id that goes with them.
    applied: Option<Vec<u8>>,
}

/// Writes everything pending, plus `also` (e.g. a snapshot), in one fsync'd transaction.
/// Pending state is taken under its lock and written outside it (applies go on meanwhile);
/// `SmDb::flushing` keeps the writes in apply order. A failed write puts what it took back
/// under anything applied since, so the next write still covers a prefix of the log.
fn flush_pending(
    db: &SmDb,
    path: &Path,
    pending: &Mutex<Pending>,
    also: impl FnOnce(&redb::WriteTransaction, &mut Pending) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let _order = db.flushing.lock().unwrap_or_else(|e| e.into_inner());
    let mut taken = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    let written = write_pending(db, path, &mut taken, also);
    if written.is_err() {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        for (key, rec) in std::mem::take(&mut taken.kv) {
            p.kv.entry(key).or_insert(rec);
        }
        if p.applied.is_none() {
            p.applied = taken.applied;
        }
    }
    written
}

fn write_pending(
    db: &Database,
    path: &Path,
    p: &mut Pending,
    also: impl FnOnce(&redb::WriteTransaction, &mut Pending) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let tx = write_tx(db, path)?;
    also(&tx, p)?;
    {
        let mut kv = tx
            .open_table(KV)
            .map_err(|e| StoreError::db(what(path), e))?;
        for (key, rec) in std::mem::take(&mut p.kv) {
            match rec {
                Some(rec) => kv.insert(key.as_str(), rec.as_slice()).map(|_| ()),
                None => kv.remove(key.as_str()).map(|_| ()),
            }
            .map_err(|e| StoreError::db(what(path), e))?;
        }
        if let Some(rec) = p.applied.take() {
            let mut m = tx
                .open_table(META)
                .map_err(|e| StoreError::db(what(path), e))?;
            m.insert("applied", rec.as_slice())
                .map_err(|e| StoreError::db(what(path), e))?;
        }
    }
    tx.commit().map_err(|e| StoreError::db(what(path), e))
}

pub(crate) struct StateMachine {
    db: Arc<SmDb>,
    pending: Arc<Mutex<Pending>>,
    path: PathBuf,
    dek: Arc<DataKey>,
    shared: Arc<Shared>,
    meta: AppliedMeta,
    /// Asks the `state-flush` thread to write pending state (see [`spawn_flusher`]).
    flusher: Option<std::sync::mpsc::SyncSender<()>>,
    /// Batches applied since the last commit to the file, and when that was.
    lazy_batches: u32,
    last_durable: Instant,
}

/// Bounds on how much applied state may wait for the file (it is in the log meanwhile).
const DURABLE_EVERY_BATCHES: u32 = 64;
const DURABLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    entries: Vec<SnapshotEntry>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: String,
    version: u64,
    created: u64,
    #[serde(with = "b64")]
    value: Vec<u8>,
}

fn what(path: &Path) -> String {
    path.display().to_string()
}

impl StateMachine {
    /// Opens or creates the state database, decrypting and verifying every record.
    pub(crate) fn open(
        path: &Path,
        dek: Arc<DataKey>,
        shared: Arc<Shared>,
    ) -> Result<StateMachine, StoreError> {
        let w = || what(path);
        let mut db = Database::create(path).map_err(|e| StoreError::db(w(), e))?;
        let mut meta = AppliedMeta::default();
        let mut map = BTreeMap::new();
        {
            let mut tx = db.begin_write().map_err(|e| StoreError::db(w(), e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::db(w(), e))?;
            {
                let kv = tx.open_table(KV).map_err(|e| StoreError::db(w(), e))?;
                let m = tx.open_table(META).map_err(|e| StoreError::db(w(), e))?;
                let snap = tx.open_table(SNAP).map_err(|e| StoreError::db(w(), e))?;
                if let Some(v) = m.get("applied").map_err(|e| StoreError::db(w(), e))? {
                    meta = sealed::open_json(&dek, AAD_APPLIED, v.value())?;
                }
                for row in kv.iter().map_err(|e| StoreError::db(w(), e))? {
                    let (k, v) = row.map_err(|e| StoreError::db(w(), e))?;
                    let key = k.value().to_owned();
                    let aad = aad_sm(&key);
                    let plain = sealed::open(&dek, &aad, v.value())?;
                    let (version, created, value) = sealed::decode_value(&aad, &plain)?;
                    map.insert(
                        key,
                        Versioned {
                            version,
                            created,
                            value,
                        },
                    );
                }
                // Verify the stored snapshot too, so damage is found now rather than when a
                // follower needs it.
                for row in snap.iter().map_err(|e| StoreError::db(w(), e))? {
                    let (k, v) = row.map_err(|e| StoreError::db(w(), e))?;
                    open_snapshot_record(&dek, k.value(), v.value())?;
                }
            }
            tx.commit().map_err(|e| StoreError::db(w(), e))?;
        }
        // The state is small; compacting it once per start keeps the file from only ever growing.
        if let Err(e) = db.compact() {
            tracing::warn!(path = %path.display(), error = %e, "state database compaction skipped");
        }
        *lock_write(&shared.map) = map;
        let (guard, closed) = CloseGuard::new();
        let db = Arc::new(SmDb {
            db,
            closed,
            flushing: Mutex::new(()),
            _guard: guard,
        });
        let pending: Arc<Mutex<Pending>> = Default::default();
        let flusher = spawn_flusher(&db, &pending, path);
        Ok(StateMachine {
            db,
            pending,
            flusher,
            path: path.to_path_buf(),
            dek,
            shared,
            meta,
            lazy_batches: 0,
            last_durable: Instant::now(),
        })
    }

    /// Becomes true once the database file is closed.
    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.db.closed.clone()
    }
}

/// The thread that writes pending state to the file: when `apply` asks (every
/// [`DURABLE_EVERY_BATCHES`] batches) and at least every [`DURABLE_EVERY`], so an idle
/// manager's restart re-applies little of its log (it re-applies up to the committed log id
/// the log store keeps, see log_store.rs). Returns the sender `apply` asks with; the thread
/// ends when that is dropped or the state machine is gone.
fn spawn_flusher(
    db: &Arc<SmDb>,
    pending: &Arc<Mutex<Pending>>,
    path: &Path,
) -> Option<std::sync::mpsc::SyncSender<()>> {
    let (db, pending, path) = (
        Arc::downgrade(db),
        Arc::downgrade(pending),
        path.to_path_buf(),
    );
    // One request waiting is enough: the write it starts takes everything pending.
    let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("state-flush".into())
        .spawn(move || loop {
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                asked.recv_timeout(DURABLE_EVERY)
            {
                return;
            }
            let (Some(db), Some(pending)) = (db.upgrade(), pending.upgrade()) else {
                return;
            };
            if db.closed.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let waiting = {
                let p = pending.lock().unwrap_or_else(|e| e.into_inner());
                !p.kv.is_empty() || p.applied.is_some()
            };
            if waiting {
                if let Err(e) = flush_pending(&db, &path, &pending, |_, _| Ok(())) {
                    tracing::warn!(error = %e, "state machine not written; the log still has it");
                }
            }
        });
    match spawned {
        Ok(_) => Some(ask),
        Err(e) => {
            tracing::warn!(error = %e, "no flusher thread for the state machine: applies write it themselves");
            None
        }
    }
}

impl Drop for StateMachine {
    /// A clean stop writes what is pending, so the next start re-applies less of the log.
    fn drop(&mut self) {
        let empty = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.kv.is_empty() && p.applied.is_none()
        };
        if !empty {
            if let Err(e) = flush_pending(&self.db, &self.path, &self.pending, |_, _| Ok(())) {
                tracing::warn!(error = %e, "state machine not written at close; the log still has it");
            }
        }
    }
}

fn open_snapshot_record(
    dek: &DataKey,
    id: &str,
    sealed_rec: &[u8],
) -> Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>), StoreError> {
    let aad = aad_snapshot(id);
    let plain = sealed::open(dek, &aad, sealed_rec)?;
    let corrupt = |reason: &str| StoreError::Corrupt {
        record: aad.clone(),
        reason: reason.to_owned(),
    };
    if plain.len() < 4 {
        return Err(corrupt("too short"));
    }
    let (len_bytes, rest) = plain.split_at(4);
    let mut lb = [0u8; 4];
    lb.copy_from_slice(len_bytes);
    let meta_len = u32::from_le_bytes(lb) as usize;
    if meta_len > rest.len() {
        return Err(corrupt("metadata length exceeds record"));
    }
    let (meta_json, data) = rest.split_at(meta_len);
    let meta: SnapshotMeta<u64, BasicNode> =
        serde_json::from_slice(meta_json).map_err(|e| corrupt(&e.to_string()))?;
    if meta.snapshot_id != id {
        return Err(corrupt("snapshot id mismatch"));
    }
    Ok((meta, data.to_vec()))
}

fn seal_snapshot_record(
    dek: &DataKey,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let meta_json = serde_json::to_vec(meta).map_err(|e| StoreError::Encode {
        what: "snapshot meta".into(),
        reason: e.to_string(),
    })?;
    let meta_len = u32::try_from(meta_json.len()).map_err(|_| StoreError::Encode {
        what: "snapshot meta".into(),
        reason: "too large".into(),
    })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(4 + meta_json.len() + data.len()));
    plain.extend_from_slice(&meta_len.to_le_bytes());
    plain.extend_from_slice(&meta_json);
    plain.extend_from_slice(data);
    sealed::seal(dek, &aad_snapshot(&meta.snapshot_id), &plain)
}

/// Replaces the stored snapshot (at most one is kept).
fn store_snapshot(
    tx: &redb::WriteTransaction,
    path: &Path,
    dek: &DataKey,
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> Result<(), StoreError> {
    let rec = seal_snapshot_record(dek, meta, data)?;
    let mut snap = tx
        .open_table(SNAP)
        .map_err(|e| StoreError::db(what(path), e))?;
    snap.retain(|_, _| false)
        .map_err(|e| StoreError::db(what(path), e))?;
    snap.insert(meta.snapshot_id.as_str(), rec.as_slice())
        .map_err(|e| StoreError::db(what(path), e))?;
    Ok(())
}

/// A write transaction that commits with fsync: every commit to the state file is one of the
/// batched flushes, a snapshot or an install, never a per-apply write.
fn write_tx(db: &Database, path: &Path) -> Result<redb::WriteTransaction, StoreError> {
    let mut tx = db
        .begin_write()
        .map_err(|e| StoreError::db(what(path), e))?;
    tx.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::db(what(path), e))?;
    Ok(tx)
}

/// Result of applying one batch, computed in the blocking task.
struct BatchResult {
    responses: Vec<Response>,
    meta: AppliedMeta,
    overlay: BTreeMap<String, Option<Versioned>>,
    notices: Vec<Applied>,
}

/// Applies a batch against the in-memory state: checks, new values and their sealed records
/// (added to `writes`), responses and notices. Nothing is written to the file here.
fn prepare_batch(
    dek: &DataKey,
    shared: &Shared,
    mut meta: AppliedMeta,
    entries: Vec<Entry<TypeConfig>>,
    writes: &mut Pending,
) -> Result<BatchResult, StoreError> {
    let mut responses = Vec::with_capacity(entries.len());
    let mut overlay: BTreeMap<String, Option<Versioned>> = BTreeMap::new();
    let mut notices = Vec::new();
    {
        let map = lock_read(&shared.map);
        for entry in entries {
            let index = entry.log_id.index;
            meta.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => {
                    let txns = proposal.into_txns();
                    let mut outcomes = Vec::with_capacity(txns.len());
                    for txn in txns {
                        let (outcome, keys) =
                            apply_txn(dek, index, txn, &map, &mut overlay, writes)?;
                        if let TxnOutcome::Committed { .. } = outcome {
                            notices.push(Applied { index, keys });
                        }
                        outcomes.push(outcome);
                    }
                    outcomes
                }
            };
            responses.push(Response { outcomes });
        }
    }
    writes.applied = Some(sealed::seal_json(dek, AAD_APPLIED, &meta)?);
    Ok(BatchResult {
        responses,
        meta,
        overlay,
        notices,
    })
}

/// `key`'s value as the batch left it so far.
fn lookup<'a>(
    map: &'a BTreeMap<String, Versioned>,
    overlay: &'a BTreeMap<String, Option<Versioned>>,
    key: &str,
) -> Option<&'a Versioned> {
    match overlay.get(key) {
        Some(v) => v.as_ref(),
        None => map.get(key),
    }
}

/// Applies one transaction of the entry at `index` on top of `map` and the batch's `overlay`:
/// its outcome and the keys it changed.
fn apply_txn(
    dek: &DataKey,
    index: u64,
    txn: super::types::Txn,
    map: &BTreeMap<String, Versioned>,
    overlay: &mut BTreeMap<String, Option<Versioned>>,
    writes: &mut Pending,
) -> Result<(TxnOutcome, Vec<String>), StoreError> {
    if let Some(c) = txn
        .checks
        .iter()
        .find(|c| !c.holds(lookup(map, overlay, c.key())))
    {
        let key = c.key().to_owned();
        return Ok((TxnOutcome::Conflict { key }, Vec::new()));
    }
    let mut keys = BTreeSet::new();
    for op in txn.ops {
        match op {
            Op::Put { key, value } => {
                let created = lookup(map, overlay, &key).map_or(index, |v| v.created);
                let aad = aad_sm(&key);
                let rec = sealed::seal(dek, &aad, &sealed::encode_value(index, created, &value))?;
                writes.kv.insert(key.clone(), Some(rec));
                keys.insert(key.clone());
                let v = Versioned {
                    version: index,
                    created,
                    value,
                };
                overlay.insert(key, Some(v));
            }
            Op::Delete { key } => {
                writes.kv.insert(key.clone(), None);
                keys.insert(key.clone());
                overlay.insert(key, None);
            }
        }
    }
    Ok((TxnOutcome::Committed { index }, keys.into_iter().collect()))
}

fn sm_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let durable = self.lazy_batches + 1 >= DURABLE_EVERY_BATCHES
            || self.last_durable.elapsed() >= DURABLE_EVERY;
        // Prepared aside and merged only on success: a failed batch leaves nothing pending.
        let mut writes = Pending::default();
        let res = prepare_batch(
            &self.dek,
            &self.shared,
            self.meta.clone(),
            entries,
            &mut writes,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "applying to the state machine failed");
            sm_err(e)
        })?;
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.kv.extend(writes.kv);
            p.applied = writes.applied;
        }
        if durable {
            match &self.flusher {
                // Full means a write is already asked for; it takes this batch too.
                Some(ask) => {
                    let _ = ask.try_send(());
                }
                None => {
                    let (db, path, pending) =
                        (self.db.clone(), self.path.clone(), self.pending.clone());
                    spawn_io(move || flush_pending(&db, &path, &pending, |_, _| Ok(())))
                        .await
                        .map_err(|e| {
                            tracing::error!(error = %e, "writing the state machine failed");
                            sm_err(e)
                        })?;
                }
            }
        }
        self.meta = res.meta;
        if durable {
            self.lazy_batches = 0;
            self.last_durable = Instant::now();
        } else {
            self.lazy_batches += 1;
        }
        {
            let mut map = lock_write(&self.shared.map);
            for (k, v) in res.overlay {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
        for n in res.notices {
            self.shared.notify(n);
        }
        Ok(res.responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let entries = lock_read(&self.shared.map)
            .iter()
            .map(|(k, v)| SnapshotEntry {
                key: k.clone(),
                version: v.version,
                created: v.created,
                value: v.value.clone(),
            })
            .collect();
        SnapshotBuilder {
            db: self.db.clone(),
            pending: self.pending.clone(),
            path: self.path.clone(),
            dek: self.dek.clone(),
            meta: self.meta.clone(),
            entries: Some(entries),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let read_err = |reason: String| {
            let e = StoreError::Corrupt {
                record: aad_snapshot(&meta.snapshot_id),
                reason,
            };
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        };
        let parsed: SnapshotData =
            serde_json::from_slice(&data).map_err(|e| read_err(e.to_string()))?;
        if parsed.format != SNAPSHOT_FORMAT {
            return Err(read_err(format!(
                "unknown snapshot format {}",
                parsed.format
            )));
        }
        let new_meta = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let (db, path, dek, m2, nm) = (
            self.db.clone(),
            self.path.clone(),
            self.dek.clone(),
            meta.clone(),
            new_meta.clone(),
        );
        let pending = self.pending.clone();
        let map = spawn_io(move || {
            let mut map = BTreeMap::new();
            // The snapshot replaces the whole state: what was pending is dropped, in the same
            // locked transaction.
            flush_pending(&db, &path, &pending, |tx, p| {
                *p = Pending::default();
                {
                    let mut kv = tx
                        .open_table(KV)
                        .map_err(|e| StoreError::db(what(&path), e))?;
                    kv.retain(|_, _| false)
                        .map_err(|e| StoreError::db(what(&path), e))?;
                    for e in parsed.entries {
                        let rec = sealed::seal(
                            &dek,
                            &aad_sm(&e.key),
                            &sealed::encode_value(e.version, e.created, &e.value),
                        )?;
                        kv.insert(e.key.as_str(), rec.as_slice())
                            .map_err(|er| StoreError::db(what(&path), er))?;
                        map.insert(
                            e.key,
                            Versioned {
                                version: e.version,
                                created: e.created,
                                value: e.value,
                            },
                        );
                    }
                    let rec = sealed::seal_json(&dek, AAD_APPLIED, &nm)?;
                    let mut mt = tx
                        .open_table(META)
                        .map_err(|e| StoreError::db(what(&path), e))?;
                    mt.insert("applied", rec.as_slice())
                        .map_err(|e| StoreError::db(what(&path), e))?;
                }
                store_snapshot(tx, &path, &dek, &m2, &data)
            })?;
            Ok(map)
        })
        .await
        .map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        self.meta = new_meta;
        let keys: Vec<String> = {
            let mut guard = lock_write(&self.shared.map);
            let mut keys: BTreeSet<String> = guard.keys().cloned().collect();
            keys.extend(map.keys().cloned());
            *guard = map;
            keys.into_iter().collect()
        };
        self.shared.notify(Applied {
            index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            keys,
        });
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let (db, path, dek) = (self.db.clone(), self.path.clone(), self.dek.clone());
        let found = spawn_io(move || {
            let tx = db
                .begin_read()
                .map_err(|e| StoreError::db(what(&path), e))?;
            let snap = tx
                .open_table(SNAP)
                .map_err(|e| StoreError::db(what(&path), e))?;
            let mut iter = snap.iter().map_err(|e| StoreError::db(what(&path), e))?;
            let found = match iter.next() {
                None => None,
                Some(row) => {
                    let (k, v) = row.map_err(|e| StoreError::db(what(&path), e))?;
                    Some(open_snapshot_record(&dek, k.value(), v.value())?)
                }
            };
            Ok(found)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(found.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken when the builder was created.
pub(crate) struct SnapshotBuilder {
    db: Arc<SmDb>,
    pending: Arc<Mutex<Pending>>,
    path: PathBuf,
    dek: Arc<DataKey>,
    meta: AppliedMeta,
    entries: Option<Vec<SnapshotEntry>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let entries = self.entries.take().unwrap_or_default();
        let data = serde_json::to_vec(&SnapshotData {
            format: SNAPSHOT_FORMAT,
            entries,
        })
        .map_err(|e| {
            let e = StoreError::Encode {
                what: "snapshot".into(),
                reason: e.to_string(),
            };
            StorageError::from(StorageIOError::write_snapshot(None, &e))
        })?;
        let mut rnd = [0u8; 4];
        let _ = SystemRandom::new().fill(&mut rnd);
        let snapshot_id = match self.meta.last_applied {
            Some(l) => format!(
                "{}-{}-{:08x}",
                l.leader_id.term,
                l.index,
                u32::from_le_bytes(rnd)
            ),
            None => format!("0-0-{:08x}", u32::from_le_bytes(rnd)),
        };
        let meta = SnapshotMeta {
            last_log_id: self.meta.last_applied,
            last_membership: self.meta.membership.clone(),
            snapshot_id,
        };
        let (db, path, dek, m2, pending) = (
            self.db.clone(),
            self.path.clone(),
            self.dek.clone(),
            meta.clone(),
            self.pending.clone(),
        );
        let data = spawn_io(move || {
            // Everything applied so far goes to the file with the snapshot: the log may be
            // purged up to the snapshot once this returns.
            flush_pending(&db, &path, &pending, |tx, _| {
                store_snapshot(tx, &path, &dek, &m2, &data)
            })?;
            Ok(data)
        })
        .await
        .map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Check, Proposal, Txn};
    use openraft::CommittedLeaderId;

    fn shared() -> Shared {
        Shared::new(16)
    }

    fn create(key: &str, value: &[u8]) -> Txn {
        Txn {
            checks: vec![Check::Absent { key: key.into() }],
            ops: vec![Op::Put {
                key: key.into(),
                value: value.to_vec(),
            }],
        }
    }

    fn entry(index: u64, payload: Proposal) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(payload),
        }
    }

    /// Transactions batched into one entry apply in order, each on its own: a create that
    /// loses to an earlier one of the same entry is a conflict and writes nothing, and the
    /// others of the entry still commit at the entry's index.
    #[test]
    fn transactions_of_one_entry_apply_in_order_each_on_its_own() {
        let dek = DataKey::generate().unwrap();
        let shared = shared();
        let batch = Proposal::batch(vec![
            create("secret-name/a", b"1"),
            create("secret-name/a", b"2"),
            create("secret-name/b", b"3"),
        ]);
        let mut writes = Pending::default();
        let res = prepare_batch(
            &dek,
            &shared,
            AppliedMeta::default(),
            vec![entry(7, batch)],
            &mut writes,
        )
        .unwrap();
        assert_eq!(
            res.responses,
            vec![Response {
                outcomes: vec![
                    TxnOutcome::Committed { index: 7 },
                    TxnOutcome::Conflict {
                        key: "secret-name/a".into()
                    },
                    TxnOutcome::Committed { index: 7 },
                ]
            }]
        );
        let a = res.overlay["secret-name/a"].as_ref().unwrap();
        assert_eq!(
            (a.value.as_slice(), a.version, a.created),
            (&b"1"[..], 7, 7)
        );
        assert_eq!(writes.kv.len(), 2);
        let keys: Vec<_> = res.notices.iter().map(|n| n.keys.clone()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["secret-name/a".to_string()],
                vec!["secret-name/b".to_string()]
            ]
        );
    }

    /// Entries written before proposals were batched (a bare transaction) still parse and
    /// apply; a batch round-trips through the log's JSON.
    #[test]
    fn single_transaction_entries_from_older_logs_still_apply() {
        let old = r#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":3},"payload":{"Normal":{"checks":[{"Absent":{"key":"k"}}],"ops":[{"Put":{"key":"k","value":"dg=="}}]}}}"#;
        let e: Entry<TypeConfig> = serde_json::from_str(old).unwrap();
        assert!(matches!(&e.payload, EntryPayload::Normal(Proposal::One(_))));
        let batch = entry(4, Proposal::batch(vec![create("j", b"w")]));
        let json = serde_json::to_string(&batch).unwrap();
        let back: Entry<TypeConfig> = serde_json::from_str(&json).unwrap();
        assert!(
            matches!(&back.payload, EntryPayload::Normal(Proposal::Batch { batch }) if batch.len() == 1)
        );
        let dek = DataKey::generate().unwrap();
        let mut writes = Pending::default();
        let res = prepare_batch(
            &dek,
            &shared(),
            AppliedMeta::default(),
            vec![e, back],
            &mut writes,
        )
        .unwrap();
        let outcomes: Vec<_> = res.responses.into_iter().flat_map(|r| r.outcomes).collect();
        assert_eq!(
            outcomes,
            vec![
                TxnOutcome::Committed { index: 3 },
                TxnOutcome::Committed { index: 4 }
            ]
        );
        assert_eq!(res.overlay["k"].as_ref().unwrap().value, b"v");
    }

    fn open_sm(dir: &Path) -> StateMachine {
        let dek = Arc::new(DataKey::generate().unwrap());
        StateMachine::open(&dir.join("state.redb"), dek, Arc::new(shared())).unwrap()
    }

    fn pending_value(sm: &StateMachine, key: &str) -> Option<Option<Vec<u8>>> {
        sm.pending.lock().unwrap().kv.get(key).cloned()
    }

    /// Applies add to the pending state while it is being written (the write takes it and
    /// lets go of the lock), and what they add waits for the next write.
    #[test]
    fn applies_go_on_while_pending_state_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open_sm(dir.path());
        sm.pending
            .lock()
            .unwrap()
            .kv
            .insert("a".into(), Some(b"1".to_vec()));
        let (entered, wait_entered) = std::sync::mpsc::channel();
        let (go, wait_go) = std::sync::mpsc::channel::<()>();
        let (db, pending, path) = (sm.db.clone(), sm.pending.clone(), sm.path.clone());
        let writer = std::thread::spawn(move || {
            flush_pending(&db, &path, &pending, |_, p| {
                assert!(p.kv.contains_key("a"));
                entered.send(()).unwrap();
                wait_go.recv().unwrap();
                Ok(())
            })
        });
        wait_entered.recv().unwrap();
        sm.pending
            .try_lock()
            .expect("the pending state is free during a write")
            .kv
            .insert("b".into(), Some(b"2".to_vec()));
        go.send(()).unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(pending_value(&sm, "a"), None);
        assert_eq!(pending_value(&sm, "b"), Some(Some(b"2".to_vec())));
    }

    /// A failed write puts back what it took, under anything applied meanwhile: the next
    /// write still holds every change since the last one that reached the file.
    #[test]
    fn a_failed_write_keeps_what_it_took_under_newer_changes() {
        let dir = tempfile::tempdir().unwrap();
        let sm = open_sm(dir.path());
        {
            let mut p = sm.pending.lock().unwrap();
            p.kv.insert("a".into(), Some(b"old".to_vec()));
            p.kv.insert("b".into(), None);
            p.applied = Some(b"applied-1".to_vec());
        }
        let pending = sm.pending.clone();
        let failed = flush_pending(&sm.db, &sm.path, &sm.pending, |_, _| {
            // An apply while the write runs, then the write fails.
            pending
                .lock()
                .unwrap()
                .kv
                .insert("a".into(), Some(b"new".to_vec()));
            Err(StoreError::Unknown("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(pending_value(&sm, "a"), Some(Some(b"new".to_vec())));
        assert_eq!(pending_value(&sm, "b"), Some(None));
        assert_eq!(
            sm.pending.lock().unwrap().applied.as_deref(),
            Some(&b"applied-1"[..])
        );
    }
}
