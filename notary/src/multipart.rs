//! A strict `multipart/form-data` parser for metadata uploads: every part must
//! be `form-data; name="files"; filename="<role>"`, each role at most once.

use std::collections::BTreeMap;

/// Why a multipart body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("Content-Type is not multipart/form-data with a valid boundary")]
    ContentType,
    #[error("malformed multipart body: {0}")]
    Body(&'static str),
    #[error("part {0:?} appears twice")]
    Duplicate(String),
    #[error("too many parts")]
    TooManyParts,
}

const MAX_HEADER_BYTES: usize = 4096;
const MAX_HEADERS: usize = 8;

/// Extract the boundary from a Content-Type header value.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::ContentType);
    }
    for p in parts {
        let p = p.trim();
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v);
            // RFC 2046 bchars, 1..=70.
            let ok = !v.is_empty()
                && v.len() <= 70
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b))
                && !v.ends_with(' ');
            return if ok {
                Ok(v.to_string())
            } else {
                Err(MultipartError::ContentType)
            };
        }
    }
    Err(MultipartError::ContentType)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parse `body` into filename → bytes.
pub fn parse(
    body: &[u8],
    boundary: &str,
    max_parts: usize,
) -> Result<BTreeMap<String, Vec<u8>>, MultipartError> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // The body must start with the first delimiter (Go writes no preamble).
    if !body.starts_with(dash.as_bytes()) {
        return Err(MultipartError::Body("does not start with the boundary"));
    }
    let mut pos = dash.len();
    let mut out = BTreeMap::new();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            // Closing delimiter; allow only optional trailing CRLF.
            let tail = &rest[2..];
            if tail.is_empty() || tail == b"\r\n" {
                break;
            }
            return Err(MultipartError::Body("data after the closing boundary"));
        }
        if !rest.starts_with(b"\r\n") {
            return Err(MultipartError::Body("boundary not followed by CRLF"));
        }
        pos += 2;
        let hdr_end = find(body, b"\r\n\r\n", pos)
            .ok_or(MultipartError::Body("unterminated part headers"))?;
        if hdr_end - pos > MAX_HEADER_BYTES {
            return Err(MultipartError::Body("part headers too large"));
        }
        let headers = std::str::from_utf8(&body[pos..hdr_end])
            .map_err(|_| MultipartError::Body("non-UTF-8 headers"))?;
        let name = part_filename(headers)?;
        let data_start = hdr_end + 4;
        let data_end = find(body, delim.as_bytes(), data_start)
            .ok_or(MultipartError::Body("unterminated part"))?;
        if out.len() >= max_parts {
            return Err(MultipartError::TooManyParts);
        }
        if out
            .insert(name.clone(), body[data_start..data_end].to_vec())
            .is_some()
        {
            return Err(MultipartError::Duplicate(name));
        }
        pos = data_end + delim.len();
    }
    if out.is_empty() {
        return Err(MultipartError::Body("no parts"));
    }
    Ok(out)
}

fn part_filename(headers: &str) -> Result<String, MultipartError> {
    let mut filename = None;
    let lines: Vec<&str> = headers.split("\r\n").collect();
    if lines.len() > MAX_HEADERS {
        return Err(MultipartError::Body("too many part headers"));
    }
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or(MultipartError::Body("bad part header"))?;
        if k.bytes().any(|b| b.is_ascii_control())
            || v.bytes().any(|b| b.is_ascii_control() && b != b'\t')
        {
            return Err(MultipartError::Body("control character in part header"));
        }
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        if filename.is_some() {
            return Err(MultipartError::Body("two Content-Disposition headers"));
        }
        let mut params = v.split(';');
        if !params
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("form-data")
        {
            return Err(MultipartError::Body("part is not form-data"));
        }
        let mut name = None;
        let mut fname = None;
        for p in params {
            let (pk, pv) = p
                .trim()
                .split_once('=')
                .ok_or(MultipartError::Body("bad disposition parameter"))?;
            let pv = pv
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(pv);
            if pv.contains('"') || pv.contains('\\') {
                return Err(MultipartError::Body("escaped disposition parameter"));
            }
            match pk.to_ascii_lowercase().as_str() {
                "name" if name.is_none() => name = Some(pv.to_string()),
                "filename" if fname.is_none() => fname = Some(pv.to_string()),
                _ => return Err(MultipartError::Body("unexpected disposition parameter")),
            }
        }
        if name.as_deref() != Some("files") {
            return Err(MultipartError::Body("part name is not \"files\""));
        }
        filename = Some(fname.ok_or(MultipartError::Body("part has no filename"))?);
    }
    let f = filename.ok_or(MultipartError::Body("part has no Content-Disposition"))?;
    if f.is_empty() {
        return Err(MultipartError::Body("empty filename"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, &str)], b: &str) -> Vec<u8> {
        let mut s = String::new();
        for (name, data) in parts {
            s.push_str(&format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n{data}\r\n"
            ));
        }
        s.push_str(&format!("--{b}--\r\n"));
        s.into_bytes()
    }

    #[test]
    fn parses_go_style() {
        let b = "11c727763a9e96086152e727673cf1b9";
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={b}")).unwrap(),
            b
        );
        let m = parse(
            &body(&[("root", "{\"a\":1}"), ("targets/alice", "x\r\ny")], b),
            b,
            8,
        )
        .unwrap();
        assert_eq!(m["root"], b"{\"a\":1}");
        assert_eq!(m["targets/alice"], b"x\r\ny");
    }

    #[test]
    fn rejects_malformed() {
        let b = "bnd";
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert_eq!(
            parse(&body(&[("root", "1"), ("root", "2")], b), b, 8),
            Err(MultipartError::Duplicate("root".into()))
        );
        assert!(parse(b"--bnd\r\nContent-Disposition: form-data; name=\"files\"; filename=\"root\"\r\n\r\nabc", b, 8).is_err());
        assert!(parse(b"garbage", b, 8).is_err());
        assert!(parse(b"--bnd--", b, 8).is_err());
        let wrong_name = b"--bnd\r\nContent-Disposition: form-data; name=\"x\"; filename=\"root\"\r\n\r\n1\r\n--bnd--";
        assert!(parse(wrong_name, b, 8).is_err());
        let no_cd = b"--bnd\r\nContent-Type: text/plain\r\n\r\n1\r\n--bnd--";
        assert!(parse(no_cd, b, 8).is_err());
        let many: Vec<(String, &str)> = (0..5).map(|i| (format!("targets/r{i}"), "x")).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        assert_eq!(
            parse(&body(&refs, b), b, 4),
            Err(MultipartError::TooManyParts)
        );
    }
}
