//! Engine API request bodies: `swarm init`, `swarm update`, `node update` and `swarm unlock`
//! JSON, through the handlers' `json_body` and the spec rules behind them
//! (`swarmguard::engine::fuzzing::body`, which also checks that an accepted spec survives a
//! JSON round trip and is accepted again unchanged). Input: one byte picking the endpoint
//! (0 init, 1 swarm update, 2 node update, 3 unlock), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, body)) = data.split_first() {
        let _ = swarmguard::engine::fuzzing::body(kind, body);
    }
});
