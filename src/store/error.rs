//! Errors of the cluster store.

use std::path::PathBuf;

use swarmguard_secrets::keyfile::KeyFileError;
use swarmguard_secrets::SealError;

/// Every way the store can fail. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store directory {path}: {source} (check that the data directory exists and is writable by swarmguard)")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data encryption key: {0}")]
    Key(#[from] KeyFileError),
    #[error("the store holds data but its key file {path} is missing; restore keys/dek from the backup taken with this data directory (a new key cannot decrypt it)")]
    MissingKey { path: PathBuf },
    #[error("database {what}: {source} (if another swarmguard process uses this data directory, stop it first; otherwise restore the store from a backup)")]
    Database {
        what: String,
        #[source]
        source: redb::Error,
    },
    #[error("store record {record} cannot be decrypted: {source}")]
    Sealed {
        record: String,
        #[source]
        source: SealError,
    },
    #[error("store record {record} is malformed: {reason} (the store file is damaged; restore it from a backup)")]
    Corrupt { record: String, reason: String },
    #[error("value of key {key:?} is {size} bytes, larger than the {max}-byte limit; split the object or store it elsewhere")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },
    #[error("transaction is {size} bytes, larger than the {max}-byte limit; split it into smaller transactions")]
    TxnTooLarge { size: usize, max: usize },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error(
        "this manager is not the Raft leader (leader: {leader:?}); send the write to the leader"
    )]
    NotLeader { leader: Option<u64> },
    /// No leader with a quorum is reachable: dockerd's text, with how many managers answer.
    #[error("The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online. ({reachable} of {managers} managers reachable from this one)")]
    NoQuorum { reachable: usize, managers: usize },
    /// The write was sent but its outcome is not known (the leader failed mid-call).
    #[error("the outcome of the write is unknown: {0}; read the object again before retrying")]
    Unknown(String),
    #[error("{0}")]
    Transport(#[from] super::network::TransportError),
    #[error("timed out waiting for {what}; check the logs for storage errors")]
    Timeout { what: String },
    #[error("raft: {0} (the store stopped; check the logs, then restart swarmguard)")]
    Raft(String),
    #[error("encoding {what}: {reason}")]
    Encode { what: String, reason: String },
}

impl StoreError {
    pub(crate) fn db(what: impl Into<String>, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            what: what.into(),
            source: e.into(),
        }
    }
}
