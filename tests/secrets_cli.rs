//! `docker secret` with the real docker CLI 28 against a real swarmguard manager: create from
//! stdin, ls with filters, inspect without data, a label update through the Engine API (the CLI
//! has no `secret update`), rm, the size limit at its edge, bad names and duplicates that change
//! nothing, and secrets that survive SIGTERM and `kill -9` with their values intact.

mod support;

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use support::manager::Manager;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn create(m: &Manager, args: &[&str], data: &[u8]) -> Output {
    let mut all = vec!["secret", "create"];
    all.extend_from_slice(args);
    m.docker_with_stdin(&all, Some(data))
}

fn create_ok(m: &Manager, args: &[&str], data: &[u8]) -> String {
    let out = create(m, args, data);
    assert!(out.status.success(), "create {args:?}: {}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap();
    let id = id.trim_end_matches('\n').to_string();
    assert!(
        id.len() == 25 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id:?}"
    );
    id
}

fn ls(m: &Manager, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["secret", "ls", "--format", "{{.Name}}"];
    for f in filter {
        args.push("--filter");
        args.push(f);
    }
    let mut names: Vec<String> = m.docker_ok(&args).lines().map(str::to_string).collect();
    names.sort();
    names
}

/// `docker secret ls` without its relative times ("1 second ago" changes by itself), and the
/// Engine API's list with versions and timestamps: both must stay byte-identical across a
/// refused request.
fn ls_raw(m: &Manager) -> String {
    let cli = m.docker_ok(&[
        "secret",
        "ls",
        "--format",
        "{{.ID}}\t{{.Name}}\t{{.Driver}}",
    ]);
    let api = m.request("GET", "/v1.41/secrets", None);
    assert_eq!(api.status, 200);
    format!("{cli}\n{}", String::from_utf8(api.body).unwrap())
}

/// The values of secrets, read through the store of a stopped manager (the API never returns
/// them).
fn values_in_store(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = swarmguard::store::Store::open(data_dir).await.unwrap();
        let config = swarmguard::control::ca::local::ManagerConfig {
            data_dir: data_dir.to_path_buf(),
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            advertise_addr: Some("127.0.0.1".into()),
        };
        let ctl = swarmguard::control::Control::open(store.clone(), config).unwrap();
        let mut out: Vec<(String, Vec<u8>)> = ctl
            .secrets()
            .unwrap()
            .iter()
            .map(|s| {
                let v = ctl.open_secret(&s.record.id).unwrap();
                (s.record.name.clone(), v.to_vec())
            })
            .collect();
        out.sort();
        drop(ctl);
        store.shutdown().await.unwrap();
        out
    })
}

#[test]
fn secret_lifecycle_with_the_docker_cli() {
    let dir = support::short_tempdir("sg-sec");
    let mut m = Manager::start(dir.path());
    m.init_swarm(&[]);

    let db = create_ok(&m, &["db_pass", "-"], b"s3cr3t");
    let api = create_ok(
        &m,
        &["-l", "env=prod", "-l", "team", "api_key", "-"],
        b"hunter2",
    );
    assert_eq!(ls(&m, &[]), ["api_key", "db_pass"]);
    assert_eq!(ls(&m, &["name=db"]), ["db_pass"]);
    assert_eq!(ls(&m, &["names=db"]), Vec::<String>::new());
    assert_eq!(ls(&m, &["names=api_key"]), ["api_key"]);
    assert_eq!(ls(&m, &["label=env=prod"]), ["api_key"]);
    assert_eq!(ls(&m, &["label=team"]), ["api_key"]);
    assert_eq!(ls(&m, &["label=env=dev"]), Vec::<String>::new());
    assert_eq!(ls(&m, &[&format!("id={}", &db[..6])]), ["db_pass"]);
    let bad = m.docker(&["secret", "ls", "--filter", "colour=red"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("Invalid filter 'colour'"),
        "{}",
        stderr(&bad)
    );

    // inspect: by name, by ID and by prefix; never the data.
    for reference in ["db_pass", db.as_str(), &db[..8]] {
        let text = m.docker_ok(&["secret", "inspect", reference]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["ID"], db.as_str());
        assert_eq!(v[0]["Spec"]["Name"], "db_pass");
        assert_eq!(v[0]["Spec"]["Labels"], serde_json::json!({}));
        assert!(v[0]["Spec"].get("Data").is_none(), "{text}");
        assert!(!text.contains("s3cr3t") && !text.contains(&B64.encode("s3cr3t")));
    }
    let raw = m.request("GET", &format!("/v1.41/secrets/{api}"), None);
    assert_eq!(raw.status, 200);
    let v = raw.json();
    assert_eq!(
        v["Spec"]["Labels"],
        serde_json::json!({"env": "prod", "team": ""})
    );
    let missing = m.docker(&["secret", "inspect", "nope"]);
    assert!(
        stderr(&missing).contains("secret nope not found"),
        "{}",
        stderr(&missing)
    );

    label_update(&m, &db);
    size_limits(&m);
    refusals_change_nothing(&m);

    // Restart with SIGTERM, then kill -9: the secrets, labels and values are all still there.
    m.terminate();
    m.restart();
    assert_eq!(ls(&m, &[]), ["api_key", "db_pass", "max_size"]);
    assert_eq!(ls(&m, &["label=rotated=yes"]), ["db_pass"]);
    let after_term = create_ok(&m, &["after_term", "-"], b"written before kill -9");
    m.kill9();
    let stored = values_in_store(dir.path());
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["after_term", "api_key", "db_pass", "max_size"]);
    assert_eq!(stored[0].1, b"written before kill -9");
    assert_eq!(stored[1].1, b"hunter2");
    assert_eq!(stored[2].1, b"s3cr3t");
    assert_eq!(stored[3].1, vec![b'x'; 511_999]);
    m.restart();
    assert_eq!(
        ls(&m, &[]),
        ["after_term", "api_key", "db_pass", "max_size"]
    );

    // rm by name prints the name; by ID too; then it is gone.
    assert_eq!(m.docker_ok(&["secret", "rm", "db_pass"]), "db_pass\n");
    assert_eq!(
        m.docker_ok(&["secret", "rm", &after_term]),
        format!("{after_term}\n")
    );
    let gone = m.docker(&["secret", "rm", "db_pass"]);
    assert!(
        stderr(&gone).contains("secret db_pass not found"),
        "{}",
        stderr(&gone)
    );
    assert_eq!(ls(&m, &[]), ["api_key", "max_size"]);
    let r = m.request("DELETE", &format!("/v1.41/secrets/{api}"), None);
    assert_eq!(r.status, 204);
    assert_eq!(ls(&m, &[]), ["max_size"]);
}

/// `POST /secrets/{id}/update?version=`: labels change with the right version; a stale version,
/// a new name or new data are refused with dockerd's texts and change nothing.
fn label_update(m: &Manager, id: &str) {
    let get = || {
        m.request("GET", &format!("/v1.41/secrets/{id}"), None)
            .json()
    };
    let before = get();
    let version = before["Version"]["Index"].as_u64().unwrap();
    let path = |v: &str| format!("/v1.41/secrets/{id}/update?version={v}");
    let body = |name: &str, data: Option<&[u8]>| {
        let mut spec = serde_json::json!({"Name": name, "Labels": {"rotated": "yes"}});
        if let Some(d) = data {
            spec["Data"] = B64.encode(d).into();
        }
        serde_json::to_vec(&spec).unwrap()
    };
    let cases: [(String, Vec<u8>, u16, &str); 5] = [
        (
            path("x"),
            body("db_pass", None),
            400,
            "invalid secret version",
        ),
        (
            path(""),
            body("db_pass", None),
            400,
            "invalid secret version",
        ),
        (
            path(&version.to_string()),
            body("other", None),
            400,
            "rpc error: code = InvalidArgument desc = only updates to Labels are allowed",
        ),
        (
            path(&version.to_string()),
            body("db_pass", Some(b"changed")),
            400,
            "rpc error: code = InvalidArgument desc = only updates to Labels are allowed",
        ),
        (
            path(&(version + 1000).to_string()),
            body("db_pass", None),
            500,
            "rpc error: code = Unknown desc = update out of sequence",
        ),
    ];
    for (p, b, status, msg) in &cases {
        let r = m.request("POST", p, Some(b));
        assert_eq!((r.status, r.message().as_str()), (*status, *msg), "{p}");
        assert_eq!(get(), before, "{p} changed the secret");
    }
    // The same data again is not a change of data.
    let r = m.request(
        "POST",
        &path(&version.to_string()),
        Some(&body("db_pass", Some(b"s3cr3t"))),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let after = get();
    assert_eq!(
        after["Spec"]["Labels"],
        serde_json::json!({"rotated": "yes"})
    );
    assert!(after["Version"]["Index"].as_u64().unwrap() > version);
    // The old version is now stale.
    let r = m.request(
        "POST",
        &path(&version.to_string()),
        Some(&body("db_pass", None)),
    );
    assert_eq!(r.status, 500);
    let r = m.request(
        "POST",
        "/v1.41/secrets/nope/update?version=1",
        Some(&body("x", None)),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.message(),
        "rpc error: code = NotFound desc = secret nope not found"
    );
}

/// SwarmKit's limit: 1 ≤ len < 512,000.
fn size_limits(m: &Manager) {
    let before = ls_raw(m);
    let too_big = create(m, &["too_big", "-"], &vec![b'x'; 512_000]);
    assert!(!too_big.status.success());
    assert_eq!(
        stderr(&too_big).trim_end(),
        "Error response from daemon: rpc error: code = InvalidArgument desc = secret data must be larger than 0 and less than 512000 bytes"
    );
    assert_eq!(ls_raw(m), before);
    let empty = m.request(
        "POST",
        "/v1.41/secrets/create",
        Some(br#"{"Name":"empty","Labels":{}}"#),
    );
    assert_eq!(empty.status, 400);
    assert!(
        empty.message().contains("larger than 0"),
        "{}",
        empty.message()
    );
    create_ok(m, &["max_size", "-"], &vec![b'x'; 511_999]);
}

/// Bad names, a duplicate (in any case), a driver, templating and broken bodies: each refused
/// with its text and status, and `docker secret ls` byte-identical after each.
fn refusals_change_nothing(m: &Manager) {
    let before = ls_raw(m);
    let long = "a".repeat(65);
    let name_text = "rpc error: code = InvalidArgument desc = invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]";
    for bad in [
        "bad-",
        "_bad",
        "a b",
        "a/b",
        "ünï",
        "a\u{202e}b",
        long.as_str(),
        "x..",
    ] {
        let out = create(m, &[bad, "-"], b"v");
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            stderr(&out).contains(name_text),
            "{bad:?}: {}",
            stderr(&out)
        );
        assert_eq!(ls_raw(m), before, "{bad:?} changed the list");
    }
    assert!(create_ok(m, &[&"b".repeat(64), "-"], b"v").len() == 25);
    m.docker_ok(&["secret", "rm", &"b".repeat(64)]);

    let cases: [(&[u8], u16, &str); 8] = [
        (
            br#"{"Name":"db_pass","Data":"dg=="}"#,
            409,
            "rpc error: code = AlreadyExists desc = secret db_pass already exists",
        ),
        (
            br#"{"Name":"DB_PASS","Data":"dg=="}"#,
            409,
            "rpc error: code = AlreadyExists desc = secret DB_PASS already exists",
        ),
        (
            br#"{"Name":"","Data":"dg=="}"#,
            400,
            "rpc error: code = InvalidArgument desc = name must be provided",
        ),
        (
            br#"{"Name":"d","Driver":{"Name":"vault"}}"#,
            400,
            "Driver \"vault\"",
        ),
        (
            br#"{"Name":"t","Data":"dg==","Templating":{"Name":"golang"}}"#,
            400,
            "Templating \"golang\"",
        ),
        (
            br#"{"Name":"b","Data":"not base64!"}"#,
            400,
            "Data is not valid standard base64",
        ),
        (br#"{"Name":"b","Data":5}"#, 400, "invalid JSON body"),
        (b"{", 400, "invalid JSON body"),
    ];
    for (body, status, msg) in cases {
        let r = m.request("POST", "/v1.41/secrets/create", Some(body));
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(body));
        assert!(
            r.message().contains(msg),
            "{}: {}",
            String::from_utf8_lossy(body),
            r.message()
        );
        assert!(!r.message().contains("not base64!"), "{}", r.message());
        assert_eq!(ls_raw(m), before);
    }
    // The CLI's own forms of the duplicate, the driver and the template driver.
    let dup = create(m, &["db_pass", "-"], b"again");
    assert!(
        stderr(&dup).contains("secret db_pass already exists"),
        "{}",
        stderr(&dup)
    );
    let drv = m.docker(&["secret", "create", "--driver", "vault", "drv"]);
    assert!(
        stderr(&drv).contains("secret drivers are not supported"),
        "{}",
        stderr(&drv)
    );
    let tpl = create(m, &["--template-driver", "golang", "tpl", "-"], b"{{.}}");
    assert!(
        stderr(&tpl).contains("secret templating is not supported"),
        "{}",
        stderr(&tpl)
    );
    assert_eq!(ls_raw(m), before);
}

/// Creates that arrive together share the store's Raft entries, and each keeps its own answer:
/// in each of 4 rounds, 32 clients start at once, 10 of them creating one name (in two cases):
/// exactly one of those gets 201 and the others dockerd's 409, every other create gets 201,
/// and after a SIGTERM the store holds exactly the acknowledged secrets with their values.
#[test]
fn concurrent_creates_through_the_api_answer_each_on_its_own() {
    use std::sync::{Arc, Barrier};
    let dir = support::short_tempdir("sg-secc");
    let mut m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..4 {
        let barrier = Arc::new(Barrier::new(32));
        let socket = m.socket.clone();
        let clients: Vec<_> = (0..32)
            .map(|c| {
                let (barrier, socket) = (barrier.clone(), socket.clone());
                let name = match c % 4 {
                    0 => format!("dup{round}"),
                    1 if c < 8 => format!("DUP{round}"),
                    _ => format!("s{round}-{c}"),
                };
                let value = format!("value-{round}-{c}").into_bytes();
                std::thread::spawn(move || {
                    let body = serde_json::json!({ "Name": name, "Data": B64.encode(&value) });
                    let body = serde_json::to_vec(&body).unwrap();
                    barrier.wait();
                    let r = support::manager::unix_request(
                        &socket,
                        "POST",
                        "/v1.41/secrets/create",
                        Some(&body),
                    )
                    .unwrap();
                    (
                        name,
                        value,
                        r.status,
                        String::from_utf8_lossy(&r.body).into_owned(),
                    )
                })
            })
            .collect();
        let mut dup_won = 0;
        for c in clients {
            let (name, value, status, body) = c.join().unwrap();
            if name.eq_ignore_ascii_case(&format!("dup{round}")) {
                match status {
                    201 => {
                        dup_won += 1;
                        expected.push((name, value));
                    }
                    409 => assert!(
                        body.contains(&format!(
                            "rpc error: code = AlreadyExists desc = secret {name} already exists"
                        )),
                        "{body}"
                    ),
                    other => panic!("{name}: {other} {body}"),
                }
            } else {
                assert_eq!(status, 201, "{name}: {body}");
                expected.push((name, value));
            }
        }
        assert_eq!(
            dup_won, 1,
            "round {round}: creates of one name that got 201"
        );
    }
    assert_eq!(ls(&m, &[]).len(), expected.len());
    m.terminate();
    expected.sort();
    assert_eq!(values_in_store(dir.path()), expected);
}
