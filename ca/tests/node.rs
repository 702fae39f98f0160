//! Node certificate profile, issuance and verification tests.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use swarmguard_ca::{
    check_csr, generate_node_key_and_csr, new_id, verify_node_certificate, CaError,
    IssuedCertificate, NodeRole, RootCa, DEFAULT_NODE_CERT_EXPIRY,
};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_ORGANIZATION_NAME,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest, X509Version};

const DAY: Duration = Duration::from_secs(86_400);

fn issue(root: &RootCa, csr: &[u8], role: NodeRole) -> (IssuedCertificate, String, String) {
    let node = new_id();
    let cluster = new_id();
    let issued = root
        .issue_node_certificate(
            &check_csr(csr).unwrap(),
            &node,
            role,
            &cluster,
            DEFAULT_NODE_CERT_EXPIRY,
        )
        .unwrap();
    (issued, node, cluster)
}

/// Every field of the profile, read back with x509-parser.
fn check_profile(root: &RootCa, csr_pem: &[u8], role: NodeRole, expiry: Duration) {
    let node = new_id();
    let cluster = new_id();
    let t0 = SystemTime::now();
    let issued = root
        .issue_node_certificate(&check_csr(csr_pem).unwrap(), &node, role, &cluster, expiry)
        .unwrap();
    let t1 = SystemTime::now();

    assert!(issued.cert_pem.ends_with(b"-----END CERTIFICATE-----\n"));
    let der = pem_to_der(&issued.cert_pem);
    let (rest, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(cert.version(), X509Version::V3);

    // Issuer is the root, byte for byte; signature verifies with the root key.
    let (_, root_cert) = X509Certificate::from_der(root.cert_der()).unwrap();
    assert_eq!(cert.tbs_certificate.issuer.as_raw(), root.subject_der());
    cert.verify_signature(Some(root_cert.public_key())).unwrap();

    // Subject: O, OU, CN in that order, one attribute per RDN, PrintableString.
    let rdns: Vec<_> = cert.subject().iter().collect();
    assert_eq!(rdns.len(), 3);
    let want = [
        (OID_X509_ORGANIZATION_NAME, cluster.as_str()),
        (OID_X509_ORGANIZATIONAL_UNIT, role.ou()),
        (OID_X509_COMMON_NAME, node.as_str()),
    ];
    for (rdn, (oid, value)) in rdns.iter().zip(want.iter()) {
        let attrs: Vec<_> = rdn.iter().collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].attr_type(), oid);
        assert_eq!(attrs[0].as_str().unwrap(), *value);
        assert_eq!(attrs[0].attr_value().tag(), Tag::PrintableString);
    }
    assert_eq!(
        cert.subject().to_string(),
        format!("O={cluster}, OU={}, CN={node}", role.ou())
    );

    // Public key is the CSR's, untouched.
    let csr_der = pem_to_der(csr_pem);
    let (_, csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        csr.certification_request_info.subject_pki.raw
    );

    // SANs: [OU, node ID] (+ swarm-ca for managers), DNS only, in order.
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(!san.critical);
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("non-DNS SAN {other:?}"),
        })
        .collect();
    let mut want_sans = vec![role.ou().to_string(), node.clone()];
    if role == NodeRole::Manager {
        want_sans.push("swarm-ca".into());
    }
    assert_eq!(names, want_sans);

    // KU critical digitalSignature + keyEncipherment only.
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert_eq!(
        ku.value.flags, 0b101,
        "digitalSignature (bit 0) + keyEncipherment (bit 2)"
    );
    // EKU serverAuth + clientAuth, nothing else.
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(!eku.critical);
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && eku.value.other.is_empty() && !eku.value.code_signing);
    // BC critical CA:FALSE.
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(!bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);

    // SKI = SHA-1(public key bits); AKI = root SKI.
    let root_ski = root_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let mut ski = None;
    let mut aki = None;
    let mut count = 0;
    for ext in cert.extensions() {
        count += 1;
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                assert!(!ext.critical);
                assert!(a.authority_cert_issuer.is_none() && a.authority_cert_serial.is_none());
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    assert_eq!(count, 6, "AKI, SAN, KU, EKU, SKI, BC and nothing else");
    assert_eq!(
        ski.unwrap(),
        sha1(&cert.public_key().subject_public_key.data)
    );
    assert_eq!(aki.unwrap(), root_ski);

    // Serial: 20 bytes, top bit clear, reported back.
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 20);
    assert_eq!(serial[0] & 0x80, 0);
    assert_eq!(serial, issued.serial);

    // Validity: NotBefore = round(now) - 1h, NotAfter = round(now) + expiry.
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let (r0, r1) = (round_minute(t0), round_minute(t1));
    assert!(
        nb == r0 - 3600 || nb == r1 - 3600,
        "not_before {nb} vs {r0}/{r1}"
    );
    assert_eq!(na - nb, expiry.as_secs() as i64 + 3600);
    assert_eq!(unix(issued.not_after), na);

    // openssl, as an independent verifier, accepts it for both TLS roles.
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(root.cert_pem(), &issued.cert_pem, purpose);
        assert!(
            ok && out.contains(": OK"),
            "openssl verify -purpose {purpose}: {out}"
        );
    }

    // And our own verifier reads the identity back.
    let id = verify_node_certificate(root, &issued.cert_pem).unwrap();
    assert_eq!(id.node_id, node);
    assert_eq!(id.cluster_id, cluster);
    assert_eq!(id.role, role);
    assert_eq!(id.not_after, issued.not_after);
}

#[test]
fn profile_for_generated_p256_csr_both_roles() {
    let root = RootCa::create().unwrap();
    let (_key, csr) = generate_node_key_and_csr();
    check_profile(&root, &csr, NodeRole::Manager, DEFAULT_NODE_CERT_EXPIRY);
    check_profile(&root, &csr, NodeRole::Worker, Duration::from_secs(3600));
}

#[test]
fn profile_for_foreign_csrs() {
    let root = RootCa::create().unwrap();
    for f in ["csr-rsa2048.pem", "csr-p384.pem", "csr-p256-ext.pem"] {
        check_profile(&root, &fixture(f), NodeRole::Worker, 30 * DAY);
    }
}

#[test]
fn requested_subject_and_extensions_are_ignored() {
    // csr-p256-ext asks for CN=p256-ext, CA:TRUE, keyCertSign and SAN evil.example.com.
    let root = RootCa::create().unwrap();
    let (issued, node, _) = issue(&root, &fixture("csr-p256-ext.pem"), NodeRole::Worker);
    let der = pem_to_der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    let text = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(!text.contains("evil"), "{text}");
    assert!(cert.subject().to_string().ends_with(&format!("CN={node}")));
}

#[test]
fn openssl_agrees_key_and_csr_are_well_formed() {
    let (key, csr) = generate_node_key_and_csr();
    assert!(key.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
    assert!(csr.starts_with(b"-----BEGIN CERTIFICATE REQUEST-----\n"));
    let t = TempFiles::new();
    let key_path = t.write("node.key", &key);
    let csr_path = t.write("node.csr", &csr);
    let (ok, out) = openssl(&["req", "-in", &csr_path, "-verify", "-noout", "-subject"]);
    assert!(ok && out.contains("verify OK"), "{out}");
    assert!(out.contains("subject="), "{out}");
    // Empty subject, like SwarmKit's GenerateNewCSR.
    let csr_der = pem_to_der(&csr);
    let (_, parsed) = X509CertificationRequest::from_der(&csr_der).unwrap();
    assert_eq!(parsed.certification_request_info.subject.iter().count(), 0);
    // The issued certificate carries the key's public half.
    let (ok, key_pub) = openssl(&["pkey", "-in", &key_path, "-pubout"]);
    assert!(ok, "{key_pub}");
    let root = RootCa::create().unwrap();
    let (issued, _, _) = issue(&root, &csr, NodeRole::Manager);
    let cert_path = t.write("node.crt", &issued.cert_pem);
    let (ok, cert_pub) = openssl(&["x509", "-in", &cert_path, "-noout", "-pubkey"]);
    assert!(ok, "{cert_pub}");
    assert_eq!(key_pub, cert_pub);
}

#[test]
fn serials_are_unique() {
    let root = RootCa::create().unwrap();
    let (_k, csr) = generate_node_key_and_csr();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let (issued, _, _) = issue(&root, &csr, NodeRole::Worker);
        assert_eq!(issued.serial[0] & 0x80, 0);
        assert_ne!(issued.serial[0], 0);
        assert!(seen.insert(issued.serial));
    }
}

#[test]
fn argument_validation() {
    let root = RootCa::create().unwrap();
    let (_k, csr) = generate_node_key_and_csr();
    let csr = check_csr(&csr).unwrap();
    let id = new_id();
    let exp = DEFAULT_NODE_CERT_EXPIRY;
    let w = NodeRole::Worker;
    let bad_ids = [
        "",
        "short",
        "UPPERCASEUPPERCASEUPPERCA",
        "0123456789abcdefghijklmn,",
        "0123456789abcdefghijklmno0",
        "CN=x,O=y+OU=zzzzzzzzzzzzz",
    ];
    for bad in bad_ids {
        assert_eq!(
            root.issue_node_certificate(&csr, bad, w, &id, exp)
                .unwrap_err(),
            CaError::InvalidNodeId,
            "{bad:?}"
        );
        assert_eq!(
            root.issue_node_certificate(&csr, &id, w, bad, exp)
                .unwrap_err(),
            CaError::InvalidClusterId,
            "{bad:?}"
        );
    }
    assert_eq!(
        root.issue_node_certificate(&csr, &id, w, "FIPS.", exp)
            .unwrap_err(),
        CaError::InvalidClusterId
    );
    // FIPS-prefixed cluster IDs are accepted.
    let fips = format!("FIPS.{}", new_id());
    let issued = root
        .issue_node_certificate(&csr, &id, w, &fips, exp)
        .unwrap();
    assert_eq!(
        verify_node_certificate(&root, &issued.cert_pem)
            .unwrap()
            .cluster_id,
        fips
    );

    // Expiry bounds.
    assert_eq!(
        root.issue_node_certificate(&csr, &id, w, &id, Duration::from_secs(3599))
            .unwrap_err(),
        CaError::ExpiryTooShort
    );
    assert_eq!(
        root.issue_node_certificate(&csr, &id, w, &id, 365 * 21 * DAY)
            .unwrap_err(),
        CaError::ExpiryBeyondRoot
    );
    assert_eq!(
        root.issue_node_certificate(&csr, &id, w, &id, Duration::MAX)
            .unwrap_err(),
        CaError::ExpiryBeyondRoot
    );
}

#[test]
fn verify_rejects_foreign_and_malformed_certs() {
    let root = RootCa::create().unwrap();
    // Same issuer name bytes, different key: only the signature tells them apart.
    let foreign = fixture("other-node.pem");
    assert_eq!(
        verify_node_certificate(&root, &foreign).unwrap_err(),
        CaError::NotIssuedByRoot
    );
    let other_root = RootCa::from_pem(&fixture("other-ca.pem"), &fixture("other-ca.key")).unwrap();
    let id = verify_node_certificate(&other_root, &foreign).unwrap();
    assert_eq!(id.node_id, "4hd1k1ef7z3tcqaxodbaqsbhx");
    assert_eq!(id.role, NodeRole::Manager);
    assert_eq!(id.cluster_id, "0123456789abcdefghijklmno");

    // A certificate from a different root of ours.
    let (_k, csr) = generate_node_key_and_csr();
    let (issued, _, _) = issue(&other_root, &csr, NodeRole::Worker);
    assert_eq!(
        verify_node_certificate(&root, &issued.cert_pem).unwrap_err(),
        CaError::NotIssuedByRoot
    );
    // The root itself is not a node certificate.
    assert!(matches!(
        verify_node_certificate(&root, root.cert_pem()).unwrap_err(),
        CaError::BadNodeCertificate(_)
    ));
    assert!(matches!(
        verify_node_certificate(&root, b"nothing here").unwrap_err(),
        CaError::BadNodeCertificate(m) if m.contains("no PEM")
    ));
    assert!(matches!(
        verify_node_certificate(&root, &csr).unwrap_err(),
        CaError::BadNodeCertificate(m) if m.contains("no PEM")
    ));
}
