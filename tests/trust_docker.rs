//! Docker Content Trust end to end with the real docker CLI 28, a real
//! dockerd 20.10 and Debian's docker-registry, against
//! `swarmguard trust-server`.

mod support;

use support::dockerd::Dockerd;
use support::registry::Registry;
use support::trust_server::TrustServer;
use support::{text, PASS};

fn digest_in(out: &str) -> String {
    let i = out
        .find("digest: sha256:")
        .unwrap_or_else(|| panic!("no digest in push output:\n{out}"));
    out[i + "digest: sha256:".len()..][..64].to_string()
}

fn signed_tags(inspect_json: &str) -> Vec<(String, String, Vec<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(inspect_json).unwrap_or_else(|e| panic!("{e}: {inspect_json}"));
    v[0]["SignedTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let signers = t["Signers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (
                t["SignedTag"].as_str().unwrap().to_string(),
                t["Digest"].as_str().unwrap().to_string(),
                signers,
            )
        })
        .collect()
}

/// `docker trust signer add` + `docker trust sign`, then `docker trust revoke`: a trusted pull
/// follows the delegation, and fails once the tag's signatures are revoked.
fn delegation_sign_and_revoke(
    docker: &Dockerd,
    env_after: &[(&str, &str)],
    dir: &std::path::Path,
    repo: &str,
) {
    // Delegation: docker trust signer add + docker trust sign.
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    docker.ok(
        env_after,
        &[
            "trust",
            "key",
            "generate",
            "alice",
            "--dir",
            keys.to_str().unwrap(),
        ],
    );
    let pubkey = keys.join("alice.pub");
    docker.ok(
        env_after,
        &[
            "trust",
            "signer",
            "add",
            "--key",
            pubkey.to_str().unwrap(),
            "alice",
            repo,
        ],
    );
    let signed2 = format!("{repo}:signed2");
    docker.import_tiny_image(&signed2, "signed by alice\n");
    let out = docker.ok(env_after, &["trust", "sign", &signed2]);
    assert!(out.contains("Successfully signed"), "{out}");
    let inspect = docker.ok(env_after, &["trust", "inspect", repo]);
    let tags = signed_tags(&inspect);
    let (_, d2, signers) = tags
        .iter()
        .find(|(t, _, _)| t == "signed2")
        .unwrap_or_else(|| panic!("signed2 missing:\n{inspect}"));
    assert!(signers.contains(&"alice".to_string()), "{inspect}");
    docker.ok(&[], &["rmi", &signed2]);
    let pulled = docker.ok(env_after, &["pull", &signed2]);
    assert!(pulled.contains(&format!("@sha256:{d2}")), "{pulled}");

    // docker trust revoke: signed2 loses its signatures, a trusted pull fails.
    docker.ok(env_after, &["trust", "revoke", "--yes", &signed2]);
    let inspect = docker.ok(env_after, &["trust", "inspect", repo]);
    assert!(
        !signed_tags(&inspect).iter().any(|(t, _, _)| t == "signed2"),
        "{inspect}"
    );
    docker.ok(&[], &["rmi", &signed2]);
    let o = docker.docker_env(env_after, &["pull", &signed2]);
    assert!(
        !o.status.success(),
        "pull of a revoked tag succeeded:\n{}",
        text(&o)
    );
}

#[test]
fn docker_trust_push_inspect_pull_sign_and_restart() {
    let dir = support::short_tempdir("sgd");
    let mut server = TrustServer::start(&dir.path().join("srv"));
    let registry = Registry::start(&dir.path().join("reg"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let url = server.url();
    let env = [
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
        ("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASS),
        ("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASS),
    ];
    let repo = format!("127.0.0.1:{}/demo/app", registry.port);
    let unsigned_repo = format!("127.0.0.1:{}/demo/unsigned", registry.port);
    let signed = format!("{repo}:signed");

    // Signed push.
    docker.import_tiny_image(&signed, "signed image\n");
    let out = docker.ok(&env, &["push", &signed]);
    let digest = digest_in(&out);
    assert!(out.contains("Signing and pushing trust metadata"), "{out}");

    // docker trust inspect shows the pushed digest.
    let inspect = docker.ok(&env, &["trust", "inspect", &repo]);
    let tags = signed_tags(&inspect);
    assert!(
        tags.iter().any(|(t, d, _)| t == "signed" && d == &digest),
        "{inspect}"
    );

    // An unsigned tag in the signed repo and an unsigned repo (pushed without DCT).
    docker.import_tiny_image(&format!("{repo}:unsigned"), "unsigned tag\n");
    docker.ok(&[], &["push", &format!("{repo}:unsigned")]);
    docker.import_tiny_image(&format!("{unsigned_repo}:latest"), "unsigned repo\n");
    docker.ok(&[], &["push", &format!("{unsigned_repo}:latest")]);
    docker.ok(
        &[],
        &[
            "rmi",
            &signed,
            &format!("{repo}:unsigned"),
            &format!("{unsigned_repo}:latest"),
        ],
    );

    // The trust server restarts between push and pull: nothing changes.
    server.restart();
    let env_after: Vec<(&str, &str)> = env.to_vec();
    let pulled = docker.ok(&env_after, &["pull", &signed]);
    assert!(
        pulled.contains(&format!("@sha256:{digest}")),
        "trusted pull did not resolve the signed digest:\n{pulled}"
    );
    let images = docker.ok(
        &[],
        &[
            "images",
            "--digests",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Digest}}",
        ],
    );
    assert!(
        images.contains(&format!("{signed} sha256:{digest}")),
        "{images}"
    );

    let o = docker.docker_env(&env_after, &["pull", &format!("{unsigned_repo}:latest")]);
    assert!(
        !o.status.success(),
        "pull of unsigned repo succeeded:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains("does not have trust data"),
        "{}",
        text(&o)
    );

    let o = docker.docker_env(&env_after, &["pull", &format!("{repo}:unsigned")]);
    assert!(
        !o.status.success(),
        "pull of unsigned tag succeeded:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("trust data for unsigned"), "{}", text(&o));

    delegation_sign_and_revoke(&docker, &env_after, dir.path(), &repo);
    server.proc.assert_running();
}

#[test]
fn docker_verifies_trust_server_certificate_for_non_loopback_repo() {
    let dir = support::short_tempdir("sgt");
    let server = TrustServer::start(&dir.path().join("srv"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let url = server.url();
    let env = [
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
    ];
    let name = "tls-probe.invalid/probe/x";

    // Our certificate is not trusted yet: the CLI must abort the TLS
    // handshake, so no HTTP request reaches the server. (The CLI only prints
    // "no signatures or cannot access", hiding the x509 error.)
    let requests = |s: &TrustServer| s.metric("swarmguard_trust_requests_total");
    let before = requests(&server);
    let o = docker.docker_env(&env, &["trust", "inspect", name]);
    assert!(!o.status.success());
    // +1: our own metrics request.
    assert_eq!(
        requests(&server),
        before + 1,
        "docker talked HTTP over an unverified certificate: {}",
        text(&o)
    );

    // Trust it (DOCKER_CONFIG/tls/<host:port>/ca.crt): now the requests arrive
    // (GET /v2/, GET root.json → 404 → no trust data).
    let tls = docker
        .config
        .join("tls")
        .join(format!("127.0.0.1:{}", server.port));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(&server.cert, tls.join("ca.crt")).unwrap();
    let before = requests(&server);
    let o = docker.docker_env(&env, &["trust", "inspect", name]);
    let t = text(&o);
    assert!(
        t.contains("no signatures or cannot access") || t.contains("does not have trust data"),
        "{t}"
    );
    assert!(
        requests(&server) >= before + 3,
        "verified TLS did not reach the server: {t}"
    );

    // A loopback repository skips verification entirely (insecure registry
    // default), which is why the name above is not on loopback.
    let before = requests(&server);
    std::fs::remove_file(tls.join("ca.crt")).unwrap();
    let o = docker.docker_env(&env, &["trust", "inspect", "127.0.0.1:1/probe/x"]);
    assert!(
        requests(&server) >= before + 3,
        "loopback probe: {}",
        text(&o)
    );
}
