//! The shim manager: rcd's side of task execution.
//!
//! Every task (the init process of one container, plus its execs) runs under its own shim
//! process, spoken to over ttrpc with containerd's shim v2 Task API (task v2, the one
//! containerd 1.6 speaks). The shim binary is a parameter: Debian's
//! `containerd-shim-runc-v2` (with runc), or rshim (`containerd-shim-runr-v2`).
//!
//! - [`TaskManager::create`] lays out the bundle (`<state>/tasks/<ns>/<id>/`), runs the
//!   shim's `start` action there (rshim: rcd binds the shim's socket and starts the serving
//!   copy itself, see [`shim::ShimEnv::serve`]), connects, and calls `Create`; every other
//!   call maps to one Task API call. A monitor per task waits on the init (the shim's `Wait`) and notices
//!   a shim that dies: then the shim binary's `delete` action releases what the shim held
//!   (runc's `delete --force`, rootfs mounts) and the task is reported stopped (137).
//! - State on disk ([`record`]) lets a new rcd [`TaskManager::reconnect_all`] to every shim
//!   after a restart or a `kill -9`, and learn exits that happened meanwhile (the shims
//!   hold them).
//! - Events: shims forward theirs over ttrpc to rcd's `TTRPC_ADDRESS` socket, or run rcd's
//!   hidden `publish` subcommand ([`publish`]); both end on [`TaskManager::subscribe`].

mod error;
mod events;
mod io;
mod record;
mod shim;
mod spawn;
pub mod warm;

pub use error::{Result, ShimCode, TaskError};
pub use events::{
    publish, publish_from_stdin, ttrpc_address_for, Published, TaskEvent, TaskEventKind,
    STATE_DIR_ENV,
};
pub use io::{IoConfig, ProcessIo, Stdio};
pub use record::Exit;

/// The Task API's types, for callers that need more than rcd's own (stats, raw states).
pub use containerd_shim_protos::{api as shim_api, cgroups, cgroups_v2};

use crate::snapshot::Mount;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::TaskClient;
use record::TaskRecord;
use shim::{ctx, ShimEnv, CALL_TIMEOUT};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

const TASKS_DIR: &str = "tasks";
/// rshim's ttrpc metadata key for a Delete whose runtime delete may follow the reply
/// (`rshim::service::DEFER_RUNTIME_DELETE`).
const DEFER_RUNTIME_DELETE: &str = "rshim-defer-runtime-delete";
/// The runtime's `--root` (`<this>/<namespace>`): under rcd's own state, so two rcds on
/// one host (tests, benchmarks) never see each other's containers.
const RUNTIME_DIR: &str = "runtime";
/// Written into a bundle when its task's delete starts: the bundle stays in place until the
/// shim has ended (after the reply), and a daemon killed meanwhile must finish the delete
/// rather than report the task again.
const DELETING: &str = "deleting";
/// Where, under rcd's state dir, bundles and scratch dirs wait for the trash worker
/// (`crate::trash`); emptied at start-up.
pub fn trash_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trash")
}
const EXIT_STATUS_KILLED: u32 = 128 + 9;

/// How long [`TaskManager::close`] waits for the shims of just deleted tasks to end.
const CLOSE_SETTLE: Duration = Duration::from_secs(3);

/// Where the manager keeps tasks and how shims reach rcd.
#[derive(Debug, Clone)]
pub struct TaskManagerConfig {
    /// rcd's state dir (`--state`, `/run/rcd`): bundles go under `tasks/`, spooled events
    /// under `events/`.
    pub state_dir: PathBuf,
    /// The shim binary new tasks run under.
    pub shim_binary: PathBuf,
    /// rcd's API socket, the shims' `-address`.
    pub daemon_address: PathBuf,
    /// The events socket the manager serves (the shims' `TTRPC_ADDRESS`);
    /// `<daemon_address>.ttrpc` by default, as containerd names it.
    pub ttrpc_address: PathBuf,
    /// What shims run to publish events (`rcd` itself: `rcd publish`).
    pub publish_binary: PathBuf,
}

impl TaskManagerConfig {
    /// The defaults: events socket next to the daemon's, `publish` through the running
    /// executable.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        daemon_address: impl Into<PathBuf>,
        shim_binary: impl Into<PathBuf>,
    ) -> Self {
        let daemon_address = daemon_address.into();
        TaskManagerConfig {
            state_dir: state_dir.into(),
            shim_binary: shim_binary.into(),
            ttrpc_address: ttrpc_address_for(&daemon_address),
            daemon_address,
            publish_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rcd")),
        }
    }
}

/// What to create: the OCI spec (written as the bundle's `config.json`), the rootfs and the
/// init's stdio.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub spec: serde_json::Value,
    /// Mounts the shim mounts on `<bundle>/rootfs` (an overlay snapshot's). Empty: the
    /// spec's `root.path` is used as it is (a pre-mounted or plain directory, absolute).
    pub rootfs: Vec<Mount>,
    pub io: IoConfig,
    /// A live task of the same namespace whose shim this task joins (a pod's sandbox: one
    /// shim per pod, as containerd's); `None`, or a group without a live shim, starts one.
    pub shim_group: Option<String>,
}

/// The status of a process, as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
    Unknown,
}

impl From<api::Status> for TaskStatus {
    fn from(s: api::Status) -> Self {
        match s {
            api::Status::CREATED => TaskStatus::Created,
            api::Status::RUNNING => TaskStatus::Running,
            api::Status::STOPPED => TaskStatus::Stopped,
            api::Status::PAUSED => TaskStatus::Paused,
            api::Status::PAUSING => TaskStatus::Pausing,
            api::Status::UNKNOWN => TaskStatus::Unknown,
        }
    }
}

/// A process's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub id: String,
    /// `None` for the init.
    pub exec_id: Option<String>,
    pub pid: u32,
    pub status: TaskStatus,
    /// Set once stopped.
    pub exit: Option<Exit>,
    pub terminal: bool,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// A task as the manager knows it, without asking the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub namespace: String,
    pub id: String,
    pub pid: u32,
    pub bundle: PathBuf,
    pub shim_pid: Option<u32>,
    /// The shim's ttrpc address.
    pub address: Option<String>,
    /// Whether the shim is gone (the task is then stopped for good).
    pub shim_dead: bool,
    pub exit: Option<Exit>,
}

/// What [`TaskManager::reconnect_all`] found for one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconnected {
    /// The shim answered: the task is back under the manager, in this state.
    Live {
        namespace: String,
        id: String,
        status: TaskStatus,
        exit: Option<Exit>,
    },
    /// The shim was gone: its leftovers were released and the task is stopped with this
    /// exit (kept, for the caller to read, until it deletes the task).
    ShimDied {
        namespace: String,
        id: String,
        exit: Exit,
    },
    /// A bundle of a task whose creation never finished: removed.
    Removed { namespace: String, id: String },
}

/// Resource usage from the shim's `Stats`.
#[derive(Debug, Clone)]
pub enum TaskStats {
    V1(Box<cgroups::metrics::Metrics>),
    V2(Box<cgroups_v2::metrics::Metrics>),
    Other(Any),
}

struct Task {
    namespace: String,
    id: String,
    bundle: PathBuf,
    env: ShimEnv,
    /// `None` for a task found with its shim already gone.
    client: Option<TaskClient>,
    pid: AtomicU32,
    shim_pid: Option<u32>,
    address: Option<String>,
    rootfs_mounted: bool,
    /// The shim is gone (died, or shut down by `delete`): no more calls.
    dead: AtomicBool,
    /// Set by `delete` so the monitor does not take the shim's exit for a death.
    deleting: AtomicBool,
    exit: watch::Sender<Option<Exit>>,
    log: Mutex<Option<JoinHandle<()>>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    /// Serialises the dead-shim cleanup.
    cleanup: tokio::sync::Mutex<bool>,
}

impl Task {
    fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    fn set_exit(&self, exit: Exit) {
        if let Err(e) = record::save_exit(&self.bundle, &exit) {
            warn!(task = %self.id, "recording the exit: {e}");
        }
        self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit);
                true
            } else {
                false
            }
        });
    }

    fn stop_background(&self) {
        if let Some(h) = self.log.lock().unwrap().take() {
            h.abort();
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop_background();
        if let Some(h) = self.monitor.lock().unwrap().take() {
            h.abort();
        }
    }
}

struct Inner {
    cfg: TaskManagerConfig,
    tasks: Mutex<HashMap<(String, String), Arc<Task>>>,
    /// Tasks between their bundle's creation and their entry in `tasks`: not leftovers.
    creating: Mutex<std::collections::HashSet<(String, String)>>,
    /// Deleted tasks whose shim may still be on its way out; `true` once it is gone. A new
    /// task of the same id waits for it: the shims' socket path comes from the id.
    exiting: Mutex<HashMap<(String, String), watch::Receiver<bool>>>,
    events: broadcast::Sender<TaskEvent>,
    server: tokio::sync::Mutex<Option<ttrpc::asynchronous::Server>>,
}

/// The shim manager. Cheap to clone; every clone is the same manager.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl TaskManager {
    /// Creates the state dirs and serves the events socket. Does not touch existing shims
    /// or spooled events: call [`TaskManager::reconnect_all`].
    pub async fn new(cfg: TaskManagerConfig) -> Result<TaskManager> {
        let tasks = cfg.state_dir.join(TASKS_DIR);
        std::fs::create_dir_all(&tasks).map_err(|e| TaskError::io("creating", &tasks, e))?;
        crate::trash::clean(&trash_dir(&cfg.state_dir));
        let (tx, _) = broadcast::channel(1024);
        let server = events::serve(&cfg.ttrpc_address, tx.clone()).await?;
        Ok(TaskManager {
            inner: Arc::new(Inner {
                cfg,
                tasks: Mutex::new(HashMap::new()),
                creating: Mutex::new(Default::default()),
                exiting: Mutex::new(HashMap::new()),
                events: tx,
                server: tokio::sync::Mutex::new(Some(server)),
            }),
        })
    }

    pub fn config(&self) -> &TaskManagerConfig {
        &self.inner.cfg
    }

    /// Task events: what shims publish, and the exits and deletes rcd reports for shims that
    /// died. A receiver that lags loses the oldest events (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe()
    }

    /// Detaches from every shim as a daemon that exits does: stops serving the events
    /// socket (shims retry or spool) and the per-task monitors, forgets the tasks. Shims and
    /// containers keep running; a new manager finds them with [`TaskManager::reconnect_all`].
    pub async fn close(&self) {
        // A deleted task's shim gets its Shutdown after the delete's reply: a daemon that
        // stops right then still sees it through (its events still reach the server below),
        // for a bounded while; what is left over the next daemon finishes (`deleting`).
        let ending: Vec<_> = self
            .inner
            .exiting
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let settled = async {
            for mut gone in ending {
                let _ = gone.wait_for(|g| *g).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_SETTLE, settled).await;
        if let Some(mut s) = self.inner.server.lock().await.take() {
            let _ = s.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.inner.cfg.ttrpc_address);
        let tasks: Vec<Arc<Task>> = self
            .inner
            .tasks
            .lock()
            .unwrap()
            .drain()
            .map(|(_, t)| t)
            .collect();
        for t in tasks {
            t.stop_background();
            if let Some(h) = t.monitor.lock().unwrap().take() {
                h.abort();
            }
        }
    }

    fn bundle_dir(&self, namespace: &str, id: &str) -> PathBuf {
        self.inner
            .cfg
            .state_dir
            .join(TASKS_DIR)
            .join(namespace)
            .join(id)
    }

    fn env(&self, binary: &Path) -> ShimEnv {
        let cfg = &self.inner.cfg;
        ShimEnv {
            binary: binary.to_owned(),
            daemon_address: cfg.daemon_address.display().to_string(),
            ttrpc_address: cfg.ttrpc_address.clone(),
            publish_binary: cfg.publish_binary.clone(),
            state_dir: cfg.state_dir.clone(),
        }
    }

    fn get(&self, namespace: &str, id: &str) -> Result<Arc<Task>> {
        self.inner
            .tasks
            .lock()
            .unwrap()
            .get(&(namespace.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| TaskError::NotFound {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
            })
    }

    /// Every task of `namespace` (all namespaces with `None`), sorted.
    pub fn list(&self, namespace: Option<&str>) -> Vec<TaskInfo> {
        let mut out: Vec<TaskInfo> = self
            .inner
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter(|t| namespace.is_none_or(|n| n == t.namespace))
            .map(|t| TaskInfo {
                namespace: t.namespace.clone(),
                id: t.id.clone(),
                pid: t.pid.load(Ordering::Relaxed),
                bundle: t.bundle.clone(),
                shim_pid: t.shim_pid,
                address: t.address.clone(),
                shim_dead: t.dead.load(Ordering::Relaxed),
                exit: t.exit(),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        out
    }

    /// Creates a task: bundle, shim, `Create`. The init is created, not started. Returns
    /// its pid and rcd's ends of its pipes.
    ///
    /// Runs to its end even if the caller stops waiting (a cancelled gRPC call): a half-made
    /// task would leak a shim.
    pub async fn create(
        &self,
        namespace: &str,
        id: &str,
        opts: CreateOptions,
    ) -> Result<(u32, ProcessIo)> {
        let (m, ns, id) = (self.clone(), namespace.to_owned(), id.to_owned());
        tokio::spawn(async move { m.create_detached(&ns, &id, opts).await })
            .await
            .expect("task creation does not panic")
    }

    async fn create_detached(
        &self,
        namespace: &str,
        id: &str,
        opts: CreateOptions,
    ) -> Result<(u32, ProcessIo)> {
        record::check_name("namespace", namespace)?;
        record::check_name("task id", id)?;
        // from here to the shim's reply the grace period of runr's cgroup move runs
        // alongside the shim's start-up (see `warm`)
        let _warm = warm::hold();
        if !opts.spec.is_object() {
            return Err(TaskError::InvalidRequest {
                id: id.to_owned(),
                what: "spec",
                reason: "the OCI spec must be a JSON object".into(),
            });
        }
        // bounded by the reaper's own limits (5 s, then SIGKILL and 2 s)
        self.settled(namespace, id).await;
        let key = (namespace.to_owned(), id.to_owned());
        let bundle = self.bundle_dir(namespace, id);
        let ns_dir = bundle.parent().expect("a bundle has a parent");
        std::fs::create_dir_all(ns_dir).map_err(|e| TaskError::io("creating", ns_dir, e))?;
        // the bundle dir is the lock: a second create of the same id fails here
        match std::fs::create_dir(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(TaskError::AlreadyExists {
                    namespace: namespace.to_owned(),
                    id: id.to_owned(),
                })
            }
            Err(e) => return Err(TaskError::io("creating", &bundle, e)),
        }
        let binary = self.inner.cfg.shim_binary.clone();
        self.inner.creating.lock().unwrap().insert(key.clone());
        let r = match self.create_in(namespace, id, &bundle, &binary, opts).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.discard(namespace, id, &bundle, &binary).await;
                Err(e)
            }
        };
        self.inner.creating.lock().unwrap().remove(&key);
        r
    }

    async fn create_in(
        &self,
        namespace: &str,
        id: &str,
        bundle: &Path,
        binary: &Path,
        opts: CreateOptions,
    ) -> Result<(u32, ProcessIo)> {
        let config = bundle.join("config.json");
        let data = serde_json::to_vec(&opts.spec).expect("a JSON value serializes");
        std::fs::write(&config, data).map_err(|e| TaskError::io("writing", &config, e))?;
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir(&rootfs).map_err(|e| TaskError::io("creating", &rootfs, e))?;
        // rcd mounts the rootfs itself and gives the shim none to mount: the unmount at the
        // end, which syncs the overlay's upper filesystem, then happens in rcd's trash
        // worker rather than in the shim's Delete, on the caller's path.
        if !opts.rootfs.is_empty() {
            crate::snapshot::mount_all(&opts.rootfs, &rootfs)
                .map_err(|e| TaskError::io("mounting the rootfs on", &rootfs, e))?;
        }
        let mut rec = TaskRecord {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            shim_binary: binary.to_owned(),
            address: None,
            shim_pid: None,
            rootfs_mounted: !opts.rootfs.is_empty(),
            created_at_ms: record::now_ms(),
        };
        rec.save(bundle)?;
        let env = self.env(binary);
        let group = opts
            .shim_group
            .as_deref()
            .filter(|g| *g != id)
            .and_then(|g| self.group_shim(namespace, g));
        // a shim of its own: started in this bundle, its log FIFO read here
        let (address, client, shim_pid, log) = match group {
            // a connection of its own: rshim's ttrpc server gives each connection its own
            // few worker threads, and every task keeps one of them in a Wait
            Some((address, pid)) => {
                let client = shim::connect(id, &address).await?;
                (address, client, pid, None)
            }
            None => {
                let log = shim::open_log(bundle, id)?;
                // rshim serves as rcd's child, its pid known; another shim runs `start`
                let started = if env.is_rshim() {
                    env.serve(namespace, id, bundle)
                        .await
                        .map(|(a, pid)| (a, Some(pid)))
                } else {
                    env.start(namespace, id, bundle).await.map(|a| (a, None))
                };
                let (address, pid) = match started {
                    Ok(a) => a,
                    Err(e) => {
                        log.abort();
                        return Err(e);
                    }
                };
                let client = shim::connect(id, &address).await?;
                let pid = match pid {
                    Some(pid) => pid,
                    None => {
                        rec.address = Some(address.clone());
                        rec.save(bundle)?;
                        client
                            .connect(
                                ctx(namespace, Some(CALL_TIMEOUT)),
                                &api::ConnectRequest {
                                    id: id.to_owned(),
                                    ..Default::default()
                                },
                            )
                            .await
                            .map_err(|e| shim_error(id, None, "connect", e))?
                            .shim_pid
                    }
                };
                (address, client, Some(pid), Some(log))
            }
        };
        rec.address = Some(address.clone());
        rec.shim_pid = shim_pid;
        rec.save(bundle)?;

        let prepared = io::prepare(id, id, bundle, &opts.io)?;
        let req = api::CreateTaskRequest {
            id: id.to_owned(),
            bundle: bundle.display().to_string(),
            rootfs: Vec::new(),
            terminal: opts.io.terminal,
            stdin: prepared.stdin,
            stdout: prepared.stdout,
            stderr: prepared.stderr,
            options: MessageField::some(runtime_options(
                &self.inner.cfg.state_dir.join(RUNTIME_DIR),
            )),
            ..Default::default()
        };
        let resp = match client
            .create(ctx(namespace, Some(CALL_TIMEOUT)), &req)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if let Some(l) = &log {
                    l.abort();
                }
                return Err(shim_error(id, None, "create", e));
            }
        };

        let (exit_tx, _) = watch::channel(None);
        let task = Arc::new(Task {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            env,
            client: Some(client),
            pid: AtomicU32::new(resp.pid),
            shim_pid,
            address: Some(address),
            rootfs_mounted: rec.rootfs_mounted,
            dead: AtomicBool::new(false),
            deleting: AtomicBool::new(false),
            exit: exit_tx,
            log: Mutex::new(log),
            monitor: Mutex::new(None),
            cleanup: tokio::sync::Mutex::new(false),
        });
        self.insert(task);
        debug!(namespace, id, pid = resp.pid, "task created");
        Ok((resp.pid, prepared.io))
    }

    fn insert(&self, task: Arc<Task>) {
        let monitor = tokio::spawn(monitor(self.clone(), task.clone()));
        *task.monitor.lock().unwrap() = Some(monitor);
        self.inner
            .tasks
            .lock()
            .unwrap()
            .insert((task.namespace.clone(), task.id.clone()), task);
    }

    /// The shim of live task `group`, for a task that joins it: its address and pid.
    fn group_shim(&self, namespace: &str, group: &str) -> Option<(String, Option<u32>)> {
        let tasks = self.inner.tasks.lock().unwrap();
        let t = tasks.get(&(namespace.to_owned(), group.to_owned()))?;
        if t.dead.load(Ordering::Relaxed) || t.deleting.load(Ordering::Relaxed) {
            return None;
        }
        Some((t.address.clone()?, t.shim_pid))
    }

    /// Whether a task other than `id` uses the shim at `address`: one rcd knows, or (with
    /// `bundles`, for a restarted rcd that has not reconnected every task yet) one whose
    /// bundle names it, a bundle being deleted aside.
    fn shim_shared(&self, namespace: &str, id: &str, address: &str, bundles: bool) -> bool {
        let known = self.inner.tasks.lock().unwrap().iter().any(|((ns, i), t)| {
            !(ns == namespace && i == id)
                && t.address.as_deref() == Some(address)
                && !t.dead.load(Ordering::Relaxed)
        });
        if known || !bundles {
            return known;
        }
        let dir = self.inner.cfg.state_dir.join(TASKS_DIR).join(namespace);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return false;
        };
        rd.flatten().any(|e| {
            let b = e.path();
            e.file_name().to_str() != Some(id)
                && !b.join(DELETING).exists()
                && TaskRecord::load(&b)
                    .ok()
                    .flatten()
                    .and_then(|r| r.address)
                    .as_deref()
                    == Some(address)
        })
    }

    /// Undoes a failed create: the shim (if it runs) is shut down, its binary's `delete`
    /// releases the rest, the bundle goes. A shim other tasks share only forgets this one.
    async fn discard(&self, namespace: &str, id: &str, bundle: &Path, binary: &Path) {
        let env = self.env(binary);
        if let Some(addr) = TaskRecord::load(bundle)
            .ok()
            .flatten()
            .and_then(|r| r.address)
            .or_else(|| record::load_address(bundle))
        {
            let shared = self.shim_shared(namespace, id, &addr, true);
            if let Ok(c) = shim::connect(id, &addr).await {
                if shared {
                    // the others keep their shim: it only forgets this task, if it had it
                    let req = api::DeleteRequest {
                        id: id.to_owned(),
                        ..Default::default()
                    };
                    let _ = c
                        .delete(ctx(namespace, Some(Duration::from_secs(5))), &req)
                        .await;
                } else {
                    let pid = c
                        .connect(
                            ctx(namespace, Some(Duration::from_secs(2))),
                            &api::ConnectRequest {
                                id: id.to_owned(),
                                ..Default::default()
                            },
                        )
                        .await
                        .ok()
                        .map(|r| r.shim_pid);
                    let _ = c
                        .shutdown(
                            ctx(namespace, Some(Duration::from_secs(2))),
                            &api::ShutdownRequest {
                                id: id.to_owned(),
                                now: true,
                                ..Default::default()
                            },
                        )
                        .await;
                    if let Some(pid) = pid {
                        if !shim::wait_gone(pid, Duration::from_secs(2)).await {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                }
            }
            if let Err(e) = env.delete(namespace, id, bundle).await {
                debug!(namespace, id, "after a failed create: {e}");
            }
        }
        self.release_bundle(bundle);
    }

    /// Frees a bundle's path at once; its rootfs is unmounted and its files removed by the
    /// trash worker (nothing below a mount is ever deleted).
    fn release_bundle(&self, bundle: &Path) {
        crate::trash::discard_renamed(bundle, &trash_dir(&self.inner.cfg.state_dir));
    }

    /// Starts the init (`exec_id` `None`) or an exec; returns its pid.
    pub async fn start(&self, namespace: &str, id: &str, exec_id: Option<&str>) -> Result<u32> {
        let t = self.get(namespace, id)?;
        let _warm = exec_id.map(|_| warm::hold());
        let req = api::StartRequest {
            id: id.to_owned(),
            exec_id: exec_id.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let r = self
            .call(&t, "start", exec_id, |c, cx| async move {
                c.start(cx, &req).await
            })
            .await?;
        if exec_id.is_none() {
            t.pid.store(r.pid, Ordering::Relaxed);
        }
        Ok(r.pid)
    }

    /// The state of the init or an exec. A task whose shim died is stopped, with the exit
    /// rcd recorded.
    pub async fn state(
        &self,
        namespace: &str,
        id: &str,
        exec_id: Option<&str>,
    ) -> Result<ProcessState> {
        let t = self.get(namespace, id)?;
        if t.dead.load(Ordering::Relaxed) {
            return dead_state(&t, exec_id);
        }
        let req = api::StateRequest {
            id: id.to_owned(),
            exec_id: exec_id.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        match self
            .call(&t, "state", exec_id, |c, cx| async move {
                c.state(cx, &req).await
            })
            .await
        {
            Ok(r) => Ok(state_from(id, exec_id, &r)),
            Err(TaskError::ShimDied { .. }) => dead_state(&t, exec_id),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` to the init or an exec; `all`: to every process of the container.
    pub async fn kill(
        &self,
        namespace: &str,
        id: &str,
        exec_id: Option<&str>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let t = self.get(namespace, id)?;
        let req = api::KillRequest {
            id: id.to_owned(),
            exec_id: exec_id.unwrap_or_default().to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.call(&t, "kill", exec_id, |c, cx| async move {
            c.kill(cx, &req).await
        })
        .await?;
        Ok(())
    }

    /// Waits for the init (`exec_id` `None`) or an exec to exit. Any number of callers may
    /// wait on the same process; a shim that dies ends the wait with the exit rcd recorded
    /// for the init (137) and `ShimDied` for an exec.
    pub async fn wait(&self, namespace: &str, id: &str, exec_id: Option<&str>) -> Result<Exit> {
        let t = self.get(namespace, id)?;
        match exec_id {
            None => {
                let mut rx = t.exit.subscribe();
                let exit = rx
                    .wait_for(|e| e.is_some())
                    .await
                    .map_err(|_| TaskError::NotFound {
                        namespace: namespace.to_owned(),
                        id: id.to_owned(),
                    })?;
                Ok(exit.expect("waited for Some"))
            }
            Some(exec) => {
                let req = api::WaitRequest {
                    id: id.to_owned(),
                    exec_id: exec.to_owned(),
                    ..Default::default()
                };
                let pid = self
                    .state(namespace, id, Some(exec))
                    .await
                    .map(|s| s.pid)
                    .unwrap_or(0);
                let r = self
                    .call_with(&t, "wait", Some(exec), None, |c, cx| async move {
                        c.wait(cx, &req).await
                    })
                    .await?;
                Ok(Exit {
                    pid,
                    status: r.exit_status,
                    exited_at_ms: events::to_ms(events::to_system_time(&r.exited_at)),
                })
            }
        }
    }

    /// Adds an exec process (not started) running `process` (an OCI `Process` as JSON).
    pub async fn exec(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        io_cfg: IoConfig,
    ) -> Result<ProcessIo> {
        record::check_name("exec id", exec_id)?;
        let t = self.get(namespace, id)?;
        if !process.is_object() {
            return Err(TaskError::InvalidRequest {
                id: id.to_owned(),
                what: "process",
                reason: "the process spec must be a JSON object".into(),
            });
        }
        // the exec's Start, which follows, moves it into the container's cgroup
        warm::for_a_while(Duration::from_millis(250));
        let prepared = io::prepare(id, &format!("exec-{exec_id}"), &t.bundle, &io_cfg)?;
        let mut spec = Any::new();
        spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        spec.value = serde_json::to_vec(&process).expect("a JSON value serializes");
        let req = api::ExecProcessRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            terminal: io_cfg.terminal,
            stdin: prepared.stdin,
            stdout: prepared.stdout,
            stderr: prepared.stderr,
            spec: MessageField::some(spec),
            ..Default::default()
        };
        let r = self
            .call(&t, "exec", Some(exec_id), |c, cx| async move {
                c.exec(cx, &req).await
            })
            .await;
        if let Err(e) = r {
            io::remove(&t.bundle, &format!("exec-{exec_id}"));
            return Err(e);
        }
        Ok(prepared.io)
    }

    /// Deletes a stopped exec from the shim; returns its exit.
    pub async fn delete_exec(&self, namespace: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let t = self.get(namespace, id)?;
        let req = api::DeleteRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .call(&t, "delete", Some(exec_id), |c, cx| async move {
                c.delete(cx, &req).await
            })
            .await?;
        io::remove(&t.bundle, &format!("exec-{exec_id}"));
        Ok(exit_of(r.pid, r.exit_status, &r.exited_at))
    }

    /// Resizes the terminal of the init or an exec.
    pub async fn resize_pty(
        &self,
        namespace: &str,
        id: &str,
        exec_id: Option<&str>,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let t = self.get(namespace, id)?;
        let req = api::ResizePtyRequest {
            id: id.to_owned(),
            exec_id: exec_id.unwrap_or_default().to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.call(&t, "resize pty", exec_id, |c, cx| async move {
            c.resize_pty(cx, &req).await
        })
        .await?;
        Ok(())
    }

    /// Closes the shim's side of the stdin of the init or an exec: once the caller has
    /// dropped its `ProcessIo::stdin` too, the process reads end-of-file.
    pub async fn close_stdin(
        &self,
        namespace: &str,
        id: &str,
        exec_id: Option<&str>,
    ) -> Result<()> {
        let t = self.get(namespace, id)?;
        let req = api::CloseIORequest {
            id: id.to_owned(),
            exec_id: exec_id.unwrap_or_default().to_owned(),
            stdin: true,
            ..Default::default()
        };
        self.call(&t, "close io", exec_id, |c, cx| async move {
            c.close_io(cx, &req).await
        })
        .await?;
        Ok(())
    }

    /// The pids of the container's processes.
    pub async fn pids(&self, namespace: &str, id: &str) -> Result<Vec<u32>> {
        let t = self.get(namespace, id)?;
        let req = api::PidsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let r = self
            .call(
                &t,
                "pids",
                None,
                |c, cx| async move { c.pids(cx, &req).await },
            )
            .await?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// The container's cgroup metrics.
    pub async fn stats(&self, namespace: &str, id: &str) -> Result<TaskStats> {
        use containerd_shim_protos::protobuf::Message;
        let t = self.get(namespace, id)?;
        let req = api::StatsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let r = self
            .call(
                &t,
                "stats",
                None,
                |c, cx| async move { c.stats(cx, &req).await },
            )
            .await?;
        let any = r.stats.into_option().unwrap_or_default();
        let bad = |e: containerd_shim_protos::protobuf::Error| TaskError::Shim {
            id: id.to_owned(),
            exec_id: None,
            method: "stats",
            code: ShimCode::INTERNAL,
            message: format!("unreadable {}: {e}", any.type_url),
        };
        Ok(match any.type_url.rsplit('/').next().unwrap_or_default() {
            "io.containerd.cgroups.v1.Metrics" => TaskStats::V1(Box::new(
                cgroups::metrics::Metrics::parse_from_bytes(&any.value).map_err(bad)?,
            )),
            "io.containerd.cgroups.v2.Metrics" => TaskStats::V2(Box::new(
                cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value).map_err(bad)?,
            )),
            _ => TaskStats::Other(any),
        })
    }

    pub async fn pause(&self, namespace: &str, id: &str) -> Result<()> {
        let t = self.get(namespace, id)?;
        let req = api::PauseRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call(
            &t,
            "pause",
            None,
            |c, cx| async move { c.pause(cx, &req).await },
        )
        .await?;
        Ok(())
    }

    pub async fn resume(&self, namespace: &str, id: &str) -> Result<()> {
        let t = self.get(namespace, id)?;
        let req = api::ResumeRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call(&t, "resume", None, |c, cx| async move {
            c.resume(cx, &req).await
        })
        .await?;
        Ok(())
    }

    /// Changes the container's resources (`resources`: an OCI `LinuxResources` as JSON).
    pub async fn update(
        &self,
        namespace: &str,
        id: &str,
        resources: serde_json::Value,
    ) -> Result<()> {
        let t = self.get(namespace, id)?;
        if !resources.is_object() {
            return Err(TaskError::InvalidRequest {
                id: id.to_owned(),
                what: "resources",
                reason: "the resources must be a JSON object".into(),
            });
        }
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = serde_json::to_vec(&resources).expect("a JSON value serializes");
        let req = api::UpdateTaskRequest {
            id: id.to_owned(),
            resources: MessageField::some(any),
            ..Default::default()
        };
        self.call(&t, "update", None, |c, cx| async move {
            c.update(cx, &req).await
        })
        .await?;
        Ok(())
    }

    /// Deletes a task that is not running (created or stopped, or whose shim died): the
    /// shim's `Delete` and `Shutdown`, then the rootfs and the bundle go. Returns the init's
    /// exit. Like `create`, runs to its end even if the caller stops waiting.
    pub async fn delete(&self, namespace: &str, id: &str) -> Result<Exit> {
        let (m, ns, id) = (self.clone(), namespace.to_owned(), id.to_owned());
        tokio::spawn(async move { m.delete_detached(&ns, &id).await })
            .await
            .expect("task deletion does not panic")
    }

    async fn delete_detached(&self, namespace: &str, id: &str) -> Result<Exit> {
        let t = self.get(namespace, id)?;
        // an init whose exit is known is stopped for good: no need to ask the shim
        if !t.dead.load(Ordering::Relaxed) && t.exit().is_none() {
            let st = self.state(namespace, id, None).await?;
            if matches!(
                st.status,
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
            ) {
                return Err(TaskError::Running {
                    namespace: namespace.to_owned(),
                    id: id.to_owned(),
                });
            }
        }
        let mut exit = t.exit();
        if !t.dead.load(Ordering::Relaxed) {
            t.deleting.store(true, Ordering::Relaxed);
            if let Err(e) = std::fs::write(t.bundle.join(DELETING), b"") {
                warn!(namespace, id, "marking the bundle deleted: {e}");
            }
            let req = api::DeleteRequest {
                id: id.to_owned(),
                ..Default::default()
            };
            let shared = t
                .address
                .as_deref()
                .is_some_and(|a| self.shim_shared(namespace, id, a, false));
            match self
                .call(&t, "delete", None, |c, mut cx| async move {
                    // rshim then runs the runtime's delete after its reply: the id is not
                    // reused before the shim is gone (`reap_shim`), nor is a pod's cgroup
                    // removed (`settled`). Other shims ignore it. A shim that goes on
                    // serving others does not end: the bundle is released at once, so the
                    // runtime's delete must be done by the reply.
                    if !shared {
                        cx.add(DEFER_RUNTIME_DELETE.into(), "1".into());
                    }
                    c.delete(cx, &req).await
                })
                .await
            {
                Ok(r) => {
                    if exit.is_none() {
                        exit = Some(exit_of(r.pid, r.exit_status, &r.exited_at));
                    }
                }
                Err(TaskError::ShimDied { .. }) => {}
                Err(e) => {
                    t.deleting.store(false, Ordering::Relaxed);
                    let _ = std::fs::remove_file(t.bundle.join(DELETING));
                    return Err(e);
                }
            }
            t.dead.store(true, Ordering::Relaxed);
            // Decided again now that this task is out of the shim: of two tasks deleted at
            // once, the one that finds the other out too ends the shim (deciding before the
            // Delete, each saw the other and neither did).
            let shared = t
                .address
                .as_deref()
                .is_some_and(|a| self.shim_shared(namespace, id, a, false));
            // The shim's Shutdown and its end (threads, its socket) need not keep the
            // caller: only a new task of the same id waits for them.
            self.reap_shim(namespace, id, &t, shared);
        } else {
            // a dead shim's cleanup may still be running
            let _guard = t.cleanup.lock().await;
            self.release_bundle(&t.bundle);
        }
        t.stop_background();
        if let Some(h) = t.monitor.lock().unwrap().take() {
            h.abort();
        }
        self.inner
            .tasks
            .lock()
            .unwrap()
            .remove(&(namespace.to_owned(), id.to_owned()));
        let exit = exit.or_else(|| t.exit()).unwrap_or(Exit {
            pid: t.pid.load(Ordering::Relaxed),
            status: EXIT_STATUS_KILLED,
            exited_at_ms: record::now_ms(),
        });
        Ok(exit)
    }

    /// Shuts a deleted task's shim down in the background and waits for it to end (killing
    /// it if it lingers) and for its socket to go, then releases the bundle, which the shim
    /// may use until it ends (rshim's deferred runtime delete runs there); until then
    /// `create` of the same id waits. A shim still `shared` with other tasks goes on: only
    /// the bundle is released.
    fn reap_shim(&self, namespace: &str, id: &str, t: &Task, shared: bool) {
        let (pid, address, bundle) = (t.shim_pid, t.address.clone(), t.bundle.clone());
        if shared {
            // the shim goes on serving its other tasks (it ignores a Shutdown then); this
            // task's runtime delete was done before the reply
            self.release_bundle(&bundle);
            return;
        }
        let client = t.client.clone();
        let key = (namespace.to_owned(), id.to_owned());
        let (done, gone) = watch::channel(false);
        self.inner.exiting.lock().unwrap().insert(key.clone(), gone);
        let m = self.clone();
        let (namespace, id) = (namespace.to_owned(), id.to_owned());
        tokio::spawn(async move {
            // the shim exits while answering: a closed connection is success here
            if let Some(c) = client {
                let req = api::ShutdownRequest {
                    id: id.clone(),
                    ..Default::default()
                };
                let _ = c
                    .shutdown(ctx(&namespace, Some(Duration::from_secs(5))), &req)
                    .await;
            }
            if let Some(pid) = pid {
                if !shim::wait_gone(pid, Duration::from_secs(5)).await {
                    warn!(
                        namespace,
                        id, pid, "shim still running after shutdown: killing it"
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    shim::wait_gone(pid, Duration::from_secs(2)).await;
                }
            }
            // a shim should remove its socket on the way out; not every one does, and a
            // child that inherited its listener keeps the socket answering for a moment
            if let Some(a) = &address {
                for _ in 0..25 {
                    if remove_dead_socket(a) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            m.release_bundle(&bundle);
            m.inner.exiting.lock().unwrap().remove(&key);
            let _ = done.send(true);
        });
    }

    /// Whether the init of task `id` is known to have exited (its exit event came).
    pub fn exited(&self, namespace: &str, id: &str) -> bool {
        self.get(namespace, id).is_ok_and(|t| t.exit().is_some())
    }

    /// Returns once the shim of a deleted task `id` has ended (at once if none is ending):
    /// its runtime's delete, with the container's cgroup, is then done too.
    pub async fn settled(&self, namespace: &str, id: &str) {
        let key = (namespace.to_owned(), id.to_owned());
        let exiting = self.inner.exiting.lock().unwrap().get(&key).cloned();
        if let Some(mut gone) = exiting {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    /// [`TaskManager::settled`] for every task of `namespace` whose shim is ending now.
    pub async fn settled_all(&self, namespace: &str) {
        let ending: Vec<_> = self
            .inner
            .exiting
            .lock()
            .unwrap()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, gone)| gone.clone())
            .collect();
        for mut gone in ending {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    async fn call<T, F, Fut>(
        &self,
        t: &Arc<Task>,
        method: &'static str,
        exec_id: Option<&str>,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(TaskClient, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        self.call_with(t, method, exec_id, Some(CALL_TIMEOUT), f)
            .await
    }

    /// One call to the shim. A transport failure means the shim is gone: the dead-shim
    /// cleanup starts and the call fails with `ShimDied`.
    async fn call_with<T, F, Fut>(
        &self,
        t: &Arc<Task>,
        method: &'static str,
        exec_id: Option<&str>,
        timeout: Option<Duration>,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(TaskClient, ttrpc::context::Context) -> Fut,
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let client = match &t.client {
            Some(c) if !t.dead.load(Ordering::Relaxed) => c.clone(),
            _ => {
                return Err(TaskError::ShimDied {
                    namespace: t.namespace.clone(),
                    id: t.id.clone(),
                })
            }
        };
        match f(client, ctx(&t.namespace, timeout)).await {
            Ok(r) => Ok(r),
            Err(e)
                if shim::is_transport_error(&e) && !t.shim_pid.is_none_or(shim::process_alive) =>
            {
                if !t.deleting.load(Ordering::Relaxed) {
                    self.shim_died(t).await;
                }
                Err(TaskError::ShimDied {
                    namespace: t.namespace.clone(),
                    id: t.id.clone(),
                })
            }
            Err(ttrpc::Error::Others(m)) if m.contains("timeout") => Err(TaskError::Timeout {
                id: t.id.clone(),
                method,
                seconds: timeout.unwrap_or_default().as_secs(),
            }),
            Err(e) => Err(shim_error(&t.id, exec_id, method, e)),
        }
    }

    /// The shim is gone: release what it held (its binary's `delete`: runc `delete --force`,
    /// rootfs mounts), record the init's exit (137 unless the shim reported one before),
    /// and tell subscribers, as containerd does for a dead shim.
    async fn shim_died(&self, t: &Arc<Task>) {
        let mut done = t.cleanup.lock().await;
        if *done {
            return;
        }
        t.dead.store(true, Ordering::Relaxed);
        warn!(namespace = %t.namespace, id = %t.id, "shim died: cleaning up after it");
        if let Some(pid) = t.shim_pid {
            if shim::process_alive(pid) {
                // unreachable but alive: it holds nothing rcd can use any more
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                shim::wait_gone(pid, Duration::from_secs(2)).await;
            }
        }
        let deleted = t.env.delete(&t.namespace, &t.id, &t.bundle).await;
        if let Err(e) = &deleted {
            warn!(namespace = %t.namespace, id = %t.id, "{e}");
        }
        if t.rootfs_mounted {
            unmount_all(&t.bundle.join("rootfs"));
        }
        t.stop_background();
        if let Some(a) = &t.address {
            if !remove_dead_socket(a) {
                warn!(namespace = %t.namespace, id = %t.id, "the dead shim's socket {a} still answers");
            }
        }
        let exit = t
            .exit()
            .or_else(|| record::load_exit(&t.bundle))
            .unwrap_or_else(|| {
                let (pid, status, at) = match &deleted {
                    Ok(r) => (
                        r.pid,
                        r.exit_status,
                        events::to_ms(events::to_system_time(&r.exited_at)),
                    ),
                    Err(_) => (0, EXIT_STATUS_KILLED, 0),
                };
                Exit {
                    pid: if pid == 0 {
                        t.pid.load(Ordering::Relaxed)
                    } else {
                        pid
                    },
                    status: if status == 0 {
                        EXIT_STATUS_KILLED
                    } else {
                        status
                    },
                    exited_at_ms: if at == 0 { record::now_ms() } else { at },
                }
            });
        t.set_exit(exit);
        let at = exit.exited_at();
        for kind in [
            TaskEventKind::Exit {
                id: t.id.clone(),
                exec_id: t.id.clone(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: at,
            },
            TaskEventKind::Delete {
                id: t.id.clone(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: at,
            },
        ] {
            let _ = self
                .inner
                .events
                .send(events::synthesized(&t.namespace, kind));
        }
        *done = true;
    }

    /// Finds every bundle under the state dir and takes each live shim back under the
    /// manager (state, pid, exit: the shim holds exits that happened while rcd was down).
    /// Dead shims are cleaned up (their binary's `delete`, mounts) and their tasks reported
    /// stopped; bundles of creations that never finished are removed.
    ///
    /// Events spooled by `rcd publish` while no daemon ran are sent first: subscribe before.
    pub async fn reconnect_all(&self) -> Result<Vec<Reconnected>> {
        let replayed = events::replay_spool(&self.inner.cfg.state_dir, &self.inner.events);
        if replayed > 0 {
            info!("replayed {replayed} events spooled while rcd was down");
        }
        let root = self.inner.cfg.state_dir.join(TASKS_DIR);
        let mut found = Vec::new();
        for ns in read_dirs(&root)? {
            for bundle in read_dirs(&ns)? {
                found.push(bundle);
            }
        }
        let mut out = Vec::new();
        let mut jobs = Vec::new();
        for bundle in found {
            let m = self.clone();
            jobs.push(tokio::spawn(async move { m.reconnect(&bundle).await }));
        }
        for j in jobs {
            match j.await {
                Ok(Ok(Some(r))) => out.push(r),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!("reconnecting: {e}"),
                Err(e) => warn!("reconnecting: {e}"),
            }
        }
        Ok(out)
    }

    async fn reconnect(&self, bundle: &Path) -> Result<Option<Reconnected>> {
        let name = |p: &Path| {
            p.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (namespace, id) = (name(bundle.parent().unwrap_or(bundle)), name(bundle));
        if self.get(&namespace, &id).is_ok()
            || self
                .inner
                .creating
                .lock()
                .unwrap()
                .contains(&(namespace.clone(), id.clone()))
        {
            return Ok(None);
        }
        if bundle.join(DELETING).exists() {
            // deleted, its reply given, but rcd ended before the shim had: finish it
            let binary = TaskRecord::load(bundle)
                .ok()
                .flatten()
                .map_or_else(|| self.inner.cfg.shim_binary.clone(), |r| r.shim_binary);
            self.discard(&namespace, &id, bundle, &binary).await;
            return Ok(Some(Reconnected::Removed { namespace, id }));
        }
        let rec = match TaskRecord::load(bundle) {
            Ok(Some(r)) if r.namespace == namespace && r.id == id => r,
            other => {
                if let Err(e) = other {
                    warn!("{e}");
                }
                let binary = self.inner.cfg.shim_binary.clone();
                self.discard(&namespace, &id, bundle, &binary).await;
                return Ok(Some(Reconnected::Removed { namespace, id }));
            }
        };
        let Some(address) = rec.address.clone().or_else(|| record::load_address(bundle)) else {
            // the shim never answered its start: nothing of the task was handed out
            self.discard(&namespace, &id, bundle, &rec.shim_binary)
                .await;
            return Ok(Some(Reconnected::Removed { namespace, id }));
        };
        let env = self.env(&rec.shim_binary);
        let (exit_tx, _) = watch::channel(record::load_exit(bundle));
        let live = async {
            let c = shim::connect(&id, &address).await.ok()?;
            let conn = c
                .connect(
                    ctx(&namespace, Some(Duration::from_secs(5))),
                    &api::ConnectRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .ok()?;
            let st = c
                .state(
                    ctx(&namespace, Some(Duration::from_secs(5))),
                    &api::StateRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                )
                .await;
            Some((c, conn, st))
        }
        .await;
        let (client, shim_pid, state) = match live {
            Some((c, conn, Ok(st))) => (Some(c), Some(conn.shim_pid), Some(st)),
            Some((_, _, Err(ttrpc::Error::RpcStatus(st)))) if st.code() == ShimCode::NOT_FOUND => {
                // rcd stopped between the shim's start and Create: nothing was handed out
                self.discard(&namespace, &id, bundle, &rec.shim_binary)
                    .await;
                return Ok(Some(Reconnected::Removed { namespace, id }));
            }
            _ => (None, rec.shim_pid, None),
        };
        let log = if state.is_some() {
            Some(shim::open_log(bundle, &id)?)
        } else {
            None
        };
        let task = Arc::new(Task {
            namespace: namespace.clone(),
            id: id.clone(),
            bundle: bundle.to_owned(),
            env,
            client,
            pid: AtomicU32::new(state.as_ref().map(|s| s.pid).unwrap_or(0)),
            shim_pid,
            address: Some(address),
            rootfs_mounted: rec.rootfs_mounted,
            dead: AtomicBool::new(false),
            deleting: AtomicBool::new(false),
            exit: exit_tx,
            log: Mutex::new(log),
            monitor: Mutex::new(None),
            cleanup: tokio::sync::Mutex::new(false),
        });
        match state {
            Some(st) => {
                let s = state_from(&id, None, &st);
                if s.status == TaskStatus::Stopped {
                    if let Some(e) = s.exit {
                        task.set_exit(e);
                    }
                }
                self.insert(task.clone());
                info!(namespace, id, status = ?s.status, "reconnected to shim");
                Ok(Some(Reconnected::Live {
                    namespace,
                    id,
                    status: s.status,
                    exit: task.exit(),
                }))
            }
            None => {
                self.inner
                    .tasks
                    .lock()
                    .unwrap()
                    .insert((namespace.clone(), id.clone()), task.clone());
                self.shim_died(&task).await;
                let exit = task.exit().expect("a dead shim's task has an exit");
                Ok(Some(Reconnected::ShimDied {
                    namespace,
                    id,
                    exit,
                }))
            }
        }
    }
}

/// Waits on the init for the life of the task: records its exit, or notices that the shim
/// died.
async fn monitor(m: TaskManager, t: Arc<Task>) {
    let req = api::WaitRequest {
        id: t.id.clone(),
        ..Default::default()
    };
    let Some(client) = t.client.clone() else {
        return;
    };
    loop {
        let r = client.wait(ctx(&t.namespace, None), &req).await;
        match r {
            Ok(r) => {
                let exit = exit_of(t.pid.load(Ordering::Relaxed), r.exit_status, &r.exited_at);
                debug!(namespace = %t.namespace, id = %t.id, status = exit.status, "task exited");
                t.set_exit(exit);
                return;
            }
            Err(e) if shim::is_transport_error(&e) => {
                if !t.deleting.load(Ordering::Relaxed) {
                    m.shim_died(&t).await;
                }
                return;
            }
            Err(e) => {
                warn!(namespace = %t.namespace, id = %t.id, "waiting on the task: {e:?}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn exit_of(
    pid: u32,
    status: u32,
    at: &MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) -> Exit {
    let t = events::to_system_time(at);
    Exit {
        pid,
        status,
        exited_at_ms: if t == SystemTime::UNIX_EPOCH {
            record::now_ms()
        } else {
            events::to_ms(t)
        },
    }
}

fn state_from(id: &str, exec_id: Option<&str>, r: &api::StateResponse) -> ProcessState {
    let status: TaskStatus = r.status.enum_value_or(api::Status::UNKNOWN).into();
    ProcessState {
        id: id.to_owned(),
        exec_id: exec_id.map(str::to_owned),
        pid: r.pid,
        status,
        exit: (status == TaskStatus::Stopped).then(|| exit_of(r.pid, r.exit_status, &r.exited_at)),
        terminal: r.terminal,
        stdin: r.stdin.clone(),
        stdout: r.stdout.clone(),
        stderr: r.stderr.clone(),
    }
}

fn dead_state(t: &Task, exec_id: Option<&str>) -> Result<ProcessState> {
    if exec_id.is_some() {
        return Err(TaskError::ShimDied {
            namespace: t.namespace.clone(),
            id: t.id.clone(),
        });
    }
    let exit = t.exit();
    Ok(ProcessState {
        id: t.id.clone(),
        exec_id: None,
        pid: exit
            .map(|e| e.pid)
            .unwrap_or_else(|| t.pid.load(Ordering::Relaxed)),
        status: TaskStatus::Stopped,
        exit,
        terminal: false,
        stdin: String::new(),
        stdout: String::new(),
        stderr: String::new(),
    })
}

fn shim_error(id: &str, exec_id: Option<&str>, method: &'static str, e: ttrpc::Error) -> TaskError {
    let (code, message) = shim::status_of(&e);
    TaskError::Shim {
        id: id.to_owned(),
        exec_id: exec_id.map(str::to_owned),
        method,
        code,
        message,
    }
}

/// Unmounts everything stacked on `path` (nothing mounted is fine).
fn unmount_all(path: &Path) {
    for _ in 0..16 {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                warn!("unmounting {}: {e}", path.display());
                return;
            }
        }
    }
}

/// Removes the socket file of a dead shim (a shim killed by a signal leaves it behind):
/// only a `unix://` path on which nothing answers. Whether the socket is gone now.
fn remove_dead_socket(address: &str) -> bool {
    let Some(path) = address.strip_prefix("unix://") else {
        return true;
    };
    if path.starts_with('@') {
        return true;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(path);
            true
        }
        Err(_) => true,
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(TaskError::io("reading", dir, e)),
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// containerd's runc shim options (`containerd.runc.v1.Options`) with only `root` (field 7)
/// set, which both rshim and containerd-shim-runc-v2 read.
fn runtime_options(root: &Path) -> Any {
    use containerd_shim_protos::protobuf::CodedOutputStream;
    let mut value = Vec::new();
    let mut out = CodedOutputStream::vec(&mut value);
    out.write_bytes(7, root.as_os_str().as_encoded_bytes())
        .and_then(|()| out.flush())
        .expect("writing to a Vec does not fail");
    drop(out);
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = value;
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::{
        well_known_types::empty::Empty, Message, UnknownValueRef,
    };

    #[test]
    fn runtime_options_carry_the_root() {
        // 200 bytes: a length that needs two varint bytes
        let root = PathBuf::from(format!("/{}", "r".repeat(199)));
        let any = runtime_options(&root);
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        let bag = Empty::parse_from_bytes(&any.value).unwrap();
        match bag.special_fields.unknown_fields().get(7) {
            Some(UnknownValueRef::LengthDelimited(b)) => {
                assert_eq!(b, root.as_os_str().as_encoded_bytes())
            }
            other => panic!("field 7: {other:?}"),
        }
    }
}
