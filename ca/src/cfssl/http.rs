//! HTTP/1.1 to an external CA over the project's TLS stack (rustls + ring via tokio-rustls,
//! hyper's client connection): the URL rules, opening a connection, and one POST on it. The
//! caller bounds the whole exchange in time; `pool.rs` keeps connections alive between calls.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// SwarmKit's `CertificateMaxSize`: the most of a response body that is read.
pub const MAX_RESPONSE: usize = 256 * 1024;

/// A parsed external CA URL.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(crate) https: bool,
    /// Host as written (brackets removed from IPv6 literals).
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl Endpoint {
    /// `https://…` anywhere; `http://…` only to a loopback address (a warning is logged).
    pub(crate) fn parse(url: &str) -> Result<Endpoint, &'static str> {
        let uri: Uri = url.parse().map_err(|_| "not a valid URL")?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be https (or http to a loopback address)"),
        };
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("credentials in the URL are not supported");
        }
        if !https && !is_loopback(&host) {
            return Err("plain http is allowed only to a loopback address; use https");
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Endpoint {
            url: url.to_string(),
            https,
            host,
            port,
            path,
        })
    }

    /// The same server's `info` endpoint: the last path segment (`sign`/`authsign`) replaced.
    pub(crate) fn info(&self) -> Option<Endpoint> {
        let path = self.path.split('?').next()?;
        let base = path
            .strip_suffix("/authsign")
            .or_else(|| path.strip_suffix("/sign"))?;
        Some(Endpoint {
            url: format!("{}{}/info", self.origin(), base),
            path: format!("{base}/info"),
            ..self.clone()
        })
    }

    fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Resolves the host; plain http connects only to loopback addresses whatever a name resolves to.
async fn addresses(ep: &Endpoint) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
        .filter(|a| ep.https || a.ip().is_loopback())
        .collect();
    if addrs.is_empty() {
        return Err(format!("{} resolves to no usable address", ep.host));
    }
    Ok(addrs)
}

/// One HTTP/1.1 connection to an endpoint: the request half of hyper's client connection
/// (its driver runs as a task that ends when this is dropped or the peer closes).
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens a connection (TCP, then TLS for https) and starts its HTTP/1.1 driver.
pub(crate) async fn connect(
    ep: &Endpoint,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Sender, String> {
    let mut last = String::new();
    let mut tcp = None;
    for addr in addresses(ep).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    if ep.https {
        let name = ServerName::try_from(ep.host.clone())
            .map_err(|_| format!("{:?} is not a valid TLS server name", ep.host))?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        handshake(tls).await
    } else {
        handshake(tcp).await
    }
}

async fn handshake<IO>(io: IO) -> Result<Sender, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // Ends when every `Sender` is dropped, the peer closes, or the connection fails.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Why an exchange on a connection failed.
pub(crate) enum SendError {
    /// The request never left: the connection was already closed (a kept-alive connection the
    /// peer dropped). Safe to send again on another connection.
    NotSent(String),
    /// Anything else; the connection is not reused.
    Failed(String),
}

/// POSTs `body` as JSON on `sender` and returns the status and at most [`MAX_RESPONSE`] bytes
/// of body, read to the end so the connection can serve the next request.
pub(crate) async fn send(
    sender: &mut Sender,
    ep: &Endpoint,
    body: Bytes,
) -> Result<(u16, Vec<u8>), SendError> {
    let host = if ep.host.contains(':') {
        format!("[{}]:{}", ep.host, ep.port)
    } else {
        format!("{}:{}", ep.host, ep.port)
    };
    let req = hyper::Request::post(ep.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "swarmguard")
        .body(Full::new(body))
        .map_err(|e| SendError::Failed(format!("request: {e}")))?;
    if sender.ready().await.is_err() {
        return Err(SendError::NotSent(
            "the kept-alive connection was closed".into(),
        ));
    }
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => {
            let why = format!("HTTP: {}", e.error());
            return Err(match e.take_message() {
                Some(_) => SendError::NotSent(why),
                None => SendError::Failed(why),
            });
        }
    };
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| SendError::Failed(format!("reading the response: {e}")))?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("https://ca.example:8888/api/v1/cfssl/sign").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("ca.example", 8888, "/api/v1/cfssl/sign")
        );
        assert_eq!(
            e.info().unwrap().url,
            "https://ca.example:8888/api/v1/cfssl/info"
        );
        let e = Endpoint::parse("http://127.0.0.1:9/api/v1/cfssl/authsign").unwrap();
        assert_eq!(e.info().unwrap().path, "/api/v1/cfssl/info");
        assert!(Endpoint::parse("http://[::1]:9/x").is_ok());
        assert!(Endpoint::parse("http://localhost/x").is_ok());
        for bad in [
            "http://10.0.0.1:8888/api/v1/cfssl/sign",
            "http://ca.example/sign",
            "ftp://127.0.0.1/x",
            "https://user:pw@ca.example/sign",
            "not a url",
            "/relative",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Endpoint::parse("https://ca/other")
            .unwrap()
            .info()
            .is_none());
    }
}
