//! Small helpers every layer uses: time formats and stop flags. A leaf module.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Waits until a stop/end flag turns true (or its sender is gone). The guard `wait_for` returns
/// is dropped here, so callers stay `Send`.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Docker's timestamp format (RFC 3339, UTC).
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Milliseconds since the epoch of a Docker timestamp; 0 when it does not parse.
pub fn unix_ms(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
