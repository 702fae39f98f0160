//! `swarmguard trust-signer` as a separate process (gRPC over mutual TLS).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{wait_ready_file, write_master_key, Proc, TestCa};

pub struct TrustSigner {
    pub proc: Proc,
    pub port: u16,
    pub ca: TestCa,
    /// Client identity for the trust server.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TrustSigner {
    pub fn start(dir: &Path) -> TrustSigner {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new(&dir.join("ca"), "swarmguard-signer-test-ca");
        let (cert, key) = ca.issue("signer", true);
        let (client_cert, client_key) = ca.issue("trust-server", false);
        let master = dir.join("master.key");
        write_master_key(&master);
        let ready = dir.join("ready");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmguard"));
        cmd.arg("trust-signer")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--client-ca")
            .arg(&ca.cert)
            .arg("--signer-key-file")
            .arg(&master)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("trust-signer", cmd, dir.join("trust-signer.log"));
        let port = wait_ready_file(&mut proc, &ready);
        TrustSigner {
            proc,
            port,
            ca,
            client_cert,
            client_key,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Extra trust-server arguments to use this signer.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--signer-url".into(),
            self.url(),
            "--signer-ca".into(),
            self.ca.cert.display().to_string(),
            "--signer-client-cert".into(),
            self.client_cert.display().to_string(),
            "--signer-client-key".into(),
            self.client_key.display().to_string(),
        ]
    }
}
