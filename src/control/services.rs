//! Services: what `docker service create|ls|inspect|update|scale|rollback|rm` does to the store.
//! The orchestrator (`orchestrator.rs`) turns a service into tasks.

use serde::{Deserialize, Serialize};

use super::error::{Code, ControlError};
use super::records::{self, Record, Stored};
use super::service_secrets::secret_ids;
use super::service_spec::{ServiceSpec, TaskTemplate};
use super::tasks::{TaskRecord, TaskState};
use super::{out_of_sequence, Control};
use crate::store::{Check, Op, Txn, TxnOutcome};
use crate::util::now_rfc3339;

pub const SERVICE_PREFIX: &str = "service/";

pub fn service_key(id: &str) -> String {
    format!("{SERVICE_PREFIX}{id}")
}

/// A rolling update's progress, as `docker service inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    /// `updating`, `completed`, `rollback_started`, `rollback_completed`.
    pub state: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completed_at: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// The image tasks run: the spec's, or `name:tag@sha256:…` once content trust pinned it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pinned_image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
}

impl Record for ServiceRecord {
    fn touch(&mut self) {
        self.updated_at = now_rfc3339();
    }
}

impl ServiceRecord {
    /// The template new tasks are made from (with the pinned image).
    pub fn task_template(&self) -> TaskTemplate {
        let mut t = self.spec.task_template.clone();
        if !self.pinned_image.is_empty() {
            t.container_spec.image = self.pinned_image.clone();
        }
        t
    }

    /// Whether a task runs an older template than the service asks for (replicas aside).
    pub fn is_dirty(&self, task: &TaskRecord) -> bool {
        task.spec != self.task_template()
    }
}

pub type ServiceView = Stored<ServiceRecord>;

/// `GET /services?status=true`: counts over the service's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    pub running_tasks: u64,
    pub desired_tasks: u64,
    pub completed_tasks: u64,
}

impl Control {
    pub fn services(&self) -> Result<Vec<ServiceView>, ControlError> {
        self.cluster()?;
        records::list(&self.store, SERVICE_PREFIX)
    }

    /// A service by full ID, then exact name, then unique ID prefix (dockerd's order).
    pub fn service(&self, reference: &str) -> Result<ServiceView, ControlError> {
        let not_found = || ControlError::NotFound(format!("service {reference} not found"));
        if reference.is_empty() {
            return Err(not_found());
        }
        if let Some(s) = records::get(&self.store, &service_key(reference))? {
            return Ok(s);
        }
        let all = self.services()?;
        if let Some(s) = all.iter().find(|s| s.record.spec.name == reference) {
            return Ok(s.clone());
        }
        let mut prefixed: Vec<ServiceView> = all
            .into_iter()
            .filter(|s| s.record.id.starts_with(reference))
            .collect();
        match prefixed.len() {
            1 => Ok(prefixed.remove(0)),
            0 => Err(not_found()),
            n => Err(ControlError::NotFound(format!(
                "service {reference} is ambiguous ({n} matches found)"
            ))),
        }
    }

    /// Checks that every secret a spec references exists (by ID), in dockerd's words.
    fn check_secret_refs(&self, spec: &ServiceSpec) -> Result<(), ControlError> {
        for r in &spec.task_template.container_spec.secrets {
            if self.secret_by_id(&r.secret_id)?.is_none() {
                return Err(ControlError::rpc(
                    Code::InvalidArgument,
                    format!("secret not found: {}", r.secret_name),
                ));
            }
        }
        Ok(())
    }

    pub async fn create_service(&self, mut spec: ServiceSpec) -> Result<String, ControlError> {
        self.cluster()?;
        spec.validate()?;
        self.check_secret_refs(&spec)?;
        if self
            .services()?
            .iter()
            .any(|s| s.record.spec.name == spec.name)
        {
            return Err(name_conflict(&spec.name));
        }
        let pinned_image = self
            .decide_image(&spec.name, &spec.task_template.container_spec.image)
            .await?;
        let id = swarmguard_ca::new_id();
        let now = now_rfc3339();
        let record = ServiceRecord {
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            spec,
            previous_spec: None,
            pinned_image,
            update_status: None,
        };
        // The name's uniqueness rides on a name index key, so two concurrent creates of one
        // name cannot both win.
        let name_key = service_name_key(&record.spec.name);
        let guard = self.secret_references(&secret_ids(&record.spec))?;
        let mut checks = vec![
            Check::Absent {
                key: service_key(&id),
            },
            Check::Absent {
                key: name_key.clone(),
            },
        ];
        checks.extend(guard.checks);
        let mut ops = vec![
            records::put(&service_key(&id), &record)?,
            Op::Put {
                key: name_key,
                value: id.clone().into_bytes(),
            },
        ];
        ops.extend(guard.ops);
        match self.apply(Txn { checks, ops }).await? {
            TxnOutcome::Committed { .. } => Ok(id),
            TxnOutcome::Conflict { .. } => {
                // A secret removed meanwhile, else the name was taken.
                self.check_secret_refs(&record.spec)?;
                Err(name_conflict(&record.spec.name))
            }
        }
    }

    /// `POST /services/{id}/update?version=N[&rollback=previous]`.
    pub async fn update_service(
        &self,
        reference: &str,
        version: u64,
        mut spec: ServiceSpec,
        rollback: bool,
    ) -> Result<(), ControlError> {
        let current = self.service(reference)?;
        if current.version != version {
            return Err(out_of_sequence());
        }
        let mut record = current.record;
        if rollback {
            spec = record.previous_spec.clone().ok_or_else(|| {
                ControlError::rpc(
                    Code::FailedPrecondition,
                    format!("service {} does not have a previous spec", record.id),
                )
            })?;
        }
        spec.validate()?;
        if spec.name != record.spec.name {
            return Err(ControlError::rpc(
                Code::Unimplemented,
                "renaming services is not supported",
            ));
        }
        if spec.replicas().is_some() != record.spec.replicas().is_some() {
            return Err(ControlError::rpc(
                Code::InvalidArgument,
                "service mode change is not allowed",
            ));
        }
        self.check_secret_refs(&spec)?;
        let image_changed = spec.task_template.container_spec.image
            != record.spec.task_template.container_spec.image;
        if image_changed || record.pinned_image.is_empty() {
            record.pinned_image = self
                .decide_image(&spec.name, &spec.task_template.container_spec.image)
                .await?;
        }
        let old = std::mem::replace(&mut record.spec, spec);
        let template_changed = old.task_template != record.spec.task_template;
        record.previous_spec = Some(old);
        if template_changed || rollback {
            let (state, message) = if rollback {
                ("rollback_started", "manually requested rollback")
            } else {
                ("updating", "update in progress")
            };
            record.update_status = Some(UpdateStatus {
                state: state.into(),
                started_at: now_rfc3339(),
                completed_at: String::new(),
                message: message.into(),
            });
        }
        record.touch();
        let key = service_key(&record.id);
        let guard = self.secret_references(&secret_ids(&record.spec))?;
        let mut checks = vec![Check::Version {
            key: key.clone(),
            version,
        }];
        checks.extend(guard.checks);
        let mut ops = vec![records::put(&key, &record)?];
        ops.extend(guard.ops);
        match self.apply(Txn { checks, ops }).await? {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => {
                self.check_secret_refs(&record.spec)?;
                Err(out_of_sequence())
            }
        }
    }

    /// `DELETE /services/{id}`: the record goes; the orchestrator removes its tasks.
    pub async fn remove_service(&self, reference: &str) -> Result<(), ControlError> {
        let s = self.service(reference)?;
        let txn = Txn {
            checks: vec![Check::Version {
                key: service_key(&s.record.id),
                version: s.version,
            }],
            ops: vec![
                Op::Delete {
                    key: service_key(&s.record.id),
                },
                Op::Delete {
                    key: service_name_key(&s.record.spec.name),
                },
            ],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// Running/desired/completed counts for `docker service ls`.
    pub fn service_status(
        &self,
        s: &ServiceRecord,
        tasks: &[&TaskRecord],
    ) -> Result<ServiceStatus, ControlError> {
        let running = tasks
            .iter()
            .filter(|t| t.status.state == TaskState::Running)
            .count() as u64;
        let completed = tasks
            .iter()
            .filter(|t| t.status.state == TaskState::Complete)
            .count() as u64;
        let desired = match s.spec.replicas() {
            Some(n) => n,
            None => {
                let nodes = self.nodes()?;
                let constraints = s.spec.task_template.constraints().to_vec();
                nodes
                    .iter()
                    .filter(|n| super::constraints::node_eligible(&n.record, &constraints))
                    .count() as u64
            }
        };
        Ok(ServiceStatus {
            running_tasks: running,
            desired_tasks: desired,
            completed_tasks: completed,
        })
    }

    /// The services whose spec references secret `secret_id`, by name (for `secret rm`).
    pub fn services_using_secret(&self, secret_id: &str) -> Result<Vec<String>, ControlError> {
        Ok(self
            .services()?
            .into_iter()
            .filter(|s| {
                s.record
                    .spec
                    .task_template
                    .container_spec
                    .secrets
                    .iter()
                    .any(|r| r.secret_id == secret_id)
            })
            .map(|s| s.record.spec.name)
            .collect())
    }
}

/// The key holding a service name's owner, which makes names unique in one transaction.
pub fn service_name_key(name: &str) -> String {
    format!("service-name/{name}")
}

fn name_conflict(name: &str) -> ControlError {
    ControlError::rpc(
        Code::AlreadyExists,
        format!("name conflicts with an existing object: service {name} already exists"),
    )
}
