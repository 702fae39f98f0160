//! Raft log and vote, in `<data_dir>/store/raft-log.redb`.
//!
//! Tables:
//! - `log`: `u64` index → entry (JSON of `openraft::Entry`), sealed with AAD `log/<index>`.
//! - `meta`: `"vote"` (AAD `meta/vote`), `"last_purged"` (AAD `meta/last_purged`) and `"node_id"`
//!   (AAD `meta/node_id`), all sealed.
//!
//! Every write transaction commits with `Durability::Immediate` (fsync) before openraft is told the
//! entries are flushed, so a committed entry is always on disk.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use ring::rand::{SecureRandom, SystemRandom};
use swarmguard_secrets::DataKey;

use super::error::StoreError;
use super::sealed::{self, aad_log, AAD_PURGED, AAD_VOTE};
use super::types::TypeConfig;
use super::{lock_read, lock_write, spawn_io, CloseGuard};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AAD_NODE_ID: &str = "meta/node_id";

type LogEntry = Entry<TypeConfig>;

/// The Raft log store. Cheap to clone; clones share the database (the log reader is a clone).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: RwLock<Database>,
    dek: Arc<DataKey>,
    path: PathBuf,
    cache: Mutex<Cache>,
    /// Compact the redb file after this many log entries were purged since the last compaction.
    compact_after_purged: u64,
    compactions: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    /// Must stay the last field (see [`CloseGuard`]).
    _guard: CloseGuard,
}

#[derive(Default)]
struct Cache {
    vote: Option<Vote<u64>>,
    last_purged: Option<LogId<u64>>,
    last_log: Option<LogId<u64>>,
    purged_since_compact: u64,
}

impl LogStore {
    /// Opens or creates the log database and verifies every record in it.
    /// Returns the store and this node's Raft ID (generated on first start).
    pub(crate) fn open(
        path: &Path,
        dek: Arc<DataKey>,
        compact_after_purged: u64,
    ) -> Result<(LogStore, u64), StoreError> {
        let what = || format!("{}", path.display());
        let db = Database::create(path).map_err(|e| StoreError::db(what(), e))?;
        let mut node_id = None;
        let mut cache = Cache::default();
        {
            let mut tx = db.begin_write().map_err(|e| StoreError::db(what(), e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::db(what(), e))?;
            {
                let log = tx.open_table(LOG).map_err(|e| StoreError::db(what(), e))?;
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
                if let Some(v) = meta.get("node_id").map_err(|e| StoreError::db(what(), e))? {
                    node_id = Some(sealed::open_json::<u64>(&dek, AAD_NODE_ID, v.value())?);
                }
                // Verify every entry: it decrypts, parses, sits at its own index and the log has no hole.
                let mut expected = cache.last_purged.map(|l| l.index + 1);
                cache.last_log = cache.last_purged;
                for row in log.iter().map_err(|e| StoreError::db(what(), e))? {
                    let (k, v) = row.map_err(|e| StoreError::db(what(), e))?;
                    let index = k.value();
                    let aad = aad_log(index);
                    let entry: LogEntry = sealed::open_json(&dek, &aad, v.value())?;
                    if entry.log_id.index != index {
                        return Err(StoreError::Corrupt {
                            record: aad,
                            reason: format!("entry claims index {}", entry.log_id.index),
                        });
                    }
                    if let Some(exp) = expected {
                        if index != exp {
                            return Err(StoreError::Corrupt {
                                record: aad,
                                reason: format!("log has a hole: expected index {exp}"),
                            });
                        }
                    }
                    expected = Some(index + 1);
                    cache.last_log = Some(entry.log_id);
                }
                if node_id.is_none() {
                    let id = new_node_id()?;
                    let rec = sealed::seal_json(&dek, AAD_NODE_ID, &id)?;
                    meta.insert("node_id", rec.as_slice())
                        .map_err(|e| StoreError::db(what(), e))?;
                    node_id = Some(id);
                }
            }
            tx.commit().map_err(|e| StoreError::db(what(), e))?;
        }
        let node_id = node_id.ok_or_else(|| StoreError::Corrupt {
            record: AAD_NODE_ID.into(),
            reason: "missing".into(),
        })?;
        let (guard, closed) = CloseGuard::new();
        Ok((
            LogStore {
                inner: Arc::new(Inner {
                    db: RwLock::new(db),
                    dek,
                    path: path.to_path_buf(),
                    cache: Mutex::new(cache),
                    compact_after_purged,
                    compactions: Arc::new(AtomicU64::new(0)),
                    closed,
                    _guard: guard,
                }),
            },
            node_id,
        ))
    }

    /// Counts compactions of the log database since open.
    pub(crate) fn compaction_counter(&self) -> Arc<AtomicU64> {
        self.inner.compactions.clone()
    }

    /// Becomes true once the database file is closed.
    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.inner.closed.clone()
    }
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
        let db = lock_read(&self.db);
        let mut tx = db
            .begin_write()
            .map_err(|e| StoreError::db(self.what(), e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::db(self.what(), e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| StoreError::db(self.what(), e))?;
        Ok(out)
    }

    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<LogEntry>, StoreError> {
        let db = lock_read(&self.db);
        let tx = db
            .begin_read()
            .map_err(|e| StoreError::db(self.what(), e))?;
        let log = tx
            .open_table(LOG)
            .map_err(|e| StoreError::db(self.what(), e))?;
        let mut out = Vec::new();
        for row in log
            .range(range)
            .map_err(|e| StoreError::db(self.what(), e))?
        {
            let (k, v) = row.map_err(|e| StoreError::db(self.what(), e))?;
            let aad = aad_log(k.value());
            let entry: LogEntry = sealed::open_json(&self.dek, &aad, v.value())?;
            if entry.log_id.index != k.value() {
                return Err(StoreError::Corrupt {
                    record: aad,
                    reason: format!("entry claims index {}", entry.log_id.index),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maybe_compact(&self) {
        let due = {
            let c = self.cache();
            c.purged_since_compact >= self.compact_after_purged
        };
        if !due {
            return;
        }
        let mut db = lock_write(&self.db);
        match db.compact() {
            Ok(_) => {
                tracing::debug!(path = %self.path.display(), "compacted raft log database");
                self.cache().purged_since_compact = 0;
                self.compactions.fetch_add(1, Ordering::Relaxed);
            }
            // Compaction is an optimisation; a failure (e.g. a live read transaction) is retried
            // after the next purge.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "raft log compaction skipped")
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
        let Some(last) = entries.last().map(|e| *e.get_log_id()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let inner = self.inner.clone();
        let res = spawn_io(move || {
            let mut sealed_entries = Vec::with_capacity(entries.len());
            for e in &entries {
                let index = e.log_id.index;
                sealed_entries.push((index, sealed::seal_json(&inner.dek, &aad_log(index), e)?));
            }
            inner.write(|tx| {
                let mut log = tx
                    .open_table(LOG)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                for (index, rec) in &sealed_entries {
                    log.insert(*index, rec.as_slice())
                        .map_err(|e| StoreError::db(inner.what(), e))?;
                }
                Ok(())
            })
        })
        .await;
        match res {
            Ok(()) => {
                self.inner.cache().last_log = Some(last);
                // Only now, after the fsync'd commit, tell openraft the entries are durable: the
                // leader counts its own log as replicated (and may commit) on this callback.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "appending raft log entries failed");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
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
        spawn_io(move || {
            inner.write(|tx| {
                let mut log = tx
                    .open_table(LOG)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                log.retain_in(since.., |_, _| false)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                Ok(())
            })
        })
        .await
        .map_err(write_err)?;
        let mut c = self.inner.cache();
        c.last_log = prev.or(c.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
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
            inner.write(|tx| {
                let mut log = tx
                    .open_table(LOG)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                log.retain_in(..=upto, |_, _| false)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                let mut meta = tx
                    .open_table(META)
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                meta.insert("last_purged", rec.as_slice())
                    .map_err(|e| StoreError::db(inner.what(), e))?;
                Ok(())
            })?;
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
