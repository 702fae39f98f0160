//! Generated SwarmKit wire types and service stubs (`proto/swarmkit/*.proto`).
#![allow(clippy::all, missing_docs, dead_code)]

tonic::include_proto!("docker.swarmkit.v1");
