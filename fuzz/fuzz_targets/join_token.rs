//! Join-token parsing (`JoinToken::parse`) and the constant-time comparison the manager runs on
//! every presented token. A token that parses must print back to exactly the input (the
//! format has one spelling), and compare equal to itself and to its re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmguard_ca::{tokens_equal, JoinToken};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert!(tokens_equal(text, text));
    let Ok(token) = JoinToken::parse(text) else {
        return;
    };
    let printed = token.to_string();
    assert_eq!(printed, text, "a parsed token must print back unchanged");
    let again = JoinToken::parse(&printed).expect("a printed token must parse");
    assert!(again == token);
    // Debug must never carry the secret (it may only coincide with the public digest part).
    let mut parts = text.rsplit('-');
    let (secret, digest) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let debug = format!("{token:?}");
    assert!(debug.contains("[redacted]"));
    assert!(!debug.contains(secret) || digest.contains(secret));
});
