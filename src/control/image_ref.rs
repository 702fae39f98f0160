//! Docker image references (`[host[:port]/]path[:tag][@sha256:hex]`), parsed strictly with the
//! grammar of distribution/reference: a reference that does not parse is refused, never guessed.

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (with port), if the first component names one.
    pub domain: Option<String>,
    /// Repository path, e.g. `demo/app`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

const MAX_REF: usize = 512;

fn path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by one of `.`, `_`, `__` or any run of `-`.
    if c.is_empty()
        || !c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return false;
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn domain_ok(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

impl ImageRef {
    pub fn parse(s: &str) -> Option<ImageRef> {
        if s.is_empty() || s.len() > MAX_REF {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:")?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return None;
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return None;
            }
        }
        let mut comps: Vec<&str> = name.split('/').collect();
        let domain = if comps.len() > 1
            && (comps[0].contains('.') || comps[0].contains(':') || comps[0] == "localhost")
        {
            let d = comps.remove(0);
            if !domain_ok(d) {
                return None;
            }
            Some(d.to_string())
        } else {
            None
        };
        if comps.iter().any(|c| !path_component(c)) {
            return None;
        }
        Some(ImageRef {
            domain,
            path: comps.join("/"),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The repository name as content trust knows it (`host:port/path`, or `docker.io/…`).
    pub fn repository(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None if self.path.contains('/') => format!("docker.io/{}", self.path),
            None => format!("docker.io/library/{}", self.path),
        }
    }

    /// The name as the user wrote it, without tag or digest.
    pub fn name(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("127.0.0.1:5000/demo/app:signed").unwrap();
        assert_eq!(r.domain.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(
            (r.path.as_str(), r.tag.as_deref()),
            ("demo/app", Some("signed"))
        );
        assert_eq!(r.repository(), "127.0.0.1:5000/demo/app");
        let d = format!("bb:1@sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&d).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert!(r.digest.is_some());
        assert_eq!(
            ImageRef::parse("busybox").unwrap().repository(),
            "docker.io/library/busybox"
        );
        for bad in [
            "BB:UPPER",
            "bb:1@@x",
            "",
            "a//b",
            "-a",
            "a:",
            "bb@sha256:12",
            "a b",
            "host:99999999/x",
        ] {
            assert!(ImageRef::parse(bad).is_none(), "{bad} accepted");
        }
    }
}
