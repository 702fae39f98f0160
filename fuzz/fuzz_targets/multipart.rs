//! The trust server's `multipart/form-data` parser (`swarmguard_notary::multipart`). The input
//! is a Content-Type header value, a newline, and the body. Every part returned must be a
//! slice of the body that the delimiter does not occur in, under a non-empty name, and no more
//! parts than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmguard_notary::multipart;

const MAX_PARTS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (ct, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(ct) = std::str::from_utf8(ct) else {
        return;
    };
    let Ok(boundary) = multipart::boundary(ct) else {
        return;
    };
    assert!(!boundary.is_empty() && boundary.len() <= 70);
    let Ok(parts) = multipart::parse(body, &boundary, MAX_PARTS) else {
        return;
    };
    assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
    let delim = format!("\r\n--{boundary}");
    let total: usize = parts.values().map(Vec::len).sum();
    assert!(total <= body.len());
    for (name, part) in &parts {
        assert!(!name.is_empty());
        assert!(!part.windows(delim.len()).any(|w| w == delim.as_bytes()));
    }
});
