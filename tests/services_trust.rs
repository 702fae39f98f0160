//! Content trust at the manager, with real peers: an image pushed with DOCKER_CONTENT_TRUST=1
//! (docker CLI 28 + dockerd 20.10 + docker-registry) to `swarmguard trust-server`; a
//! `swarmguard manager --trust-server … --require-signed 127.0.0.1:<port>/` pins every task to
//! the signed digest, keeps doing so after the tag is re-pointed without signing, and refuses an
//! unsigned repository at `service create`, naming it.

mod support;

use support::dockerd::Dockerd;
use support::manager::Manager;
use support::registry::Registry;
use support::trust_server::TrustServer;
use support::{text, PASS};

fn digest_in(out: &str) -> String {
    let i = out
        .find("digest: sha256:")
        .unwrap_or_else(|| panic!("no digest in push output:\n{out}"));
    format!("sha256:{}", &out[i + "digest: sha256:".len()..][..64])
}

/// A digest other than the signed one, and an unsigned repository, are refused at create.
fn refusals(m: &Manager, signed: &str, repointed: &str, unsigned: &str, reg: &str) {
    // A digest that is not the signed one is refused, and so is an unsigned repository.
    let forged = format!("{signed}@{repointed}");
    let out = m.docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "bad1",
        &forged,
    ]);
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not the signed digest"), "{err}");
    let out = m.docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "bad2",
        unsigned,
    ]);
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no trust data for {reg}/demo/unsigned: the repository is not signed"
        )),
        "{err}"
    );
    let ls = m.docker_ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.contains("bad"), "{ls}");
}

#[test]
fn service_images_are_pinned_to_the_signed_digest_and_unsigned_ones_refused() {
    let dir = support::short_tempdir("sgt");
    let server = TrustServer::start(&dir.path().join("srv"));
    let registry = Registry::start(&dir.path().join("reg"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let url = server.url();
    let env = [
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
        ("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASS),
        ("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASS),
    ];
    let reg = format!("127.0.0.1:{}", registry.port);
    let repo = format!("{reg}/demo/app");
    let signed = format!("{repo}:signed");
    docker.import_tiny_image(&signed, "signed image\n");
    let signed_digest = digest_in(&docker.ok(&env, &["push", &signed]));
    let unsigned = format!("{reg}/demo/unsigned:latest");
    docker.import_tiny_image(&unsigned, "unsigned repo\n");
    docker.ok(&[], &["push", &unsigned]);

    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_args(
        mdir.path(),
        &[
            "--trust-server".into(),
            url.clone(),
            "--trust-ca".into(),
            server.cert.display().to_string(),
            "--require-signed".into(),
            format!("{reg}/"),
        ],
    );
    m.init_swarm(&[]);

    // The CLI's default: it asks GET /distribution for the digest, which the manager answers
    // from the verified trust data, and sends tag@digest; the manager checks it again.
    let out = m.docker(&[
        "service", "create", "--detach", "--name", "app", &signed, "sleep", "600",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pinned = format!("{signed}@{signed_digest}");
    assert_eq!(m.wait_task_images("app"), std::slice::from_ref(&pinned));

    // Without the CLI's resolution the manager pins it itself.
    m.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "app2",
        &signed,
        "sleep",
        "600",
    ]);
    assert_eq!(m.wait_task_images("app2"), std::slice::from_ref(&pinned));

    // Re-point the tag in the registry without signing: new tasks still get the signed digest.
    docker.import_tiny_image(&signed, "an attacker's image\n");
    let repointed = digest_in(&docker.ok(&[], &["push", &signed]));
    assert_ne!(repointed, signed_digest);
    m.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "app3",
        &signed,
        "sleep",
        "600",
    ]);
    assert_eq!(m.wait_task_images("app3"), std::slice::from_ref(&pinned));

    refusals(&m, &signed, &repointed, &unsigned, &reg);

    // Every decision is in the audit log, and the chain verifies.
    let log = std::fs::read_to_string(mdir.path().join("audit.log")).unwrap();
    assert!(log.contains(&format!("\"outcome\":\"{pinned}\"")), "{log}");
    assert!(log.contains("\"allowed\":false"), "{log}");
    drop(m);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["audit", "verify", "--data-dir"])
        .arg(mdir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
