//! Shared test helpers: fixtures, openssl, x509 parsing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/certs")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()))
}

pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    p.contents
}

/// Runs openssl; panics (fails the test) if openssl is not installed.
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect(
        "openssl must be installed to run this test (it is used as an independent verifier)",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub struct TempFiles {
    pub dir: tempfile::TempDir,
}

impl TempFiles {
    pub fn new() -> Self {
        TempFiles {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn write(&self, name: &str, data: &[u8]) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// `openssl verify` with strict X.509 checks and a TLS purpose.
pub fn openssl_verify(root_pem: &[u8], leaf_pem: &[u8], purpose: &str) -> (bool, String) {
    let t = TempFiles::new();
    let root = t.write("root.pem", root_pem);
    let leaf = t.write("leaf.pem", leaf_pem);
    openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        &root,
        "-purpose",
        purpose,
        &leaf,
    ])
}

pub fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// Go's `time.Round(time.Minute)` of `t`, in unix seconds.
pub fn round_minute(t: std::time::SystemTime) -> i64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ns = d.as_nanos() as i128;
    let m = 60_000_000_000i128;
    let r = ns % m;
    let rounded = if r >= m / 2 { ns - r + m } else { ns - r };
    (rounded / 1_000_000_000) as i64
}

pub fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
