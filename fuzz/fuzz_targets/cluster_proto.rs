//! The protobuf requests the cluster port decodes (SwarmKit's CA, NodeCA, Dispatcher and
//! LogBroker), with prost into the daemon's generated types, then the services' own checks
//! (`swarmguard::grpc::fuzzing::request`, which also checks that whatever decodes re-encodes
//! to an equal message). Input: one byte picking the message (`grpc::fuzzing::KINDS`), then
//! its protobuf encoding as it travels inside the gRPC frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, message)) = data.split_first() {
        let _ = swarmguard::grpc::fuzzing::request(kind, message);
    }
});
