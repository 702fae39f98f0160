//! Our `swarmguard trust-server`, started as a real process over HTTPS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{wait_ready_file, write_master_key, Proc};

pub struct TrustServer {
    pub proc: Proc,
    pub port: u16,
    pub data_dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
    master_key: PathBuf,
    dir: PathBuf,
    restarts: u32,
    extra: Vec<String>,
    /// Pass --signer-key-file (the in-process signer) besides `extra`.
    local_key: bool,
}

impl TrustServer {
    /// Start with a fresh data dir and TLS cert under `dir`.
    pub fn start(dir: &Path) -> TrustServer {
        Self::start_with(dir, Vec::new())
    }

    /// Start with extra command-line arguments (e.g. a remote signer).
    pub fn start_with(dir: &Path, extra: Vec<String>) -> TrustServer {
        let local_key = extra.is_empty();
        Self::start_opts(dir, extra, local_key)
    }

    /// Start with extra arguments, and the in-process signer's key file when `local_key`.
    pub fn start_opts(dir: &Path, extra: Vec<String>, local_key: bool) -> TrustServer {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = super::make_server_cert(dir, &["tls-probe.invalid"]);
        let master_key = dir.join("signer.key");
        write_master_key(&master_key);
        let mut s = TrustServer {
            proc: Proc::none(),
            port: 0,
            data_dir: dir.join("data"),
            cert,
            key,
            master_key,
            dir: dir.to_path_buf(),
            restarts: 0,
            extra,
            local_key,
        };
        s.proc = s.spawn(0, 0);
        s.port = s.wait_ready(0);
        s
    }

    fn spawn(&self, port: u16, n: u32) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmguard"));
        cmd.arg("trust-server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .arg("--allow-delete")
            .arg("--ready-file")
            .arg(self.dir.join(format!("ready-{n}")))
            .env("RUST_LOG", "info");
        if self.local_key {
            cmd.arg("--signer-key-file").arg(&self.master_key);
        }
        cmd.args(&self.extra);
        Proc::spawn(
            "trust-server",
            cmd,
            self.dir.join(format!("trust-server-{n}.log")),
        )
    }

    fn wait_ready(&mut self, n: u32) -> u16 {
        wait_ready_file(&mut self.proc, &self.dir.join(format!("ready-{n}")))
    }

    /// The built-in token service's signing certificate (a registry's rootcertbundle).
    pub fn token_cert(&self) -> PathBuf {
        self.data_dir.join("token-signing.crt")
    }

    /// The built-in token service's realm on this server.
    pub fn realm(&self) -> String {
        format!("{}/auth/token", self.url())
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stop the process and start it again on the same port and data dir.
    pub fn restart(&mut self) {
        self.proc.stop(Duration::from_secs(10));
        self.restarts += 1;
        let n = self.restarts;
        self.proc = self.spawn(self.port, n);
        let port = self.wait_ready(n);
        assert_eq!(port, self.port);
    }
}

impl TrustServer {
    /// Read one counter from /metrics (over verified TLS, with curl).
    pub fn metric(&self, name: &str) -> u64 {
        let mut c = std::process::Command::new(super::require_bin("curl"));
        c.args(["-sS", "--fail", "--cacert"])
            .arg(&self.cert)
            .arg(format!("{}/metrics", self.url()));
        let o = super::run(c, Duration::from_secs(30));
        assert!(o.status.success(), "metrics: {}", super::text(&o));
        let body = String::from_utf8_lossy(&o.stdout).to_string();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }
}
