//! swarmguard's cluster certificate authority, wire-compatible with SwarmKit.
//!
//! * [`RootCa`]: create or load the cluster root (ECDSA P-256, `CN=swarm-ca`).
//! * [`RootCa::issue_node_certificate`]: sign node certificates from CSRs that
//!   arrive over the network, taking only the public key from them.
//! * [`JoinToken`]: `SWMTKN-1-…` tokens that pin the root and carry a secret.
//! * [`new_id`]: node and cluster IDs in SwarmKit's format.
//! * [`cfssl::CfsslClient`]: an external cfssl CA, and [`check_issued_certificate`] for
//!   everything it returns.
//!
//! Crypto is ring only (via rcgen and x509-parser); no unsafe code here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base36;
pub mod cfssl;
mod csr;
mod error;
mod id;
mod issued;
mod node;
mod pem;
mod rand;
mod root;
mod signer;
mod token;

pub use csr::{check_csr, CheckedCsr, MAX_CSR_PEM_LEN};
pub use error::{CaError, CertCheckError, CsrError, TokenError};
pub use id::{is_valid_id, new_id, ID_LEN};
pub use issued::{check_issued_certificate, node_hosts, Expected, MAX_ISSUED_PEM_LEN};
pub use node::{
    generate_node_key_and_csr, read_node_certificate, renewal_delay, verify_node_certificate,
    IssuedCertificate, NodeIdentity, NodeRole, DEFAULT_NODE_CERT_EXPIRY, MIN_NODE_CERT_EXPIRY,
};
pub use root::{RootCa, ROOT_CN};
pub use token::{tokens_equal, JoinToken};
