//! Canonical JSON as written by docker/go `canonical/json` (`MarshalCanonical`),
//! which Notary uses for every signature: object keys sorted bytewise, no
//! insignificant whitespace, strings escape only `"` and `\` (every other byte,
//! control characters included, is written raw), no Unicode normalisation,
//! numbers only as integers (Go decodes into float64, so integers beyond
//! 2^53 are refused rather than silently rounded).

use serde_json::Value;

/// Errors from canonicalisation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("non-integer number cannot be canonicalised")]
    NonInteger,
    #[error("integer outside the exactly representable range")]
    IntegerRange,
    #[error("JSON nested too deeply")]
    TooDeep,
}

/// Largest integer that round-trips through Go's float64 decoding exactly.
const MAX_EXACT: u64 = 1 << 53;
/// Nesting bound (serde_json already limits parsing to 128).
const MAX_DEPTH: usize = 128;

/// Encode `v` as canonical JSON bytes.
pub fn to_canonical(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(v, &mut out, 0)?;
    Ok(out)
}

fn write_value(v: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(&m[k.as_str()], out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    if let Some(u) = n.as_u64() {
        if u > MAX_EXACT {
            return Err(CanonicalError::IntegerRange);
        }
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_EXACT {
            return Err(CanonicalError::IntegerRange);
        }
        out.extend_from_slice(i.to_string().as_bytes());
    } else {
        let f = n.as_f64().ok_or(CanonicalError::NonInteger)?;
        if !f.is_finite() || f.fract() != 0.0 {
            return Err(CanonicalError::NonInteger);
        }
        if f.abs() > MAX_EXACT as f64 {
            return Err(CanonicalError::IntegerRange);
        }
        // Integral float (e.g. `1.0` or `1e2`): Go writes it as int64.
        out.extend_from_slice((f as i64).to_string().as_bytes());
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_and_compacts() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x"});
        assert_eq!(
            to_canonical(&v).unwrap(),
            br#"{"a":"x","b":[1,{"a":true,"z":null}]}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!({"k": "a\"b\\c\n<&>\u{e9}\u{1}"});
        let out = to_canonical(&v).unwrap();
        assert_eq!(out, "{\"k\":\"a\\\"b\\\\c\n<&>\u{e9}\u{1}\"}".as_bytes());
    }

    #[test]
    fn no_nfc_normalisation() {
        // "e" + combining acute stays decomposed.
        let v = json!("e\u{301}");
        assert_eq!(to_canonical(&v).unwrap(), "\"e\u{301}\"".as_bytes());
    }

    #[test]
    fn numbers() {
        let v: Value = serde_json::from_str("[1.0, 1e2, -3]").unwrap();
        assert_eq!(to_canonical(&v).unwrap(), b"[1,100,-3]");
        let v: Value = serde_json::from_str("[1.5]").unwrap();
        assert_eq!(to_canonical(&v), Err(CanonicalError::NonInteger));
        let v: Value = serde_json::from_str("[9007199254740993]").unwrap();
        assert_eq!(to_canonical(&v), Err(CanonicalError::IntegerRange));
    }

    #[test]
    fn key_order_is_bytewise() {
        let v = json!({"a\"": 1, "a": 2, "B": 3, "\u{e9}": 4});
        assert_eq!(
            to_canonical(&v).unwrap(),
            "{\"B\":3,\"a\":2,\"a\\\"\":1,\"\u{e9}\":4}".as_bytes()
        );
    }
}
