//! Where services meet the secrets domain (`secrets.rs`): which services reference a secret
//! (so `docker secret rm` refuses one in use), the guard a service write carries so a secret
//! cannot vanish under it, and a secret's value for a node that runs a task referencing it.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::error::ControlError;
use super::secrets::SecretUsers;
use super::service_spec::ServiceSpec;
use super::Control;

/// Store keys of secrets (events on them wake the Assignments streams).
pub use super::secrets::SECRET_PREFIX as SECRET_KEY_PREFIX;

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

/// Answers `docker secret rm`'s question from the service records.
struct ServiceSecretUsers;

impl SecretUsers for ServiceSecretUsers {
    fn services_using(&self, ctl: &Control, secret_id: &str) -> Result<Vec<String>, ControlError> {
        let mut names = ctl.services_using_secret(secret_id)?;
        names.sort();
        Ok(names)
    }
}

/// The IDs of the secrets a spec references.
pub fn secret_ids(spec: &ServiceSpec) -> Vec<String> {
    let mut ids: Vec<String> = spec
        .task_template
        .container_spec
        .secrets
        .iter()
        .map(|r| r.secret_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

impl Control {
    /// Makes `docker secret rm` ask the services (called once from `Control::open`).
    pub(super) fn install_secret_users(&self) {
        self.set_secret_users(Arc::new(ServiceSecretUsers));
    }

    /// Secret `id` with its value, for a node that runs a task referencing it; `None` if it
    /// no longer exists.
    pub fn secret_for_node(&self, id: &str) -> Result<Option<NodeSecret>, ControlError> {
        let Some(view) = self.secret_by_id(id)? else {
            return Ok(None);
        };
        let data = self.open_secret(id)?;
        Ok(Some(NodeSecret {
            id: view.record.id,
            version: view.version,
            name: view.record.name,
            data,
        }))
    }
}
