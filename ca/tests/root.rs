//! Root CA profile and import tests.

mod common;

use std::time::SystemTime;

use base64::Engine as _;
use common::*;
use swarmguard_ca::{CaError, JoinToken, RootCa};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

#[test]
fn created_root_matches_swarmkit_profile() {
    let t0 = SystemTime::now();
    let root = RootCa::create().unwrap();
    let t1 = SystemTime::now();

    let (rest, cert) = X509Certificate::from_der(root.cert_der()).unwrap();
    assert!(rest.is_empty());
    assert_eq!(cert.version(), X509Version::V3);

    // Subject and issuer: exactly CN=swarm-ca as PrintableString.
    let b64 = base64::engine::general_purpose::STANDARD.encode(root.subject_der());
    assert_eq!(b64, "MBMxETAPBgNVBAMTCHN3YXJtLWNh");
    assert_eq!(cert.tbs_certificate.subject.as_raw(), root.subject_der());
    assert_eq!(cert.tbs_certificate.issuer.as_raw(), root.subject_der());
    cert.verify_signature(None).expect("self-signed");

    // Key and signature algorithm.
    let pki = cert.public_key();
    assert_eq!(pki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert_eq!(
        pki.algorithm.parameters.as_ref().unwrap().as_oid().unwrap(),
        OID_EC_P256
    );
    assert_eq!(
        cert.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    assert_eq!(pki.raw, root.spki_der());

    // Validity: NotBefore = round(now) - 5 min; 630720000 s long.
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        nb == round_minute(t0) - 300 || nb == round_minute(t1) - 300,
        "not_before {nb}"
    );
    assert_eq!(na - nb, 630_720_000);
    assert_eq!(unix(root.not_after()), na);

    // Serial: 20 bytes, top bit clear.
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 20);
    assert_eq!(serial[0] & 0x80, 0);

    // Extensions.
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(
        ku.value.flags,
        (1 << 5) | (1 << 6),
        "only certSign and cRLSign"
    );
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);
    let mut ski = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(_) => panic!("root must not carry an AKI"),
            ParsedExtension::KeyUsage(_) | ParsedExtension::BasicConstraints(_) => {}
            other => panic!("unexpected extension {other:?}"),
        }
    }
    assert_eq!(ski.unwrap(), sha1(&pki.subject_public_key.data));

    // PEM: ends with a newline; the digest is over the exact PEM bytes.
    assert!(root.cert_pem().ends_with(b"-----END CERTIFICATE-----\n"));
    assert_eq!(root.digest(), sha256(root.cert_pem()));
    assert_eq!(pem_to_der(root.cert_pem()), root.cert_der());
    let token = JoinToken::generate(root.cert_pem());
    assert_eq!(token.root_digest(), root.digest());
    assert!(token.matches_root(root.cert_pem()));

    // Two roots never share a serial or key.
    let other = RootCa::create().unwrap();
    assert_ne!(other.spki_der(), root.spki_der());
    assert_ne!(other.digest(), root.digest());
}

#[test]
fn openssl_accepts_created_root() {
    let root = RootCa::create().unwrap();
    let (ok, out) = openssl_verify(root.cert_pem(), root.cert_pem(), "any");
    assert!(ok, "{out}");
    let t = TempFiles::new();
    let p = t.write("root.pem", root.cert_pem());
    let (ok, text) = openssl(&["x509", "-in", &p, "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("Subject: CN = swarm-ca"), "{text}");
    assert!(
        text.contains("X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE\n"),
        "{text}"
    );
}

#[test]
fn round_trip_through_pem_and_der_keys() {
    let root = RootCa::create().unwrap();
    let der_key = root.key_pkcs8_der().unwrap();
    let again = RootCa::from_pem(root.cert_pem(), &der_key).unwrap();
    assert_eq!(again.digest(), root.digest());
    assert_eq!(again.cert_der(), root.cert_der());
    assert_eq!(again.subject_der(), root.subject_der());
    assert_eq!(again.spki_der(), root.spki_der());

    // PEM key, written and read by openssl as a PKCS#8 key.
    let t = TempFiles::new();
    let der_path = t.write("k.der", &der_key);
    let pem_path = t.dir.path().join("k.pem");
    let (ok, out) = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        &der_path,
        "-out",
        pem_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let pem_key = std::fs::read(&pem_path).unwrap();
    assert!(pem_key.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let again = RootCa::from_pem(root.cert_pem(), &pem_key).unwrap();
    assert_eq!(again.digest(), root.digest());
}

#[test]
fn imports_openssl_made_root_keeping_exact_bytes() {
    let pem = fixture("other-ca.pem");
    let root = RootCa::from_pem(&pem, &fixture("other-ca.key")).unwrap();
    assert_eq!(root.cert_pem(), pem.as_slice());
    assert_eq!(root.digest(), sha256(&pem));
    // Same subject bytes as ours: CN=swarm-ca, PrintableString.
    assert_eq!(root.subject_der(), RootCa::create().unwrap().subject_der());
}

#[test]
fn import_rejections() {
    let root = RootCa::create().unwrap();
    let key = root.key_pkcs8_der().unwrap();
    let other_key = fixture("other-ca.key");

    // Key from another root.
    assert_eq!(
        RootCa::from_pem(root.cert_pem(), &other_key).unwrap_err(),
        CaError::KeyMismatch
    );
    assert_eq!(
        RootCa::from_pem(&fixture("other-ca.pem"), &key).unwrap_err(),
        CaError::KeyMismatch
    );

    // Not a CA.
    assert!(matches!(
        RootCa::from_pem(&fixture("other-node.pem"), &other_key).unwrap_err(),
        CaError::BadRootCertificate(m) if m.contains("CA:TRUE")
    ));

    // Two certificates, none, or garbage.
    let mut two = root.cert_pem().to_vec();
    two.extend_from_slice(&fixture("other-ca.pem"));
    for bad in [
        two.as_slice(),
        b"".as_slice(),
        b"garbage".as_slice(),
        &fixture("csr-p384.pem"),
    ] {
        assert!(matches!(
            RootCa::from_pem(bad, &key).unwrap_err(),
            CaError::BadRootCertificate(m) if m.contains("exactly one")
        ));
    }

    // SEC1 keys get a conversion hint; garbage keys a PKCS#8 hint.
    let sec1 = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    assert!(matches!(
        RootCa::from_pem(root.cert_pem(), sec1).unwrap_err(),
        CaError::BadRootKey(m) if m.contains("openssl pkcs8 -topk8")
    ));
    assert!(matches!(
        RootCa::from_pem(root.cert_pem(), b"not a key").unwrap_err(),
        CaError::BadRootKey(m) if m.contains("PKCS#8")
    ));
    assert!(matches!(
        RootCa::from_pem(root.cert_pem(), root.cert_pem()).unwrap_err(),
        CaError::BadRootKey(m) if m.contains("PRIVATE KEY")
    ));
}

#[test]
fn debug_never_shows_key_material() {
    let root = RootCa::create().unwrap();
    let dbg = format!("{root:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    let key = root.key_pkcs8_der().unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&hex[hex.len() - 40..]));
    assert!(!dbg.contains(&format!("{:?}", &key[key.len() - 8..])));
}

/// Rotation groundwork: a leaf from the new root's key, followed by the cross-signed new root,
/// verifies against the old root (and the leaf alone against the new root), with webpki as any
/// TLS peer checks it.
#[test]
fn cross_signed_new_root_bridges_old_and_new() {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let old = RootCa::create().unwrap();
    let new = RootCa::create().unwrap();
    let cross_pem = old.cross_sign(&new).unwrap();
    let (_, csr) = swarmguard_ca::generate_node_key_and_csr();
    let leaf = new
        .issue_node_certificate(
            &swarmguard_ca::check_csr(&csr).unwrap(),
            &swarmguard_ca::new_id(),
            swarmguard_ca::NodeRole::Worker,
            &swarmguard_ca::new_id(),
            swarmguard_ca::DEFAULT_NODE_CERT_EXPIRY,
        )
        .unwrap();
    let der = |pem: &[u8]| {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
        CertificateDer::from(p.contents)
    };
    let (leaf_der, cross_der) = (der(&leaf.cert_pem), der(&cross_pem));
    let (_, cross) = X509Certificate::from_der(&cross_der).unwrap();
    assert_eq!(cross.subject().as_raw(), new.subject_der());
    assert_eq!(cross.public_key().raw, new.spki_der());
    assert_eq!(cross.issuer().as_raw(), old.subject_der());
    let verify = |anchor: &RootCa, intermediates: &[CertificateDer<'_>]| {
        let anchor_der = CertificateDer::from(anchor.cert_der().to_vec());
        let anchors = [webpki::anchor_from_trusted_cert(&anchor_der).unwrap()];
        let cert = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    };
    verify(&old, std::slice::from_ref(&cross_der))
        .expect("leaf + cross-signed verifies against the old root");
    verify(&new, &[]).expect("leaf verifies against the new root");
    assert!(
        verify(&old, &[]).is_err(),
        "without the cross-signed certificate the old root does not vouch"
    );
    // A root without its key cannot cross-sign; one whose key an external CA holds can be
    // cross-signed into (moving a swarm to cfssl), from its certificate alone.
    let trust_only = RootCa::from_cert_pem(new.cert_pem()).unwrap();
    assert!(trust_only.cross_sign(&new).is_err());
    let from_cert = old.cross_sign(&trust_only).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&from_cert).unwrap();
    let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
    assert_eq!(c.public_key().raw, new.spki_der());
}

/// A root an operator made with openssl (CN as UTF8String, not Go's PrintableString) can be
/// rotated to: the cross-signed certificate carries its subject byte for byte.
#[test]
fn cross_signing_keeps_an_openssl_roots_utf8_subject() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let sh = format!(
        "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out {k} \
         && openssl req -x509 -new -key {k} -subj /CN=operator-ca -days 3650 -out {c}",
        k = key.display(),
        c = cert.display()
    );
    let st = std::process::Command::new("sh")
        .args(["-c", &sh])
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl failed");
    let new = RootCa::from_pem(
        &std::fs::read(&cert).unwrap(),
        &std::fs::read(&key).unwrap(),
    )
    .unwrap();
    let old = RootCa::create().unwrap();
    let cross_pem = old.cross_sign(&new).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&cross_pem).unwrap();
    let (_, cross) = X509Certificate::from_der(&p.contents).unwrap();
    assert_eq!(cross.subject().as_raw(), new.subject_der());
    assert_eq!(cross.public_key().raw, new.spki_der());
}
