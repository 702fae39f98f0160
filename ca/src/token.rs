//! Join tokens: `SWMTKN-1-<root digest>-<secret>` (SwarmKit `ca/config.go`).
//!
//! The digest part pins the root CA for a joining node (it hashes the exact PEM
//! bytes served by `GetRootCACertificate`); the secret part is the credential.
//! The role is not in the token: the server compares the whole string against
//! its stored worker and manager tokens with [`tokens_equal`].

use std::fmt;

use ring::digest;
use zeroize::{Zeroize, Zeroizing};

use crate::base36;
use crate::error::TokenError;

const PREFIX: &str = "SWMTKN";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;
const SECRET_BYTES: usize = 16;

/// A parsed or freshly generated join token.
///
/// `Display` prints the full token (it is meant to be handed to an operator);
/// `Debug` redacts the secret so tokens do not leak through logs.
/// The secret is zeroized on drop.
#[derive(Clone)]
pub struct JoinToken {
    /// `None` for v1; `Some(fips)` for v2 tokens.
    v2_fips: Option<bool>,
    digest: [u8; 32],
    /// The 25 base-36 characters of the secret part.
    secret: Zeroizing<String>,
}

impl JoinToken {
    /// Makes a new v1 token for the root CA whose exact PEM bundle is
    /// `root_ca_pem` (hash the bytes you serve, trailing newline included).
    ///
    /// # Panics
    /// If the operating system RNG fails.
    pub fn generate(root_ca_pem: &[u8]) -> JoinToken {
        let mut raw = Zeroizing::new([0u8; SECRET_BYTES]);
        crate::rand::fill_or_panic(raw.as_mut());
        JoinToken {
            v2_fips: None,
            digest: sha256(root_ca_pem),
            secret: Zeroizing::new(base36::encode(raw.as_ref(), SECRET_LEN)),
        }
    }

    /// Parses a token the way SwarmKit's `ParseJoinToken` does, but stricter
    /// about the character set. Accepts v1 (`SWMTKN-1-D-S`) and v2
    /// (`SWMTKN-2-<0|1>-D-S`).
    pub fn parse(token: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = token.split('-').collect();
        if parts[0] != PREFIX {
            return Err(TokenError::WrongPrefix);
        }
        let (version, expected) = match parts.get(1).copied() {
            Some("1") => (1u8, 4usize),
            Some("2") => (2, 5),
            other => {
                return Err(TokenError::WrongVersion {
                    found: other.unwrap_or("").chars().take(8).collect(),
                })
            }
        };
        if parts.len() != expected {
            return Err(TokenError::WrongPartCount {
                version,
                expected,
                found: parts.len(),
            });
        }
        let v2_fips = if version == 2 {
            match parts[2] {
                "0" => Some(false),
                "1" => Some(true),
                _ => return Err(TokenError::BadFipsFlag),
            }
        } else {
            None
        };
        let (d, s) = (parts[expected - 2], parts[expected - 1]);
        if d.len() != DIGEST_LEN {
            return Err(TokenError::DigestLength { found: d.len() });
        }
        if s.len() != SECRET_LEN {
            return Err(TokenError::SecretLength { found: s.len() });
        }
        let digest = base36::decode::<32>(d).map_err(|_| TokenError::DigestCharset)?;
        let mut secret_raw =
            base36::decode::<SECRET_BYTES>(s).map_err(|_| TokenError::SecretCharset)?;
        secret_raw.zeroize();
        Ok(JoinToken {
            v2_fips,
            digest,
            secret: Zeroizing::new(s.to_string()),
        })
    }

    /// SHA-256 of the root CA PEM bundle this token pins.
    pub fn root_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// True if `root_ca_pem` is exactly the bundle this token pins. A joining
    /// node must check this before trusting a root it downloaded unauthenticated.
    pub fn matches_root(&self, root_ca_pem: &[u8]) -> bool {
        sha256(root_ca_pem) == self.digest
    }

    /// For v2 tokens, whether the cluster mandates FIPS; `None` for v1.
    pub fn fips(&self) -> Option<bool> {
        self.v2_fips
    }
}

/// Equality goes through [`tokens_equal`] so that comparing a presented token
/// with a stored one never leaks timing.
impl PartialEq for JoinToken {
    fn eq(&self, other: &Self) -> bool {
        // Evaluate every part; no short-circuit on the public ones either.
        let public = self.v2_fips == other.v2_fips && self.digest == other.digest;
        tokens_equal(&self.secret, &other.secret) & public
    }
}

impl Eq for JoinToken {}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = base36::encode(&self.digest, DIGEST_LEN);
        match self.v2_fips {
            None => write!(f, "{PREFIX}-1-{d}-{}", self.secret.as_str()),
            Some(fips) => write!(
                f,
                "{PREFIX}-2-{}-{d}-{}",
                u8::from(fips),
                self.secret.as_str()
            ),
        }
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("fips", &self.v2_fips)
            .field("root_digest", &base36::encode(&self.digest, DIGEST_LEN))
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Compares two token strings without an early exit on the first differing
/// byte, so response timing does not reveal how much of a guess was right.
///
/// Both inputs are hashed to fixed-size SHA-256 digests first; the digests are
/// then compared with a branch-free fold. Hashing makes the comparison
/// independent of where the strings differ and of their lengths.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (da, db) = (sha256(a.as_bytes()), sha256(b.as_bytes()));
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE_D: &str = "0zr5onx3985opxye7uh9x73633kollbzoyf7pmvqvl6w8geo2z";
    const S: &str = "1234567890abcdefghijklmno";

    #[test]
    fn generate_shape_and_round_trip() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let t = JoinToken::generate(pem);
        let s = t.to_string();
        assert_eq!(s.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
        assert!(s.starts_with("SWMTKN-1-"));
        let parsed = JoinToken::parse(&s).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(parsed.to_string(), s);
        assert!(parsed.matches_root(pem));
        assert!(
            !parsed.matches_root(&pem[..pem.len() - 1]),
            "trailing newline matters"
        );
        assert_eq!(parsed.root_digest(), sha256(pem));
        assert_eq!(parsed.fips(), None);
        // Two tokens for the same root share D and differ in S.
        let t2 = JoinToken::generate(pem);
        assert_eq!(t.root_digest(), t2.root_digest());
        assert_ne!(t.to_string(), t2.to_string());
    }

    #[test]
    fn live_digest_decodes() {
        let t = JoinToken::parse(&format!("SWMTKN-1-{LIVE_D}-{S}")).unwrap();
        let hex: String = t.root_digest().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "27d92e1355ac2445700915a8ef8737c11b1e802655a3d98314fe3ea0eea2216b"
        );
    }

    #[test]
    fn v2_tokens() {
        for flag in ["0", "1"] {
            let s = format!("SWMTKN-2-{flag}-{LIVE_D}-{S}");
            let t = JoinToken::parse(&s).unwrap();
            assert_eq!(t.fips(), Some(flag == "1"));
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn debug_redacts_secret() {
        let t = JoinToken::parse(&format!("SWMTKN-1-{LIVE_D}-{S}")).unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(S), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert!(format!("{t}").contains(S));
    }

    #[test]
    fn bad_tokens() {
        let d49 = &LIVE_D[1..];
        let s24 = &S[1..];
        let cases: Vec<(String, TokenError)> = vec![
            ("".into(), TokenError::WrongPrefix),
            ("garbage".into(), TokenError::WrongPrefix),
            (format!("swmtkn-1-{LIVE_D}-{S}"), TokenError::WrongPrefix),
            (format!("SWMTKNX-1-{LIVE_D}-{S}"), TokenError::WrongPrefix),
            (" SWMTKN-1-x-y".into(), TokenError::WrongPrefix),
            (
                "SWMTKN".into(),
                TokenError::WrongVersion { found: "".into() },
            ),
            (
                format!("SWMTKN-3-{LIVE_D}-{S}"),
                TokenError::WrongVersion { found: "3".into() },
            ),
            (
                format!("SWMTKN-01-{LIVE_D}-{S}"),
                TokenError::WrongVersion { found: "01".into() },
            ),
            (
                "SWMTKN-1".into(),
                TokenError::WrongPartCount {
                    version: 1,
                    expected: 4,
                    found: 2,
                },
            ),
            (
                format!("SWMTKN-1-{LIVE_D}"),
                TokenError::WrongPartCount {
                    version: 1,
                    expected: 4,
                    found: 3,
                },
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{S}-x"),
                TokenError::WrongPartCount {
                    version: 1,
                    expected: 4,
                    found: 5,
                },
            ),
            (
                format!("SWMTKN-2-{LIVE_D}-{S}"),
                TokenError::WrongPartCount {
                    version: 2,
                    expected: 5,
                    found: 4,
                },
            ),
            (format!("SWMTKN-2-2-{LIVE_D}-{S}"), TokenError::BadFipsFlag),
            (
                format!("SWMTKN-2-yes-{LIVE_D}-{S}"),
                TokenError::BadFipsFlag,
            ),
            (
                format!("SWMTKN-1-{d49}-{S}"),
                TokenError::DigestLength { found: 49 },
            ),
            (
                format!("SWMTKN-1-{LIVE_D}0-{S}"),
                TokenError::DigestLength { found: 51 },
            ),
            (
                format!("SWMTKN-1--{S}"),
                TokenError::DigestLength { found: 0 },
            ),
            (
                format!("SWMTKN-1-{}-{S}", LIVE_D.to_uppercase()),
                TokenError::DigestCharset,
            ),
            (
                format!("SWMTKN-1-{}_-{S}", &LIVE_D[..49]),
                TokenError::DigestCharset,
            ),
            // 50 'z' exceeds 2^256.
            (
                format!("SWMTKN-1-{}-{S}", "z".repeat(50)),
                TokenError::DigestCharset,
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{s24}"),
                TokenError::SecretLength { found: 24 },
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{S}a"),
                TokenError::SecretLength { found: 26 },
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{}", S.to_uppercase()),
                TokenError::SecretCharset,
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{}", "z".repeat(25)),
                TokenError::SecretCharset,
            ),
            (
                format!("SWMTKN-1-{LIVE_D}-{S}\n"),
                TokenError::SecretLength { found: 26 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                JoinToken::parse(&input),
                Err(want.clone()),
                "input {input:?}"
            );
            // Messages name the problem and are not empty.
            assert!(want.to_string().starts_with("invalid join token"));
        }
    }

    #[test]
    fn constant_time_compare() {
        let a = format!("SWMTKN-1-{LIVE_D}-{S}");
        assert!(tokens_equal(&a, &a.clone()));
        assert!(!tokens_equal(&a, &a[..a.len() - 1]));
        assert!(!tokens_equal(&a, &format!("{}p", &a[..a.len() - 1])));
        assert!(!tokens_equal(&a, ""));
        assert!(tokens_equal("", ""));
    }
}
