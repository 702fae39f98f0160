//! Public data types of the store and the Raft type configuration.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Raft type configuration of the cluster store.
    ///
    /// Node IDs are `u64`, nodes are `BasicNode { addr }`, snapshot data travels as an in-memory
    /// buffer (cluster state is small: KB-sized objects).
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A transaction: all `checks` must pass, then all `ops` are applied atomically.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Txn {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

/// What one Raft entry carries: transactions proposed together (see `batch.rs`), applied in
/// order, each on its own: a failed check skips only its own transaction.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Proposal {
    Batch {
        batch: Vec<Txn>,
    },
    /// One transaction, as entries were written before proposals were batched.
    One(Txn),
}

impl Proposal {
    pub fn batch(txns: Vec<Txn>) -> Proposal {
        Proposal::Batch { batch: txns }
    }

    /// The transactions, in the order they apply.
    pub fn into_txns(self) -> Vec<Txn> {
        match self {
            Proposal::Batch { batch } => batch,
            Proposal::One(txn) => vec![txn],
        }
    }
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Batch { batch } => f.debug_list().entries(batch).finish(),
            Proposal::One(txn) => txn.fmt(f),
        }
    }
}

/// A precondition of a [`Txn`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Check {
    /// The key exists and its version (raft index of its last write) is `version`.
    Version { key: String, version: u64 },
    /// The key does not exist.
    Absent { key: String },
    /// The key exists.
    Present { key: String },
}

impl Check {
    pub fn key(&self) -> &str {
        match self {
            Check::Version { key, .. } | Check::Absent { key } | Check::Present { key } => key,
        }
    }

    /// Whether the check passes against `current`, the key's value now.
    pub fn holds(&self, current: Option<&Versioned>) -> bool {
        match self {
            Check::Version { version, .. } => current.map(|v| v.version) == Some(*version),
            Check::Absent { .. } => current.is_none(),
            Check::Present { .. } => current.is_some(),
        }
    }
}

/// A write of a [`Txn`]. Values are opaque bytes.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

// Values may hold secrets: never print them.
impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value } => f
                .debug_struct("Put")
                .field("key", key)
                .field("value_len", &value.len())
                .finish(),
            Op::Delete { key } => f.debug_struct("Delete").field("key", key).finish(),
        }
    }
}

impl fmt::Debug for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Txn")
            .field("checks", &self.checks)
            .field("ops", &self.ops)
            .finish()
    }
}

/// Result of [`super::Store::apply`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnOutcome {
    /// All checks passed and all ops were written at raft log index `index` (transactions
    /// proposed together share it, as SwarmKit's batched updates share a raft index).
    Committed { index: u64 },
    /// The check on `key` failed; nothing was written.
    Conflict { key: String },
}

/// A stored value with its versions.
#[derive(Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Raft log index of the last write of this key.
    pub version: u64,
    /// Raft log index of the write that created this key.
    pub created: u64,
    pub value: Vec<u8>,
}

impl fmt::Debug for Versioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versioned")
            .field("version", &self.version)
            .field("created", &self.created)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Notification sent after each applied, committed transaction (and after a snapshot install).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// Changed keys, sorted and deduplicated.
    pub keys: Vec<String>,
}

/// What the state machine returns for one log entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// One per transaction of the entry's [`Proposal`], in order; none for blank and
    /// membership entries.
    pub outcomes: Vec<TxnOutcome>,
}

/// Serde helper: bytes as base64 text (JSON arrays of numbers would be ~4x larger).
pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
