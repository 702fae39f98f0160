//! The real notary CLI against `swarmguard trust-server`: init, add, publish,
//! list, verify, server-managed snapshot key rotation, delete --remote, and
//! durability across a server restart.

mod support;

use support::notary_cli::NotaryCli;
use support::trust_server::TrustServer;

#[test]
fn notary_cli_full_flow() {
    let dir = support::short_tempdir("sgn");
    let mut server = TrustServer::start(&dir.path().join("srv"));
    let gun = "127.0.0.1:5000/demo/notarycli";
    let publisher = NotaryCli::new(&dir.path().join("pub"), &server.url(), &server.cert);
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "hello from swarmguard\n").unwrap();
    let payload_s = payload.to_str().unwrap();

    publisher.ok(&["init", gun]);
    publisher.ok(&["publish", gun]);
    publisher.ok(&["add", gun, "v1", payload_s]);
    publisher.ok(&["publish", gun]);

    // A fresh reader sees and verifies the target.
    let reader = NotaryCli::new(&dir.path().join("reader"), &server.url(), &server.cert);
    let list = reader.ok(&["list", gun]);
    assert!(list.contains("v1"), "list output:\n{list}");
    let out = reader.ok(&["verify", gun, "v1", "-i", payload_s, "-q"]);
    assert!(!out.contains("error"), "{out}");
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "tampered\n").unwrap();
    reader.fails(&["verify", gun, "v1", "-i", other.to_str().unwrap(), "-q"]);

    // Hand the snapshot key to the server, then publish without it.
    publisher.ok(&["key", "rotate", gun, "snapshot", "-r"]);
    publisher.ok(&["add", gun, "v2", payload_s]);
    publisher.ok(&["publish", gun]);
    let list = reader.ok(&["list", gun]);
    assert!(
        list.contains("v1") && list.contains("v2"),
        "list output:\n{list}"
    );

    // Restart: everything is still there (redb is durable).
    server.restart();
    let fresh = NotaryCli::new(&dir.path().join("reader2"), &server.url(), &server.cert);
    let list = fresh.ok(&["list", gun]);
    assert!(
        list.contains("v1") && list.contains("v2"),
        "after restart:\n{list}"
    );

    // Timestamp rotation on the server.
    publisher.ok(&["key", "rotate", gun, "timestamp", "-r"]);
    let list = fresh.ok(&["list", gun]);
    assert!(list.contains("v2"), "after timestamp rotation:\n{list}");

    // Root key rotation: the new root is signed by the old and the new root
    // key; a reader holding the old root follows it.
    publisher.ok(&["key", "rotate", gun, "root"]);
    let list = reader.ok(&["list", gun]);
    assert!(
        list.contains("v2"),
        "reader with cached old root after root rotation:\n{list}"
    );
    publisher.ok(&["remove", gun, "v1", "-p"]);
    let list = reader.ok(&["list", gun]);
    assert!(
        list.contains("v2") && !list.contains("v1 "),
        "after remove:\n{list}"
    );

    // delete --remote: gone for a new reader.
    publisher.ok(&["delete", gun, "--remote"]);
    let gone = NotaryCli::new(&dir.path().join("reader3"), &server.url(), &server.cert);
    let out = gone.fails(&["list", gun]);
    assert!(
        out.contains("does not have trust data") || out.contains("not found"),
        "{out}"
    );
}
