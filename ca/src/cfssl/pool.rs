//! Kept-alive connections to one external CA: a signature costs a round trip, not a TCP (and
//! TLS) handshake each time. Bounded: at most [`MAX_OPEN`] connections per CA are open (in use
//! or idle) and an idle one is dropped after [`MAX_IDLE`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::http::{self, Endpoint, SendError, Sender};

/// Connections open at once to one CA; more callers wait for one (within their timeout).
pub(crate) const MAX_OPEN: usize = 32;
/// An idle connection older than this is closed rather than reused: the CA may have dropped it.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(30);

/// A connection and its place among the [`MAX_OPEN`].
struct Conn {
    sender: Sender,
    _slot: OwnedSemaphorePermit,
}

/// The connections to one endpoint.
pub(crate) struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    slots: Arc<Semaphore>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(MAX_OPEN)),
        }
    }
}

impl Pool {
    /// The most recently used idle connection that may still be open.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Old or closed ones go (dropping a connection frees its slot).
        idle.retain(|(c, since)| now.duration_since(*since) < MAX_IDLE && !c.sender.is_closed());
        idle.pop().map(|(c, _)| c)
    }

    fn put_idle(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push((conn, Instant::now()));
    }

    async fn open(&self, ep: &Endpoint, tls: &Arc<rustls::ClientConfig>) -> Result<Conn, String> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "connection pool closed".to_string())?;
        Ok(Conn {
            sender: http::connect(ep, tls).await?,
            _slot: slot,
        })
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
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => (self.open(ep, tls).await?, false),
            };
            match http::send(&mut conn.sender, ep, body.clone()).await {
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
