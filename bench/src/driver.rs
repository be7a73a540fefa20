//! The measuring driver: a small long-lived helper process that runs one command at a time
//! and reports its wall time, CPU time and peak RSS.
//!
//! `rbench runtime` starts one driver per runtime (`rbench __driver`) and talks to it over
//! stdin/stdout, one JSON object per line. Doing the fork/exec/wait in a separate small
//! process rather than in the orchestrator matters for two reasons:
//!
//! * **Memory.** A forked child starts with a copy of its parent's resident anonymous pages,
//!   and the kernel records the old image's high-water RSS at `execve`, so a child forked from
//!   a big parent reports at least the parent's size as `ru_maxrss`. The driver stays small and
//!   is the same for every runtime, so the floor is low and equal; `rbench` measures and prints
//!   it. (`/usr/bin/time` has the same floor for the same reason; `posix_spawn`/vfork would be
//!   worse: the child then reports the parent's whole RSS.)
//! * **Setup outside the timing.** crun 1.8 refuses this machine's hybrid cgroup layout unless
//!   `/sys/fs/cgroup/unified/cgroup.controllers` reads empty. The crun driver unshares its
//!   mount namespace and bind-mounts an empty file over it once at start-up, so crun's
//!   iterations pay nothing for it.
//!
//! The driver is a child subreaper, so every process of a run ends up reaped by the run's
//! direct child or by the driver. Per run it reports:
//!
//! * `child`: the `wait4` rusage of the direct child. That is what `/usr/bin/time -v` prints:
//!   the kernel returns the child's own usage plus that of the descendants the child itself
//!   waited for (for `ru_maxrss` the max, for CPU the sum).
//! * `tree`: the whole process tree of the run: the child plus any orphan re-parented to the
//!   driver. CPU is the `getrusage(RUSAGE_CHILDREN)` delta of the driver (a sum, so the delta
//!   is exact); max RSS is the max over the `wait4` results of the run, because the
//!   `RUSAGE_CHILDREN` max RSS is a running max over the driver's life and has no usable delta.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a hybrid-cgroup host mounts cgroup2.
pub const UNIFIED_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// Options of the hidden `__driver` subcommand.
#[derive(clap::Args, Debug)]
pub struct DriverArgs {
    /// File that receives the measured command's stdout and stderr (truncated per run).
    #[arg(long)]
    pub capture: PathBuf,
    /// Unshare the mount namespace and bind-mount this (empty) file over
    /// /sys/fs/cgroup/unified/cgroup.controllers before serving.
    #[arg(long)]
    pub hide_cgroup2_controllers: Option<PathBuf>,
}

/// One measured run as the driver reports it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub wall: Duration,
    /// Exit code, or 128+signal.
    pub status: i32,
    pub child_maxrss_kib: u64,
    pub child_cpu: Duration,
    pub tree_maxrss_kib: u64,
    pub tree_cpu: Duration,
    /// Processes other than the direct child that the driver had to reap.
    pub orphans: u32,
}

impl Sample {
    pub fn from_json(v: &Value) -> Result<Sample> {
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            bail!("driver: {e}");
        }
        let u = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .with_context(|| format!("driver reply lacks {k}: {v}"))
        };
        Ok(Sample {
            wall: Duration::from_nanos(u("wall_ns")?),
            status: v
                .get("status")
                .and_then(Value::as_i64)
                .context("driver reply lacks status")? as i32,
            child_maxrss_kib: u("child_maxrss_kib")?,
            child_cpu: Duration::from_micros(u("child_cpu_us")?),
            tree_maxrss_kib: u("tree_maxrss_kib")?,
            tree_cpu: Duration::from_micros(u("tree_cpu_us")?),
            orphans: u("orphans")? as u32,
        })
    }
}

fn cpu_us(ru: &libc::rusage) -> u64 {
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn children_rusage() -> libc::rusage {
    // SAFETY: getrusage only writes the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    }
}

fn hide_controllers(empty: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    // Without this the bind mount would propagate back to the host's shared mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / rprivate")?;
    mount(
        Some(empty),
        UNIFIED_CONTROLLERS,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "bind-mounting {} over {UNIFIED_CONTROLLERS}",
            empty.display()
        )
    })?;
    let now = std::fs::read_to_string(UNIFIED_CONTROLLERS)?;
    if !now.trim().is_empty() {
        bail!("{UNIFIED_CONTROLLERS} still reads {now:?} after the bind mount");
    }
    Ok(())
}

/// Entry point of `rbench __driver`.
pub fn main(args: DriverArgs) -> Result<()> {
    if let Some(empty) = &args.hide_cgroup2_controllers {
        hide_controllers(empty)?;
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json!({"ready": true, "pid": std::process::id()}))?;
    out.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line)
            .context("bad request")
            .and_then(|req| serve(&args, &req))
        {
            Ok(v) => v,
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

fn serve(args: &DriverArgs, req: &Value) -> Result<Value> {
    let argv: Vec<CString> = req["argv"]
        .as_array()
        .context("request lacks argv")?
        .iter()
        .map(|a| {
            let s = a.as_str().context("argv items must be strings")?;
            CString::new(s).context("NUL in argv")
        })
        .collect::<Result<_>>()?;
    if argv.is_empty() {
        bail!("empty argv");
    }
    let s = run_measured(&argv, &args.capture)?;
    Ok(json!({
        "wall_ns": s.wall.as_nanos() as u64,
        "status": s.status,
        "child_maxrss_kib": s.child_maxrss_kib,
        "child_cpu_us": s.child_cpu.as_micros() as u64,
        "tree_maxrss_kib": s.tree_maxrss_kib,
        "tree_cpu_us": s.tree_cpu.as_micros() as u64,
        "orphans": s.orphans,
    }))
}

fn decode_status(st: libc::c_int) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        -1
    }
}

/// fork + execv + wait4, timed from just before the fork to the reaping of the child.
fn run_measured(argv: &[CString], capture: &Path) -> Result<Sample> {
    // Everything the child needs is prepared before the fork: it only calls async-signal-safe
    // functions (dup2, execv, _exit).
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let devnull = std::fs::File::open("/dev/null")?;
    let cap = std::fs::File::create(capture)
        .with_context(|| format!("creating {}", capture.display()))?;
    let (null_fd, cap_fd) = (devnull.as_raw_fd(), cap.as_raw_fd());

    let before = children_rusage();
    let t0 = Instant::now();
    // SAFETY: the driver is single-threaded; the child only execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::dup2(null_fd, 0);
            libc::dup2(cap_fd, 1);
            libc::dup2(cap_fd, 2);
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut st: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut st, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            bail!("wait4({pid}): {e}");
        }
    }
    let wall = t0.elapsed();

    // Reap whatever was re-parented to us; the run is over only when we have no children.
    let mut tree_maxrss = ru.ru_maxrss as u64;
    let mut orphans = 0u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ost: libc::c_int = 0;
        let mut oru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(-1, &mut ost, libc::WNOHANG, &mut oru) };
        if r > 0 {
            orphans += 1;
            tree_maxrss = tree_maxrss.max(oru.ru_maxrss as u64);
            continue;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ECHILD) => break,
                Some(libc::EINTR) => continue,
                _ => bail!("wait4(-1): {e}"),
            }
        }
        // r == 0: some descendant is still running.
        if Instant::now() > deadline {
            bail!(
                "{} left processes running 10 s after it exited",
                argv[0].to_string_lossy()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let after = children_rusage();
    drop(cap);
    Ok(Sample {
        wall,
        status: decode_status(st),
        child_maxrss_kib: ru.ru_maxrss as u64,
        child_cpu: Duration::from_micros(cpu_us(&ru)),
        tree_maxrss_kib: tree_maxrss,
        tree_cpu: Duration::from_micros(cpu_us(&after).saturating_sub(cpu_us(&before))),
        orphans,
    })
}
