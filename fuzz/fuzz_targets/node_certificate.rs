//! Node certificates read from peers: `read_node_certificate` (the identity the cluster port
//! takes from every client certificate, and the agent from its issued certificate) and
//! `verify_node_certificate` (chain, validity and profile checks). Input: a certificate, PEM
//! or DER. What verification accepts must name the same identity as reading it does. The root
//! is the fixtures' foreign CA, so the seed `other-node.pem` (which it signed) verifies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use swarmguard_ca::{read_node_certificate, verify_node_certificate, RootCa};

fn root() -> &'static RootCa {
    static ROOT: OnceLock<RootCa> = OnceLock::new();
    ROOT.get_or_init(|| {
        RootCa::from_pem(
            include_bytes!("../../fixtures/certs/other-ca.pem"),
            include_bytes!("../../fixtures/certs/other-ca.key"),
        )
        .expect("the fixtures' root CA loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let read = read_node_certificate(data);
    if let Ok(verified) = verify_node_certificate(root(), data) {
        assert_eq!(
            read.ok(),
            Some(verified),
            "verified and read identities differ"
        );
    }
});
