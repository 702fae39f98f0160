//! Debian's `docker-registry` (distribution 2.8) on a loopback port.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{free_port, port_open, require_bin, wait_until, Proc};

pub struct Registry {
    pub proc: Proc,
    pub port: u16,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Self::start_cfg(dir, "")
    }

    /// With `auth: token` against a token service (docker-registry 2.8's option keys).
    pub fn start_token(
        dir: &Path,
        realm: &str,
        service: &str,
        issuer: &str,
        bundle: &Path,
    ) -> Registry {
        Self::start_cfg(
            dir,
            &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            ),
        )
    }

    fn start_cfg(dir: &Path, extra: &str) -> Registry {
        let bin = require_bin("docker-registry");
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = dir.join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                    dir.join("storage").display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&cfg);
            let mut proc = Proc::spawn("docker-registry", cmd, dir.join("registry.log"));
            let mut up = false;
            wait_until("docker-registry", Duration::from_secs(20), || {
                if let Ok(Some(_)) = proc_exited(&mut proc) {
                    return true;
                }
                up = port_open(port);
                up
            });
            if up {
                return Registry { proc, port };
            }
            // Port was taken in between: try another.
        }
        panic!("could not start docker-registry");
    }
}

fn proc_exited(p: &mut Proc) -> std::io::Result<Option<()>> {
    // A registry that lost the port race exits; report that as "done waiting".
    let log = p.log_text();
    Ok(if log.contains("address already in use") {
        Some(())
    } else {
        None
    })
}
