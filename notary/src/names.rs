//! Strict checks for GUNs and role names taken from request paths.

/// Longest GUN accepted (Notary's database column is 255).
pub const MAX_GUN_LEN: usize = 255;
/// Longest role name accepted.
pub const MAX_ROLE_LEN: usize = 255;
/// Deepest delegation accepted (`targets/a/b/...`).
pub const MAX_ROLE_DEPTH: usize = 8;

/// A GUN is `host[:port]/path/...`: ASCII letters, digits, `.`, `_`, `-`, `:`
/// and `/` separating non-empty segments; no `.`/`..` segments (path
/// traversal), no `_trust` segment (would make routes ambiguous), no control
/// characters, no percent-encoding.
pub fn valid_gun(gun: &str) -> bool {
    if gun.is_empty() || gun.len() > MAX_GUN_LEN {
        return false;
    }
    if !gun
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
    {
        return false;
    }
    gun.split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg != "_trust")
}

/// Is `role` one of the four base roles?
pub fn is_base_role(role: &str) -> bool {
    matches!(role, "root" | "targets" | "snapshot" | "timestamp")
}

/// A delegation role: `targets/<seg>[/<seg>…]`.
pub fn is_delegation(role: &str) -> bool {
    let Some(rest) = role.strip_prefix("targets/") else {
        return false;
    };
    role.len() <= MAX_ROLE_LEN
        && rest.split('/').count() < MAX_ROLE_DEPTH
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Any role name we store.
pub fn valid_role(role: &str) -> bool {
    is_base_role(role) || is_delegation(role)
}

/// Parent of a delegation (`targets/a/b` → `targets/a`).
pub fn parent_role(role: &str) -> Option<&str> {
    if !is_delegation(role) {
        return None;
    }
    role.rfind('/').map(|i| &role[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guns() {
        assert!(valid_gun("127.0.0.1:5000/demo/bb"));
        assert!(valid_gun("docker.io/library/alpine"));
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "a\nb",
            "a\u{0}b",
            "a b",
            "a%2fb",
            "a/_trust/b",
            "a\\b",
            "ä/b",
        ] {
            assert!(!valid_gun(bad), "{bad:?}");
        }
        assert!(!valid_gun(&"a".repeat(256)));
        assert!(valid_gun(&"a".repeat(255)));
    }

    #[test]
    fn roles() {
        for ok in [
            "root",
            "targets",
            "snapshot",
            "timestamp",
            "targets/releases",
            "targets/a/b",
            "targets/a.b",
        ] {
            assert!(valid_role(ok), "{ok}");
        }
        for bad in [
            "targets/",
            "targets//a",
            "targets/../root",
            "foo",
            "targets/a b",
            "Root",
            "targets/.",
        ] {
            assert!(!valid_role(bad), "{bad}");
        }
        assert_eq!(parent_role("targets/a/b"), Some("targets/a"));
        assert_eq!(parent_role("targets/a"), Some("targets"));
        assert_eq!(parent_role("targets"), None);
    }
}
