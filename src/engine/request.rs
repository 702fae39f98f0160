//! Strict request parsing with Docker's error texts: JSON bodies, booleans and versions from the
//! query string.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses a JSON body; a body over the limit, a wrong type or broken JSON is a 400/413 naming the
/// problem, never a panic or a partial update.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status().as_u16() {
        413 => ApiError::TooLarge,
        status => ApiError::Unreadable {
            status,
            message: e.to_string(),
        },
    })?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty: a JSON object is required".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// [`json_body`] for bodies carrying a secret: the request bytes are wiped once parsed (when this
/// is their only owner, as it is for a body axum read whole). Errors never quote the body.
pub fn json_body_wiped<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status().as_u16() {
        413 => ApiError::TooLarge,
        status => ApiError::Unreadable {
            status,
            message: e.to_string(),
        },
    })?;
    let parsed = if bytes.is_empty() {
        Err(ApiError::BadRequest(
            "request body is empty: a JSON object is required".into(),
        ))
    } else {
        // serde_json's messages quote a string only for a wrong type or enum; the value is
        // decoded by a visitor whose error quotes nothing.
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    };
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.fill(0);
    }
    parsed
}

/// Go's `strconv.ParseBool`, as dockerd parses `rotateWorkerToken` and friends. Absent or empty
/// means false.
pub fn parse_bool(name: &str, value: Option<&String>) -> Result<bool, ApiError> {
    match value.map(String::as_str) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!(
            "invalid value for {name}: {other}"
        ))),
    }
}

/// dockerd's lenient `BoolValue` for `force`: anything but empty, 0, no, false, none is true.
pub fn bool_value(value: Option<&String>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        None | Some("" | "0" | "no" | "false" | "none")
    )
}

/// A required `version` query parameter, as dockerd words its absence or a bad value.
pub fn parse_version(what: &str, value: Option<&String>) -> Result<u64, ApiError> {
    let raw = value.map(String::as_str).unwrap_or("");
    raw.parse::<u64>().map_err(|e| {
        let reason = if raw.is_empty() {
            "strconv.ParseUint: parsing \"\": invalid syntax".to_string()
        } else {
            format!("strconv.ParseUint: parsing {raw:?}: {e}")
        };
        ApiError::BadRequest(format!("invalid {what} version '{raw}': {reason}"))
    })
}

/// `since` of `GET /services/{id}/logs`, as the CLI sends it (`<seconds>[.<fraction>]`, Unix
/// time; dockerd's `timetypes.ParseTimestamps`), in Unix nanoseconds; `None` when absent or
/// empty. Digits only: no sign, at most 9 fraction digits, seconds within the year 9999.
pub fn parse_since(value: Option<&String>) -> Result<Option<i128>, ApiError> {
    let raw = value.map(String::as_str).unwrap_or("");
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || {
        let shown: String = raw.chars().take(64).collect();
        ApiError::BadRequest(format!(
            "invalid value for \"since\": {shown:?} is not a Unix time (seconds[.fraction])"
        ))
    };
    let (secs, frac) = match raw.split_once('.') {
        Some((_, "")) => return Err(bad()),
        Some(parts) => parts,
        None => (raw, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || secs.len() > 12 || !digits(secs) || frac.len() > 9 || !digits(frac) {
        return Err(bad());
    }
    let secs: i128 = secs.parse().map_err(|_| bad())?;
    if secs > 253_402_300_799 {
        return Err(bad());
    }
    // "1.5" is 1 s + 500 000 000 ns: the fraction scales to nanoseconds.
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().map_err(|_| bad())? * 10i128.pow(9 - frac.len() as u32)
    };
    Ok(Some(secs * 1_000_000_000 + nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        let t = |s: &str| parse_bool("x", Some(&s.to_string()));
        assert!(t("true").unwrap() && t("1").unwrap() && t("T").unwrap());
        assert!(!t("false").unwrap() && !t("0").unwrap() && !t("").unwrap());
        assert_eq!(
            t("yes").unwrap_err().to_string(),
            "invalid value for x: yes"
        );
        assert!(!parse_bool("x", None).unwrap());
        assert!(
            bool_value(Some(&"1".into()))
                && !bool_value(Some(&"false".into()))
                && !bool_value(None)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("swarm", Some(&"10".into())).unwrap(), 10);
        assert!(parse_version("swarm", None)
            .unwrap_err()
            .to_string()
            .starts_with("invalid swarm version ''"));
        assert!(parse_version("swarm", Some(&"-1".into())).is_err());
        assert!(parse_version("swarm", Some(&"99999999999999999999999".into())).is_err());
    }

    #[test]
    fn since_values() {
        let t = |s: &str| parse_since(Some(&s.to_string()));
        assert_eq!(t("").unwrap(), None);
        assert_eq!(parse_since(None).unwrap(), None);
        assert_eq!(t("1700000000").unwrap(), Some(1_700_000_000_000_000_000));
        // The CLI's form for `--since 10m` or an RFC 3339 date: nine fraction digits.
        assert_eq!(
            t("1700000000.000000123").unwrap(),
            Some(1_700_000_000_000_000_123)
        );
        assert_eq!(t("1.5").unwrap(), Some(1_500_000_000));
        for bad in [
            "-1",
            "+1",
            "abc",
            "1.",
            ".5",
            "1.2.3",
            "1.0000000001",
            "1e9",
            " 1",
            "99999999999999",
            "253402300800",
        ] {
            let e = t(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid value for \"since\""), "{bad}: {e}");
        }
    }
}
