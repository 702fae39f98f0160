//! In-memory copies of the current metadata of each (GUN, role) that has been read, so a GET of
//! a hot file (`timestamp.json`, `targets.<sha256>.json`, …) is a map lookup and a reference
//! count instead of a redb read transaction and a copy.
//!
//! The store (`store::Store`) owns the cache and drops a GUN's entries after every write
//! to that GUN commits. A reader that loaded an entry from redb may only insert it if no write
//! committed since it started (a generation counter), so a slow reader can never put back the
//! bytes a concurrent upload just replaced.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use time::OffsetDateTime;

/// Bound on the bytes held; past it the cache starts over (it refills from reads).
const MAX_BYTES: usize = 64 << 20;
/// Bound on the number of (GUN, role) entries.
const MAX_ENTRIES: usize = 16_384;

/// The current version of one role, as stored.
#[derive(Debug)]
pub struct Current {
    pub version: u64,
    /// The stored bytes, served verbatim.
    pub raw: Bytes,
    /// Lower-case hex sha256 of `raw` (the checksum name clients use).
    pub sha256: String,
    /// For the server: when this file must be re-signed (`None` inside: it cannot be read, so
    /// now). Computed on first use, at most once per stored version.
    pub refresh_at: OnceLock<Option<OffsetDateTime>>,
}

impl Current {
    pub fn new(version: u64, raw: Bytes) -> Self {
        Current {
            version,
            sha256: crate::tuf::sha256_hex(&raw),
            raw,
            refresh_at: OnceLock::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Bumped by every invalidation.
    generation: u64,
    bytes: usize,
    entries: usize,
    /// GUN → role → current.
    map: HashMap<String, HashMap<String, Arc<Current>>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Cache {
    inner: RwLock<Inner>,
}

impl Cache {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, gun: &str, role: &str) -> Option<Arc<Current>> {
        self.read().map.get(gun)?.get(role).cloned()
    }

    /// Take this before reading what may later be passed to [`Cache::insert`].
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Remember `current` for (`gun`, `role`), unless a write was invalidated since
    /// `generation` was taken (then `current` may already be stale).
    pub fn insert(&self, generation: u64, gun: &str, role: &str, current: Arc<Current>) {
        let mut inner = self.write();
        if inner.generation != generation {
            return;
        }
        let size = current.raw.len();
        if size > MAX_BYTES / 4 {
            return;
        }
        if inner.bytes + size > MAX_BYTES || inner.entries >= MAX_ENTRIES {
            inner.map.clear();
            inner.bytes = 0;
            inner.entries = 0;
        }
        let old = inner
            .map
            .entry(gun.to_string())
            .or_default()
            .insert(role.to_string(), current);
        match old {
            Some(old) => inner.bytes -= old.raw.len(),
            None => inner.entries += 1,
        }
        inner.bytes += size;
    }

    /// Forget everything about `gun`; call after a write to it has committed.
    pub fn invalidate(&self, gun: &str) {
        let mut inner = self.write();
        inner.generation += 1;
        if let Some(roles) = inner.map.remove(gun) {
            inner.entries -= roles.len();
            inner.bytes -= roles.values().map(|c| c.raw.len()).sum::<usize>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(v: u64, s: &str) -> Arc<Current> {
        Arc::new(Current::new(v, Bytes::from(s.to_string())))
    }

    #[test]
    fn insert_get_invalidate() {
        let c = Cache::default();
        let g = c.generation();
        c.insert(g, "gun", "targets", cur(1, "a"));
        assert_eq!(c.get("gun", "targets").unwrap().version, 1);
        assert!(c.get("gun", "root").is_none());
        assert!(c.get("other", "targets").is_none());
        c.invalidate("gun");
        assert!(c.get("gun", "targets").is_none());
        let inner = c.read();
        assert_eq!((inner.entries, inner.bytes), (0, 0));
    }

    #[test]
    fn a_read_older_than_a_write_is_not_cached() {
        let c = Cache::default();
        let before = c.generation();
        // A write commits and invalidates while the reader is still reading…
        c.invalidate("gun");
        // …so what the reader read must not be kept.
        c.insert(before, "gun", "targets", cur(1, "stale"));
        assert!(c.get("gun", "targets").is_none());
        c.insert(c.generation(), "gun", "targets", cur(2, "fresh"));
        assert_eq!(&c.get("gun", "targets").unwrap().raw[..], b"fresh");
    }

    #[test]
    fn stays_within_its_bounds() {
        let c = Cache::default();
        for i in 0..(MAX_ENTRIES + 10) {
            c.insert(c.generation(), &format!("gun{i}"), "timestamp", cur(1, "x"));
        }
        let inner = c.read();
        assert!(inner.entries <= MAX_ENTRIES);
        assert_eq!(inner.bytes, inner.entries);
    }
}
