//! Engine API request targets and query strings: the URI as hyper parsed it, the `/v1.xx`
//! prefix, and every query parameter a handler reads (`version`, the rotate flags, `force`,
//! `filters`), through `swarmguard::engine::fuzzing::query`. Input: one request target,
//! e.g. `/v1.41/nodes?filters=%7B%22role%22%3A%5B%22worker%22%5D%7D`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = swarmguard::engine::fuzzing::query(data);
});
