//! Kept-alive connections to one external CA: a signature costs a round trip, not a TCP (and
//! TLS) handshake each time. Bounded: at most [`MAX_OPEN`] requests per CA are in flight (each
//! on a connection of its own), at most [`MAX_OPEN`] idle connections are kept, and an idle one
//! is dropped after [`MAX_IDLE`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::http::{self, Endpoint, SendError, Sender};

/// Requests in flight at once to one CA (more callers wait, within their timeout), and idle
/// connections kept.
pub(crate) const MAX_OPEN: usize = 32;
/// An idle connection older than this is closed rather than reused: the CA may have dropped it.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(30);

/// The connections to one endpoint.
pub(crate) struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
    in_flight: Semaphore,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            in_flight: Semaphore::new(MAX_OPEN),
        }
    }
}

impl Pool {
    /// The most recently used idle connection that may still be open.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Old or closed ones go (dropping the sender ends the connection).
        idle.retain(|(c, since)| now.duration_since(*since) < MAX_IDLE && !c.is_closed());
        idle.pop().map(|(c, _)| c)
    }

    fn put_idle(&self, conn: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !conn.is_closed() && idle.len() < MAX_OPEN {
            idle.push((conn, Instant::now()));
        }
    }

    /// POSTs `body` on an idle connection if there is one, else on a new one. A kept-alive
    /// connection the CA closed meanwhile is detected before the request leaves, and the request
    /// goes on a new connection instead: nothing is ever sent twice.
    pub(crate) async fn post(
        &self,
        ep: &Endpoint,
        tls: &Arc<rustls::ClientConfig>,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let body = Bytes::from(body);
        let _turn = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| "connection pool closed".to_string())?;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => (http::connect(ep, tls).await?, false),
            };
            match http::send(&mut conn, ep, body.clone()).await {
                Ok(answer) => {
                    self.put_idle(conn);
                    return Ok(answer);
                }
                // Each retry drops one dead idle connection, so this loop ends.
                Err(SendError::NotSent(_)) if reused => continue,
                Err(SendError::NotSent(why) | SendError::Failed(why)) => return Err(why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A keep-alive HTTP server answering `requests_per_conn` requests on each connection, then
    /// closing it; counts connections and requests.
    async fn server(requests_per_conn: usize) -> (Endpoint, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (conns.clone(), reqs.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..requests_per_conn {
                        // Each test request arrives in one read: headers and a 2-byte body.
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = br#"{"success":true}"#;
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        s.write_all(head.as_bytes()).await.unwrap();
                        s.write_all(body).await.unwrap();
                    }
                    // Closes the connection: the client's next request must not be lost.
                });
            }
        });
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}/api/v1/cfssl/sign")).unwrap();
        (ep, conns, reqs)
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    #[tokio::test]
    async fn requests_share_one_kept_alive_connection() {
        let (ep, conns, reqs) = server(usize::MAX).await;
        let pool = Pool::default();
        for _ in 0..5 {
            let (status, _) = pool.post(&ep, &tls(), b"{}".to_vec()).await.unwrap();
            assert_eq!(status, 200);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(reqs.load(Ordering::SeqCst), 5);
    }

    /// The CA closes a kept-alive connection: the next request goes on a new connection,
    /// and every request reaches the CA exactly once.
    #[tokio::test]
    async fn a_connection_the_ca_closed_is_replaced_and_nothing_is_sent_twice() {
        let (ep, conns, reqs) = server(1).await;
        let pool = Pool::default();
        for _ in 0..4 {
            let (status, _) = pool.post(&ep, &tls(), b"{}".to_vec()).await.unwrap();
            assert_eq!(status, 200);
            // Let the client see the close, as an idle connection would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reqs.load(Ordering::SeqCst), 4);
        assert_eq!(conns.load(Ordering::SeqCst), 4);
    }

    /// Concurrent callers never open more than MAX_OPEN connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_connections_are_bounded() {
        let (ep, conns, reqs) = server(usize::MAX).await;
        let pool = Arc::new(Pool::default());
        let mut tasks = Vec::new();
        for _ in 0..(MAX_OPEN * 3) {
            let (pool, ep) = (pool.clone(), ep.clone());
            tasks.push(tokio::spawn(async move {
                pool.post(&ep, &tls(), b"{}".to_vec()).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().0, 200);
        }
        assert!(conns.load(Ordering::SeqCst) <= MAX_OPEN);
        assert_eq!(reqs.load(Ordering::SeqCst), MAX_OPEN * 3);
    }
}
