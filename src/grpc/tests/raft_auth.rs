//! The Raft transport on the cluster port: only manager certificates of this cluster that are
//! members of the group get through; frames are bounded and parsed strictly.

use tonic::Code;

use super::*;
use crate::grpc::raft::pb::{raft_client::RaftClient, Frame};

async fn raft_client(env: &Env, cert: &[u8], key: &[u8]) -> RaftClient<tonic::transport::Channel> {
    let cfg = ctls::verified(&env.root(), Some((cert, key))).unwrap();
    let ch = ctls::channel(env.addr, cfg, "swarm-manager").await.unwrap();
    RaftClient::new(ch).max_encoding_message_size(64 << 20)
}

fn frame(json: &[u8]) -> Frame {
    Frame {
        json: json.to_vec(),
        data: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_cannot_call_raft() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut c = raft_client(&env, &creds.cert_pem, &creds.key_pem).await;
    let err = c.append_entries(frame(b"{}")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("not part of OUs: [swarm-manager]"),
        "{}",
        err.message()
    );
    let err = c.join(frame(b"{}")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

/// A manager certificate of this cluster whose node is not in the group may ask to join it,
/// but may not vote, replicate or forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_outside_the_group_cannot_vote_replicate_or_forward() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.manager_token()).await.unwrap();
    let mut c = raft_client(&env, &creds.cert_pem, &creds.key_pem).await;
    for err in [
        c.append_entries(frame(b"{}")).await.unwrap_err(),
        c.vote(frame(b"{}")).await.unwrap_err(),
        c.install_snapshot(frame(b"{}")).await.unwrap_err(),
        c.forward(frame(b"{\"Write\":{\"checks\":[],\"ops\":[]}}"))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("not a member of the raft group"),
            "{}",
            err.message()
        );
    }
    // A join naming an address that is not ip:port is refused before anything is written.
    let err = c
        .join(frame(br#"{"raft_id":5,"addr":"example.com"}"#))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(env.store.member_addrs().len(), 1);
}

/// A member's malformed or oversized frames are refused; the group is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_malformed_or_oversized_frames_are_refused() {
    let env = Env::new().await;
    let dir = env.control.config().data_dir.clone();
    let (cert, key) = crate::control::ca::local::LocalIdentity::read_pair(
        &dir,
        &crate::control::ca::local::ClearKey,
    )
    .unwrap();
    let mut c = raft_client(&env, &cert, &key).await;
    for json in [&b"{"[..], b"[]", b"{\"vote\":1}", &[0xffu8; 32][..]] {
        let err = c.append_entries(frame(json)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = c.forward(frame(json)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let big = Frame {
        json: Vec::new(),
        data: vec![0u8; crate::store::MAX_FRAME_BYTES + 1],
    };
    let err = c.install_snapshot(big).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // A forwarded write over the store's limits is refused by the leader, not applied.
    let huge =
        serde_json::json!({"Write": {"checks": [], "ops": [{"Put": {"key": "", "value": ""}}]}});
    let r = c
        .forward(frame(huge.to_string().as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        String::from_utf8_lossy(&r.json).contains("Failed"),
        "{}",
        String::from_utf8_lossy(&r.json)
    );
    assert_eq!(env.store.member_addrs().len(), 1);
}
