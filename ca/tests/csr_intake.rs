//! CSR intake: every bad input gets its own specific error.

mod common;

use base64::Engine as _;
use common::*;
use swarmguard_ca::{
    check_csr, generate_node_key_and_csr, new_id, CaError, CsrError, NodeRole, RootCa,
    DEFAULT_NODE_CERT_EXPIRY, MAX_CSR_PEM_LEN,
};

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

fn submit(root: &RootCa, csr: &[u8]) -> Result<(), CaError> {
    root.issue_node_certificate(
        &check_csr(csr)?,
        &new_id(),
        NodeRole::Worker,
        &new_id(),
        DEFAULT_NODE_CERT_EXPIRY,
    )
    .map(|_| ())
}

#[test]
fn bad_csr_table() {
    let root = RootCa::create().unwrap();
    let (_k, good) = generate_node_key_and_csr();
    let good_der = pem_to_der(&good);

    let mut two = good.clone();
    two.extend_from_slice(&good);
    let mut oversize = b"comment line\n".repeat(MAX_CSR_PEM_LEN / 13);
    oversize.extend_from_slice(&good);
    let truncated = good[..good.len() - 20].to_vec();
    let bad_b64 = b"-----BEGIN CERTIFICATE REQUEST-----\n****\n-----END CERTIFICATE REQUEST-----\n";
    let mut trailing = good_der.clone();
    trailing.extend_from_slice(&[0, 0]);
    let mut flipped_sig = good_der.clone();
    let last = flipped_sig.len() - 1;
    flipped_sig[last] ^= 0x01;

    // Unsigned outer layer made non-DER: BIT STRING tag with the wrong class,
    // and a BIT STRING claiming unused bits. Regressions from the mutation test.
    let alg: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    let at = good_der.windows(alg.len()).rposition(|w| w == alg).unwrap() + alg.len();
    assert_eq!(good_der[at], 0x03);
    let mut wrong_class = good_der.clone();
    wrong_class[at] = 0x43;
    let mut unused_bits = good_der.clone();
    let len_bytes = if good_der[at + 1] < 0x80 {
        1
    } else {
        1 + (good_der[at + 1] & 0x7f) as usize
    };
    unused_bits[at + 1 + len_bytes] = 0x01;

    let cases: Vec<(&str, Vec<u8>, CsrError)> = vec![
        (
            "BIT STRING tag class",
            pem("CERTIFICATE REQUEST", &wrong_class),
            CsrError::Malformed,
        ),
        (
            "BIT STRING unused bits",
            pem("CERTIFICATE REQUEST", &unused_bits),
            CsrError::Malformed,
        ),
        ("empty", vec![], CsrError::NotPem),
        (
            "garbage",
            b"\x00\xffnot a csr at all".to_vec(),
            CsrError::NotPem,
        ),
        ("raw DER", good_der.clone(), CsrError::NotPem),
        (
            "two PEM blocks",
            two,
            CsrError::MultiplePemBlocks { count: 2 },
        ),
        (
            "CSR plus root cert",
            [good.clone(), root.cert_pem().to_vec()].concat(),
            CsrError::MultiplePemBlocks { count: 2 },
        ),
        (
            "certificate label",
            root.cert_pem().to_vec(),
            CsrError::WrongPemLabel {
                found: "CERTIFICATE".into(),
            },
        ),
        (
            "CSR body under CERTIFICATE label",
            pem("CERTIFICATE", &good_der),
            CsrError::WrongPemLabel {
                found: "CERTIFICATE".into(),
            },
        ),
        (
            "legacy NEW CERTIFICATE REQUEST label",
            pem("NEW CERTIFICATE REQUEST", &good_der),
            CsrError::WrongPemLabel {
                found: "NEW CERTIFICATE REQUEST".into(),
            },
        ),
        (
            "private key",
            fixture("other-ca.key"),
            CsrError::WrongPemLabel {
                found: "PRIVATE KEY".into(),
            },
        ),
        (
            "oversize",
            oversize.clone(),
            CsrError::TooLarge {
                len: oversize.len(),
                max: MAX_CSR_PEM_LEN,
            },
        ),
        ("truncated PEM", truncated, CsrError::BadPem),
        ("bad base64", bad_b64.to_vec(), CsrError::BadPem),
        (
            "DER of a certificate",
            pem("CERTIFICATE REQUEST", root.cert_der()),
            CsrError::Malformed,
        ),
        (
            "junk DER",
            pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
            CsrError::Malformed,
        ),
        (
            "trailing bytes after DER",
            pem("CERTIFICATE REQUEST", &trailing),
            CsrError::Malformed,
        ),
        (
            "tampered subject (openssl)",
            fixture("csr-tampered.pem"),
            CsrError::BadSignature,
        ),
        (
            "flipped signature byte",
            pem("CERTIFICATE REQUEST", &flipped_sig),
            CsrError::BadSignature,
        ),
        (
            "ed25519",
            fixture("csr-ed25519.pem"),
            CsrError::UnsupportedKey {
                found: "Ed25519 key".into(),
            },
        ),
        (
            "rsa-1024",
            fixture("csr-rsa1024.pem"),
            CsrError::RsaKeySize { bits: 1024 },
        ),
        (
            "p-521",
            fixture("csr-p521.pem"),
            CsrError::UnsupportedKey {
                found: "ECDSA P-521 key".into(),
            },
        ),
        (
            "sha1WithRSA",
            fixture("csr-rsa2048-sha1.pem"),
            CsrError::UnsupportedSignatureAlgorithm {
                oid: "1.2.840.113549.1.1.5".into(),
            },
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(
            submit(&root, &input),
            Err(CaError::InvalidCsr(want)),
            "case {name}"
        );
    }
    // Sanity: the unmodified inputs are accepted.
    submit(&root, &good).unwrap();
    for f in ["csr-rsa2048.pem", "csr-p384.pem", "csr-p256-ext.pem"] {
        submit(&root, &fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn pem_with_surrounding_text_and_crlf_is_accepted() {
    let root = RootCa::create().unwrap();
    let (_k, good) = generate_node_key_and_csr();
    let mut framed = b"explanatory text\n".to_vec();
    framed.extend_from_slice(&good);
    framed.extend_from_slice(b"trailer\n");
    submit(&root, &framed).unwrap();
    let crlf = String::from_utf8(good).unwrap().replace('\n', "\r\n");
    submit(&root, crlf.as_bytes()).unwrap();
}

#[test]
fn error_messages_name_the_fix() {
    let msg = |e: CsrError| CaError::InvalidCsr(e).to_string();
    let key = msg(CsrError::UnsupportedKey {
        found: "Ed25519 key".into(),
    });
    for needle in ["Ed25519", "P-256", "P-384", "RSA"] {
        assert!(key.contains(needle), "{key}");
    }
    let rsa = msg(CsrError::RsaKeySize { bits: 1024 });
    assert!(rsa.contains("1024") && rsa.contains("2048"), "{rsa}");
    assert!(msg(CsrError::MultiplePemBlocks { count: 3 }).contains("exactly one"));
    assert!(msg(CsrError::TooLarge {
        len: 20000,
        max: MAX_CSR_PEM_LEN
    })
    .contains("16384"));
    assert!(CaError::ExpiryTooShort.to_string().contains("1h"));
}

/// Mutated CSRs (bit flips, truncations, random bodies) must be rejected with
/// an error, never accepted and never panic.
#[test]
fn mutated_csrs_are_rejected_without_panicking() {
    use ring::rand::{SecureRandom, SystemRandom};
    let rng = SystemRandom::new();
    let root = RootCa::create().unwrap();
    let seeds = [
        pem_to_der(&generate_node_key_and_csr().1),
        pem_to_der(&fixture("csr-rsa2048.pem")),
        pem_to_der(&fixture("csr-p384.pem")),
    ];
    let mut r = [0u8; 8];
    for i in 0..3000 {
        let mut der = seeds[i % seeds.len()].clone();
        rng.fill(&mut r).unwrap();
        let pos = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize % der.len();
        match r[4] % 4 {
            0 => der[pos] ^= 1 << (r[5] % 8),
            1 => der[pos] = r[5],
            2 => der.truncate(pos),
            _ => {
                der = vec![0u8; pos % 512];
                rng.fill(&mut der).unwrap();
            }
        }
        if seeds.contains(&der) {
            continue; // e.g. a byte overwritten with its own value
        }
        let result = submit(&root, &pem("CERTIFICATE REQUEST", &der));
        assert!(
            matches!(result, Err(CaError::InvalidCsr(_))),
            "mutation accepted or wrong error: {result:?} for {der:02x?}"
        );
    }
}
