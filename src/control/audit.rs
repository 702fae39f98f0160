//! The audit log: one JSON line per security decision under the data dir (`audit.log`), each
//! carrying its sequence number, the SHA-256 of the previous line and its own SHA-256, so an
//! edited byte or a removed line breaks the chain where it happened (`swarmguard audit verify`).
//! `audit.head` holds the last line's number and hash, so a cut at the end shows too.
//!
//! Never a secret value, a token or a key: events carry IDs, names, roles and digests only.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

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
    /// Follows a `secret_created` line (written alongside the create's Raft entry) whose write
    /// then failed; the secret does not exist, or (when the store could not confirm the
    /// write) may not.
    SecretCreateFailed {
        secret_id: String,
        name: String,
        reason: String,
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
    file: File,
    seq: u64,
    last: String,
    /// `audit.head`, rewritten in place after each write (see [`append`]).
    head: File,
    head_len: u64,
}

/// Most events one write (and one fdatasync) takes.
const MAX_BATCH: usize = 1024;

/// One event for the writer thread, and who waits for it to be on disk.
struct Job {
    event: Option<AuditEvent>,
    done: tokio::sync::oneshot::Sender<()>,
}

/// The append side, owned by `Control`. Appends are group-committed by one writer thread:
/// everything queued since its last write goes out as one write and one fdatasync, so
/// concurrent decisions (secret creates from many clients) share an fsync instead of queueing
/// for one each behind a lock, and no caller blocks an async worker on disk I/O.
pub struct AuditLog {
    /// `None` once dropped (closing the queue ends the writer) or if the writer did not start.
    queue: Option<std::sync::mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Resolves once the event is on disk (or its write failed, which is logged). Dropping it does
/// not cancel the write.
pub struct Recorded(Option<tokio::sync::oneshot::Receiver<()>>);

impl std::future::Future for Recorded {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.0.as_mut() {
            // An error means the writer is gone: there is nothing left to wait for.
            Some(rx) => std::pin::Pin::new(rx).poll(cx).map(|_| ()),
            None => std::task::Poll::Ready(()),
        }
    }
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
        let (queue, jobs) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        match std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(&dir, jobs))
        {
            Ok(writer) => AuditLog {
                queue: Some(queue),
                writer: Some(writer),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the audit log writer: no audit lines will be written");
                AuditLog {
                    queue: None,
                    writer: None,
                }
            }
        }
    }

    /// Queues one event; await the answer where the decision must not be reported before its
    /// line is on disk. A failure to write is logged, never fatal to the decision itself.
    pub fn record(&self, event: AuditEvent) -> Recorded {
        let (done, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            event: Some(event),
            done,
        };
        match self.queue.as_ref().map(|q| q.send(job)) {
            Some(Ok(())) => Recorded(Some(rx)),
            _ => {
                tracing::error!("cannot write the audit log: its writer stopped");
                Recorded(None)
            }
        }
    }

    /// Resolves once every event recorded before the call is on disk.
    pub fn synced(&self) -> Recorded {
        let (done, rx) = tokio::sync::oneshot::channel();
        match self
            .queue
            .as_ref()
            .map(|q| q.send(Job { event: None, done }))
        {
            Some(Ok(())) => Recorded(Some(rx)),
            _ => Recorded(None),
        }
    }
}

impl Drop for AuditLog {
    /// Writes what is still queued before the log goes away.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("the audit log writer panicked");
            }
        }
    }
}

fn open_tail(dir: &Path) -> std::io::Result<Tail> {
    let path = dir.join(LOG_FILE);
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
    let head = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(HEAD_FILE))?;
    let head_len = head.metadata()?.len();
    Ok(Tail {
        file,
        seq,
        last,
        head,
        head_len,
    })
}

/// The writer thread: takes every job queued so far (up to [`MAX_BATCH`]), appends their lines
/// with one write and one fdatasync, then answers each job, in order.
fn writer_loop(dir: &Path, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut tail: Option<Tail> = None;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = batch.iter_mut().filter_map(|j| j.event.take()).collect();
        if !events.is_empty() {
            if let Err(e) = append(dir, &mut tail, events) {
                tracing::error!(error = %e, "cannot write the audit log");
                // Re-read the chain's end from the file before the next write.
                tail = None;
            }
        }
        for j in batch {
            let _ = j.done.send(());
        }
    }
}

/// Appends `events` as chained lines in one write and one fdatasync, then moves `audit.head`.
fn append(dir: &Path, tail: &mut Option<Tail>, events: Vec<AuditEvent>) -> std::io::Result<()> {
    if tail.is_none() {
        *tail = Some(open_tail(dir)?);
    }
    let Some(t) = tail.as_mut() else {
        return Ok(());
    };
    let (mut seq, mut last) = (t.seq, t.last.clone());
    let mut bytes = Vec::new();
    for event in events {
        let line = Line {
            seq: seq + 1,
            time: crate::util::now_rfc3339(),
            prev: last,
            event,
            hash: String::new(),
        };
        // Serialized once: `hash` is the last field and hex, so the line with it is the line
        // without it plus `,"hash":"…"` before the closing brace (what `verify` re-serializes).
        let unhashed = serde_json::to_vec(&line)?;
        let hash = sha256_hex(&unhashed);
        bytes.extend_from_slice(&unhashed[..unhashed.len() - 1]);
        bytes.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
        seq = line.seq;
        last = hash;
    }
    t.file.write_all(&bytes)?;
    t.file.sync_data()?;
    t.seq = seq;
    t.last = last;
    // In place rather than a new file renamed over it (two metadata operations per write):
    // sequence numbers only grow, so the new text covers the old, and only a head left longer
    // by something else is cut. Like the rename before it, it is not fsync'd: the log is.
    let text = format!("{} {}\n", t.seq, t.last);
    t.head.write_all_at(text.as_bytes(), 0)?;
    let len = text.len() as u64;
    if t.head_len > len {
        t.head.set_len(len)?;
    }
    t.head_len = len;
    Ok(())
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

    /// Records from many tasks at once form one unbroken chain, and each is in the file when
    /// its `record` resolves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_chain_and_are_written_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(AuditLog::open(dir.path()));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (log, path) = (log.clone(), dir.path().join(LOG_FILE));
                tokio::spawn(async move {
                    for i in 0..25 {
                        let id = format!("t{t}-{i}");
                        log.record(AuditEvent::SecretCreated {
                            secret_id: id.clone(),
                            name: "n".into(),
                        })
                        .await;
                        let text = std::fs::read_to_string(&path).unwrap();
                        assert!(text.contains(&format!("\"{id}\"")), "{id} not written");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        log.synced().await;
        assert_eq!(verify(dir.path()), Ok(200));
    }
}
