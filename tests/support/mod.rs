//! Real-peer test harness: every peer runs on a loopback port chosen at run
//! time, in its own temporary directories, and is stopped by the PID we
//! started (in `Drop`, so also when a test fails). A missing peer binary is a
//! test failure, never a skip.
#![allow(dead_code)]

pub mod agent;
pub mod bridge;
pub mod cfssl;
pub mod dockerd;
pub mod hostile;
pub mod manager;
pub mod notary_cli;
pub mod registry;
pub mod trust_server;
pub mod trust_signer;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Absolute path of a required peer binary; panics loudly when missing.
pub fn require_bin(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required peer binary `{name}` is not installed (see DEVELOPERS.md / the Debian packages docker.io, docker-registry, notary)");
}

/// `program` run inside the network namespace `netns` when given, else here. `nsenter`
/// switches only the network namespace and execs `program`, so the child's PID is the
/// program's (`ip netns exec` also remounts /sys, which breaks dockerd).
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new(require_bin("nsenter"));
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `docker swarm join --token TOKEN ADDR` through `docker_ok` (a manager's or a dockerd's
/// CLI), checked to report that the node joined as `role` (`worker` or `manager`).
pub fn join_swarm(docker_ok: impl Fn(&[&str]) -> String, token: &str, addr: &str, role: &str) {
    let out = docker_ok(&["swarm", "join", "--token", token, addr]);
    assert!(
        out.contains(&format!("This node joined a swarm as a {role}.")),
        "{out}"
    );
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A short private temp dir under /tmp (unix socket paths must stay short).
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// Wait until `f` returns true or panic after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Is something accepting TCP connections on 127.0.0.1:port?
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

/// A child process owned by a test, killed by its PID on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// A placeholder owning no process.
    pub fn none() -> Proc {
        Proc {
            name: "none".into(),
            child: None,
            log: PathBuf::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Panic with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "{} exited early ({status}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
        }
    }

    /// SIGKILL by our PID and reap it; the Proc then owns no process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Only our own PID.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Wait for a process started with `--ready-file path` to write its bound
/// address and accept connections; returns the port.
pub fn wait_ready_file(proc: &mut Proc, path: &Path) -> u16 {
    let mut port = 0;
    wait_until(
        &format!("{} ready file", proc.name),
        Duration::from_secs(30),
        || {
            proc.assert_running();
            if let Ok(s) = std::fs::read_to_string(path) {
                port = s
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
            }
            port != 0 && port_open(port)
        },
    );
    port
}

/// Write a fresh random 32-byte signer master key (hex) to `path`, mode 0600.
pub fn write_master_key(path: &Path) {
    let mut raw = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut raw).unwrap();
    std::fs::write(
        path,
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    // Key files readable by group or others are refused.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Run a command to completion with a timeout; returns its output.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let start = Instant::now();
    // Drain pipes on threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// Output as one string (stdout + stderr) for messages and matching.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A self-signed P-256 certificate (30 days) with subject `subj` and `-addext` extensions,
/// made with the openssl CLI at `cert` / `key`.
fn self_signed(cert: &Path, key: &Path, subj: &str, exts: &[&str]) {
    let mut cmd = Command::new(require_bin("openssl"));
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        subj,
    ]);
    for e in exts {
        cmd.args(["-addext", e]);
    }
    cmd.arg("-keyout").arg(key).arg("-out").arg(cert);
    let o = run(cmd, Duration::from_secs(30));
    assert!(o.status.success(), "openssl req -x509 {subj}: {}", text(&o));
}

/// A self-signed P-256 server certificate for 127.0.0.1/localhost (+ extra
/// DNS names), made with the openssl CLI. Returns (cert, key) paths.
pub fn make_server_cert(dir: &Path, dns: &[&str]) -> (PathBuf, PathBuf) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let mut san = String::from("subjectAltName=IP:127.0.0.1,DNS:localhost");
    for d in dns {
        san.push_str(&format!(",DNS:{d}"));
    }
    self_signed(
        &cert,
        &key,
        "/CN=swarmguard-trust-test",
        &[&san, "basicConstraints=critical,CA:TRUE"],
    );
    (cert, key)
}

/// Passphrase used for every client key in the tests.
pub const PASS: &str = "correct-horse-battery-staple";

/// A test CA plus leaf certificates signed by it (openssl CLI).
pub struct TestCa {
    pub dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, cn: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        self_signed(
            &cert,
            &key,
            &format!("/CN={cn}"),
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
        }
    }

    /// Issue a leaf for `name` (`server` → serverAuth + IP 127.0.0.1 SAN,
    /// else clientAuth). Returns (cert, key).
    pub fn issue(&self, name: &str, server: bool) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let cert = self.dir.join(format!("{name}.crt"));
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            if server {
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
            } else {
                "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
            },
        )
        .unwrap();
        let mut req = Command::new(require_bin("openssl"));
        req.args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr);
        let o = run(req, Duration::from_secs(30));
        assert!(o.status.success(), "openssl csr: {}", text(&o));
        let mut sign = Command::new(require_bin("openssl"));
        sign.args([
            "x509",
            "-req",
            "-days",
            "30",
            "-set_serial",
            &format!("{}", std::process::id() as u64 * 1000 + name.len() as u64),
        ])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&self.cert)
        .arg("-CAkey")
        .arg(&self.key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert);
        let o = run(sign, Duration::from_secs(30));
        assert!(o.status.success(), "openssl sign: {}", text(&o));
        (cert, key)
    }
}

/// The DER of the first certificate in `pem`.
pub fn first_der(pem: &[u8]) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    pem.contents
}

/// The leaf of `chain_pem` is signed by the key of the root in `root_pem`.
pub fn signed_by(chain_pem: &[u8], root_pem: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (leaf_der, root_der) = (first_der(chain_pem), first_der(root_pem));
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).is_ok()
}

/// The 1-, 5- and 15-minute load averages, for a benchmark's report.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
