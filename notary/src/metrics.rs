//! Prometheus metrics for `/metrics` (text format 0.0.4): requests by route and status, a
//! latency histogram per route, uploads refused by reason, signer calls and errors, and the
//! metadata cache. Routes and reasons are fixed sets, so no label comes from a client.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A route class: the label of every request metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Health,
    Metrics,
    Ping,
    Changefeed,
    Metadata,
    Upload,
    Key,
    Delete,
    Token,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Ping => "ping",
            Route::Changefeed => "changefeed",
            Route::Metadata => "metadata",
            Route::Upload => "upload",
            Route::Key => "key",
            Route::Delete => "delete",
            Route::Token => "token",
            Route::Other => "other",
        }
    }
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    by_route: Mutex<BTreeMap<(Route, u16), u64>>,
    latency: Mutex<BTreeMap<Route, Histogram>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    pub uploads_accepted: AtomicU64,
    pub uploads_noop: AtomicU64,
    pub metadata_served: AtomicU64,
    pub not_found: AtomicU64,
    pub signer_calls: AtomicU64,
    pub signer_errors: AtomicU64,
    pub auth_refused: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = l.entry(route).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// An upload refused, by a fixed reason name.
    pub fn refused(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn uploads_rejected(&self) -> u64 {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// The text exposition; `cache` is (hits, misses).
    pub fn render(&self, cache: (u64, u64)) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# TYPE swarmguard_trust_requests_total counter\nswarmguard_trust_requests_total {}",
            get(&self.requests)
        );
        o.push_str("# HELP swarmguard_trust_http_requests_total Requests by route and status.\n# TYPE swarmguard_trust_http_requests_total counter\n");
        for ((r, s), n) in self
            .by_route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "swarmguard_trust_http_requests_total{{route=\"{}\",status=\"{s}\"}} {n}",
                r.label()
            );
        }
        o.push_str("# HELP swarmguard_trust_request_seconds Request latency by route.\n# TYPE swarmguard_trust_request_seconds histogram\n");
        for (r, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (b, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    o,
                    "swarmguard_trust_request_seconds_bucket{{route=\"{}\",le=\"{b}\"}} {n}",
                    r.label()
                );
            }
            let l = r.label();
            let _ = writeln!(
                o,
                "swarmguard_trust_request_seconds_bucket{{route=\"{l}\",le=\"+Inf\"}} {}\nswarmguard_trust_request_seconds_sum{{route=\"{l}\"}} {}\nswarmguard_trust_request_seconds_count{{route=\"{l}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            o,
            "# TYPE swarmguard_trust_uploads_total counter\nswarmguard_trust_uploads_total{{result=\"accepted\"}} {}\nswarmguard_trust_uploads_total{{result=\"noop\"}} {}\nswarmguard_trust_uploads_total{{result=\"rejected\"}} {}",
            get(&self.uploads_accepted),
            get(&self.uploads_noop),
            self.uploads_rejected()
        );
        o.push_str("# TYPE swarmguard_trust_uploads_refused_total counter\n");
        for (reason, n) in self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "swarmguard_trust_uploads_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        for (name, v) in [
            ("metadata_served_total", get(&self.metadata_served)),
            ("not_found_total", get(&self.not_found)),
            ("signer_calls_total", get(&self.signer_calls)),
            ("signer_errors_total", get(&self.signer_errors)),
            ("auth_refused_total", get(&self.auth_refused)),
            ("connections_refused_total", get(&self.connections_refused)),
            ("cache_hits_total", cache.0),
            ("cache_misses_total", cache.1),
        ] {
            let _ = writeln!(
                o,
                "# TYPE swarmguard_trust_{name} counter\nswarmguard_trust_{name} {v}"
            );
        }
        o
    }
}
