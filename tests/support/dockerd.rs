//! A private real dockerd (Debian's docker.io 20.10, SwarmKit inside) plus the docker CLI pointed
//! at it. For swarm mode it runs in its own network namespace: two swarm-mode dockerds clash in
//! one (gossip port 7946, docker_gwbridge, VXLAN). Stopped by the PID we started, also when the
//! test fails; never by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{require_bin, run, short_tempdir, text, wait_until, Proc};

pub struct Dockerd {
    pub proc: Proc,
    pub socket: PathBuf,
    /// DOCKER_CONFIG for the CLI (the trust dir lives here).
    pub config: PathBuf,
    /// The network namespace dockerd runs in, if its own.
    pub netns: Option<String>,
    /// The directory holding data-root, exec-root, socket and log.
    pub root: PathBuf,
    docker: PathBuf,
    /// More dockerd flags, kept for [`Dockerd::restart`].
    extra: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Dockerd {
    /// Starts dockerd in a fresh short temp dir; with `own_netns`, in a new network namespace
    /// with only loopback up.
    pub fn start(own_netns: bool) -> Dockerd {
        let temp = short_tempdir("sgd");
        let mut d = Dockerd::start_in(temp.path(), own_netns);
        d._temp = Some(temp);
        d
    }

    /// Starts dockerd with its files under `dir`, which must be short (unix socket paths, the
    /// managed containerd's included, must stay under 108 bytes).
    pub fn start_in(dir: &Path, own_netns: bool) -> Dockerd {
        Dockerd::start_in_with(dir, own_netns, &[])
    }

    /// [`Dockerd::start`] with more dockerd flags (e.g. `--debug`, whose task state lines a
    /// benchmark reads).
    pub fn start_with(own_netns: bool, extra: &[&str]) -> Dockerd {
        let temp = short_tempdir("sgd");
        let mut d = Dockerd::start_in_with(temp.path(), own_netns, extra);
        d._temp = Some(temp);
        d
    }

    /// [`Dockerd::start_in`] with more dockerd flags.
    pub fn start_in_with(dir: &Path, own_netns: bool, extra: &[&str]) -> Dockerd {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let docker = require_bin("docker");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("d.sock");
        assert!(
            socket.as_os_str().len() < 80,
            "socket path too long: {}",
            socket.display()
        );
        let config = dir.join("cfg");
        std::fs::create_dir_all(&config).unwrap();
        let netns = own_netns.then(|| {
            let name = format!(
                "sg{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::SeqCst)
            );
            let ip = require_bin("ip");
            for args in [
                vec!["netns", "add", &name],
                vec!["-n", &name, "link", "set", "lo", "up"],
            ] {
                let mut c = Command::new(&ip);
                c.args(&args);
                let o = run(c, Duration::from_secs(30));
                assert!(o.status.success(), "ip {args:?}: {}", text(&o));
            }
            name
        });
        let mut d = Dockerd {
            proc: Proc::none(),
            socket,
            config,
            netns,
            root: dir.to_path_buf(),
            docker,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _temp: None,
        };
        d.spawn_daemon();
        d
    }

    /// Starts the daemon on this Dockerd's files and namespace and waits until it answers.
    fn spawn_daemon(&mut self) {
        let bin = require_bin("dockerd");
        let dir = self.root.clone();
        let mut cmd = super::command_in(self.netns.as_deref(), &bin);
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .args(&self.extra);
        self.proc = Proc::spawn("dockerd", cmd, dir.join("dockerd.log"));
        let sock = self.socket.clone();
        let docker = self.docker.clone();
        let proc = &mut self.proc;
        wait_until("dockerd socket", Duration::from_secs(60), || {
            proc.assert_running();
            sock.exists()
                && Command::new(&docker)
                    .arg("-H")
                    .arg(format!("unix://{}", sock.display()))
                    .arg("version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
        });
    }

    /// `kill -9` of dockerd and of the containerd it started (both by PID), as a crash of the
    /// host's engine would leave them; [`Dockerd::restart`] brings it back on the same files.
    pub fn kill9(&mut self) {
        let children = child_pids(self.proc.pid());
        self.proc.kill9();
        for pid in children {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            // Reparented to init, which reaps it.
            wait_until("containerd gone", Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true)
            });
        }
    }

    /// Starts the daemon again (after [`Dockerd::kill9`] or a stop) in the same namespace.
    pub fn restart(&mut self) {
        assert_eq!(self.proc.pid(), 0, "stop dockerd first");
        self.spawn_daemon();
    }

    /// `docker swarm init` on a free loopback port (inside this dockerd's namespace); the
    /// cluster address and the worker join token.
    pub fn init_swarm_on_free_port(&self) -> (String, String) {
        let addr = format!("127.0.0.1:{}", super::free_port());
        self.docker_ok(&[
            "swarm",
            "init",
            "--listen-addr",
            &addr,
            "--advertise-addr",
            "127.0.0.1",
        ]);
        let token = self.docker_ok(&["swarm", "join-token", "-q", "worker"]);
        (addr, token.trim().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A docker CLI command against this daemon with the given env.
    pub fn cmd(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut c = Command::new(&self.docker);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.config.parent().unwrap())
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config);
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(args);
        c
    }

    pub fn docker_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        run(self.cmd(env, args), Duration::from_secs(180))
    }

    /// Run with `env` and require success; returns stdout and stderr.
    pub fn ok(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let o = self.docker_env(env, args);
        assert!(o.status.success(), "docker {args:?} failed:\n{}", text(&o));
        text(&o)
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_env(&[], args)
    }

    /// Run and require success; returns stdout only.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?} failed:\n{}", text(&o));
        String::from_utf8(o.stdout).expect("utf-8")
    }

    /// Import a tiny image (one static file) as `tag`.
    pub fn import_tiny_image(&self, tag: &str, content: &str) {
        let dir = self.root.join("rootfs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.txt"), content).unwrap();
        let tar = self.root.join("rootfs.tar");
        let mut c = Command::new(require_bin("tar"));
        c.arg("-C").arg(&dir).arg("-cf").arg(&tar).arg(".");
        let o = run(c, Duration::from_secs(30));
        assert!(o.status.success(), "tar: {}", text(&o));
        self.ok(&[], &["import", tar.to_str().unwrap(), tag]);
    }

    /// Import a busybox image as `tag`: Debian's static busybox (`busybox-static`) with `sh`,
    /// `cat`, `sleep`, `ls`, `stat`, `echo` and `mount` linked to it. No registry, no internet.
    pub fn import_busybox_image(&self, tag: &str) {
        let busybox = require_bin("busybox");
        let dir = self.root.join("bbroot");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(&busybox, bin.join("busybox")).unwrap();
        for app in ["sh", "cat", "sleep", "ls", "stat", "echo", "mount", "true"] {
            let link = bin.join(app);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link).unwrap();
            }
        }
        let tar = self.root.join("bbroot.tar");
        let mut c = Command::new(require_bin("tar"));
        c.arg("-C").arg(&dir).arg("-cf").arg(&tar).arg(".");
        let o = run(c, Duration::from_secs(30));
        assert!(o.status.success(), "tar: {}", text(&o));
        self.ok(
            &[],
            &[
                "import",
                "--change",
                "ENV PATH=/bin",
                tar.to_str().unwrap(),
                tag,
            ],
        );
    }

    /// Stops dockerd by its PID, then removes what it may leave behind: a netns bind mount
    /// under exec-root from a failed ingress sandbox, and our network namespace.
    pub fn stop(&mut self) {
        self.stop_daemon();
        self.cleanup();
    }

    /// Stops the daemon by its PID but keeps its directories and network namespace (other
    /// processes may still run in it); [`Dockerd::stop`] or Drop clean up.
    pub fn stop_daemon(&mut self) {
        self.proc.stop(Duration::from_secs(30));
    }

    fn cleanup(&mut self) {
        // A failed ingress sandbox can leak a netns bind mount under exec-root.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.root.to_string_lossy().to_string();
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if m.starts_with(&root) {
                    let _ = Command::new("umount").arg("-l").arg(m).status();
                }
            }
        }
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The PIDs of `pid`'s children (every thread's list).
fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}
