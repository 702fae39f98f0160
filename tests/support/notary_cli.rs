//! The real `notary` CLI (Debian 0.7) with its own trust dir, passphrases
//! from the environment and our server's certificate as its CA.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{require_bin, run, text};

pub const PASSPHRASE: &str = "correct-horse-battery-staple";

pub struct NotaryCli {
    bin: PathBuf,
    pub trust_dir: PathBuf,
    server: String,
    ca: PathBuf,
    /// NOTARY_AUTH (base64 of user:password), if set.
    auth: Option<String>,
}

impl NotaryCli {
    pub fn new(trust_dir: &Path, server: &str, ca: &Path) -> NotaryCli {
        std::fs::create_dir_all(trust_dir).unwrap();
        NotaryCli {
            bin: require_bin("notary"),
            trust_dir: trust_dir.to_path_buf(),
            server: server.into(),
            ca: ca.into(),
            auth: None,
        }
    }

    /// Log in to the trust server's token service as `user` (NOTARY_AUTH).
    pub fn with_auth(mut self, user: &str, password: &str) -> NotaryCli {
        use base64::Engine as _;
        self.auth =
            Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.trust_dir)
            .env("NOTARY_ROOT_PASSPHRASE", PASSPHRASE)
            .env("NOTARY_TARGETS_PASSPHRASE", PASSPHRASE)
            .env("NOTARY_SNAPSHOT_PASSPHRASE", PASSPHRASE)
            .env("NOTARY_DELEGATION_PASSPHRASE", PASSPHRASE);
        if let Some(a) = &self.auth {
            c.env("NOTARY_AUTH", a);
        }
        c.arg("-d")
            .arg(&self.trust_dir)
            .arg("-s")
            .arg(&self.server)
            .arg("--tlscacert")
            .arg(&self.ca)
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args), Duration::from_secs(120))
    }

    /// Run and require success; returns stdout+stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "notary {args:?} failed:\n{}", text(&o));
        text(&o)
    }

    /// Run and require failure; returns stdout+stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "notary {args:?} unexpectedly succeeded:\n{}",
            text(&o)
        );
        text(&o)
    }
}
