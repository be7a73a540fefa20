//! `exec`: running more processes in a running container.

use rtest::console::{read_pty, ConsoleSocket};
use rtest::{poll_until, process_gone, Runtime};
use serde_json::json;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn exec_output_and_exit_code() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("exec");
    let out = rt
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 5"])
        .code_is(5);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{out:?}");
    let out = rt.exec(&id, &["hostname"]).ok();
    assert_eq!(out.stdout.trim(), "rtest");
    // exec'd processes share the container's pid namespace: pid 1 is the sleep
    let out = rt.exec(&id, &["cat", "/proc/1/cmdline"]).ok();
    assert_eq!(out.stdout.replace('\0', " ").trim(), "sleep 600");
}

#[test]
fn exec_env_cwd_user() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execopts");
    let out = rt
        .cmd(&[
            "exec",
            "-e",
            "FOO=bar",
            "-e",
            "BAZ=qux",
            &id,
            "sh",
            "-c",
            "echo $FOO $BAZ",
        ])
        .ok();
    assert_eq!(out.stdout.trim(), "bar qux");
    // (runc, through urfave/cli, refuses to mix `--env` and `-e` in one command line)
    let out = rt
        .cmd(&["exec", "--env", "FOO=long", &id, "sh", "-c", "echo $FOO"])
        .ok();
    assert_eq!(out.stdout.trim(), "long");
    // --env overrides the config's value
    let out = rt
        .cmd(&["exec", "-e", "TERM=dumb", &id, "sh", "-c", "echo $TERM"])
        .ok();
    assert_eq!(out.stdout.trim(), "dumb");
    // the config's environment is kept
    let out = rt.exec(&id, &["sh", "-c", "echo $TERM"]).ok();
    assert_eq!(out.stdout.trim(), "xterm");

    let out = rt.cmd(&["exec", "--cwd", "/tmp", &id, "pwd"]).ok();
    assert_eq!(out.stdout.trim(), "/tmp");

    for flag in ["--user", "-u"] {
        let out = rt.cmd(&["exec", flag, "1000:1000", &id, "id"]).ok();
        assert!(
            out.stdout.contains("uid=1000(app) gid=1000(app)"),
            "{out:?}"
        );
    }
    let out = rt.cmd(&["exec", "-u", "1000", &id, "id", "-u"]).ok();
    assert_eq!(out.stdout.trim(), "1000");
    let out = rt.exec(&id, &["id", "-u"]).ok();
    assert_eq!(out.stdout.trim(), "0");
}

#[test]
fn exec_process_file() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execproc");
    let pj = rt.scratch().join("process.json");
    fs::write(
        &pj,
        serde_json::to_vec(&json!({
            "terminal": false,
            "user": {"uid": 1000, "gid": 1000},
            "args": ["sh", "-c", "echo from-process $FOO $(pwd) $(id -u); exit 4"],
            "env": ["PATH=/bin:/usr/bin", "FOO=pj"],
            "cwd": "/home/app"
        }))
        .unwrap(),
    )
    .unwrap();
    let out = rt
        .cmd(&["exec", "--process", pj.to_str().unwrap(), &id])
        .code_is(4);
    assert_eq!(out.stdout.trim(), "from-process pj /home/app 1000");
}

#[test]
fn exec_detach_with_pid_file() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execd");
    let init = rt.pid(&id);
    let pidfile = rt.scratch().join("exec.pid");
    let out = rt
        .cmd(&[
            "exec",
            "--detach",
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
            "sleep",
            "599",
        ])
        .ok();
    assert_eq!(out.stdout, "");
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, init);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cmdline).replace('\0', " ").trim(),
        "sleep 599"
    );
    let ns = |p: i32, n: &str| fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    for n in ["pid", "mnt", "net", "uts", "ipc"] {
        assert_eq!(
            ns(pid, n),
            ns(init, n),
            "exec'd process is not in the {n} namespace"
        );
    }
    // and in the container's cgroup
    let cg = |p: i32| fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
    assert_eq!(cg(pid), cg(init));
    // -d is the short form
    rt.cmd(&["exec", "-d", &id, "sleep", "598"]).ok();
    let ps = rt.cmd(&["ps", "-f", "json", &id]).ok().json();
    assert_eq!(ps.as_array().unwrap().len(), 3, "{ps}");
}

#[test]
fn exec_tty_detached_sends_pty_master() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("exectty");
    let sock = ConsoleSocket::new().unwrap();
    rt.cmd(&[
        "exec",
        "-t",
        "-d",
        "--console-socket",
        sock.path_str(),
        &id,
        "sh",
        "-c",
        "tty; echo done",
    ])
    .ok();
    let master = sock.recv_master(T).unwrap();
    let text = read_pty(&master, T, |s| s.contains("done"));
    let tty = text.lines().next().unwrap_or_default();
    assert!(tty.starts_with("/dev/pts/"), "tty printed {text:?}");
}

/// `exec -t` without `--detach` relays the container's terminal to the caller's own, which
/// must be a controlling terminal: give the runtime one, as a shell in a terminal would.
#[test]
fn exec_tty_foreground_relays_to_callers_terminal() {
    use std::os::unix::process::CommandExt;
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("exectty2");
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = rt.command(&["exec", "-t", &id, "sh", "-c", "tty; echo done; exit 2"]);
    let slave = pty.slave;
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    drop(slave);
    let text = read_pty(&pty.master, T, |s| s.contains("done"));
    let status = rtest::wait_for("exec -t to exit", T, || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(2), "{text:?}");
    let tty = text
        .lines()
        .find(|l| l.starts_with('/'))
        .unwrap_or_default();
    assert!(tty.starts_with("/dev/pts/"), "tty printed {text:?}");
}

#[test]
fn exec_without_tty_has_no_tty() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execnotty");
    let out = rt.exec(&id, &["tty"]);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("not a tty"), "{out:?}");
}

#[test]
fn exec_missing_binary_fails() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execmissing");
    rt.exec(&id, &["/no/such/binary"]).fails_mentioning(&[
        "no such file",
        "not found",
        "/no/such/binary",
    ]);
    assert_eq!(rt.status(&id), "running");
}

#[test]
fn exec_into_stopped_container_fails() {
    let rt = Runtime::new();
    let id = rt.id("execstopped");
    let b = rt.busybox(&id, &["true"]);
    rt.create(&b, &id);
    rt.start(&id);
    rt.wait_status(&id, "stopped");
    rt.exec(&id, &["true"])
        .fails_mentioning(&["stopped", "not running", "cannot exec"]);
}

#[test]
fn exec_pid_is_gone_after_exit() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("execexit");
    let pidfile = rt.scratch().join("p");
    rt.cmd(&["exec", "--pid-file", pidfile.to_str().unwrap(), &id, "true"])
        .ok();
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(poll_until(T, || process_gone(pid)));
    let ps = rt.cmd(&["ps", "-f", "json", &id]).ok().json();
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");
}

#[test]
fn exec_is_confined_by_the_containers_seccomp_filter() {
    // an exec'd process must not escape the filter the container's init runs under
    let rt = Runtime::new();
    let id = rt.id("execseccomp");
    let mut b = rt.busybox(&id, &["sleep", "600"]);
    b.linux()["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    // without no_new_privs: the exec must not turn it on to install the filter
    b.process()["noNewPrivileges"] = json!(false);
    b.save().unwrap();
    rt.run_detached(&b, &id);
    // no_new_privs stays off, as in the container's init (runr borrows CAP_SYS_ADMIN for the
    // filter's installation and gives it back before the exec)
    let out = rt
        .exec(
            &id,
            &[
                "grep",
                "-E",
                "^(Seccomp|NoNewPrivs|CapPrm):",
                "/proc/self/status",
            ],
        )
        .ok();
    let field = |f: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{f}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {f}: {out:?}"))
    };
    assert_eq!(field("Seccomp"), "2", "{out:?}");
    assert_eq!(field("NoNewPrivs"), "0", "{out:?}");
    let prm = u64::from_str_radix(&field("CapPrm"), 16).unwrap();
    assert_eq!(prm & (1 << 21), 0, "CAP_SYS_ADMIN left permitted: {out:?}");
    let out = rt
        .exec(&id, &["sh", "-c", "mkdir /tmp/d && echo made"])
        .code_is(1);
    assert!(!out.stdout.contains("made"), "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
}
