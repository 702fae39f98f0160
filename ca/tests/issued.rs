//! `check_issued_certificate`: what an external CA returns is accepted only if it is exactly
//! what the cluster asked for. Each wrong certificate is forged here with rcgen, signed by the
//! cluster root's own key (so only the checked property is wrong) or by another CA.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use swarmguard_ca::{
    check_csr, check_issued_certificate, generate_node_key_and_csr, new_id, CertCheckError,
    Expected, NodeRole, RootCa, DEFAULT_NODE_CERT_EXPIRY,
};
use time::OffsetDateTime;

struct Case {
    root: RootCa,
    trust_only: RootCa,
    node: String,
    cluster: String,
    leaf_key: KeyPair,
    csr: Vec<u8>,
}

fn case() -> Case {
    let root = RootCa::create().unwrap();
    let trust_only = RootCa::from_cert_pem(root.cert_pem()).unwrap();
    let (key_pem, csr) = generate_node_key_and_csr();
    Case {
        leaf_key: KeyPair::from_pem(std::str::from_utf8(&key_pem).unwrap()).unwrap(),
        root,
        trust_only,
        node: new_id(),
        cluster: new_id(),
        csr,
    }
}

/// A worker certificate as cfssl's default profile makes it, changed by `edit`.
fn forge(c: &Case, issuer_root: &RootCa, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, c.cluster.as_str());
    dn.push(DnType::OrganizationalUnitName, "swarm-worker");
    dn.push(DnType::CommonName, c.node.as_str());
    p.distinguished_name = dn;
    p.subject_alt_names = vec![
        SanType::DnsName("swarm-worker".try_into().unwrap()),
        SanType::DnsName(c.node.as_str().try_into().unwrap()),
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(89);
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    edit(&mut p);
    let ca_key = KeyPair::try_from(issuer_root.key_pkcs8_der().unwrap().as_slice()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&issuer_root.cert_der().into(), ca_key).unwrap();
    p.signed_by(&c.leaf_key, &issuer)
        .unwrap()
        .pem()
        .into_bytes()
}

fn check(c: &Case, pem: &[u8]) -> Result<(), CertCheckError> {
    let csr = check_csr(&c.csr).unwrap();
    let want = Expected {
        node_id: &c.node,
        role: NodeRole::Worker,
        cluster_id: &c.cluster,
        csr: &csr,
        expiry: DEFAULT_NODE_CERT_EXPIRY,
    };
    check_issued_certificate(&c.trust_only, pem, &want).map(|_| ())
}

#[test]
fn a_certificate_as_asked_is_accepted_and_a_trust_only_root_cannot_sign() {
    let c = case();
    check(&c, &forge(&c, &c.root, |_| {})).unwrap();
    // Our own internal issuance passes the same checks.
    let issued = c
        .root
        .issue_node_certificate(
            &check_csr(&c.csr).unwrap(),
            &c.node,
            NodeRole::Worker,
            &c.cluster,
            DEFAULT_NODE_CERT_EXPIRY,
        )
        .unwrap();
    check(&c, &issued.cert_pem).unwrap();
    assert!(!c.trust_only.has_key());
    assert!(c.trust_only.key_pkcs8_der().is_none());
    assert_eq!(c.trust_only.digest(), c.root.digest());
    let e = c
        .trust_only
        .issue_node_certificate(
            &check_csr(&c.csr).unwrap(),
            &c.node,
            NodeRole::Worker,
            &c.cluster,
            DEFAULT_NODE_CERT_EXPIRY,
        )
        .unwrap_err();
    assert_eq!(e, swarmguard_ca::CaError::NoRootKey);
}

#[test]
fn another_ca_is_refused() {
    let c = case();
    // Same name (CN=swarm-ca) as the cluster root, another key: the signature decides.
    let other = RootCa::create().unwrap();
    assert_eq!(
        check(&c, &forge(&c, &other, |_| {})),
        Err(CertCheckError::BadSignature)
    );
}

type Edit = Box<dyn Fn(&mut CertificateParams)>;

#[test]
fn another_subject_is_refused() {
    let c = case();
    let edits: Vec<Edit> = vec![
        Box::new(|p| {
            p.distinguished_name
                .push(DnType::CommonName, new_id().as_str())
        }),
        Box::new(|p| {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, "swarm-manager")
        }),
        Box::new(|p| p.distinguished_name.push(DnType::OrganizationName, "x")),
        Box::new(|p| p.distinguished_name.push(DnType::CountryName, "US")),
    ];
    for edit in edits {
        let r = check(&c, &forge(&c, &c.root, |p| edit(p)));
        assert!(
            matches!(r, Err(CertCheckError::WrongSubject { .. })),
            "{r:?}"
        );
    }
}

#[test]
fn other_sans_are_refused() {
    let c = case();
    for sans in [
        vec![SanType::DnsName("swarm-worker".try_into().unwrap())],
        vec![
            SanType::DnsName("swarm-worker".try_into().unwrap()),
            SanType::DnsName(c.node.as_str().try_into().unwrap()),
            SanType::DnsName("swarm-ca".try_into().unwrap()),
        ],
        vec![
            SanType::DnsName("swarm-worker".try_into().unwrap()),
            SanType::DnsName(c.node.as_str().try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
    ] {
        let r = check(&c, &forge(&c, &c.root, |p| p.subject_alt_names = sans));
        assert!(matches!(r, Err(CertCheckError::WrongSans { .. })), "{r:?}");
    }
}

#[test]
fn usage_validity_and_key_are_checked() {
    let c = case();
    let r = check(
        &c,
        &forge(&c, &c.root, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        }),
    );
    assert_eq!(r, Err(CertCheckError::MissingEku));
    let r = check(
        &c,
        &forge(&c, &c.root, |p| {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        }),
    );
    assert_eq!(r, Err(CertCheckError::IsCa));
    let r = check(
        &c,
        &forge(&c, &c.root, |p| {
            p.not_after = OffsetDateTime::now_utc() + time::Duration::days(365)
        }),
    );
    assert!(matches!(r, Err(CertCheckError::TooLong { .. })), "{r:?}");
    let r = check(
        &c,
        &forge(&c, &c.root, |p| {
            p.not_after = OffsetDateTime::now_utc() - time::Duration::minutes(1)
        }),
    );
    assert_eq!(r, Err(CertCheckError::NotValidNow));
    // A certificate for another key than the node's CSR.
    let mut other = case();
    other.node = c.node.clone();
    other.cluster = c.cluster.clone();
    other.csr = c.csr.clone();
    let (k, _) = generate_node_key_and_csr();
    other.leaf_key = KeyPair::from_pem(std::str::from_utf8(&k).unwrap()).unwrap();
    let pem = forge(&other, &c.root, |_| {});
    assert_eq!(check(&c, &pem), Err(CertCheckError::WrongKey));
}

#[test]
fn hostile_text_is_refused() {
    let c = case();
    let good = forge(&c, &c.root, |_| {});
    let mut two = good.clone();
    two.extend_from_slice(&good);
    assert_eq!(check(&c, &two), Err(CertCheckError::NotOneCertificate));
    assert_eq!(
        check(&c, b"garbage"),
        Err(CertCheckError::NotOneCertificate)
    );
    assert_eq!(
        check(&c, &vec![b'A'; swarmguard_ca::MAX_ISSUED_PEM_LEN + 1]),
        Err(CertCheckError::TooLarge)
    );
    let broken = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert!(check(&c, broken).is_err());
}
