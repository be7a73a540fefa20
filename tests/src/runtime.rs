//! Driving an OCI runtime binary with runc's command line: `runr` (ours) by default, or any
//! runtime named by `RTEST_RUNTIME` (e.g. `RTEST_RUNTIME=$(which runc)` to check that a test
//! encodes runc's behaviour).
//!
//! Every [`Runtime`] has its own `--root`, so tests never see each other's containers and run
//! in parallel. On drop it force-deletes every container it knows of and then checks that
//! nothing is left: no state under the root, no `rtest-<id>` cgroup, no process in one.

use crate::cgroup;
use serde_json::Value;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one runtime command may take before the test gives up on it.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a container to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut nap = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// Polls `f` until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut nap = Duration::from_millis(2);
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// True when process `pid` has exited: it is gone, or a zombie its parent has yet to reap
/// (an orphaned container init is reaped by the host's init, whenever that gets to it).
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The runtime under test: `$RTEST_RUNTIME`, else the workspace's own `runr` next to the test
/// executable (`target/<tuple>/<profile>/runr`). Panics when there is none.
pub fn runtime_binary() -> PathBuf {
    if let Some(v) = std::env::var_os("RTEST_RUNTIME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        let p = if p.components().count() == 1 && !p.exists() {
            which(&p.to_string_lossy()).unwrap_or(p)
        } else {
            p
        };
        assert!(
            p.is_file(),
            "RTEST_RUNTIME={} does not name an existing file",
            v.to_string_lossy()
        );
        return p;
    }
    let candidates = built_binary_candidates("runr");
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the runr binary was not found (looked at {}): build it first with `cargo build -p runr` \
         (same profile as the tests), or set RTEST_RUNTIME=/path/to/an/oci/runtime",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Where a workspace binary `name` may be, best first: the profile directory of the running
/// executable (a test's `target/<tuple>/<profile>/deps/<test>-<hash>`, or a binary such as rbench
/// in `target/<tuple>/<profile>/`), then the debug profile next to it. The layout is never named:
/// `.cargo/config.toml` builds for an explicit target, so the profile dirs are under
/// `target/<host tuple>/`, not `target/`.
pub fn built_binary_candidates(name: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
                dir.parent()
            } else {
                Some(dir)
            };
            if let Some(profile_dir) = profile_dir {
                dirs.push(profile_dir.to_owned());
                if let Some(target) = profile_dir.parent() {
                    dirs.push(target.join("debug"));
                }
            }
        }
    }
    dirs.dedup();
    dirs.into_iter().map(|d| d.join(name)).collect()
}

/// The result of one runtime command.
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The file the command's stdout went to; a detached container keeps writing to it.
    pub stdout_file: PathBuf,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl Output {
    /// The exit code; `128 + signal` when the runtime itself was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self:?}");
        self
    }

    /// Asserts the command failed.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self:?}");
        self
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "unexpected exit code: {self:?}");
        self
    }

    /// Asserts the command failed and its stderr mentions at least one of `any_of`
    /// (case-insensitively).
    #[track_caller]
    pub fn fails_mentioning(self, any_of: &[&str]) -> Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self:?}");
        let err = self.stderr.to_lowercase();
        assert!(
            any_of.iter().any(|w| err.contains(&w.to_lowercase())),
            "stderr should mention one of {any_of:?}: {self:?}"
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// What the stdout file holds now (a detached container may have written more).
    pub fn stdout_now(&self) -> String {
        fs::read_to_string(&self.stdout_file).unwrap_or_default()
    }
}

/// A runtime command still running.
pub struct Running {
    child: Option<Child>,
    args: Vec<String>,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().ok().flatten()
    }

    /// What it wrote to stdout so far.
    pub fn stdout_now(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits up to [`CMD_TIMEOUT`].
    #[track_caller]
    pub fn wait(self) -> Output {
        self.wait_timeout(CMD_TIMEOUT)
    }

    /// Waits up to `timeout`, then kills the command and panics.
    #[track_caller]
    pub fn wait_timeout(mut self, timeout: Duration) -> Output {
        let status = match poll_wait(self.child.as_mut().unwrap(), timeout) {
            Some(s) => s,
            None => {
                let mut child = self.child.take().unwrap();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.args.join(" "),
                    fs::read_to_string(&self.out).unwrap_or_default(),
                    fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
        };
        self.child = None;
        Output {
            args: std::mem::take(&mut self.args),
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            stdout_file: self.out.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn poll_wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// One test's runtime: the binary, a private `--root`, and the containers to clean up.
pub struct Runtime {
    bin: PathBuf,
    work: tempfile::TempDir,
    ids: Mutex<Vec<String>>,
    /// Bundle directories made by [`Runtime::busybox`], removed after the containers.
    bundles: Mutex<Vec<PathBuf>>,
    seq: AtomicU32,
    /// Skip the leftover checks on drop (cleanup still happens).
    pub skip_leftover_check: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// The runtime from [`runtime_binary`] with a fresh root directory.
    pub fn new() -> Runtime {
        let bin = runtime_binary();
        let work = tempfile::Builder::new()
            .prefix("rtest-rt-")
            .tempdir()
            .expect("creating runtime work dir");
        fs::create_dir(work.path().join("root")).unwrap();
        fs::create_dir(work.path().join("io")).unwrap();
        Runtime {
            bin,
            work,
            ids: Mutex::new(Vec::new()),
            bundles: Mutex::new(Vec::new()),
            seq: AtomicU32::new(0),
            skip_leftover_check: false,
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The `--root` every command gets.
    pub fn root(&self) -> PathBuf {
        self.work.path().join("root")
    }

    /// A scratch directory private to this test, removed on drop.
    pub fn scratch(&self) -> PathBuf {
        let d = self.work.path().join("scratch");
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Whether the runtime under test is runr (as opposed to e.g. runc).
    pub fn is_runr(&self) -> bool {
        self.bin
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("runr"))
    }

    /// For tests of runr-only behaviour: true (and a note on stderr) when the runtime
    /// is not runr, in which case the caller returns early.
    pub fn skip_unless_runr(&self, what: &str) -> bool {
        if self.is_runr() {
            return false;
        }
        eprintln!(
            "skipping runr-only check ({what}) against {}",
            self.bin.display()
        );
        true
    }

    /// A fresh container ID, remembered so that drop deletes the container and checks that
    /// its cgroup is gone. Bundles for it get `cgroupsPath: /rtest-<id>`.
    pub fn id(&self, prefix: &str) -> String {
        let id = crate::unique_id(prefix);
        self.track(&id);
        id
    }

    /// Remembers `id` for cleanup.
    pub fn track(&self, id: &str) {
        let mut ids = self.ids.lock().unwrap();
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }

    /// A command for the runtime with `--root` and then `args`; stdin is /dev/null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root()).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn io_files(&self) -> (PathBuf, PathBuf) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let io = self.work.path().join("io");
        (io.join(format!("{n}.out")), io.join(format!("{n}.err")))
    }

    fn display_args(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.bin.display().to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    }

    /// Starts `cmd` with stdout and stderr going to files: a container started by it may
    /// inherit them and outlive it, which would keep a pipe open forever.
    pub fn spawn_command(&self, mut cmd: Command, args: &[&str]) -> Running {
        let (out, err) = self.io_files();
        cmd.stdout(File::create(&out).unwrap());
        cmd.stderr(File::create(&err).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        Running {
            child: Some(child),
            args: self.display_args(args),
            out,
            err,
        }
    }

    /// Starts `runtime --root R args...` without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_command(self.command(args), args)
    }

    /// Runs `runtime --root R args...` to completion.
    pub fn cmd(&self, args: &[&str]) -> Output {
        self.spawn(args).wait()
    }

    /// Runs a command with `input` on its stdin.
    pub fn cmd_stdin(&self, args: &[&str], input: &str) -> Output {
        let (inp, _) = self.io_files();
        fs::write(&inp, input).unwrap();
        let mut c = self.command(args);
        c.stdin(File::open(&inp).unwrap());
        self.spawn_command(c, args).wait()
    }

    /// Runs a command that additionally gets `fds` as its descriptors 3, 4, ...
    pub fn cmd_with_fds(&self, args: &[&str], fds: Vec<OwnedFd>) -> Output {
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut c = self.command(args);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // move everything out of the way first so no source is clobbered
                let mut high = Vec::with_capacity(raw.len());
                for &fd in &raw {
                    let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, &h) in high.iter().enumerate() {
                    if libc::dup2(h, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let out = self.spawn_command(c, args).wait();
        drop(fds);
        out
    }

    // ---- conveniences; each asserts success unless it returns the Output ----

    /// A busybox bundle for container `id` running `args` (see [`crate::Bundle::busybox`]).
    #[track_caller]
    pub fn busybox(&self, id: &str, args: &[&str]) -> crate::Bundle {
        self.track(id);
        let mut b = crate::Bundle::busybox(id, args).expect("building busybox bundle");
        // the bundle must outlive the container: drop removes it after `delete --force`
        b.keep_on_drop();
        self.bundles.lock().unwrap().push(b.path().to_owned());
        b
    }

    /// A new container running `sleep 600`, started with `run --detach`: `(id, bundle)`.
    #[track_caller]
    pub fn sleeper(&self, prefix: &str) -> (String, crate::Bundle) {
        let id = self.id(prefix);
        let b = self.busybox(&id, &["sleep", "600"]);
        self.run_detached(&b, &id);
        (id, b)
    }

    /// `create --bundle B [extra...] ID`, asserting success.
    #[track_caller]
    pub fn create(&self, bundle: &crate::Bundle, id: &str) -> Output {
        self.create_with(bundle, id, &[])
    }

    /// `create --bundle B extra... ID`, asserting success.
    #[track_caller]
    pub fn create_with(&self, bundle: &crate::Bundle, id: &str, extra: &[&str]) -> Output {
        self.track(id);
        let b = bundle.path().to_str().unwrap();
        let mut args = vec!["create", "--bundle", b];
        args.extend_from_slice(extra);
        args.push(id);
        self.cmd(&args).ok()
    }

    /// `start ID`, asserting success.
    #[track_caller]
    pub fn start(&self, id: &str) -> Output {
        self.cmd(&["start", id]).ok()
    }

    /// `run --detach --bundle B ID`, asserting success; the container is running.
    #[track_caller]
    pub fn run_detached(&self, bundle: &crate::Bundle, id: &str) -> Output {
        self.track(id);
        let b = bundle.path().to_str().unwrap();
        self.cmd(&["run", "--detach", "--bundle", b, id]).ok()
    }

    /// `run --bundle B ID` in the foreground; returns whatever happened.
    pub fn run_fg(&self, bundle: &crate::Bundle, id: &str) -> Output {
        self.track(id);
        let b = bundle.path().to_str().unwrap();
        self.cmd(&["run", "--bundle", b, id])
    }

    /// `exec ID args...`; returns whatever happened.
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        let mut a = vec!["exec", id];
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    /// `state ID` parsed, asserting success.
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        self.cmd(&["state", id]).ok().json()
    }

    /// The `status` of `state ID`.
    #[track_caller]
    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `pid` of `state ID`.
    #[track_caller]
    pub fn pid(&self, id: &str) -> i32 {
        let s = self.state(id);
        s["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("state has no pid: {s}")) as i32
    }

    /// Waits until `state ID` says `status`.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str) {
        let mut last = String::new();
        let ok = poll_until(STATE_TIMEOUT, || {
            let o = self.cmd(&["state", id]);
            last = format!("{o:?}");
            o.success()
                && serde_json::from_str::<Value>(&o.stdout)
                    .is_ok_and(|v| v["status"].as_str() == Some(status))
        });
        assert!(ok, "container {id} did not become {status}; last: {last}");
    }

    /// `kill ID SIGNAL`, asserting success.
    #[track_caller]
    pub fn kill(&self, id: &str, signal: &str) -> Output {
        self.cmd(&["kill", id, signal]).ok()
    }

    /// `delete ID`, asserting success.
    #[track_caller]
    pub fn delete(&self, id: &str) -> Output {
        self.cmd(&["delete", id]).ok()
    }

    /// `delete --force ID`, asserting success.
    #[track_caller]
    pub fn delete_force(&self, id: &str) -> Output {
        self.cmd(&["delete", "--force", id]).ok()
    }

    /// The directories under `--root` (runc keeps one per container there; other files, such
    /// as a lock, are the runtime's business).
    pub fn root_entries(&self) -> Vec<String> {
        fs::read_dir(self.root())
            .map(|rd| {
                // `.seccomp` is runr's cache of compiled filters, shared by containers
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".seccomp")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What is left of container `id`: its state under the root, its cgroups, its processes.
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.root().join(id).exists() {
            out.push(format!("state dir {}", self.root().join(id).display()));
        }
        let name = format!("rtest-{id}");
        for d in cgroup::leftover_dirs(&name) {
            out.push(format!("cgroup {}", d.display()));
        }
        for pid in cgroup::pids_in(&name) {
            let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            out.push(format!("process {pid} ({})", cmd.trim()));
        }
        out
    }

    /// Asserts that container `id` left nothing behind (waiting briefly for the runtime's
    /// asynchronous cleanup).
    #[track_caller]
    pub fn assert_no_leftovers(&self, id: &str) {
        let mut left = Vec::new();
        let clean = poll_until(Duration::from_secs(5), || {
            left = self.leftovers(id);
            left.is_empty()
        });
        assert!(clean, "container {id} left things behind: {left:#?}");
    }

    /// Asserts the root holds no container at all.
    #[track_caller]
    pub fn assert_root_empty(&self) {
        let e = self.root_entries();
        assert!(e.is_empty(), "containers left under --root: {e:?}");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let mut ids = self.ids.lock().unwrap().clone();
        for e in self.root_entries() {
            if !ids.contains(&e) {
                ids.push(e);
            }
        }
        for id in &ids {
            let _ = self
                .spawn(&["delete", "--force", id])
                .wait_timeout_quiet(Duration::from_secs(20));
        }
        let mut problems = Vec::new();
        let settled = poll_until(Duration::from_secs(5), || {
            problems.clear();
            for e in self.root_entries() {
                problems.push(format!("state dir {e} under --root"));
            }
            for id in &ids {
                problems.extend(self.leftovers(id).into_iter().map(|p| format!("{id}: {p}")));
            }
            problems.is_empty()
        });
        if settled {
            self.remove_bundles();
            return;
        }
        // clean up by hand so one failure does not leak into the rest of the machine
        for id in &ids {
            let name = format!("rtest-{id}");
            for pid in cgroup::pids_in(&name) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            poll_until(Duration::from_secs(2), || cgroup::pids_in(&name).is_empty());
            for d in cgroup::leftover_dirs(&name) {
                let _ = fs::remove_dir(&d);
            }
        }
        self.remove_bundles();
        if !self.skip_leftover_check && !std::thread::panicking() {
            panic!("left behind after delete --force: {problems:#?}");
        } else {
            eprintln!("left behind after delete --force (cleaned by hand): {problems:#?}");
        }
    }
}

impl Runtime {
    fn remove_bundles(&self) {
        for b in self.bundles.lock().unwrap().drain(..) {
            let _ = fs::remove_dir_all(&b);
        }
    }
}

impl Running {
    /// Like [`Running::wait_timeout`] but never panics.
    pub fn wait_timeout_quiet(mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let s = poll_wait(child, timeout);
        if s.is_some() {
            self.child = None;
        }
        s
    }
}
