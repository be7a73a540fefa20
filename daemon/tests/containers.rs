//! Containers and tasks through the real `rcd` and the real `rctr` (build both first:
//! `cargo build -p rcd -p rcd-cli`), with busybox pulled from a loopback registry. The shim
//! is `$RCD_TEST_SHIM`, else rshim (`containerd-shim-runr-v2`) next to rcd, else Debian's
//! `containerd-shim-runc-v2`.

mod common;

use common::{rctr_bin, Rcd};
use rtest::{busybox_image, spawn_tied, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shim() -> PathBuf {
    if let Some(s) = std::env::var_os("RCD_TEST_SHIM") {
        return s.into();
    }
    let rshim = Path::new(env!("CARGO_BIN_EXE_rcd")).with_file_name("containerd-shim-runr-v2");
    if rshim.exists() {
        return rshim;
    }
    "/usr/bin/containerd-shim-runc-v2".into()
}

/// A daemon with busybox pulled, its state in a temp dir.
struct Env {
    rcd: Rcd,
    image: String,
    _reg: Registry,
    dir: tempfile::TempDir,
}

fn env() -> Env {
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let image = reg.image_ref("library/busybox", "latest");
    let dir = tempfile::tempdir().unwrap();
    let rcd = start_rcd(dir.path());
    rcd.ok(&["images", "pull", "--plain-http", &image]);
    Env {
        rcd,
        image,
        _reg: reg,
        dir,
    }
}

fn start_rcd(dir: &Path) -> Rcd {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"debug\"\nshim = {:?}\n",
            shim().display().to_string()
        ),
    )
    .unwrap();
    let (root, state) = (dir.join("root"), dir.join("state"));
    let address = state.join("rcd.sock");
    let mut d = Rcd {
        child: None,
        args: vec![
            "--config".into(),
            config.into(),
            "--root".into(),
            root.clone().into(),
            "--state".into(),
            state.clone().into(),
            "--address".into(),
            address.clone().into(),
        ],
        root,
        state,
        address,
        log: dir.join("rcd.log"),
    };
    d.spawn();
    d
}

impl Env {
    /// rctr with stdin from `input`, its FIFOs under the test's dir.
    fn rctr_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(rctr_bin());
        cmd.arg("--address")
            .arg(&self.rcd.address)
            .args(args)
            .env_remove("RCD_NAMESPACE")
            .env("RCTR_FIFO_DIR", self.dir.path().join("fifo"))
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).unwrap();
        if let Some(data) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn rctr(&self, args: &[&str]) -> Output {
        self.rctr_in(args, None)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.rctr(args);
        assert!(
            out.status.success(),
            "rctr {args:?}: {}\nstdout: {}\nstderr: {}\nrcd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.rcd.log_text())
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// rctr that must exit 1; its message.
    fn fail(&self, args: &[&str]) -> String {
        let out = self.rctr(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "rctr {args:?} should fail\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.starts_with("rctr: "), "{err}");
        err
    }

    /// `tasks ls` as (id, status column).
    fn tasks(&self) -> Vec<(String, String)> {
        self.ok(&["tasks", "ls"])
            .lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[0].to_owned(), cols[2..].join(" "))
            })
            .collect()
    }

    fn status(&self, id: &str) -> Option<String> {
        self.tasks().into_iter().find(|(i, _)| i == id).map(|t| t.1)
    }

    /// Removes every task and container left (a failed test's).
    fn cleanup(&self) {
        for (id, _) in self.tasks() {
            let _ = self.rctr(&["tasks", "rm", "-f", &id]);
        }
        for id in self.ok(&["containers", "ls", "-q"]).lines() {
            let _ = self.rctr(&["containers", "rm", id]);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.rcd.child.is_some() {
            self.cleanup();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_rm_output_and_exit_codes() {
    let e = env();
    let out = e.rctr(&["run", "--rm", &e.image, "c1", "echo", "hi"]);
    assert!(out.status.success(), "{out:?}\n{}", tail(&e.rcd.log_text()));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // the exit code is the container's; stderr is its stderr
    let out = e.rctr(&[
        "run",
        "--rm",
        &e.image,
        "c2",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert!(out.stdout.is_empty());
    // --rm leaves nothing: no container, no task, no snapshot of it
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "");
    assert!(e.tasks().is_empty());
    assert!(!e.ok(&["snapshots", "ls"]).contains("c1"));
    // ... and, once rcd's trash worker is through, no bundle, mount or snapshot directory
    let state = e.rcd.state.display().to_string();
    let snapshots = e.rcd.root.join("overlayfs/snapshots");
    let images_snapshots = std::fs::read_dir(&snapshots).unwrap().count();
    wait_for("the trash worker", Duration::from_secs(20), || {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let trash = std::fs::read_dir(e.rcd.state.join("trash"))
            .map(|rd| rd.count())
            .unwrap_or(0);
        let removing = std::fs::read_dir(&snapshots)
            .unwrap()
            .flatten()
            .any(|d| d.file_name().to_string_lossy().starts_with("rm-"));
        !mounts.contains(&state) && trash == 0 && !removing
    });
    assert!(std::fs::read_dir(&snapshots).unwrap().count() <= images_snapshots);
    // without --rm the container stays (its task is gone)
    let out = e.rctr(&["run", &e.image, "c3", "true"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "c3\n");
    assert!(e.tasks().is_empty());
    e.ok(&["containers", "rm", "c3"]);
}

#[test]
fn run_options_reach_the_container() {
    let e = env();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from the host").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/mnt,options=rbind:ro",
        host.path().display()
    );
    let out = e.ok(&[
        "run",
        "--rm",
        "--env",
        "A=1",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1001",
        "--mount",
        &mount,
        &e.image,
        "opts",
        "sh",
        "-c",
        "echo $A; pwd; id -u; id -g; cat /mnt/f; echo; touch /mnt/x 2>/dev/null || echo ro",
    ]);
    assert_eq!(out, "1\n/tmp\n1000\n1001\nfrom the host\nro\n");
    // capabilities: the default set lacks NET_ADMIN; --cap-add gives it, --cap-drop takes
    let caps = |extra: &[&str]| -> u64 {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            &e.image,
            "caps",
            "sh",
            "-c",
            "grep CapEff /proc/self/status",
        ]);
        let out = e.ok(&args);
        u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const NET_ADMIN: u64 = 1 << 12;
    const CHOWN: u64 = 1 << 0;
    let default = caps(&[]);
    assert_eq!(default & NET_ADMIN, 0);
    assert_ne!(default & CHOWN, 0);
    assert_ne!(caps(&["--cap-add", "NET_ADMIN"]) & NET_ADMIN, 0);
    assert_eq!(caps(&["--cap-drop", "CHOWN"]) & CHOWN, 0);
    assert!(caps(&["--privileged"]) & NET_ADMIN != 0);
    // limits
    let out = e.ok(&[
        "run",
        "--rm",
        "--memory-limit",
        "67108864",
        "--cpus",
        "0.5",
        &e.image,
        "lim",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max",
    ]);
    assert!(out.contains("67108864"), "{out}");
    assert!(out.contains("50000"), "{out}");
    // --net-host sees the host's interfaces
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    let out = e.ok(&[
        "run",
        "--rm",
        "--net-host",
        &e.image,
        "net",
        "cat",
        "/proc/net/dev",
    ]);
    assert_eq!(out.lines().count(), host_ifaces, "{out}");
    let out = e.ok(&["run", "--rm", &e.image, "nonet", "cat", "/proc/net/dev"]);
    assert!(
        out.lines().count() < host_ifaces || host_ifaces <= 3,
        "{out}"
    );
}

#[test]
fn stdin_is_connected_and_closed_at_its_end() {
    let e = env();
    let out = e.rctr_in(&["run", "--rm", &e.image, "cat1", "cat"], Some(b"x\ny\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\ny\n");
    // stdin at /dev/null: the process reads end-of-file at once
    let out = e.rctr(&["run", "--rm", &e.image, "cat2", "wc", "-c"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[test]
fn detached_tasks_ls_ps_exec_kill_delete() {
    let e = env();
    e.ok(&["run", "-d", &e.image, "d1", "sleep", "1000"]);
    assert_eq!(e.status("d1").as_deref(), Some("RUNNING"));
    let ps = e.ok(&["tasks", "ps", "d1"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    let pid: u32 = ps
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // start returns once the runtime let the init go: its exec of the command may still be
    // under way (runc's too)
    wait_for("the init's exec", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .starts_with("sleep\0")
    });
    // exec without a tty: output and exit code
    let out = e.rctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "echo in; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
    // the same exec id again works once the first is deleted
    let out = e.ok(&["tasks", "exec", "--exec-id", "e1", "d1", "hostname"]);
    assert_eq!(out, "d1\n");
    let m = e.ok(&["tasks", "metrics", "d1"]);
    assert!(
        m.contains("memory.usage_in_bytes") && m.contains("pids.current"),
        "{m}"
    );
    // pause and resume
    e.ok(&["tasks", "pause", "d1"]);
    assert_eq!(e.status("d1").as_deref(), Some("PAUSED"));
    e.ok(&["tasks", "resume", "d1"]);
    assert_eq!(e.status("d1").as_deref(), Some("RUNNING"));
    // a running container's task cannot be deleted, nor its container removed
    let err = e.fail(&["tasks", "rm", "d1"]);
    assert!(err.contains("running"), "{err}");
    let err = e.fail(&["containers", "rm", "d1"]);
    assert!(err.contains("running task"), "{err}");
    // sleep is the pid namespace's init: only SIGKILL stops it
    e.ok(&["tasks", "kill", "-s", "KILL", "d1"]);
    wait_for("d1 to stop", Duration::from_secs(10), || {
        e.status("d1").is_some_and(|s| s.starts_with("STOPPED"))
    });
    assert_eq!(e.status("d1").as_deref(), Some("STOPPED (exit 137)"));
    let err = e.fail(&["containers", "rm", "d1"]);
    assert!(err.contains("stopped task"), "{err}");
    e.ok(&["tasks", "rm", "d1"]);
    assert!(e.tasks().is_empty());
    // tasks start runs it again, attached; -f deletes a running task
    e.ok(&["tasks", "start", "-d", "d1"]);
    assert_eq!(e.status("d1").as_deref(), Some("RUNNING"));
    e.ok(&["tasks", "rm", "-f", "d1"]);
    e.ok(&["containers", "rm", "d1"]);
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "");
}

#[test]
fn containers_create_ls_info_label_rm() {
    let e = env();
    e.ok(&[
        "containers",
        "create",
        "--label",
        "app=web",
        &e.image,
        "k1",
        "echo",
        "k1",
    ]);
    e.ok(&["containers", "create", "--label", "app=db", &e.image, "k2"]);
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "k1\nk2\n");
    assert_eq!(e.ok(&["containers", "ls", "-q", "labels.app==web"]), "k1\n");
    assert_eq!(e.ok(&["containers", "ls", "-q", "labels.app!=web"]), "k2\n");
    let ls = e.ok(&["containers", "ls"]);
    assert!(
        ls.starts_with("CONTAINER") && ls.contains("app=web"),
        "{ls}"
    );
    let spec: serde_json::Value =
        serde_json::from_str(&e.ok(&["containers", "info", "--spec", "k1"])).unwrap();
    assert_eq!(spec["process"]["args"], serde_json::json!(["echo", "k1"]));
    assert_eq!(spec["root"]["path"], "rootfs");
    let info: serde_json::Value =
        serde_json::from_str(&e.ok(&["containers", "info", "k1"])).unwrap();
    assert_eq!(info["Image"], e.image.as_str());
    assert_eq!(info["SnapshotKey"], "k1");
    assert_eq!(info["Labels"]["app"], "web");
    assert_eq!(
        e.ok(&["containers", "label", "k1", "tier=1", "app="]),
        "tier=1\n"
    );
    // the created container runs with tasks start (attached: output, exit code)
    assert_eq!(e.ok(&["tasks", "start", "k1"]), "k1\n");
    assert!(e.tasks().is_empty());
    // rm --keep-snapshot leaves the rootfs as a snapshot of the namespace
    e.ok(&["containers", "rm", "--keep-snapshot", "k1"]);
    assert!(e.ok(&["snapshots", "ls"]).contains("k1"));
    e.ok(&["snapshots", "rm", "k1"]);
    e.ok(&["containers", "rm", "k2"]);
    // duplicates, unknown ids and images
    e.ok(&["containers", "create", &e.image, "k3"]);
    let err = e.fail(&["containers", "create", &e.image, "k3"]);
    assert!(err.contains("container \"k3\" already exists"), "{err}");
    e.ok(&["containers", "rm", "k3"]);
    for args in [
        vec!["containers", "info", "nope"],
        vec!["containers", "rm", "nope"],
        vec!["tasks", "start", "nope"],
    ] {
        let err = e.fail(&args);
        assert!(
            err.contains("unknown container \"nope\""),
            "{args:?}: {err}"
        );
    }
    let err = e.fail(&["tasks", "kill", "nope"]);
    assert!(err.contains("nope"), "{err}");
    let err = e.fail(&["run", "--rm", "no.such/image:1", "x1"]);
    assert!(err.contains("image \"no.such/image:1\" not found"), "{err}");
    let err = e.fail(&["run", "--rm", &e.image, "bad/id"]);
    assert!(err.contains("invalid container id"), "{err}");
    let err = e.fail(&["run", "--rm", "--cpus", "x", &e.image, "x2"]);
    assert!(err.contains("cpus"), "{err}");
    let err = e.fail(&["run", "--rm", "--mount", "type=bind,dst=/x", &e.image, "x3"]);
    assert!(err.contains("invalid mount"), "{err}");
    // a command that does not exist: the error names it, nothing is left
    let out = e.rctr(&["run", "--rm", &e.image, "x4", "/no/such/binary"]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "");
    assert!(e.tasks().is_empty());
}

#[test]
fn no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = common::rctr(&sock, &["run", "--rm", "busybox", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon not running at"), "{err}");
}

/// Runs rctr under `script`, on a pty of its own: (exit code, what the terminal showed).
fn on_pty(e: &Env, args: &[&str]) -> (Option<i32>, String) {
    // script's pty has no size (its stdin is not a terminal): give it one
    let mut line = format!(
        "stty cols 101 rows 31; RCTR_FIFO_DIR={} {} --address {}",
        e.dir.path().join("fifo").display(),
        rctr_bin().display(),
        e.rcd.address.display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    // script's stdin stays open (never end-of-file, which script would pass on as ^D/^@)
    cmd.args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap();
    let stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[test]
fn terminal_run_and_exec() {
    let e = env();
    // -t: the process runs on a pty (stdin is a terminal, stderr goes to the same place)
    let (code, out) = on_pty(
        &e,
        &[
            "run",
            "--rm",
            "-t",
            &e.image,
            "t1",
            "sh",
            "-c",
            "test -t 0 && echo tty; echo err >&2; exit 4",
        ],
    );
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("tty\n") && out.contains("err\n"), "{out:?}");
    // the size of rctr's terminal reaches the container
    let (code, out) = on_pty(&e, &["run", "--rm", "-t", &e.image, "t2", "stty", "size"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "31 101\n");
    // exec with and without a tty into a running container
    e.ok(&["run", "-d", &e.image, "t3", "sleep", "1000"]);
    let (code, out) = on_pty(
        &e,
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "x1",
            "t3",
            "sh",
            "-c",
            "test -t 1 && echo tty",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(0), "tty\n"));
    let out = e.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "x2",
        "t3",
        "sh",
        "-c",
        "test -t 1 || echo notty",
    ]);
    assert_eq!(out, "notty\n");
    e.ok(&["tasks", "rm", "-f", "t3"]);
    e.ok(&["containers", "rm", "t3"]);
}

#[test]
fn attach_to_a_detached_task() {
    let e = env();
    e.ok(&[
        "run",
        "-d",
        &e.image,
        "a1",
        "sh",
        "-c",
        "read line; echo got $line; exit 5",
    ]);
    let out = e.rctr_in(&["tasks", "attach", "a1"], Some(b"hello\n"));
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
    e.ok(&["tasks", "rm", "a1"]);
    e.ok(&["containers", "rm", "a1"]);
    // the FIFOs of the detached task went with it
    let left: Vec<_> = std::fs::read_dir(e.dir.path().join("fifo"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn events_namespaces_info() {
    let e = env();
    // events: a subscriber sees a container's life in order
    let mut cmd = Command::new(rctr_bin());
    cmd.arg("--address")
        .arg(&e.rcd.address)
        .args(["events", "namespace==default"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sub = spawn_tied(cmd).unwrap();
    let stdout = sub.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            l2.lock().unwrap().push(l);
        }
    });
    // the subscription is live once it sees an event: a fixed sleep was too short under CI load
    let mut n = 0;
    wait_for("the subscription", Duration::from_secs(30), || {
        let probe = format!("evprobe{n}");
        n += 1;
        e.ok(&["containers", "create", &e.image, &probe]);
        e.ok(&["containers", "rm", &probe]);
        let l = lines.lock().unwrap();
        l.iter().any(|x| x.contains("/containers/delete"))
    });
    lines.lock().unwrap().clear();
    e.ok(&["run", "--rm", &e.image, "ev1", "true"]);
    // shims publish through `rcd publish`, a process per event: the set is certain, the
    // order of the task events is not
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = lines.lock().unwrap();
        if ["/containers/delete", "/tasks/delete", "/tasks/exit"]
            .iter()
            .all(|t| l.iter().any(|x| x.contains(t) && x.contains("\"ev1\"")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for ev1's events; got:\n{}\nrcd log:\n{}",
            l.join("\n"),
            tail(&e.rcd.log_text())
        );
        drop(l);
        std::thread::sleep(Duration::from_millis(50));
    }
    // image events, as containerd's: a new name is created, a pull of a known one updates it,
    // removing deletes, a tag that changes nothing says nothing
    e.ok(&["images", "tag", &e.image, "ev.test/tagged:1"]);
    e.ok(&["images", "tag", "--force", &e.image, "ev.test/tagged:1"]);
    e.ok(&["images", "pull", "--plain-http", &e.image]);
    e.ok(&["images", "rm", "ev.test/tagged:1"]);
    let want = [
        ("/images/create", "ev.test/tagged:1"),
        ("/images/update", e.image.as_str()),
        ("/images/delete", "ev.test/tagged:1"),
    ];
    wait_for("the image events", Duration::from_secs(30), || {
        let l = lines.lock().unwrap();
        want.iter().all(|(t, n)| {
            l.iter()
                .any(|x| x.contains(t) && x.contains(&format!("\"{n}\"")))
        })
    });
    let image_topics: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/images/"))
        .cloned()
        .collect();
    assert_eq!(image_topics.len(), 3, "{image_topics:#?}");
    // a task over its memory limit: killed, and an OOM event from its shim
    let out = e.rctr_in(
        &[
            "run",
            "--rm",
            "--memory-limit",
            "33554432",
            &e.image,
            "oom1",
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    wait_for("the OOM event", Duration::from_secs(30), || {
        let l = lines.lock().unwrap();
        l.iter()
            .any(|x| x.contains("/tasks/oom") && x.contains("\"container_id\":\"oom1\""))
    });
    let _ = sub.kill();
    let _ = sub.wait();
    let topics: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"ev1\""))
        .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned())
        .collect();
    let order = [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ];
    let pos: Vec<Option<usize>> = order
        .iter()
        .map(|t| topics.iter().position(|x| x == t))
        .collect();
    assert!(pos.iter().all(Option::is_some), "{topics:?}");
    // rcd's own come in order around the task's
    assert_eq!(pos[0], Some(0), "{topics:?}");
    assert!(pos[1..].iter().all(|p| p > &pos[0]), "{topics:?}");
    let exit = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("/tasks/exit"))
        .cloned()
        .unwrap();
    assert!(
        exit.contains("\"container_id\":\"ev1\"") && exit.contains("\"exit_status\":\"0\""),
        "{exit}"
    );
    let err = e.fail(&["events", "topic"]);
    assert!(err.contains("invalid filter"), "{err}");

    // namespaces
    e.ok(&["namespaces", "create", "empty", "team=a"]);
    let ls = e.ok(&["namespaces", "ls"]);
    assert!(
        ls.contains("default") && ls.contains("empty") && ls.contains("team=a"),
        "{ls}"
    );
    assert_eq!(
        e.ok(&["namespaces", "label", "empty", "team=", "x=y"]),
        "x=y\n"
    );
    let err = e.fail(&["namespaces", "create", "empty"]);
    assert!(err.contains("already exists"), "{err}");
    let err = e.fail(&["namespaces", "rm", "default"]);
    assert!(err.contains("not empty") && err.contains("images"), "{err}");
    let err = e.fail(&["namespaces", "create", "bad/name"]);
    assert!(err.contains("invalid namespace"), "{err}");
    e.ok(&["namespaces", "rm", "empty"]);
    assert!(!e.ok(&["namespaces", "ls", "-q"]).contains("empty"));
    let err = e.fail(&["namespaces", "rm", "empty"]);
    assert!(err.contains("not found"), "{err}");
    // a container in another namespace is not seen from default
    // images are per namespace
    let err = e.fail(&["-n", "other", "run", "--rm", &e.image, "o1", "echo", "x"]);
    assert!(err.contains("not found in namespace \"other\""), "{err}");

    // info
    e.ok(&["run", "-d", &e.image, "i1", "sleep", "100"]);
    let info: serde_json::Value = serde_json::from_str(&e.ok(&["info"])).unwrap();
    assert_eq!(info["Containers"], 1);
    assert_eq!(info["TasksRunning"], 1);
    assert_eq!(info["Images"], 1);
    assert!(info["Shim"]
        .as_str()
        .unwrap()
        .ends_with(&*shim().file_name().unwrap().to_string_lossy()));
    assert!(info["RssBytes"].as_u64().unwrap() > 0);
    e.ok(&["tasks", "rm", "-f", "i1"]);
    e.ok(&["containers", "rm", "i1"]);
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn task_pid(e: &Env, id: &str) -> u32 {
    let ls = e.ok(&["tasks", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task {id}: {ls}"))
}

/// Runs `f` for every item on its own thread; panics (with every message) if any failed.
fn all_at_once<T: Send + 'static>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<(), String> + Send + Sync + 'static,
) {
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = items
        .into_iter()
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

fn rctr_result(address: &Path, fifo: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(rctr_bin());
    cmd.arg("--address")
        .arg(address)
        .args(args)
        .env("RCTR_FIFO_DIR", fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = spawn_tied(cmd).unwrap().wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rctr {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn kill9_restart_reconnects_to_every_task() {
    let mut e = env();
    let started = Instant::now();
    let (addr, fifo) = (e.rcd.address.clone(), e.dir.path().join("fifo"));
    let image = e.image.clone();
    // 20 that keep running, 3 that exit (3, 4, 5) once told to, while rcd is down
    let mut ids: Vec<(String, Vec<String>)> = (0..20)
        .map(|i| (format!("r{i}"), vec!["sleep".to_owned(), "1000".into()]))
        .collect();
    for code in 3..6 {
        ids.push((
            format!("x{code}"),
            vec![
                "sh".into(),
                "-c".into(),
                format!("while [ ! -e /go ]; do sleep 0.05; done; exit {code}"),
            ],
        ));
    }
    all_at_once(ids.clone(), move |(id, cmd)| {
        let mut args = vec!["run", "-d", image.as_str(), id.as_str()];
        args.extend(cmd.iter().map(String::as_str));
        rctr_result(&addr, &fifo, &args)
    });
    let pids: Vec<(String, u32)> = ids
        .iter()
        .map(|(id, _)| (id.clone(), task_pid(&e, id)))
        .collect();
    assert!(
        e.tasks().iter().all(|(_, s)| s == "RUNNING"),
        "{:?}",
        e.tasks()
    );

    e.rcd.kill9();
    // the containers outlive the daemon; three exit while it is down
    assert!(pids.iter().all(|(_, p)| alive(*p)));
    for code in 3..6 {
        let rootfs = e.rcd.state.join(format!("tasks/default/x{code}/rootfs"));
        std::fs::write(rootfs.join("go"), "").unwrap();
    }
    for (id, pid) in &pids {
        if id.starts_with('x') {
            wait_for("the exits", Duration::from_secs(10), || !alive(*pid));
        }
    }
    e.rcd.spawn();
    let tasks = e.tasks();
    assert_eq!(tasks.len(), 23, "{tasks:?}");
    for (id, status) in &tasks {
        let want = match id.strip_prefix('x') {
            Some(code) => format!("STOPPED (exit {code})"),
            None => "RUNNING".to_owned(),
        };
        assert_eq!(status, &want, "{id}: {tasks:?}");
    }
    // the daemon drives them as before: exec, kill, wait, delete
    assert_eq!(
        e.ok(&["tasks", "exec", "--exec-id", "e", "r0", "echo", "still"]),
        "still\n"
    );
    let (addr, fifo) = (e.rcd.address.clone(), e.dir.path().join("fifo"));
    all_at_once(ids.iter().map(|(id, _)| id.clone()).collect(), move |id| {
        rctr_result(&addr, &fifo, &["tasks", "rm", "-f", &id])?;
        rctr_result(&addr, &fifo, &["containers", "rm", &id])
    });
    assert!(e.tasks().is_empty());
    for (_, pid) in &pids {
        assert!(!alive(*pid), "container process {pid} left behind");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn killed_shim_reports_the_task_stopped() {
    let e = env();
    // runr's state is host-wide (/run/containerd/runr/<ns>): an id of this run only
    let s1 = format!("s1-{}", std::process::id());
    let s1 = s1.as_str();
    e.ok(&["run", "-d", &e.image, s1, "sleep", "1000"]);
    let pid = task_pid(&e, s1);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.rcd.state.join(format!("tasks/default/{s1}/task.json"))).unwrap(),
    )
    .unwrap();
    let shim_pid = record["shim_pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(shim_pid, libc::SIGKILL) };
    let t0 = Instant::now();
    wait_for("s1 reported stopped", Duration::from_secs(20), || {
        e.status(s1).is_some_and(|s| s.starts_with("STOPPED ("))
    });
    eprintln!(
        "s1 reported stopped {:?} after its shim was killed",
        t0.elapsed()
    );
    assert_eq!(
        e.status(s1).as_deref(),
        Some("STOPPED (exit 137)"),
        "{}",
        e.rcd
            .log_text()
            .lines()
            .filter(|l| l.contains("rcd::task") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // the container went with its shim, and the task goes
    wait_for(
        "the container process to go",
        Duration::from_secs(10),
        || !alive(pid),
    );
    let err = e.fail(&["tasks", "exec", "--exec-id", "e", s1, "true"]);
    assert!(err.contains(s1), "{err}");
    e.ok(&["tasks", "rm", s1]);
    e.ok(&["containers", "rm", s1]);
    assert!(!e.rcd.state.join(format!("tasks/default/{s1}")).exists());
}

#[test]
fn fifty_containers_at_once() {
    let e = env();
    let started = Instant::now();
    let ids: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let (addr, fifo, image) = (
        e.rcd.address.clone(),
        e.dir.path().join("fifo"),
        e.image.clone(),
    );
    all_at_once(ids.clone(), move |id| {
        rctr_result(&addr, &fifo, &["run", "-d", &image, &id, "sleep", "1000"])
    });
    let tasks = e.tasks();
    assert_eq!(tasks.len(), 50);
    assert!(tasks.iter().all(|(_, s)| s == "RUNNING"), "{tasks:?}");
    let (addr, fifo) = (e.rcd.address.clone(), e.dir.path().join("fifo"));
    all_at_once(ids, move |id| {
        rctr_result(&addr, &fifo, &["tasks", "rm", "-f", &id])?;
        rctr_result(&addr, &fifo, &["containers", "rm", &id])
    });
    assert!(e.tasks().is_empty());
    assert_eq!(e.ok(&["containers", "ls", "-q"]), "");
    eprintln!("50 containers up and down in {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn interrupted_create_is_undone_at_restart() {
    let mut e = env();
    let snaps = e.ok(&["snapshots", "ls"]);
    let top = snaps
        .lines()
        .find(|l| l.contains("Committed") || l.contains("committed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no committed snapshot: {snaps}"))
        .to_owned();
    // what a daemon killed in the middle of `containers create ghost` leaves
    e.ok(&["snapshots", "prepare", "ghost", &top]);
    let marker = e.rcd.state.join("spec-mounts/default/ghost");
    std::fs::create_dir_all(&marker).unwrap();
    // and a container whose create finished keeps its snapshot
    e.ok(&["containers", "create", &e.image, "kept"]);
    std::fs::create_dir_all(e.rcd.state.join("spec-mounts/default/kept")).unwrap();
    e.rcd.kill9();
    e.rcd.spawn();
    let snaps = e.ok(&["snapshots", "ls"]);
    assert!(!snaps.contains("ghost"), "{snaps}");
    assert!(snaps.contains("kept"), "{snaps}");
    assert!(!marker.exists());
    e.ok(&["containers", "rm", "kept"]);
}

#[test]
fn gc_never_collects_a_containers_snapshot() {
    // the image goes (rm + prune --all collect synchronously) while its container runs: the
    // container's rootfs snapshot and the layers under it stay, and exec still finds busybox
    let e = env();
    e.ok(&["run", "-d", &e.image, "gckeep", "sleep", "300"]);
    e.ok(&["images", "rm", "--sync", &e.image]);
    e.ok(&["images", "prune", "--all"]);
    let snaps = e.ok(&["snapshots", "ls"]);
    assert!(snaps.contains("gckeep"), "{snaps}");
    let out = e.rctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "x1",
        "gckeep",
        "ls",
        "/bin/busybox",
    ]);
    assert!(out.status.success(), "{out:?}");
    // once the container is gone, so is everything it kept
    e.ok(&["tasks", "kill", "-s", "KILL", "gckeep"]);
    wait_for("the task to stop", Duration::from_secs(10), || {
        e.ok(&["tasks", "ls"]).contains("STOPPED")
    });
    e.ok(&["tasks", "rm", "gckeep"]);
    e.ok(&["containers", "rm", "gckeep"]);
    e.ok(&["images", "prune", "--all"]);
    let snaps = e.ok(&["snapshots", "ls"]);
    assert_eq!(snaps.lines().count(), 1, "only the header is left: {snaps}");
}

/// A deleted task's shim is shut down, and its bundle (the rootfs mount in it) released,
/// after the delete's reply: rcd stopped at once still sees both through.
#[test]
fn a_stop_right_after_a_delete_leaves_no_mount_or_shim() {
    let mut e = env();
    e.ok(&["run", "--rm", &e.image, "quick", "true"]);
    e.ok(&["run", "-d", &e.image, "quick2", "true"]);
    wait_for("quick2's exit", Duration::from_secs(20), || {
        e.status("quick2").is_some_and(|s| s.contains("STOPPED"))
    });
    e.ok(&["tasks", "rm", "quick2"]);
    let state = e.rcd.state.clone();
    let st = e.rcd.stop();
    assert!(st.success(), "rcd stopped with {st}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = info
        .lines()
        .filter(|l| l.contains(state.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "mounts left under the state dir: {left:?}");
    let address = e.rcd.address.display().to_string();
    let shims: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("containerd-shim") && c.contains(&address))
        .collect();
    assert!(shims.is_empty(), "shims left running: {shims:?}");
}
