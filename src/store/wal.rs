//! The Raft log's entries, in an append-only file `<data_dir>/store/raft-log.wal`.
//!
//! Layout: the 8-byte magic [`MAGIC`], then records `len (u32 LE) ‖ index (u64 LE) ‖ hcheck ‖
//! bcheck ‖ sealed`, where `sealed` is the entry sealed with AAD `log/<index>` (so a record moved
//! to another index fails to open), `len` is its length, and `hcheck` / `bcheck` are the first 4
//! bytes of SHA-256 over `len ‖ index` / over `sealed`: they tell damage apart from a half-written
//! end (the AEAD tag alone would only say "does not open"). An append is one `write` of a whole group of records
//! and one `fdatasync`: a redb commit rewrote about ten pages per entry.
//!
//! Only the end of the file can be half-written (a crash during an append that was therefore
//! never acknowledged, which leaves a prefix of the write, maybe followed by zeros where the file
//! grew but the data did not land): a tail shorter than a header, a tail of zeros, a record with a
//! sound header whose body runs past the end, or a last record whose body fails its check and
//! ends in zeros to the end of the file, is cut off at open. Anything else that fails a check is
//! damage, and an error naming the file and byte.
//! Purged entries are dropped from the file when it is rewritten (compaction) after enough purges.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::StoreError;

const MAGIC: &[u8; 8] = b"SGWAL01\n";
const HEADER: usize = 20;
/// Largest sealed record accepted: a transaction is at most 4 MiB, base64 in JSON plus sealing
/// stays well below this.
pub(crate) const MAX_RECORD: usize = 16 << 20;

/// One record's place in the file.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: u64,
    len: u32,
}

pub(crate) struct Wal {
    path: PathBuf,
    file: File,
    /// Live records (index → place), in file order.
    slots: BTreeMap<u64, Slot>,
    /// File length: where the next record goes.
    len: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record as found at open, for the caller to verify.
pub(crate) struct Found {
    pub(crate) index: u64,
    pub(crate) sealed: Vec<u8>,
}

impl Wal {
    /// Opens or creates the file; returns it and every complete record in file order. A
    /// half-written tail is cut off (and reported in the log).
    pub(crate) fn open(path: &Path) -> Result<(Wal, Vec<Found>), StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        let mut raw = Vec::new();
        {
            use std::io::Read;
            (&file).read_to_end(&mut raw).map_err(io(path))?;
        }
        // A new file, or one whose creation a crash cut short (a prefix of the magic, or zeros).
        if raw.len() < MAGIC.len() && (MAGIC.starts_with(&raw) || raw.iter().all(|&b| b == 0)) {
            file.set_len(0).map_err(io(path))?;
            raw.clear();
            (&file).write_all(MAGIC).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
            sync_dir(path)?;
            raw.extend_from_slice(MAGIC);
        }
        if raw.len() < MAGIC.len() || &raw[..MAGIC.len()] != MAGIC {
            return Err(StoreError::Corrupt {
                record: path.display().to_string(),
                reason: "not a swarmguard raft log file (bad magic)".into(),
            });
        }
        let mut found = Vec::new();
        let mut slots = BTreeMap::new();
        let mut at = MAGIC.len();
        while at < raw.len() {
            let rest = &raw[at..];
            let damaged = |reason: String| StoreError::Corrupt {
                record: format!("{} at byte {at}", path.display()),
                reason,
            };
            let torn = if rest.len() < HEADER || rest.iter().all(|&b| b == 0) {
                true
            } else if rest[12..16] != check(&rest[..12]) {
                return Err(damaged("record header fails its check".into()));
            } else {
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_RECORD {
                    return Err(damaged(format!(
                        "record of {len} bytes, over the {MAX_RECORD}-byte limit"
                    )));
                }
                if HEADER + len > rest.len() {
                    true
                } else if rest[16..20] != check(&rest[HEADER..HEADER + len]) {
                    // Zeros from the body's last byte to the end of the file: the file grew
                    // but the data never landed. Anything else is damage.
                    if len > 0 && rest[HEADER + len - 1..].iter().all(|&b| b == 0) {
                        true
                    } else {
                        return Err(damaged("record body fails its check".into()));
                    }
                } else {
                    false
                }
            };
            if torn {
                tracing::warn!(
                    path = %path.display(),
                    bytes = rest.len(),
                    "cutting off a half-written end of the raft log (an append a crash interrupted; it was never acknowledged)"
                );
                file.set_len(at as u64).map_err(io(path))?;
                file.sync_all().map_err(io(path))?;
                raw.truncate(at);
                break;
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            let index = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
            found.push(Found {
                index,
                sealed: rest[HEADER..HEADER + len as usize].to_vec(),
            });
            slots.insert(
                index,
                Slot {
                    offset: at as u64,
                    len,
                },
            );
            at += HEADER + len as usize;
        }
        let len = raw.len() as u64;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                slots,
                len,
            },
            found,
        ))
    }

    /// Appends sealed records `(index, sealed)` in one write and one fdatasync.
    pub(crate) fn append(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(records.iter().map(|(_, s)| HEADER + s.len()).sum());
        let mut slots = Vec::with_capacity(records.len());
        for (index, sealed) in records {
            let len = u32::try_from(sealed.len())
                .ok()
                .filter(|&l| l as usize <= MAX_RECORD)
                .ok_or_else(|| StoreError::Encode {
                    what: format!("raft log entry {index}"),
                    reason: format!("{} bytes, over the {MAX_RECORD}-byte limit", sealed.len()),
                })?;
            slots.push((
                *index,
                Slot {
                    offset: self.len + buf.len() as u64,
                    len,
                },
            ));
            put_record(&mut buf, *index, sealed);
        }
        let written = (&self.file)
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial group behind for the next append to follow.
            let _ = self.file.set_len(self.len);
            return Err(io(&self.path)(e));
        }
        self.len += buf.len() as u64;
        self.slots.extend(slots);
        Ok(())
    }

    /// The sealed records with index in `range`, read from the file.
    pub(crate) fn read<R: std::ops::RangeBounds<u64>>(
        &self,
        range: R,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.slots
            .range(range)
            .map(|(&index, slot)| {
                let mut sealed = vec![0u8; slot.len as usize];
                self.file
                    .read_exact_at(&mut sealed, slot.offset + HEADER as u64)
                    .map_err(io(&self.path))?;
                Ok((index, sealed))
            })
            .collect()
    }

    /// Removes the records from `since` on (Raft log truncation), durably.
    pub(crate) fn truncate_from(&mut self, since: u64) -> Result<(), StoreError> {
        let Some((_, first)) = self.slots.range(since..).next() else {
            return Ok(());
        };
        let cut = first.offset;
        self.file.set_len(cut).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))?;
        self.len = cut;
        self.slots.split_off(&since);
        Ok(())
    }

    /// Forgets records up to `upto` (already recorded as purged by the caller); the file keeps
    /// them until [`Wal::compact`].
    pub(crate) fn forget_upto(&mut self, upto: u64) {
        self.slots = self.slots.split_off(&upto.saturating_add(1));
    }

    /// Rewrites the file with only the live records (temp file, fsync, rename, fsync dir).
    pub(crate) fn compact(&mut self) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("wal.tmp");
        let records = self.read(..)?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            let mut buf = Vec::new();
            buf.extend_from_slice(MAGIC);
            for (index, sealed) in &records {
                put_record(&mut buf, *index, sealed);
            }
            f.write_all(&buf).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        let (wal, _) = Wal::open(&self.path)?;
        *self = wal;
        Ok(())
    }

    /// Bytes in the file now.
    #[cfg(test)]
    pub(crate) fn file_len(&self) -> u64 {
        self.len
    }
}

fn check(bytes: &[u8]) -> [u8; 4] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut c = [0u8; 4];
    c.copy_from_slice(&d.as_ref()[..4]);
    c
}

/// Appends one record; `sealed` is at most [`MAX_RECORD`] bytes (checked by the caller).
fn put_record(buf: &mut Vec<u8>, index: u64, sealed: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    let hcheck = check(&buf[start..]);
    buf.extend_from_slice(&hcheck);
    buf.extend_from_slice(&check(sealed));
    buf.extend_from_slice(sealed);
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, n: usize) -> (u64, Vec<u8>) {
        (i, vec![i as u8; n])
    }

    fn indexes(found: &[Found]) -> Vec<u64> {
        found.iter().map(|f| f.index).collect()
    }

    #[test]
    fn appends_reads_truncates_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let (mut wal, found) = Wal::open(&path).unwrap();
        assert!(found.is_empty());
        wal.append(&[rec(1, 10), rec(2, 20)]).unwrap();
        wal.append(&[rec(3, 30)]).unwrap();
        assert_eq!(wal.read(2..=3).unwrap(), vec![rec(2, 20), rec(3, 30)]);
        wal.truncate_from(3).unwrap();
        wal.append(&[rec(3, 5)]).unwrap();
        drop(wal);
        let (mut wal, found) = Wal::open(&path).unwrap();
        assert_eq!(indexes(&found), [1, 2, 3]);
        assert_eq!(found[2].sealed, vec![3u8; 5]);
        let before = wal.file_len();
        wal.forget_upto(2);
        wal.compact().unwrap();
        assert!(wal.file_len() < before);
        assert_eq!(wal.read(..).unwrap(), vec![rec(3, 5)]);
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(indexes(&found), [3]);
    }

    /// A crash during an append leaves a prefix of the write, maybe followed by zeros: cut off.
    #[test]
    fn a_half_written_end_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&[rec(1, 40), rec(2, 40)]).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut next = Vec::new();
        put_record(&mut next, 3, &[3u8; 40]);
        drop(wal);
        for tail in [
            next[..5].to_vec(),                     // part of a header
            next[..30].to_vec(),                    // header and part of the body
            vec![0u8; 100],                         // zeros
            [&next[..20], &[0u8; 64][..]].concat(), // prefix, then zeros
        ] {
            std::fs::write(&path, [good.as_slice(), &tail].concat()).unwrap();
            let (wal, found) = Wal::open(&path).unwrap();
            assert_eq!(indexes(&found), [1, 2]);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good.len() as u64);
            assert_eq!(wal.file_len(), good.len() as u64);
        }
    }

    /// Damage is an error, not a silent cut: a header that fails its check, even at the end, a
    /// length over the limit, a file of another kind.
    #[test]
    fn damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&[rec(1, 40), rec(2, 40)]).unwrap();
        drop(wal);
        let good = std::fs::read(&path).unwrap();
        // Record 1 starts at byte 8 (length, then index), record 2 at 8 + 20 + 40.
        for (at, what) in [
            (8, "header"),
            (12, "header"),
            (8 + 60, "header"),
            (8 + 60 + 15, "header"),
            (8 + 20 + 3, "body"),
            (8 + 60 + 20 + 39, "body"), // the last byte of the file
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let err = Wal::open(&path).err().expect("damage must not open");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{what} fails its check")),
                "{at}: {msg}"
            );
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&((MAX_RECORD + 1) as u32).to_le_bytes());
        huge.extend_from_slice(&3u64.to_le_bytes());
        let h = check(&huge);
        huge.extend_from_slice(&h);
        huge.extend_from_slice(&[0u8; 4]);
        std::fs::write(&path, [good.as_slice(), &huge, &[1u8; 64]].concat()).unwrap();
        let err = Wal::open(&path).err().unwrap();
        assert!(err.to_string().contains("over the"), "{err}");
        // A creation cut short is not damage: the file starts over.
        for stub in [&b"SGW"[..], &[0u8; 5][..]] {
            std::fs::write(&path, stub).unwrap();
            let (_, found) = Wal::open(&path).unwrap();
            assert!(found.is_empty());
            assert_eq!(std::fs::read(&path).unwrap(), MAGIC);
        }
        std::fs::write(&path, b"SQLite format 3\0").unwrap();
        let err = Wal::open(&path).err().unwrap();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
