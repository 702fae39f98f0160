//! `swarmguard agent join` as a child process of the test: the command, and a running agent
//! that is stopped by the PID the test started.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `swarmguard agent join` of the manager at `addr` with `token`, its data in `dir`, inside
/// `netns` when given; with `no_run` it exits once joined (`--no-run`).
pub fn join_cmd(netns: Option<&str>, dir: &Path, addr: &str, token: &str, no_run: bool) -> Command {
    let mut cmd = super::command_in(netns, env!("CARGO_BIN_EXE_swarmguard"));
    cmd.args(["agent", "join"]);
    if no_run {
        cmd.arg("--no-run");
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .arg(addr)
        .env("SWARMGUARD_JOIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// A running agent, killed by the PID this test started when dropped.
pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Joins the manager at `addr` with `token` (inside `netns` when given) and keeps running.
    pub fn join(netns: Option<&str>, addr: &str, token: &str) -> Agent {
        let dir = super::short_tempdir("sg-ag-");
        let child = join_cmd(netns, dir.path(), addr, token, false)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start swarmguard agent");
        Agent { child, dir }
    }

    /// The agent's data dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
