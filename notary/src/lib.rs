//! swarmguard-notary: a Notary-compatible TUF trust server for Docker Content
//! Trust, with our own canonical JSON, TUF schema, signature verification,
//! upload validation, redb storage and a signer boundary.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cache;
pub mod cjson;
pub mod client;
pub mod guard;
pub mod metrics;
pub mod multipart;
pub mod names;
pub mod process;
pub mod remote;
pub mod repo;
pub mod respond;
pub mod server;
pub mod signer;
pub mod state;
pub mod store;
pub mod tuf;
pub mod upload;
pub mod validate;
