//! Token authentication end to end with real peers: the docker CLI 28 and dockerd 20.10, a
//! real docker-registry 2.8 configured with `auth: token` against swarmguard's built-in token
//! service, and the notary CLI with NOTARY_AUTH, against `swarmguard trust-server`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::dockerd::Dockerd;
use support::notary_cli::NotaryCli;
use support::registry::Registry;
use support::trust_server::TrustServer;
use support::{text, PASS};
use swarmguard_notary::auth::jwt::{Access, Claims, SigningKey};

const ISSUER: &str = "swarmguard-token-service";
const TRUST_SERVICE: &str = "swarmguard-trust";

/// Users alice (push and pull everywhere) and carol (pull only), passwords `<name>-pw`.
fn users_and_access(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let users = dir.join("users.htpasswd");
    let hash = |p: &str| swarmguard_notary::auth::users::hash_password(p).unwrap();
    std::fs::write(
        &users,
        format!("alice:{}\ncarol:{}\n", hash("alice-pw"), hash("carol-pw")),
    )
    .unwrap();
    let access = dir.join("access");
    std::fs::write(&access, "alice * push,pull\ncarol * pull\n").unwrap();
    vec![
        "--token-service-users".into(),
        users.display().to_string(),
        "--token-access".into(),
        access.display().to_string(),
    ]
}

/// (status, body) of a GET with an optional bearer token.
fn curl_get(url: &str, ca: Option<&Path>, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new(support::require_bin("curl"));
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    c.arg(url);
    let o = support::run(c, Duration::from_secs(60));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Sign a token with the server's own token key (read from its data dir).
fn server_token(
    server: &TrustServer,
    aud: &str,
    name: &str,
    actions: &[&str],
    exp_in: i64,
) -> String {
    use rustls_pki_types::pem::PemObject;
    let key = std::fs::read(server.data_dir.join("token-signing.key")).unwrap();
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key).unwrap();
    let cert = rustls_pki_types::CertificateDer::from_pem_file(server.token_cert()).unwrap();
    let k = SigningKey::new(pkcs8.secret_pkcs8_der(), &cert).unwrap();
    sign(&k, aud, name, actions, exp_in)
}

fn sign(k: &SigningKey, aud: &str, name: &str, actions: &[&str], exp_in: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    k.sign(&Claims {
        iss: ISSUER.into(),
        sub: "alice".into(),
        aud: aud.into(),
        exp: now + exp_in,
        nbf: Some(now - 10),
        iat: Some(now),
        jti: None,
        access: vec![Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }],
    })
    .unwrap()
}

/// A token signed by a key the server never trusted, with a valid-looking kid.
fn outsider_token(aud: &str, name: &str) -> String {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let k = SigningKey::new(&kp.serialize_der(), cert.der()).unwrap();
    sign(&k, aud, name, &["pull", "push"], 300)
}

/// Tokens refused by the trust server and by the real registry alike: another repository,
/// expired, signed outside the bundle (and, at the trust server, one for the registry).
fn bad_tokens_refused(server: &TrustServer, reg: &str, gun: &str) {
    let root = format!("/v2/{gun}/_trust/tuf/root.json");
    let trust = |path: &str, t: &str| {
        curl_get(
            &format!("{}{path}", server.url()),
            Some(&server.cert),
            Some(t),
        )
    };
    // Tokens the trust server refuses: another repository, expired, signed outside the bundle.
    for (what, t) in [
        (
            "other repository",
            server_token(
                server,
                TRUST_SERVICE,
                &format!("{reg}/team/other"),
                &["pull"],
                300,
            ),
        ),
        (
            "expired",
            server_token(server, TRUST_SERVICE, gun, &["pull"], -3600),
        ),
        ("outside the bundle", outsider_token(TRUST_SERVICE, gun)),
        (
            "for the registry",
            server_token(server, "registry", gun, &["pull"], 300),
        ),
    ] {
        let (code, body) = trust(&root, &t);
        assert_eq!(code, 401, "{what}: {body}");
    }
    // The real registry takes our tokens and refuses the same bad ones.
    let tags = format!("http://{reg}/v2/team/app/tags/list");
    let good = server_token(server, "registry", "team/app", &["pull"], 300);
    assert_eq!(curl_get(&tags, None, Some(&good)).0, 200);
    for (what, t) in [
        (
            "expired",
            server_token(server, "registry", "team/app", &["pull"], -3600),
        ),
        ("outside the bundle", outsider_token("registry", "team/app")),
        (
            "other repository",
            server_token(server, "registry", "team/other", &["pull"], 300),
        ),
    ] {
        assert_eq!(curl_get(&tags, None, Some(&t)).0, 401, "registry, {what}");
    }
}

#[test]
fn docker_login_and_trusted_push_with_token_auth() {
    let dir = support::short_tempdir("sga");
    let extra = users_and_access(&dir.path().join("auth"));
    let server = TrustServer::start_opts(&dir.path().join("srv"), extra, true);
    // A registry with token auth against our token service, trusting our token certificate.
    let registry = Registry::start_token(
        &dir.path().join("reg"),
        &server.realm(),
        "registry",
        ISSUER,
        &server.token_cert(),
    );
    // And an open registry, to reach the trust step without a registry login.
    let open = Registry::start(&dir.path().join("open"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let url = server.url();
    let env = [
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
        ("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASS),
        ("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASS),
    ];
    let reg = format!("127.0.0.1:{}", registry.port);
    let image = format!("{reg}/team/app:1.0");
    let gun = format!("{reg}/team/app");
    let anon = |path: &str| curl_get(&format!("{url}{path}"), Some(&server.cert), None);
    let pull_token = server_token(&server, TRUST_SERVICE, &gun, &["pull"], 300);
    let trust =
        |path: &str, t: &str| curl_get(&format!("{url}{path}"), Some(&server.cert), Some(t));
    let root = format!("/v2/{gun}/_trust/tuf/root.json");

    // Anonymous: the trust server challenges.
    let (code, _) = anon("/v2/");
    assert_eq!(code, 401);

    // Without a login the registry refuses the push before anything is signed.
    docker.import_tiny_image(&image, "token auth\n");
    let o = docker.docker_env(&env, &["push", &image]);
    assert!(
        !o.status.success(),
        "anonymous push succeeded:\n{}",
        text(&o)
    );
    assert_eq!(
        trust(&root, &pull_token).0,
        404,
        "trust data stored without login"
    );

    // docker login (dockerd asks our token service, the registry accepts its token).
    let out = docker.ok(&[], &["login", "-u", "alice", "-p", "alice-pw", &reg]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = docker.ok(&env, &["push", &image]);
    assert!(out.contains("Signing and pushing trust metadata"), "{out}");
    assert!(out.contains("Successfully signed"), "{out}");
    assert_eq!(trust(&root, &pull_token).0, 200);

    // carol may only pull: she pulls with trust from a fresh trust dir.
    docker.ok(&[], &["logout", &reg]);
    docker.ok(&[], &["login", "-u", "carol", "-p", "carol-pw", &reg]);
    docker.ok(&[], &["rmi", &image]);
    std::fs::remove_dir_all(docker.config.join("trust")).unwrap();
    let out = docker.ok(&env, &["pull", &image]);
    assert!(out.contains("Tagging"), "trusted pull as carol:\n{out}");

    // Through the open registry the layers go up, and the trust step decides: carol's token
    // grants pull only, so publishing is refused and nothing is stored; the same without any
    // login.
    let open_reg = format!("127.0.0.1:{}", open.port);
    let open_image = format!("{open_reg}/team/open:1.0");
    let open_gun = format!("{open_reg}/team/open");
    docker.import_tiny_image(&open_image, "open registry\n");
    docker.ok(&[], &["login", "-u", "carol", "-p", "carol-pw", &open_reg]);
    let o = docker.docker_env(&env, &["push", &open_image]);
    assert!(
        !o.status.success(),
        "pull-only user published:\n{}",
        text(&o)
    );
    assert!(
        text(&o).contains("Signing and pushing trust metadata"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("not authorized"), "{}", text(&o));
    docker.ok(&[], &["logout", &open_reg]);
    let o = docker.docker_env(&env, &["push", &open_image]);
    assert!(!o.status.success(), "anonymous publish:\n{}", text(&o));
    assert!(
        text(&o).contains("Signing and pushing trust metadata"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("not authorized"), "{}", text(&o));
    let open_pull = server_token(&server, TRUST_SERVICE, &open_gun, &["pull"], 300);
    let (code, _) = trust(&format!("/v2/{open_gun}/_trust/tuf/root.json"), &open_pull);
    assert_eq!(code, 404, "trust data stored by a refused publish");

    bad_tokens_refused(&server, &reg, &gun);
}

#[test]
fn notary_cli_with_notary_auth() {
    let dir = support::short_tempdir("sgb");
    let extra = users_and_access(&dir.path().join("auth"));
    let server = TrustServer::start_opts(&dir.path().join("srv"), extra, true);
    let gun = "127.0.0.1:5000/team/notary";
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "signed with a token\n").unwrap();
    let p = payload.to_str().unwrap();
    let pull_token = server_token(&server, TRUST_SERVICE, gun, &["pull"], 300);
    let stored = || {
        curl_get(
            &format!("{}/v2/{gun}/_trust/tuf/root.json", server.url()),
            Some(&server.cert),
            Some(&pull_token),
        )
        .0
    };

    // Wrong password and no credentials: init and publish fail (the server key request
    // already needs push) and nothing is stored.
    let wrong = NotaryCli::new(&dir.path().join("wrong"), &server.url(), &server.cert)
        .with_auth("alice", "not-her-password");
    let out = wrong.fails(&["init", "-p", gun]);
    assert!(out.contains("invalid username or password"), "{out}");
    let nobody = NotaryCli::new(&dir.path().join("nobody"), &server.url(), &server.cert);
    let out = nobody.fails(&["init", "-p", gun]);
    assert!(
        out.contains("not authorized") || out.contains("unauthorized"),
        "{out}"
    );
    assert_eq!(stored(), 404);

    // alice publishes; carol (pull only) reads it but cannot publish.
    let alice = NotaryCli::new(&dir.path().join("alice"), &server.url(), &server.cert)
        .with_auth("alice", "alice-pw");
    alice.ok(&["init", gun]);
    alice.ok(&["add", gun, "v1", p]);
    let out = alice.ok(&["publish", gun]);
    assert!(out.contains("Successfully published"), "{out}");
    assert_eq!(stored(), 200);
    let carol = NotaryCli::new(&dir.path().join("carol"), &server.url(), &server.cert)
        .with_auth("carol", "carol-pw");
    let list = carol.ok(&["list", gun]);
    assert!(list.contains("v1"), "{list}");
    // Her own new repository: her token grants pull only, so the publish is refused.
    let hers = "127.0.0.1:5000/team/carols";
    // (Already the server key request of `init` needs push.)
    let out = carol.fails(&["init", "-p", hers]);
    assert!(out.contains("not authorized"), "{out}");
    let hers_token = server_token(&server, TRUST_SERVICE, hers, &["pull"], 300);
    let (code, _) = curl_get(
        &format!("{}/v2/{hers}/_trust/tuf/root.json", server.url()),
        Some(&server.cert),
        Some(&hers_token),
    );
    assert_eq!(code, 404);
}

/// A manager that pins images through a trust server with token auth: it answers the Bearer
/// challenge with `--trust-credentials` (a pull-only account), and without credentials or
/// with a wrong password it refuses the service, naming the fix.
#[test]
fn manager_resolves_signed_images_through_token_auth() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    use support::manager::Manager;

    let dir = support::short_tempdir("sgm");
    let extra = users_and_access(&dir.path().join("auth"));
    let server = TrustServer::start_opts(&dir.path().join("srv"), extra, true);
    let gun = "127.0.0.1:5000/team/app";
    let payload = dir.path().join("manifest.json");
    std::fs::write(&payload, "{\"stands-in-for\":\"a manifest\"}\n").unwrap();
    let digest = {
        let d = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&payload).unwrap());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let alice = NotaryCli::new(&dir.path().join("alice"), &server.url(), &server.cert)
        .with_auth("alice", "alice-pw");
    alice.ok(&["init", gun]);
    alice.ok(&["add", gun, "v1", payload.to_str().unwrap()]);
    alice.ok(&["publish", gun]);

    let creds = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.display().to_string()
    };
    let start = |sub: &str, credentials: Option<String>| {
        let mut args = vec![
            "--trust-server".to_string(),
            server.url(),
            "--trust-ca".into(),
            server.cert.display().to_string(),
            "--require-signed".into(),
            "127.0.0.1:5000/".into(),
        ];
        if let Some(c) = credentials {
            args.extend(["--trust-credentials".to_string(), c]);
        }
        let log = dir.path().join(format!("{sub}.log"));
        let m = Manager::start_args_logged(&dir.path().join(sub), &args, "trace", &log);
        m.init_swarm(&[]);
        m
    };
    let image = format!("{gun}:v1");
    let create = |m: &Manager, name: &str| {
        m.docker(&[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
            &image,
            "sleep",
            "600",
        ])
    };

    // carol may only pull: enough for the manager, which only reads.
    let m = start("m1", Some(creds("carol.cred", "carol:carol-pw\n")));
    let out = create(&m, "app");
    assert!(out.status.success(), "{}", text(&out));
    let pinned = format!("{image}@sha256:{digest}");
    assert_eq!(m.wait_task_images("app"), std::slice::from_ref(&pinned));
    // Warm: the token is reused (the second create needs no new one, and still succeeds).
    let out = create(&m, "app2");
    assert!(out.status.success(), "{}", text(&out));
    drop(m);
    // Nothing secret in the trace-level log: neither the password nor any token issued.
    let log = std::fs::read_to_string(dir.path().join("m1.log")).unwrap();
    assert!(log.contains("TRACE"), "the log is not at trace level");
    let basic = base64::engine::general_purpose::STANDARD.encode("carol:carol-pw");
    for needle in ["carol-pw", basic.as_str(), "Bearer ey"] {
        assert!(
            !log.contains(needle),
            "{needle:?} reached the manager's log"
        );
    }

    // No credentials: refused, naming the option; a wrong password: refused, naming the user.
    let m = start("m2", None);
    let err = text(&create(&m, "app"));
    assert!(err.contains("--trust-credentials FILE"), "{err}");
    drop(m);
    let m = start("m3", Some(creds("bad.cred", "carol:not-her-password\n")));
    let err = text(&create(&m, "app"));
    assert!(
        err.contains("refused the credentials of user \"carol\""),
        "{err}"
    );
    assert!(!err.contains("not-her-password"), "{err}");
    let ls = m.docker_ok(&["service", "ls", "--format", "{{.Name}}"]);
    assert!(ls.trim().is_empty(), "{ls}");
    drop(m);

    // A credentials file others can read is refused at start, with the fix.
    let loose = creds("loose.cred", "carol:carol-pw\n");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["manager", "--data-dir"])
        .arg(dir.path().join("m4"))
        .args(["--trust-server", &server.url(), "--trust-ca"])
        .arg(&server.cert)
        .args([
            "--require-signed",
            "127.0.0.1:5000/",
            "--trust-credentials",
            &loose,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("chmod 600"), "{err}");
}
