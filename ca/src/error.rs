//! Error types. Every message names what was wrong and what to do about it,
//! because these errors end up in operator logs and in gRPC status messages.

use thiserror::Error;

/// Why a join token string was rejected by [`crate::JoinToken::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// The token does not start with `SWMTKN-`.
    #[error("invalid join token: it must start with \"SWMTKN-\"; copy the whole token printed by `docker swarm join-token`")]
    WrongPrefix,
    /// The version field is not `1` or `2`.
    #[error("invalid join token: unsupported version {found:?}, expected 1 or 2; the token may come from a newer release")]
    WrongVersion {
        /// The version field as found (at most 8 characters are kept).
        found: String,
    },
    /// Wrong number of `-`-separated parts for the version.
    #[error("invalid join token: version {version} tokens have {expected} dash-separated parts, found {found}; the token looks truncated or pasted twice")]
    WrongPartCount {
        /// Token version (1 or 2).
        version: u8,
        /// Parts expected for that version.
        expected: usize,
        /// Parts found.
        found: usize,
    },
    /// A v2 token whose FIPS flag is not `0` or `1`.
    #[error("invalid join token: the FIPS flag of a version 2 token must be \"0\" or \"1\"")]
    BadFipsFlag,
    /// The root digest part is not 50 characters.
    #[error("invalid join token: the root CA digest part must be 50 characters, found {found}")]
    DigestLength {
        /// Length found.
        found: usize,
    },
    /// The root digest part has characters outside `[0-9a-z]` or exceeds 256 bits.
    #[error("invalid join token: the root CA digest part must be lowercase base 36 ([0-9a-z]) encoding at most 256 bits")]
    DigestCharset,
    /// The secret part is not 25 characters.
    #[error("invalid join token: the secret part must be 25 characters, found {found}")]
    SecretLength {
        /// Length found.
        found: usize,
    },
    /// The secret part has characters outside `[0-9a-z]` or exceeds 128 bits.
    #[error("invalid join token: the secret part must be lowercase base 36 ([0-9a-z]) encoding at most 128 bits")]
    SecretCharset,
}

/// Why a certificate signing request from the network was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsrError {
    /// The PEM text is larger than the intake limit.
    #[error("CSR rejected: {len} bytes is larger than the {max}-byte limit; send a single PEM CERTIFICATE REQUEST")]
    TooLarge {
        /// Size received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// No `-----BEGIN …-----` line at all.
    #[error("CSR rejected: no PEM block found; send the CSR as PEM text starting with \"-----BEGIN CERTIFICATE REQUEST-----\"")]
    NotPem,
    /// More than one PEM block.
    #[error("CSR rejected: found {count} PEM blocks, expected exactly one CERTIFICATE REQUEST")]
    MultiplePemBlocks {
        /// Number of `BEGIN` lines.
        count: usize,
    },
    /// One PEM block, but not a CSR.
    #[error(
        "CSR rejected: PEM block is labelled {found:?}, expected \"CERTIFICATE REQUEST\" (PKCS#10)"
    )]
    WrongPemLabel {
        /// The label found (at most 40 characters are kept).
        found: String,
    },
    /// The PEM armour or its base64 body is broken.
    #[error("CSR rejected: the PEM block is malformed (bad base64 or missing END line)")]
    BadPem,
    /// The DER inside is not a PKCS#10 request, or has trailing bytes.
    #[error("CSR rejected: the PEM body is not a valid DER-encoded PKCS#10 certification request")]
    Malformed,
    /// The public key type is not one we sign.
    #[error("CSR rejected: {found} is not accepted; use an ECDSA P-256 (recommended), ECDSA P-384 or RSA 2048 to 8192-bit key")]
    UnsupportedKey {
        /// What was found, e.g. "Ed25519 key".
        found: String,
    },
    /// An RSA key outside 2048..=8192 bits.
    #[error("CSR rejected: RSA key of {bits} bits; RSA keys must have 2048 to 8192 bits (or use ECDSA P-256)")]
    RsaKeySize {
        /// Modulus size in bits.
        bits: usize,
    },
    /// The CSR is signed with an algorithm we do not verify.
    #[error("CSR rejected: signature algorithm {oid} is not accepted; sign the CSR with SHA-256, SHA-384 or SHA-512 using RSA PKCS#1 v1.5, or ECDSA with SHA-256/SHA-384")]
    UnsupportedSignatureAlgorithm {
        /// Dotted OID of the algorithm.
        oid: String,
    },
    /// The self-signature does not verify: the CSR was altered or the key does not match.
    #[error("CSR rejected: its signature does not verify against its own public key; the request was altered or signed with a different key")]
    BadSignature,
}

/// Errors from the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaError {
    /// The CSR failed intake checks.
    #[error(transparent)]
    InvalidCsr(#[from] CsrError),
    /// A node ID that is not 25 characters of `[0-9a-z]`.
    #[error("invalid node ID: must be exactly 25 characters of [0-9a-z] as made by new_id()")]
    InvalidNodeId,
    /// A cluster ID that is not a valid ID (optionally prefixed `FIPS.`).
    #[error("invalid cluster ID: must be 25 characters of [0-9a-z] as made by new_id(), optionally prefixed with \"FIPS.\"")]
    InvalidClusterId,
    /// Requested node certificate lifetime below SwarmKit's minimum.
    #[error("node certificate expiry too short: minimum is 1h (SwarmKit's MinNodeCertExpiration)")]
    ExpiryTooShort,
    /// The node certificate would outlive the root CA.
    #[error("node certificate expiry too long: it would outlive the root CA certificate; use a shorter expiry or rotate the root CA")]
    ExpiryBeyondRoot,
    /// The operating system RNG or key generation failed.
    #[error("key or random number generation failed: the system RNG is unavailable")]
    Rng,
    /// Certificate or CSR encoding/signing failed inside rcgen.
    #[error("certificate signing failed: {0}")]
    Signing(String),
    /// The root CA certificate given to `RootCa::from_pem` is unusable.
    #[error("root CA certificate rejected: {0}")]
    BadRootCertificate(&'static str),
    /// The root CA private key given to `RootCa::from_pem` is unusable.
    #[error("root CA key rejected: {0}")]
    BadRootKey(&'static str),
    /// The key does not belong to the certificate.
    #[error("root CA key does not match the certificate's public key; supply the key that was used to create this root")]
    KeyMismatch,
    /// The root is trusted only: its key is held by an external CA.
    #[error("this cluster's root CA key is held by an external CA; certificates are signed there")]
    NoRootKey,
    /// A node certificate could not be read.
    #[error("node certificate rejected: {0}")]
    BadNodeCertificate(&'static str),
    /// A node certificate was not issued by this root.
    #[error("node certificate was not issued by this cluster's root CA")]
    NotIssuedByRoot,
    /// A node certificate is outside its validity window.
    #[error("node certificate is expired or not yet valid; renew it or check the clock")]
    CertificateNotValidNow,
}

/// Why a certificate an external CA returned was refused (see `check_issued_certificate`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertCheckError {
    /// Larger than any node certificate.
    #[error("the certificate is larger than 64 KiB")]
    TooLarge,
    /// Not exactly one PEM CERTIFICATE block.
    #[error("expected exactly one PEM certificate")]
    NotOneCertificate,
    /// Not a well-formed X.509 certificate.
    #[error("not a well-formed X.509 certificate")]
    Malformed,
    /// Issued by another CA than the cluster root.
    #[error("issued by {found:?}, not by the cluster's root CA")]
    WrongIssuer {
        /// The issuer name found.
        found: String,
    },
    /// The issuer name matches but the root's key did not sign it.
    #[error("its signature does not verify with the cluster root's key")]
    BadSignature,
    /// It certifies another key than the node's CSR.
    #[error("it certifies a different public key than the node's CSR")]
    WrongKey,
    /// Subject other than exactly O=cluster, OU=role, CN=node.
    #[error("subject {found:?} is not the one asked for (O=cluster ID, OU=role, CN=node ID)")]
    WrongSubject {
        /// The subject found.
        found: String,
    },
    /// SANs other than exactly the DNS names asked for.
    #[error("subject alternative names [{found}] are not the ones asked for")]
    WrongSans {
        /// The names found.
        found: String,
    },
    /// Lacks serverAuth or clientAuth.
    #[error("missing the serverAuth and clientAuth extended key usages")]
    MissingEku,
    /// A CA certificate where a node certificate was asked for.
    #[error("it is a CA certificate")]
    IsCa,
    /// Expired or not yet valid.
    #[error("it is expired or not yet valid")]
    NotValidNow,
    /// Valid beyond the cluster's certificate expiry (or beyond the root).
    #[error("it is valid until {not_after}, beyond the cluster's certificate expiry")]
    TooLong {
        /// NotAfter found.
        not_after: String,
    },
}
