//! Who may hold a connection to the cluster port, and how many.
//!
//! Anyone on the network can open TCP connections to the cluster port, so each one takes a
//! [`Slot`] before it costs anything: a TLS handshake (and the HTTP/2 preface after it) is
//! *pending*, bounded per peer address and in total; a finished connection is *anonymous* (no
//! client certificate: a join in progress) or *certified*. Pending and anonymous connections
//! have caps of their own that add up to half of the total, so nodes that hold a certificate
//! always find room; a full anonymous share does not keep them from handshaking. When the
//! anonymous share is full, a new anonymous connection (a join) takes the place of the oldest
//! one that has been open for [`LimitConfig::evict_anonymous_after`]: holding places
//! with idle connections from many addresses then only churns them, and a join, which takes
//! well under a second, gets through. The total stays below the process's descriptor limit with a reserve, so a flood on this
//! port never starves the Engine API, the store's files or a TLS reload of descriptors.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Descriptors kept out of the cluster port's reach: the Engine API's connections, the store's
/// files, TLS material reloads, logs. At least this many, or a quarter of the limit.
pub const FD_RESERVE: usize = 256;
/// Connections the cluster port serves at most, whatever the descriptor limit.
pub const MAX_CONNECTIONS: usize = 65_536;
/// The soft limit assumed when /proc/self/limits cannot be read (Linux's default).
const DEFAULT_NOFILE: usize = 1024;
/// An anonymous connection younger than this is never closed to make room for another.
pub const EVICT_ANONYMOUS_AFTER: Duration = Duration::from_secs(1);

/// Caps, per peer address and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// TLS handshakes (and HTTP/2 prefaces) in progress from one address.
    pub per_ip_pending: usize,
    /// Finished connections without a client certificate from one address (several nodes
    /// behind one NAT may join at once).
    pub per_ip_anonymous: usize,
    /// All connections from one address (nodes behind a NAT share it).
    pub per_ip_total: usize,
    /// Handshakes in progress in total.
    pub max_pending: usize,
    /// Finished connections without a client certificate in total. With `max_pending`, what
    /// peers without a certificate can ever take.
    pub max_anonymous: usize,
    /// All connections.
    pub max_total: usize,
    /// When the anonymous share is full, the oldest anonymous connection open at least this
    /// long is closed to make room for a new one.
    pub evict_anonymous_after: Duration,
}

impl LimitConfig {
    /// Caps for a process that may open `nofile` descriptors.
    pub fn for_descriptor_limit(nofile: usize) -> LimitConfig {
        let reserve = FD_RESERVE.max(nofile / 4);
        let max_total = nofile.saturating_sub(reserve).clamp(16, MAX_CONNECTIONS);
        let max_pending = (max_total / 4).clamp(4, 1024);
        LimitConfig {
            per_ip_pending: 16,
            per_ip_anonymous: 32,
            per_ip_total: 1024.min(max_total),
            max_pending,
            max_anonymous: max_total / 2 - max_pending,
            max_total,
            evict_anonymous_after: EVICT_ANONYMOUS_AFTER,
        }
    }

    /// Caps for this process's descriptor limit.
    pub fn from_process() -> LimitConfig {
        let nofile = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| soft_nofile(&s))
            .unwrap_or(DEFAULT_NOFILE);
        LimitConfig::for_descriptor_limit(nofile)
    }
}

/// The soft "Max open files" limit from the text of /proc/self/limits (`unlimited` counts as
/// [`MAX_CONNECTIONS`] plus the reserve).
pub fn soft_nofile(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(MAX_CONNECTIONS * 2);
    }
    soft.parse().ok()
}

/// Why a connection was turned away (logged at debug: a flood must not flood the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many handshakes in progress from this address")]
    PeerPending,
    #[error("too many connections without a client certificate from this address")]
    PeerAnonymous,
    #[error("too many connections from this address")]
    PeerTotal,
    #[error("too many handshakes in progress")]
    Pending,
    #[error("too many connections without a client certificate")]
    Anonymous,
    #[error("too many connections")]
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pending,
    Anonymous,
    Certified,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    pending: usize,
    anonymous: usize,
    total: usize,
}

impl Counts {
    fn add(&mut self, class: Class) {
        match class {
            Class::Pending => self.pending += 1,
            Class::Anonymous => self.anonymous += 1,
            Class::Certified => {}
        }
        self.total += 1;
    }
    fn remove(&mut self, class: Class) {
        match class {
            Class::Pending => self.pending -= 1,
            Class::Anonymous => self.anonymous -= 1,
            Class::Certified => {}
        }
        self.total -= 1;
    }
}

#[derive(Default)]
struct State {
    all: Counts,
    per_ip: HashMap<IpAddr, Counts>,
    /// Anonymous connections in the order they were established: when, and how to close it.
    anonymous: BTreeMap<u64, (Instant, Arc<Notify>)>,
    next_seq: u64,
}

/// The cluster port's connection accounting. Cheap to share.
pub struct Limits {
    config: LimitConfig,
    state: Mutex<State>,
}

impl Limits {
    pub fn new(config: LimitConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            state: Mutex::new(State::default()),
        })
    }

    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new TCP connection from `ip`: a pending slot, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let c = &self.config;
        let mut s = self.lock();
        let peer = s.per_ip.get(&ip).copied().unwrap_or_default();
        if peer.total >= c.per_ip_total {
            return Err(Refused::PeerTotal);
        }
        if peer.pending >= c.per_ip_pending {
            return Err(Refused::PeerPending);
        }
        if s.all.total >= c.max_total {
            return Err(Refused::Total);
        }
        if s.all.pending >= c.max_pending {
            return Err(Refused::Pending);
        }
        s.all.add(Class::Pending);
        s.per_ip.entry(ip).or_default().add(Class::Pending);
        Ok(Slot {
            limits: self.clone(),
            ip,
            class: Class::Pending,
            seq: 0,
            evict: None,
        })
    }

    /// Connections in use now: (pending, anonymous, total).
    #[allow(dead_code)] // read by tests
    pub fn in_use(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.all.pending, s.all.anonymous, s.all.total)
    }
}

/// One connection's place in the accounting; given back on drop.
pub struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
    class: Class,
    /// Anonymous: its place in the eviction order, and the signal that closes it.
    seq: u64,
    evict: Option<Arc<Notify>>,
}

impl Slot {
    /// The handshake and preface are done: the connection keeps its place as certified, or as
    /// anonymous if the per-address and total anonymous caps allow.
    pub fn establish(mut self, certified: bool) -> Result<Slot, Refused> {
        let limits = self.limits.clone();
        let mut guard = limits.lock();
        let s = &mut *guard;
        if !certified {
            let peer_anonymous = s.per_ip.get(&self.ip).map_or(0, |c| c.anonymous);
            let why = if peer_anonymous >= limits.config.per_ip_anonymous {
                Some(Refused::PeerAnonymous)
            } else if s.all.anonymous >= limits.config.max_anonymous
                && !evict_oldest(&mut s.anonymous, limits.config.evict_anonymous_after)
            {
                Some(Refused::Anonymous)
            } else {
                None
            };
            if let Some(why) = why {
                drop(guard);
                return Err(why);
            }
            let notify = Arc::new(Notify::new());
            s.next_seq += 1;
            self.seq = s.next_seq;
            s.anonymous
                .insert(self.seq, (Instant::now(), notify.clone()));
            self.evict = Some(notify);
        }
        let peer = s.per_ip.entry(self.ip).or_default();
        let to = if certified {
            Class::Certified
        } else {
            Class::Anonymous
        };
        for counts in [&mut s.all, peer] {
            counts.remove(self.class);
            counts.add(to);
        }
        self.class = to;
        drop(guard);
        Ok(self)
    }
}

impl Slot {
    /// Completes when the connection must close to make room for a newer anonymous one.
    pub fn evicted(&self) -> Option<tokio::sync::futures::OwnedNotified> {
        self.evict.clone().map(|n| n.notified_owned())
    }
}

/// Signals the oldest anonymous connection open at least `after` to close (it gives its place
/// back when it is dropped); false if none is that old.
fn evict_oldest(order: &mut BTreeMap<u64, (Instant, Arc<Notify>)>, after: Duration) -> bool {
    let Some(entry) = order.first_entry() else {
        return false;
    };
    if entry.get().0.elapsed() < after {
        return false;
    }
    let (_, notify) = entry.remove();
    notify.notify_one();
    true
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.limits.lock();
        if self.class == Class::Anonymous {
            s.anonymous.remove(&self.seq);
        }
        s.all.remove(self.class);
        if let Some(peer) = s.per_ip.get_mut(&self.ip) {
            peer.remove(self.class);
            if peer.total == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn small() -> Arc<Limits> {
        Limits::new(LimitConfig {
            per_ip_pending: 2,
            per_ip_anonymous: 2,
            per_ip_total: 4,
            max_pending: 4,
            max_anonymous: 3,
            max_total: 10,
            evict_anonymous_after: Duration::from_secs(3600),
        })
    }

    #[test]
    fn reads_the_soft_descriptor_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            20000                1048576              files     \n";
        assert_eq!(soft_nofile(text), Some(20000));
        assert_eq!(
            soft_nofile("Max open files  unlimited unlimited files"),
            Some(MAX_CONNECTIONS * 2)
        );
        assert_eq!(soft_nofile("Max processes 1 1 processes"), None);
        assert!(LimitConfig::from_process().max_total >= 16);
    }

    #[test]
    fn a_reserve_of_descriptors_stays_out_of_reach() {
        let c = LimitConfig::for_descriptor_limit(20_000);
        assert_eq!(c.max_total, 15_000);
        assert_eq!(c.max_pending, 1024);
        assert_eq!(c.max_anonymous, 7_500 - 1024);
        let c = LimitConfig::for_descriptor_limit(1024);
        assert_eq!(c.max_total, 768);
        assert_eq!(c.max_pending + c.max_anonymous, 384);
        // Even a tiny limit leaves a working port and the reserve.
        assert_eq!(LimitConfig::for_descriptor_limit(100).max_total, 16);
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_share_of_handshakes() {
        let l = small();
        let a = l.admit(ip(1)).unwrap();
        let _b = l.admit(ip(1)).unwrap();
        assert_eq!(l.admit(ip(1)).err(), Some(Refused::PeerPending));
        // Another address is still served.
        let _c = l.admit(ip(2)).unwrap();
        drop(a);
        let _a = l.admit(ip(1)).unwrap();
        assert_eq!(l.in_use(), (3, 0, 3));
    }

    #[test]
    fn anonymous_connections_leave_room_for_certified_ones() {
        let l = small();
        // Anonymous connections from many addresses fill their share (3 of 10)...
        let anon: Vec<_> = (0..3)
            .map(|n| l.admit(ip(10 + n)).unwrap().establish(false).unwrap())
            .collect();
        let more = l.admit(ip(50)).unwrap();
        assert_eq!(more.establish(false).err(), Some(Refused::Anonymous));
        // ...and pending handshakes theirs (4)...
        let pending: Vec<_> = (0..4).map(|n| l.admit(ip(20 + n)).unwrap()).collect();
        assert_eq!(l.admit(ip(50)).err(), Some(Refused::Pending));
        assert_eq!(l.in_use(), (4, 3, 7));
        drop(pending);
        // ...yet a node with a certificate still gets in, up to the total.
        let certified: Vec<_> = (0..7)
            .map(|n| l.admit(ip(30 + n)).unwrap().establish(true).unwrap())
            .collect();
        assert_eq!(l.in_use(), (0, 3, 10));
        assert_eq!(l.admit(ip(50)).err(), Some(Refused::Total));
        drop((anon, certified));
        assert_eq!(l.in_use(), (0, 0, 0));
        assert!(
            l.lock().per_ip.is_empty(),
            "no per-address entry outlives its connections"
        );
    }

    #[tokio::test]
    async fn a_full_anonymous_share_closes_its_oldest_connection_for_a_new_one() {
        let l = Limits::new(LimitConfig {
            evict_anonymous_after: Duration::from_millis(50),
            ..*small().config()
        });
        let old: Vec<_> = (0..3)
            .map(|n| l.admit(ip(10 + n)).unwrap().establish(false).unwrap())
            .collect();
        let oldest = old[0].evicted().unwrap();
        let second = old[1].evicted().unwrap();
        // Too young to be closed for another: refused.
        let young = l.admit(ip(20)).unwrap();
        assert_eq!(young.establish(false).err(), Some(Refused::Anonymous));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let new = l.admit(ip(20)).unwrap().establish(false).unwrap();
        tokio::time::timeout(Duration::from_secs(1), oldest)
            .await
            .expect("the oldest connection is told to close");
        // Only the oldest.
        assert!(tokio::time::timeout(Duration::from_millis(50), second)
            .await
            .is_err());
        // Its place comes back when it closes.
        assert_eq!(l.in_use(), (0, 4, 4));
        drop(old);
        drop(new);
        assert_eq!(l.in_use(), (0, 0, 0));
        assert!(l.lock().anonymous.is_empty());
    }

    #[test]
    fn per_address_caps_hold_for_anonymous_and_total() {
        let l = small();
        let a = l.admit(ip(1)).unwrap().establish(false).unwrap();
        let b = l.admit(ip(1)).unwrap().establish(false).unwrap();
        let c = l.admit(ip(1)).unwrap();
        assert_eq!(c.establish(false).err(), Some(Refused::PeerAnonymous));
        let c = l.admit(ip(1)).unwrap().establish(true).unwrap();
        let d = l.admit(ip(1)).unwrap().establish(true).unwrap();
        assert_eq!(l.admit(ip(1)).err(), Some(Refused::PeerTotal));
        drop((a, b, c, d));
        assert_eq!(l.in_use(), (0, 0, 0));
    }

    #[test]
    fn the_total_is_a_hard_cap() {
        let l = small();
        let held: Vec<_> = (0..10)
            .map(|n| l.admit(ip(n)).unwrap().establish(true).unwrap())
            .collect();
        assert_eq!(l.admit(ip(99)).err(), Some(Refused::Total));
        drop(held);
    }
}
