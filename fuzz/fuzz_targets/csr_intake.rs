//! CSR intake (`swarmguard_ca::check_csr`): the PEM a joining or renewing node sends in
//! `IssueNodeCertificateRequest.csr`. Whatever intake accepts must be issuable by the CA, and
//! the certificate issued must verify as a node certificate naming what the CA chose.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use swarmguard_ca::{
    check_csr, verify_node_certificate, NodeRole, RootCa, DEFAULT_NODE_CERT_EXPIRY,
};

const NODE_ID: &str = "0123456789abcdefghijklmno";
const CLUSTER_ID: &str = "onmlkjihgfedcba9876543210";

fn root() -> &'static RootCa {
    static ROOT: OnceLock<RootCa> = OnceLock::new();
    ROOT.get_or_init(|| RootCa::create().expect("root CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = check_csr(data) else {
        return;
    };
    let issued = root()
        .issue_node_certificate(
            &csr,
            NODE_ID,
            NodeRole::Worker,
            CLUSTER_ID,
            DEFAULT_NODE_CERT_EXPIRY,
        )
        .expect("a CSR that passed intake must be issuable");
    let id = verify_node_certificate(root(), &issued.cert_pem)
        .expect("an issued certificate must verify");
    assert_eq!(id.node_id, NODE_ID);
    assert_eq!(id.cluster_id, CLUSTER_ID);
    assert_eq!(id.role, NodeRole::Worker);
});
