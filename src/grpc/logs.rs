//! The node side of `docker service logs`: subscriptions out, published lines in. A node may
//! publish only into a subscription it was sent, only lines of its own tasks, each bounded.

use tonic::Status;

use super::status;
use crate::control::logs::{LogEvent, Subscription, MAX_LINE};
use crate::control::Control;
use crate::pb;

pub fn subscription_pb(s: &Subscription) -> pb::SubscriptionMessage {
    let mut streams = Vec::new();
    if s.stdout {
        streams.push(pb::LogStream::Stdout as i32);
    }
    if s.stderr {
        streams.push(pb::LogStream::Stderr as i32);
    }
    pb::SubscriptionMessage {
        id: s.id.clone(),
        selector: Some(pb::LogSelector {
            service_ids: s.service_ids.clone(),
            ..Default::default()
        }),
        options: Some(pb::LogSubscriptionOptions {
            streams,
            follow: s.follow,
            tail: s.tail,
            since: s.since_ns.map(|ns| prost_types::Timestamp {
                seconds: ns.div_euclid(1_000_000_000) as i64,
                nanos: ns.rem_euclid(1_000_000_000) as i32,
            }),
        }),
        close: s.close,
    }
}

/// Reads one node's `PublishLogs` stream into its subscription.
pub async fn publish(
    control: &Control,
    node_id: &str,
    mut stream: tonic::Streaming<pb::PublishLogsMessage>,
) -> Result<(), Status> {
    let mut current: Option<(String, tokio::sync::mpsc::Sender<LogEvent>)> = None;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                if let Some((id, _)) = &current {
                    let w = format!("node {node_id} disconnected unexpectedly");
                    control.log_node_done(id, node_id, Some(w));
                }
                return Err(e);
            }
        };
        if msg.subscription_id.is_empty() {
            return Err(Status::invalid_argument("missing subscription ID"));
        }
        let sink = match &current {
            Some((id, sink)) if *id == msg.subscription_id => sink.clone(),
            Some(_) => {
                return Err(Status::invalid_argument(
                    "messages of several subscriptions in one stream",
                ))
            }
            None => {
                let sink = control
                    .log_sink(&msg.subscription_id, node_id)
                    .map_err(status)?;
                current = Some((msg.subscription_id.clone(), sink.clone()));
                sink
            }
        };
        for m in msg.messages {
            let ctx = m.context.unwrap_or_default();
            if ctx.node_id != node_id {
                return Err(Status::invalid_argument(format!(
                    "invalid NodeID: expected={node_id};received={}",
                    ctx.node_id.chars().take(64).collect::<String>()
                )));
            }
            let mut data = m.data;
            data.truncate(MAX_LINE);
            let ts = m.timestamp.unwrap_or_default();
            let line = LogEvent::Line {
                node_id: ctx.node_id,
                service_id: ctx.service_id.chars().take(64).collect(),
                task_id: ctx.task_id.chars().take(64).collect(),
                timestamp_ns: ts.seconds as i128 * 1_000_000_000 + ts.nanos as i128,
                stderr: m.stream == pb::LogStream::Stderr as i32,
                data,
            };
            if sink.send(line).await.is_err() {
                // The reader left: tell the node to stop by ending its stream.
                return Ok(());
            }
        }
        if msg.close {
            control.log_node_done(&msg.subscription_id, node_id, None);
            return Ok(());
        }
    }
    if let Some((id, _)) = &current {
        control.log_node_done(id, node_id, None);
    }
    Ok(())
}
