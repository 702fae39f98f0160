//! Engine API handlers for `docker secret`: bodies in, Docker's `Secret` JSON out. The value is
//! decoded from base64 straight into a buffer wiped on drop, the request bytes are wiped after
//! parsing, and no answer, error or log line carries the value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::ApiError;
use super::request::json_body_wiped;
use super::types::Version;
use crate::control::filters::Filters;
use crate::control::secrets::{SecretSpec, SecretView};
use crate::control::Control;

type Ctl = State<Arc<Control>>;
type Q = Query<HashMap<String, String>>;
type Body = Result<Bytes, BytesRejection>;

/// `SecretSpec` as the docker CLI sends it (`Data` is standard base64, Go's `[]byte`).
#[derive(Deserialize)]
struct SecretSpecBody {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Data", default)]
    data: Option<SecretData>,
    #[serde(rename = "Driver", default)]
    driver: Option<NamedExtension>,
    #[serde(rename = "Templating", default)]
    templating: Option<NamedExtension>,
}

#[derive(Deserialize)]
struct NamedExtension {
    #[serde(rename = "Name", default)]
    name: String,
}

/// A secret value decoded from base64 into a wiped buffer. Decoding errors never quote it.
struct SecretData(Zeroizing<Vec<u8>>);

impl<'de> Deserialize<'de> for SecretData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretData;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretData, E> {
                let mut out = Zeroizing::new(Vec::with_capacity(v.len() / 4 * 3 + 3));
                // The decoder's own error names the offending byte: say only that it failed.
                B64.decode_vec(v.as_bytes(), &mut out).map_err(|_| {
                    E::custom("Data is not valid standard base64 (the docker CLI sends it so)")
                })?;
                Ok(SecretData(out))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretData, E> {
                let v = Zeroizing::new(v);
                self.visit_str(&v)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Docker's `Secret`: never with `Data` (SwarmKit clears it in every answer).
#[derive(Serialize)]
pub struct SecretJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Version")]
    version: Version,
    #[serde(rename = "CreatedAt")]
    created_at: String,
    #[serde(rename = "UpdatedAt")]
    updated_at: String,
    #[serde(rename = "Spec")]
    spec: SecretSpecJson,
}

#[derive(Serialize)]
struct SecretSpecJson {
    #[serde(rename = "Name", skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "Labels")]
    labels: BTreeMap<String, String>,
}

fn secret_json(v: &SecretView) -> SecretJson {
    SecretJson {
        id: v.record.id.clone(),
        version: Version { index: v.version },
        created_at: v.record.created_at.clone(),
        updated_at: v.record.updated_at.clone(),
        spec: SecretSpecJson {
            name: v.record.name.clone(),
            labels: v.record.labels.clone(),
        },
    }
}

pub(super) fn spec(body: Body) -> Result<SecretSpec, ApiError> {
    let b: SecretSpecBody = json_body_wiped(body)?;
    Ok(SecretSpec {
        name: b.name,
        labels: b.labels,
        data: b.data.map(|d| d.0),
        driver: b.driver.map(|d| d.name),
        templating: b.templating.map(|t| t.name),
    })
}

pub async fn create(
    State(ctl): Ctl,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let spec = spec(body)?;
    let id = ctl.create_secret(spec).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "ID": id }))))
}

pub async fn list(State(ctl): Ctl, Query(q): Q) -> Result<Json<Vec<SecretJson>>, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), Filters::SECRET_KEYS)?;
    let secrets = ctl
        .secrets()?
        .iter()
        .filter(|s| filters.matches_secret(&s.record))
        .map(secret_json)
        .collect();
    Ok(Json(secrets))
}

pub async fn inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> Result<Json<SecretJson>, ApiError> {
    Ok(Json(secret_json(&ctl.secret(&id)?)))
}

pub async fn update(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
    body: Body,
) -> Result<StatusCode, ApiError> {
    // dockerd's exact text (`cluster_routes.go` updateSecret), not the swarm one.
    let version = q
        .get("version")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::BadRequest("invalid secret version".into()))?;
    let spec = spec(body)?;
    ctl.update_secret(&id, version, spec).await?;
    Ok(StatusCode::OK)
}

pub async fn remove(State(ctl): Ctl, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    ctl.remove_secret(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20,000 corruptions of a create body (bit flips, truncations, spliced quotes and
    /// backslashes): parsing never panics, and no error message carries the value or a piece of
    /// its base64 longer than 8 characters.
    #[test]
    fn corrupted_bodies_never_panic_or_echo_the_value() {
        let value = b"VALUE-7f3a9c-secret-marker-never-echoed";
        let b64 = B64.encode(value);
        let good = format!(r#"{{"Name":"db_pass","Labels":{{"a":"b"}},"Data":"{b64}"}}"#);
        let parsed = spec(Ok(Bytes::from(good.clone()))).unwrap();
        assert_eq!(parsed.data.as_deref().map(|d| &d[..]), Some(&value[..]));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut body = good.clone().into_bytes();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % body.len();
                match next() % 4 {
                    0 => body[at] ^= 1 << (next() % 8),
                    1 => body.truncate(at),
                    2 => body.insert(at, b'"'),
                    _ => body.insert(at, b'\\'),
                }
                if body.is_empty() {
                    break;
                }
            }
            if let Err(e) = spec(Ok(Bytes::from(body))) {
                let msg = e.to_string();
                assert!(!msg.contains("VALUE-7f3a9c"), "{msg}");
                for w in b64.as_bytes().windows(9) {
                    let piece = std::str::from_utf8(w).unwrap();
                    assert!(!msg.contains(piece), "{msg}");
                }
            }
        }
    }
}
