//! Hostile requests over real HTTPS against the `swarmguard trust-server`
//! binary (curl as the client): each gets a clear 400 JSON error and leaves
//! nothing behind; the full attack table runs in-process in
//! notary/tests/attacks.rs.

mod support;

use std::process::Command;
use std::time::Duration;

use support::trust_server::TrustServer;

/// (status, body)
fn curl(server: &TrustServer, args: &[&str], path: &str) -> (u16, String) {
    let mut c = Command::new(support::require_bin("curl"));
    c.args([
        "-sS",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&server.cert)
    .args(args)
    .arg(format!("{}{}", server.url(), path));
    let o = support::run(c, Duration::from_secs(60));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn assert_400(what: &str, (code, body): (u16, String)) {
    assert_eq!(code, 400, "{what}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    assert!(v["errors"][0]["code"].is_string(), "{what}: {body}");
}

#[test]
fn hostile_requests_over_https() {
    let dir = support::short_tempdir("sgw");
    let server = TrustServer::start(&dir.path().join("srv"));
    let gun = "127.0.0.1:5000/demo/wire";

    let (code, body) = curl(&server, &[], "/v2/");
    assert_eq!((code, body.as_str()), (200, "{}"));
    let (code, body) = curl(&server, &[], &format!("/v2/{gun}/_trust/tuf/root.json"));
    assert_eq!(code, 404);
    assert!(body.contains("METADATA_NOT_FOUND"));

    let post = |args: &[&str], path: &str| curl(&server, &[&["-X", "POST"], args].concat(), path);
    let tuf = format!("/v2/{gun}/_trust/tuf/");
    assert_400(
        "no multipart",
        post(
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "{}",
            ],
            &tuf,
        ),
    );
    assert_400(
        "malformed multipart",
        post(
            &[
                "-H",
                "Content-Type: multipart/form-data; boundary=xyz",
                "--data-binary",
                "--xyz\r\ngarbage",
            ],
            &tuf,
        ),
    );
    let part = dir.path().join("root");
    std::fs::write(
        &part,
        b"{\"signed\":{\"_type\":\"Root\"},\"signatures\":[]}",
    )
    .unwrap();
    let form = format!("files=@{};filename=root", part.display());
    assert_400(
        "bogus root via a real multipart encoder",
        post(&["-F", &form], &tuf),
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'{'; 20 << 20]).unwrap();
    let big_form = format!("files=@{};filename=targets", big.display());
    assert_400("oversized body", post(&["-F", &big_form], &tuf));

    for bad in ["a/../b", "a/./b", "a//b", "a%0ab", "a%00b", "a\\b"] {
        let path = format!("/v2/127.0.0.1:5000/{bad}/_trust/tuf/");
        assert_400(&format!("GUN {bad:?}"), post(&["-F", &form], &path));
        let path = format!("/v2/127.0.0.1:5000/{bad}/_trust/tuf/timestamp.key");
        assert_400(&format!("GUN {bad:?} key"), curl(&server, &[], &path));
    }
    // Nothing was stored, and no key was created for a bad name.
    let (code, _) = curl(&server, &[], &format!("/v2/{gun}/_trust/tuf/root.json"));
    assert_eq!(code, 404);
    let (code, body) = curl(&server, &[], "/v2/_trust/changefeed?change_id=0&records=10");
    assert_eq!(code, 200);
    assert!(body.contains("\"count\":0"), "{body}");
    assert!(server.metric("swarmguard_trust_uploads_total{result=\"accepted\"}") == 0);
}
