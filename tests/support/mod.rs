//! Real peers for integration tests and benches.

pub mod dockerd;
pub mod manager;
