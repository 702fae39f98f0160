//! This manager's TLS material and the cluster CA's work: `security` (the one owner of the
//! material), `local` (its files on disk), `signer` (who signs node certificates, and the loop
//! that signs what had to wait), `renewal` (this manager's own certificate), `external` (cfssl
//! CAs), `rotation` and `rotating_ca` (root rotation), `autolock` (the unlock key that wraps
//! the data key and this manager's TLS key).

pub mod autolock;
pub mod external;
pub mod local;
pub mod renewal;
pub mod rotating_ca;
pub mod rotation;
pub mod security;
pub mod signer;
