//! `swarmguard trust-signer` as a separate process over gRPC + mutual TLS:
//! the trust server holds no private key, the real notary CLI works through
//! it, and clients without a certificate from the signer's CA are refused.

mod support;

use std::process::Command;
use std::time::Duration;

use support::notary_cli::NotaryCli;
use support::trust_server::TrustServer;
use support::trust_signer::TrustSigner;
use support::TestCa;

#[test]
fn notary_cli_through_remote_signer() {
    let dir = support::short_tempdir("sgs");
    let signer = TrustSigner::start(&dir.path().join("signer"));
    let mut server = TrustServer::start_with(&dir.path().join("srv"), signer.server_args());
    let gun = "127.0.0.1:5000/demo/remote";
    let publisher = NotaryCli::new(&dir.path().join("pub"), &server.url(), &server.cert);
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "signed via the remote signer\n").unwrap();
    let payload = payload.to_str().unwrap();
    publisher.ok(&["init", gun]);
    publisher.ok(&["add", gun, "v1", payload]);
    publisher.ok(&["publish", gun]);
    // Server-managed snapshot key lives in the signer too.
    publisher.ok(&["key", "rotate", gun, "snapshot", "-r"]);
    publisher.ok(&["add", gun, "v2", payload]);
    publisher.ok(&["publish", gun]);
    let reader = NotaryCli::new(&dir.path().join("reader"), &server.url(), &server.cert);
    let list = reader.ok(&["list", gun]);
    assert!(list.contains("v1") && list.contains("v2"), "{list}");
    reader.ok(&["verify", gun, "v2", "-i", payload, "-q"]);

    // The trust server's own database holds no signer keys.
    server.proc.stop(Duration::from_secs(10));
    let db = std::fs::read(server.data_dir.join("trust.redb")).unwrap();
    assert!(
        !db.windows(11).any(|w| w == b"signer_keys"),
        "trust server stored signer keys"
    );
    server.restart();
    let list =
        NotaryCli::new(&dir.path().join("reader2"), &server.url(), &server.cert).ok(&["list", gun]);
    assert!(list.contains("v2"), "{list}");
}

#[test]
fn signer_requires_client_certificate_from_its_ca() {
    let dir = support::short_tempdir("sgx");
    let signer = TrustSigner::start(&dir.path().join("signer"));
    // `swarmguard trust-signer` handed over to the signer-only binary (same process, exec).
    let exe = std::fs::read_link(format!("/proc/{}/exe", signer.proc.pid())).unwrap();
    assert!(
        exe.ends_with("swarmguard-trust-signer"),
        "the signer runs as {}",
        exe.display()
    );

    // No client certificate: the TLS handshake is refused.
    let mut c = Command::new(support::require_bin("curl"));
    c.args(["-sS", "--http2", "--cacert"])
        .arg(&signer.ca.cert)
        .args(["-X", "POST", "-H", "content-type: application/grpc"])
        .arg(format!(
            "{}/swarmguard.trust.signer.v1.TrustSigner/ListKeys",
            signer.url()
        ));
    let o = support::run(c, Duration::from_secs(30));
    assert!(
        !o.status.success(),
        "signer answered a client without a certificate: {}",
        support::text(&o)
    );

    // A trust server with a client certificate from another CA cannot create
    // or use keys: key requests fail with 500 and nothing is created.
    let rogue = TestCa::new(&dir.path().join("rogue"), "rogue-ca");
    let (rc, rk) = rogue.issue("trust-server", false);
    let mut args = signer.server_args();
    let n = args.len();
    args[n - 3] = rc.display().to_string();
    args[n - 1] = rk.display().to_string();
    let server = TrustServer::start_with(&dir.path().join("srv"), args);
    let mut c = Command::new(support::require_bin("curl"));
    c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&server.cert)
        .arg(format!(
            "{}/v2/127.0.0.1:5000/demo/x/_trust/tuf/timestamp.key",
            server.url()
        ));
    let o = support::run(c, Duration::from_secs(60));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "500",
        "{}",
        support::text(&o)
    );
}
