//! Engine API request bodies: `swarm init`, `swarm update`, `node update`, `swarm unlock`,
//! `secret create` and `secret update` JSON, through the handlers' parsers and the rules behind
//! them (`swarmguard::engine::fuzzing::body`, which also checks that an accepted spec survives a
//! JSON round trip and is accepted again unchanged, and that a secret body's answer does not
//! depend on the value's bytes). Input: one byte picking the endpoint (0 init, 1 swarm update,
//! 2 node update, 3 unlock, 4 secret create, 5 secret update; taken modulo 6), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, body)) = data.split_first() {
        let _ = swarmguard::engine::fuzzing::body(kind, body);
    }
});
