//! Join storm: in-process Rust clients (`swarmguard agent join-storm`, one process, N tasks)
//! each running the full join — fresh TLS connection, token + CSR, status until issued — 4 and
//! 32 at a time, against swarmguard and against a real dockerd manager started here, in one run.
//!
//! Run: `cargo bench --bench join_storm` (as root: dockerd runs in its own network namespace).
//! `JOINS=<n>` sets the joins per row (default 500). Prints a markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use support::dockerd::Dockerd;
use support::manager::Manager;

fn storm(
    netns: Option<&str>,
    addr: &str,
    token: &str,
    clients: usize,
    joins: usize,
) -> serde_json::Value {
    let out = support::command_in(netns, env!("CARGO_BIN_EXE_swarmguard"))
        .args(["agent", "join-storm", "--clients"])
        .arg(clients.to_string())
        .arg("--joins")
        .arg(joins.to_string())
        .arg(addr)
        .env("SWARMGUARD_JOIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run swarmguard agent join-storm");
    assert!(
        out.status.success(),
        "join storm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("storm result JSON")
}

/// Joins in the "5,000 joins" run.
const BIG: usize = 5000;

fn row(target: &str, r: &serde_json::Value) -> String {
    format!(
        "| {target} | {} | {} | {:.0} | {:.1} | {:.1} |",
        r["clients"],
        r["joins"],
        r["certs_per_second"].as_f64().unwrap(),
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap()
    )
}

/// The public-key operations one join cannot avoid, timed on one thread with ring (the crypto
/// both sides use): TLS 1.3 with X25519 on both sides, the server's CertificateVerify signature,
/// the client's two ECDSA verifications (server certificate against the root, CertificateVerify),
/// the server's CSR signature check and the certificate signature. Returns µs of CPU per join.
fn crypto_floor() -> f64 {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey as SigKey, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING,
    };
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 200];
    let sig = key.sign(&rng, &msg).unwrap();
    let public = SigKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());
    let n = 2000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        // Key exchange: each side makes a key and agrees once.
        for _ in 0..2 {
            let a = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let b = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let pb = b.compute_public_key().unwrap();
            let _ = a.compute_public_key().unwrap();
            agree_ephemeral(a, &UnparsedPublicKey::new(&X25519, pb.as_ref()), |k| k[0]).unwrap();
        }
        for _ in 0..2 {
            std::hint::black_box(key.sign(&rng, &msg).unwrap());
        }
        for _ in 0..3 {
            public.verify(&msg, sig.as_ref()).unwrap();
        }
    }
    // The loop makes one X25519 key too many per side (b's agreement is not run): subtract it.
    let per_join = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = std::time::Instant::now();
    for _ in 0..n {
        for _ in 0..2 {
            let b = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            std::hint::black_box(b.compute_public_key().unwrap());
        }
    }
    per_join - t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let floor_us = crypto_floor();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let joins: usize = std::env::var("JOINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut rows = Vec::new();
    let mut rates = Vec::new();

    // swarmguard, release or debug as cargo built it.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    for clients in [4, 32] {
        let r = storm(None, &m.cluster_addr, token.trim(), clients, joins);
        rows.push(row("swarmguard", &r));
        rates.push(r["certs_per_second"].as_f64().unwrap());
    }
    // The "5,000 joins" target, on the same manager (it now holds the nodes above too).
    let big = storm(None, &m.cluster_addr, token.trim(), 32, BIG);
    drop(m);

    // A real dockerd (SwarmKit) manager in its own network namespace.
    let d = Dockerd::start(true);
    let ns = d.netns.clone().expect("netns");
    let (addr, token) = d.init_swarm_on_free_port();
    for clients in [4, 32] {
        let r = storm(Some(&ns), &addr, token.trim(), clients, joins);
        rows.push(row("dockerd (SwarmKit)", &r));
        rates.push(r["certs_per_second"].as_f64().unwrap());
    }
    let big_swarmkit = storm(Some(&ns), &addr, token.trim(), 32, BIG);
    let version = d.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    drop(d);

    println!(
        "Join storm, {joins} joins per row; dockerd {}",
        version.trim()
    );
    println!();
    println!("| manager | clients | joins | certificates/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!(
        "swarmguard / dockerd: {:.1}x with 4 clients, {:.1}x with 32 clients",
        rates[0] / rates[2],
        rates[1] / rates[3]
    );
    println!();
    println!(
        "{BIG} joins with 32 clients: swarmguard {:.2} s ({:.0}/s), dockerd {:.2} s ({:.0}/s)",
        big["seconds"].as_f64().unwrap(),
        big["certs_per_second"].as_f64().unwrap(),
        big_swarmkit["seconds"].as_f64().unwrap(),
        big_swarmkit["certs_per_second"].as_f64().unwrap()
    );
    println!();
    println!(
        "Crypto floor: {floor_us:.0} µs of public-key CPU per join (client + server, ring, one thread); \
         with {cores} cores shared by clients and manager no join storm can exceed {:.0} joins/s",
        cores as f64 * 1e6 / floor_us
    );
}
