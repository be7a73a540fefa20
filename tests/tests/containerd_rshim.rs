//! Debian's containerd 1.6 runs containers through rshim (`containerd-shim-runr-v2`, runtime
//! `io.containerd.runr.v2`), which drives runr (or runc).
//!
//! Each test starts a private containerd whose PATH finds the workspace's shim first, imports
//! the busybox image fixture and drives it with `ctr`.

use anyhow::{bail, Result};
use rtest::containerd::{cgroup_dirs, mounts_under, path_with_rshim, shims_of, Containerd};
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
    let (ctr_bin, _) = Containerd::binaries()?;
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
    // --rm removed everything; no shim of it is left.
    assert!(shims_of(&id).is_empty(), "shim left: {:?}", shims_of(&id));
    assert!(cgroup_dirs(&cg).is_empty());
    assert_clean_stop(ctd);
}
