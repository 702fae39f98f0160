//! A loopback bridge between two network namespaces: it listens on `127.0.0.1:port` in one and
//! connects to `127.0.0.1:port` in the other, so a second dockerd in its own namespace reaches
//! a manager that lives in the first one at the very address the manager advertises. Traffic
//! stays on each namespace's loopback. Threads enter a namespace with setns, one per socket side.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
}

pub struct Bridge {
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Bridge {
    /// Listens on `127.0.0.1:port` inside `listen_ns`, forwards to `127.0.0.1:port` in `target_ns`.
    pub fn start(port: u16, listen_ns: &str, target_ns: &str) -> Bridge {
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (flag, streams) = (stop.clone(), open.clone());
        let (listen_ns, target_ns) = (listen_ns.to_string(), target_ns.to_string());
        std::thread::spawn(move || {
            enter(&listen_ns);
            let l = TcpListener::bind(("127.0.0.1", port)).expect("bridge bind");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let Ok((inbound, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                inbound.set_nonblocking(false).unwrap();
                let (target, streams) = (target_ns.clone(), streams.clone());
                std::thread::spawn(move || {
                    enter(&target);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let (i2, o2) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                    streams
                        .lock()
                        .unwrap()
                        .extend([inbound.try_clone().unwrap(), outbound.try_clone().unwrap()]);
                    std::thread::spawn(move || pipe(i2, o2));
                    pipe(outbound, inbound);
                });
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("bridge listening");
        Bridge { stop, open }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
