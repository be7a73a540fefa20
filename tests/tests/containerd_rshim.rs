//! Debian's containerd 1.6 runs containers through rshim (`containerd-shim-runr-v2`, runtime
//! `io.containerd.runr.v2`), which drives runr (or runc).
//!
//! Each test starts a private containerd whose PATH finds the workspace's shim first, imports
//! the busybox image fixture and drives it with `ctr`.

use anyhow::{bail, Result};
use rtest::containerd::{
    cgroup_dirs, logging_wrapper, mounts_under, path_with_rshim, shims_of, Containerd,
};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = rtest::BUSYBOX_NAME;
const RUNTIME: &str = "io.containerd.runr.v2";

fn start(env: &[(&str, &str)]) -> Containerd {
    let path = path_with_rshim();
    let mut all = vec![("PATH", path.as_str())];
    all.extend_from_slice(env);
    let ctd = Containerd::start("", &all).unwrap();
    ctd.import(rtest::busybox_oci_archive(), None).unwrap();
    ctd
}

/// `ctr run --runtime io.containerd.runr.v2 --cgroup <own> <flags> busybox <id> <cmd>`.
fn run_args<'a>(
    ctd: &Containerd,
    id: &'a str,
    cg: &'a str,
    flags: &[&'a str],
    cmd: &[&'a str],
) -> Vec<&'a str> {
    let _ = ctd;
    let mut args = vec!["run", "--runtime", RUNTIME, "--cgroup", cg];
    args.extend_from_slice(flags);
    args.push(IMAGE);
    args.push(id);
    args.extend_from_slice(cmd);
    args
}

fn detached(ctd: &Containerd, prefix: &str) -> String {
    let id = ctd.container_id(prefix);
    let cg = ctd.cgroup_for(&id);
    let args = run_args(ctd, &id, &cg, &["-d"], &["sleep", "300"]);
    ctd.ctr_ok(&args).unwrap();
    assert_eq!(ctd.task_status(&id).unwrap().as_deref(), Some("RUNNING"));
    id
}

fn remove(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    ctd.wait_task_status(id, "STOPPED", Duration::from_secs(20))
        .unwrap();
    ctd.ctr_ok(&["tasks", "delete", id]).unwrap();
    ctd.ctr_ok(&["containers", "rm", id]).unwrap();
}

/// Nothing left: no task, container, mount, shim; containerd stops with nothing to force.
fn assert_clean_stop(ctd: Containerd) {
    assert_eq!(ctd.ctr_ok(&["tasks", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(ctd.ctr_ok(&["containers", "ls", "-q"]).unwrap().trim(), "");
    let dir = ctd.dir().to_path_buf();
    let left = ctd.stop().expect("containerd teardown");
    assert!(left.is_empty(), "had to clean up by force: {left:?}");
    assert!(mounts_under(&dir).is_empty());
}

fn pid_alive(pid: i32) -> bool {
    !rtest::runtime::process_gone(pid)
}

/// The pid of the task's init, from `ctr tasks ls`.
fn task_pid(ctd: &Containerd, id: &str) -> i32 {
    let out = ctd.ctr_ok(&["tasks", "ls"]).unwrap();
    out.lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("task {id} not listed:\n{out}"))
}

/// Runs `ctr <args>` with a pty as its stdin/stdout (ctr's -t needs a terminal); returns
/// what it wrote and its exit code.
fn ctr_on_pty(ctd: &Containerd, args: &[&str]) -> Result<(String, i32)> {
    let pty = nix::pty::openpty(None, None)?;
    let (_, ctr_bin) = Containerd::binaries()?;
    let slave: OwnedFd = pty.slave;
    let mut cmd = Command::new(ctr_bin);
    cmd.env("CONTAINERD_SNAPSHOTTER", "overlayfs")
        .arg("--address")
        .arg(ctd.address())
        .arg("--namespace")
        .arg(ctd.namespace())
        .args(args)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(slave);
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = vec![];
        let mut buf = [0u8; 4096];
        // EIO once every holder of the slave is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ctr {} timed out on a pty", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    Ok((out, status.code().unwrap_or(-1)))
}

#[test]
fn run_rm_passes_output_and_exit_code() {
    let ctd = start(&[]);
    let id = ctd.container_id("rs-rm");
    let cg = ctd.cgroup_for(&id);
    let args = run_args(
        &ctd,
        &id,
        &cg,
        &["--rm"],
        &[
            "sh",
            "-c",
            "echo out-from-rshim; echo err-from-rshim >&2; exit 7",
        ],
    );
    let out = ctd
        .ctr(&args)
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd log:\n{}", ctd.log_tail(80)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (stdout.trim(), out.status.code()),
        ("out-from-rshim", Some(7)),
        "stderr: {stderr}\ncontainerd log:\n{}",
        ctd.log_tail(60)
    );
    assert!(stderr.contains("err-from-rshim"), "stderr: {stderr}");
    // --rm removed everything; no shim of it is left (it exits once its last events are out,
    // as containerd's own shims wait for their publisher)
    assert!(
        rtest::runtime::poll_until(Duration::from_secs(10), || shims_of(&id).is_empty()),
        "shim left: {:?}",
        shims_of(&id)
    );
    assert!(cgroup_dirs(&cg).is_empty());
    assert_clean_stop(ctd);
}

/// A detached task through every Task call ctr has: exec with and without a tty, ps, pause,
/// resume, metrics, kill, delete.
#[test]
fn detached_task_exec_ps_pause_metrics_kill() {
    let ctd = start(&[]);
    let id = detached(&ctd, "rs-d");
    let init = task_pid(&ctd, &id);
    assert!(pid_alive(init));

    // exec without a tty: output and exit code come back.
    let out = ctd
        .ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo hi-exec; exit 3",
        ])
        .unwrap();
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).trim(),
            out.status.code()
        ),
        ("hi-exec", Some(3)),
        "stderr: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctd.log_tail(30)
    );
    // exec with a tty: the process sees a terminal.
    let (text, code) = ctr_on_pty(
        &ctd,
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "e2",
            &id,
            "sh",
            "-c",
            "tty && echo tty-ok",
        ],
    )
    .unwrap();
    assert_eq!(code, 0, "exec -t output: {text:?}\n{}", ctd.log_tail(30));
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-ok"),
        "{text:?}"
    );

    // ps lists the init.
    let ps = ctd.ctr_ok(&["tasks", "ps", &id]).unwrap();
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&init.to_string())),
        "init {init} not in ps:\n{ps}"
    );

    // pause / resume, seen in ctr tasks ls and the freezer.
    ctd.ctr_ok(&["tasks", "pause", &id]).unwrap();
    assert_eq!(ctd.task_status(&id).unwrap().as_deref(), Some("PAUSED"));
    let cg = format!("/rtest-ctd-{id}");
    let freezer = cgroup_dirs(&cg)
        .into_iter()
        .find(|d| d.join("freezer.state").exists())
        .expect("freezer cgroup");
    assert_eq!(
        std::fs::read_to_string(freezer.join("freezer.state"))
            .unwrap()
            .trim(),
        "FROZEN"
    );
    ctd.ctr_ok(&["tasks", "resume", &id]).unwrap();
    assert_eq!(ctd.task_status(&id).unwrap().as_deref(), Some("RUNNING"));

    // metrics: cgroup v1 numbers of this container.
    let m = ctd
        .ctr_ok(&["tasks", "metrics", "--format", "json", &id])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_else(|e| panic!("{e}: {m}"));
    let usage = v["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    assert!(usage > 0, "no memory usage in metrics: {m}");
    assert!(v["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");

    // kill ends it with the signal's exit status; delete cleans up.
    ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id])
        .unwrap();
    ctd.wait_task_status(&id, "STOPPED", Duration::from_secs(20))
        .unwrap();
    assert!(rtest::runtime::poll_until(Duration::from_secs(5), || {
        !pid_alive(init)
    }));
    ctd.ctr_ok(&["tasks", "delete", &id]).unwrap();
    ctd.ctr_ok(&["containers", "rm", &id]).unwrap();
    assert!(cgroup_dirs(&cg).is_empty(), "cgroup left");
    assert!(
        rtest::runtime::poll_until(Duration::from_secs(5), || shims_of(&id).is_empty()),
        "shim still running after delete"
    );
    assert_clean_stop(ctd);
}

/// What ctr gets on stdin reaches the container, which then reads EOF (CloseIO).
#[test]
fn stdin_reaches_the_container_then_eof() {
    let ctd = start(&[]);
    let id = ctd.container_id("rs-in");
    let cg = ctd.cgroup_for(&id);
    let args = run_args(
        &ctd,
        &id,
        &cg,
        &["--rm"],
        &["sh", "-c", "cat; echo after-eof"],
    );
    let (_, ctr) = Containerd::binaries().unwrap();
    let mut child = Command::new(ctr)
        .env("CONTAINERD_SNAPSHOTTER", "overlayfs")
        .arg("--address")
        .arg(ctd.address())
        .arg("--namespace")
        .arg(ctd.namespace())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"line-one\nline-two\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line-one\nline-two\nafter-eof\n",
        "stderr: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctd.log_tail(30)
    );
    assert!(out.status.success());
    assert_clean_stop(ctd);
}

/// `ctr run -t`: the container's init gets a pty, its output and exit code come back.
#[test]
fn run_with_tty() {
    let ctd = start(&[]);
    let id = ctd.container_id("rs-t");
    let cg = ctd.cgroup_for(&id);
    let args = run_args(
        &ctd,
        &id,
        &cg,
        &["--rm", "-t"],
        &["sh", "-c", "tty; echo tty-init; exit 5"],
    );
    let (text, code) = ctr_on_pty(&ctd, &args).unwrap();
    assert_eq!(code, 5, "output: {text:?}\n{}", ctd.log_tail(40));
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-init"),
        "{text:?}"
    );
    assert_clean_stop(ctd);
}

/// containerd is `kill -9`-ed under a running task: the task keeps running, a new
/// containerd reconnects to the shim and sees it RUNNING, and can kill and delete it.
#[test]
fn task_survives_containerd_kill9() {
    let mut ctd = start(&[]);
    let id = detached(&ctd, "rs-k9");
    let init = task_pid(&ctd, &id);
    ctd.kill9_and_restart().unwrap();
    assert!(pid_alive(init), "container init died with containerd");
    assert_eq!(
        ctd.task_status(&id).unwrap().as_deref(),
        Some("RUNNING"),
        "{}",
        ctd.log_tail(40)
    );
    assert_eq!(task_pid(&ctd, &id), init);
    let out = ctd
        .ctr_ok(&[
            "tasks",
            "exec",
            "--exec-id",
            "after",
            &id,
            "echo",
            "still-here",
        ])
        .unwrap();
    assert_eq!(out.trim(), "still-here");
    remove(&ctd, &id);
    assert!(!pid_alive(init));
    assert_clean_stop(ctd);
}

/// The shim is killed under a running task: containerd reports the task stopped (or gone),
/// never stuck running, and the container can be removed.
#[test]
fn killed_shim_leaves_task_stopped() {
    let ctd = start(&[]);
    let id = detached(&ctd, "rs-ks");
    let init = task_pid(&ctd, &id);
    let shims = shims_of(&id);
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let settled = rtest::runtime::poll_until(Duration::from_secs(20), || {
        matches!(
            ctd.task_status(&id).unwrap().as_deref(),
            None | Some("STOPPED")
        )
    });
    assert!(
        settled,
        "task is {:?} after its shim died\n{}",
        ctd.task_status(&id),
        ctd.log_tail(40)
    );
    // The cleanup (the shim's delete action) took the container down with it.
    assert!(
        rtest::runtime::poll_until(Duration::from_secs(10), || !pid_alive(init)),
        "container init {init} outlived its shim's cleanup"
    );
    // containerd's clean-up runs the shim's `delete` action in the background: let it end.
    assert!(
        rtest::runtime::poll_until(Duration::from_secs(30), || shims_of(&id).is_empty()),
        "shim delete action still running: {:?}",
        shims_of(&id)
    );
    if ctd.task_status(&id).unwrap().is_some() {
        ctd.ctr_ok(&["tasks", "delete", &id]).unwrap();
    }
    ctd.ctr_ok(&["containers", "rm", &id]).unwrap();
    assert_clean_stop(ctd);
}

/// The runtime is configurable: `RSHIM_RUNTIME` in the shim's environment, here runc
/// through a wrapper that logs its command lines. (Per container, containerd's runc options
/// `BinaryName`/`Root` are honoured too, but ctr 1.6 sends them only to the runc shim.)
#[test]
fn shim_drives_runc() {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("runc is installed (Debian package runc)");
    let wdir = tempfile::tempdir().unwrap();
    let runc_log = wdir.path().join("runc-argv.log");
    let wrapper = logging_wrapper(wdir.path(), "runc", &runc, &runc_log).unwrap();
    let w = wrapper.display().to_string();
    let ctd = start(&[("RSHIM_RUNTIME", w.as_str())]);

    let id = ctd.container_id("rs-runc");
    let cg = ctd.cgroup_for(&id);
    let args = run_args(
        &ctd,
        &id,
        &cg,
        &["--rm"],
        &["sh", "-c", "echo via-runc; exit 4"],
    );
    let out = ctd.ctr(&args).unwrap();
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).trim(),
            out.status.code()
        ),
        ("via-runc", Some(4)),
        "{}",
        ctd.log_tail(40)
    );
    let logged = std::fs::read_to_string(&runc_log).unwrap_or_default();
    for cmd in ["create", "start", "delete"] {
        assert!(
            logged
                .lines()
                .any(|l| l.contains(&format!(" {cmd} ")) && l.ends_with(&id)),
            "runc was not asked to {cmd} {id}:\n{logged}"
        );
    }

    assert_clean_stop(ctd);
}
