//! Errors of the control layer, shaped as Docker reports them.
//!
//! dockerd passes SwarmKit's gRPC errors through as `rpc error: code = X desc = Y` and maps the
//! code to an HTTP status; its own daemon-level errors are plain text. The docker CLI prints both
//! verbatim, so users of swarmguard see the texts they already know.

use std::fmt;

/// The gRPC status codes the control layer uses (more join as the gRPC services land).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    FailedPrecondition,
    Unimplemented,
    Unknown,
}

impl Code {
    fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "InvalidArgument",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Unimplemented => "Unimplemented",
            Code::Unknown => "Unknown",
        }
    }

    /// dockerd's gRPC → HTTP mapping (`httpstatus`).
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            Code::Unimplemented => 501,
            Code::Unknown => 500,
        }
    }
}

/// An error answer: HTTP status plus the message the CLI prints after
/// `Error response from daemon: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub status: u16,
    pub message: String,
}

impl ControlError {
    /// A SwarmKit-originated error, worded as dockerd relays it.
    pub fn rpc(code: Code, desc: impl fmt::Display) -> Self {
        ControlError {
            status: code.http_status(),
            message: format!("rpc error: code = {} desc = {desc}", code.name()),
        }
    }

    /// A daemon-level error with a plain message.
    pub fn plain(status: u16, message: impl Into<String>) -> Self {
        ControlError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::plain(404, message)
    }

    /// A failure of swarmguard itself (store, disk). The detail goes to the log; the client gets
    /// a message that says where to look, never internal state.
    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        tracing::error!(%err, "{context}");
        Self::plain(
            500,
            format!("{context}: {err} (see the swarmguard manager log for details)"),
        )
    }

    pub fn no_manager() -> Self {
        Self::plain(
            503,
            "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
        )
    }

    pub fn not_in_swarm() -> Self {
        Self::plain(503, "This node is not part of a swarm")
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ControlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_read_as_dockerd_relays_them() {
        let e = ControlError::rpc(Code::Unknown, "update out of sequence");
        assert_eq!(e.status, 500);
        assert_eq!(
            e.message,
            "rpc error: code = Unknown desc = update out of sequence"
        );
        assert_eq!(ControlError::rpc(Code::InvalidArgument, "x").status, 400);
        assert_eq!(ControlError::rpc(Code::FailedPrecondition, "x").status, 400);
        assert_eq!(ControlError::rpc(Code::Unimplemented, "x").status, 501);
    }
}
