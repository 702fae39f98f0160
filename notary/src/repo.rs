//! What the store holds for one repository and what an update writes: plain data shared by
//! validation (which decides) and the store (which keeps), so neither imports the other.

use std::collections::BTreeMap;

/// The stored current version of each role of one repository.
#[derive(Debug, Default, Clone)]
pub struct RepoState {
    /// role → (version, raw bytes as stored)
    pub roles: BTreeMap<String, (u64, Vec<u8>)>,
}

impl RepoState {
    /// Does `other` hold the same current version of every role? Validation runs on a copy
    /// read outside the write transaction; the write stores its result only if this holds.
    pub fn same_versions(&self, other: &RepoState) -> bool {
        self.roles.len() == other.roles.len()
            && self
                .roles
                .iter()
                .zip(&other.roles)
                .all(|((r1, (v1, _)), (r2, (v2, _)))| r1 == r2 && v1 == v2)
    }
}

/// One file to store.
#[derive(Debug, Clone)]
pub struct Write {
    pub role: String,
    pub version: u64,
    pub raw: Vec<u8>,
}
