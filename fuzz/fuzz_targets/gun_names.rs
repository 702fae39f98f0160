//! GUN and role names (`swarmguard_notary::names`), taken from request paths and uploaded
//! metadata. A name that passes may never allow path traversal or route ambiguity, and a
//! delegation's parent is a valid role that prefixes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmguard_notary::names;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if names::valid_gun(s) {
        assert!(s.len() <= names::MAX_GUN_LEN);
        assert!(s.is_ascii() && !s.bytes().any(|b| b.is_ascii_control() || b == b'%'));
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        for seg in s.split('/') {
            assert!(!seg.is_empty() && seg != "." && seg != ".." && seg != "_trust");
        }
    }
    if names::valid_role(s) {
        assert!(s.len() <= names::MAX_ROLE_LEN);
        assert!(!s
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == ".."));
    }
    match names::parent_role(s) {
        Some(parent) => {
            assert!(names::is_delegation(s));
            assert!(names::valid_role(parent), "parent {parent:?} of {s:?}");
            assert_eq!(
                s.strip_prefix(parent)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(|r| r.contains('/')),
                Some(false)
            );
        }
        None => assert!(!names::is_delegation(s)),
    }
});
