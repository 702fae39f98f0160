//! Node and cluster IDs in SwarmKit's `identity.NewID` format.

use crate::base36;

/// Length of an ID: SwarmKit's `maxRandomIDLength`.
pub const ID_LEN: usize = 25;

/// Returns a new random ID: 25 characters of `[0-9a-z]`.
///
/// Same construction as SwarmKit: 17 random bytes with the top bit set (so the
/// base-36 text is always 27 digits and needs no padding), base 36, then
/// characters 1..26 (dropping the first, which carries little entropy because
/// of the forced top bit). That leaves about 129 bits of randomness.
///
/// # Panics
/// If the operating system RNG fails.
pub fn new_id() -> String {
    let mut bytes = [0u8; 17];
    crate::rand::fill_or_panic(&mut bytes);
    bytes[0] |= 0x80;
    let text = base36::encode(&bytes, 0);
    text[1..=ID_LEN].to_string()
}

/// True if `id` looks like an ID made by [`new_id`]: exactly 25 characters of
/// `[0-9a-z]`. Used to keep anything else out of certificate subjects.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_id();
            assert!(is_valid_id(&id), "{id}");
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn seventeen_bytes_with_top_bit_always_give_27_digits() {
        let low = {
            let mut b = [0u8; 17];
            b[0] = 0x80;
            b
        };
        assert_eq!(base36::encode(&low, 0).len(), 27);
        assert_eq!(base36::encode(&[0xff; 17], 0).len(), 27);
    }

    #[test]
    fn validation() {
        assert!(is_valid_id("wumwykg5g9y7r29ed9fyyzm96")); // live node ID from the facts
        assert!(is_valid_id("y7oscev1t81udzjeusz455qg2")); // live cluster ID
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("wumwykg5g9y7r29ed9fyyzm9")); // 24
        assert!(!is_valid_id("wumwykg5g9y7r29ed9fyyzm966")); // 26
        assert!(!is_valid_id("WUMWYKG5G9Y7R29ED9FYYZM96"));
        assert!(!is_valid_id("wumwykg5g9y7r29ed9fyyzm9-"));
        assert!(!is_valid_id("wumwykg5g9y7r29ed9fyyzm9\u{e9}"));
    }
}
