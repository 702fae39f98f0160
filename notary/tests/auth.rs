//! Token authentication in process: the scope each route needs (as notary-server 0.7), the
//! JWT checks (issuer, audience, expiry and not-before with 60 s leeway, kid in the bundle or
//! an x5c chain to it, algorithm fitting the key), and the built-in token service (users,
//! access list, failed-login limits).

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use http_body_util::BodyExt;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use swarmguard_notary::auth::jwt::{libtrust_kid, SigningKey, Verifier};
use swarmguard_notary::auth::service::{LoginLimits, TokenService};
use swarmguard_notary::auth::users::{hash_password, AccessList, Users};
use swarmguard_notary::auth::{Realm, TokenAuth};
use swarmguard_notary::server::{router, App, Options};
use swarmguard_notary::signer::{LocalSigner, MasterKey};
use swarmguard_notary::store::Store;
use swarmguard_notary::validate::Limits;
use tower::ServiceExt;
use x509_parser::prelude::{FromDer, X509Certificate};

const GUN: &str = "127.0.0.1:5000/team/app";
const SERVICE: &str = "trust-svc";
const ISSUER: &str = "test-issuer";

/// A P-256 key with a certificate (self-signed, or issued by `ca`).
struct CertKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    der: Vec<u8>,
    pem: String,
    kp: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn cert_key(cn: &str, ca: Option<&CertKey>, is_ca: bool, days: (i64, i64)) -> CertKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = match ca {
        Some(ca) => {
            let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.kp).unwrap();
            params.signed_by(&kp, &issuer).unwrap()
        }
        None => params.self_signed(&kp).unwrap(),
    };
    let pkcs8 = kp.serialize_der();
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .unwrap();
    CertKey {
        pair,
        pkcs8,
        der: cert.der().to_vec(),
        pem: cert.pem(),
        kp,
        cert,
    }
}

impl CertKey {
    fn kid(&self) -> String {
        let (_, c) = X509Certificate::from_der(&self.der).unwrap();
        libtrust_kid(c.public_key().raw)
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A compact JWS with any header and claims, signed ES256 by `key`.
fn jwt(header: Value, claims: Value, key: &EcdsaKeyPair) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn claims(name: &str, actions: &[&str], exp_in: i64) -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now() + exp_in, "nbf": now() - 5,
           "iat": now(), "jti": "x",
           "access": [{"type": "repository", "name": name, "actions": actions}]})
}

struct AuthServer {
    router: axum::Router,
    signer: CertKey,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    /// Auth on, trusting `signer`'s certificate (and `extra_bundle`); with a token service
    /// when `users`/`access` are given.
    fn new(extra_bundle: &str, service: Option<(&str, &str, LoginLimits)>) -> AuthServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let master = MasterKey::decode(&STANDARD.encode([0x42u8; 32])).unwrap();
        let local = Arc::new(LocalSigner::new(store.database(), master).unwrap());
        let signer = cert_key("token signer", None, false, (-1, 30));
        let bundle = format!("{}{extra_bundle}", signer.pem);
        let verifier = Verifier::new(ISSUER, SERVICE, bundle.as_bytes()).unwrap();
        let auth = TokenAuth::new(
            verifier,
            Realm::Fixed("https://trust.example/auth/token".into()),
        );
        let tokens = service.map(|(users, access, limits)| {
            let users_file = dir.path().join("users");
            std::fs::write(&users_file, users).unwrap();
            Arc::new(TokenService::new(
                Users::load(&users_file).unwrap(),
                AccessList::parse(access).unwrap(),
                SigningKey::new(&signer.pkcs8, &signer.der).unwrap(),
                ISSUER,
                limits,
            ))
        });
        let limits = Limits::default();
        let opts = Options::for_limits(&limits, true);
        AuthServer {
            router: router(App::with(store, local, limits, opts, Some(auth), tokens)),
            signer,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        auth: Option<String>,
        ct: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, challenge, body)
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> (StatusCode, String, Vec<u8>) {
        self.send(
            "GET",
            uri,
            token.map(|t| format!("Bearer {t}")),
            None,
            vec![],
        )
        .await
    }

    fn token(&self, name: &str, actions: &[&str]) -> String {
        jwt(
            json!({"alg": "ES256", "kid": self.signer.kid(), "typ": "JWT"}),
            claims(name, actions, 300),
            &self.signer.pair,
        )
    }
}

#[tokio::test]
async fn routes_need_the_scopes_notary_server_requires() {
    let s = AuthServer::new("", None);
    let root = format!("/v2/{GUN}/_trust/tuf/root.json");
    let tskey = format!("/v2/{GUN}/_trust/tuf/timestamp.key");

    // No token: 401 with the challenge the clients follow, as notary-server writes it.
    let (st, ch, body) = s.get("/v2/", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ch,
        "Bearer realm=\"https://trust.example/auth/token\",service=\"trust-svc\",scope=\"registry:catalog:*\""
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    let (st, ch, _) = s.get(&root, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        ch.ends_with(&format!(",scope=\"repository:{GUN}:pull\"")),
        "{ch}"
    );
    // Health and metrics need nothing.
    assert_eq!(
        s.get("/_notary_server/health", None).await.0,
        StatusCode::OK
    );
    assert_eq!(s.get("/metrics", None).await.0, StatusCode::OK);

    // pull: metadata yes (404: nothing there), keys no.
    let pull = s.token(GUN, &["pull"]);
    assert_eq!(s.get(&root, Some(&pull)).await.0, StatusCode::NOT_FOUND);
    let (st, ch, _) = s.get(&tskey, Some(&pull)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(ch.contains("error=\"insufficient_scope\""), "{ch}");
    assert!(
        ch.contains(&format!("scope=\"repository:{GUN}:push,pull\"")),
        "{ch}"
    );
    // push alone does not imply pull.
    let push = s.token(GUN, &["push"]);
    assert_eq!(s.get(&root, Some(&push)).await.0, StatusCode::UNAUTHORIZED);
    // push,pull: keys yes; rotation and delete need *.
    let pp = s.token(GUN, &["push", "pull"]);
    assert_eq!(s.get(&tskey, Some(&pp)).await.0, StatusCode::OK);
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let (st, _, _) = s.send("POST", &tskey, bearer(&pp), None, vec![]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) = s
        .send(
            "DELETE",
            &format!("/v2/{GUN}/_trust/tuf/"),
            bearer(&pp),
            None,
            vec![],
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let all = s.token(GUN, &["*"]);
    let (st, _, _) = s.send("POST", &tskey, bearer(&all), None, vec![]).await;
    assert_eq!(st, StatusCode::OK);

    // Publishing needs push and pull on this very repository: a pull-only token, or one for
    // another repository, stores nothing.
    let (ct, body) = multipart(&[("root", b"{}")]);
    for (what, t) in [
        ("pull only", pull.clone()),
        (
            "other repository",
            s.token("127.0.0.1:5000/team/other", &["push", "pull"]),
        ),
    ] {
        let (st, _, _) = s
            .send(
                "POST",
                &format!("/v2/{GUN}/_trust/tuf/"),
                bearer(&t),
                Some(&ct),
                body.clone(),
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{what}");
    }
    // With push,pull the upload reaches validation (and is refused there: 400).
    let (st, _, _) = s
        .send(
            "POST",
            &format!("/v2/{GUN}/_trust/tuf/"),
            bearer(&pp),
            Some(&ct),
            body,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(s.get(&root, Some(&pull)).await.0, StatusCode::NOT_FOUND);
    // The changefeed of all repositories needs the catalog scope.
    let (st, _, _) = s.get("/v2/_trust/changefeed", Some(&all)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) = s
        .get(&format!("/v2/{GUN}/_trust/changefeed"), Some(&pull))
        .await;
    assert_eq!(st, StatusCode::OK);
}

/// Tokens the verifier must refuse, each with what is wrong with it.
fn refused_tokens(s: &AuthServer, ca: &CertKey) -> Vec<(&'static str, String)> {
    let kid_header = json!({"alg": "ES256", "kid": s.signer.kid()});
    vec![
        (
            "expired",
            jwt(
                kid_header.clone(),
                claims(GUN, &["pull"], -3600),
                &s.signer.pair,
            ),
        ),
        ("no exp", {
            let mut c = claims(GUN, &["pull"], 0);
            c.as_object_mut().unwrap().remove("exp");
            jwt(kid_header.clone(), c, &s.signer.pair)
        }),
        ("other issuer", {
            let mut c = claims(GUN, &["pull"], 300);
            c["iss"] = json!("someone-else");
            jwt(kid_header.clone(), c, &s.signer.pair)
        }),
        ("other audience", {
            let mut c = claims(GUN, &["pull"], 300);
            c["aud"] = json!("registry");
            jwt(kid_header.clone(), c, &s.signer.pair)
        }),
        ("audience as array", {
            let mut c = claims(GUN, &["pull"], 300);
            c["aud"] = json!([SERVICE]);
            jwt(kid_header.clone(), c, &s.signer.pair)
        }),
        (
            "other repository",
            s.token("127.0.0.1:5000/team/other", &["pull"]),
        ),
        ("signed outside the bundle", {
            let outsider = cert_key("outsider", None, false, (-1, 30));
            jwt(
                json!({"alg": "ES256", "kid": outsider.kid()}),
                claims(GUN, &["pull"], 300),
                &outsider.pair,
            )
        }),
        ("bundle kid, other key", {
            let outsider = cert_key("outsider", None, false, (-1, 30));
            jwt(
                kid_header.clone(),
                claims(GUN, &["pull"], 300),
                &outsider.pair,
            )
        }),
        (
            "lower-case kid",
            jwt(
                json!({"alg": "ES256", "kid": s.signer.kid().to_lowercase()}),
                claims(GUN, &["pull"], 300),
                &s.signer.pair,
            ),
        ),
        (
            "no key reference",
            jwt(
                json!({"alg": "ES256"}),
                claims(GUN, &["pull"], 300),
                &s.signer.pair,
            ),
        ),
        (
            "alg does not fit the key",
            jwt(
                json!({"alg": "RS256", "kid": s.signer.kid()}),
                claims(GUN, &["pull"], 300),
                &s.signer.pair,
            ),
        ),
        ("alg none", {
            let t = s.token(GUN, &["pull"]);
            let (hc, _) = t.rsplit_once('.').unwrap();
            let (_, c) = hc.split_once('.').unwrap();
            format!(
                "{}.{c}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string())
            )
        }),
        ("claims changed after signing", {
            let t = s.token(GUN, &["pull"]);
            let parts: Vec<&str> = t.split('.').collect();
            let forged = URL_SAFE_NO_PAD.encode(claims(GUN, &["*"], 300).to_string());
            format!("{}.{forged}.{}", parts[0], parts[2])
        }),
        ("x5c leaf from a CA outside the bundle", {
            let other_ca = cert_key("other CA", None, true, (-1, 30));
            let leaf = cert_key("leaf", Some(&other_ca), false, (-1, 30));
            jwt(
                json!({"alg": "ES256", "x5c": [STANDARD.encode(&leaf.der), STANDARD.encode(&other_ca.der)]}),
                claims(GUN, &["pull"], 300),
                &leaf.pair,
            )
        }),
        ("x5c expired leaf", {
            let leaf = cert_key("leaf", Some(ca), false, (-30, -1));
            jwt(
                json!({"alg": "ES256", "x5c": [STANDARD.encode(&leaf.der)]}),
                claims(GUN, &["pull"], 300),
                &leaf.pair,
            )
        }),
        ("not a JWT", "abc.def".to_string()),
    ]
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let ca = cert_key("token CA", None, true, (-1, 30));
    let s = AuthServer::new(&ca.pem, None);
    let root = format!("/v2/{GUN}/_trust/tuf/root.json");
    let kid_header = json!({"alg": "ES256", "kid": s.signer.kid()});
    let accepted = |st: StatusCode| st == StatusCode::NOT_FOUND;
    let try_token = |t: String| {
        let s = &s;
        let root = root.clone();
        async move {
            let (st, ch, _) = s.get(&root, Some(&t)).await;
            (st, ch)
        }
    };
    // Leeway: 30 s past exp is accepted, 90 s is not; the same for nbf.
    let mut c = claims(GUN, &["pull"], -30);
    assert!(accepted(
        try_token(jwt(kid_header.clone(), c.clone(), &s.signer.pair))
            .await
            .0
    ));
    c["exp"] = json!(now() - 90);
    let (st, ch) = try_token(jwt(kid_header.clone(), c, &s.signer.pair)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(ch.contains("error=\"invalid_token\""), "{ch}");
    let mut c = claims(GUN, &["pull"], 300);
    c["nbf"] = json!(now() + 90);
    assert_eq!(
        try_token(jwt(kid_header.clone(), c, &s.signer.pair))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let mut c = claims(GUN, &["pull"], 300);
    c["nbf"] = json!(now() + 30);
    assert!(accepted(
        try_token(jwt(kid_header.clone(), c, &s.signer.pair))
            .await
            .0
    ));

    let refused = refused_tokens(&s, &ca);
    for (what, t) in refused {
        let (st, ch) = try_token(t).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{what}");
        assert!(ch.starts_with("Bearer realm="), "{what}: {ch}");
    }
    // x5c: a leaf issued by the bundle's CA is accepted (and x5c wins over a wrong kid).
    let leaf = cert_key("leaf", Some(&ca), false, (-1, 30));
    let t = jwt(
        json!({"alg": "ES256", "kid": "AAAA", "x5c": [STANDARD.encode(&leaf.der)]}),
        claims(GUN, &["pull"], 300),
        &leaf.pair,
    );
    assert!(accepted(try_token(t).await.0));
}

fn basic(user: &str, pass: &str) -> Option<String> {
    Some(format!(
        "Basic {}",
        STANDARD.encode(format!("{user}:{pass}"))
    ))
}

#[tokio::test]
async fn token_service_grants_what_the_access_list_allows() {
    let users = format!(
        "# users\nalice:{}\nbob:{}\n",
        hash_password("alice-pw").unwrap(),
        hash_password("bob-pw").unwrap()
    );
    let access = "alice * push,pull\nalice team/ *\nbob team/ pull\n";
    let limits = LoginLimits {
        failures_per_user: 3,
        failures_per_peer: 100,
        ..LoginLimits::default()
    };
    let s = AuthServer::new("", Some((&users, access, limits)));
    let scope = format!(
        "repository%3A{}%3Apush%2Cpull",
        GUN.replace(':', "%3A").replace('/', "%2F")
    );
    let url = format!("/auth/token?account=alice&scope={scope}&service={SERVICE}");
    let token_of = |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["token"], v["access_token"]);
        assert!(v["expires_in"].as_i64().unwrap() >= 60);
        assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
        v["token"].as_str().unwrap().to_string()
    };
    let actions = |t: &str| {
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["iss"], ISSUER);
        claims["access"][0]["actions"].clone()
    };

    let (st, _, body) = s
        .send("GET", &url, basic("alice", "alice-pw"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::OK);
    let alice = token_of(&body);
    assert_eq!(actions(&alice), json!(["push", "pull"]));
    // The token opens what it grants on the trust server.
    let tskey = format!("/v2/{GUN}/_trust/tuf/timestamp.key");
    assert_eq!(s.get(&tskey, Some(&alice)).await.0, StatusCode::OK);

    // bob may only pull: the grant is reduced, not refused; publishing is then refused.
    let (st, _, body) = s
        .send("GET", &url, basic("bob", "bob-pw"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::OK);
    let bob = token_of(&body);
    assert_eq!(actions(&bob), json!(["pull"]));
    assert_eq!(s.get(&tskey, Some(&bob)).await.0, StatusCode::UNAUTHORIZED);
    // Anonymous: a token with nothing in it.
    let (st, _, body) = s.send("GET", &url, None, None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(actions(&token_of(&body)), json!([]));

    // Wrong password, unknown user: 401 with the errors body docker shows.
    let (st, _, body) = s
        .send("GET", &url, basic("alice", "nope"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0]["message"], "invalid username or password");
    let (st, _, _) = s
        .send("GET", &url, basic("mallory", "x"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Failed logins are limited per user: after 3, even the right password waits.
    for _ in 0..2 {
        s.send("GET", &url, basic("alice", "nope"), None, vec![])
            .await;
    }
    let (st, _, _) = s
        .send("GET", &url, basic("alice", "alice-pw"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    // bob is not affected by alice's failures.
    let (st, _, _) = s
        .send("GET", &url, basic("bob", "bob-pw"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::OK);
    // Malformed requests.
    for q in ["/auth/token", "/auth/token?service=a&scope=nocolons"] {
        let (st, _, _) = s.send("GET", q, basic("bob", "bob-pw"), None, vec![]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}");
    }
}

#[tokio::test]
async fn failed_logins_are_limited_per_peer() {
    let users = format!("carol:{}\n", hash_password("pw").unwrap());
    let limits = LoginLimits {
        failures_per_user: 100,
        failures_per_peer: 2,
        ..LoginLimits::default()
    };
    let s = AuthServer::new("", Some((&users, "* * push,pull\n", limits)));
    let url = format!("/auth/token?scope=repository:a/b:pull&service={SERVICE}");
    for user in ["u1", "u2"] {
        let (st, _, _) = s.send("GET", &url, basic(user, "bad"), None, vec![]).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    let (st, _, _) = s
        .send("GET", &url, basic("carol", "pw"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
}
