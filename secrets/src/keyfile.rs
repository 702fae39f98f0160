//! The on-disk DEK file.
//!
//! Format (UTF-8 text, exactly three lines, each ending in `\n`):
//!
//! ```text
//! swarmguard-dek v1
//! wrapped: false
//! key: <base64 (standard alphabet, padded) of the 32 key bytes>
//! ```
//!
//! With autolock on, `wrapped: true` and `key:` holds the DEK wrapped under the key-encryption
//! key ([`crate::kek::UnlockKey::wrap`]); [`read_dek_file`] returns it as [`DekFile::Wrapped`]
//! and [`load_dek`] refuses it (the store cannot open until the manager is unlocked). Turning
//! autolock on or off and rotating the unlock key each replace the file in one atomic rename
//! ([`write_dek_file`]), so a crash leaves the old file or the new one.
//!
//! The file must be a regular file with mode `0600` (no group/other bits). It is created
//! atomically: written to a temporary file created with mode 0600, fsync'd, hard-linked into place
//! (which fails instead of overwriting if another process created the key first), and the
//! directory fsync'd.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::{DataKey, SealError, KEY_LEN};

/// First line of a key file.
pub const HEADER: &str = "swarmguard-dek v1";
/// Upper bound on a key file's size; anything bigger is not a key file.
const MAX_FILE_LEN: u64 = 4096;

/// Errors from [`load_or_create_dek`] and [`load_dek`].
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path} has mode {mode:04o}, which lets group or others read it; fix with `chmod 600 {path}` after checking nobody copied it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a regular file (symlink or other); replace it with the original regular file")]
    NotRegularFile { path: PathBuf },
    #[error("key file {path} is {len} bytes, too large to be a key file; restore the original keys/dek from a backup")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("key file {path} is malformed: {reason}; restore the original keys/dek from a backup (a new key cannot decrypt existing data)")]
    Format { path: PathBuf, reason: String },
    #[error("key file {path} holds a key wrapped by the autolock unlock key: the manager must be unlocked with `docker swarm unlock`")]
    Wrapped { path: PathBuf },
    #[error("could not generate a key: {0}")]
    Generate(#[from] SealError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the DEK at `path`, or creates a new random one there if no file exists.
///
/// The parent directory is created with mode 0700 if missing.
pub fn load_or_create_dek(path: &Path) -> Result<DataKey, KeyFileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => return load_dek(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let key = DataKey::generate()?;
    match create_key_file(path, &key) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created new data encryption key file");
            Ok(key)
        }
        // Another process won the race: use its key.
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            load_dek(path)
        }
        Err(e) => Err(e),
    }
}

/// Loads an existing DEK file, checking its permissions and format. A wrapped key is refused.
pub fn load_dek(path: &Path) -> Result<DataKey, KeyFileError> {
    match read_dek_file(path)? {
        DekFile::Plain(key) => Ok(*key),
        DekFile::Wrapped(_) => Err(KeyFileError::Wrapped {
            path: path.to_path_buf(),
        }),
    }
}

/// What a DEK file holds.
pub enum DekFile {
    Plain(Box<DataKey>),
    /// The DEK wrapped under the unlock key (autolock on).
    Wrapped(Vec<u8>),
}

impl std::fmt::Debug for DekFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DekFile::Plain(_) => f.write_str("DekFile::Plain(<redacted>)"),
            DekFile::Wrapped(w) => write!(f, "DekFile::Wrapped({} bytes)", w.len()),
        }
    }
}

/// Reads a DEK file in either form, checking its permissions and format.
pub fn read_dek_file(path: &Path) -> Result<DekFile, KeyFileError> {
    let text = read_private_text(path)?;
    parse(path, &text)
}

/// Replaces the DEK file in one atomic step (temporary file, fsync, rename, directory fsync):
/// after a crash the file is the old one or the new one.
pub fn write_dek_file(path: &Path, content: &DekFile) -> Result<(), KeyFileError> {
    crate::atomic::write_atomic(
        path,
        render(content).as_bytes(),
        0o600,
        crate::atomic::Placement::Replace,
    )
    .map_err(io_err(path))
}

/// Reads a small secret text file (at most 4 KiB) that must be a regular file readable by its
/// owner only (no group/other bits), as the DEK file must be. Other key files (the trust
/// signer's master key) go through the same check.
pub fn read_private_text(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let lmeta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !lmeta.file_type().is_file() {
        return Err(KeyFileError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let mut file = File::open(path).map_err(io_err(path))?;
    // Check the opened file itself, not the path, so a swap between the checks is caught.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut text = Zeroizing::new(String::with_capacity(MAX_FILE_LEN as usize + 1));
    (&mut file)
        .take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                format_err(path, "not UTF-8 text")
            } else {
                io_err(path)(e)
            }
        })?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: text.len() as u64,
        });
    }
    Ok(text)
}

fn format_err(path: &Path, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn parse(path: &Path, text: &str) -> Result<DekFile, KeyFileError> {
    let Some(body) = text.strip_suffix('\n') else {
        return Err(format_err(path, "missing final newline (file truncated?)"));
    };
    let lines: Vec<&str> = body.split('\n').collect();
    if lines.first() != Some(&HEADER) {
        return Err(format_err(path, format!("first line is not `{HEADER}`")));
    }
    if lines.len() != 3 {
        return Err(format_err(
            path,
            format!("expected 3 lines, found {}", lines.len()),
        ));
    }
    let wrapped = match lines[1] {
        "wrapped: false" => false,
        "wrapped: true" => true,
        _ => {
            return Err(format_err(
                path,
                "second line must be `wrapped: false` or `wrapped: true`",
            ))
        }
    };
    let Some(b64) = lines[2].strip_prefix("key: ") else {
        return Err(format_err(path, "third line must start with `key: `"));
    };
    if wrapped {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| format_err(path, "wrapped key is not valid base64"))?;
        if sealed.len() != KEY_LEN + crate::SEAL_OVERHEAD {
            return Err(format_err(
                path,
                format!(
                    "wrapped key is {} bytes, expected {}",
                    sealed.len(),
                    KEY_LEN + crate::SEAL_OVERHEAD
                ),
            ));
        }
        return Ok(DekFile::Wrapped(sealed));
    }
    let mut buf = Zeroizing::new([0u8; 64]);
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(b64.as_bytes(), &mut buf[..])
        .map_err(|_| format_err(path, "key is not valid base64"))?;
    if n != KEY_LEN {
        return Err(format_err(
            path,
            format!("key is {n} bytes, expected {KEY_LEN}"),
        ));
    }
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    raw.copy_from_slice(&buf[..KEY_LEN]);
    Ok(DekFile::Plain(Box::new(DataKey::from_bytes(raw))))
}

fn render(content: &DekFile) -> Zeroizing<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s = Zeroizing::new(String::with_capacity(160));
    s.push_str(HEADER);
    match content {
        DekFile::Plain(key) => {
            s.push_str("\nwrapped: false\nkey: ");
            b64.encode_string(key.expose_bytes(), &mut s);
        }
        DekFile::Wrapped(sealed) => {
            s.push_str("\nwrapped: true\nkey: ");
            b64.encode_string(sealed, &mut s);
        }
    }
    s.push('\n');
    s
}

fn create_key_file(path: &Path, key: &DataKey) -> Result<(), KeyFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(&dir))?;
    crate::atomic::write_atomic(
        path,
        render(&DekFile::Plain(Box::new(DataKey::from_bytes(
            Zeroizing::new(*key.expose_bytes()),
        ))))
        .as_bytes(),
        0o600,
        crate::atomic::Placement::CreateNew,
    )
    .map_err(io_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::UnlockKey;

    fn write_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn create_then_load_same_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys").join("dek");
        let k1 = load_or_create_dek(&p).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let k2 = load_or_create_dek(&p).unwrap();
        assert_eq!(k1.expose_bytes(), k2.expose_bytes());
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("swarmguard-dek v1\nwrapped: false\nkey: "));
        // No temporary files left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn rejects_group_or_other_bits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        load_or_create_dek(&p).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o666] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create_dek(&p).unwrap_err();
            assert!(
                matches!(e, KeyFileError::Permissions { .. }),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("chmod 600"));
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        load_dek(&p).unwrap();
    }

    fn expect_format(content: &[u8]) -> String {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        write_mode(&p, content, 0o600);
        match load_or_create_dek(&p) {
            Err(KeyFileError::Format { reason, .. }) => reason,
            other => panic!("expected format error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_formats() {
        let good_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let short_key = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        let long_key = base64::engine::general_purpose::STANDARD.encode([7u8; 33]);
        assert!(expect_format(b"").contains("newline"));
        assert!(
            expect_format(b"swarmguard-dek v2\nwrapped: false\nkey: AA==\n").contains("first line")
        );
        assert!(expect_format(
            format!("swarmguard-dek v1\nwrapped: false\nkey: {good_key}").as_bytes()
        )
        .contains("newline"));
        assert!(
            expect_format(b"swarmguard-dek v1\nwrapped: maybe\nkey: AA==\n")
                .contains("second line")
        );
        assert!(expect_format(
            format!("swarmguard-dek v1\nwrapped: false\nkex: {good_key}\n").as_bytes()
        )
        .contains("third line"));
        assert!(
            expect_format(b"swarmguard-dek v1\nwrapped: false\nkey: !!notbase64!!\n")
                .contains("base64")
        );
        assert!(expect_format(
            format!("swarmguard-dek v1\nwrapped: false\nkey: {short_key}\n").as_bytes()
        )
        .contains("31 bytes"));
        assert!(expect_format(
            format!("swarmguard-dek v1\nwrapped: false\nkey: {long_key}\n").as_bytes()
        )
        .contains("33 bytes"));
        assert!(expect_format(
            format!("swarmguard-dek v1\nwrapped: false\nkey: {good_key}\nextra\n").as_bytes()
        )
        .contains("3 lines"));
        assert!(expect_format(b"\xff\xfe binary junk\n").contains("UTF-8"));
        // And the good one loads.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        write_mode(
            &p,
            format!("swarmguard-dek v1\nwrapped: false\nkey: {good_key}\n").as_bytes(),
            0o600,
        );
        assert_eq!(load_dek(&p).unwrap().expose_bytes(), &[7u8; 32]);
    }

    #[test]
    fn wrapped_key_is_refused_by_load_dek_and_opens_with_its_kek() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        write_mode(&p, b"swarmguard-dek v1\nwrapped: true\nkey: AAAA\n", 0o600);
        assert!(matches!(load_dek(&p), Err(KeyFileError::Format { .. })));
        let kek = UnlockKey::generate().unwrap();
        let dek = DataKey::generate().unwrap();
        write_dek_file(&p, &DekFile::Wrapped(kek.wrap(&dek).unwrap())).unwrap();
        assert!(matches!(load_dek(&p), Err(KeyFileError::Wrapped { .. })));
        assert!(matches!(
            load_or_create_dek(&p),
            Err(KeyFileError::Wrapped { .. })
        ));
        let DekFile::Wrapped(w) = read_dek_file(&p).unwrap() else {
            panic!("not wrapped")
        };
        assert_eq!(kek.unwrap(&w).unwrap().expose_bytes(), dek.expose_bytes());
        let text = fs::read(&p).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(dek.expose_bytes());
        assert!(!text.windows(b64.len()).any(|x| x == b64.as_bytes()));
        assert!(!text.windows(KEY_LEN).any(|x| x == dek.expose_bytes()));
    }

    /// `unlock-key --rotate` replaces the wrapped key with `write_dek_file`. Each crash point of
    /// that write (nothing yet, temporary file created, half written, written and synced, renamed
    /// before the directory sync) leaves a key file that the old or the new unlock key opens,
    /// the old one until the rename and the new one from it; a leftover temporary file never
    /// stops the next load or the next rotation.
    #[test]
    fn rotation_survives_every_crash_point() {
        let old = UnlockKey::generate().unwrap();
        let new = UnlockKey::generate().unwrap();
        let dek = DataKey::generate().unwrap();
        let new_text = render(&DekFile::Wrapped(new.wrap(&dek).unwrap()));
        for crash_point in 0..5 {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("dek");
            write_dek_file(&p, &DekFile::Wrapped(old.wrap(&dek).unwrap())).unwrap();
            let tmp = d.path().join(".dek.tmp.00000000deadbeef");
            match crash_point {
                0 => {}
                1 => write_mode(&tmp, b"", 0o600),
                2 => write_mode(&tmp, &new_text.as_bytes()[..new_text.len() / 2], 0o600),
                3 => write_mode(&tmp, new_text.as_bytes(), 0o600),
                _ => {
                    write_mode(&tmp, new_text.as_bytes(), 0o600);
                    fs::rename(&tmp, &p).unwrap();
                }
            }
            let DekFile::Wrapped(w) = read_dek_file(&p).unwrap() else {
                panic!("crash point {crash_point}: not wrapped")
            };
            let (by_old, by_new) = (old.unwrap(&w), new.unwrap(&w));
            let opened = by_old
                .as_ref()
                .or(by_new.as_ref())
                .expect("one key opens it");
            assert_eq!(opened.expose_bytes(), dek.expose_bytes());
            assert_eq!(
                by_new.is_ok(),
                crash_point == 4,
                "crash point {crash_point}"
            );
            // Retrying the rotation after the crash completes it.
            write_dek_file(&p, &DekFile::Wrapped(new.wrap(&dek).unwrap())).unwrap();
            let DekFile::Wrapped(w) = read_dek_file(&p).unwrap() else {
                panic!("not wrapped")
            };
            assert!(new.unwrap(&w).is_ok() && old.unwrap(&w).is_err());
        }
    }

    #[test]
    fn rejects_too_large() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        write_mode(&p, &vec![b'a'; 10_000], 0o600);
        assert!(matches!(load_dek(&p), Err(KeyFileError::TooLarge { .. })));
    }

    #[test]
    fn rejects_symlink_and_directory() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        load_or_create_dek(&real).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            load_or_create_dek(&link),
            Err(KeyFileError::NotRegularFile { .. })
        ));
        let dir = d.path().join("adir");
        fs::create_dir(&dir).unwrap();
        assert!(matches!(
            load_or_create_dek(&dir),
            Err(KeyFileError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn debug_of_error_has_no_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dek");
        let k = load_or_create_dek(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_dek(&p).unwrap_err();
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.expose_bytes());
        assert!(!format!("{e:?} {e}").contains(&b64));
    }
}
