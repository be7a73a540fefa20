//! rshim: containerd's shim v2 for the runr runtime (binary `containerd-shim-runr-v2`,
//! runtime `io.containerd.runr.v2`).
//!
//! containerd runs `<shim> -namespace NS -address SOCK -publish-binary BIN -id ID start` in
//! the bundle directory; the shim starts a copy of itself in a new session serving the Task
//! API over ttrpc on `/run/containerd/s/<sha256(SOCK/NS/ID)>`, writes that address to the
//! bundle's `address` file, prints it and exits. The copy is the parent (subreaper) of the
//! container's processes and runs the runtime binary for every operation.
//! `<shim> ... -id ID -bundle B delete` cleans up after a shim that died.

mod events;
mod mount;
mod oom;
mod options;
mod reaper;
mod runtime;
mod service;
mod stats;
mod stdio;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use protobuf::Message;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Errors of the Task service, each mapped to the ttrpc status containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// A number unique in this process, for temp names.
pub fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const SOCKET_DIR: &str = "/run/containerd/s";

#[derive(Debug, Default)]
struct Args {
    namespace: String,
    address: String,
    publish_binary: String,
    id: String,
    bundle: Option<PathBuf>,
    debug: bool,
    version: bool,
    action: Option<String>,
    /// Everything but the action, to start the serving copy with.
    flags: Vec<String>,
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if a.action.is_some() {
                bail!("unexpected argument {arg:?} after action");
            }
            a.action = Some(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        a.flags.push(arg.clone());
        match name {
            "debug" => a.debug = inline.as_deref() != Some("false"),
            "v" | "version" => a.version = true,
            "namespace" | "address" | "publish-binary" | "id" | "bundle" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = it
                            .next()
                            .with_context(|| format!("flag -{name} needs a value"))?
                            .clone();
                        a.flags.push(v.clone());
                        v
                    }
                };
                match name {
                    "namespace" => a.namespace = v,
                    "address" => a.address = v,
                    "publish-binary" => a.publish_binary = v,
                    "id" => a.id = v,
                    _ => a.bundle = Some(PathBuf::from(v)),
                }
            }
            _ => bail!("unknown flag {arg}"),
        }
    }
    Ok(a)
}

/// containerd 1.6's shim socket: `/run/containerd/s/<sha256(address/namespace/id)>`.
fn socket_path(address: &str, namespace: &str, id: &str) -> PathBuf {
    let d = Sha256::digest(format!("{address}/{namespace}/{id}").as_bytes());
    Path::new(SOCKET_DIR).join(hex::encode(d))
}

// ---- logging: one logfmt line per event to containerd's `log` FIFO in the bundle ----

struct LogSink {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    debug: bool,
}

impl LogSink {
    fn open(path: &Path) -> Option<File> {
        let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        if fifo {
            // Non-blocking: a containerd that is down or slow must never stall the shim.
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .ok()
        } else {
            OpenOptions::new().append(true).create(true).open(path).ok()
        }
    }

    fn write(&self, line: &[u8]) {
        let mut f = self.file.lock().unwrap();
        for _ in 0..2 {
            if f.is_none() {
                *f = self.path.as_deref().and_then(Self::open);
            }
            match f.as_mut() {
                None => return,
                Some(file) => match file.write(line) {
                    Ok(_) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(_) => *f = None,
                },
            }
        }
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, " msg={:?}", format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        let name = if field.name() == "message" {
            "msg"
        } else {
            field.name()
        };
        let _ = write!(self.0, " {name}={value:?}");
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogSink {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::INFO && !self.debug {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut f = Fields(format!(
            "time={}.{:09} level={} shim=rshim pid={}",
            now.as_secs(),
            now.subsec_nanos(),
            level.as_str().to_ascii_lowercase(),
            std::process::id()
        ));
        event.record(&mut f);
        f.0.push('\n');
        self.write(f.0.as_bytes());
    }
}

fn init_logging(path: Option<PathBuf>, debug: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    let sink = LogSink {
        path,
        file: Mutex::new(None),
        debug,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(sink));
}

// ---- actions ----

fn start(a: &Args) -> Result<()> {
    if a.id.is_empty() || a.namespace.is_empty() || a.address.is_empty() {
        bail!("start needs -namespace, -address and -id");
    }
    let sock = socket_path(&a.address, &a.namespace, &a.id);
    let address = format!("unix://{}", sock.display());
    let bundle = std::env::current_dir().context("current dir (the bundle)")?;
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            // A shim already serves this id (a pod's containers share one).
            std::fs::write(bundle.join("address"), &address).context("writing address")?;
            println!("{address}");
            return Ok(());
        }
        std::fs::remove_file(&sock)
            .with_context(|| format!("removing stale socket {}", sock.display()))?;
    }
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("creating {SOCKET_DIR}"))?;
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    let exe = std::env::current_exe().context("finding the shim executable")?;
    let lfd = listener.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.args(&a.flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if lfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(lfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&sock);
            return Err(e).context("starting the shim daemon");
        }
    };
    std::fs::write(bundle.join("shim.pid"), child.id().to_string()).context("writing shim.pid")?;
    std::fs::write(bundle.join("address"), &address).context("writing address")?;
    println!("{address}");
    Ok(())
}

fn delete(a: &Args) -> Result<()> {
    let bundle = match &a.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().context("current dir (the bundle)")?,
    };
    let reaper = reaper::Reaper::direct();
    let rt = runtime::Runtime::load(&bundle)
        .or_else(|| runtime::Runtime::resolve(&Default::default(), &a.namespace).ok());
    if let Some(rt) = rt {
        if let Err(e) = rt.run(
            &reaper,
            &bundle,
            &["delete", "--force", &a.id],
            stdio::ForChild::default(),
            false,
        ) {
            eprintln!("rshim delete: {e}");
        }
    }
    mount::unmount_rootfs(&bundle.join("rootfs"));
    if !a.address.is_empty() {
        let _ = std::fs::remove_file(socket_path(&a.address, &a.namespace, &a.id));
    }
    let mut r = containerd_shim_protos::api::DeleteResponse::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = protobuf::well_known_types::timestamp::Timestamp::new();
    t.seconds = now.as_secs() as i64;
    t.nanos = now.subsec_nanos() as i32;
    r.exited_at = protobuf::MessageField::some(t);
    r.exit_status = 128 + 9;
    std::io::stdout()
        .write_all(&r.write_to_bytes()?)
        .context("writing the delete response")?;
    Ok(())
}

/// Resident memory is what bounds the number of shims a node holds. The kernel maps the
/// pages around every page of a file that faults in ("fault-around", 64 KiB), so most of
/// the binary's and libc's code ends up resident though little of it runs while a shim
/// idles. After start-up and after a task starts (then the shim mostly waits), drop the
/// executable file mappings, which are never written: what runs next faults back in.
pub(crate) fn drop_mapped_text() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.next().unwrap_or("");
        if inode == "0" || !path.starts_with('/') || perms.contains('w') {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        let (addr, len) = (lo as *mut libc::c_void, hi - lo);
        // SAFETY: advice on mappings of our own; MADV_DONTNEED only on executable, never
        // written (private, read-only, file-backed) text, which reads back from the file.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if perms.starts_with("r-x") {
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }
    // SAFETY: returns freed heap to the kernel; no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn serve(a: &Args) -> Result<()> {
    // Before any thread starts, so every thread inherits the mask and one thread takes them.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        // Shutdown and the event publisher's "done"; SIGUSR2 the publisher's grace timeout
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    // One malloc arena: the shim's few threads allocate little, and every extra arena is
    // resident memory in each of possibly thousands of shims.
    // SAFETY: mallopt only tunes the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "becoming a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    let bundle = std::env::current_dir().context("current dir (the bundle)")?;
    init_logging(Some(bundle.join("log")), a.debug);
    let st = nix::sys::stat::fstat(3).context("fd 3: the socket `start` passes")?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("fd 3 is not a socket: run the shim through its `start` action");
    }
    let reaper = Arc::new(reaper::Reaper::default());
    let events =
        events::Publisher::new(&a.publish_binary, &a.address, &a.namespace, reaper.clone());
    let svc = Arc::new(service::Service::new(
        reaper.clone(),
        events,
        a.namespace.clone(),
    ));
    let service: Arc<dyn containerd_shim_protos::Task + Send + Sync> = svc.clone();
    let mut server = ttrpc::Server::new()
        .add_listener(3)
        .context("serving on fd 3")?
        .register_service(containerd_shim_protos::create_task(service))
        .set_thread_count_default(2)
        .set_thread_count_min(1)
        .set_thread_count_max(4);
    server.start().context("starting the ttrpc server")?;
    tracing::info!(id = a.id, namespace = a.namespace, "serving");
    drop_mapped_text();
    // The main thread takes every signal: children's exits, and SIGUSR1 from Shutdown, from
    // the event publisher once it has sent what was queued and from a deferred runtime
    // delete once it is done. Exiting at Shutdown itself
    // lost the task's /tasks/delete (one `publish` process per event, still running): the
    // main thread keeps reaping until the publisher is done, for at most EVENTS_GRACE.
    const EVENTS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
    let mut closing = None;
    loop {
        match mask.wait() {
            Ok(Signal::SIGCHLD) => {
                // also when nothing was reaped: the tty copier raises SIGCHLD to release an
                // exit it held back
                reaper.reap();
                svc.on_exits();
            }
            Ok(Signal::SIGUSR1) if svc.shutting_down() => {
                if closing.is_none() {
                    closing = Some(std::time::Instant::now());
                    svc.close_events();
                    let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(|| {
                        std::thread::sleep(EVENTS_GRACE);
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGUSR2);
                    });
                }
                if svc.events_drained() && svc.deferred_done() {
                    break;
                }
            }
            Ok(Signal::SIGUSR2) if closing.is_some() => {
                tracing::warn!("events still queued at shutdown after {EVENTS_GRACE:?}: dropped");
                break;
            }
            Ok(s) => tracing::info!(signal = %s, "ignoring signal"),
            Err(_) => {}
        }
    }
    // Let the Shutdown reply go out before the process ends: its server thread writes it
    // right after the handler raised SIGUSR1, usually long before the events are drained.
    // The daemon waits for this exit (and takes a connection closed by it as success), so
    // every millisecond slept here is added to each task delete.
    const REPLY_GRACE: std::time::Duration = std::time::Duration::from_millis(3);
    if let Some(left) = closing.and_then(|t| REPLY_GRACE.checked_sub(t.elapsed())) {
        std::thread::sleep(left);
    }
    if !a.address.is_empty() {
        let _ = std::fs::remove_file(socket_path(&a.address, &a.namespace, &a.id));
    }
    std::process::exit(0);
}

/// The shim program (both binaries).
pub fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rshim: {e:#}");
            std::process::exit(2);
        }
    };
    if args.version {
        println!(
            "rshim (containerd-shim-runr-v2) {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let r = match args.action.as_deref() {
        Some("start") => start(&args),
        Some("delete") => delete(&args),
        None => serve(&args),
        Some(other) => Err(anyhow::anyhow!(
            "unknown action {other:?}: use start, delete, or none to serve"
        )),
    };
    if let Err(e) = r {
        eprintln!("rshim: {e:#}");
        tracing::error!(error = format!("{e:#}"), "exiting");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_containerd_flags() {
        let a = parse_args(&v(&[
            "-namespace",
            "ns",
            "-address",
            "/a.sock",
            "-publish-binary",
            "/bin/ctd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]))
        .unwrap();
        assert_eq!(a.namespace, "ns");
        assert_eq!(a.address, "/a.sock");
        assert_eq!(a.publish_binary, "/bin/ctd");
        assert_eq!(a.id, "c1");
        assert!(a.debug);
        assert_eq!(a.action.as_deref(), Some("start"));
        assert_eq!(a.flags.len(), 9);
        let a = parse_args(&v(&["--id=x", "-bundle", "/b", "delete"])).unwrap();
        assert_eq!(a.id, "x");
        assert_eq!(a.bundle.as_deref(), Some(Path::new("/b")));
        let e = parse_args(&v(&["-bogus", "start"])).unwrap_err();
        assert_eq!(e.to_string(), "unknown flag -bogus");
        let e = parse_args(&v(&["-id"])).unwrap_err();
        assert_eq!(e.to_string(), "flag -id needs a value");
        let e = parse_args(&v(&["start", "extra"])).unwrap_err();
        assert!(e.to_string().contains("unexpected argument"));
    }

    #[test]
    fn socket_matches_containerd() {
        // The same vector the test harness checks against containerd 1.6.20.
        assert_eq!(
            socket_path("/tmp/scratch/ctd/ctd.sock", "rtest", "c6"),
            Path::new(
                "/run/containerd/s/07db42cfcb74e53715d80212bd12163dbd2496cbf66c75469b791fcf60c9ccea"
            )
        );
    }
}
