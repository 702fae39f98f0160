//! The cfssl client against hostile or broken peers (a raw loopback socket stands in for cfssl;
//! the real cfssl is in the workspace's `tests/external_ca.rs`): a peer that never answers is cut
//! off by the timeout, an oversized answer is not read past the limit, garbage is retryable,
//! `success:false` is a refusal with cfssl's text, and URLs that would leak requests are refused.

use std::time::{Duration, Instant};

use swarmguard_ca::cfssl::{CaSettings, CfsslClient, CfsslError, CfsslSettings, MAX_RESPONSE};
use swarmguard_ca::{check_csr, generate_node_key_and_csr, new_id, Expected, NodeRole, RootCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client(urls: &[String], timeout: Duration) -> Result<CfsslClient, CfsslError> {
    CfsslClient::new(CfsslSettings {
        cas: urls
            .iter()
            .map(|u| CaSettings {
                url: u.clone(),
                auth_key: None,
                extra_trust_pem: Vec::new(),
            })
            .collect(),
        trust_pem: Vec::new(),
        client_identity: None,
        timeout,
    })
}

/// A one-connection-at-a-time peer that reads the request head and answers `reply` (or nothing).
async fn peer(reply: Option<Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/cfssl/sign", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(r) => {
                        let _ = s.write_all(&r).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

fn http(status: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn sign(c: &CfsslClient) -> Result<(), CfsslError> {
    let root = RootCa::from_cert_pem(RootCa::create().unwrap().cert_pem()).unwrap();
    let (_, csr) = generate_node_key_and_csr();
    let checked = check_csr(&csr).unwrap();
    let (node, cluster) = (new_id(), new_id());
    let want = Expected {
        node_id: &node,
        role: NodeRole::Worker,
        cluster_id: &cluster,
        csr: &checked,
        expiry: Duration::from_secs(3600 * 24),
    };
    c.sign(&root, &csr, &want).await.map(|_| ())
}

#[tokio::test]
async fn a_silent_peer_is_cut_off_by_the_timeout_and_the_next_ca_is_tried() {
    let silent = peer(None).await;
    let refusing = peer(Some(http(
        "400 Bad Request",
        br#"{"success":false,"result":null,"errors":[{"code":400,"message":"invalid token"}],"messages":[]}"#,
    )))
    .await;
    let c = client(std::slice::from_ref(&silent), Duration::from_millis(300)).unwrap();
    let start = Instant::now();
    let e = sign(&c).await.unwrap_err();
    assert!(matches!(e, CfsslError::Timeout { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(start.elapsed() < Duration::from_secs(3));
    // In order: the silent one times out, the next one's refusal is the outcome.
    let c = client(&[silent, refusing], Duration::from_millis(300)).unwrap();
    let e = sign(&c).await.unwrap_err();
    assert!(
        matches!(&e, CfsslError::Refused { message, .. } if message.contains("invalid token")),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn oversized_and_garbage_answers_are_retryable_failures() {
    let mut huge = br#"{"success":true,"result":{"certificate":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'A', MAX_RESPONSE * 4));
    huge.extend_from_slice(br#""}}"#);
    for reply in [
        http("200 OK", &huge),
        http("200 OK", b"<html>not cfssl</html>"),
        http(
            "500 Internal Server Error",
            br#"{"success":false,"errors":[{"code":500,"message":"db"}]}"#,
        ),
        b"SSH-2.0-OpenSSH\r\n".to_vec(),
    ] {
        let url = peer(Some(reply)).await;
        let c = client(&[url], Duration::from_secs(2)).unwrap();
        let e = sign(&c).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}

#[tokio::test]
async fn a_success_with_a_wrong_certificate_is_refused() {
    // Signed by a CA the cluster does not trust.
    let other = RootCa::create().unwrap();
    let (_, csr) = generate_node_key_and_csr();
    let cert = other
        .issue_node_certificate(
            &check_csr(&csr).unwrap(),
            &new_id(),
            NodeRole::Worker,
            &new_id(),
            Duration::from_secs(3600 * 24),
        )
        .unwrap();
    let body = serde_json::json!({"success": true, "result": {"certificate": String::from_utf8(cert.cert_pem).unwrap()}, "errors": [], "messages": []});
    let url = peer(Some(http("200 OK", body.to_string().as_bytes()))).await;
    let c = client(&[url], Duration::from_secs(2)).unwrap();
    let e = sign(&c).await.unwrap_err();
    assert!(matches!(e, CfsslError::BadCertificate { .. }), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn urls_that_would_leak_requests_are_refused() {
    for bad in [
        "http://192.0.2.1:8888/api/v1/cfssl/sign",
        "http://ca.example.com/api/v1/cfssl/sign",
        "https://user:secret@ca.example.com/api/v1/cfssl/sign",
        "file:///etc/passwd",
    ] {
        let e = client(&[bad.to_string()], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, CfsslError::BadUrl { .. }), "{bad}: {e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
    assert!(matches!(
        client(&[], Duration::from_secs(1)),
        Err(CfsslError::NoEndpoint)
    ));
}

#[tokio::test]
async fn https_to_a_server_outside_the_trusted_roots_fails_the_handshake() {
    // A plain TCP peer that answers TLS with garbage: the handshake fails, nothing is sent.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/api/v1/cfssl/sign", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        }
    });
    let c = client(&[url], Duration::from_secs(2)).unwrap();
    let e = sign(&c).await.unwrap_err();
    assert!(
        matches!(&e, CfsslError::Unreachable { why, .. } if why.contains("TLS")),
        "{e}"
    );
}
