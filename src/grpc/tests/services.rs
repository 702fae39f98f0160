//! Assignments and task status with hostile or curious nodes: a node sees only its own tasks
//! and only the secrets they need; it cannot report status for another node's task.

use super::*;
use crate::control::secrets::SecretSpec;
use crate::control::service_spec::ServiceSpec;

async fn first_message<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a message within 5 s")
        .expect("no error")
        .expect("stream open")
}

/// A stock-dockerd-like node in session: its credentials, session ID and session stream.
async fn node(
    env: &Env,
    host: &str,
) -> (Credentials, String, tonic::Streaming<pb::SessionMessage>) {
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut s = open_session(env, &creds, described(host, "20.10.24"))
        .await
        .unwrap();
    let id = first_message(&mut s).await.session_id;
    (creds, id, s)
}

async fn assignments(env: &Env, creds: &Credentials, session: &str) -> pb::AssignmentsMessage {
    let mut stream = env
        .dispatcher(Some(creds))
        .await
        .assignments(pb::AssignmentsRequest {
            session_id: session.into(),
        })
        .await
        .unwrap()
        .into_inner();
    first_message(&mut stream).await
}

fn secret_ids(m: &pb::AssignmentsMessage) -> Vec<String> {
    m.changes
        .iter()
        .filter_map(|c| match c.assignment.as_ref()?.item.as_ref()? {
            pb::assignment::Item::Secret(s) => Some(s.id.clone()),
            _ => None,
        })
        .collect()
}

fn task_ids(m: &pb::AssignmentsMessage) -> Vec<String> {
    m.changes
        .iter()
        .filter_map(|c| match c.assignment.as_ref()?.item.as_ref()? {
            pb::assignment::Item::Task(t) => Some(t.id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_only_its_tasks_and_their_secrets_and_reports_only_its_own() {
    let env = Env::new().await;
    let (a, a_session, _a_stream) = node(&env, "a").await;
    let (b, b_session, _b_stream) = node(&env, "b").await;
    let secret_id = env
        .control
        .create_secret(SecretSpec {
            name: "db_pass".into(),
            data: Some(zeroize::Zeroizing::new(b"s3cr3t".to_vec())),
            ..Default::default()
        })
        .await
        .unwrap();
    let spec = format!(
        r#"{{"Name":"app","TaskTemplate":{{"ContainerSpec":{{"Image":"bb:1","Secrets":[{{"SecretID":"{secret_id}","SecretName":"db_pass"}}]}},"Placement":{{"Constraints":["node.id=={}"]}}}},"Mode":{{"Replicated":{{"Replicas":1}}}}}}"#,
        a.node_id
    );
    let spec: ServiceSpec = serde_json::from_str(&spec).unwrap();
    env.control.create_service(spec).await.unwrap();
    env.control.orchestrate().await.unwrap();
    let tasks = env.control.tasks().unwrap();
    assert_eq!(tasks.len(), 1);
    let task = tasks[0].record.clone();
    assert_eq!(task.node_id, a.node_id, "the constraint placed it on a");

    // a: the secret, then the task, in the COMPLETE set; the value travels inside mTLS.
    let m = assignments(&env, &a, &a_session).await;
    assert_eq!(m.r#type, pb::assignments_message::Type::Complete as i32);
    assert_eq!(secret_ids(&m), std::slice::from_ref(&secret_id));
    assert_eq!(task_ids(&m), std::slice::from_ref(&task.id));
    let first_is_secret = matches!(
        m.changes[0].assignment.as_ref().unwrap().item,
        Some(pb::assignment::Item::Secret(_))
    );
    assert!(first_is_secret, "the secret comes before the task");
    // b: nothing, neither task nor secret.
    let m = assignments(&env, &b, &b_session).await;
    assert!(m.changes.is_empty(), "{:?}", m.changes);

    // b reporting a's task: PermissionDenied, and the task is unchanged.
    let report = |session: &str, state: i32| pb::UpdateTaskStatusRequest {
        session_id: session.into(),
        updates: vec![pb::update_task_status_request::TaskStatusUpdate {
            task_id: task.id.clone(),
            status: Some(pb::TaskStatus {
                state,
                message: "started".into(),
                ..Default::default()
            }),
        }],
    };
    let running = crate::control::tasks::TaskState::Running.wire();
    let e = env
        .dispatcher(Some(&b))
        .await
        .update_task_status(report(&b_session, running))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        env.control.task(&task.id).unwrap().record.status.state,
        crate::control::tasks::TaskState::Assigned
    );
    // An unknown state is refused; a's own report moves the task; a later older state is
    // ignored (states only move forward).
    let e = env
        .dispatcher(Some(&a))
        .await
        .update_task_status(report(&a_session, 513))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut d = env.dispatcher(Some(&a)).await;
    d.update_task_status(report(&a_session, running))
        .await
        .unwrap();
    let preparing = crate::control::tasks::TaskState::Preparing.wire();
    d.update_task_status(report(&a_session, preparing))
        .await
        .unwrap();
    let t = env.control.task(&task.id).unwrap().record;
    assert_eq!(t.status.state, crate::control::tasks::TaskState::Running);
    // A node changing only the text, call after call, writes at most once per interval.
    let before = env.control.task(&task.id).unwrap().version;
    for i in 0..50 {
        let mut r = report(&a_session, running);
        r.updates[0].status.as_mut().unwrap().message = format!("flood {i}");
        d.update_task_status(r).await.unwrap();
    }
    let t = env.control.task(&task.id).unwrap();
    assert_eq!(
        t.version, before,
        "text-only updates within the interval are not written"
    );
    assert_eq!(t.record.status.message, "started");
    // After the interval a text change is written, and terminal escapes are stored harmless.
    tokio::time::sleep(std::time::Duration::from_millis(
        crate::control::tasks::STATUS_TEXT_INTERVAL_MS as u64 + 100,
    ))
    .await;
    let mut r = report(&a_session, running);
    r.updates[0].status.as_mut().unwrap().err = "\u{1b}[2Jboom".into();
    d.update_task_status(r).await.unwrap();
    let t = env.control.task(&task.id).unwrap().record;
    assert_eq!(
        t.status.err, " [2Jboom",
        "written, with the escape replaced"
    );
}

fn live_on(env: &Env, service: &str) -> Vec<String> {
    let id = env.control.service(service).unwrap().record.id;
    let mut nodes: Vec<String> = env
        .control
        .tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.record)
        .filter(|t| t.service_id == id && t.is_live())
        .map(|t| t.node_id)
        .collect();
    nodes.sort();
    nodes
}

async fn create(env: &Env, json: &str) {
    let spec: ServiceSpec = serde_json::from_str(json).unwrap();
    env.control.create_service(spec).await.unwrap();
    env.control.orchestrate().await.unwrap();
}

/// Spread, a Down node's tasks moved, drain, global mode, restart policy and bounded history,
/// driven through the orchestrator and scheduler passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_spreads_moves_drains_restarts_and_trims_history() {
    use crate::control::tasks::TaskState;
    use crate::control::types::Availability;
    let env = Env::new().await;
    let (a, _sa, _a) = node(&env, "a").await;
    let (b, _sb, _b) = node(&env, "b").await;
    let mut both = vec![a.node_id.clone(), b.node_id.clone()];
    both.sort();
    create(&env, r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}},"Mode":{"Replicated":{"Replicas":2}}}"#).await;
    assert_eq!(live_on(&env, "web"), both, "one task per node");
    create(&env, r#"{"Name":"agent","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}},"Mode":{"Global":{}}}"#).await;
    assert_eq!(live_on(&env, "agent"), both, "global: one per node");

    // b goes Down: its replicated task moves to a; the global one is not replaced.
    env.control
        .node_down(
            &b.node_id,
            &env.control.local_node_id().unwrap(),
            "heartbeat failure",
        )
        .await
        .unwrap();
    env.control.orchestrate().await.unwrap();
    env.control.orchestrate().await.unwrap();
    assert_eq!(live_on(&env, "web"), [a.node_id.clone(), a.node_id.clone()]);
    assert_eq!(live_on(&env, "agent"), std::slice::from_ref(&a.node_id));

    // Drain a: nothing is eligible; the replacements wait with the reason.
    let v = env.control.node(&a.node_id).unwrap();
    let mut spec = v.record.spec.clone();
    spec.availability = Availability::Drain;
    env.control
        .update_node(&a.node_id, v.version, spec)
        .await
        .unwrap();
    env.control.orchestrate().await.unwrap();
    env.control.orchestrate().await.unwrap();
    let web = env.control.service("web").unwrap().record.id;
    let pending: Vec<_> = env
        .control
        .tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.record)
        .filter(|t| t.service_id == web && t.is_live())
        .collect();
    assert_eq!(pending.len(), 2);
    for t in &pending {
        assert_eq!(t.status.state, TaskState::Pending);
        assert!(
            t.status.err.starts_with("no suitable node ("),
            "{}",
            t.status.err
        );
    }
    let v = env.control.node(&a.node_id).unwrap();
    let mut spec = v.record.spec.clone();
    spec.availability = Availability::Active;
    env.control
        .update_node(&a.node_id, v.version, spec)
        .await
        .unwrap();

    // Restart policy: on-failure, no delay, at most 2 attempts; history bounded at 5.
    create(&env, r#"{"Name":"job","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"},"RestartPolicy":{"Condition":"on-failure","Delay":0,"MaxAttempts":2}},"Mode":{"Replicated":{"Replicas":1}}}"#).await;
    let job = env.control.service("job").unwrap().record.id;
    let fail_current = || async {
        let t = env
            .control
            .tasks()
            .unwrap()
            .into_iter()
            .find(|t| t.record.service_id == job && t.record.is_live())
            .map(|t| t.record);
        if let Some(t) = t {
            let st = crate::control::tasks::ReportedStatus {
                state: TaskState::Failed,
                message: "started".into(),
                err: "task: non-zero exit (3)".into(),
                container: None,
            };
            env.control
                .report_task_status(&t.node_id, &t.id, st)
                .await
                .unwrap();
        }
        env.control.orchestrate().await.unwrap();
    };
    for _ in 0..3 {
        fail_current().await;
    }
    let job_tasks: Vec<_> = env
        .control
        .tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.record)
        .filter(|t| t.service_id == job)
        .collect();
    assert_eq!(job_tasks.len(), 3, "first run + 2 restarts, then no more");
    assert!(job_tasks.iter().all(|t| !t.is_live()));

    // History: a restart-any service failing 8 times keeps 5 tasks.
    create(&env, r#"{"Name":"flaky","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"},"RestartPolicy":{"Condition":"any","Delay":0}},"Mode":{"Replicated":{"Replicas":1}}}"#).await;
    let flaky = env.control.service("flaky").unwrap().record.id;
    for _ in 0..8 {
        let t = env
            .control
            .tasks()
            .unwrap()
            .into_iter()
            .find(|t| t.record.service_id == flaky && t.record.is_live())
            .map(|t| t.record)
            .unwrap();
        let st = crate::control::tasks::ReportedStatus {
            state: TaskState::Failed,
            message: "started".into(),
            err: "boom".into(),
            container: None,
        };
        env.control
            .report_task_status(&t.node_id, &t.id, st)
            .await
            .unwrap();
        env.control.orchestrate().await.unwrap();
        env.control.orchestrate().await.unwrap();
    }
    let n = env
        .control
        .tasks()
        .unwrap()
        .into_iter()
        .filter(|t| t.record.service_id == flaky)
        .count();
    assert_eq!(n, 5, "history bounded at TaskHistoryRetentionLimit 5");
}

/// PublishLogs from a node that was sent no subscription, or with another node's ID in the
/// lines, is refused; nothing reaches the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_publish_logs_it_was_not_asked_for() {
    use crate::control::logs::Subscription;
    let env = Env::new().await;
    let (a, _sa, _a) = node(&env, "a").await;
    let (b, _sb, _b) = node(&env, "b").await;
    let mut listen = pb::log_broker_client::LogBrokerClient::new(
        ctls::channel(
            env.addr,
            ctls::verified(&env.root(), Some((&a.cert_pem, &a.key_pem))).unwrap(),
            "swarm-manager",
        )
        .await
        .unwrap(),
    )
    .listen_subscriptions(pb::ListenSubscriptionsRequest {})
    .await
    .unwrap()
    .into_inner();
    // Let the listener register before subscribing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = Subscription {
        id: String::new(),
        service_ids: vec!["svc".into()],
        follow: false,
        tail: 0,
        since_ns: None,
        stdout: true,
        stderr: true,
        close: false,
    };
    let nodes = [a.node_id.clone()].into_iter().collect();
    let (sub_id, mut rx) = env.control.subscribe_logs(request, nodes).unwrap();
    let sent = first_message(&mut listen).await;
    assert_eq!(sent.id, sub_id);
    let publish = |creds: &Credentials, sub: &str, node: &str| {
        let msg = pb::PublishLogsMessage {
            subscription_id: sub.into(),
            messages: vec![pb::LogMessage {
                context: Some(pb::LogContext {
                    service_id: "svc".into(),
                    node_id: node.into(),
                    task_id: "t".into(),
                }),
                data: b"forged\n".to_vec(),
                ..Default::default()
            }],
            close: true,
        };
        let cfg = ctls::verified(&env.root(), Some((&creds.cert_pem, &creds.key_pem))).unwrap();
        async move {
            let ch = ctls::channel(env.addr, cfg, "swarm-manager").await.unwrap();
            pb::log_broker_client::LogBrokerClient::new(ch)
                .publish_logs(tokio_stream::iter(vec![msg]))
                .await
        }
    };
    let e = publish(&b, &sub_id, &b.node_id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = publish(&b, "nosuch", &b.node_id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = publish(&a, &sub_id, &b.node_id).await.unwrap_err();
    assert!(e.message().contains("invalid NodeID"), "{e:?}");
    assert!(rx.try_recv().is_err(), "a refused line reached the reader");
    // a's own line arrives, and its close ends the subscription.
    publish(&a, &sub_id, &a.node_id).await.unwrap();
    let got = rx.recv().await.expect("a's line");
    assert!(
        matches!(got, crate::control::logs::LogEvent::Line { ref data, .. } if data == b"forged\n")
    );
    assert!(
        rx.recv().await.is_none(),
        "the subscription ended after a's close"
    );
}

/// A rolling image update, then `service rollback`: tasks are replaced each time and the
/// service's UpdateStatus goes updating → completed → rollback_started → rollback_completed;
/// dockerd's refusals for a stale version, a rename and a rollback without a previous spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_then_rollback_replace_tasks_and_report_progress() {
    use crate::control::tasks::{ReportedStatus, TaskState};
    let env = Env::new().await;
    let (_a, _sa, _a_stream) = node(&env, "a").await;
    create(&env, r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}},"Mode":{"Replicated":{"Replicas":1}}}"#).await;
    let run_live = || async {
        for t in env.control.tasks().unwrap().into_iter().map(|t| t.record) {
            if t.is_live() && t.status.state < TaskState::Running {
                let st = ReportedStatus {
                    state: TaskState::Running,
                    message: "started".into(),
                    err: String::new(),
                    container: None,
                };
                env.control
                    .report_task_status(&t.node_id, &t.id, st)
                    .await
                    .unwrap();
            }
        }
        env.control.orchestrate().await.unwrap();
        env.control.orchestrate().await.unwrap();
    };
    let images = || {
        let mut v: Vec<String> = env
            .control
            .tasks()
            .unwrap()
            .into_iter()
            .map(|t| t.record)
            .filter(|t| t.is_live())
            .map(|t| t.spec.container_spec.image)
            .collect();
        v.sort();
        v
    };
    let state = || {
        env.control
            .service("web")
            .unwrap()
            .record
            .update_status
            .map(|u| u.state)
            .unwrap_or_default()
    };
    run_live().await;
    let s = env.control.service("web").unwrap();
    let mut spec = s.record.spec.clone();
    spec.task_template.container_spec.image = "bb:2".into();
    let e = env
        .control
        .update_service("web", s.version + 1, spec.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rpc error: code = Unknown desc = update out of sequence"
    );
    let mut renamed = spec.clone();
    renamed.name = "other".into();
    let e = env
        .control
        .update_service("web", s.version, renamed, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("renaming services is not supported"),
        "{e}"
    );
    env.control
        .update_service("web", s.version, spec, false)
        .await
        .unwrap();
    assert_eq!(state(), "updating");
    env.control.orchestrate().await.unwrap();
    assert_eq!(images(), ["bb:2"]);
    run_live().await;
    assert_eq!(state(), "completed");

    let s = env.control.service("web").unwrap();
    env.control
        .update_service("web", s.version, s.record.spec.clone(), true)
        .await
        .unwrap();
    assert_eq!(state(), "rollback_started");
    env.control.orchestrate().await.unwrap();
    assert_eq!(images(), ["bb:1"]);
    run_live().await;
    assert_eq!(state(), "rollback_completed");

    create(
        &env,
        r#"{"Name":"fresh","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}}}"#,
    )
    .await;
    let f = env.control.service("fresh").unwrap();
    let e = env
        .control
        .update_service("fresh", f.version, f.record.spec.clone(), true)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not have a previous spec"),
        "{e}"
    );
}

/// UpdateConfig: parallelism 1 with a long Delay replaces one task, then waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_waits_the_delay_between_batches() {
    let env = Env::new().await;
    let (_a, _sa, _a_stream) = node(&env, "a").await;
    create(&env, r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"bb:1"}},"Mode":{"Replicated":{"Replicas":2}},"UpdateConfig":{"Parallelism":1,"Delay":3600000000000}}"#).await;
    let s = env.control.service("web").unwrap();
    let mut spec = s.record.spec.clone();
    spec.task_template.container_spec.image = "bb:2".into();
    env.control
        .update_service("web", s.version, spec, false)
        .await
        .unwrap();
    env.control.orchestrate().await.unwrap();
    // The first new task runs: without the delay the second slot would be replaced now.
    for t in env.control.tasks().unwrap().into_iter().map(|t| t.record) {
        if t.is_live() && t.spec.container_spec.image == "bb:2" {
            let st = crate::control::tasks::ReportedStatus {
                state: crate::control::tasks::TaskState::Running,
                message: "started".into(),
                err: String::new(),
                container: None,
            };
            env.control
                .report_task_status(&t.node_id, &t.id, st)
                .await
                .unwrap();
        }
    }
    for _ in 0..3 {
        env.control.orchestrate().await.unwrap();
    }
    let mut images: Vec<String> = env
        .control
        .tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.record)
        .filter(|t| t.is_live())
        .map(|t| t.spec.container_spec.image)
        .collect();
    images.sort();
    assert_eq!(images, ["bb:1", "bb:2"], "one batch, then the delay");
}
