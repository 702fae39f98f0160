//! A service's spec in the Engine API's shape (Go field names), checked once on the way in.
//!
//! Only what swarmguard carries out is modelled. Every other field the docker CLI may send is
//! caught by a flattened `extra` map and refused by name unless it holds its zero value (the CLI
//! always sends `"Init":false`, `"DNSConfig":{}`, empty `Resources`), so no setting is ever
//! silently dropped. Networks, published ports, configs and mounts are refused explicitly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Code, ControlError};
use super::image_ref::ImageRef;

/// Most replicas one service may ask for: tasks and their history live in the store.
pub const MAX_REPLICAS: u64 = 1000;
/// Bounds on the lists a spec carries (the body limit bounds the bytes).
const MAX_LIST: usize = 256;
const MAX_SECRETS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub task_template: TaskTemplate,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spec: Option<EndpointSpec>,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplate {
    pub container_spec: ContainerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub force_update: u64,
    /// `container` or absent: the only runtime there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretReference>,
    /// `default` or absent (what dockerd answers and the CLI sends back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct SecretReference {
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    #[serde(default)]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FileTarget {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "UID", default)]
    pub uid: String,
    #[serde(rename = "GID", default)]
    pub gid: String,
    #[serde(rename = "Mode", default)]
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Mode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicated: Option<Replicated>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Global>,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Replicated {
    #[serde(default)]
    pub replicas: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Global {}

/// When a task that ended is replaced (`docker service create --restart-*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `none`, `on-failure`, `any` (the default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub condition: String,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<i64>,
    /// 0: unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_attempts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfig {
    #[serde(default)]
    pub parallelism: u64,
    /// Nanoseconds between batches.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub delay: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure_action: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub monitor: i64,
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub max_failure_ratio: f64,
    /// `stop-first` (the default) or `start-first`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub order: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    #[serde(flatten, default, skip_serializing)]
    pub extra: BTreeMap<String, Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}
fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// A JSON value that says nothing: what Go sends for a field left at its zero value.
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty_value),
    }
}

/// Fields swarmguard refuses with a reason of their own.
fn unsupported_reason(path: &str) -> Option<&'static str> {
    match path {
        "Networks" | "TaskTemplate.Networks" => {
            Some("swarmguard runs tasks without overlay networks")
        }
        "EndpointSpec.Ports" => Some("swarmguard does not publish ports"),
        "TaskTemplate.ContainerSpec.Configs" => Some("swarmguard does not deliver configs"),
        "TaskTemplate.ContainerSpec.Mounts" => Some("swarmguard does not mount volumes"),
        _ => None,
    }
}

fn refuse_extra(prefix: &str, extra: &BTreeMap<String, Value>) -> Result<(), ControlError> {
    for (k, v) in extra {
        if is_empty_value(v) {
            continue;
        }
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let path: String = path.chars().take(128).collect();
        let why = unsupported_reason(&path).unwrap_or("swarmguard does not implement it");
        return Err(invalid(format!(
            "the service spec sets {path}, which swarmguard does not support ({why}); remove it"
        )));
    }
    Ok(())
}

fn invalid(desc: impl std::fmt::Display) -> ControlError {
    ControlError::rpc(Code::InvalidArgument, desc)
}

/// SwarmKit's rule for service names: a DNS name component.
fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        return Err(invalid("name must be valid as a DNS name component"));
    }
    Ok(())
}

fn check_list(what: &str, list: &[String]) -> Result<(), ControlError> {
    if list.len() > MAX_LIST {
        return Err(invalid(format!(
            "ContainerSpec: {what} has {} entries; at most {MAX_LIST} are accepted",
            list.len()
        )));
    }
    if list.iter().any(|s| s.contains('\0')) {
        return Err(invalid(format!(
            "ContainerSpec: {what} contains a NUL byte"
        )));
    }
    Ok(())
}

fn check_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<(), ControlError> {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if labels.len() > MAX_LIST || bytes > 64 * 1024 {
        return Err(invalid(format!(
            "too many {what}: at most {MAX_LIST} labels and 64 KiB are accepted"
        )));
    }
    Ok(())
}

/// A secret's file inside the container: a plain name under `/run/secrets`, or an absolute
/// path without `..`; owner and group numeric; mode at most 0777.
fn check_secret(r: &mut SecretReference) -> Result<(), ControlError> {
    if r.secret_id.is_empty() || r.secret_name.is_empty() {
        return Err(invalid(
            "malformed secret reference: SecretID and SecretName must be set",
        ));
    }
    let file = r.file.get_or_insert_with(|| FileTarget {
        name: r.secret_name.clone(),
        ..Default::default()
    });
    if file.name.is_empty() {
        file.name = r.secret_name.clone();
    }
    for (what, v) in [("UID", &mut file.uid), ("GID", &mut file.gid)] {
        if v.is_empty() {
            *v = "0".into();
        }
        if v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "secret {}: File.{what} must be a number",
                r.secret_name
            )));
        }
    }
    if file.mode == 0 {
        file.mode = 0o444;
    }
    if file.mode > 0o777 {
        return Err(invalid(format!(
            "secret {}: File.Mode {:o} is not a file permission (at most 0777)",
            r.secret_name, file.mode
        )));
    }
    let name = &file.name;
    let traversal = name.split('/').any(|c| c == ".." || c == ".");
    if name.len() > 255 || traversal || name.contains('\0') || name.ends_with('/') {
        return Err(invalid(format!(
            "secret {}: File.Name {name:?} must name a file under /run/secrets (no '..')",
            r.secret_name
        )));
    }
    Ok(())
}

impl TaskTemplate {
    /// The placement constraints (`node.role==worker`, …), none when there is no placement.
    pub fn constraints(&self) -> &[String] {
        self.placement
            .as_ref()
            .map_or(&[], |p| p.constraints.as_slice())
    }
}

impl ServiceSpec {
    /// Checks the spec and fills the defaults dockerd stores (1 replica, secret file 0/0/0444).
    pub fn validate(&mut self) -> Result<(), ControlError> {
        check_name(&self.name)?;
        check_labels("service labels", &self.labels)?;
        refuse_extra("", &self.extra)?;
        let t = &mut self.task_template;
        refuse_extra("TaskTemplate", &t.extra)?;
        if let Some(rt) = t.runtime.as_deref() {
            if !rt.is_empty() && rt != "container" {
                return Err(invalid(format!("unsupported runtime {rt:?}")));
            }
        }
        validate_container(&mut t.container_spec)?;
        if let Some(p) = &t.placement {
            refuse_extra("TaskTemplate.Placement", &p.extra)?;
            if p.constraints.len() > MAX_LIST {
                return Err(invalid("too many placement constraints"));
            }
            for c in &p.constraints {
                super::constraints::Constraint::parse(c)?;
            }
        }
        if let Some(r) = &t.restart_policy {
            if !matches!(r.condition.as_str(), "" | "none" | "on-failure" | "any") {
                return Err(invalid(format!(
                    "invalid RestartPolicy.Condition {:?}: expected none, on-failure or any",
                    r.condition
                )));
            }
            if r.delay.is_some_and(|d| d < 0) || r.window.is_some_and(|d| d < 0) {
                return Err(invalid("TaskSpec: restart-delay cannot be negative"));
            }
        }
        for (what, u) in [
            ("UpdateConfig", &self.update_config),
            ("RollbackConfig", &self.rollback_config),
        ] {
            if let Some(u) = u {
                validate_update(what, u)?;
            }
        }
        if let Some(e) = &self.endpoint_spec {
            refuse_extra("EndpointSpec", &e.extra)?;
            if !matches!(e.mode.as_str(), "" | "vip") {
                return Err(invalid(format!(
                    "the service spec sets EndpointSpec.Mode {:?}, which swarmguard does not support (it runs tasks without service discovery); remove it",
                    e.mode
                )));
            }
        }
        refuse_extra("Mode", &self.mode.extra)?;
        match (&mut self.mode.replicated, &self.mode.global) {
            (Some(_), Some(_)) => {
                return Err(invalid("service mode: choose one of replicated or global"))
            }
            (None, None) => self.mode.replicated = Some(Replicated { replicas: Some(1) }),
            (Some(r), None) => {
                let n = *r.replicas.get_or_insert(1);
                if n > MAX_REPLICAS {
                    return Err(invalid(format!(
                        "{n} replicas: swarmguard runs at most {MAX_REPLICAS} per service"
                    )));
                }
            }
            (None, Some(_)) => {}
        }
        Ok(())
    }

    /// Replicas of a replicated service, `None` for a global one.
    pub fn replicas(&self) -> Option<u64> {
        self.mode
            .replicated
            .as_ref()
            .map(|r| r.replicas.unwrap_or(1))
    }

    pub fn update_parallelism(&self) -> u64 {
        self.update_config.as_ref().map_or(1, |u| u.parallelism)
    }
}

fn validate_update(what: &str, u: &UpdateConfig) -> Result<(), ControlError> {
    if u.delay < 0 || u.monitor < 0 {
        return Err(invalid(format!("{what}: durations cannot be negative")));
    }
    if !matches!(u.order.as_str(), "" | "stop-first" | "start-first") {
        return Err(invalid(format!(
            "{what}: Order {:?} is not stop-first or start-first",
            u.order
        )));
    }
    if !matches!(
        u.failure_action.as_str(),
        "" | "pause" | "continue" | "rollback"
    ) {
        return Err(invalid(format!(
            "{what}: FailureAction {:?} is not pause, continue or rollback",
            u.failure_action
        )));
    }
    if !(0.0..=1.0).contains(&u.max_failure_ratio) {
        return Err(invalid(format!(
            "{what}: MaxFailureRatio must be between 0 and 1"
        )));
    }
    Ok(())
}

fn validate_container(c: &mut ContainerSpec) -> Result<(), ControlError> {
    refuse_extra("TaskTemplate.ContainerSpec", &c.extra)?;
    if c.image.is_empty() {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    }
    if ImageRef::parse(&c.image).is_none() {
        return Err(invalid(format!(
            "ContainerSpec: {:?} is not a valid repository/tag",
            c.image
        )));
    }
    if let Some(iso) = c.isolation.as_deref() {
        if !iso.is_empty() && iso != "default" {
            return Err(invalid(format!(
                "the service spec sets TaskTemplate.ContainerSpec.Isolation {iso:?}, which swarmguard does not support; remove it"
            )));
        }
    }
    check_labels("container labels", &c.labels)?;
    check_list("Command", &c.command)?;
    check_list("Args", &c.args)?;
    check_list("Env", &c.env)?;
    for (what, s) in [("Dir", &c.dir), ("User", &c.user)] {
        if s.len() > 4096 || s.contains('\0') {
            return Err(invalid(format!("ContainerSpec: invalid {what}")));
        }
    }
    if c.secrets.len() > MAX_SECRETS {
        return Err(invalid(format!(
            "ContainerSpec: at most {MAX_SECRETS} secrets are accepted"
        )));
    }
    let mut targets = std::collections::BTreeSet::new();
    for r in &mut c.secrets {
        check_secret(r)?;
        let name = r.file.as_ref().map(|f| f.name.clone()).unwrap_or_default();
        if !targets.insert(name.clone()) {
            return Err(invalid(format!(
                "secret reference target {name} already in use by another secret"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `docker service create --name app --secret db_pass --constraint node.role==worker`
    /// sends (facts/services.md §2.3).
    const CLI: &str = r#"{"Name":"app","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"bb:1",
 "Args":["sh","-c","cat /run/secrets/db_pass; sleep 600"],"Init":false,"DNSConfig":{},
 "Secrets":[{"File":{"Name":"db_pass","UID":"0","GID":"0","Mode":292},
   "SecretID":"rakm8bgfjrh61q0h38ntovhzz","SecretName":"db_pass"}]},
 "Resources":{"Limits":{},"Reservations":{}},"Placement":{"Constraints":["node.role==worker"]},
 "ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip"}}"#;

    fn parse(s: &str) -> Result<ServiceSpec, ControlError> {
        let mut spec: ServiceSpec = serde_json::from_str(s).unwrap();
        spec.validate().map(|_| spec)
    }

    #[test]
    fn the_clis_spec_is_accepted_and_round_trips() {
        let spec = parse(CLI).unwrap();
        assert_eq!(spec.replicas(), Some(2));
        let back: ServiceSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        // What is stored and served is what was modelled (zero-valued extras dropped).
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
        let f = spec.task_template.container_spec.secrets[0]
            .file
            .clone()
            .unwrap();
        assert_eq!((f.uid.as_str(), f.gid.as_str(), f.mode), ("0", "0", 0o444));
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let cases = [
            (r#""Networks":[{"Target":"x"}],"#, "Networks"),
            (
                r#""EndpointSpec":{"Ports":[{"TargetPort":80}]},"#,
                "EndpointSpec.Ports",
            ),
        ];
        for (field, name) in cases {
            let s = CLI.replacen(
                "\"Mode\":{\"Replicated\"",
                &format!("{field}\"Mode\":{{\"Replicated\""),
                1,
            );
            let s = if name == "EndpointSpec.Ports" {
                s.replace(r#","EndpointSpec":{"Mode":"vip"}"#, "")
            } else {
                s
            };
            let err = parse(&s).unwrap_err().to_string();
            assert!(err.contains(&format!("sets {name},")), "{name}: {err}");
        }
        for (field, name) in [
            (
                r#""Mounts":[{"Type":"bind"}]"#,
                "TaskTemplate.ContainerSpec.Mounts",
            ),
            (
                r#""Configs":[{"ConfigID":"x"}]"#,
                "TaskTemplate.ContainerSpec.Configs",
            ),
            (r#""TTY":true"#, "TaskTemplate.ContainerSpec.TTY"),
        ] {
            let s = CLI.replace(r#""Init":false"#, field);
            let err = parse(&s).unwrap_err();
            assert_eq!(err.http_status(), 400);
            assert!(err.to_string().contains(&format!("sets {name},")), "{err}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            (
                CLI.replace("\"app\"", "\"Bad_Name!\""),
                "DNS name component",
            ),
            (
                CLI.replace("bb:1", "BB:UPPER"),
                "is not a valid repository/tag",
            ),
            (
                CLI.replace("\"bb:1\"", "\"\""),
                "image reference must be provided",
            ),
            (
                CLI.replace("node.role==worker", "node.role=worker"),
                "constraint expected one operator",
            ),
            (
                CLI.replace("\"Mode\":292", "\"Mode\":4095"),
                "not a file permission",
            ),
            (
                CLI.replace(
                    "\"Name\":\"db_pass\",\"UID\"",
                    "\"Name\":\"../etc/x\",\"UID\"",
                ),
                "no '..'",
            ),
            (
                CLI.replace("\"Replicas\":2", "\"Replicas\":100000"),
                "at most 1000",
            ),
        ];
        for (s, want) in cases {
            let err = parse(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let neg = CLI.replace("\"Replicas\":2", "\"Replicas\":-1");
        assert!(serde_json::from_str::<ServiceSpec>(&neg).is_err());
    }
}
