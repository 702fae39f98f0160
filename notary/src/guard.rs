//! Bounds on what clients can make the server hold: connections per peer address, bytes of
//! upload bodies in flight, and fixed-window rate limits keyed by a name (a repository, a
//! user, a peer address). Each is a small, explicit piece of state owned by the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open connections per peer address, capped.
pub struct PeerConnections {
    per_peer: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; released on drop.
pub struct PeerSlot {
    owner: Arc<PeerConnections>,
    ip: IpAddr,
}

impl PeerConnections {
    pub fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(PeerConnections {
            per_peer,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when that address has its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.owner.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A global budget of upload bytes held in memory at once, in KiB units (the semaphore counts
/// permits in `u32`).
pub struct ByteBudget {
    kib: Arc<tokio::sync::Semaphore>,
}

/// Bytes reserved from a [`ByteBudget`]; returned on drop.
pub struct Reservation {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        ByteBudget {
            kib: Arc::new(tokio::sync::Semaphore::new(bytes.div_ceil(1024).max(1))),
        }
    }

    /// Reserve `bytes` now, or `None` if the budget does not have them (the caller refuses
    /// the upload rather than queueing it: a queue would hold the connection anyway).
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).ok()?;
        self.kib
            .clone()
            .try_acquire_many_owned(kib)
            .ok()
            .map(|p| Reservation { _permit: p })
    }
}

/// At most `max` events per `window` for each key (fixed windows). Remembers at most
/// `MAX_KEYS` keys: past that, expired windows are swept, and if none expired the new key is
/// refused (an attacker cycling keys cannot make the map grow without bound).
pub struct RateLimit {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<String, (Instant, u32)>>,
}

const MAX_KEYS: usize = 100_000;

impl RateLimit {
    pub fn new(max: u32, window: Duration) -> Self {
        RateLimit {
            max,
            window,
            seen: Mutex::default(),
        }
    }

    /// Count one event for `key`; false if the key is over its limit.
    pub fn hit(&self, key: &str) -> bool {
        self.check(key, true)
    }

    /// Whether `key` is still under its limit, without counting anything.
    pub fn allows(&self, key: &str) -> bool {
        self.check(key, false)
    }

    fn check(&self, key: &str, count: bool) -> bool {
        if self.max == 0 {
            return false;
        }
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        if !seen.contains_key(key) && seen.len() >= MAX_KEYS {
            let window = self.window;
            seen.retain(|_, (start, _)| now.duration_since(*start) < window);
            if seen.len() >= MAX_KEYS {
                return false;
            }
        }
        let e = seen.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        if e.1 >= self.max {
            return false;
        }
        if count {
            e.1 += 1;
        }
        true
    }
}

/// One lock per name (a repository), so that work on one name never waits for another's.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl KeyedLocks {
    /// Run `f` holding the lock for `name`.
    pub fn with<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let l = lock(&self.locks)
            .entry(name.to_string())
            .or_default()
            .clone();
        let out = {
            let _held = lock(&l);
            f()
        };
        self.forget_if_idle(name, &l);
        out
    }

    /// Run `f` holding the lock for `name` if nobody holds it; `None` without running `f`
    /// otherwise (the caller has something better to do than queue).
    pub fn try_with<T>(&self, name: &str, f: impl FnOnce() -> T) -> Option<T> {
        let l = lock(&self.locks)
            .entry(name.to_string())
            .or_default()
            .clone();
        let out = match l.try_lock() {
            Ok(_held) => Some(f()),
            Err(_) => None,
        };
        self.forget_if_idle(name, &l);
        out
    }

    fn forget_if_idle(&self, name: &str, l: &Arc<Mutex<()>>) {
        let mut locks = lock(&self.locks);
        // Two references: the map's and ours. Nobody else waits: forget the name.
        if Arc::strong_count(l) == 2 {
            locks.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_cap_is_per_address_and_released_on_drop() {
        let p = PeerConnections::new(2);
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let s1 = p.admit(a).unwrap();
        let _s2 = p.admit(a).unwrap();
        assert!(p.admit(a).is_none());
        assert!(p.admit(b).is_some());
        drop(s1);
        assert!(p.admit(a).is_some());
    }

    #[test]
    fn byte_budget_refuses_past_its_size() {
        let b = ByteBudget::new(10 * 1024);
        let r = b.try_reserve(8 * 1024).unwrap();
        assert!(b.try_reserve(4 * 1024).is_none());
        drop(r);
        assert!(b.try_reserve(4 * 1024).is_some());
    }

    #[test]
    fn rate_limit_counts_per_key() {
        let r = RateLimit::new(2, Duration::from_secs(3600));
        assert!(r.hit("a") && r.hit("a"));
        assert!(!r.hit("a"));
        assert!(!r.allows("a"));
        assert!(r.allows("b") && r.hit("b"));
        assert!(!RateLimit::new(0, Duration::from_secs(1)).hit("x"));
    }

    #[test]
    fn keyed_locks_forget_idle_names() {
        let k = KeyedLocks::default();
        assert_eq!(k.with("a", || 1), 1);
        assert!(lock(&k.locks).is_empty());
        assert_eq!(k.try_with("a", || 2), Some(2));
        assert!(lock(&k.locks).is_empty());
    }

    #[test]
    fn try_with_does_not_wait_for_a_held_name() {
        let k = KeyedLocks::default();
        k.with("a", || {
            assert_eq!(k.try_with("a", || 1), None);
            assert_eq!(k.try_with("b", || 2), Some(2));
        });
    }
}
