//! The stock docker CLI driving a real swarmguard manager: swarm init, join tokens, info, nodes,
//! updates, restarts, and a table of bad inputs that must change nothing.

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::manager::Manager;
use x509_parser::prelude::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn init(m: &Manager) -> String {
    m.docker_ok(&[
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1",
        "--cert-expiry",
        "48h",
    ])
}

fn swarm(m: &Manager) -> serde_json::Value {
    let r = m.request("GET", "/v1.41/swarm", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// `SWMTKN-1-<50 base36>-<25 base36>`.
fn assert_token_shape(token: &str) {
    let parts: Vec<&str> = token.split('-').collect();
    assert_eq!(parts.len(), 4, "{token}");
    assert_eq!(parts[0], "SWMTKN");
    assert_eq!(parts[1], "1");
    assert_eq!(parts[2].len(), 50, "{token}");
    assert_eq!(parts[3].len(), 25, "{token}");
    let base36 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    assert!(base36(parts[2]) && base36(parts[3]), "{token}");
}

/// sha256 of the exact PEM bytes, base36, zero-padded to 50: recomputed here independently of
/// the CA crate.
fn digest_part(pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    let mut n: Vec<u8> = digest.as_ref().to_vec();
    let mut out = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
    }
    while out.len() < 50 {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

#[test]
fn docker_cli_swarm_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());

    let out = init(&m);
    assert!(
        out.starts_with("Swarm initialized: current node ("),
        "{out}"
    );
    assert!(out.contains(") is now a manager."), "{out}");
    let join_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("docker swarm join --token"))
        .unwrap_or_else(|| panic!("no join command in: {out}"));
    let words: Vec<&str> = join_line.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{join_line}");
    assert_token_shape(words[4]);
    // No --listen-addr on `swarm init`: the manager's own --listen-addr is the cluster port.
    assert_eq!(words[5], m.cluster_addr);

    let s = swarm(&m);
    let worker = s["JoinTokens"]["Worker"].as_str().unwrap().to_string();
    let manager = s["JoinTokens"]["Manager"].as_str().unwrap().to_string();
    assert_eq!(words[4], worker);
    assert_token_shape(&manager);
    assert_ne!(worker, manager);
    let root = s["TLSInfo"]["TrustRoot"].as_str().unwrap();
    let digest = digest_part(root);
    assert_eq!(worker.split('-').nth(2).unwrap(), digest);
    assert_eq!(manager.split('-').nth(2).unwrap(), digest);

    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "worker"]).trim(),
        worker
    );
    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "manager"])
            .trim(),
        manager
    );

    let rotated = m.docker_ok(&["swarm", "join-token", "--rotate", "worker"]);
    assert!(
        rotated.contains("Successfully rotated worker join token."),
        "{rotated}"
    );
    let s2 = swarm(&m);
    let worker2 = s2["JoinTokens"]["Worker"].as_str().unwrap();
    assert_ne!(worker2, worker, "worker token must change");
    assert_eq!(
        s2["JoinTokens"]["Manager"].as_str().unwrap(),
        manager,
        "manager token must not change"
    );
    assert_eq!(
        worker2.split('-').nth(2).unwrap(),
        digest,
        "same root, same digest"
    );
    assert!(rotated.contains(worker2), "{rotated}");

    let info = m.docker_ok(&["info"]);
    assert!(info.contains("Swarm: active"), "{info}");
    assert!(info.contains("Is Manager: true"), "{info}");
    assert!(info.contains("Expiry Duration: 2 days"), "{info}");

    let ls = m.docker_ok(&["node", "ls"]);
    let node_id = s["ID"].as_str().map(|_| ()).and(
        m.request("GET", "/v1.41/info", None).json()["Swarm"]["NodeID"]
            .as_str()
            .map(str::to_string),
    );
    let node_id = node_id.expect("node id in /info");
    let row = ls
        .lines()
        .find(|l| l.starts_with(&node_id))
        .unwrap_or_else(|| panic!("{node_id} not in: {ls}"));
    assert!(row.contains("Leader"), "{row}");
    assert!(row.contains("Ready"), "{row}");
    assert!(row.contains(" * "), "the local node is starred: {row}");

    let too_short = m.docker(&["swarm", "update", "--cert-expiry", "30m"]);
    assert!(!too_short.status.success());
    let err = String::from_utf8_lossy(&too_short.stderr);
    assert!(
        err.contains("minimum certificate expiry time is: 1h0m0s"),
        "{err}"
    );

    // An update carrying the version read before the rotation is stale.
    let old_version = s["Version"]["Index"].as_u64().unwrap();
    let body = serde_json::to_vec(&s["Spec"]).unwrap();
    let r = m.request(
        "POST",
        &format!("/v1.41/swarm/update?rotateManagerToken=false&rotateManagerUnlockKey=false&rotateWorkerToken=true&version={old_version}"),
        Some(&body),
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.message(),
        "rpc error: code = Unknown desc = update out of sequence"
    );
    assert_eq!(
        swarm(&m)["JoinTokens"],
        s2["JoinTokens"],
        "a stale update changes nothing"
    );

    let upd = m.docker_ok(&["swarm", "update", "--cert-expiry", "72h"]);
    assert!(upd.contains("Swarm updated."), "{upd}");
    assert!(m.docker_ok(&["info"]).contains("Expiry Duration: 3 days"));

    let again = m.docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("This node is already part of a swarm"));

    let insp = m.docker_ok(&[
        "node",
        "inspect",
        "self",
        "--format",
        "{{.Spec.Role}} {{.ManagerStatus.Leader}}",
    ]);
    assert_eq!(insp.trim(), "manager true");
    let demote = m.docker(&["node", "demote", &node_id]);
    assert!(!demote.status.success());
    assert!(String::from_utf8_lossy(&demote.stderr)
        .contains("attempting to demote the last manager of the swarm"));
    let rm = m.docker(&["node", "rm", &node_id]);
    assert!(!rm.status.success());
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("must be demoted to worker before removal")
    );
    m.docker_ok(&[
        "node",
        "update",
        "--label-add",
        "zone=a",
        "--availability",
        "drain",
        &node_id,
    ]);
    let n = m
        .request("GET", &format!("/v1.41/nodes/{node_id}"), None)
        .json();
    assert_eq!(n["Spec"]["Labels"]["zone"], "a");
    assert_eq!(n["Spec"]["Availability"], "drain");
    let filtered = m.docker_ok(&["node", "ls", "-q", "--filter", "node.label=zone=a"]);
    assert_eq!(filtered.trim(), node_id);
    let none = m.docker_ok(&["node", "ls", "-q", "--filter", "role=worker"]);
    assert_eq!(none.trim(), "");

    // The same CLI over the tcp Engine API (`Host: 127.0.0.1:PORT`): a JSON POST, reads, and a
    // bodiless POST (`Content-Length: 0`, no Content-Type) that reaches its handler.
    let out = m.docker_tcp(&["swarm", "join-token", "--rotate", "manager"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Successfully rotated manager join token."),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(swarm(&m)["JoinTokens"]["Manager"], manager.as_str());
    let ls = m.docker_tcp(&["node", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), node_id);
    let leave = m.docker_tcp(&["swarm", "leave"]);
    assert!(!leave.status.success());
    assert!(
        String::from_utf8_lossy(&leave.stderr).contains("Use `--force` to ignore this message.")
    );

    let leave = m.docker(&["swarm", "leave"]);
    assert!(!leave.status.success());
    assert!(
        String::from_utf8_lossy(&leave.stderr).contains("Use `--force` to ignore this message.")
    );
    m.docker_ok(&["swarm", "leave", "--force"]);
    assert!(m.docker_ok(&["info"]).contains("Swarm: inactive"));
    let gone = m.docker(&["swarm", "join-token", "worker"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("This node is not a swarm manager."));
}

#[test]
fn certificates_match_swarmkit_profile() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    init(&m);
    let s = swarm(&m);
    let cluster_id = s["ID"].as_str().unwrap().to_string();
    let node_id = m.request("GET", "/v1.41/info", None).json()["Swarm"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();
    let root_pem = s["TLSInfo"]["TrustRoot"].as_str().unwrap().to_string();
    assert!(root_pem.ends_with("-----END CERTIFICATE-----\n"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("certificates/swarm-root-ca.crt")).unwrap(),
        root_pem,
        "the root on disk is the exact PEM served"
    );

    let (_, root_block) = parse_x509_pem(root_pem.as_bytes()).unwrap();
    let root = root_block.parse_x509().unwrap();
    // Subject: exactly CN=swarm-ca as a PrintableString, as SwarmKit's DER.
    assert_eq!(
        B64.encode(root.subject().as_raw()),
        "MBMxETAPBgNVBAMTCHN3YXJtLWNh"
    );
    assert_eq!(root.subject(), root.issuer());
    assert_eq!(
        s["TLSInfo"]["CertIssuerSubject"],
        "MBMxETAPBgNVBAMTCHN3YXJtLWNh"
    );
    assert_eq!(
        s["TLSInfo"]["CertIssuerPublicKey"].as_str().unwrap(),
        B64.encode(root.public_key().raw)
    );
    assert_eq!(
        root.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(x509_parser::oid_registry::OID_EC_P256)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = root.validity().not_before.timestamp();
    let na = root.validity().not_after.timestamp();
    assert!(
        nb <= now - 4 * 60 && nb >= now - 6 * 60 - 60,
        "root backdated 5 min: {nb} vs {now}"
    );
    assert_eq!(nb % 60, 0, "minute-rounded");
    assert_eq!(na - nb, 630_720_000, "20 years");
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    assert!(root.verify_signature(None).is_ok(), "self-signed");
    let root_ski = match root
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        .unwrap()
        .unwrap()
        .parsed_extension()
    {
        ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(root.raw_serial().len(), 20);
    assert!(root.raw_serial()[0] & 0x80 == 0);

    let node_pem = std::fs::read(dir.path().join("certificates/swarm-node.crt")).unwrap();
    let (_, node_block) = parse_x509_pem(&node_pem).unwrap();
    let node = node_block.parse_x509().unwrap();
    assert!(
        node.verify_signature(Some(root.public_key())).is_ok(),
        "chains to the root"
    );
    let attrs: Vec<(String, String)> = node
        .subject()
        .iter_attributes()
        .map(|a| {
            (
                a.attr_type().to_id_string(),
                a.as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attrs,
        vec![
            ("2.5.4.10".to_string(), cluster_id.clone()),
            ("2.5.4.11".to_string(), "swarm-manager".to_string()),
            ("2.5.4.3".to_string(), node_id.clone()),
        ],
        "O, OU, CN in Go's order"
    );
    let sans: Vec<String> = node
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        vec![
            "swarm-manager".to_string(),
            node_id.clone(),
            "swarm-ca".to_string()
        ]
    );
    let ku = node.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign());
    let eku = node.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let bc = node.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    assert_eq!(node.raw_serial().len(), 20);
    assert!(node.raw_serial()[0] & 0x80 == 0);
    let aki = match node
        .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap()
        .unwrap()
        .parsed_extension()
    {
        ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().unwrap().0.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(aki, root_ski);
    let nb = node.validity().not_before.timestamp();
    let na = node.validity().not_after.timestamp();
    assert!(
        nb <= now - 59 * 60 && nb >= now - 61 * 60 - 60,
        "backdated 1 h: {nb} vs {now}"
    );
    assert_eq!(na - nb, 49 * 3600, "48 h expiry + 1 h backdate");
    assert_eq!(nb % 60, 0);

    let key_meta = std::fs::metadata(dir.path().join("certificates/swarm-node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn restart_after_sigterm_and_kill9_keeps_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Manager::start(dir.path());
    init(&m);
    let snapshot = |m: &Manager| {
        let s = swarm(m);
        let nodes = m.request("GET", "/v1.41/nodes", None).json();
        (
            s["ID"].clone(),
            s["TLSInfo"].clone(),
            s["JoinTokens"].clone(),
            s["Spec"].clone(),
            nodes,
        )
    };
    let before = snapshot(&m);

    m.terminate();
    m.restart();
    assert_eq!(snapshot(&m), before, "SIGTERM + restart changes nothing");

    // A rotation acknowledged just before SIGKILL must survive it.
    m.docker_ok(&["swarm", "join-token", "--rotate", "manager"]);
    let rotated = snapshot(&m);
    assert_ne!(rotated.2, before.2);
    m.kill9();
    m.restart();
    assert_eq!(
        snapshot(&m),
        rotated,
        "kill -9 + restart keeps every acknowledged write"
    );
    assert!(m.docker_ok(&["info"]).contains("Is Manager: true"));
}

#[test]
fn engine_api_protocol_details() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    let ping = m.request("HEAD", "/_ping", None);
    assert_eq!(ping.status, 200);
    assert_eq!(ping.header("Api-Version"), Some("1.41"));
    assert_eq!(ping.header("Swarm"), Some("inactive"));
    let ping = m.request("GET", "/_ping", None);
    assert_eq!(ping.body, b"OK");

    let s = m.request("GET", "/v1.41/swarm", None);
    assert_eq!(s.status, 503);
    assert_eq!(s.header("Content-Type"), Some("application/json"));
    assert!(s.message().starts_with("This node is not a swarm manager."));

    let new = m.request("GET", "/v1.50/info", None);
    assert_eq!(new.status, 400);
    assert_eq!(
        new.message(),
        "client version 1.50 is too new. Maximum supported API version is 1.41"
    );

    let unknown = m.request("GET", "/v1.41/containers/json", None);
    assert_eq!(unknown.status, 404);
    assert!(unknown
        .message()
        .contains("swarmguard does not serve GET /containers/json"));

    let v = m.docker_ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(v.trim(), "1.41");

    // Unversioned paths work too, as on dockerd.
    assert_eq!(m.request("GET", "/info", None).status, 200);

    // The tcp endpoint serves the CLI, and refuses what a web page sends (audit finding 3).
    let v = m.docker_tcp(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "1.41");
    let tcp = |headers: &[&str], method: &str, path: &str, body: &[u8]| {
        support::manager::tcp_request(&m.tcp_api, method, path, headers, body).unwrap()
    };
    let rebound = tcp(&["Host: attacker.example:2375"], "GET", "/v1.41/swarm", b"");
    assert_eq!(rebound.status, 403);
    assert_eq!(rebound.header("Content-Type"), Some("application/json"));
    assert!(rebound.message().contains("Host \"attacker.example:2375\""));
    let host = format!("Host: {}", m.tcp_api);
    let page = tcp(
        &[
            &host,
            "Origin: http://attacker.example",
            "Content-Type: text/plain",
        ],
        "POST",
        "/v1.41/swarm/leave?force=1",
        b"",
    );
    assert_eq!(page.status, 403);
    assert!(page.message().contains("Origin header"));
    let form = tcp(
        &[&host, "Content-Type: application/x-www-form-urlencoded"],
        "POST",
        "/v1.41/swarm/init",
        b"a=b",
    );
    assert_eq!(form.status, 415);
    assert!(form.message().contains("application/json"));
    assert_eq!(tcp(&[&host], "GET", "/v1.41/info", b"").status, 200);
}

/// Every bad input is a clear error and leaves the cluster exactly as it was.
#[test]
fn bad_inputs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    init(&m);
    let before = swarm(&m);
    let nodes_before = m.request("GET", "/v1.41/nodes", None).json();
    let version = before["Version"]["Index"].as_u64().unwrap();
    let node_id = nodes_before[0]["ID"].as_str().unwrap().to_string();
    let node_version = nodes_before[0]["Version"]["Index"].as_u64().unwrap();
    let spec = serde_json::to_string(&before["Spec"]).unwrap();
    let big = vec![b' '; 2 * 1024 * 1024];
    let upd = |q: &str| format!("/v1.41/swarm/update?{q}");
    let ok_q = format!("rotateManagerToken=false&rotateManagerUnlockKey=false&rotateWorkerToken=true&version={version}");

    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1.41/swarm/init".into(),
            b"{not json".to_vec(),
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            "/v1.41/swarm/init".into(),
            br#"{"ListenAddr": 5}"#.to_vec(),
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            "/v1.41/swarm/init".into(),
            big.clone(),
            413,
            "request body is too large",
        ),
        (
            "POST",
            "/v1.41/swarm/init".into(),
            br#"{"AdvertiseAddr":"127.0.0.1"}"#.to_vec(),
            503,
            "already part of a swarm",
        ),
        (
            "POST",
            upd(&ok_q),
            b"".to_vec(),
            400,
            "request body is empty",
        ),
        (
            "POST",
            upd(&ok_q),
            b"[1,2]".to_vec(),
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            upd(&ok_q),
            br#"{"CAConfig":{"NodeCertExpiry":"48h"}}"#.to_vec(),
            400,
            "invalid JSON body",
        ),
        (
            "POST",
            upd(&ok_q),
            big.clone(),
            413,
            "request body is too large",
        ),
        (
            "POST",
            upd(&format!("rotateWorkerToken=yes&version={version}")),
            spec.clone().into_bytes(),
            400,
            "invalid value for rotateWorkerToken: yes",
        ),
        (
            "POST",
            upd("rotateWorkerToken=true&version=abc"),
            spec.clone().into_bytes(),
            400,
            "invalid swarm version 'abc'",
        ),
        (
            "POST",
            upd("rotateWorkerToken=true"),
            spec.clone().into_bytes(),
            400,
            "invalid swarm version ''",
        ),
        (
            "POST",
            upd(&format!("rotateWorkerToken=true&version={}", version - 1)),
            spec.clone().into_bytes(),
            500,
            "update out of sequence",
        ),
        (
            "POST",
            upd(&format!("rotateWorkerToken=true&version={}", version + 100)),
            spec.clone().into_bytes(),
            500,
            "update out of sequence",
        ),
        (
            "POST",
            upd(&ok_q),
            spec.replace("\"Name\":\"default\"", "\"Name\":\"other\"")
                .into_bytes(),
            400,
            "swarm spec must be named \"default\"",
        ),
        (
            "POST",
            upd(&ok_q),
            spec.replace("172800000000000", "60000000000").into_bytes(),
            400,
            "minimum certificate expiry time is: 1h0m0s",
        ),
        (
            "POST",
            upd(&ok_q),
            spec.replace("\"CAConfig\":{", "\"CAConfig\":{\"SigningCAKey\":\"k\",")
                .into_bytes(),
            400,
            "if a signing CA key is provided, the signing CA cert must also be provided",
        ),
        (
            "POST",
            upd(&ok_q),
            spec.replace(
                "\"CAConfig\":{",
                "\"CAConfig\":{\"ExternalCAs\":[{\"Protocol\":\"acme\",\"URL\":\"https://x\"}],",
            )
            .into_bytes(),
            400,
            "invalid protocol: \"acme\"",
        ),
        (
            "POST",
            upd(&format!("rotateManagerUnlockKey=true&version={version}")),
            spec.clone().into_bytes(),
            400,
            "autolock is not turned on",
        ),
        (
            "GET",
            "/v1.41/nodes?filters=%7Bbad".into(),
            vec![],
            400,
            "invalid filter",
        ),
        (
            "GET",
            "/v1.41/nodes?filters=%7B%22colour%22%3A%7B%22red%22%3Atrue%7D%7D".into(),
            vec![],
            400,
            "Invalid filter 'colour'",
        ),
        (
            "GET",
            "/v1.41/nodes?filters=%7B%22role%22%3A%7B%22boss%22%3Atrue%7D%7D".into(),
            vec![],
            400,
            "Invalid role filter: 'boss'",
        ),
        (
            "GET",
            "/v1.41/nodes/nosuchnode".into(),
            vec![],
            404,
            "node nosuchnode not found",
        ),
        (
            "POST",
            format!("/v1.41/nodes/{node_id}/update?version={node_version}"),
            br#"{"Role":"king","Availability":"active"}"#.to_vec(),
            400,
            "invalid Role: \"king\"",
        ),
        (
            "POST",
            format!("/v1.41/nodes/{node_id}/update?version={node_version}"),
            br#"{"Role":"manager","Availability":"asleep"}"#.to_vec(),
            400,
            "invalid Availability: \"asleep\"",
        ),
        (
            "POST",
            format!("/v1.41/nodes/{node_id}/update?version={}", node_version + 5),
            br#"{"Role":"manager","Availability":"active"}"#.to_vec(),
            500,
            "update out of sequence",
        ),
        (
            "POST",
            format!("/v1.41/nodes/{node_id}/update?version=x"),
            br#"{"Role":"manager","Availability":"active"}"#.to_vec(),
            400,
            "invalid node version 'x'",
        ),
        (
            "POST",
            format!("/v1.41/nodes/{node_id}/update?version={node_version}"),
            br#"{"Role":"worker","Availability":"active"}"#.to_vec(),
            400,
            "attempting to demote the last manager",
        ),
        (
            "DELETE",
            format!("/v1.41/nodes/{node_id}?force=true"),
            vec![],
            400,
            "must be demoted to worker before removal",
        ),
        (
            "DELETE",
            "/v1.41/nodes/nosuchnode".into(),
            vec![],
            404,
            "node nosuchnode not found",
        ),
        (
            "POST",
            "/v1.41/swarm/unlock".into(),
            br#"{"UnlockKey":"SWMKEY-1-x"}"#.to_vec(),
            409,
            "swarm is not locked",
        ),
        ("GET", "/v1.23/info".into(), vec![], 400, "is too old"),
    ];
    for (method, path, body, status, want) in &cases {
        let r = m.request(method, path, Some(body));
        assert_eq!(
            r.status,
            *status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json"),
            "{method} {path}"
        );
        assert!(
            r.message().contains(want),
            "{method} {path}: {:?} lacks {want:?}",
            r.message()
        );
        assert_eq!(swarm(&m), before, "{method} {path} changed the swarm");
        assert_eq!(
            m.request("GET", "/v1.41/nodes", None).json(),
            nodes_before,
            "{method} {path} changed nodes"
        );
    }
    // And the manager still works afterwards.
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "worker"]).trim(),
        before["JoinTokens"]["Worker"].as_str().unwrap()
    );
}

/// `swarm init` answers once the cluster port serves; a port it cannot bind is a clear error,
/// and the operator can leave and init again elsewhere.
#[test]
fn init_reports_a_cluster_port_it_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = m.docker(&[
        "swarm",
        "init",
        "--listen-addr",
        &addr,
        "--advertise-addr",
        "127.0.0.1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster port cannot serve"), "{err}");
    assert!(err.contains("docker swarm leave --force"), "{err}");
    m.docker_ok(&["swarm", "leave", "--force"]);
    let out = init(&m);
    assert!(out.contains(&m.cluster_addr), "{out}");
    // The port serves as soon as init has answered.
    std::net::TcpStream::connect(&m.cluster_addr).expect("cluster port accepts at once");
}
