//! The Events service: one broadcast of [`pb::Envelope`]s, fed by the task manager (what
//! the shims publish, and the exits rcd makes up for shims that died) and by the container
//! and image services; `Subscribe` streams it, filtered.

use crate::task::{TaskEvent, TaskEventKind, TaskManager};
use rcd_proto::v1 as pb;
use std::collections::HashMap;
use std::time::SystemTime;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::warn;

/// Events at most this far behind are kept for a slow subscriber; it loses older ones.
const BACKLOG: usize = 1024;

/// Where every event of the daemon goes. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<pb::Envelope>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// RFC 3339 with milliseconds (exit times).
pub(super) fn time_ms(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl EventHub {
    /// Sends an event to every subscriber (none: dropped).
    pub fn publish(&self, namespace: &str, topic: &str, attributes: &[(&str, String)]) {
        let _ = self.tx.send(pb::Envelope {
            timestamp: timestamp(SystemTime::now()),
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        });
    }

    /// Forwards the task manager's events until the manager's channel closes.
    pub fn forward_tasks(&self, tasks: &TaskManager) {
        let mut rx = tasks.subscribe();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let _ = tx.send(task_envelope(&ev));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("events: {n} task events lost (too many at once)")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::Envelope> {
        self.tx.subscribe()
    }
}

/// containerd's field names for a task event.
pub(super) fn task_envelope(ev: &TaskEvent) -> pb::Envelope {
    let mut a: HashMap<String, String> = HashMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(k.to_owned(), v);
    };
    match &ev.kind {
        TaskEventKind::Create { id, pid, bundle } => {
            put("container_id", id.clone());
            put("pid", pid.to_string());
            put("bundle", bundle.clone());
        }
        TaskEventKind::Start { id, pid } => {
            put("container_id", id.clone());
            put("pid", pid.to_string());
        }
        TaskEventKind::Exit {
            id,
            exec_id,
            pid,
            exit_status,
            exited_at,
        } => {
            put("container_id", id.clone());
            put("id", exec_id.clone());
            put("pid", pid.to_string());
            put("exit_status", exit_status.to_string());
            put("exited_at", time_ms(*exited_at));
        }
        TaskEventKind::Delete {
            id,
            pid,
            exit_status,
            exited_at,
        } => {
            put("container_id", id.clone());
            put("pid", pid.to_string());
            put("exit_status", exit_status.to_string());
            put("exited_at", time_ms(*exited_at));
        }
        TaskEventKind::ExecAdded { id, exec_id } => {
            put("container_id", id.clone());
            put("exec_id", exec_id.clone());
        }
        TaskEventKind::ExecStarted { id, exec_id, pid } => {
            put("container_id", id.clone());
            put("exec_id", exec_id.clone());
            put("pid", pid.to_string());
        }
        TaskEventKind::Paused { id }
        | TaskEventKind::Resumed { id }
        | TaskEventKind::Oom { id } => put("container_id", id.clone()),
        TaskEventKind::Other { type_url } => put("type_url", type_url.clone()),
    }
    pb::Envelope {
        timestamp: timestamp(ev.timestamp),
        namespace: ev.namespace.clone(),
        topic: ev.topic.clone(),
        attributes: a,
    }
}

/// One filter: `field==value`, `field!=value` or `field~=prefix`, over `topic`,
/// `namespace` and the event's attributes (by name, or `event.NAME`).
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    field: String,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Prefix,
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    for (tok, op) in [("==", Op::Eq), ("!=", Op::Ne), ("~=", Op::Prefix)] {
        if let Some((f, v)) = s.split_once(tok) {
            let field = f.trim();
            if field.is_empty() {
                return Err(format!("invalid filter {s:?}: no field before {tok}"));
            }
            return Ok(Filter {
                field: field.strip_prefix("event.").unwrap_or(field).to_owned(),
                op,
                value: v.trim().trim_matches('"').to_owned(),
            });
        }
    }
    Err(format!(
        "invalid filter {s:?}: expected FIELD==VALUE, FIELD!=VALUE or FIELD~=PREFIX"
    ))
}

impl Filter {
    fn matches(&self, e: &pb::Envelope) -> bool {
        let got = match self.field.as_str() {
            "topic" => Some(e.topic.as_str()),
            "namespace" => Some(e.namespace.as_str()),
            f => e.attributes.get(f).map(String::as_str),
        };
        match (self.op, got) {
            (Op::Eq, Some(g)) => g == self.value,
            (Op::Ne, g) => g != Some(self.value.as_str()),
            (Op::Prefix, Some(g)) => g.starts_with(&self.value),
            _ => false,
        }
    }
}

pub struct EventsService(pub EventHub);

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = ReceiverStream<Result<pb::Envelope, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // any filter string may match; the ','-separated parts of one must all match
        let filters: Vec<Vec<Filter>> = req
            .into_inner()
            .filters
            .iter()
            .map(|s| {
                s.split(',')
                    .map(parse_filter)
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(Status::invalid_argument)?;
        let mut rx = self.0.subscribe();
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let e = match rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("events: a subscriber fell {n} events behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !filters.is_empty() && !filters.iter().any(|f| f.iter().all(|f| f.matches(&e))) {
                    continue;
                }
                if tx.send(Ok(e)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, ns: &str, id: &str) -> pb::Envelope {
        pb::Envelope {
            timestamp: String::new(),
            namespace: ns.into(),
            topic: topic.into(),
            attributes: [("container_id".to_owned(), id.to_owned())].into(),
        }
    }

    #[test]
    fn filters() {
        let f = parse_filter("topic==/tasks/exit").unwrap();
        assert!(f.matches(&env("/tasks/exit", "a", "c")));
        assert!(!f.matches(&env("/tasks/start", "a", "c")));
        let f = parse_filter("topic~=/tasks/").unwrap();
        assert!(f.matches(&env("/tasks/start", "a", "c")));
        assert!(!f.matches(&env("/containers/create", "a", "c")));
        let f = parse_filter("namespace!=a").unwrap();
        assert!(!f.matches(&env("/x", "a", "c")) && f.matches(&env("/x", "b", "c")));
        let f = parse_filter("event.container_id==c").unwrap();
        assert!(f.matches(&env("/x", "a", "c")));
        let f = parse_filter("pid==3").unwrap();
        assert!(!f.matches(&env("/x", "a", "c")));
        assert!(parse_filter("topic").is_err());
        assert!(parse_filter("==x").is_err());
    }

    #[test]
    fn task_events_keep_containerd_names() {
        let e = task_envelope(&TaskEvent {
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            timestamp: SystemTime::UNIX_EPOCH,
            kind: TaskEventKind::Exit {
                id: "c1".into(),
                exec_id: "c1".into(),
                pid: 7,
                exit_status: 3,
                exited_at: SystemTime::UNIX_EPOCH,
            },
        });
        assert_eq!(e.attributes["container_id"], "c1");
        assert_eq!(e.attributes["exit_status"], "3");
        assert_eq!(e.attributes["exited_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(e.timestamp, "1970-01-01T00:00:00.000000000Z");
    }
}
