//! What services need of the secrets domain: whether a referenced secret exists, and (for the
//! dispatcher) a secret's value for a node that runs a task referencing it.

use zeroize::Zeroizing;

use super::error::ControlError;
use super::Control;

/// Store keys of secrets (events on them wake the Assignments streams).
pub const SECRET_KEY_PREFIX: &str = "secret/";

/// A secret as a node receives it. The value is wiped on drop; never log it.
pub struct NodeSecret {
    pub id: String,
    /// Store version of the secret record: a new one is sent again.
    pub version: u64,
    pub name: String,
    pub data: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeSecret {{ id: {}, name: {}, data: <redacted> }}",
            self.id, self.name
        )
    }
}

impl Control {
    /// Whether secret `id` exists.
    pub fn secret_exists(&self, id: &str) -> Result<bool, ControlError> {
        Ok(self
            .store
            .get(&format!("{SECRET_KEY_PREFIX}{id}"))
            .is_some())
    }

    /// Secret `id` with its value, for a node that runs a task referencing it; `None` if it
    /// no longer exists. (Until the secrets domain lands on this branch, no value can be
    /// opened: tasks referencing secrets get none.)
    pub fn secret_for_node(&self, _id: &str) -> Result<Option<NodeSecret>, ControlError> {
        Ok(None)
    }
}
