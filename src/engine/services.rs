//! Engine API handlers for services and tasks (`docker service …`, `GET /tasks`), in dockerd
//! 20.10's JSON shapes (facts/services.md §2.4–2.5).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::{bool_value, json_body, parse_bool, parse_since, parse_version};
use crate::control::filters::Filters;
use crate::control::service_spec::{RestartPolicy, ServiceSpec, UpdateConfig};
use crate::control::services::{ServiceRecord, ServiceView};
use crate::control::tasks::{TaskRecord, TaskView};
use crate::control::{Control, ControlError};

type Ctl = State<Arc<Control>>;
type Q = Query<HashMap<String, String>>;
type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

pub const SERVICE_FILTERS: &[&str] = &["id", "label", "mode", "name"];
pub const TASK_FILTERS: &[&str] = &[
    "_up-to-date",
    "desired-state",
    "id",
    "label",
    "name",
    "node",
    "service",
];

/// What `insertDefaults=true` fills in, as dockerd does for `docker service inspect`.
fn with_defaults(mut spec: ServiceSpec) -> ServiceSpec {
    let t = &mut spec.task_template;
    t.restart_policy.get_or_insert(RestartPolicy {
        condition: "any".into(),
        delay: Some(5_000_000_000),
        max_attempts: 0,
        window: None,
    });
    let update = || UpdateConfig {
        parallelism: 1,
        delay: 0,
        failure_action: "pause".into(),
        monitor: 5_000_000_000,
        max_failure_ratio: 0.0,
        order: "stop-first".into(),
    };
    spec.update_config.get_or_insert_with(update);
    spec.rollback_config.get_or_insert_with(update);
    spec
}

fn service_json(v: &ServiceView, defaults: bool, status: Option<Value>) -> Value {
    let r: &ServiceRecord = &v.record;
    let spec = if defaults {
        with_defaults(r.spec.clone())
    } else {
        r.spec.clone()
    };
    let mut out = json!({
        "ID": r.id,
        "Version": {"Index": v.version},
        "CreatedAt": r.created_at,
        "UpdatedAt": r.updated_at,
        "Spec": spec,
        "Endpoint": {"Spec": {}},
    });
    if let Some(p) = &r.previous_spec {
        out["PreviousSpec"] = json!(p);
    }
    if let Some(u) = &r.update_status {
        out["UpdateStatus"] = json!(u);
    }
    if let Some(s) = status {
        out["ServiceStatus"] = s;
    }
    out
}

fn task_json(v: &TaskView) -> Value {
    let r: &TaskRecord = &v.record;
    let mut status = json!(r.status);
    status["PortStatus"] = json!({});
    let mut out = json!({
        "ID": r.id,
        "Version": {"Index": v.version},
        "CreatedAt": r.created_at,
        "UpdatedAt": r.updated_at,
        "Labels": {},
        "Spec": r.spec,
        "ServiceID": r.service_id,
        "Status": status,
        "DesiredState": r.desired_state,
    });
    if r.slot != 0 {
        out["Slot"] = json!(r.slot);
    }
    if !r.node_id.is_empty() {
        out["NodeID"] = json!(r.node_id);
    }
    out
}

pub async fn service_list(State(ctl): Ctl, Query(q): Q) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), SERVICE_FILTERS)?;
    let with_status = parse_bool("status", q.get("status"))?;
    let services = ctl.services()?;
    let tasks = if with_status { ctl.tasks()? } else { vec![] };
    let mut out = Vec::new();
    for s in services
        .iter()
        .filter(|s| filters.matches_service(&s.record))
    {
        let status = if with_status {
            let mine: Vec<&TaskRecord> = tasks
                .iter()
                .map(|t| &t.record)
                .filter(|t| t.service_id == s.record.id)
                .collect();
            Some(json!(ctl.service_status(&s.record, &mine)?))
        } else {
            None
        };
        out.push(service_json(s, false, status));
    }
    Ok(Json(out))
}

pub async fn service_create(State(ctl): Ctl, body: Body) -> Result<Response, ApiError> {
    let spec: ServiceSpec = json_body(body)?;
    let id = ctl.create_service(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"ID": id, "Warnings": null})),
    )
        .into_response())
}

pub async fn service_inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Json<Value>, ApiError> {
    let defaults = parse_bool("insertDefaults", q.get("insertDefaults"))?;
    let s = ctl.service(&id)?;
    Ok(Json(service_json(&s, defaults, None)))
}

pub async fn service_update(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let version = parse_version("service", q.get("version"))?;
    let rollback = match q.get("rollback").map(String::as_str) {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid rollback value {other:?}: only \"previous\" is supported"
            )))
        }
    };
    let spec: ServiceSpec = json_body(body)?;
    ctl.update_service(&id, version, spec, rollback).await?;
    Ok(Json(json!({"Warnings": null})))
}

pub async fn service_remove(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctl.remove_service(&id).await?;
    Ok(StatusCode::OK)
}

pub async fn task_list(State(ctl): Ctl, Query(q): Q) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), TASK_FILTERS)?;
    let services = ctl.services()?;
    let wanted_services = filters.values_of("service").map(|vals| {
        vals.iter()
            .filter_map(|v| ctl.service(v).ok().map(|s| s.record.id))
            .collect::<Vec<_>>()
    });
    let up_to_date = filters
        .values_of("_up-to-date")
        .is_some_and(|v| v.iter().any(|x| bool_value(Some(x))));
    let by_id: HashMap<&str, &ServiceRecord> = services
        .iter()
        .map(|s| (s.record.id.as_str(), &s.record))
        .collect();
    let tasks = ctl
        .tasks()?
        .into_iter()
        .filter(|t| {
            let r = &t.record;
            wanted_services
                .as_ref()
                .is_none_or(|ids| ids.contains(&r.service_id))
                && (!up_to_date
                    || by_id
                        .get(r.service_id.as_str())
                        .is_some_and(|s| !s.is_dirty(r)))
                && filters.matches_task(r)
        })
        .map(|t| task_json(&t))
        .collect();
    Ok(Json(tasks))
}

pub async fn task_inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = ctl.task(&id)?;
    Ok(Json(task_json(&t)))
}

/// `GET /distribution/{name}/json`, which the CLI calls to pin a digest: for a repository
/// content trust covers, the verified signed digest; for others a 404 (the CLI then warns and
/// sends the tag, and nothing is pinned).
pub async fn distribution(
    State(ctl): Ctl,
    Path(rest): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(name) = rest.strip_suffix("/json") else {
        return Err(ApiError::NotServed {
            method: "GET".into(),
            path: format!("/distribution/{rest}"),
        });
    };
    match ctl.distribution(name).await {
        Some(Ok(r)) => Ok(Json(json!({
            "Descriptor": {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": r.digest,
                "size": r.size,
            },
            "Platforms": [],
        }))),
        Some(Err(e)) => Err(e.into()),
        None => Err(ControlError::NotFound(format!(
            "swarmguard resolves digests only through content trust, and {name} is not under a --require-signed prefix"
        ))
        .into()),
    }
}

/// How long a non-follow `service logs` waits for the nodes to finish.
const LOGS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Ends the subscription when the reader goes (end of stream or client hang-up).
struct EndOnDrop(Arc<Control>, String);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end_logs(&self.1);
    }
}

/// One stdcopy frame: `[stream, 0, 0, 0, len (u32 BE)]` then the payload.
fn frame(stream: u8, payload: &[u8]) -> axum::body::Bytes {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

fn rfc3339_nano(ns: i128) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// `GET /services/{id}/logs`: the tasks' lines as multiplexed frames (dockerd's format, with
/// `details` attributes and `timestamps` as asked); nodes that cannot answer end the stream
/// with SwarmKit's "incomplete log stream" error frame.
pub async fn service_logs(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    use crate::control::logs::{LogEvent, Subscription};
    use crate::control::tasks::TaskState;
    let s = ctl.service(&id)?;
    let flag = |k: &str| parse_bool(k, q.get(k));
    let (stdout, stderr, follow) = (flag("stdout")?, flag("stderr")?, flag("follow")?);
    let (timestamps, details) = (flag("timestamps")?, flag("details")?);
    if !stdout && !stderr {
        return Err(ApiError::BadRequest(
            "Bad parameters: you must choose at least one stream".into(),
        ));
    }
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("" | "all") => 0,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n >= 0 => -(n.saturating_add(1)),
            Ok(_) => {
                return Err(ApiError::BadRequest(
                    "negative tail values not supported".into(),
                ))
            }
            Err(_) => return Err(ApiError::BadRequest(format!("invalid tail value {n:?}"))),
        },
    };
    let since_ns = parse_since(q.get("since"))?;
    let nodes = ctl
        .tasks()?
        .into_iter()
        .map(|t| t.record)
        .filter(|t| t.service_id == s.record.id && !t.node_id.is_empty())
        .filter(|t| follow || t.status.state >= TaskState::Running)
        .map(|t| t.node_id)
        .collect();
    let request = Subscription {
        id: String::new(),
        service_ids: vec![s.record.id.clone()],
        follow,
        tail,
        since_ns,
        stdout,
        stderr,
        close: false,
    };
    let (sub_id, mut rx) = ctl.subscribe_logs(request, nodes)?;
    let guard = EndOnDrop(ctl.clone(), sub_id);
    let (tx, body_rx) =
        tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        let _guard = guard;
        let mut warnings = Vec::new();
        // Without follow, a node that never closes cannot hold the reader forever.
        let deadline = tokio::time::Instant::now() + LOGS_DEADLINE;
        loop {
            let ev = if follow {
                rx.recv().await
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        warnings.push("some nodes did not finish sending logs in time".into());
                        None
                    }
                }
            };
            let Some(ev) = ev else { break };
            let bytes = match ev {
                LogEvent::Warning(w) => {
                    warnings.push(w);
                    continue;
                }
                // The node filters by `since` itself; a line it sends anyway is not shown.
                LogEvent::Line { timestamp_ns, .. }
                    if since_ns.is_some_and(|s| timestamp_ns < s) =>
                {
                    continue;
                }
                LogEvent::Line {
                    node_id,
                    service_id,
                    task_id,
                    timestamp_ns,
                    stderr,
                    data,
                } => {
                    let mut p = Vec::new();
                    if timestamps {
                        p.extend_from_slice(rfc3339_nano(timestamp_ns).as_bytes());
                        p.push(b' ');
                    }
                    if details {
                        p.extend_from_slice(format!(
                            "com.docker.swarm.node.id={node_id},com.docker.swarm.service.id={service_id},com.docker.swarm.task.id={task_id} "
                        ).as_bytes());
                    }
                    p.extend_from_slice(&data);
                    frame(if stderr { 2 } else { 1 }, &p)
                }
            };
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
        if !warnings.is_empty() {
            let text = format!(
                "Error grabbing logs: rpc error: code = Unknown desc = warning: incomplete log stream. some logs could not be retrieved for the following reasons: {}\n",
                warnings.join(", ")
            );
            let _ = tx.send(Ok(frame(3, text.as_bytes()))).await;
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body_rx));
    Ok((StatusCode::OK, body).into_response())
}
