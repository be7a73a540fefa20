//! Runs a shim action (`start`, `delete`) in the bundle dir through `posix_spawn`, or starts
//! rshim's serving copy directly (`daemon`).
//!
//! The shim v2 protocol gives the bundle as the action's working directory. `std`'s
//! `Command::current_dir` makes `std` fall back from `posix_spawn` to `fork` in a static glibc
//! binary (it finds `posix_spawn_file_actions_addchdir_np` through `dlsym`, which a static
//! binary lacks), and a `fork` of rcd copies the page tables of its whole mapped binary: 0.8 ms
//! per container start measured here, against 0.3 ms for a vfork-style spawn. Calling
//! `posix_spawn` with `addchdir_np` directly keeps the spawn cheap.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// What a finished action left: its status, stdout and stderr.
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} holds a nul byte"),
        )
    })
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r != 0 {
        let e = io::Error::from_raw_os_error(r);
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// A pipe whose read end is non-blocking (for tokio) and close-on-exec, and whose write end
/// is blocking (for the child: `dup2` onto 1 or 2 clears its close-on-exec).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    Ok((r, w))
}

/// What the child's fds 0-3 are.
enum ChildIo<'a> {
    /// stdin on /dev/null, stdout and stderr on these pipes' write ends.
    Pipes { out: &'a OwnedFd, err: &'a OwnedFd },
    /// 0-2 on /dev/null, this listening socket on fd 3, in a session of its own.
    Daemon { listener: &'a OwnedFd },
}

/// Starts `binary args…` in `cwd` with rcd's environment plus `env`, its fds as `io` says,
/// every signal at its default and none blocked.
fn spawn(
    binary: &Path,
    args: &[OsString],
    cwd: &Path,
    env: &[(&str, &OsStr)],
    io: ChildIo<'_>,
) -> io::Result<libc::pid_t> {
    let prog = cstring(binary.as_os_str())?;
    let argv_owned = std::iter::once(Ok(prog.clone()))
        .chain(args.iter().map(|a| cstring(a)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut vars: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in env {
        vars.insert(OsString::from(k), v.to_os_string());
    }
    let env_owned = vars
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstring(OsStr::from_bytes(&b))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr() as *mut libc::c_char)
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect::<Vec<_>>()
    };
    let (argv, envp) = (ptrs(&argv_owned), ptrs(&env_owned));
    let cwd = cstring(cwd.as_os_str())?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use and destroyed on
    // every path; every pointer handed to posix_spawn (program, argv, envp, cwd, /dev/null)
    // points into CStrings and vectors that outlive the call, and argv/envp end with null.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(
            libc::posix_spawn_file_actions_init(&mut fa),
            "posix_spawn_file_actions_init",
        )?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(
            libc::posix_spawnattr_init(&mut attr),
            "posix_spawnattr_init",
        ) {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(e);
        }
        let r = (|| {
            let null = |fa: &mut libc::posix_spawn_file_actions_t, fd, flags, what| {
                check(
                    libc::posix_spawn_file_actions_addopen(fa, fd, c"/dev/null".as_ptr(), flags, 0),
                    what,
                )
            };
            null(&mut fa, 0, libc::O_RDONLY, "stdin on /dev/null")?;
            let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            match io {
                ChildIo::Pipes { out, err } => {
                    check(
                        libc::posix_spawn_file_actions_adddup2(&mut fa, out.as_raw_fd(), 1),
                        "stdout pipe",
                    )?;
                    check(
                        libc::posix_spawn_file_actions_adddup2(&mut fa, err.as_raw_fd(), 2),
                        "stderr pipe",
                    )?;
                }
                ChildIo::Daemon { listener } => {
                    null(&mut fa, 1, libc::O_WRONLY, "stdout on /dev/null")?;
                    null(&mut fa, 2, libc::O_WRONLY, "stderr on /dev/null")?;
                    // the caller keeps the listener above 3: a dup2 onto itself would leave
                    // it close-on-exec
                    check(
                        libc::posix_spawn_file_actions_adddup2(&mut fa, listener.as_raw_fd(), 3),
                        "listener on fd 3",
                    )?;
                    // rcd's signals (a ^C at its terminal) and its end are not the shim's
                    flags |= libc::POSIX_SPAWN_SETSID as libc::c_int;
                }
            }
            check(
                libc::posix_spawn_file_actions_addchdir_np(&mut fa, cwd.as_ptr()),
                "working directory",
            )?;
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(
                libc::posix_spawnattr_setsigmask(&mut attr, &none),
                "signal mask",
            )?;
            // rcd ignores SIGPIPE (Rust's runtime does): the child starts with defaults
            check(
                libc::posix_spawnattr_setsigdefault(&mut attr, &all),
                "default signals",
            )?;
            check(
                libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short),
                "spawn flags",
            )?;
            // a bare name is looked up in rcd's PATH, as `Command` does
            check(
                libc::posix_spawnp(
                    &mut pid,
                    prog.as_ptr(),
                    &fa,
                    &attr,
                    argv.as_ptr(),
                    envp.as_ptr(),
                ),
                "posix_spawnp",
            )
        })();
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        r?;
    }
    Ok(pid)
}

/// Reaps `pid`, waiting for its exit without holding a runtime thread when a pidfd is
/// available.
async fn reap(pid: libc::pid_t) -> io::Result<ExitStatus> {
    if let Some(fd) = super::shim::pidfd_open(pid as u32) {
        use tokio::io::{unix::AsyncFd, Interest};
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open while it lives.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            let _ = afd.readable().await?;
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child with a status we own.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return Ok(ExitStatus::from_raw(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    })
    .await
    .map_err(io::Error::other)?
}

async fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = Vec::new();
    rx.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Kills and reaps a child whose run was given up (timed out, or its caller's future
/// dropped), as `kill_on_drop` does for tokio's children.
struct Running(Option<libc::pid_t>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on our own child, not reaped yet: the reap that would have
            // was dropped before its waitpid returned.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = reap(pid).await;
                });
            }
        }
    }
}

/// Runs the action to its end, or kills it after `limit`. `Err` says what failed.
pub(crate) async fn run(
    binary: &Path,
    args: &[OsString],
    cwd: &Path,
    env: &[(&str, &OsStr)],
    limit: Duration,
) -> Result<Output, String> {
    let (out, out_w) = pipe().map_err(|e| format!("cannot make its stdout pipe: {e}"))?;
    let (err, err_w) = pipe().map_err(|e| format!("cannot make its stderr pipe: {e}"))?;
    let io = ChildIo::Pipes {
        out: &out_w,
        err: &err_w,
    };
    let pid = spawn(binary, args, cwd, env, io).map_err(|e| format!("cannot execute it: {e}"))?;
    drop((out_w, err_w));
    let mut running = Running(Some(pid));
    let all = async {
        let (stdout, stderr, status) = tokio::join!(read_all(out), read_all(err), reap(pid));
        Ok::<_, io::Error>(Output {
            status: status?,
            stdout: stdout?,
            stderr: stderr?,
        })
    };
    match tokio::time::timeout(limit, all).await {
        Ok(r) => {
            running.0 = None;
            r.map_err(|e| e.to_string())
        }
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

/// Starts a long-running child (rshim's serving copy) serving on `listener`, in a session of
/// its own, and reaps it on rcd's runtime whenever it ends. Returns its pid.
///
/// A child of rcd rather than of a `start` action that forks it and exits: the action's own
/// exec, start-up and fork, and the round trip to learn the address, are off every task
/// create. A shim outlives rcd all the same: rcd's exit only reparents it.
pub(crate) fn daemon(
    binary: &Path,
    args: &[OsString],
    cwd: &Path,
    env: &[(&str, &OsStr)],
    listener: &OwnedFd,
) -> io::Result<libc::pid_t> {
    let pid = spawn(binary, args, cwd, env, ChildIo::Daemon { listener })?;
    tokio::spawn(async move {
        if let Err(e) = reap(pid).await {
            tracing::warn!(pid, "reaping a shim: {e}");
        }
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_in_the_directory_with_the_environment_given() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "pwd; echo \"$RCD_SPAWN_TEST\"; echo oops >&2; exit 3".into(),
            ],
            dir.path(),
            &[("RCD_SPAWN_TEST", OsStr::new("here"))],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let want = format!("{}\nhere\n", dir.path().canonicalize().unwrap().display());
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(3));
    }

    /// The error of a run expected to fail.
    async fn run_err(binary: &str, args: &[&str], cwd: &Path, limit: Duration) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        run(Path::new(binary), &args, cwd, &[], limit)
            .await
            .err()
            .expect("the run fails")
    }

    #[tokio::test]
    async fn a_missing_binary_or_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Duration::from_secs(10);
        let e = run_err("/nonexistent/shim", &[], dir.path(), limit).await;
        assert!(e.contains("cannot execute it"), "{e}");
        let e = run_err("/bin/true", &[], &dir.path().join("gone"), limit).await;
        assert!(e.contains("cannot execute it"), "{e}");
    }

    #[tokio::test]
    async fn a_daemon_gets_the_listener_on_fd_3_its_own_session_and_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let listener = OwnedFd::from(listener);
        let report = dir.path().join("report");
        let script = format!(
            "{{ readlink /proc/self/fd/0; stat -L -c %F /proc/self/fd/3; \
             cut -d' ' -f6 /proc/self/stat; echo $$; pwd; }} > {}",
            report.display()
        );
        let pid = daemon(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            dir.path(),
            &[],
            &listener,
        )
        .unwrap();
        // reaped by rcd, its parent: gone from /proc, not left a zombie
        let gone = std::path::PathBuf::from(format!("/proc/{pid}"));
        let t = std::time::Instant::now();
        while gone.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "{pid} not reaped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&report).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/dev/null");
        assert_eq!(lines[1], "socket");
        // the session id is its own pid
        assert_eq!(lines[2], lines[3], "{text}");
        assert_eq!(
            lines[4],
            dir.path().canonicalize().unwrap().display().to_string()
        );
    }

    #[tokio::test]
    async fn an_action_past_its_limit_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let e = run_err(
            "/bin/sleep",
            &["30"],
            dir.path(),
            Duration::from_millis(200),
        )
        .await;
        assert!(e.contains("no answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
