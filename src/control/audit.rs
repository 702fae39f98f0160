//! The audit log: one JSON line per security decision under the data dir (`audit.log`), each
//! carrying its sequence number, the SHA-256 of the previous line and its own SHA-256, so an
//! edited byte or a removed line breaks the chain where it happened (`swarmguard audit verify`).
//! `audit.head` holds the last line's number and hash, so a cut at the end shows too.
//!
//! Never a secret value, a token or a key: events carry IDs, names, roles and digests only.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub const LOG_FILE: &str = "audit.log";
pub const HEAD_FILE: &str = "audit.head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A line longer than this is not one the manager wrote.
const MAX_LINE: usize = 64 * 1024;

/// What happened. Only identifiers and decisions, never secret material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    NodeJoined {
        node_id: String,
        role: String,
        addr: String,
    },
    CertificateIssued {
        node_id: String,
        role: String,
        renewal: bool,
    },
    TokenRotated {
        role: String,
    },
    SecretCreated {
        secret_id: String,
        name: String,
    },
    SecretRemoved {
        secret_id: String,
        name: String,
    },
    SecretDelivered {
        secret_id: String,
        node_id: String,
        task_ids: Vec<String>,
    },
    SecretWithdrawn {
        secret_id: String,
        node_id: String,
    },
    ImageDecision {
        service: String,
        image: String,
        allowed: bool,
        /// `name:tag@sha256:…` when allowed; the reason when refused.
        outcome: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    time: String,
    prev: String,
    #[serde(flatten)]
    event: AuditEvent,
    /// SHA-256 of this line serialized without `hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

struct Tail {
    /// Shared with the flush that makes lines durable outside the tail's lock.
    file: Arc<File>,
    seq: u64,
    last: String,
}

/// The append side, owned by `Control`; clones share one log.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tail: Mutex<Option<Tail>>,
    /// The highest sequence number known durable. Group commit: one `fdatasync` covers every
    /// line written before it started, so concurrent events share it instead of queueing one
    /// 4 ms flush each behind the tail's lock.
    synced: Mutex<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("{path}: cannot read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
}

impl AuditLog {
    /// Opens (creating) `audit.log` in `dir`, continuing the chain from its last line.
    pub fn open(dir: &Path) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                tail: Mutex::new(None),
                synced: Mutex::new(0),
            }),
        }
    }

    fn open_tail(&self) -> std::io::Result<Tail> {
        let path = self.inner.dir.join(LOG_FILE);
        let (mut seq, mut last) = (0, GENESIS.to_string());
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    seq = l.seq;
                    last = l.hash;
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Tail {
            file: Arc::new(file),
            seq,
            last,
        })
    }

    /// Appends one event and returns once it is durable. A failure to write is logged, never
    /// fatal to the decision itself. Blocks on the disk: async callers on a hot path use
    /// [`AuditLog::record_async`].
    pub fn record(&self, event: AuditEvent) {
        if let Err(e) = self
            .append(event)
            .and_then(|(seq, file)| self.flush(seq, &file))
        {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// [`AuditLog::record`] on a blocking thread: the flush does not hold a runtime worker.
    pub async fn record_async(&self, event: AuditEvent) {
        let log = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || log.record(event)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Makes every line up to `seq` durable, sharing one flush with concurrent callers.
    fn flush(&self, seq: u64, file: &File) -> std::io::Result<()> {
        let mut synced = self.inner.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= seq {
            return Ok(());
        }
        // Every line written so far is in the file before this flush starts.
        let upto = self
            .inner
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(seq, |t| t.seq);
        file.sync_data()?;
        *synced = upto.max(seq);
        Ok(())
    }

    /// Writes one line (not yet flushed); its sequence number and the file to flush.
    fn append(&self, event: AuditEvent) -> std::io::Result<(u64, Arc<File>)> {
        let mut guard = self.inner.tail.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.open_tail()?);
        }
        let Some(tail) = guard.as_mut() else {
            return Err(std::io::Error::other("the audit log is not open"));
        };
        let mut line = Line {
            seq: tail.seq + 1,
            time: crate::util::now_rfc3339(),
            prev: tail.last.clone(),
            event,
            hash: String::new(),
        };
        line.hash = sha256_hex(&serde_json::to_vec(&line)?);
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        (&*tail.file).write_all(&bytes)?;
        tail.seq = line.seq;
        tail.last = line.hash.clone();
        let head = self.inner.dir.join(HEAD_FILE);
        let tmp = self.inner.dir.join(format!("{HEAD_FILE}.tmp"));
        std::fs::write(&tmp, format!("{} {}\n", line.seq, line.hash))?;
        std::fs::rename(&tmp, &head)?;
        Ok((line.seq, tail.file.clone()))
    }
}

/// Checks the chain of `dir/audit.log` against itself and `audit.head`; returns the number of
/// lines. The error names the first line where the chain breaks.
pub fn verify(dir: &Path) -> Result<u64, VerifyError> {
    let path = dir.join(LOG_FILE);
    let unreadable = |e: std::io::Error| VerifyError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = File::open(&path).map_err(unreadable)?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for raw in BufReader::new(file).split(b'\n') {
        let raw = raw.map_err(unreadable)?;
        n += 1;
        let broken = |reason: String| VerifyError::Broken { line: n, reason };
        if raw.len() > MAX_LINE {
            return Err(broken("longer than any line the manager writes".into()));
        }
        let mut line: Line = serde_json::from_slice(&raw)
            .map_err(|e| broken(format!("not an audit record ({e}): the line was altered")))?;
        if line.seq != n {
            return Err(broken(format!(
                "sequence number {} where {n} was expected: a line before it was removed or reordered",
                line.seq
            )));
        }
        if line.prev != prev {
            return Err(broken(
                "the previous line's hash does not match: the line before it was altered or removed"
                    .into(),
            ));
        }
        let claimed = std::mem::take(&mut line.hash);
        let actual = sha256_hex(&serde_json::to_vec(&line).map_err(|e| broken(e.to_string()))?);
        if claimed != actual {
            return Err(broken(
                "its content does not match its hash: the line was altered".into(),
            ));
        }
        // Re-serializing must give the bytes on disk, or something outside the hash changed.
        line.hash = claimed.clone();
        if serde_json::to_vec(&line).map_err(|e| broken(e.to_string()))? != raw {
            return Err(broken(
                "the line's bytes differ from the record it holds: altered".into(),
            ));
        }
        prev = claimed;
    }
    let head = std::fs::read_to_string(dir.join(HEAD_FILE)).unwrap_or_default();
    let expected = format!("{n} {prev}");
    if !head.is_empty() && head.trim() != expected {
        return Err(VerifyError::Broken {
            line: n + 1,
            reason: format!(
                "the log ends after line {n}, but {HEAD_FILE} records {:?}: lines were removed from the end",
                head.trim()
            ),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path());
        for i in 0..n {
            log.record(AuditEvent::SecretCreated {
                secret_id: format!("id{i}"),
                name: format!("s{i}"),
            });
        }
        dir
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(LOG_FILE), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_chain_verifies_and_continues_after_reopen() {
        let dir = log_with(3);
        assert_eq!(verify(dir.path()), Ok(3));
        AuditLog::open(dir.path()).record(AuditEvent::TokenRotated {
            role: "worker".into(),
        });
        assert_eq!(verify(dir.path()), Ok(4));
    }

    /// Events recorded at once from many threads (sharing flushes) form one intact chain, and
    /// the last of them is known durable.
    #[test]
    fn concurrent_events_share_flushes_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path());
        std::thread::scope(|scope| {
            for t in 0..8 {
                let log = log.clone();
                scope.spawn(move || {
                    for i in 0..25 {
                        log.record(AuditEvent::SecretCreated {
                            secret_id: format!("id{t}-{i}"),
                            name: format!("s{t}-{i}"),
                        });
                    }
                });
            }
        });
        assert_eq!(verify(dir.path()), Ok(200));
        assert_eq!(
            *log.inner.synced.lock().unwrap(),
            200,
            "the last line is durable"
        );
    }

    #[test]
    fn one_changed_byte_is_named_by_line() {
        let dir = log_with(4);
        let mut l = lines(dir.path());
        l[1] = l[1].replacen("s1", "s9", 1);
        write(dir.path(), &l);
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, VerifyError::Broken { line: 2, .. }), "{err}");
    }

    #[test]
    fn a_removed_line_is_named() {
        let dir = log_with(4);
        let mut l = lines(dir.path());
        l.remove(2);
        write(dir.path(), &l);
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, VerifyError::Broken { line: 3, .. }), "{err}");
        // A cut at the end is caught by the head file.
        let dir = log_with(3);
        let mut l = lines(dir.path());
        l.pop();
        write(dir.path(), &l);
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, VerifyError::Broken { line: 3, .. }), "{err}");
    }
}
