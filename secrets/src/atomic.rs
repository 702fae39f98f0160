//! Crash-safe writes of key material and certificates: a reader sees the old file or the new one,
//! never a torn one, and the file never exists with wider permissions than asked for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// What to do when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Replace it atomically (rename).
    Replace,
    /// Fail with `AlreadyExists` rather than replace it (hard link), e.g. for a key that data
    /// already depends on.
    CreateNew,
}

/// Writes `bytes` to a temporary file created with `mode`, fsyncs it, puts it at `path` and
/// fsyncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, placement: Placement) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{:016x}",
        name.to_string_lossy(),
        u64::from_le_bytes(suffix)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only remove bits; make the mode exact anyway.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        match placement {
            Placement::Replace => fs::rename(&tmp, path),
            Placement::CreateNew => fs::hard_link(&tmp, path),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one", 0o600, Placement::Replace).unwrap();
        write_atomic(&p, b"two", 0o644, Placement::Replace).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one", 0o600, Placement::CreateNew).unwrap();
        let err = write_atomic(&p, b"two", 0o600, Placement::CreateNew).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn no_file_name_is_an_error() {
        assert!(write_atomic(Path::new("/"), b"x", 0o600, Placement::Replace).is_err());
    }
}
