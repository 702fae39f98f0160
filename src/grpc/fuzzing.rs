//! Entry point for the cargo-fuzz target `cluster_proto` (see docs/fuzzing.md): the protobuf
//! requests the cluster port decodes (CA, NodeCA, Dispatcher, LogBroker), decoded with prost
//! into the generated types and put through the checks the services run on them before any
//! store access. Not an API: nothing in the daemon calls it.

use std::collections::BTreeMap;

use prost::Message;

use crate::control::records::{ClusterRecord, TokenPair};
use crate::control::types::Spec;
use crate::control::Control;
use crate::pb;

/// Worker and manager tokens of the sample cluster `role_for_token` compares against.
pub const WORKER_TOKEN: &str =
    "SWMTKN-1-0zr5onx3985opxye7uh9x73633kollbzoyf7pmvqvl6w8geo2z-1234567890abcdefghijklmno";
pub const MANAGER_TOKEN: &str =
    "SWMTKN-1-0zr5onx3985opxye7uh9x73633kollbzoyf7pmvqvl6w8geo2z-onmlkjihgfedcba9876543210";

/// Decodes `bytes` as the request message `kind` picks (see [`KINDS`]) and runs its checks.
/// `Err` is what the peer would be told; a panic is a bug.
pub fn request(kind: u8, bytes: &[u8]) -> Result<(), String> {
    let err = |e: tonic::Status| e.message().to_string();
    match KINDS[usize::from(kind) % KINDS.len()] {
        "GetRootCACertificate" => decode::<pb::GetRootCaCertificateRequest>(bytes).map(drop),
        "GetUnlockKey" => decode::<pb::GetUnlockKeyRequest>(bytes).map(drop),
        "IssueNodeCertificate" => {
            let r = decode::<pb::IssueNodeCertificateRequest>(bytes)?;
            super::ca::availability(r.availability).map_err(err)?;
            let _ = Control::role_for_token(&sample_cluster(), &r.token);
            swarmguard_ca::check_csr(&r.csr)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "NodeCertificateStatus" => {
            let r = decode::<pb::NodeCertificateStatusRequest>(bytes)?;
            match swarmguard_ca::is_valid_id(&r.node_id) {
                true => Ok(()),
                false => Err("bad node ID".into()),
            }
        }
        "Session" => {
            let r = decode::<pb::SessionRequest>(bytes)?;
            match &r.description {
                Some(d) => super::dispatcher::description(d).map(drop).map_err(err),
                None => Ok(()),
            }
        }
        "Heartbeat" => decode::<pb::HeartbeatRequest>(bytes).map(drop),
        "UpdateTaskStatus" => decode::<pb::UpdateTaskStatusRequest>(bytes).map(drop),
        "Assignments" => decode::<pb::AssignmentsRequest>(bytes).map(drop),
        _ => decode::<pb::ListenSubscriptionsRequest>(bytes).map(drop),
    }
}

/// The request messages, in the order the first input byte picks them.
pub const KINDS: [&str; 9] = [
    "GetRootCACertificate",
    "GetUnlockKey",
    "IssueNodeCertificate",
    "NodeCertificateStatus",
    "Session",
    "Heartbeat",
    "UpdateTaskStatus",
    "Assignments",
    "ListenSubscriptions",
];

/// Decodes as tonic does; whatever decodes must re-encode to a message that decodes equal.
fn decode<M: Message + Default + PartialEq>(bytes: &[u8]) -> Result<M, String> {
    let m = M::decode(bytes).map_err(|e| e.to_string())?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert!(again == m, "protobuf round trip");
    Ok(m)
}

fn sample_cluster() -> ClusterRecord {
    ClusterRecord {
        id: "onmlkjihgfedcba9876543210".into(),
        created_at: String::new(),
        updated_at: String::new(),
        spec: Spec::default(),
        root_ca_pem: String::new(),
        join_tokens: TokenPair {
            worker: WORKER_TOKEN.into(),
            manager: MANAGER_TOKEN.into(),
        },
        last_forced_rotation: 0,
        removed_nodes: BTreeMap::new(),
        default_addr_pool: None,
        subnet_size: 0,
        data_path_port: 0,
        root_rotation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_reach_the_checks_they_are_for() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cluster_proto");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let (kind, msg) = data.split_first().unwrap();
            assert_eq!(request(*kind, msg), Ok(()), "{}", path.display());
            seen += 1;
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let long_hostname = pb::SessionRequest {
            description: Some(pb::NodeDescription {
                hostname: "h".repeat(254),
                ..Default::default()
            }),
            session_id: String::new(),
        };
        let e = request(4, &long_hostname.encode_to_vec()).unwrap_err();
        assert!(e.contains("hostname is 254 bytes"), "{e}");
        let bad_availability = pb::IssueNodeCertificateRequest {
            availability: 7,
            ..Default::default()
        };
        assert!(request(2, &bad_availability.encode_to_vec())
            .unwrap_err()
            .contains("invalid availability 7"));
        assert!(request(3, &[0x0a, 0x05, b'a']).is_err(), "truncated field");
        assert!(
            request(3, &[0x0a, 0x02, 0xff, 0xfe]).is_err(),
            "invalid UTF-8 in a string"
        );
    }
}
