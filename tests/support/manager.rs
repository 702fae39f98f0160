//! A real `swarmguard manager` process for tests: its own data dir, stopped by the PID the test
//! started (also when the test fails), plus the real docker CLI and a raw Engine API client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Manager {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// A clean docker CLI config dir, so the user's contexts and config never leak in.
    pub docker_config: tempfile::TempDir,
    /// The cluster gRPC address (`--listen-addr`), also advertised to joining nodes.
    pub cluster_addr: String,
    /// Run inside this network namespace (`/var/run/netns/NAME`), e.g. next to a dockerd.
    pub netns: Option<String>,
    /// The second Engine API endpoint, `127.0.0.1:<port>` (`--engine-api tcp://…`), reachable
    /// from the test's own namespace only when `netns` is `None`.
    pub tcp_api: String,
    /// Run with this RLIMIT_NOFILE (soft and hard), set by `prlimit`, which execs the manager.
    pub nofile: Option<u64>,
    /// `RUST_LOG` for the manager, and where its stderr goes (the test's own when `None`).
    pub log: (String, Option<PathBuf>),
    /// More `swarmguard manager` flags, for the next (re)start.
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Manager {
    /// Starts a manager on `data_dir` and waits until its Engine API answers.
    pub fn start(data_dir: &Path) -> Manager {
        Manager::start_in(data_dir, None)
    }

    /// Starts a manager whose cluster port is `127.0.0.1:<free port>` inside `netns` (or the
    /// test's own namespace); the Engine API is a unix socket, reachable from anywhere.
    pub fn start_in(data_dir: &Path, netns: Option<&str>) -> Manager {
        Manager::start_with(data_dir, netns, None)
    }

    /// [`Manager::start_in`] with a descriptor limit of `nofile` (soft and hard).
    pub fn start_with(data_dir: &Path, netns: Option<&str>, nofile: Option<u64>) -> Manager {
        let mut m = Manager::unstarted(data_dir);
        m.netns = netns.map(str::to_string);
        m.nofile = nofile;
        m.spawn();
        m
    }

    /// [`Manager::start`] with more `swarmguard manager` options.
    pub fn start_args(data_dir: &Path, extra: &[String]) -> Manager {
        let mut m = Manager::unstarted(data_dir);
        m.extra_args = extra.to_vec();
        m.spawn();
        m
    }

    /// [`Manager::start`] logging at `rust_log` into `log_file` (appended across restarts).
    pub fn start_logged(data_dir: &Path, rust_log: &str, log_file: &Path) -> Manager {
        Manager::start_args_logged(data_dir, &[], rust_log, log_file)
    }

    /// [`Manager::start_args`] and [`Manager::start_logged`] at once.
    pub fn start_args_logged(
        data_dir: &Path,
        extra: &[String],
        rust_log: &str,
        log_file: &Path,
    ) -> Manager {
        let mut m = Manager::unstarted(data_dir);
        m.extra_args = extra.to_vec();
        m.log = (rust_log.to_string(), Some(log_file.to_path_buf()));
        m.spawn();
        m
    }

    /// [`Manager::start_in`] logging at `rust_log` into `log_file`.
    pub fn start_in_logged(
        data_dir: &Path,
        netns: Option<&str>,
        rust_log: &str,
        log_file: &Path,
    ) -> Manager {
        let mut m = Manager::unstarted(data_dir);
        m.netns = netns.map(str::to_string);
        m.log = (rust_log.to_string(), Some(log_file.to_path_buf()));
        m.spawn();
        m
    }

    /// A manager on `data_dir` with free loopback ports, not running yet.
    fn unstarted(data_dir: &Path) -> Manager {
        Manager {
            data_dir: data_dir.to_path_buf(),
            socket: data_dir.join("swarmguard.sock"),
            docker_config: tempfile::tempdir().expect("tempdir"),
            cluster_addr: format!("127.0.0.1:{}", super::free_port()),
            netns: None,
            tcp_api: format!("127.0.0.1:{}", super::free_port()),
            nofile: None,
            log: ("info,openraft=warn".into(), None),
            extra_args: Vec::new(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        // nsenter and prlimit each exec what follows, so the PID we hold is the manager's.
        let bin = env!("CARGO_BIN_EXE_swarmguard");
        let netns = self.netns.as_deref();
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = super::command_in(netns, super::require_bin("prlimit"));
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => super::command_in(netns, bin),
        };
        let child = cmd
            .arg("manager")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-addr")
            .arg(&self.cluster_addr)
            .arg("--advertise-addr")
            .arg("127.0.0.1")
            .arg("--engine-api")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--engine-api")
            .arg(format!("tcp://{}", self.tcp_api))
            .args(&self.extra_args)
            .env("RUST_LOG", &self.log.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &self.log.1 {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("manager log file"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start swarmguard manager");
        self.child = Some(child);
        let stdout = self.child.as_mut().unwrap().stdout.take().unwrap();
        // The manager prints the DOCKER_HOST line once it serves.
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read manager stdout");
        // Keep draining, so a later line never meets a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                eprint!("manager stdout: {sink}");
                sink.clear();
            }
        });
        assert!(
            line.starts_with("export DOCKER_HOST=unix://"),
            "manager did not start: {line:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_request("GET", "/_ping", None).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("manager did not answer /_ping within 20 s");
    }

    /// `docker swarm init` on this manager's cluster address, advertising 127.0.0.1; `extra`
    /// flags are appended. Returns the CLI's output.
    pub fn init_swarm(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "swarm",
            "init",
            "--listen-addr",
            &self.cluster_addr,
            "--advertise-addr",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        self.docker_ok(&args)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let status =
            wait_timeout(&mut child, Duration::from_secs(20)).expect("manager exits on SIGTERM");
        assert!(
            status.success(),
            "manager exited with {status} after SIGTERM"
        );
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the manager first");
        self.spawn();
    }

    /// Runs the real docker CLI against this manager.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_with_stdin(args, None)
    }

    pub fn docker_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let host = format!("unix://{}", self.socket.display());
        self.docker_at(&host, args, stdin)
    }

    /// Runs the real docker CLI against this manager's tcp Engine API.
    pub fn docker_tcp(&self, args: &[&str]) -> Output {
        self.docker_at(&format!("tcp://{}", self.tcp_api), args, None)
    }

    fn docker_at(&self, docker_host: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(super::require_bin("docker"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.docker_config.path())
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env("DOCKER_HOST", docker_host)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run docker");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().expect("docker output")
    }

    /// Runs docker and returns stdout, failing the test with stderr when it fails.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            self.print_log_tail();
        }
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// When the manager logs to a file, its last lines (not at trace level) go to the test's
    /// output, so a failure in CI shows what the manager was doing.
    pub fn print_log_tail(&self) {
        let Some(path) = &self.log.1 else { return };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" TRACE ") && !l.contains("openraft"))
            .collect();
        eprintln!("--- last lines of the manager log {} ---", path.display());
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> HttpResponse {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The images of the tasks of `service`, from `GET /tasks`.
    pub fn task_images(&self, service: &str) -> Vec<String> {
        let id = self
            .docker_ok(&["service", "inspect", "--format", "{{.ID}}", service])
            .trim()
            .to_string();
        let tasks = self.request("GET", "/v1.41/tasks", None).json();
        tasks
            .as_array()
            .expect("GET /tasks answers an array")
            .iter()
            .filter(|t| t["ServiceID"] == id.as_str())
            .map(|t| {
                t["Spec"]["ContainerSpec"]["Image"]
                    .as_str()
                    .expect("a task has an image")
                    .to_string()
            })
            .collect()
    }

    /// [`Manager::task_images`] once `service` has a task (within 10 s).
    pub fn wait_task_images(&self, service: &str) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let images = self.task_images(service);
            if !images.is_empty() {
                return images;
            }
            assert!(start.elapsed().as_secs() < 10, "no task for {service}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<HttpResponse> {
        unix_request(&self.socket, method, path, body)
    }
}

/// `n` managers formed with the docker CLI: the first inits (with `init` flags), the others
/// join it with the manager token. Managers are stopped when dropped; keep the dirs alive.
pub fn form_managers(
    n: usize,
    netns: Option<&str>,
    init: &[&str],
) -> (Vec<tempfile::TempDir>, Vec<Manager>) {
    let dirs: Vec<_> = (0..n)
        .map(|i| super::short_tempdir(&format!("sg-m{i}-")))
        .collect();
    let first = Manager::start_in(dirs[0].path(), netns);
    first.init_swarm(init);
    let token = first
        .docker_ok(&["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    let mut managers = vec![first];
    for d in &dirs[1..] {
        let m = Manager::start_in(d.path(), netns);
        super::join_swarm(
            |a| m.docker_ok(a),
            &token,
            &managers[0].cluster_addr,
            "manager",
        );
        managers.push(m);
    }
    (dirs, managers)
}

/// One raw HTTP/1.1 request over tcp with exactly the given header lines (`Name: value`), as a
/// web page's request would arrive; connection closed after.
pub fn tcp_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// One HTTP/1.1 request over a unix socket (the Engine API transport), connection closed after.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or_default();
    // A large body goes out only after the server agreed to read it (`Expect: 100-continue`), as
    // a well-behaved client does; a server that refuses it answers at once.
    let expect = body.len() > 64 * 1024;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if expect { "Expect: 100-continue\r\n" } else { "" }
    );
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    if expect {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        if raw.starts_with(b"HTTP/1.1 100") {
            raw.clear();
            s.write_all(body)?;
        }
    } else {
        s.write_all(body)?;
    }
    // A server that answers before reading the whole body (413) closes a socket with unread
    // data, which the client may see as a reset after the response arrived: keep what came.
    match s.read_to_end(&mut raw) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
