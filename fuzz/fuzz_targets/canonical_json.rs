//! Canonical JSON (`swarmguard_notary::cjson`), which every TUF signature check runs over the
//! `signed` part of an uploaded document. Canonicalisation must be idempotent: the canonical
//! form, read back, canonicalises to itself byte for byte. (Control characters are written raw,
//! as Go does, so such output is not JSON that serde reads back; that is the only exception.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use swarmguard_notary::cjson::to_canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(canonical) = to_canonical(&value) else {
        return;
    };
    match serde_json::from_slice::<Value>(&canonical) {
        Ok(back) => {
            let again = to_canonical(&back).expect("canonical output must canonicalise");
            assert_eq!(again, canonical, "canonical JSON must be idempotent");
        }
        Err(_) => assert!(
            canonical.iter().any(|b| *b < 0x20),
            "canonical output without control characters must be JSON"
        ),
    }
});
