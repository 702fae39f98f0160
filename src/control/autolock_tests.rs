//! Tests of `autolock.rs` that need a whole swarm (`swarm::init`): a sibling module, so that
//! `autolock` itself never imports `swarm` (which imports it).

use super::ca::local::SEALED_KEY_HEADER;
use super::testing::config;
use super::*;
use crate::control::swarm::InitOptions;
use swarmguard_secrets::kek::UnlockKey;
use swarmguard_secrets::keyfile::{read_dek_file, DekFile};

/// With autolock on, a renewal writes the new TLS key sealed too, the material reloads from
/// it, and after a restart only the unlock key opens the store, the TLS key and the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autolocked_manager_renews_and_reopens_with_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let ctl = Control::open(store.clone(), config(dir.path())).unwrap();
    ctl.init(&InitOptions {
        advertise_addr: "127.0.0.1".into(),
        auto_lock_managers: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let human = ctl.unlock_key().unwrap().expect("autolock on");
    let key_file = dir.path().join("certificates/swarm-node.key");
    let sealed = |p: &std::path::Path| {
        std::fs::read(p)
            .unwrap()
            .starts_with(SEALED_KEY_HEADER.as_bytes())
    };
    assert!(sealed(&key_file));
    let before = ctl.security().current().unwrap().cert_pem.clone();
    ctl.renew_own_certificate().await.unwrap();
    assert!(sealed(&key_file), "a renewal wrote the key in clear");
    assert!(ctl
        .security()
        .refresh(&store, dir.path())
        .expect("the sealed renewed key reloads"));
    assert_ne!(ctl.security().current().unwrap().cert_pem, before);
    store.shutdown().await.unwrap();
    drop(ctl);

    let path = Store::key_path(dir.path());
    assert!(
        Store::open(dir.path()).await.is_err(),
        "opened without the key"
    );
    let DekFile::Wrapped(wrapped) = read_dek_file(&path).unwrap() else {
        panic!("not wrapped")
    };
    let wrong = UnlockKey::generate().unwrap();
    assert!(wrong.unwrap(&wrapped).is_err());
    let dek = UnlockKey::parse(&human).unwrap().unwrap(&wrapped).unwrap();
    let store = Store::open_unlocked(dir.path(), Default::default(), dek)
        .await
        .unwrap();
    let ctl = Control::open(store.clone(), config(dir.path())).unwrap();
    assert!(
        ctl.local_node_id().is_some(),
        "identity loads from the sealed key"
    );
    store.shutdown().await.unwrap();
}
