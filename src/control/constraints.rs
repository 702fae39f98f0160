//! Placement constraints (`node.role==worker`, `node.labels.zone!=b`, …) and whether a node
//! satisfies them. Keys outside the supported set are refused at create, not left to match
//! nothing in silence.

use super::error::{Code, ControlError};
use super::records::{NodeRecord, NodeSoftware};
use super::types::{Availability, NodeState};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    NodeId,
    Hostname,
    Role,
    NodeLabel(String),
    EngineLabel(String),
    Os,
    Arch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: Key,
    equal: bool,
    value: String,
}

impl Constraint {
    /// Parses `key==value` or `key!=value` (SwarmKit's texts for a missing operator).
    pub fn parse(s: &str) -> Result<Constraint, ControlError> {
        let (k, v, equal) = if let Some((k, v)) = s.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, v, false)
        } else {
            return Err(ControlError::rpc(
                Code::Unknown,
                "constraint expected one operator from ==, !=",
            ));
        };
        let (k, value) = (k.trim(), v.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(ControlError::rpc(
                Code::Unknown,
                format!("invalid constraint value in {s:?}"),
            ));
        }
        let lower = k.to_ascii_lowercase();
        let key = match lower.as_str() {
            "node.id" => Key::NodeId,
            "node.hostname" => Key::Hostname,
            "node.role" => Key::Role,
            "node.platform.os" => Key::Os,
            "node.platform.arch" => Key::Arch,
            _ => {
                if let Some(l) = k.strip_prefix("node.labels.").filter(|l| !l.is_empty()) {
                    Key::NodeLabel(l.to_string())
                } else if let Some(l) = k.strip_prefix("engine.labels.").filter(|l| !l.is_empty()) {
                    Key::EngineLabel(l.to_string())
                } else {
                    return Err(ControlError::rpc(
                        Code::InvalidArgument,
                        format!("constraint key {k:?} is not supported: use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<name> or engine.labels.<name>"),
                    ));
                }
            }
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, n: &NodeRecord) -> bool {
        let have: Option<String> = match &self.key {
            Key::NodeId => Some(n.id.clone()),
            Key::Hostname => Some(n.description.hostname.clone()),
            Key::Role => Some(n.spec.role.as_str().to_string()),
            Key::Os => Some(n.description.platform.os.clone()),
            Key::Arch => Some(n.description.platform.architecture.clone()),
            Key::NodeLabel(l) => n.spec.labels.as_ref().and_then(|m| m.get(l).cloned()),
            Key::EngineLabel(l) => n.description.engine.labels.get(l).cloned(),
        };
        // Values compare case-insensitively, as SwarmKit's; a missing label is "not equal".
        let eq = have.is_some_and(|h| h.eq_ignore_ascii_case(&self.value));
        eq == self.equal
    }
}

/// Whether `node` satisfies every constraint (unparsable ones were refused at create).
pub fn satisfied(constraints: &[String], node: &NodeRecord) -> bool {
    constraints
        .iter()
        .all(|c| Constraint::parse(c).is_ok_and(|c| c.matches(node)))
}

/// Whether new tasks may go to `node`: a Docker engine (swarmguard managers and agents run no
/// containers), Ready, Active, and satisfying `constraints`.
pub fn node_eligible(node: &NodeRecord, constraints: &[String]) -> bool {
    node.software == NodeSoftware::Dockerd
        && node.status.state == NodeState::Ready
        && node.spec.availability == Availability::Active
        && satisfied(constraints, node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert!(Constraint::parse("node.role=worker")
            .unwrap_err()
            .to_string()
            .contains("constraint expected one operator from ==, !="));
        assert!(Constraint::parse("node.colour==red").is_err());
        let c = Constraint::parse("node.labels.zone != b").unwrap();
        assert_eq!(c.key, Key::NodeLabel("zone".into()));
        assert!(!c.equal);
    }
}
