//! A real `cfssl serve` (Debian golang-cfssl) for tests: a CA the test makes with
//! `cfssl gencert -initca`, an optional https certificate from that CA for 127.0.0.1, a signing
//! config the test chooses, on a free loopback port (inside a network namespace if asked).
//! Stopped by the PID the test started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, require_bin, Proc};

/// The `default` signing profile swarmguard's requests use (SwarmKit sends `"profile": ""`).
pub const GOOD_PROFILE: &str = r#"{"usages":["signing","digital signature","key encipherment","server auth","client auth"],"expiry":"2160h"}"#;

/// A CA made by cfssl: `<dir>/<name>.pem` and `<dir>/<name>-key.pem`.
pub struct CfsslCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CfsslCa {
    /// `cfssl gencert -initca` with an ECDSA P-256 key and CN=`cn`.
    pub fn create(dir: &Path, name: &str, cn: &str) -> CfsslCa {
        let csr = dir.join(format!("{name}-csr.json"));
        std::fs::write(
            &csr,
            format!(r#"{{"CN":"{cn}","key":{{"algo":"ecdsa","size":256}},"names":[{{"O":"swarmguard tests"}}]}}"#),
        )
        .unwrap();
        cfssljson(
            dir,
            name,
            Command::new(require_bin("cfssl"))
                .args(["gencert", "-initca"])
                .arg(&csr),
        );
        CfsslCa {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    /// A TLS server certificate from this CA for 127.0.0.1 and localhost.
    pub fn server_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let csr = dir.join(format!("{name}-csr.json"));
        std::fs::write(
            &csr,
            r#"{"CN":"cfssl","hosts":["127.0.0.1","localhost"],"key":{"algo":"ecdsa","size":256}}"#,
        )
        .unwrap();
        let config = dir.join(format!("{name}-config.json"));
        std::fs::write(
            &config,
            r#"{"signing":{"default":{"usages":["signing","key encipherment","server auth"],"expiry":"8760h"}}}"#,
        )
        .unwrap();
        cfssljson(
            dir,
            name,
            Command::new(require_bin("cfssl"))
                .arg("gencert")
                .arg(format!("-ca={}", self.cert.display()))
                .arg(format!("-ca-key={}", self.key.display()))
                .arg(format!("-config={}", config.display()))
                .arg(&csr),
        );
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }
}

/// Runs `cmd | cfssljson -bare <dir>/<name>`.
fn cfssljson(dir: &Path, name: &str, cmd: &mut Command) {
    let out = cmd.stderr(Stdio::piped()).output().expect("run cfssl");
    assert!(
        out.status.success(),
        "cfssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(require_bin("cfssljson"))
        .arg("-bare")
        .arg(dir.join(name))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cfssljson");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "cfssljson failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// How a `cfssl serve` runs.
pub struct ServeOptions<'a> {
    pub ca: &'a CfsslCa,
    /// The `default` profile (JSON object), e.g. [`GOOD_PROFILE`].
    pub profile: String,
    /// A hex key: the default profile then needs `authsign` with it.
    pub auth_key: Option<String>,
    /// Serve https with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub netns: Option<String>,
}

impl<'a> ServeOptions<'a> {
    /// [`GOOD_PROFILE`] without an auth key.
    pub fn good(
        ca: &'a CfsslCa,
        tls: Option<(PathBuf, PathBuf)>,
        netns: Option<String>,
    ) -> ServeOptions<'a> {
        ServeOptions {
            ca,
            profile: GOOD_PROFILE.into(),
            auth_key: None,
            tls,
            netns,
        }
    }
}

pub struct CfsslServer {
    pub port: u16,
    pub https: bool,
    dir: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
    proc: Proc,
    starts: usize,
}

impl CfsslServer {
    /// A CA made in `dir` (subject `cfssl-swarm-root`) served over https with the good profile
    /// inside `netns`, as a stock worker's namespace sees it.
    pub fn start_https_in(dir: &Path, netns: &str) -> (CfsslCa, CfsslServer) {
        let ca = CfsslCa::create(dir, "ca", "cfssl-swarm-root");
        let tls = ca.server_cert(dir, "server");
        let server = CfsslServer::start(
            dir,
            ServeOptions::good(&ca, Some(tls), Some(netns.to_string())),
        );
        (ca, server)
    }

    /// A CA made in `dir` (subject `cn`) served over http with the good profile, and a manager
    /// in `mdir` whose swarm is initialised with it as its external CA (`cacert` given).
    pub fn external_ca_swarm(
        dir: &Path,
        cn: &str,
        mdir: &Path,
    ) -> (CfsslServer, super::manager::Manager) {
        let ca = CfsslCa::create(dir, "ca", cn);
        let server = CfsslServer::start(dir, ServeOptions::good(&ca, None, None));
        let m = super::manager::Manager::start(mdir);
        let flag = format!(
            "protocol=cfssl,url={},cacert={}",
            server.url("sign"),
            ca.cert.display()
        );
        m.init_swarm(&["--external-ca", &flag]);
        (server, m)
    }

    /// Starts `cfssl serve` in `dir` and waits until it answers.
    pub fn start(dir: &Path, opts: ServeOptions<'_>) -> CfsslServer {
        let mut profile = opts.profile.clone();
        let mut auth = String::new();
        if let Some(key) = &opts.auth_key {
            profile = format!("{},\"auth_key\":\"k\"}}", profile.trim_end_matches('}'));
            auth = format!(r#","auth_keys":{{"k":{{"type":"standard","key":"{key}"}}}}"#);
        }
        let config = dir.join(format!("serve-{}.json", free_port()));
        std::fs::write(
            &config,
            format!(r#"{{"signing":{{"default":{profile}}}{auth}}}"#),
        )
        .unwrap();
        let port = free_port();
        let mut args = vec![
            "serve".to_string(),
            "-address=127.0.0.1".into(),
            format!("-port={port}"),
            format!("-ca={}", opts.ca.cert.display()),
            format!("-ca-key={}", opts.ca.key.display()),
            format!("-config={}", config.display()),
            "-loglevel=0".into(),
        ];
        if let Some((cert, key)) = &opts.tls {
            args.push(format!("-tls-cert={}", cert.display()));
            args.push(format!("-tls-key={}", key.display()));
        }
        let mut s = CfsslServer {
            port,
            https: opts.tls.is_some(),
            dir: dir.to_path_buf(),
            args,
            netns: opts.netns.clone(),
            proc: Proc::none(),
            starts: 0,
        };
        s.restart();
        s
    }

    /// The running `cfssl serve`'s PID (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The sign (or authsign) URL.
    pub fn url(&self, endpoint: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/api/v1/cfssl/{endpoint}", self.port)
    }

    /// Stops it (by PID); [`CfsslServer::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }

    pub fn restart(&mut self) {
        self.starts += 1;
        let log = self
            .dir
            .join(format!("cfssl-{}-{}.log", self.port, self.starts));
        let cfssl = require_bin("cfssl");
        let mut cmd = super::command_in(self.netns.as_deref(), cfssl);
        cmd.args(&self.args);
        self.proc = Proc::spawn("cfssl serve", cmd, log);
        let start = std::time::Instant::now();
        while !self.log().contains("Now listening on") {
            self.proc.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "cfssl serve did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything every run of this server logged.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("cfssl-{}-{n}.log", self.port)))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// How many sign requests cfssl received (sign and authsign, answered or not).
    pub fn sign_requests(&self) -> usize {
        self.log().matches("signature request received").count()
    }

    /// How many sign requests cfssl answered with 200 (a certificate).
    pub fn signed(&self) -> usize {
        let log = self.log();
        log.matches("/api/v1/cfssl/sign\" 200").count()
            + log.matches("/api/v1/cfssl/authsign\" 200").count()
    }
}
