//! Errors of the control layer: one enum, mapped once to an Engine API response (`engine`) and
//! once to a gRPC status (`grpc`).
//!
//! dockerd passes SwarmKit's gRPC errors through as `rpc error: code = X desc = Y` and maps the
//! code to an HTTP status; its own daemon-level errors are plain text. The docker CLI prints both
//! verbatim, so the `Display` texts here are the ones users of dockerd already know. Nothing is
//! logged here: the edge that answers logs what it must, once.

use std::fmt;

/// The gRPC status codes control-layer decisions carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    Aborted,
    Unimplemented,
    Unavailable,
    Unknown,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "InvalidArgument",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::Unimplemented => "Unimplemented",
            Code::Unavailable => "Unavailable",
            Code::Unknown => "Unknown",
        }
    }

    /// dockerd's gRPC → HTTP mapping (`httpstatus`).
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Aborted | Code::Unknown => 500,
        }
    }
}

/// Why a control-layer call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A SwarmKit-level refusal, worded as dockerd relays it.
    #[error("rpc error: code = {} desc = {desc}", code.name())]
    Rpc { code: Code, desc: String },
    /// A daemon-level refusal of the request's content (HTTP 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (HTTP 409), e.g. unlocking an unlocked swarm.
    #[error("{0}")]
    Conflict(String),
    #[error("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.")]
    NotManager,
    #[error("This node is not part of a swarm")]
    NotInSwarm,
    #[error("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")]
    AlreadyInSwarm,
    /// The request is sound but cannot be served now (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// A read-modify-write lost every race it was allowed to retry.
    #[error("the {what} kept changing under this request ({tries} tries); try again")]
    Contended { what: &'static str, tries: u32 },
    /// The cluster store could not take or give the data (disk, Raft).
    #[error(
        "the cluster store refused the write: {0} (see the swarmguard manager log for details)"
    )]
    Store(String),
    /// A failure of swarmguard itself: what it was doing and why.
    #[error("{context}: {detail} (see the swarmguard manager log for details)")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl ControlError {
    /// A SwarmKit-originated error, worded as dockerd relays it.
    pub fn rpc(code: Code, desc: impl fmt::Display) -> Self {
        ControlError::Rpc {
            code,
            desc: desc.to_string(),
        }
    }

    pub fn internal(context: &'static str, err: impl fmt::Display) -> Self {
        ControlError::Internal {
            context,
            detail: err.to_string(),
        }
    }

    /// The HTTP status dockerd answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            ControlError::Rpc { code, .. } => code.http_status(),
            ControlError::InvalidArgument(_) => 400,
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) => 409,
            ControlError::NotManager
            | ControlError::NotInSwarm
            | ControlError::AlreadyInSwarm
            | ControlError::Unavailable(_) => 503,
            ControlError::Contended { .. }
            | ControlError::Store(_)
            | ControlError::Internal { .. } => 500,
        }
    }

    /// Whether this is swarmguard's own failure (worth an error log line), not the caller's.
    pub fn is_internal(&self) -> bool {
        matches!(self, ControlError::Store(_) | ControlError::Internal { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_read_as_dockerd_relays_them() {
        let e = ControlError::rpc(Code::Unknown, "update out of sequence");
        assert_eq!(e.http_status(), 500);
        assert_eq!(
            e.to_string(),
            "rpc error: code = Unknown desc = update out of sequence"
        );
        assert_eq!(
            ControlError::rpc(Code::InvalidArgument, "x").http_status(),
            400
        );
        assert_eq!(
            ControlError::rpc(Code::FailedPrecondition, "x").http_status(),
            400
        );
        assert_eq!(
            ControlError::rpc(Code::Unimplemented, "x").http_status(),
            501
        );
    }
}
