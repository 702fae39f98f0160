//! Entry points for the cargo-fuzz targets `engine_query` and `engine_body` (see
//! docs/fuzzing.md): the Engine API's own request parsing, exactly as the handlers run it,
//! without a control layer behind it. Not an API: nothing in the daemon calls these.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use axum::response::IntoResponse;

use super::error::ApiError;
use super::request::{bool_value, json_body, parse_bool, parse_since, parse_version};
use super::types::{InitRequest, NodeSpecBody};
use super::Transport;
use crate::control::filters::Filters;
use crate::control::records::{CertState, CertificateRecord, NodeRecord};
use crate::control::secrets::{check_create, check_update};
use crate::control::spec::{merge_init_spec, replace_spec};
use crate::control::types::{Availability, NodeSpec, NodeState, NodeStatus, Role, Spec};

/// A request head as hyper hands it over: the request target on the first line
/// (`/v1.41/nodes?filters=…`), then `Name: value` header lines. It goes through the browser
/// guard as the tcp listener runs it (and as the unix one does), the version prefix, then every
/// query parameter the handlers read, each with its own parser.
pub fn query(head: &[u8]) -> Result<(), String> {
    let mut lines = head.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let Ok(uri) = Uri::try_from(target) else {
        return Ok(());
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        // hyper refuses a request with a malformed header before any of our code runs.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let request = || {
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        req
    };
    let _ = now_or_never(super::refuse_browsers(State(Transport::Unix), request()));
    let req = render(now_or_never(super::refuse_browsers(
        State(Transport::Tcp),
        request(),
    )))?;
    let req = render(now_or_never(super::strip_version_prefix(req)))?;
    let q: HashMap<String, String> = Query::try_from_uri(req.uri()).map_err(|e| e.to_string())?.0;
    let version = |what| parse_version(what, q.get("version")).map(drop);
    let rotate = || -> Result<(), ApiError> {
        for flag in [
            "rotateWorkerToken",
            "rotateManagerToken",
            "rotateManagerUnlockKey",
        ] {
            parse_bool(flag, q.get(flag))?;
        }
        Ok(())
    };
    let _ = bool_value(q.get("force"));
    // Every parser runs on every input; the answer is the one the routed handler would give.
    let _ = [
        version("swarm"),
        version("node"),
        rotate(),
        filters(q.get("filters").map(String::as_str)),
        parse_since(q.get("since")).map(drop),
    ];
    let path = req.uri().path();
    let routed = match path {
        "/swarm/update" => version("swarm").and_then(|()| rotate()),
        "/nodes" => filters(q.get("filters").map(String::as_str)),
        p if p.starts_with("/nodes/") && p.ends_with("/update") => version("node"),
        _ => Ok(()),
    };
    render(routed)
}

fn filters(raw: Option<&str>) -> Result<(), ApiError> {
    let f = Filters::parse(raw, Filters::NODE_KEYS)?;
    f.validate_nodes()?;
    let _ = f.matches_node(&sample_node());
    Ok(())
}

/// A JSON body for the endpoint `kind` picks (init, swarm update, node update, unlock), through
/// `json_body` and then the rules that endpoint applies before it touches the store.
pub fn body(kind: u8, body: &[u8]) -> Result<(), String> {
    let bytes = Ok(Bytes::copy_from_slice(body));
    render(match kind % 6 {
        4 => return secret_body(body, false),
        5 => return secret_body(body, true),
        0 => json_body::<InitRequest>(bytes).and_then(|req| {
            if !req.availability.is_empty() {
                Availability::parse(&req.availability)?;
            }
            let spec = merge_init_spec(&req.spec, req.auto_lock_managers)?;
            check_stable(&spec)
        }),
        1 => json_body::<Spec>(bytes).and_then(|req| check_stable(&replace_spec(&req)?)),
        2 => json_body::<NodeSpecBody>(bytes).and_then(|b| {
            let _ = NodeSpec {
                name: b.name,
                labels: b.labels,
                role: Role::parse(&b.role)?,
                availability: Availability::parse(&b.availability)?,
            };
            Ok(())
        }),
        _ => json_body::<serde_json::Value>(bytes).map(drop),
    })
}

/// `POST /secrets/create` (or, with `update`, `POST /secrets/{id}/update`) bodies through the
/// handler's parser and the rules that need no stored secret. The answer may depend on the
/// value's length, never on its bytes (no answer may reveal it): the same body with every
/// byte of the value changed must get the same answer.
fn secret_body(body: &[u8], update: bool) -> Result<(), String> {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    let run = |b: &[u8]| {
        render(
            super::secrets::spec(Ok(Bytes::copy_from_slice(b))).and_then(|spec| {
                let checked = match update {
                    true => check_update(&spec),
                    false => check_create(&spec).map(drop),
                };
                checked.map_err(ApiError::from)
            }),
        )
    };
    let answer = run(body);
    if let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) {
        let value = fields
            .get("Data")
            .and_then(|d| d.as_str())
            .map(|d| B64.decode(d));
        if let Some(Ok(value)) = value {
            let mut with = |v: &[u8]| {
                fields.insert("Data".into(), B64.encode(v).into());
                run(&serde_json::to_vec(&fields).expect("a JSON object serialises"))
            };
            let other: Vec<u8> = value.iter().map(|b| b ^ 0xa5).collect();
            assert_eq!(
                with(&value),
                with(&other),
                "an answer depends on the secret value"
            );
        }
    }
    answer
}

/// A spec the rules accepted is stored and served back as JSON, and sent again by the CLI on
/// the next `swarm update`: it must survive that round trip and be accepted unchanged.
fn check_stable(spec: &Spec) -> Result<(), ApiError> {
    let json = serde_json::to_vec(spec).expect("an accepted spec serialises");
    let back: Spec = serde_json::from_slice(&json).expect("an accepted spec reads back");
    assert_eq!(&back, spec, "spec JSON round trip");
    let again = replace_spec(&back).expect("an accepted spec is accepted again");
    assert_eq!(&again, spec, "spec rules are idempotent");
    Ok(())
}

/// Errors are rendered as the client would get them, so the rendering runs too.
fn render<T>(r: Result<T, ApiError>) -> Result<T, String> {
    r.map_err(|e| {
        let message = e.to_string();
        let _ = e.into_response();
        message
    })
}

/// The guard and version-prefix layers are async only to fit axum's middleware; they never wait.
fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the request layers never wait"),
    }
}

fn sample_node() -> NodeRecord {
    NodeRecord {
        id: "0123456789abcdefghijklmno".into(),
        created_at: String::new(),
        updated_at: String::new(),
        spec: NodeSpec {
            name: "worker-1".into(),
            labels: Some(BTreeMap::from([("zone".into(), "a".into())])),
            role: Role::Worker,
            availability: Availability::Active,
        },
        role: Role::Worker,
        description: Default::default(),
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: "127.0.0.1".into(),
        },
        manager_addr: None,
        raft_id: None,
        certificate: CertificateRecord {
            state: CertState::Issued,
            cert_pem: String::new(),
            not_after: 0,
            csr_b64: String::new(),
            err: String::new(),
        },
        software: Default::default(),
        session_manager: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn query_seeds_reach_the_parsers_they_are_for() {
        let results: Vec<(String, Result<(), String>)> = seeds("engine_query")
            .into_iter()
            .map(|(name, data)| (name, query(&data)))
            .collect();
        for (name, r) in &results {
            match name.as_str() {
                n if n.ends_with("too-new") => {
                    assert!(r.as_ref().unwrap_err().contains("is too new"), "{n}: {r:?}")
                }
                n if n.contains("refused-") => assert!(r.is_err(), "{n}: {r:?}"),
                n => assert_eq!(r, &Ok(()), "{n}"),
            }
        }
        assert!(results.len() >= 8);
    }

    #[test]
    fn bad_queries_are_errors_not_panics() {
        let bad =
            query(b"/v1.41/nodes?filters=%7B%22role%22%3A%5B%22boss%22%5D%7D\nHost: localhost");
        assert_eq!(bad, Err("Invalid role filter: 'boss'".into()));
        assert!(query(b"/v1.41/swarm/update?version=-1\nHost: localhost")
            .unwrap_err()
            .contains("invalid swarm version"));
        assert!(query(b"/v1.41/swarm/update?rotateWorkerToken=yes\nHost: localhost").is_err());
        assert_eq!(
            query(b"not a uri \x00"),
            Ok(()),
            "hyper would have refused it"
        );
    }

    #[test]
    fn body_seeds_are_accepted_by_their_endpoint() {
        for (name, data) in seeds("engine_body") {
            let (kind, rest) = data.split_first().unwrap();
            assert_eq!(body(*kind, rest), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert!(body(2, br#"{"Role":"boss","Availability":"active"}"#)
            .unwrap_err()
            .contains("invalid Role"));
        assert!(body(1, br#"{"Name":"other"}"#)
            .unwrap_err()
            .contains("named \"default\""));
        assert!(body(0, b"").unwrap_err().contains("empty"));
        assert!(body(3, b"{").unwrap_err().contains("invalid JSON body"));
        assert!(body(
            4,
            br#"{"Name":"a","Data":"dg==","Driver":{"Name":"vault"}}"#
        )
        .unwrap_err()
        .contains("Driver \"vault\""));
        assert!(body(4, br#"{"Name":"a","Data":""}"#)
            .unwrap_err()
            .contains("larger than 0"));
        assert!(body(4, br#"{"Name":"-a","Data":"dg=="}"#)
            .unwrap_err()
            .contains("invalid name"));
        assert!(body(5, br#"{"Templating":{"Name":"golang"}}"#)
            .unwrap_err()
            .contains("Templating"));
        let err = body(4, br#"{"Name":"a","Data":"not base64!"}"#).unwrap_err();
        assert!(
            err.contains("not valid standard base64") && !err.contains("base64!"),
            "{err}"
        );
    }
}
