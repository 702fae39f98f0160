//! Fixed-width base-36 text for big-endian unsigned integers.
//!
//! SwarmKit prints join-token parts and IDs with Go's `big.Int.Text(36)` and pads
//! them with `'0'` on the left. We only ever handle small fixed-size values
//! (at most 32 bytes), so plain schoolbook division is enough and keeps the
//! dependency tree free of a bignum crate.

use zeroize::Zeroize;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Encodes `bytes` (big-endian, unsigned) as lowercase base 36, left-padded with
/// `'0'` to at least `width` characters.
///
/// Like Go's `fmt.Sprintf("%0*s", width, n.Text(36))`: zero is `"0"`, and a
/// value that needs more than `width` digits is returned in full.
pub(crate) fn encode(bytes: &[u8], width: usize) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits: Vec<u8> = Vec::with_capacity(width.max(bytes.len() * 2));
    // Repeatedly divide the big-endian number by 36, collecting remainders.
    let mut start = num.iter().position(|&b| b != 0).unwrap_or(num.len());
    while start < num.len() {
        let mut rem: u32 = 0;
        for byte in &mut num[start..] {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 36) as u8;
            rem = acc % 36;
        }
        digits.push(ALPHABET[rem as usize]);
        while start < num.len() && num[start] == 0 {
            start += 1;
        }
    }
    // `num` held (a transform of) the input, which may be a secret.
    num.zeroize();
    // Go prints zero as "0", so there is always at least one digit.
    while digits.len() < width.max(1) {
        digits.push(b'0');
    }
    digits.reverse();
    // Every byte comes from ALPHABET, so this cannot fail.
    String::from_utf8(digits).unwrap_or_default()
}

/// Why a base-36 string could not be turned back into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A character outside `[0-9a-z]` (upper case is rejected on purpose:
    /// SwarmKit never emits it and tokens are compared as whole strings).
    BadChar,
    /// The value does not fit in the requested number of bytes.
    Overflow,
}

/// Decodes lowercase base 36 into exactly `N` big-endian bytes.
pub(crate) fn decode<const N: usize>(text: &str) -> Result<[u8; N], DecodeError> {
    let mut out = [0u8; N];
    for c in text.bytes() {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return Err(DecodeError::BadChar),
        };
        // out = out * 36 + digit
        let mut carry = u32::from(digit);
        for byte in out.iter_mut().rev() {
            let acc = u32::from(*byte) * 36 + carry;
            *byte = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return Err(DecodeError::Overflow);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The live SwarmKit root digest from the facts file (§1.2).
    const LIVE_HEX: &str = "27d92e1355ac2445700915a8ef8737c11b1e802655a3d98314fe3ea0eea2216b";
    const LIVE_B36: &str = "0zr5onx3985opxye7uh9x73633kollbzoyf7pmvqvl6w8geo2z";

    #[test]
    fn live_digest_vector() {
        assert_eq!(encode(&hex(LIVE_HEX), 50), LIVE_B36);
        let back: [u8; 32] = decode(LIVE_B36).unwrap();
        assert_eq!(back.to_vec(), hex(LIVE_HEX));
    }

    #[test]
    fn small_vectors() {
        assert_eq!(encode(&[], 0), "0");
        assert_eq!(encode(&[], 3), "000");
        assert_eq!(encode(&[0, 0], 1), "0");
        assert_eq!(encode(&[35], 1), "z");
        assert_eq!(encode(&[36], 1), "10");
        assert_eq!(encode(&[0x01, 0x00], 4), "0074"); // 256 = 7*36 + 4
        assert_eq!(encode(&[0xff; 4], 0), "1z141z3"); // 4294967295 in Go: strconv.FormatUint(…, 36)
                                                      // Never truncates.
        assert_eq!(encode(&[36], 1), "10");
        assert_eq!(decode::<2>("0074").unwrap(), [1, 0]);
        assert_eq!(decode::<4>("1z141z3").unwrap(), [0xff; 4]);
    }

    #[test]
    fn max_values_and_overflow() {
        // 2^128 - 1 needs 25 digits; 2^256 - 1 needs 50.
        let max128 = encode(&[0xff; 16], 25);
        assert_eq!(max128, "f5lxx1zz5pnorynqglhzmsp33");
        assert_eq!(decode::<16>(&max128).unwrap(), [0xff; 16]);
        assert_eq!(encode(&[0xff; 32], 50).len(), 50);
        assert_eq!(
            decode::<16>("f5lxx1zz5pnorynqglhzmsp34"),
            Err(DecodeError::Overflow)
        );
        assert_eq!(
            decode::<16>("zzzzzzzzzzzzzzzzzzzzzzzzz"),
            Err(DecodeError::Overflow)
        );
        assert_eq!(decode::<2>("A"), Err(DecodeError::BadChar));
        assert_eq!(decode::<2>("-"), Err(DecodeError::BadChar));
    }

    /// Against an independent bignum implementation, for many sizes and values
    /// including leading zero bytes.
    #[test]
    fn matches_num_bigint_oracle() {
        let rng = ring::rand::SystemRandom::new();
        for len in 0..=33usize {
            for _ in 0..50 {
                let mut v = vec![0u8; len];
                ring::rand::SecureRandom::fill(&rng, &mut v).unwrap();
                if len > 0 && v[0] & 1 == 0 {
                    v[0] = 0; // exercise leading zeros half of the time
                }
                let want = num_bigint::BigUint::from_bytes_be(&v).to_str_radix(36);
                assert_eq!(encode(&v, 0), want, "{v:?}");
                assert_eq!(encode(&v, 60), format!("{want:0>60}"));
            }
        }
    }

    #[test]
    fn round_trip_random() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..200 {
            let v: [u8; 32] = ring::rand::generate(&rng).unwrap().expose();
            let s = encode(&v, 50);
            assert_eq!(s.len(), 50);
            assert_eq!(decode::<32>(&s).unwrap(), v);
        }
    }
}
