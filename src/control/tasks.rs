//! Tasks: one record per container the swarm wants somewhere. The orchestrator creates them,
//! the scheduler assigns them to a node, the node reports their state through the dispatcher.

use serde::{Deserialize, Serialize};

use super::error::{Code, ControlError};
use super::records::{self, Record, Stored};
use super::service_spec::TaskTemplate;
use super::Control;

pub const TASK_PREFIX: &str = "task/";

pub fn task_key(id: &str) -> String {
    format!("{TASK_PREFIX}{id}")
}

/// SwarmKit's task states, in their order (a task only moves forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    /// The protobuf value (sparse, as SwarmKit's).
    pub fn wire(self) -> i32 {
        match self {
            TaskState::New => 0,
            TaskState::Pending => 64,
            TaskState::Assigned => 192,
            TaskState::Accepted => 256,
            TaskState::Preparing => 320,
            TaskState::Ready => 384,
            TaskState::Starting => 448,
            TaskState::Running => 512,
            TaskState::Complete => 576,
            TaskState::Shutdown => 640,
            TaskState::Failed => 704,
            TaskState::Rejected => 768,
            TaskState::Remove => 800,
            TaskState::Orphaned => 832,
        }
    }

    pub fn from_wire(v: i32) -> Option<TaskState> {
        use TaskState::*;
        [
            New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running, Complete,
            Shutdown, Failed, Rejected, Remove, Orphaned,
        ]
        .into_iter()
        .find(|s| s.wire() == v)
    }

    /// Past Running: the container is gone or never will run.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStatus {
    #[serde(rename = "ContainerID", default)]
    pub container_id: String,
    #[serde(rename = "PID", default)]
    pub pid: i32,
    #[serde(default)]
    pub exit_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    pub timestamp: String,
    pub state: TaskState,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
}

impl TaskStatus {
    pub fn new(state: TaskState, message: &str) -> TaskStatus {
        TaskStatus {
            timestamp: crate::util::now_rfc3339(),
            state,
            message: message.to_string(),
            err: String::new(),
            container_status: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub service_id: String,
    pub service_name: String,
    /// 1..=replicas for a replicated service; 0 for a global one (its node is its slot).
    pub slot: u64,
    /// Empty until the scheduler assigns it.
    #[serde(default)]
    pub node_id: String,
    /// The service's task template when the task was made, with the image as pinned.
    pub spec: TaskTemplate,
    pub status: TaskStatus,
    pub desired_state: TaskState,
    /// How many tasks of this slot ran before this one under the restart policy.
    #[serde(default)]
    pub attempt: u64,
    /// Unix milliseconds before which the scheduler leaves it pending (restart delay).
    #[serde(default)]
    pub not_before_ms: i64,
}

impl Record for TaskRecord {
    fn touch(&mut self) {
        self.updated_at = crate::util::now_rfc3339();
    }
}

impl TaskRecord {
    /// Wanted to run (not being shut down or removed).
    pub fn is_live(&self) -> bool {
        self.desired_state <= TaskState::Running
    }

    /// The container name dockerd gives it: `<service>.<slot>.<task>` (node ID for global).
    pub fn name(&self) -> String {
        let slot = if self.slot == 0 {
            self.node_id.clone()
        } else {
            self.slot.to_string()
        };
        format!("{}.{}.{}", self.service_name, slot, self.id)
    }
}

pub type TaskView = Stored<TaskRecord>;

/// Bounds on what a node may write into a task's status (shown by `docker service ps`).
pub const MAX_STATUS_TEXT: usize = 1024;

/// The shortest time between two status writes of one task that keep its state.
pub const STATUS_TEXT_INTERVAL_MS: i64 = 1000;

/// A status a node reported for one of its tasks.
#[derive(Debug, Clone)]
pub struct ReportedStatus {
    pub state: TaskState,
    pub message: String,
    pub err: String,
    pub container: Option<ContainerStatus>,
}

/// Keeps what a terminal prints harmless: control characters become spaces, length bounded.
pub fn clean_text(s: &str) -> String {
    s.chars()
        .take(MAX_STATUS_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Control {
    pub fn tasks(&self) -> Result<Vec<TaskView>, ControlError> {
        self.cluster()?;
        records::list(&self.store, TASK_PREFIX)
    }

    /// `GET /tasks/{id}`: the full ID or a unique prefix.
    pub fn task(&self, reference: &str) -> Result<TaskView, ControlError> {
        if let Some(t) = records::get(&self.store, &task_key(reference))? {
            return Ok(t);
        }
        let mut found: Vec<TaskView> = self
            .tasks()?
            .into_iter()
            .filter(|t| !reference.is_empty() && t.record.id.starts_with(reference))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(ControlError::NotFound(format!(
                "task {reference} not found"
            ))),
            _ => Err(ControlError::NotFound(format!(
                "task {reference} is ambiguous ({} matches found)",
                found.len()
            ))),
        }
    }

    /// A node reports a task's state. Only the node the task is assigned to may; a state never
    /// moves backwards; an unknown task is ignored (it was removed meanwhile), as in SwarmKit.
    pub async fn report_task_status(
        &self,
        node_id: &str,
        task_id: &str,
        st: ReportedStatus,
    ) -> Result<(), ControlError> {
        let Some(current) = records::get::<TaskRecord>(&self.store, &task_key(task_id))? else {
            return Ok(());
        };
        if current.record.node_id != node_id {
            return Err(ControlError::rpc(
                Code::PermissionDenied,
                "cannot update a task not assigned this node",
            ));
        }
        records::update(
            &self.store,
            &task_key(task_id),
            "task",
            |t: &mut TaskRecord| {
                if t.node_id != node_id || st.state < t.status.state {
                    return Ok(());
                }
                let (message, err) = (clean_text(&st.message), clean_text(&st.err));
                let same_state = t.status.state == st.state;
                let same = same_state
                    && t.status.message == message
                    && t.status.err == err
                    && (st.container.is_none() || t.status.container_status == st.container);
                // States only move forward, so they bound the writes; within one state a node
                // could change the text on every call and fill the Raft log: at most one such
                // write per task per STATUS_TEXT_INTERVAL_MS.
                let too_soon = same_state
                    && crate::util::unix_now_ms() - crate::util::unix_ms(&t.status.timestamp)
                        < STATUS_TEXT_INTERVAL_MS;
                if same || too_soon {
                    return Ok(());
                }
                t.status = TaskStatus {
                    timestamp: crate::util::now_rfc3339(),
                    state: st.state,
                    message,
                    err,
                    container_status: st.container.clone().or(t.status.container_status.take()),
                };
                Ok(())
            },
        )
        .await
        .map(|_| ())
    }
}
