//! The shim v2 Task service: one or more containers (a pod's), each with its init process
//! and exec'd processes, driven through the runtime binary.

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::Publisher;
use crate::reaper::{Exit, Reaper};
use crate::runtime::Runtime;
use crate::stdio::{self, ConsoleSocket, ForChild, Held};
use crate::{mount, options, stats, Error};

type Res<T> = ttrpc::Result<T>;

struct Proc {
    pid: i32,
    status: Status,
    exit: Option<Exit>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    held: Held,
    /// An exec's process.json, written at Exec, used at Start.
    spec: Option<PathBuf>,
    /// An exit reaped while the tty copier still drained the pty, and when it was reaped.
    pending: Option<(Exit, std::time::Instant)>,
}

/// How long an exit waits for its terminal's output to be passed on (a background process
/// still holding the pty would hold it back for ever).
const TTY_DRAIN: Duration = Duration::from_secs(1);

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Proc {
        Proc {
            pid: 0,
            status: Status::CREATED,
            exit: None,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            held: Held::default(),
            spec: None,
            pending: None,
        }
    }

    fn status(&self) -> Status {
        if self.exit.is_some() {
            Status::STOPPED
        } else {
            self.status
        }
    }
}

struct Container {
    bundle: PathBuf,
    runtime: Runtime,
    mounted: bool,
    /// "" is the init process.
    procs: HashMap<String, Proc>,
}

pub struct Service {
    reaper: Arc<Reaper>,
    events: Arc<Publisher>,
    containers: Mutex<HashMap<String, Container>>,
    cv: Condvar,
    namespace: String,
    shutdown: std::sync::atomic::AtomicBool,
    /// Runtime deletes still running after their Delete was answered (see
    /// [`DEFER_RUNTIME_DELETE`]); the process waits for them before it exits.
    deferred: Arc<std::sync::atomic::AtomicUsize>,
}

/// ttrpc metadata a caller puts on an init's Delete to have the runtime's `delete` of an
/// exited container run after the reply, off the caller's path. Only for a caller that owns
/// the rootfs, does not reuse the id before this shim has exited, and lets the container's
/// cgroup go after that too: rcd. containerd never sends it, so for containerd Delete
/// returns after the runtime's delete, as runc's shim does.
pub const DEFER_RUNTIME_DELETE: &str = "rshim-defer-runtime-delete";

fn ts(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    MessageField::some(ts)
}

/// Packs an event under its protobuf name (what containerd's typeurl looks up). The name is
/// spelled out: asking protobuf for it builds the reflection tables of the whole proto
/// file, hundreds of KiB of heap kept for the shim's life.
pub(crate) fn any<M: Message>(name: &str, m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = format!("containerd.events.{name}");
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// `<runtime> delete --force ID`; a container the runtime no longer knows is deleted already.
fn runtime_delete(
    runtime: &Runtime,
    reaper: &Reaper,
    bundle: &Path,
    id: &str,
) -> Result<(), Error> {
    match runtime.run(
        reaper,
        bundle,
        &["delete", "--force", id],
        ForChild::default(),
        false,
    ) {
        Err(e) if !e.to_string().contains("not exist") && !e.to_string().contains("not found") => {
            Err(e)
        }
        _ => Ok(()),
    }
}

fn proc_name(exec_id: &str) -> String {
    if exec_id.is_empty() {
        "init".into()
    } else {
        format!("exec-{exec_id}")
    }
}

/// What a daemon that was down reads to learn how a process ended.
#[derive(serde::Serialize)]
struct ExitRecord<'a> {
    container_id: &'a str,
    exec_id: &'a str,
    pid: i32,
    exit_status: u32,
    exited_at_unix_nanos: u128,
}

fn write_exit_file(bundle: &Path, cid: &str, exec_id: &str, e: &Exit) {
    let rec = ExitRecord {
        container_id: cid,
        exec_id,
        pid: e.pid,
        exit_status: e.status,
        exited_at_unix_nanos: e
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    };
    let path = bundle.join(format!("{}.exit", proc_name(exec_id)));
    let tmp = path.with_extension("exit.tmp");
    let json = serde_json::to_vec(&rec).expect("serializable");
    if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)) {
        tracing::warn!(path = %path.display(), error = %e, "writing exit record");
    }
}

fn read_pid(path: &Path) -> Result<i32, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("reading pid file {}", path.display()), e))?;
    text.trim()
        .parse()
        .map_err(|_| Error::Failed(format!("pid file {} holds {text:?}", path.display())))
}

fn check_id(what: &str, id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid {what} {id:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

impl Service {
    pub fn new(reaper: Arc<Reaper>, events: Publisher, namespace: String) -> Service {
        Service {
            reaper,
            events: Arc::new(events),
            containers: Mutex::new(HashMap::new()),
            cv: Condvar::new(),
            namespace,
            shutdown: Default::default(),
            deferred: Default::default(),
        }
    }

    /// No runtime delete is still running (see [`DEFER_RUNTIME_DELETE`]).
    pub fn deferred_done(&self) -> bool {
        self.deferred.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Stops taking events; the ones queued (the task's delete, right before Shutdown) are
    /// still published.
    pub fn close_events(&self) {
        self.events.close();
    }

    pub fn events_drained(&self) -> bool {
        self.events.drained()
    }

    /// Whether Shutdown asked the process to end (it then raises SIGUSR1).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap()
    }

    fn not_found(id: &str, exec_id: &str) -> Error {
        if exec_id.is_empty() {
            Error::NotFound(format!("container {id} not found"))
        } else {
            Error::NotFound(format!("process {exec_id} of container {id} not found"))
        }
    }

    fn with<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Container, &mut Proc) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut all = self.lock();
        let c = all.get_mut(id).ok_or_else(|| Self::not_found(id, ""))?;
        let mut p = c
            .procs
            .remove(exec_id)
            .ok_or_else(|| Self::not_found(id, exec_id))?;
        let r = f(c, &mut p);
        c.procs.insert(exec_id.to_owned(), p);
        r
    }

    /// Called by the signal thread after reaping: records exits of known processes.
    pub fn on_exits(&self) {
        let mut all = self.lock();
        let mut changed = false;
        for (cid, c) in all.iter_mut() {
            for (exec_id, p) in c.procs.iter_mut() {
                if p.pid <= 0 || p.exit.is_some() {
                    continue;
                }
                let held_back = p.pending.is_some();
                let reaped = match p.pending.take() {
                    Some(pending) => Some(pending),
                    None => self
                        .reaper
                        .take(p.pid)
                        .map(|e| (e, std::time::Instant::now())),
                };
                let Some((e, at)) = reaped else {
                    continue;
                };
                // A client reading the terminal must get all of its output before the exit
                // (as containerd's shims shut the console copy down first): the copier's
                // end wakes this loop again, the watchdog at the latest.
                let draining = p
                    .held
                    .tty_done
                    .as_ref()
                    .is_some_and(|d| !d.load(std::sync::atomic::Ordering::SeqCst));
                if draining && at.elapsed() < TTY_DRAIN {
                    p.pending = Some((e, at));
                    if !held_back {
                        let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(|| {
                            std::thread::sleep(TTY_DRAIN);
                            // SAFETY: kill(2) on this process with the loop's signal.
                            unsafe {
                                libc::kill(libc::getpid(), libc::SIGCHLD);
                            }
                        });
                    }
                    continue;
                }
                self.exited(cid, exec_id, &c.bundle, p, e);
                changed = true;
            }
        }
        if changed {
            self.cv.notify_all();
        }
    }

    fn exited(&self, cid: &str, exec_id: &str, bundle: &Path, p: &mut Proc, e: Exit) {
        tracing::info!(
            container = cid,
            exec = exec_id,
            pid = e.pid,
            status = e.status,
            "exited"
        );
        p.exit = Some(e);
        p.status = Status::STOPPED;
        write_exit_file(bundle, cid, exec_id, &e);
        let mut m = ev::TaskExit::new();
        m.container_id = cid.into();
        m.id = if exec_id.is_empty() {
            cid.into()
        } else {
            exec_id.into()
        };
        m.pid = e.pid as u32;
        m.exit_status = e.status;
        m.exited_at = ts(e.at);
        self.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, any("TaskExit", &m));
    }

    /// Registers `pid` for `p`, catching an exit reaped before the pid was known.
    fn started(&self, cid: &str, exec_id: &str, pid: i32) -> Result<(), Error> {
        let mut all = self.lock();
        let c = all.get_mut(cid).ok_or_else(|| Self::not_found(cid, ""))?;
        let bundle = c.bundle.clone();
        let p = c
            .procs
            .get_mut(exec_id)
            .ok_or_else(|| Self::not_found(cid, exec_id))?;
        p.pid = pid;
        if let Some(e) = self.reaper.take(pid) {
            self.exited(cid, exec_id, &bundle, p, e);
            self.cv.notify_all();
        }
        Ok(())
    }

    fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, Error> {
        check_id("container id", &req.id)?;
        if !req.checkpoint.is_empty() {
            return Err(Error::Invalid(format!(
                "create {}: restoring from a checkpoint is not supported",
                req.id
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(Error::Invalid(format!(
                "create {}: no config.json in bundle {}",
                req.id, req.bundle
            )));
        }
        let opts = options::parse(req.options.as_ref())?;
        let runtime = Runtime::resolve(&opts, &self.namespace)?;
        {
            let mut all = self.lock();
            if all.contains_key(&req.id) {
                return Err(Error::Exists(format!(
                    "container {} already exists",
                    req.id
                )));
            }
            // A placeholder so a concurrent create of the same id fails.
            all.insert(
                req.id.clone(),
                Container {
                    bundle: bundle.clone(),
                    runtime: runtime.clone(),
                    mounted: false,
                    procs: HashMap::new(),
                },
            );
        }
        let r = self.create_inner(&req, &bundle, &runtime);
        let mut all = self.lock();
        match r {
            Ok((pid, proc_)) => {
                let c = all.get_mut(&req.id).expect("placeholder");
                c.mounted = !req.rootfs.is_empty();
                c.procs.insert(String::new(), proc_);
                drop(all);
                self.started(&req.id, "", pid)?;
                let mut m = ev::TaskCreate::new();
                m.container_id = req.id.clone();
                m.bundle = req.bundle.clone();
                m.rootfs = req.rootfs.clone();
                let mut io = ev::TaskIO::new();
                io.stdin = req.stdin.clone();
                io.stdout = req.stdout.clone();
                io.stderr = req.stderr.clone();
                io.terminal = req.terminal;
                m.io = MessageField::some(io);
                m.pid = pid as u32;
                self.events
                    .publish(topics::TASK_CREATE_EVENT_TOPIC, any("TaskCreate", &m));
                let mut resp = api::CreateTaskResponse::new();
                resp.pid = pid as u32;
                Ok(resp)
            }
            Err(e) => {
                all.remove(&req.id);
                Err(e)
            }
        }
    }

    fn create_inner(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        runtime: &Runtime,
    ) -> Result<(i32, Proc), Error> {
        runtime.save(bundle)?;
        let rootfs = bundle.join("rootfs");
        mount::mount_rootfs(&req.rootfs, &rootfs)?;
        let undo_mount = || {
            if !req.rootfs.is_empty() {
                mount::unmount_rootfs(&rootfs);
            }
        };
        let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let r = self.spawn_process(&req.id, "", bundle, runtime, &mut p);
        match r {
            Ok(pid) => Ok((pid, p)),
            Err(e) => {
                undo_mount();
                Err(e)
            }
        }
    }

    /// `create` (init) or `exec` (exec_id) through the runtime, stdio wired up; the pid.
    fn spawn_process(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        runtime: &Runtime,
        p: &mut Proc,
    ) -> Result<i32, Error> {
        let (mut held, child) = if p.terminal {
            (Held::default(), ForChild::default())
        } else {
            stdio::open(&p.stdin, &p.stdout, &p.stderr, id, &self.namespace)?
        };
        let console = if p.terminal {
            Some(ConsoleSocket::new()?)
        } else {
            None
        };
        let pid_file = bundle.join(format!("{}.pid", proc_name(exec_id)));
        let _ = std::fs::remove_file(&pid_file);
        let pid_arg = pid_file.display().to_string();
        let bundle_arg = bundle.display().to_string();
        let console_arg = console.as_ref().map(|c| c.path.display().to_string());
        let spec_arg = p.spec.as_ref().map(|s| s.display().to_string());
        let mut args: Vec<&str> = if exec_id.is_empty() {
            vec!["create", "--bundle", &bundle_arg, "--pid-file", &pid_arg]
        } else {
            vec![
                "exec",
                "--process",
                spec_arg.as_deref().unwrap_or_default(),
                "--detach",
                "--pid-file",
                &pid_arg,
            ]
        };
        if let Some(c) = &console_arg {
            args.extend(["--console-socket", c]);
        }
        args.push(id);
        let run = runtime.run(&self.reaper, bundle, &args, child, false);
        held.wait_logger();
        run?;
        let pid = read_pid(&pid_file);
        let r = pid.and_then(|pid| {
            if let Some(c) = &console {
                let master = c.receive()?;
                stdio::start_tty_copy(&master, &p.stdin, &p.stdout, &mut held)?;
                held.console = Some(master);
            }
            Ok(pid)
        });
        match r {
            Ok(pid) => {
                p.held = held;
                Ok(pid)
            }
            Err(e) => {
                if exec_id.is_empty() {
                    let _ = runtime.run(
                        &self.reaper,
                        bundle,
                        &["delete", "--force", id],
                        ForChild::default(),
                        false,
                    );
                } else if let Ok(pid) = read_pid(&pid_file) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(e)
            }
        }
    }

    fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse, Error> {
        let (bundle, runtime, mut p) = {
            let mut all = self.lock();
            let c = all
                .get_mut(&req.id)
                .ok_or_else(|| Self::not_found(&req.id, ""))?;
            let p = c
                .procs
                .get_mut(&req.exec_id)
                .ok_or_else(|| Self::not_found(&req.id, &req.exec_id))?;
            if p.status() != Status::CREATED || (!req.exec_id.is_empty() && p.pid != 0) {
                return Err(Error::Precondition(format!(
                    "cannot start {}: it is {:?}",
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    },
                    p.status()
                )));
            }
            if !req.exec_id.is_empty() {
                let init_running = c
                    .procs
                    .get("")
                    .is_some_and(|i| i.status() == Status::RUNNING);
                if !init_running {
                    return Err(Error::Precondition(format!(
                        "cannot start exec {} in container {}: the container is not running",
                        req.exec_id, req.id
                    )));
                }
            }
            let p = c.procs.get_mut(&req.exec_id).expect("checked");
            let shadow = Proc {
                spec: p.spec.clone(),
                ..Proc::new(&p.stdin, &p.stdout, &p.stderr, p.terminal)
            };
            // Mark an exec so a second concurrent Start of it fails.
            if !req.exec_id.is_empty() {
                p.pid = -1;
            }
            (c.bundle.clone(), c.runtime.clone(), shadow)
        };
        let pid = if req.exec_id.is_empty() {
            runtime.run(
                &self.reaper,
                &bundle,
                &["start", &req.id],
                ForChild::default(),
                false,
            )?;
            let pid = self.with(&req.id, "", |_, p| Ok(p.pid))?;
            self.with(&req.id, "", |_, p| {
                if p.exit.is_none() {
                    p.status = Status::RUNNING;
                }
                Ok(())
            })?;
            let mut m = ev::TaskStart::new();
            m.container_id = req.id.clone();
            m.pid = pid as u32;
            self.events
                .publish(topics::TASK_START_EVENT_TOPIC, any("TaskStart", &m));
            crate::oom::watch(pid, &req.id, self.events.clone());
            pid
        } else {
            let r = self.spawn_process(&req.id, &req.exec_id, &bundle, &runtime, &mut p);
            let pid = match r {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = self.with(&req.id, &req.exec_id, |_, q| {
                        q.pid = 0;
                        Ok(())
                    });
                    return Err(e);
                }
            };
            self.with(&req.id, &req.exec_id, |_, q| {
                q.held = std::mem::take(&mut p.held);
                q.status = Status::RUNNING;
                Ok(())
            })?;
            if let Some(s) = &p.spec {
                let _ = std::fs::remove_file(s);
            }
            self.started(&req.id, &req.exec_id, pid)?;
            let mut m = ev::TaskExecStarted::new();
            m.container_id = req.id.clone();
            m.exec_id = req.exec_id.clone();
            m.pid = pid as u32;
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                any("TaskExecStarted", &m),
            );
            pid
        };
        crate::drop_mapped_text();
        let mut resp = api::StartResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    fn do_delete(
        &self,
        req: api::DeleteRequest,
        defer: bool,
    ) -> Result<api::DeleteResponse, Error> {
        let mut resp = api::DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let mut all = self.lock();
            let c = all
                .get_mut(&req.id)
                .ok_or_else(|| Self::not_found(&req.id, ""))?;
            let p = c
                .procs
                .get(&req.exec_id)
                .ok_or_else(|| Self::not_found(&req.id, &req.exec_id))?;
            if p.pid != 0 && p.exit.is_none() {
                return Err(Error::Precondition(format!(
                    "cannot delete process {} of {}: it is running",
                    req.exec_id, req.id
                )));
            }
            let p = c.procs.remove(&req.exec_id).expect("checked");
            let _ =
                std::fs::remove_file(c.bundle.join(format!("{}.exit", proc_name(&req.exec_id))));
            let _ = std::fs::remove_file(c.bundle.join(format!("{}.pid", proc_name(&req.exec_id))));
            if let Some(s) = &p.spec {
                let _ = std::fs::remove_file(s);
            }
            drop(all);
            // A Wait on a process that never ran ends now, with not found.
            self.cv.notify_all();
            resp.pid = p.pid.max(0) as u32;
            if let Some(e) = p.exit {
                resp.exit_status = e.status;
                resp.exited_at = ts(e.at);
            }
            return Ok(resp);
        }
        let (bundle, runtime, mounted, pid, exited) = {
            let all = self.lock();
            let c = all
                .get(&req.id)
                .ok_or_else(|| Self::not_found(&req.id, ""))?;
            let init = c
                .procs
                .get("")
                .ok_or_else(|| Self::not_found(&req.id, ""))?;
            (
                c.bundle.clone(),
                c.runtime.clone(),
                c.mounted,
                init.pid,
                init.exit.is_some(),
            )
        };
        // Only an exited init's delete is deferred: then nothing is left to kill, only the
        // runtime's state and cgroup to remove. A rootfs this shim mounted waits for it.
        if !(defer && exited && !mounted && self.defer_runtime_delete(&runtime, &bundle, &req.id)) {
            runtime_delete(&runtime, &self.reaper, &bundle, &req.id)?;
        }
        // delete --force of a created or running container kills its init: record that exit.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut all = self.lock();
        while pid > 0
            && all
                .get(&req.id)
                .and_then(|c| c.procs.get(""))
                .is_some_and(|p| p.exit.is_none())
            && std::time::Instant::now() < deadline
        {
            all = self
                .cv
                .wait_timeout(all, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        let c = all
            .remove(&req.id)
            .ok_or_else(|| Self::not_found(&req.id, ""))?;
        let empty = all.is_empty();
        drop(all);
        self.cv.notify_all();
        if mounted {
            mount::unmount_rootfs(&bundle.join("rootfs"));
        }
        for name in c.procs.keys().map(|e| proc_name(e)) {
            let _ = std::fs::remove_file(bundle.join(format!("{name}.exit")));
            let _ = std::fs::remove_file(bundle.join(format!("{name}.pid")));
        }
        let init = c.procs.get("");
        let (status, at) = match init.and_then(|p| p.exit) {
            Some(e) => (e.status, e.at),
            None => (128 + 9, SystemTime::now()),
        };
        resp.pid = pid.max(0) as u32;
        resp.exit_status = status;
        resp.exited_at = ts(at);
        let mut m = ev::TaskDelete::new();
        m.container_id = req.id.clone();
        m.id = req.id.clone();
        m.pid = resp.pid;
        m.exit_status = status;
        m.exited_at = ts(at);
        self.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, any("TaskDelete", &m));
        tracing::info!(container = req.id, remaining = !empty, "deleted");
        Ok(resp)
    }

    /// Runs the runtime's delete in a thread of its own; false if no thread could be made
    /// (the caller then runs it itself).
    fn defer_runtime_delete(&self, runtime: &Runtime, bundle: &Path, id: &str) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let (runtime, bundle, id) = (runtime.clone(), bundle.to_owned(), id.to_owned());
        let (reaper, deferred) = (self.reaper.clone(), self.deferred.clone());
        deferred.fetch_add(1, SeqCst);
        let spawned = std::thread::Builder::new()
            .name("delete".into())
            .stack_size(128 * 1024)
            .spawn({
                let deferred = deferred.clone();
                move || {
                    if let Err(e) = runtime_delete(&runtime, &reaper, &bundle, &id) {
                        tracing::warn!(container = id, error = %e, "runtime delete");
                    }
                    deferred.fetch_sub(1, SeqCst);
                    // the main thread re-checks whether it may exit now
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::this(),
                        nix::sys::signal::Signal::SIGUSR1,
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for a deferred runtime delete");
            deferred.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    fn do_exec(&self, req: api::ExecProcessRequest) -> Result<(), Error> {
        check_id("exec id", &req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("exec {}: no process spec", req.exec_id)))?;
        serde_json::from_slice::<serde_json::Value>(&spec.value).map_err(|e| {
            Error::Invalid(format!(
                "exec {}: process spec is not JSON: {e}",
                req.exec_id
            ))
        })?;
        let mut all = self.lock();
        let c = all
            .get_mut(&req.id)
            .ok_or_else(|| Self::not_found(&req.id, ""))?;
        if c.procs.contains_key(&req.exec_id) {
            return Err(Error::Exists(format!(
                "process {} of container {} already exists",
                req.exec_id, req.id
            )));
        }
        let path = c
            .bundle
            .join(format!("{}.process.json", proc_name(&req.exec_id)));
        std::fs::write(&path, &spec.value)
            .map_err(|e| Error::Io(format!("writing {}", path.display()), e))?;
        let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        p.spec = Some(path);
        c.procs.insert(req.exec_id.clone(), p);
        drop(all);
        let mut m = ev::TaskExecAdded::new();
        m.container_id = req.id.clone();
        m.exec_id = req.exec_id.clone();
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            any("TaskExecAdded", &m),
        );
        Ok(())
    }

    fn do_kill(&self, req: api::KillRequest) -> Result<(), Error> {
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            Error::Invalid(format!("kill {}: invalid signal {}", req.id, req.signal))
        })?;
        let (bundle, runtime) = self.with(&req.id, &req.exec_id, |c, p| {
            if p.exit.is_some() && !req.all {
                return Err(Error::NotFound(format!(
                    "process {} already finished",
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    }
                )));
            }
            if !req.exec_id.is_empty() {
                if p.pid <= 0 {
                    return Err(Error::Precondition(format!(
                        "process {} of {} is not started",
                        req.exec_id, req.id
                    )));
                }
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(|e| {
                    Error::Failed(format!("kill {} of {}: {e}", req.exec_id, req.id))
                })?;
            }
            Ok((c.bundle.clone(), c.runtime.clone()))
        })?;
        if req.exec_id.is_empty() {
            let s = (req.signal).to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([req.id.as_str(), s.as_str()]);
            runtime.run(&self.reaper, &bundle, &args, ForChild::default(), false)?;
        }
        Ok(())
    }

    fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, Error> {
        let mut all = self.lock();
        loop {
            let p = all
                .get(&req.id)
                .and_then(|c| c.procs.get(&req.exec_id))
                .ok_or_else(|| Self::not_found(&req.id, &req.exec_id))?;
            if let Some(e) = p.exit {
                let mut r = api::WaitResponse::new();
                r.exit_status = e.status;
                r.exited_at = ts(e.at);
                return Ok(r);
            }
            all = self.cv.wait(all).unwrap();
        }
    }

    fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse, Error> {
        let all = self.lock();
        let c = all
            .get(&req.id)
            .ok_or_else(|| Self::not_found(&req.id, ""))?;
        let p = c
            .procs
            .get(&req.exec_id)
            .ok_or_else(|| Self::not_found(&req.id, &req.exec_id))?;
        let mut r = api::StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = c.bundle.display().to_string();
        r.pid = p.pid.max(0) as u32;
        r.status = p.status().into();
        r.stdin = p.stdin.clone();
        r.stdout = p.stdout.clone();
        r.stderr = p.stderr.clone();
        r.terminal = p.terminal;
        if let Some(e) = p.exit {
            r.exit_status = e.status;
            r.exited_at = ts(e.at);
        }
        Ok(r)
    }

    fn runtime_of(&self, id: &str) -> Result<(PathBuf, Runtime, i32), Error> {
        let all = self.lock();
        let c = all.get(id).ok_or_else(|| Self::not_found(id, ""))?;
        let pid = c.procs.get("").map(|p| p.pid).unwrap_or(0);
        Ok((c.bundle.clone(), c.runtime.clone(), pid))
    }

    fn do_pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse, Error> {
        let (bundle, runtime, _) = self.runtime_of(&req.id)?;
        let out = runtime.run(
            &self.reaper,
            &bundle,
            &["ps", "--format", "json", &req.id],
            ForChild::default(),
            true,
        )?;
        let pids: Vec<u32> = serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map_err(|e| Error::Runtime(format!("ps {}: unreadable output: {e}", req.id)))?
            .unwrap_or_default();
        let mut r = api::PidsResponse::new();
        r.processes = pids
            .into_iter()
            .map(|pid| {
                let mut i = api::ProcessInfo::new();
                i.pid = pid;
                i
            })
            .collect();
        Ok(r)
    }

    fn do_simple(&self, id: &str, cmd: &str) -> Result<(), Error> {
        let (bundle, runtime, _) = self.runtime_of(id)?;
        runtime.run(
            &self.reaper,
            &bundle,
            &[cmd, id],
            ForChild::default(),
            false,
        )?;
        Ok(())
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        let code = match &e {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::Precondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::Runtime(_) | Error::Failed(_) | Error::Io(..) => ttrpc::Code::UNKNOWN,
        };
        tracing::warn!(error = %e, "request failed");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

fn empty() -> api::Empty {
    api::Empty::new()
}

impl containerd_shim_protos::Task for Service {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> Res<api::StateResponse> {
        Ok(self.do_state(req)?)
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> Res<api::CreateTaskResponse> {
        tracing::info!(
            id = req.id,
            bundle = req.bundle,
            terminal = req.terminal,
            "create"
        );
        Ok(self.do_create(req)?)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> Res<api::StartResponse> {
        tracing::info!(id = req.id, exec = req.exec_id, "start");
        Ok(self.do_start(req)?)
    }

    fn delete(&self, ctx: &TtrpcContext, req: api::DeleteRequest) -> Res<api::DeleteResponse> {
        tracing::info!(id = req.id, exec = req.exec_id, "delete");
        let defer = ctx.metadata.contains_key(DEFER_RUNTIME_DELETE);
        Ok(self.do_delete(req, defer)?)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> Res<api::PidsResponse> {
        Ok(self.do_pids(req)?)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> Res<api::Empty> {
        self.do_simple(&req.id, "pause")?;
        self.with(&req.id, "", |_, p| {
            if p.exit.is_none() {
                p.status = Status::PAUSED;
            }
            Ok(())
        })?;
        let mut m = ev::TaskPaused::new();
        m.container_id = req.id.clone();
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, any("TaskPaused", &m));
        Ok(empty())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> Res<api::Empty> {
        self.do_simple(&req.id, "resume")?;
        self.with(&req.id, "", |_, p| {
            if p.exit.is_none() {
                p.status = Status::RUNNING;
            }
            Ok(())
        })?;
        let mut m = ev::TaskResumed::new();
        m.container_id = req.id.clone();
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, any("TaskResumed", &m));
        Ok(empty())
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> Res<api::Empty> {
        tracing::info!(
            id = req.id,
            exec = req.exec_id,
            signal = req.signal,
            all = req.all,
            "kill"
        );
        self.do_kill(req)?;
        Ok(empty())
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> Res<api::Empty> {
        tracing::info!(
            id = req.id,
            exec = req.exec_id,
            terminal = req.terminal,
            "exec"
        );
        self.do_exec(req)?;
        Ok(empty())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> Res<api::Empty> {
        self.with(&req.id, &req.exec_id, |_, p| match &p.held.console {
            Some(m) => stdio::resize(m, req.width, req.height),
            None => Err(Error::Precondition(format!(
                "process {} of {} has no terminal",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            ))),
        })?;
        Ok(empty())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> Res<api::Empty> {
        self.with(&req.id, &req.exec_id, |_, p| {
            if req.stdin {
                if let Some(s) = &p.held.stdin {
                    s.close();
                }
            }
            Ok(())
        })?;
        Ok(empty())
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> Res<api::Empty> {
        let (bundle, runtime, _) = self.runtime_of(&req.id)?;
        let res = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::Invalid(format!("update {}: no resources", req.id)))?;
        serde_json::from_slice::<serde_json::Value>(&res.value).map_err(|e| {
            Error::Invalid(format!("update {}: resources are not JSON: {e}", req.id))
        })?;
        let path = bundle.join(format!("update-{}.json", crate::unique()));
        std::fs::write(&path, &res.value)
            .map_err(|e| Error::Io(format!("writing {}", path.display()), e))?;
        let p = path.display().to_string();
        let r = runtime.run(
            &self.reaper,
            &bundle,
            &["update", "--resources", &p, &req.id],
            ForChild::default(),
            false,
        );
        let _ = std::fs::remove_file(&path);
        r?;
        Ok(empty())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> Res<api::WaitResponse> {
        Ok(self.do_wait(req)?)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> Res<api::StatsResponse> {
        let (_, _, pid) = self.runtime_of(&req.id)?;
        let running = self
            .with(&req.id, "", |_, p| Ok(p.exit.is_none()))
            .unwrap_or(false);
        if pid <= 0 || !running {
            return Err(Error::Precondition(format!(
                "stats of {}: the container is not running",
                req.id
            ))
            .into());
        }
        let paths = stats::cgroup_paths(pid)?;
        let m = stats::metrics(&paths);
        let mut a = Any::new();
        a.type_url = stats::METRICS_TYPE_URL.into();
        a.value = m.write_to_bytes().unwrap_or_default();
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(a);
        Ok(r)
    }

    fn connect(&self, _: &TtrpcContext, req: api::ConnectRequest) -> Res<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self
            .lock()
            .get(&req.id)
            .and_then(|c| c.procs.get(""))
            .map(|p| p.pid.max(0) as u32)
            .unwrap_or(0);
        r.version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> Res<api::Empty> {
        let empty_ = self.lock().is_empty();
        if empty_ || req.now {
            tracing::info!(now = req.now, "shutting down");
            self.shutdown
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGUSR1);
        }
        Ok(empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("exec id", "e1").is_ok());
        assert!(check_id("exec id", "a.b_c-d").is_ok());
        let e = check_id("exec id", "../x").unwrap_err();
        assert!(e.to_string().starts_with("invalid exec id \"../x\""), "{e}");
        assert!(check_id("container id", "").is_err());
        assert!(check_id("container id", "-x").is_err());
    }

    #[test]
    fn event_type_urls_are_containerd_names() {
        use containerd_shim_protos::protobuf::MessageFull;
        // The spelled-out names are the messages' own.
        for (name, full) in [
            (
                "TaskExit",
                ev::TaskExit::descriptor().full_name().to_owned(),
            ),
            (
                "TaskCreate",
                ev::TaskCreate::descriptor().full_name().to_owned(),
            ),
            (
                "TaskStart",
                ev::TaskStart::descriptor().full_name().to_owned(),
            ),
            (
                "TaskDelete",
                ev::TaskDelete::descriptor().full_name().to_owned(),
            ),
            (
                "TaskExecAdded",
                ev::TaskExecAdded::descriptor().full_name().to_owned(),
            ),
            (
                "TaskExecStarted",
                ev::TaskExecStarted::descriptor().full_name().to_owned(),
            ),
            (
                "TaskPaused",
                ev::TaskPaused::descriptor().full_name().to_owned(),
            ),
            (
                "TaskResumed",
                ev::TaskResumed::descriptor().full_name().to_owned(),
            ),
        ] {
            assert_eq!(any(name, &ev::TaskExit::new()).type_url, full);
        }
    }
}
