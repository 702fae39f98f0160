//! Randomness from the operating system via ring's `SystemRandom`.

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::CaError;

/// Fills `buf` from the OS RNG.
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), CaError> {
    SystemRandom::new().fill(buf).map_err(|_| CaError::Rng)
}

/// For infallible public constructors (`new_id`, `JoinToken::generate`): a
/// broken OS RNG is not something a caller can recover from, and continuing
/// with predictable IDs or secrets would be worse than stopping.
pub(crate) fn fill_or_panic(buf: &mut [u8]) {
    if fill(buf).is_err() {
        panic!("swarmguard-ca: the operating system random number generator failed");
    }
}

/// A certificate serial: 20 random bytes, top bit cleared so the DER INTEGER is
/// positive and fits in 20 bytes (RFC 5280 §4.1.2.2, as cfssl does). We also
/// redraw when the first byte is zero, so the encoded serial is always exactly
/// 20 bytes long.
pub(crate) fn serial() -> Result<[u8; 20], CaError> {
    let mut s = [0u8; 20];
    loop {
        fill(&mut s)?;
        s[0] &= 0x7f;
        if s[0] != 0 {
            return Ok(s);
        }
    }
}
