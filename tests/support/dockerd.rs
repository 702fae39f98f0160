//! A real dockerd (Debian's docker.io, SwarmKit inside) for tests and benches: its own dirs, its
//! own socket and, for swarm mode, its own network namespace (two swarm-mode dockerds clash in
//! one: gossip port 7946, docker_gwbridge, VXLAN). Stopped by the PID we started, also when the
//! test fails; never by name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::manager::docker_bin;

pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub netns: Option<String>,
    docker_config: tempfile::TempDir,
    child: Option<Child>,
}

/// The dockerd binary; a missing one fails the test loudly with the fix.
pub fn dockerd_bin() -> PathBuf {
    for p in ["/usr/sbin/dockerd", "/usr/bin/dockerd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("dockerd is not installed: run scripts/test, which installs Debian's docker.io")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Dockerd {
    /// Starts dockerd; with `own_netns` it runs in a fresh network namespace with only loopback.
    pub fn start(own_netns: bool) -> Dockerd {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // Short paths: unix socket paths must stay under 108 bytes, containerd's included.
        let dir = tempfile::Builder::new()
            .prefix("sgd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("d.sock");
        let netns = own_netns.then(|| {
            let name = format!(
                "sg{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::SeqCst)
            );
            run(Command::new("ip").args(["netns", "add", &name]));
            run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
            name
        });
        let mut cmd = match &netns {
            // `ip netns exec` remounts /sys and breaks dockerd; nsenter switches only the netns.
            Some(name) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{name}"))
                    .arg(dockerd_bin());
                c
            }
            None => Command::new(dockerd_bin()),
        };
        let p = dir.path();
        cmd.arg("--data-root")
            .arg(p.join("root"))
            .arg("--exec-root")
            .arg(p.join("e"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(p.join("d.pid"))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("dockerd.log")).expect("log file"));
        let child = cmd.spawn().expect("start dockerd");
        let d = Dockerd {
            socket,
            netns,
            docker_config: tempfile::tempdir().expect("tempdir"),
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if d.docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return d;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default();
        panic!("dockerd did not come up within 60 s; its log:\n{log}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_bin())
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.docker_config.path())
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Stops dockerd by its PID and cleans up what it may leave behind.
    pub fn stop(&mut self) {
        self.stop_daemon();
        self.cleanup();
    }

    /// Stops the daemon by its PID but keeps its directories and network namespace (other
    /// processes may still run in it); [`Dockerd::stop`] or Drop clean up.
    pub fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cleanup(&mut self) {
        // A failed ingress sandbox can leak a netns bind mount under exec-root.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().to_string_lossy().to_string();
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

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}
