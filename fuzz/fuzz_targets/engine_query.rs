//! Engine API request heads: the URI as hyper parsed it, the browser guard's headers (`Origin`,
//! `Host`, `Content-Type`), the `/v1.xx` prefix, and every query parameter a handler reads
//! (`version`, the rotate flags, `force`, `filters`), through
//! `swarmguard::engine::fuzzing::query`. Input: the request target on the first line, e.g.
//! `/v1.41/nodes?filters=%7B%22role%22%3A%5B%22worker%22%5D%7D`, then `Name: value` lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = swarmguard::engine::fuzzing::query(data);
});
