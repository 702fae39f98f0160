//! Durable metadata storage in redb. Uploaded files are stored verbatim and
//! served byte for byte. Every upload is validated and written inside one
//! write transaction, so validation and storage cannot interleave. The current version of each
//! role that has been read is also kept in memory ([`crate::cache`]), dropped after every write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cache::{Cache, Current};
use crate::repo::{RepoState, Write};
use crate::tuf;

/// "gun\nrole\n{version:020}" → raw bytes
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// "gun\nrole" → current version
const CURRENT: TableDefinition<&str, u64> = TableDefinition::new("current");
/// "gun\nrole\n{sha256 hex}" → version
const CHECKSUM: TableDefinition<&str, u64> = TableDefinition::new("checksum");
/// change id → JSON record
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("changefeed");

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database or the file system failed.
    #[error("storage: {0}")]
    Db(String),
    /// The database has reached `--max-storage-bytes`; nothing was written.
    #[error("the trust store is full ({used} of {limit} bytes used)")]
    Full { used: u64, limit: u64 },
}

fn se(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// How much a store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Versions kept per role other than root (the current one included); older ones are
    /// pruned when a new version is stored. Root versions are never pruned: clients walk the
    /// root chain to follow key rotations.
    pub history: u64,
    /// Largest database file; a write that would start past it is refused.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            history: 100,
            max_bytes: 8 << 30,
        }
    }
}

/// What [`Store::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// Another update changed the repository since its state was read: validate again.
    Conflict,
}

/// One changefeed record, as Notary writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "GUN")]
    pub gun: String,
    #[serde(rename = "Version")]
    pub version: u64,
    #[serde(rename = "SHA256")]
    pub sha256: String,
    #[serde(rename = "Category")]
    pub category: String,
}

/// The metadata store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    cache: Arc<Cache>,
    path: PathBuf,
    retention: Retention,
    /// Reads of a current version answered from memory / from redb.
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

/// Appends one changefeed record (the next ID after the last) for `gun`.
fn append_change(
    feed: &mut redb::Table<'_, u64, &[u8]>,
    gun: &str,
    version: u64,
    sha256: String,
    category: &str,
) -> Result<(), StoreError> {
    let id = feed
        .last()
        .map_err(se)?
        .map(|(k, _)| k.value())
        .unwrap_or(0)
        + 1;
    let rec = Change {
        id: id.to_string(),
        created_at: tuf::format_time(time::OffsetDateTime::now_utc()),
        gun: gun.to_string(),
        version,
        sha256,
        category: category.into(),
    };
    feed.insert(id, serde_json::to_vec(&rec).map_err(se)?.as_slice())
        .map_err(se)?;
    Ok(())
}

fn prefix(gun: &str) -> (String, String) {
    (format!("{gun}\n"), format!("{gun}\u{b}"))
}

impl Store {
    /// Open (or create) `data_dir/trust.redb` with the default retention.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, Retention::default())
    }

    /// Open (or create) `data_dir/trust.redb`. The directory is made (or narrowed to) 0700
    /// and the database 0600: it holds the sealed server keys.
    pub fn open_with(data_dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(se)?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(se)?;
        let path = data_dir.join("trust.redb");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(se)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(se)?;
        let db = Database::create(&path).map_err(se)?;
        let tx = db.begin_write().map_err(se)?;
        tx.open_table(META).map_err(se)?;
        tx.open_table(CURRENT).map_err(se)?;
        tx.open_table(CHECKSUM).map_err(se)?;
        tx.open_table(FEED).map_err(se)?;
        tx.commit().map_err(se)?;
        Ok(Store {
            db: Arc::new(db),
            cache: Arc::default(),
            path,
            retention,
            hits: Arc::default(),
            misses: Arc::default(),
        })
    }

    /// Cache (hits, misses) of current-version reads.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The database, shared with the in-process signer.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Current bytes of `role`.
    pub fn current(&self, gun: &str, role: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.current_entry(gun, role)?.map(|c| c.raw.clone()))
    }

    /// Current version of `role`, from memory when it has been read since the last write to
    /// `gun`.
    pub fn current_entry(&self, gun: &str, role: &str) -> Result<Option<Arc<Current>>, StoreError> {
        if let Some(c) = self.cache.get(gun, role) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(c));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.cache.generation();
        let tx = self.db.begin_read().map_err(se)?;
        let cur = tx.open_table(CURRENT).map_err(se)?;
        let Some(v) = cur
            .get(format!("{gun}\n{role}").as_str())
            .map_err(se)?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let Some(raw) = self.version_in(&tx, gun, role, v)? else {
            return Err(StoreError::Db(format!("missing {role} v{v}")));
        };
        let c = Arc::new(Current::new(v, raw.into()));
        self.cache.insert(generation, gun, role, c.clone());
        Ok(Some(c))
    }

    fn version_in(
        &self,
        tx: &redb::ReadTransaction,
        gun: &str,
        role: &str,
        v: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let meta = tx.open_table(META).map_err(se)?;
        Ok(meta
            .get(format!("{gun}\n{role}\n{v:020}").as_str())
            .map_err(se)?
            .map(|g| g.value().to_vec()))
    }

    /// `role` at `version`.
    pub fn version(
        &self,
        gun: &str,
        role: &str,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(c) = self.current_entry(gun, role)? {
            if c.version == version {
                return Ok(Some(c.raw.clone()));
            }
        }
        let tx = self.db.begin_read().map_err(se)?;
        Ok(self.version_in(&tx, gun, role, version)?.map(Bytes::from))
    }

    /// `role` whose sha256 (or sha384, sha512) is `hex`.
    pub fn by_checksum(
        &self,
        gun: &str,
        role: &str,
        hex: &str,
    ) -> Result<Option<Bytes>, StoreError> {
        if let Some(c) = self.current_entry(gun, role)? {
            if c.sha256 == hex {
                return Ok(Some(c.raw.clone()));
            }
        }
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(CHECKSUM).map_err(se)?;
        let Some(v) = t
            .get(format!("{gun}\n{role}\n{hex}").as_str())
            .map_err(se)?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        Ok(self.version_in(&tx, gun, role, v)?.map(Bytes::from))
    }

    /// The repository's current state, read in one read transaction (no write lock held).
    pub fn state(&self, gun: &str) -> Result<RepoState, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let cur = tx.open_table(CURRENT).map_err(se)?;
        let meta = tx.open_table(META).map_err(se)?;
        load_state(&cur, &meta, gun)
    }

    /// Store `writes` if the repository still has the versions of `base` (the state they were
    /// validated and signed against), pruning what falls out of the history. Signing happens
    /// before, outside the write transaction: a slow signer holds no lock here.
    pub fn commit(
        &self,
        gun: &str,
        base: &RepoState,
        writes: &[Write],
    ) -> Result<Committed, StoreError> {
        if writes.is_empty() {
            return Ok(Committed::Stored);
        }
        let used = std::fs::metadata(&self.path).map_err(se)?.len();
        if used >= self.retention.max_bytes {
            return Err(StoreError::Full {
                used,
                limit: self.retention.max_bytes,
            });
        }
        let started = std::time::Instant::now();
        let tx = self.db.begin_write().map_err(se)?;
        {
            let cur = tx.open_table(CURRENT).map_err(se)?;
            let meta = tx.open_table(META).map_err(se)?;
            if !load_state(&cur, &meta, gun)?.same_versions(base) {
                return Ok(Committed::Conflict);
            }
        }
        {
            let mut meta = tx.open_table(META).map_err(se)?;
            let mut cur = tx.open_table(CURRENT).map_err(se)?;
            let mut sums = tx.open_table(CHECKSUM).map_err(se)?;
            let mut feed = tx.open_table(FEED).map_err(se)?;
            for w in writes {
                meta.insert(
                    format!("{gun}\n{}\n{:020}", w.role, w.version).as_str(),
                    w.raw.as_slice(),
                )
                .map_err(se)?;
                cur.insert(format!("{gun}\n{}", w.role).as_str(), w.version)
                    .map_err(se)?;
                for hex in checksums(&w.raw) {
                    sums.insert(format!("{gun}\n{}\n{hex}", w.role).as_str(), w.version)
                        .map_err(se)?;
                }
                if w.role == "timestamp" {
                    append_change(&mut feed, gun, w.version, tuf::sha256_hex(&w.raw), "update")?;
                }
                prune(
                    &mut meta,
                    &mut sums,
                    gun,
                    &w.role,
                    w.version,
                    self.retention.history,
                )?;
            }
        }
        tx.commit().map_err(se)?;
        self.cache.invalidate(gun);
        tracing::debug!(
            gun,
            commit_us = started.elapsed().as_micros() as u64,
            "stored update"
        );
        Ok(Committed::Stored)
    }

    /// Stored versions of `role` (oldest first).
    pub fn versions(&self, gun: &str, role: &str) -> Result<Vec<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let meta = tx.open_table(META).map_err(se)?;
        let lo = format!("{gun}\n{role}\n");
        let hi = format!("{gun}\n{role}\u{b}");
        let mut out = Vec::new();
        for item in meta.range(lo.as_str()..hi.as_str()).map_err(se)? {
            let (k, _) = item.map_err(se)?;
            if let Ok(v) = k.value()[lo.len()..].parse() {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Delete all metadata of `gun`. Returns whether anything existed.
    pub fn delete(&self, gun: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(se)?;
        let existed;
        {
            let (lo, hi) = prefix(gun);
            let mut meta = tx.open_table(META).map_err(se)?;
            let mut cur = tx.open_table(CURRENT).map_err(se)?;
            let mut sums = tx.open_table(CHECKSUM).map_err(se)?;
            let mut feed = tx.open_table(FEED).map_err(se)?;
            existed = cur
                .range(lo.as_str()..hi.as_str())
                .map_err(se)?
                .next()
                .is_some();
            meta.retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                .map_err(se)?;
            cur.retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                .map_err(se)?;
            sums.retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                .map_err(se)?;
            append_change(&mut feed, gun, 0, String::new(), "deletion")?;
        }
        tx.commit().map_err(se)?;
        self.cache.invalidate(gun);
        Ok(existed)
    }

    /// Changefeed: up to |records| records after `after_id` (records > 0), or
    /// the last |records| records up to `after_id` (records < 0; 0 = latest),
    /// optionally for one GUN.
    pub fn changes(
        &self,
        gun: Option<&str>,
        after_id: u64,
        records: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let feed = tx.open_table(FEED).map_err(se)?;
        let n = records.unsigned_abs() as usize;
        let matches = |c: &Change| gun.is_none_or(|g| c.gun == g);
        let mut out = Vec::new();
        if records >= 0 {
            for item in feed.range(after_id.saturating_add(1)..).map_err(se)? {
                let (_, v) = item.map_err(se)?;
                let c: Change = serde_json::from_slice(v.value()).map_err(se)?;
                if matches(&c) {
                    out.push(c);
                    if out.len() >= n {
                        break;
                    }
                }
            }
        } else {
            let upper = if after_id == 0 { u64::MAX } else { after_id };
            for item in feed.range(..=upper).map_err(se)?.rev() {
                let (_, v) = item.map_err(se)?;
                let c: Change = serde_json::from_slice(v.value()).map_err(se)?;
                if matches(&c) {
                    out.push(c);
                    if out.len() >= n {
                        break;
                    }
                }
            }
            out.reverse();
        }
        Ok(out)
    }
}

/// Checksum names of a file: sha256 (what clients use), sha384 and sha512.
fn checksums(raw: &[u8]) -> [String; 3] {
    [
        &ring::digest::SHA256,
        &ring::digest::SHA384,
        &ring::digest::SHA512,
    ]
    .map(|alg| tuf::hex(ring::digest::digest(alg, raw).as_ref()))
}

fn load_state(
    cur: &impl ReadableTable<&'static str, u64>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    gun: &str,
) -> Result<RepoState, StoreError> {
    let (lo, hi) = prefix(gun);
    let mut state = RepoState::default();
    for item in cur.range(lo.as_str()..hi.as_str()).map_err(se)? {
        let (k, v) = item.map_err(se)?;
        let role = k.value()[lo.len()..].to_string();
        let version = v.value();
        let raw = meta
            .get(format!("{gun}\n{role}\n{version:020}").as_str())
            .map_err(se)?
            .map(|g| g.value().to_vec())
            .ok_or_else(|| StoreError::Db(format!("missing {role} v{version}")))?;
        state.roles.insert(role, (version, raw));
    }
    Ok(state)
}

/// Drop the versions of `role` older than the last `keep` (root is never pruned), with their
/// checksum names.
fn prune(
    meta: &mut redb::Table<'_, &str, &[u8]>,
    sums: &mut redb::Table<'_, &str, u64>,
    gun: &str,
    role: &str,
    newest: u64,
    keep: u64,
) -> Result<(), StoreError> {
    if role == "root" || keep == 0 || newest <= keep {
        return Ok(());
    }
    let cut = newest - keep;
    let lo = format!("{gun}\n{role}\n{:020}", 0);
    let hi = format!("{gun}\n{role}\n{:020}", cut + 1);
    let mut old = Vec::new();
    for item in meta.range(lo.as_str()..hi.as_str()).map_err(se)? {
        let (k, v) = item.map_err(se)?;
        old.push((k.value().to_string(), v.value().to_vec()));
    }
    for (key, raw) in old {
        meta.remove(key.as_str()).map_err(se)?;
        for hex in checksums(&raw) {
            let name = format!("{gun}\n{role}\n{hex}");
            let stale = sums
                .get(name.as_str())
                .map_err(se)?
                .is_some_and(|v| v.value() <= cut);
            if stale {
                sums.remove(name.as_str()).map_err(se)?;
            }
        }
    }
    Ok(())
}
