//! Engine API handlers: translate HTTP to control-layer calls and records to Docker JSON.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::request::{bool_value, json_body, parse_bool, parse_version};
use super::types as api;
use super::API_VERSION;
use crate::control::filters::Filters;
use crate::control::managers::ManagerState;
use crate::control::records::{CertState, ClusterRecord, NodeRecord};
use crate::control::swarm::InitOptions;
use crate::control::types::{Availability, NodeSpec, Role};
use crate::control::{ClusterPort, ClusterView, Control, ControlError, NodeView, Rotate};

type Ctl = State<Arc<Control>>;
type Q = Query<HashMap<String, String>>;
type Body = Result<Bytes, BytesRejection>;

pub async fn ping(State(ctl): Ctl, method: Method) -> Response {
    let mut headers = HeaderMap::new();
    let h = |v: &'static str| HeaderValue::from_static(v);
    headers.insert("Api-Version", h(API_VERSION));
    headers.insert("Ostype", h("linux"));
    headers.insert("Docker-Experimental", h("false"));
    headers.insert(
        "Swarm",
        h(if ctl.local_node_id().is_some() {
            "active/manager"
        } else {
            "inactive"
        }),
    );
    headers.insert(
        header::CACHE_CONTROL,
        h("no-cache, no-store, must-revalidate"),
    );
    headers.insert(header::PRAGMA, h("no-cache"));
    headers.insert(header::CONTENT_TYPE, h("text/plain; charset=utf-8"));
    if method == Method::HEAD {
        (StatusCode::OK, headers).into_response()
    } else {
        (StatusCode::OK, headers, "OK").into_response()
    }
}

pub async fn version() -> Json<serde_json::Value> {
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "swarmguard"},
        "Components": [{"Name": "swarmguard", "Version": v, "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": super::MIN_API_VERSION}}],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": super::MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": std::env::consts::OS,
        "Arch": go_arch(),
        "KernelVersion": crate::host::kernel_version(),
        "BuildTime": "",
    }))
}

pub async fn info(State(ctl): Ctl) -> Result<Json<serde_json::Value>, ApiError> {
    let swarm = swarm_info(&ctl)?;
    let mut body = info_body(&ctl.config().data_dir, swarm);
    // `docker info` prints these as WARNING lines: the one place the CLI shows staleness.
    if let Ok(crate::control::managers::Freshness::Stale(why)) = ctl.read_freshness().await {
        // dockerd's warnings carry their own "WARNING: " prefix; the CLI prints them as-is.
        body["Warnings"] = json!([format!("WARNING: {why}")]);
    }
    Ok(Json(body))
}

/// `/info` around a `Swarm` section (also what a locked manager answers).
pub fn info_body(data_dir: &std::path::Path, swarm: api::SwarmInfo) -> serde_json::Value {
    json!({
        "ID": swarm.node_id,
        "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0,
        "Images": 0,
        "Driver": "",
        "DriverStatus": null,
        "Plugins": {"Volume": null, "Network": null, "Authorization": null, "Log": null},
        "MemoryLimit": false, "SwapLimit": false,
        "IPv4Forwarding": false,
        "Debug": false,
        "NFd": 0, "NGoroutines": 0,
        "SystemTime": crate::control::now_rfc3339(),
        "LoggingDriver": "",
        "CgroupDriver": "",
        "NEventsListener": 0,
        "KernelVersion": crate::host::kernel_version(),
        "OperatingSystem": "swarmguard",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "",
        "RegistryConfig": null,
        "NCPU": crate::host::cpus(),
        "MemTotal": crate::host::memory_bytes(),
        "DockerRootDir": data_dir.display().to_string(),
        "Name": crate::host::hostname(),
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": format!("swarmguard-{}", env!("CARGO_PKG_VERSION")),
        "Runtimes": {},
        "DefaultRuntime": "",
        "Swarm": swarm,
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": null,
    })
}

fn swarm_info(ctl: &Control) -> Result<api::SwarmInfo, ApiError> {
    let Some(node_id) = ctl.local_node_id() else {
        return Ok(api::SwarmInfo {
            local_node_state: "inactive".into(),
            ..Default::default()
        });
    };
    let cluster = ctl.cluster()?;
    let nodes = ctl.nodes()?;
    let me = nodes.iter().find(|n| n.record.id == node_id);
    let managers: Vec<api::Peer> = nodes
        .iter()
        .filter_map(|n| {
            n.record.manager_addr.as_ref().map(|addr| api::Peer {
                node_id: n.record.id.clone(),
                addr: addr.clone(),
            })
        })
        .collect();
    Ok(api::SwarmInfo {
        node_id: node_id.clone(),
        node_addr: me.map(|n| n.record.status.addr.clone()).unwrap_or_default(),
        local_node_state: "active".into(),
        control_available: true,
        error: String::new(),
        nodes: nodes.len(),
        managers: managers.len(),
        remote_managers: Some(managers),
        cluster: Some(cluster_info(ctl, &cluster)),
    })
}

fn cluster_info(ctl: &Control, view: &ClusterView) -> api::ClusterInfo {
    let r: &ClusterRecord = &view.record;
    let mut spec = r.spec.clone();
    // Signing material never leaves the manager.
    spec.ca_config.signing_ca_cert.clear();
    spec.ca_config.signing_ca_key.clear();
    api::ClusterInfo {
        id: r.id.clone(),
        version: api::Version {
            index: view.version,
        },
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        spec,
        tls_info: ctl
            .security()
            .current()
            .map(|m| m.tls_info())
            .unwrap_or_default(),
        root_rotation_in_progress: r.root_rotation.is_some(),
        default_addr_pool: r.default_addr_pool.clone(),
        subnet_size: r.subnet_size,
        data_path_port: r.data_path_port,
    }
}

pub async fn swarm_inspect(State(ctl): Ctl) -> Result<Json<api::Swarm>, ApiError> {
    let view = ctl.cluster()?;
    Ok(Json(api::Swarm {
        cluster: cluster_info(&ctl, &view),
        join_tokens: api::JoinTokens {
            worker: view.record.join_tokens.worker.clone(),
            manager: view.record.join_tokens.manager.clone(),
        },
    }))
}

/// `POST /swarm/join`: this manager joins a swarm as a manager (see `grpc::join`).
pub async fn swarm_join(State(ctl): Ctl, body: Body) -> Result<StatusCode, ApiError> {
    let req: api::JoinRequest = json_body(body)?;
    let mut port = ctl.watch_cluster_port();
    let opts = crate::grpc::join::JoinOptions {
        listen_addr: req.listen_addr,
        advertise_addr: req.advertise_addr,
        remote_addrs: req.remote_addrs,
        join_token: req.join_token,
    };
    crate::grpc::join::join_as_manager(ctl.clone(), opts).await?;
    // The CLI reads /info next and prints "joined as a manager" from ControlAvailable.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        port.wait_for(|s| *s != ClusterPort::Stopped),
    )
    .await;
    Ok(StatusCode::OK)
}

pub async fn swarm_init(State(ctl): Ctl, body: Body) -> Result<Json<String>, ApiError> {
    let req: api::InitRequest = json_body(body)?;
    let mut port = ctl.watch_cluster_port();
    let node_id = ctl.init(&init_options(req)).await?;
    // Answer once workers can reach the cluster port (as dockerd does), or say why they cannot.
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        port.wait_for(|s| *s != ClusterPort::Stopped),
    )
    .await;
    match waited.as_ref().map(|r| r.as_deref().cloned()) {
        Ok(Ok(ClusterPort::Failed(why))) => Err(ControlError::internal(
            "the swarm was initialized but its cluster port cannot serve",
            format!(
                "node {node_id}: {why}; run `docker swarm leave --force` and init again with another --listen-addr"
            ),
        )
        .into()),
        Ok(Ok(_)) => Ok(Json(node_id)),
        _ => Err(ControlError::internal(
            "the swarm was initialized but its cluster port did not start within 10 s",
            format!("node {node_id}"),
        )
        .into()),
    }
}

pub async fn swarm_update(
    State(ctl): Ctl,
    Query(q): Q,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let version = parse_version("swarm", q.get("version"))?;
    let rotate = Rotate {
        worker_token: parse_bool("rotateWorkerToken", q.get("rotateWorkerToken"))?,
        manager_token: parse_bool("rotateManagerToken", q.get("rotateManagerToken"))?,
        manager_unlock_key: parse_bool("rotateManagerUnlockKey", q.get("rotateManagerUnlockKey"))?,
    };
    let spec: api::Spec = json_body(body)?;
    ctl.update_swarm(version, &spec, rotate).await?;
    Ok(StatusCode::OK)
}

pub async fn swarm_leave(State(ctl): Ctl, Query(q): Q) -> Result<StatusCode, ApiError> {
    ctl.leave(bool_value(q.get("force"))).await?;
    Ok(StatusCode::OK)
}

pub async fn swarm_unlock_key(State(ctl): Ctl) -> Result<Json<serde_json::Value>, ApiError> {
    let key = ctl.unlock_key()?;
    Ok(Json(
        json!({ "UnlockKey": key.as_deref().map(String::as_str).unwrap_or("") }),
    ))
}

pub async fn swarm_unlock(State(ctl): Ctl, body: Body) -> Result<StatusCode, ApiError> {
    let _: serde_json::Value = json_body(body)?;
    if ctl.local_node_id().is_none() {
        return Err(ControlError::NotManager.into());
    }
    Err(ControlError::Conflict("swarm is not locked".into()).into())
}

pub async fn node_list(State(ctl): Ctl, Query(q): Q) -> Result<Json<Vec<api::Node>>, ApiError> {
    let filters = Filters::parse(q.get("filters").map(String::as_str), Filters::NODE_KEYS)?;
    filters.validate_nodes()?;
    let states = ctl.manager_states().await;
    let nodes = ctl
        .nodes()?
        .into_iter()
        .filter(|n| filters.matches_node(&n.record))
        .map(|n| node_json(&n, &states))
        .collect();
    Ok(Json(nodes))
}

pub async fn node_inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> Result<Json<api::Node>, ApiError> {
    let node = ctl.node(&id)?;
    Ok(Json(node_json(&node, &ctl.manager_states().await)))
}

pub async fn node_update(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let version = parse_version("node", q.get("version"))?;
    let body: api::NodeSpecBody = json_body(body)?;
    let spec = NodeSpec {
        name: body.name,
        labels: body.labels,
        role: Role::parse(&body.role)?,
        availability: Availability::parse(&body.availability)?,
    };
    ctl.update_node(&id, version, spec).await?;
    Ok(StatusCode::OK)
}

pub async fn node_remove(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<StatusCode, ApiError> {
    ctl.remove_node(&id, bool_value(q.get("force"))).await?;
    Ok(StatusCode::OK)
}

fn node_json(view: &NodeView, states: &BTreeMap<String, ManagerState>) -> api::Node {
    let r: &NodeRecord = &view.record;
    api::Node {
        id: r.id.clone(),
        version: api::Version {
            index: view.version,
        },
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
        spec: r.spec.clone(),
        description: r.description.clone(),
        status: node_status(r),
        manager_status: r.manager_addr.as_ref().map(|addr| {
            let state = states.get(&r.id);
            api::ManagerStatus {
                leader: state.is_some_and(|s| s.leader),
                reachability: if state.is_some_and(|s| s.reachable) {
                    "reachable"
                } else {
                    "unreachable"
                }
                .into(),
                addr: addr.clone(),
            }
        }),
    }
}

/// The node's status, with why its certificate waits or failed (an external CA unreachable,
/// cfssl's refusal) as the message `docker node inspect` shows, when nothing else is said.
fn node_status(r: &NodeRecord) -> crate::control::types::NodeStatus {
    let mut status = r.status.clone();
    let cert = &r.certificate;
    let waiting = cert.state.needs_signing() || cert.state == CertState::Failed;
    if status.message.is_empty() && waiting && !cert.err.is_empty() {
        let state = if cert.state == CertState::Failed {
            "failed"
        } else {
            "pending"
        };
        status.message = format!("certificate {state}: {}", cert.err);
    }
    status
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Engine API's init body as the control layer takes it.
fn init_options(req: api::InitRequest) -> InitOptions {
    InitOptions {
        listen_addr: req.listen_addr,
        advertise_addr: req.advertise_addr,
        data_path_port: req.data_path_port,
        force_new_cluster: req.force_new_cluster,
        spec: req.spec,
        auto_lock_managers: req.auto_lock_managers,
        availability: req.availability,
        default_addr_pool: req.default_addr_pool,
        subnet_size: req.subnet_size,
    }
}
