//! A private `dockerd` (Debian 20.10) plus the docker CLI pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{require_bin, run, text, wait_until, Proc};

pub struct Dockerd {
    pub proc: Proc,
    pub socket: PathBuf,
    /// DOCKER_CONFIG for the CLI (trust dir lives here).
    pub config: PathBuf,
    docker: PathBuf,
}

impl Dockerd {
    /// `dir` must be short (unix socket path < 108 bytes).
    pub fn start(dir: &Path) -> Dockerd {
        let bin = require_bin("dockerd");
        let docker = require_bin("docker");
        let socket = dir.join("d.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path too long: {}",
            socket.display()
        );
        let exec_root = dir.join("x");
        let config = dir.join("cfg");
        std::fs::create_dir_all(&config).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ]);
        let proc = Proc::spawn("dockerd", cmd, dir.join("dockerd.log"));
        let mut d = Dockerd {
            proc,
            socket,
            config,
            docker,
        };
        let sock = d.socket.clone();
        let docker = d.docker.clone();
        wait_until("dockerd socket", Duration::from_secs(60), || {
            d.proc.assert_running();
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
        d
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

    pub fn docker(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        run(self.cmd(env, args), Duration::from_secs(180))
    }

    /// Run and require success.
    pub fn ok(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let o = self.docker(env, args);
        assert!(o.status.success(), "docker {args:?} failed:\n{}", text(&o));
        text(&o)
    }

    /// Import a tiny image (one static file) as `tag`.
    pub fn import_tiny_image(&self, tag: &str, content: &str) {
        let dir = self.config.parent().unwrap().join("rootfs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.txt"), content).unwrap();
        let tar = self.config.parent().unwrap().join("rootfs.tar");
        let o = run(
            {
                let mut c = Command::new(require_bin("tar"));
                c.arg("-C").arg(&dir).arg("-cf").arg(&tar).arg(".");
                c
            },
            Duration::from_secs(30),
        );
        assert!(o.status.success(), "tar: {}", text(&o));
        self.ok(&[], &["import", tar.to_str().unwrap(), tag]);
    }
}
