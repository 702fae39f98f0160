//! cfssl's JSON: the sign request SwarmKit sends (`signer.SignRequest`), the `authsign`
//! envelope, and the response envelope (`api.Response`), parsed strictly and bounded.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::auth::AuthKey;

/// `signer.SignRequest`, field for field in Go's order, as SwarmKit's `ca/external.go` fills it.
#[derive(Serialize)]
struct SignRequest<'a> {
    hosts: &'a [String],
    certificate_request: &'a str,
    subject: Subject<'a>,
    profile: &'a str,
    crl_override: &'a str,
    label: &'a str,
}

#[derive(Serialize)]
struct Subject<'a> {
    #[serde(rename = "CN")]
    cn: &'a str,
    names: [Name<'a>; 1],
    #[serde(rename = "SerialNumber")]
    serial_number: &'a str,
}

#[derive(Serialize)]
struct Name<'a> {
    #[serde(rename = "O")]
    o: &'a str,
    #[serde(rename = "OU")]
    ou: &'a str,
}

/// The exact request bytes for a node certificate (what `authsign`'s HMAC covers).
pub(crate) fn sign_body(hosts: &[String], csr_pem: &str, cn: &str, o: &str, ou: &str) -> Vec<u8> {
    let req = SignRequest {
        hosts,
        certificate_request: csr_pem,
        subject: Subject {
            cn,
            names: [Name { o, ou }],
            serial_number: "",
        },
        profile: "",
        crl_override: "",
        label: "",
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

/// `info`'s request: the default label and profile.
pub(crate) fn info_body() -> Vec<u8> {
    br#"{"label":"","profile":""}"#.to_vec()
}

/// cfssl's `auth.AuthenticatedRequest`: the request bytes and their HMAC-SHA256, both base64
/// (Go `[]byte` fields). cfssl verifies the HMAC over exactly these bytes.
pub(crate) fn authsign_body(key: &AuthKey, request: &[u8]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope {
        token: String,
        request: String,
    }
    let env = Envelope {
        token: B64.encode(key.token(request)),
        request: B64.encode(request),
    };
    serde_json::to_vec(&env).unwrap_or_default()
}

#[derive(Deserialize)]
struct Response {
    success: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    errors: Vec<ResponseMessage>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// What a cfssl answer says, before the certificate itself is checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `success:true` with `result.certificate`.
    Certificate(Vec<u8>),
    /// `success:false`, with cfssl's own error text.
    Refused(String),
    /// Not a cfssl answer (or `success:true` without a certificate).
    Garbage(String),
}

/// Parses a response body (already bounded in size by the reader).
pub(crate) fn parse_answer(body: &[u8]) -> Answer {
    let resp: Response = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Answer::Garbage(format!("not a cfssl JSON response ({e})")),
    };
    if !resp.success {
        let text = if resp.errors.is_empty() {
            "certificate signing request failed".to_string()
        } else {
            resp.errors
                .iter()
                .map(|m| format!("{} (code {})", m.message, m.code))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Answer::Refused(clean(&text));
    }
    match resp
        .result
        .as_ref()
        .and_then(|r| r.get("certificate"))
        .and_then(|c| c.as_str())
    {
        Some(pem) if !pem.is_empty() => Answer::Certificate(pem.as_bytes().to_vec()),
        _ => Answer::Garbage("success without a result.certificate string".into()),
    }
}

/// A peer's text made safe to store and show: printable ASCII only, at most 300 characters.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_body_is_swarmkits_shape() {
        let hosts = vec!["swarm-worker".to_string(), "n1".to_string()];
        let body = sign_body(&hosts, "PEM\n", "n1", "c1", "swarm-worker");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"hosts":["swarm-worker","n1"],"certificate_request":"PEM\n","subject":{"CN":"n1","names":[{"O":"c1","OU":"swarm-worker"}],"SerialNumber":""},"profile":"","crl_override":"","label":""}"#
        );
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(
                br#"{"success":true,"result":{"certificate":"X"},"errors":[],"messages":[]}"#
            ),
            Answer::Certificate(b"X".to_vec())
        );
        assert_eq!(
            parse_answer(br#"{"success":false,"result":null,"errors":[{"code":400,"message":"bad\nthing"}],"messages":[]}"#),
            Answer::Refused("bad?thing (code 400)".into())
        );
        assert!(matches!(
            parse_answer(br#"{"success":true,"result":{"certificate":7}}"#),
            Answer::Garbage(_)
        ));
        assert!(matches!(
            parse_answer(br#"{"success":true}"#),
            Answer::Garbage(_)
        ));
        assert!(matches!(parse_answer(b"<html>"), Answer::Garbage(_)));
        assert!(matches!(
            parse_answer(br#"{"success":"yes"}"#),
            Answer::Garbage(_)
        ));
    }

    #[test]
    fn peer_text_is_bounded_and_printable() {
        let long = "\u{1b}[31m".to_string() + &"x".repeat(1000);
        let c = clean(&long);
        assert!(c.chars().count() <= 301);
        assert!(!c.contains('\u{1b}'));
    }
}
