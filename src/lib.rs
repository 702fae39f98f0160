//! swarmguard: a hardened security plane for Docker Swarm clusters.
//!
//! The daemon's layers run one way (see `docs/architecture.md`):
//!
//! - edges: [`engine`] (the Docker Engine API over HTTP) and [`grpc`] (the cluster port:
//!   SwarmKit's CA, NodeCA, Dispatcher and LogBroker services);
//! - domain: [`control`], one file per resource, which owns the records, the security material
//!   and every rule about them;
//! - storage: [`store`], the sealed Raft-replicated key-value store.
//!
//! [`agent`] is a client of the cluster port: it uses the wire types ([`pb`]) and the TLS
//! helpers ([`tls`]), never the server. [`util`], [`host`], [`tls`] and [`pb`] are leaves.
#![forbid(unsafe_code)]

pub mod agent;
pub mod control;
pub mod engine;
pub mod grpc;
pub mod host;
pub mod manager;
pub mod pb;
pub mod store;
pub mod tls;
pub mod util;
