//! Task events: what shims publish, turned into [`TaskEvent`]s on an in-daemon broadcast.
//!
//! Two ways in, as containerd has:
//! - the ttrpc `containerd.services.events.ttrpc.v1.Events/Forward` service on rcd's
//!   `TTRPC_ADDRESS` socket (what containerd 1.6's Go shims and the Rust `containerd-shim`
//!   crate use);
//! - the `-publish-binary` (rcd itself, hidden `rcd publish` subcommand): the shim runs
//!   `rcd --address A publish --topic T --namespace NS` with the event (a protobuf `Any`) on
//!   stdin. [`publish`] forwards it to the running daemon's socket, or, if no daemon answers,
//!   spools it under `<state>/events/` so the next daemon replays it at start.

use super::error::{Result, TaskError};
use super::record::write_atomic;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events, EventsClient};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Set in a shim's environment: the state dir a `rcd publish` run by the shim spools into.
pub const STATE_DIR_ENV: &str = "RCD_STATE_DIR";
const SPOOL_DIR: &str = "events";

/// One task event, with the namespace and topic it was published under.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub namespace: String,
    /// containerd's topic (`/tasks/exit`, …).
    pub topic: String,
    pub timestamp: SystemTime,
    pub kind: TaskEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskEventKind {
    Create {
        id: String,
        pid: u32,
        bundle: String,
    },
    Start {
        id: String,
        pid: u32,
    },
    /// `exec_id` is the id of the process: the task id for the init.
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    Delete {
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Oom {
        id: String,
    },
    /// An event of a type rcd does not decode; kept so subscribers can still see it.
    Other {
        type_url: String,
    },
}

impl TaskEventKind {
    /// The task (container) id the event is about, if any.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            TaskEventKind::Create { id, .. }
            | TaskEventKind::Start { id, .. }
            | TaskEventKind::Exit { id, .. }
            | TaskEventKind::Delete { id, .. }
            | TaskEventKind::ExecAdded { id, .. }
            | TaskEventKind::ExecStarted { id, .. }
            | TaskEventKind::Paused { id }
            | TaskEventKind::Resumed { id }
            | TaskEventKind::Oom { id } => Some(id),
            TaskEventKind::Other { .. } => None,
        }
    }
}

pub(crate) fn to_system_time(ts: &MessageField<Timestamp>) -> SystemTime {
    match ts.as_ref() {
        Some(t) if t.seconds > 0 => {
            UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
        }
        _ => UNIX_EPOCH,
    }
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Decodes an event `Any` by its type URL (`containerd.events.TaskExit`, with or without a
/// `types.containerd.io/` prefix).
pub(crate) fn decode(any: &Any) -> Result<TaskEventKind> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let bad = |e: containerd_shim_protos::protobuf::Error| {
        TaskError::InvalidEvent(format!("{}: {e}", any.type_url))
    };
    Ok(match name {
        "containerd.events.TaskCreate" => {
            let e = ev::TaskCreate::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Create {
                id: e.container_id,
                pid: e.pid,
                bundle: e.bundle,
            }
        }
        "containerd.events.TaskStart" => {
            let e = ev::TaskStart::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Start {
                id: e.container_id,
                pid: e.pid,
            }
        }
        "containerd.events.TaskExit" => {
            let e = ev::TaskExit::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Exit {
                exited_at: to_system_time(&e.exited_at),
                id: e.container_id,
                exec_id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "containerd.events.TaskDelete" => {
            let e = ev::TaskDelete::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Delete {
                exited_at: to_system_time(&e.exited_at),
                id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "containerd.events.TaskExecAdded" => {
            let e = ev::TaskExecAdded::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::ExecAdded {
                id: e.container_id,
                exec_id: e.exec_id,
            }
        }
        "containerd.events.TaskExecStarted" => {
            let e = ev::TaskExecStarted::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::ExecStarted {
                id: e.container_id,
                exec_id: e.exec_id,
                pid: e.pid,
            }
        }
        "containerd.events.TaskPaused" => {
            let e = ev::TaskPaused::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Paused { id: e.container_id }
        }
        "containerd.events.TaskResumed" => {
            let e = ev::TaskResumed::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Resumed { id: e.container_id }
        }
        "containerd.events.TaskOOM" => {
            let e = ev::TaskOOM::parse_from_bytes(&any.value).map_err(bad)?;
            TaskEventKind::Oom { id: e.container_id }
        }
        _ => TaskEventKind::Other {
            type_url: any.type_url.clone(),
        },
    })
}

/// The `Any` and topic of the events rcd itself publishes (for a shim that died without
/// saying so).
pub(crate) fn encode(kind: &TaskEventKind) -> Option<(&'static str, Any)> {
    let (topic, name, value) = match kind {
        TaskEventKind::Exit {
            id,
            exec_id,
            pid,
            exit_status,
            exited_at,
        } => {
            let mut e = ev::TaskExit::new();
            e.container_id = id.clone();
            e.id = exec_id.clone();
            e.pid = *pid;
            e.exit_status = *exit_status;
            e.exited_at = MessageField::some(timestamp(*exited_at));
            ("/tasks/exit", "TaskExit", e.write_to_bytes())
        }
        TaskEventKind::Delete {
            id,
            pid,
            exit_status,
            exited_at,
        } => {
            let mut e = ev::TaskDelete::new();
            e.container_id = id.clone();
            e.pid = *pid;
            e.exit_status = *exit_status;
            e.exited_at = MessageField::some(timestamp(*exited_at));
            ("/tasks/delete", "TaskDelete", e.write_to_bytes())
        }
        _ => return None,
    };
    let mut any = Any::new();
    any.type_url = format!("containerd.events.{name}");
    any.value = value.ok()?;
    Some((topic, any))
}

fn from_envelope(env: &Envelope) -> Result<TaskEvent> {
    let any = env
        .event
        .as_ref()
        .ok_or_else(|| TaskError::InvalidEvent("envelope without an event".into()))?;
    Ok(TaskEvent {
        namespace: env.namespace.clone(),
        topic: env.topic.clone(),
        timestamp: to_system_time(&env.timestamp),
        kind: decode(any)?,
    })
}

/// The in-daemon side: sends what arrives to the broadcast.
pub(crate) struct Forwarder {
    pub tx: broadcast::Sender<TaskEvent>,
}

#[async_trait::async_trait]
impl Events for Forwarder {
    async fn forward(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
        match from_envelope(req.envelope.get_or_default()) {
            Ok(ev) => {
                debug!(namespace = %ev.namespace, topic = %ev.topic, "event {:?}", ev.kind);
                let _ = self.tx.send(ev);
            }
            Err(e) => warn!("dropping a forwarded event: {e}"),
        }
        Ok(containerd_shim_protos::api::Empty::new())
    }
}

/// Serves the events service on `path` (a stale socket file is replaced).
pub(crate) async fn serve(
    path: &Path,
    tx: broadcast::Sender<TaskEvent>,
) -> Result<ttrpc::asynchronous::Server> {
    let err = |message: String| TaskError::Events {
        path: path.to_owned(),
        message,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another daemon is serving events on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("removing the stale socket: {e}")))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TaskError::io("creating", dir, e))?;
    }
    let service = create_events(Arc::new(Forwarder { tx }));
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .map_err(|e| err(e.to_string()))?
        .register_service(service);
    server.start().await.map_err(|e| err(e.to_string()))?;
    Ok(server)
}

/// The events socket that goes with a daemon socket, as containerd names it (`<address>.ttrpc`).
pub fn ttrpc_address_for(daemon_address: &Path) -> PathBuf {
    let mut s = daemon_address.as_os_str().to_owned();
    s.push(".ttrpc");
    PathBuf::from(s)
}

/// Where a published event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// To the running daemon.
    Forwarded,
    /// No daemon answered: written to this file, replayed by the next daemon.
    Spooled(PathBuf),
}

/// The body of `rcd publish`: reads nothing itself; `event` is what the shim wrote on stdin
/// (a protobuf `Any`). `daemon_address` is the `--address` the shim passes (rcd's socket);
/// the events go to its `.ttrpc` companion, or into `<state_dir>/events/` when nothing
/// answers there.
pub async fn publish(
    daemon_address: &Path,
    state_dir: &Path,
    namespace: &str,
    topic: &str,
    event: &[u8],
) -> Result<Published> {
    super::record::check_name("namespace", namespace)?;
    if !topic.starts_with('/') {
        return Err(TaskError::InvalidEvent(format!(
            "topic {topic:?} must start with '/'"
        )));
    }
    let any = Any::parse_from_bytes(event).map_err(|e| {
        TaskError::InvalidEvent(format!("the event on stdin is not a protobuf Any: {e}"))
    })?;
    if any.type_url.is_empty() {
        return Err(TaskError::InvalidEvent(
            "the event on stdin has no type URL".into(),
        ));
    }
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(timestamp(SystemTime::now()));
    env.namespace = namespace.to_owned();
    env.topic = topic.to_owned();
    env.event = MessageField::some(any);
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);

    let socket = ttrpc_address_for(daemon_address);
    match forward(&socket, &req).await {
        Ok(()) => Ok(Published::Forwarded),
        Err(e) => {
            debug!("no daemon on {}: {e}; spooling the event", socket.display());
            let dir = state_dir.join(SPOOL_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| TaskError::io("creating", &dir, e))?;
            let path = dir.join(format!(
                "{:020}-{}-{}.event",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
                std::process::id(),
                fastrand::u32(..)
            ));
            let data = req
                .write_to_bytes()
                .map_err(|e| TaskError::InvalidEvent(e.to_string()))?;
            write_atomic(&path, &data)?;
            Ok(Published::Spooled(path))
        }
    }
}

/// Events are small; a larger stdin is not an event.
const MAX_EVENT: u64 = 1 << 20;

/// `rcd publish` as a whole: the event is read from stdin (what the shim wrote), then
/// [`publish`]. The state dir to spool into is `$RCD_STATE_DIR` when set (the manager puts
/// it in every shim's environment), else `default_state_dir`.
pub async fn publish_from_stdin(
    daemon_address: &Path,
    default_state_dir: &Path,
    namespace: &str,
    topic: &str,
) -> Result<Published> {
    use std::io::Read;
    let mut event = Vec::new();
    std::io::stdin()
        .take(MAX_EVENT + 1)
        .read_to_end(&mut event)
        .map_err(|e| TaskError::InvalidEvent(format!("reading the event from stdin: {e}")))?;
    if event.len() as u64 > MAX_EVENT {
        return Err(TaskError::InvalidEvent(format!(
            "the event on stdin is larger than {MAX_EVENT} bytes"
        )));
    }
    let state_dir = std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| default_state_dir.to_owned());
    publish(daemon_address, &state_dir, namespace, topic, &event).await
}

async fn forward(socket: &Path, req: &ForwardRequest) -> std::result::Result<(), String> {
    let client = ttrpc::asynchronous::Client::connect(&format!("unix://{}", socket.display()))
        .await
        .map_err(|e| e.to_string())?;
    EventsClient::new(client)
        .forward(ttrpc::context::with_duration(Duration::from_secs(5)), req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Replays (in order) and removes the events spooled while no daemon was running.
pub(crate) fn replay_spool(state_dir: &Path, tx: &broadcast::Sender<TaskEvent>) -> usize {
    let dir = state_dir.join(SPOOL_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "event"))
        .collect();
    files.sort();
    let mut n = 0;
    for path in files {
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| ForwardRequest::parse_from_bytes(&d).map_err(|e| e.to_string()))
            .and_then(|r| from_envelope(r.envelope.get_or_default()).map_err(|e| e.to_string()))
        {
            Ok(ev) => {
                let _ = tx.send(ev);
                n += 1;
            }
            Err(e) => warn!("dropping spooled event {}: {e}", path.display()),
        }
        let _ = std::fs::remove_file(&path);
    }
    n
}

pub(crate) fn synthesized(namespace: &str, kind: TaskEventKind) -> TaskEvent {
    let topic = encode(&kind).map(|(t, _)| t).unwrap_or("/tasks/?");
    TaskEvent {
        namespace: namespace.to_owned(),
        topic: topic.to_owned(),
        timestamp: SystemTime::now(),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_roundtrip() {
        let kind = TaskEventKind::Exit {
            id: "c".into(),
            exec_id: "c".into(),
            pid: 9,
            exit_status: 7,
            exited_at: UNIX_EPOCH + Duration::from_secs(100),
        };
        let (topic, any) = encode(&kind).unwrap();
        assert_eq!(topic, "/tasks/exit");
        assert_eq!(decode(&any).unwrap(), kind);
        let mut prefixed = any.clone();
        prefixed.type_url = format!("types.containerd.io/{}", any.type_url);
        assert_eq!(decode(&prefixed).unwrap(), kind);
        let mut junk = any;
        junk.value = vec![0xff, 0xff];
        assert!(decode(&junk)
            .unwrap_err()
            .to_string()
            .contains("containerd.events.TaskExit"));
    }

    #[tokio::test]
    async fn publish_spools_without_daemon_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (_, any) = encode(&TaskEventKind::Delete {
            id: "c".into(),
            pid: 1,
            exit_status: 0,
            exited_at: UNIX_EPOCH,
        })
        .unwrap();
        let sock = dir.path().join("rcd.sock");
        let bytes = any.write_to_bytes().unwrap();
        let p = publish(&sock, dir.path(), "default", "/tasks/delete", &bytes)
            .await
            .unwrap();
        assert!(matches!(p, Published::Spooled(_)));
        let e = publish(&sock, dir.path(), "default", "/tasks/delete", b"\xff\xff")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a protobuf Any"), "{e}");
        let e = publish(&sock, dir.path(), "a/b", "/tasks/delete", &bytes)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid namespace"), "{e}");

        let (tx, mut rx) = broadcast::channel(4);
        assert_eq!(replay_spool(dir.path(), &tx), 1);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.topic, "/tasks/delete");
        assert_eq!(ev.namespace, "default");
        assert_eq!(replay_spool(dir.path(), &tx), 0);

        // with a daemon listening, the event is forwarded
        let _server = serve(&ttrpc_address_for(&sock), tx.clone()).await.unwrap();
        let p = publish(&sock, dir.path(), "default", "/tasks/delete", &bytes)
            .await
            .unwrap();
        assert_eq!(p, Published::Forwarded);
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev.kind, TaskEventKind::Delete { .. }));
    }
}
