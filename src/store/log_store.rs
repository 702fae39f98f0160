//! Raft log and vote: entries in `<data_dir>/store/raft-log.wal` (see [`super::wal`]); vote,
//! purge point and node ID in `<data_dir>/store/raft-log.redb`.
//!
//! - Entries: JSON of `openraft::Entry`, sealed with AAD `log/<index>`.
//! - `meta` table: `"vote"` (AAD `meta/vote`), `"last_purged"` (AAD `meta/last_purged`),
//!   `"node_id"` (AAD `meta/node_id`) and `"committed"` (AAD `meta/committed`), all sealed,
//!   written with `Durability::Immediate`.
//!
//! The committed log id is written behind openraft's back, at most every [`COMMITTED_EVERY`]
//! (see [`committed_loop`]): at open, openraft re-applies the log up to it before anything else,
//! so a manager of several comes back with the state it had applied, whatever reached the state
//! file, without waiting for a leader. A stale one is safe (it only shortens that replay).
//!
//! `append` keeps the entries in memory (readable at once, as openraft requires), writes them
//! to the file with one fdatasync, and only then reports the append flushed (the leader counts
//! its own log as replicated on that report, so a committed entry is always on disk). openraft
//! 0.9's core waits for that report before its next step, so appends never overlap: they are
//! written in place, and concurrent client writes share an fsync by sharing an entry
//! (`batch.rs`). Only while a truncate's or purge's barrier is with the writer thread do appends
//! queue behind it there; the writer writes everything queued as one append and one fdatasync.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use ring::rand::{SecureRandom, SystemRandom};
use swarmguard_secrets::DataKey;

use super::error::StoreError;
use super::sealed::{self, aad_log, AAD_PURGED, AAD_VOTE};
use super::types::TypeConfig;
use super::wal::Wal;
use super::{spawn_io, CloseGuard};

/// Where entries lived before the append-only file; moved into it at open.
const OLD_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AAD_NODE_ID: &str = "meta/node_id";
const AAD_COMMITTED: &str = "meta/committed";
/// Most often the committed log id is written (one fsync'd redb commit each).
const COMMITTED_EVERY: Duration = Duration::from_millis(50);
/// Entries kept in memory after an append (see [`Inner::tail`]).
const TAIL_ENTRIES: usize = 1024;
/// Most appends the writer puts in one write.
const MAX_GROUP: usize = 256;

type LogEntry = Entry<TypeConfig>;

/// The Raft log store. Cheap to clone; clones share the files (the log reader is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: Database,
    wal: Mutex<Wal>,
    dek: Arc<DataKey>,
    path: PathBuf,
    cache: Mutex<Cache>,
    /// The newest entries as appended, contiguous up to the last log entry: readers find an
    /// entry here before it is on disk, and the state machine reads each entry back right after
    /// it commits, which would otherwise cost a decryption and a parse.
    tail: Mutex<Tail>,
    /// Queue of the writer thread (see [`writer_loop`]).
    writer: std::sync::mpsc::Sender<Job>,
    /// Wakes the thread that writes the committed log id (see [`committed_loop`]).
    committed_poke: std::sync::mpsc::SyncSender<()>,
    /// Jobs sent to the writer and not yet done: with none, an append is written in place.
    queued: AtomicU64,
    /// Rewrite the log file after this many entries were purged since the last rewrite.
    compact_after_purged: u64,
    compactions: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    /// Must stay the last field (see [`CloseGuard`]).
    _guard: CloseGuard,
}

#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, LogEntry>,
    /// Every entry up to this index is in the file: only those may leave the tail.
    persisted: u64,
}

/// Work for the writer thread, done in queue order.
enum Job {
    Append(Vec<LogEntry>, LogFlushed<TypeConfig>),
    /// Answered once everything queued before it is on disk.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

#[derive(Default)]
struct Cache {
    vote: Option<Vote<u64>>,
    last_purged: Option<LogId<u64>>,
    last_log: Option<LogId<u64>>,
    purged_since_compact: u64,
    /// The last committed log id openraft reported, and the one written to the file.
    committed: Option<LogId<u64>>,
    committed_saved: Option<LogId<u64>>,
}

/// Decrypts and parses the entry sealed at `index`, and checks it says so.
fn open_entry(dek: &DataKey, index: u64, sealed_rec: &[u8]) -> Result<LogEntry, StoreError> {
    let aad = aad_log(index);
    let entry: LogEntry = sealed::open_json(dek, &aad, sealed_rec)?;
    if entry.log_id.index != index {
        return Err(StoreError::Corrupt {
            record: aad,
            reason: format!("entry claims index {}", entry.log_id.index),
        });
    }
    Ok(entry)
}

/// Verifies every live entry: it decrypts, parses, sits at its own index, and the log continues
/// from the purge point without a hole. Sets `cache.last_log`.
fn verify_entries(
    dek: &DataKey,
    found: Vec<crate::store::wal::Found>,
    old_entries: Vec<(u64, Vec<u8>)>,
    cache: &mut Cache,
) -> Result<(), StoreError> {
    let purged = cache.last_purged.map(|l| l.index);
    let mut expected = purged.map(|p| p + 1);
    cache.last_log = cache.last_purged;
    let records = found
        .into_iter()
        .map(|f| (f.index, f.sealed))
        .chain(old_entries)
        .filter(|(i, _)| purged.is_none_or(|p| *i > p));
    let mut seen = std::collections::BTreeSet::new();
    for (index, sealed_rec) in records {
        if !seen.insert(index) {
            continue; // moved from the old table by an earlier, interrupted open
        }
        let entry = open_entry(dek, index, &sealed_rec)?;
        if let Some(exp) = expected {
            if index != exp {
                return Err(StoreError::Corrupt {
                    record: aad_log(index),
                    reason: format!("log has a hole or is out of order: expected index {exp}"),
                });
            }
        }
        expected = Some(index + 1);
        cache.last_log = Some(entry.log_id);
    }
    Ok(())
}

impl LogStore {
    /// Opens or creates the log files and verifies every record in them.
    /// Returns the store and this node's Raft ID (generated on first start).
    pub(crate) fn open(
        path: &Path,
        dek: Arc<DataKey>,
        compact_after_purged: u64,
    ) -> Result<(LogStore, u64), StoreError> {
        let what = || format!("{}", path.display());
        let db = Database::create(path).map_err(|e| StoreError::db(what(), e))?;
        let (mut wal, found) = Wal::open(&wal_path(path))?;
        let mut node_id = None;
        let mut cache = Cache::default();
        let mut old_entries = Vec::new();
        {
            let mut tx = db.begin_write().map_err(|e| StoreError::db(what(), e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::db(what(), e))?;
            {
                let mut meta = tx.open_table(META).map_err(|e| StoreError::db(what(), e))?;
                if let Some(v) = meta.get("vote").map_err(|e| StoreError::db(what(), e))? {
                    cache.vote = Some(sealed::open_json(&dek, AAD_VOTE, v.value())?);
                }
                if let Some(v) = meta
                    .get("last_purged")
                    .map_err(|e| StoreError::db(what(), e))?
                {
                    cache.last_purged = sealed::open_json(&dek, AAD_PURGED, v.value())?;
                }
                if let Some(v) = meta
                    .get("committed")
                    .map_err(|e| StoreError::db(what(), e))?
                {
                    cache.committed = sealed::open_json(&dek, AAD_COMMITTED, v.value())?;
                    cache.committed_saved = cache.committed;
                }
                if let Some(v) = meta.get("node_id").map_err(|e| StoreError::db(what(), e))? {
                    node_id = Some(sealed::open_json::<u64>(&dek, AAD_NODE_ID, v.value())?);
                }
                if node_id.is_none() {
                    let id = new_node_id()?;
                    let rec = sealed::seal_json(&dek, AAD_NODE_ID, &id)?;
                    meta.insert("node_id", rec.as_slice())
                        .map_err(|e| StoreError::db(what(), e))?;
                    node_id = Some(id);
                }
                let mut old = tx
                    .open_table(OLD_LOG)
                    .map_err(|e| StoreError::db(what(), e))?;
                for row in old.iter().map_err(|e| StoreError::db(what(), e))? {
                    let (k, v) = row.map_err(|e| StoreError::db(what(), e))?;
                    old_entries.push((k.value(), v.value().to_vec()));
                }
                if !old_entries.is_empty() {
                    // Into the file first (durably), then out of the table in this commit: a
                    // crash in between finds them in both and skips those already moved.
                    let in_file = found.last().map(|f| f.index);
                    let moving: Vec<_> = old_entries
                        .iter()
                        .filter(|(i, _)| in_file.is_none_or(|last| *i > last))
                        .cloned()
                        .collect();
                    wal.append(&moving)?;
                    old.retain(|_, _| false)
                        .map_err(|e| StoreError::db(what(), e))?;
                    tracing::info!(
                        entries = moving.len(),
                        "moved the raft log into its append-only file"
                    );
                }
            }
            tx.commit().map_err(|e| StoreError::db(what(), e))?;
        }
        let purged = cache.last_purged.map(|l| l.index);
        verify_entries(&dek, found, old_entries, &mut cache)?;
        if let Some(p) = purged {
            wal.forget_upto(p);
        }
        let node_id = node_id.ok_or_else(|| StoreError::Corrupt {
            record: AAD_NODE_ID.into(),
            reason: "missing".into(),
        })?;
        let (guard, closed) = CloseGuard::new();
        let (writer, queue) = std::sync::mpsc::channel();
        let (committed_poke, pokes) = std::sync::mpsc::sync_channel(1);
        let persisted = cache.last_log.map(|l| l.index).unwrap_or(0);
        let inner = Arc::new(Inner {
            db,
            wal: Mutex::new(wal),
            dek,
            path: path.to_path_buf(),
            cache: Mutex::new(cache),
            tail: Mutex::new(Tail {
                entries: BTreeMap::new(),
                persisted,
            }),
            writer,
            committed_poke,
            queued: AtomicU64::new(0),
            compact_after_purged,
            compactions: Arc::new(AtomicU64::new(0)),
            closed,
            _guard: guard,
        });
        // The thread holds only a weak reference: it ends when the store is dropped (the queue's
        // sender lives in `Inner`), so the files still close when openraft lets go of them.
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(weak, queue))
            .map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-committed".into())
            .spawn(move || committed_loop(weak, pokes))
            .map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok((LogStore { inner }, node_id))
    }

    /// Counts rewrites of the log file since open.
    pub(crate) fn compaction_counter(&self) -> Arc<AtomicU64> {
        self.inner.compactions.clone()
    }

    /// Becomes true once the files are closed.
    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.inner.closed.clone()
    }
}

/// The entries' file, next to the meta database.
pub(crate) fn wal_path(meta_path: &Path) -> PathBuf {
    meta_path.with_extension("wal")
}

fn new_node_id() -> Result<u64, StoreError> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StoreError::Encode {
            what: "node id".into(),
            reason: "system random generator failed".into(),
        })?;
    // Keep IDs positive and non-zero so they read well in logs and JSON.
    Ok((u64::from_le_bytes(b) >> 1).max(1))
}

impl Inner {
    fn what(&self) -> String {
        self.path.display().to_string()
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StoreError::db(self.what(), e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::db(self.what(), e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| StoreError::db(self.what(), e))?;
        Ok(out)
    }

    /// Writes the committed log id openraft last reported, if it is not in the file yet.
    fn write_committed(&self) -> Result<(), StoreError> {
        let committed = {
            let c = self.cache();
            if c.committed == c.committed_saved {
                return Ok(());
            }
            c.committed
        };
        let rec = sealed::seal_json(&self.dek, AAD_COMMITTED, &committed)?;
        self.write(|tx| {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::db(self.what(), e))?;
            meta.insert("committed", rec.as_slice())
                .map_err(|e| StoreError::db(self.what(), e))?;
            Ok(())
        })?;
        self.cache().committed_saved = committed;
        Ok(())
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<LogEntry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        {
            let tail = self.tail();
            // The tail holds every entry from its first key to the end of the log.
            if tail
                .entries
                .first_key_value()
                .is_some_and(|(&lo, _)| start >= lo)
            {
                return Ok(tail.entries.range(range).map(|(_, e)| e.clone()).collect());
            }
        }
        self.read_file_range(range)
    }

    /// Entries in `range` as the file holds them, each decrypted and checked.
    fn read_file_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let records = self.wal().read(range)?;
        records
            .iter()
            .map(|(index, sealed_rec)| open_entry(&self.dek, *index, sealed_rec))
            .collect()
    }

    /// Keeps `entries` in the tail, where readers find them at once. They stay there until
    /// the writer has them on disk.
    fn keep_in_tail(&self, entries: &[LogEntry]) {
        let Some(last) = entries.last().map(|e| *e.get_log_id()) else {
            return;
        };
        let mut tail = self.tail();
        // Appends follow the last entry (openraft truncates before it overwrites).
        for e in entries {
            tail.entries.insert(e.log_id.index, e.clone());
        }
        drop(tail);
        self.cache().last_log = Some(last);
    }

    /// Seals and appends `entries` with one fdatasync; then they may leave the tail.
    /// Blocking: the writer thread (and tests) call it.
    fn write_entries(&self, entries: &[&LogEntry]) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            return Ok(());
        };
        let mut sealed_entries = Vec::with_capacity(entries.len());
        for e in entries {
            let index = e.log_id.index;
            sealed_entries.push((index, sealed::seal_json(&self.dek, &aad_log(index), e)?));
        }
        self.wal().append(&sealed_entries)?;
        let mut tail = self.tail();
        tail.persisted = tail.persisted.max(last);
        while tail.entries.len() > TAIL_ENTRIES {
            match tail.entries.first_key_value() {
                Some((&first, _)) if first <= tail.persisted => {
                    tail.entries.pop_first();
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Waits until every append queued so far is on disk.
    async fn barrier(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Barrier(tx))?;
        rx.await
            .map_err(|_| StoreError::Raft("the raft log writer stopped".into()))
    }

    /// Hands a job to the writer thread, counted until it is done.
    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.writer.send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            StoreError::Raft("the raft log writer stopped".into())
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites the log file once enough entries were purged from it.
    fn maybe_compact(&self) {
        let due = {
            let c = self.cache();
            c.purged_since_compact >= self.compact_after_purged
        };
        if !due {
            return;
        }
        match self.wal().compact() {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "rewrote the raft log file without purged entries");
                self.cache().purged_since_compact = 0;
                self.compactions.fetch_add(1, Ordering::Relaxed);
            }
            // An optimisation: the old file is intact (the rewrite goes to a temporary file),
            // and it is tried again after the next purge.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "raft log rewrite skipped")
            }
        }
    }
}

fn read_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

/// The writer thread: takes every job queued so far (up to [`MAX_GROUP`]), writes all their
/// entries in one transaction, then reports each append flushed, in order.
fn writer_loop(inner: std::sync::Weak<Inner>, queue: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let result = match inner.upgrade() {
            Some(inner) => {
                let entries: Vec<&LogEntry> = jobs
                    .iter()
                    .flat_map(|j| match j {
                        Job::Append(e, _) => e.iter().collect(),
                        Job::Barrier(_) => Vec::new(),
                    })
                    .collect();
                let written = inner.write_entries(&entries);
                // Done before anyone hears of it: the next append may be written in place.
                inner.queued.fetch_sub(jobs.len() as u64, Ordering::AcqRel);
                written
            }
            None => Err(StoreError::Raft("the raft log was closed".into())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "appending raft log entries failed");
        }
        for job in jobs {
            match job {
                Job::Append(_, callback) => callback.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                ),
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Writes the committed log id when openraft reports a new one, then rests [`COMMITTED_EVERY`]
/// so a busy leader costs at most that many commits a second. Ends with the store.
fn committed_loop(inner: std::sync::Weak<Inner>, pokes: std::sync::mpsc::Receiver<()>) {
    while pokes.recv().is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.write_committed() {
            tracing::warn!(error = %e, "committed log id not written; a restart replays less of the log at once");
        }
        drop(inner);
        std::thread::sleep(COMMITTED_EVERY);
    }
}

impl Drop for Inner {
    /// A clean stop leaves the latest committed log id in the file.
    fn drop(&mut self) {
        if let Err(e) = self.write_committed() {
            tracing::warn!(error = %e, "committed log id not written at close");
        }
    }
}

impl LogStore {
    /// Disaster recovery (`--force-new-cluster`): ends the group this log belonged to by
    /// appending a membership of this node alone, in a new term this node leads (vote saved
    /// first). Runs before openraft starts on the log; every entry already in it is kept, as
    /// SwarmKit keeps its log.
    pub(crate) fn force_single_voter(&self, node_id: u64, addr: &str) -> Result<(), StoreError> {
        let (vote, last) = {
            let c = self.inner.cache();
            (c.vote, c.last_log)
        };
        let Some(last) = last else {
            return Err(StoreError::Raft(
                "--force-new-cluster: this data dir holds no raft log to recover".into(),
            ));
        };
        let term = vote
            .map(|v| v.leader_id.term)
            .unwrap_or(0)
            .max(last.leader_id.term)
            + 1;
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, openraft::BasicNode::new(addr))]),
        );
        let entry = LogEntry {
            log_id: LogId::new(
                openraft::CommittedLeaderId::new(term, node_id),
                last.index + 1,
            ),
            payload: openraft::EntryPayload::Membership(membership),
        };
        let v = Vote::new_committed(term, node_id);
        let rec = sealed::seal_json(&self.inner.dek, AAD_VOTE, &v)?;
        self.inner.write(|tx| {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::db(self.inner.what(), e))?;
            meta.insert("vote", rec.as_slice())
                .map_err(|e| StoreError::db(self.inner.what(), e))?;
            Ok(())
        })?;
        self.inner.cache().vote = Some(v);
        let entries = vec![entry];
        self.inner.keep_in_tail(&entries);
        self.inner
            .write_entries(&entries.iter().collect::<Vec<_>>())?;
        tracing::warn!(
            term,
            index = last.index + 1,
            "--force-new-cluster: this manager is now the only voter of its raft group"
        );
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<u64>> {
        self.inner.read_range(range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let c = self.inner.cache();
        Ok(LogState {
            last_purged_log_id: c.last_purged,
            last_log_id: c.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let inner = self.inner.clone();
        let v = *vote;
        spawn_io(move || {
            let rec = sealed::seal_json(&inner.dek, AAD_VOTE, &v)?;
            inner.write(|tx| {
                let mut meta = tx
                    .open_table(META)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                meta.insert("vote", rec.as_slice())
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                Ok(())
            })
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.inner.cache().vote = Some(v);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.cache().vote)
    }

    /// Kept in memory at once and written by [`committed_loop`] soon after: openraft awaits
    /// this before every apply, so it must not wait for a disk.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.inner.cache().committed = committed;
        // Full: a write is due anyway and will take the newest value.
        let _ = self.inner.committed_poke.try_send(());
        Ok(())
    }

    /// Never past the end of the log on disk: a follower may have heard of a commit index
    /// beyond entries a crash then cut off (committed entries below it are never truncated,
    /// so the log up to there is committed).
    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let c = self.inner.cache();
        Ok(match (c.committed, c.last_log) {
            (Some(committed), Some(last)) if committed.index > last.index => Some(last),
            (_, None) => None,
            (committed, _) => committed,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.inner.keep_in_tail(&entries);
        // The callback comes only after the fsync'd write: the leader counts its own log as
        // replicated (and may commit) on it. openraft 0.9's core waits for that callback before
        // it does anything else, so appends never overlap and the writer thread would only add
        // two thread wake-ups per entry: with nothing queued for it (a truncate's or purge's
        // barrier), the entries are written here, in order after everything sent before.
        if self.inner.queued.load(Ordering::Acquire) == 0 {
            let refs: Vec<&LogEntry> = entries.iter().collect();
            let result = self.inner.write_entries(&refs);
            if let Err(e) = &result {
                tracing::error!(error = %e, "appending raft log entries failed");
            }
            callback.log_io_completed(result.map_err(|e| std::io::Error::other(e.to_string())));
            return Ok(());
        }
        self.inner
            .send(Job::Append(entries, callback))
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Queued appends first, so the deletion below sees (and removes) them in the file.
        self.inner.barrier().await.map_err(write_err)?;
        let inner = self.inner.clone();
        let since = log_id.index;
        let prev = if since == 0 {
            None
        } else {
            self.inner
                .read_range(since - 1..since)
                .map_err(read_err)?
                .pop()
                .map(|e| e.log_id)
        };
        spawn_io(move || inner.wal().truncate_from(since))
            .await
            .map_err(write_err)?;
        {
            let mut tail = self.inner.tail();
            tail.entries.split_off(&since);
            tail.persisted = tail.persisted.min(since.saturating_sub(1));
        }
        let mut c = self.inner.cache();
        c.last_log = prev.or(c.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.inner.barrier().await.map_err(write_err)?;
        let inner = self.inner.clone();
        let upto = log_id.index;
        let before = self
            .inner
            .cache()
            .last_purged
            .map(|l| l.index + 1)
            .unwrap_or(0);
        spawn_io(move || {
            let rec = sealed::seal_json(&inner.dek, AAD_PURGED, &Some(log_id))?;
            // The purge point is recorded first: entries at or below it are dead from then on,
            // whether or not the file still holds them.
            inner.write(|tx| {
                let mut meta = tx
                    .open_table(META)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                meta.insert("last_purged", rec.as_slice())
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                Ok(())
            })?;
            inner.wal().forget_upto(upto);
            {
                let mut tail = inner.tail();
                tail.entries = tail.entries.split_off(&upto.saturating_add(1));
            }
            {
                let mut c = inner.cache();
                c.last_purged = Some(log_id);
                if c.last_log.is_none_or(|l| l.index < log_id.index) {
                    c.last_log = Some(log_id);
                }
                c.purged_since_compact += (upto + 1).saturating_sub(before);
            }
            inner.maybe_compact();
            Ok(())
        })
        .await
        .map_err(write_err)?;
        tracing::debug!(upto, "purged raft log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Op, Proposal, Txn};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> LogEntry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
            payload: EntryPayload::Normal(Proposal::batch(vec![Txn {
                checks: vec![],
                ops: vec![Op::Put {
                    key: format!("k/{index}"),
                    value: index.to_le_bytes().to_vec(),
                }],
            }])),
        }
    }

    /// What `append` does, with the write done here instead of on the writer thread.
    fn append(log: &LogStore, entries: Vec<LogEntry>) {
        log.inner.keep_in_tail(&entries);
        log.inner
            .write_entries(&entries.iter().collect::<Vec<_>>())
            .unwrap();
    }

    fn json(entries: &[LogEntry]) -> String {
        serde_json::to_string(entries).unwrap()
    }

    /// Reads served from the in-memory tail equal what the file holds, across eviction,
    /// truncation and purge; reads older than the tail go to the file.
    #[tokio::test]
    async fn tail_reads_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dek = Arc::new(DataKey::generate().unwrap());
        let (mut log, _) = LogStore::open(&dir.path().join("log.redb"), dek, u64::MAX).unwrap();
        let total = TAIL_ENTRIES as u64 + 500;
        for batch in (1..=total).collect::<Vec<_>>().chunks(37) {
            append(&log, batch.iter().map(|&i| entry(i)).collect());
        }
        let lo = log
            .inner
            .tail()
            .entries
            .first_key_value()
            .map(|(k, _)| *k)
            .unwrap();
        assert_eq!(
            lo,
            total - TAIL_ENTRIES as u64 + 1,
            "tail keeps the newest entries"
        );
        let check = |log: &LogStore, from: u64, to: u64| {
            let served = log.inner.read_range(from..to).unwrap();
            let file = log.inner.read_file_range(from..to).unwrap();
            assert_eq!(json(&served), json(&file), "range {from}..{to}");
            served.len()
        };
        assert_eq!(check(&log, lo, total + 1), TAIL_ENTRIES);
        assert_eq!(check(&log, lo + 10, lo + 20), 10);
        // Starts before the tail: read from the file, whole.
        assert_eq!(check(&log, 1, total + 1), total as usize);

        log.truncate(LogId::new(CommittedLeaderId::new(1, 7), total - 100))
            .await
            .unwrap();
        assert_eq!(check(&log, lo, total + 1), (total - 100 - lo) as usize);
        append(&log, vec![entry(total - 100), entry(total - 99)]);
        assert_eq!(check(&log, total - 101, total + 1), 3);

        log.purge(LogId::new(CommittedLeaderId::new(1, 7), lo + 50))
            .await
            .unwrap();
        assert_eq!(
            log.inner.tail().entries.first_key_value().map(|(k, _)| *k),
            Some(lo + 51)
        );
        assert_eq!(
            check(&log, lo + 51, total + 1),
            (total - 99 - lo - 50) as usize
        );
        // Purged entries are gone from both.
        assert_eq!(check(&log, lo, lo + 51), 0);
    }

    /// The committed log id survives a reopen (written soon after openraft reports it, and at
    /// close), and is never reported past the end of the log on disk.
    #[tokio::test]
    async fn committed_log_id_survives_a_reopen_within_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let dek = Arc::new(DataKey::generate().unwrap());
        let id = |i| LogId::new(CommittedLeaderId::new(1, 7), i);
        {
            let (mut log, _) = LogStore::open(&path, dek.clone(), u64::MAX).unwrap();
            assert_eq!(log.read_committed().await.unwrap(), None);
            append(&log, (1..=5).map(entry).collect());
            log.save_committed(Some(id(3))).await.unwrap();
            // Written by the committed thread, not at close: wait for it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while log.inner.cache().committed_saved != Some(id(3)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "committed id not written"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            log.save_committed(Some(id(5))).await.unwrap();
        }
        {
            let (mut log, _) = LogStore::open(&path, dek.clone(), u64::MAX).unwrap();
            assert_eq!(log.read_committed().await.unwrap(), Some(id(5)));
            // A crash cut the log short of what this follower had heard was committed.
            log.truncate(id(4)).await.unwrap();
            assert_eq!(log.read_committed().await.unwrap(), Some(id(3)));
        }
    }
}
