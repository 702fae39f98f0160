//! The cluster port's acceptor over rustls (ring), so the server certificate and the trusted
//! roots can be swapped at run time ([`ArcSwap`]) without a restart.
//!
//! SwarmKit's rules: TLS 1.2+, ALPN `h2`, client certificates requested but optional at the
//! handshake (joins have none) and, when given, verified against the cluster root; methods then
//! decide from the verified certificate (see `auth`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::limits::{Limits, Refused, Slot};

/// How long a peer may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take, after the handshake, to send the HTTP/2 connection preface (a
/// gRPC client sends it at once).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection without a client certificate (a join) is closed after this long without a
/// byte from the peer...
pub const ANONYMOUS_IDLE: Duration = Duration::from_secs(30);
/// ...and after this long in any case: a join takes seconds.
pub const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(300);
/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The deadlines of the cluster port's connections (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub handshake: Duration,
    pub preface: Duration,
    pub anonymous_idle: Duration,
    pub anonymous_lifetime: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            handshake: HANDSHAKE_TIMEOUT,
            preface: PREFACE_TIMEOUT,
            anonymous_idle: ANONYMOUS_IDLE,
            anonymous_lifetime: ANONYMOUS_LIFETIME,
        }
    }
}

/// What a handler learns about the connection: the peer address and, when the client offered
/// one, its certificate chain (already verified against the cluster root by rustls).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A server-side TLS connection handed to tonic. It holds its place in the port's [`Limits`]
/// until tonic drops it, replays the preface the acceptor already read, and closes itself
/// (a read error) when an anonymous connection passes its idle or lifetime deadline.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Preface bytes still to hand to hyper.
    replay: &'static [u8],
    idle: Option<Idle>,
    /// Anonymous: completes when a newer join needs this connection's place.
    evicted: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    _slot: Slot,
}

/// The deadline of an anonymous connection: `timer` fires at the earlier of the last read plus
/// `after` and `end`.
struct Idle {
    timer: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
    end: Instant,
}

impl Idle {
    fn new(d: &Deadlines) -> Idle {
        let end = Instant::now() + d.anonymous_lifetime;
        let first = (Instant::now() + d.anonymous_idle).min(end);
        Idle {
            timer: Box::pin(tokio::time::sleep_until(first)),
            after: d.anonymous_idle,
            end,
        }
    }

    fn touched(&mut self) {
        let at = (Instant::now() + self.after).min(self.end);
        self.timer.as_mut().reset(at);
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay = &self.replay[n..];
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let (Some(idle), true) = (this.idle.as_mut(), buf.filled().len() > before) {
                    idle.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .idle
                    .as_mut()
                    .is_some_and(|idle| idle.timer.as_mut().poll(cx).is_ready());
                if expired {
                    tracing::debug!(peer = %this.info.addr, "connection without a client certificate idle or too old: closed");
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                let evicted = this
                    .evicted
                    .as_mut()
                    .is_some_and(|e| e.as_mut().poll(cx).is_ready());
                if evicted {
                    tracing::debug!(peer = %this.info.addr, "oldest connection without a client certificate closed for a newer one");
                    return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and runs each TLS handshake and preface read in its own task,
/// bounded in time and counted in `limits`, with the configuration current at accept time;
/// finished connections go to `tx`.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    limits: Arc<Limits>,
    deadlines: Deadlines,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "cluster port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let slot = match limits.admit(addr.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(peer = %addr, reason = %why, "cluster port connection refused");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.load_full());
        let tx = tx.clone();
        tokio::spawn(async move {
            match establish(acceptor, tcp, addr, slot, &deadlines).await {
                Ok(conn) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(why) => {
                    tracing::debug!(peer = %addr, reason = %why, "cluster port connection closed")
                }
            }
        });
    }
}

/// Why a connection never reached tonic.
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    #[error("TLS handshake refused: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("no HTTP/2 preface in time")]
    PrefaceTimeout,
    #[error("reading the HTTP/2 preface: {0}")]
    PrefaceRead(io::Error),
    #[error("not an HTTP/2 connection preface")]
    NotHttp2,
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// The TLS handshake, then the HTTP/2 preface, each within its deadline; then the connection
/// takes its place as certified or anonymous.
async fn establish(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    d: &Deadlines,
) -> Result<Conn, Unfinished> {
    let mut stream = tokio::time::timeout(d.handshake, acceptor.accept(tcp))
        .await
        .map_err(|_| Unfinished::HandshakeTimeout)?
        .map_err(Unfinished::Handshake)?;
    let mut preface = [0u8; PREFACE.len()];
    tokio::time::timeout(d.preface, stream.read_exact(&mut preface))
        .await
        .map_err(|_| Unfinished::PrefaceTimeout)?
        .map_err(Unfinished::PrefaceRead)?;
    if &preface != PREFACE {
        return Err(Unfinished::NotHttp2);
    }
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
    let slot = slot.establish(certs.is_some())?;
    let idle = certs.is_none().then(|| Idle::new(d));
    let evicted = slot.evicted().map(Box::pin);
    Ok(Conn {
        inner: stream,
        info: PeerInfo { addr, certs },
        replay: PREFACE,
        idle,
        evicted,
        _slot: slot,
    })
}
