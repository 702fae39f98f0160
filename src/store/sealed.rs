//! Sealing and opening of every record the store writes to disk.
//!
//! Each record is sealed with the DEK and its identity as AAD, so a record copied to another
//! place (another log index, another key, the vote slot …) fails authentication.

use serde::de::DeserializeOwned;
use serde::Serialize;
use swarmguard_secrets::DataKey;
use zeroize::Zeroizing;

use super::error::StoreError;

pub(crate) fn aad_log(index: u64) -> String {
    format!("log/{index}")
}
pub(crate) fn aad_sm(key: &str) -> String {
    format!("sm/{key}")
}
pub(crate) fn aad_snapshot(id: &str) -> String {
    format!("snapshot/{id}")
}
/// A value sealed by a layer above inside its own record (see `Store::seal_field`); the prefix
/// keeps it apart from every identity the store seals itself.
pub(crate) fn aad_field(id: &str) -> String {
    format!("field/{id}")
}
pub(crate) const AAD_VOTE: &str = "meta/vote";
pub(crate) const AAD_PURGED: &str = "meta/last_purged";
pub(crate) const AAD_APPLIED: &str = "sm-meta/applied";

/// Serializes `v` as JSON and seals it.
pub(crate) fn seal_json<T: Serialize>(
    dek: &DataKey,
    aad: &str,
    v: &T,
) -> Result<Vec<u8>, StoreError> {
    let plain = Zeroizing::new(serde_json::to_vec(v).map_err(|e| StoreError::Encode {
        what: aad.to_owned(),
        reason: e.to_string(),
    })?);
    seal(dek, aad, &plain)
}

pub(crate) fn seal(dek: &DataKey, aad: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    dek.seal(aad.as_bytes(), plain)
        .map_err(|source| StoreError::Sealed {
            record: aad.to_owned(),
            source,
        })
}

pub(crate) fn open(
    dek: &DataKey,
    aad: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    dek.open(aad.as_bytes(), sealed)
        .map_err(|source| StoreError::Sealed {
            record: aad.to_owned(),
            source,
        })
}

/// Opens a sealed record and parses its JSON.
pub(crate) fn open_json<T: DeserializeOwned>(
    dek: &DataKey,
    aad: &str,
    sealed: &[u8],
) -> Result<T, StoreError> {
    let plain = open(dek, aad, sealed)?;
    serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
        record: aad.to_owned(),
        reason: e.to_string(),
    })
}

/// A state-machine value record: `version (u64 LE) ‖ created (u64 LE) ‖ value`.
pub(crate) fn encode_value(version: u64, created: u64, value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(16 + value.len()));
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&created.to_le_bytes());
    v.extend_from_slice(value);
    v
}

pub(crate) fn decode_value(record: &str, plain: &[u8]) -> Result<(u64, u64, Vec<u8>), StoreError> {
    if plain.len() < 16 {
        return Err(StoreError::Corrupt {
            record: record.to_owned(),
            reason: format!(
                "value record is {} bytes, at least 16 expected",
                plain.len()
            ),
        });
    }
    let (ver, rest) = plain.split_at(8);
    let (created, value) = rest.split_at(8);
    let mut a = [0u8; 8];
    a.copy_from_slice(ver);
    let mut b = [0u8; 8];
    b.copy_from_slice(created);
    Ok((u64::from_le_bytes(a), u64::from_le_bytes(b), value.to_vec()))
}
