//! Container lifecycle through runc's command line: create, start, state, run, kill, delete,
//! list, ps, pause/resume, events; and the global options.

use rtest::{poll_until, process_gone, wait_for, Runtime};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// An init that exits by itself once `/tmp/go` exists (created with `exec ID touch /tmp/go`).
const WAIT_FOR_GO: &[&str] = &[
    "sh",
    "-c",
    "echo ready; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo done",
];

fn canon(p: &str) -> std::path::PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {p}: {e}"))
}

fn assert_rfc3339(s: &str) {
    let b = s.as_bytes();
    assert!(
        s.len() >= 20
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[10] == b'T'
            && (s.ends_with('Z') || s[19..].contains(['+', '-'])),
        "not an RFC 3339 timestamp: {s:?}"
    );
}

#[test]
fn create_start_exit_delete() {
    let rt = Runtime::new();
    let id = rt.id("life");
    let mut b = rt.busybox(&id, WAIT_FOR_GO);
    b.config["annotations"] = json!({"org.rtest.answer": "42", "other": "x"});
    b.save().unwrap();

    let created = rt.create(&b, &id);
    let st = rt.state(&id);
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], id.as_str());
    assert!(
        st["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{st}"
    );
    let pid = st["pid"].as_i64().expect("pid");
    assert!(pid > 0, "{st}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        canon(st["bundle"].as_str().unwrap()),
        canon(b.path().to_str().unwrap())
    );
    assert_rfc3339(st["created"].as_str().expect("created"));
    assert_eq!(
        st["annotations"],
        json!({"org.rtest.answer": "42", "other": "x"}),
        "{st}"
    );
    // the user process has not run yet
    assert!(!created.stdout_now().contains("ready"));

    rt.start(&id);
    let st = rt.state(&id);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(
        st["pid"].as_i64(),
        Some(pid),
        "pid stays the same across start"
    );
    wait_for("the init to print ready", T, || {
        created.stdout_now().contains("ready").then_some(())
    });

    rt.exec(&id, &["touch", "/tmp/go"]).ok();
    rt.wait_status(&id, "stopped");
    assert!(created.stdout_now().contains("done"));
    let st = rt.state(&id);
    assert_eq!(st["id"], id.as_str());

    rt.delete(&id);
    rt.cmd(&["state", &id])
        .fails_mentioning(&["not exist", "not found", "no such"]);
    rt.assert_no_leftovers(&id);
    rt.assert_root_empty();
}

#[test]
fn run_foreground_passes_exit_code_and_stdout() {
    let rt = Runtime::new();
    let id = rt.id("runfg");
    let b = rt.busybox(&id, &["sh", "-c", "echo hello from $(hostname); exit 3"]);
    let out = rt.run_fg(&b, &id).code_is(3);
    assert_eq!(out.stdout.trim(), "hello from rtest", "{out:?}");
    // a foreground run deletes its container when it exits
    rt.assert_no_leftovers(&id);
    rt.assert_root_empty();

    let id = rt.id("runfg0");
    let b = rt.busybox(&id, &["true"]);
    rt.run_fg(&b, &id).code_is(0);
}

#[test]
fn run_foreground_killed_by_signal_is_128_plus_signal() {
    let rt = Runtime::new();
    let id = rt.id("runsig");
    let b = rt.busybox(&id, &["sleep", "600"]);
    let bp = b.path().to_str().unwrap().to_owned();
    let run = rt.spawn(&["run", "--bundle", &bp, &id]);
    rt.wait_status(&id, "running");
    rt.kill(&id, "KILL");
    let out = run.wait().code_is(137);
    drop(out);
    rt.assert_no_leftovers(&id);
}

#[test]
fn run_detach_and_create_pid_file() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("rund");
    let st = rt.state(&id);
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // -d is the short form
    let id2 = rt.id("rund2");
    let b2 = rt.busybox(&id2, &["sleep", "600"]);
    rt.cmd(&["run", "-d", "-b", b2.path().to_str().unwrap(), &id2])
        .ok();
    assert_eq!(rt.status(&id2), "running");

    let id3 = rt.id("pidfile");
    let b3 = rt.busybox(&id3, &["sleep", "600"]);
    let pidfile = rt.scratch().join("c.pid");
    rt.create_with(&b3, &id3, &["--pid-file", pidfile.to_str().unwrap()]);
    let written: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, rt.pid(&id3));

    rt.delete_force(&id);
    rt.delete_force(&id2);
    rt.delete_force(&id3);
    rt.assert_no_leftovers(&id);
    rt.assert_root_empty();
}

#[test]
fn kill_default_signal_is_term() {
    let rt = Runtime::new();
    let id = rt.id("killterm");
    let b = rt.busybox(
        &id,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.02; done",
        ],
    );
    let created = rt.create(&b, &id);
    rt.start(&id);
    wait_for("trap to be installed", T, || {
        created.stdout_now().contains("ready").then_some(())
    });
    rt.cmd(&["kill", &id]).ok();
    rt.wait_status(&id, "stopped");
    assert!(
        created.stdout_now().contains("got-term"),
        "init did not see SIGTERM"
    );
}

#[test]
fn kill_signal_forms() {
    let rt = Runtime::new();
    for sig in ["KILL", "9", "SIGKILL"] {
        let (id, _b) = rt.sleeper("killform");
        rt.cmd(&["kill", &id, sig]).ok();
        rt.wait_status(&id, "stopped");
        rt.delete(&id);
        rt.assert_no_leftovers(&id);
    }
}

#[test]
fn kill_bad_signal_fails() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("killbad");
    rt.cmd(&["kill", &id, "NOTASIGNAL"])
        .fails_mentioning(&["signal"]);
    rt.cmd(&["kill", &id, "SIGNOPE"])
        .fails_mentioning(&["signal"]);
    assert_eq!(rt.status(&id), "running");
}

#[test]
fn kill_all_reaches_every_process() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("killall");
    let pidfile = rt.scratch().join("exec.pid");
    rt.cmd(&[
        "exec",
        "--detach",
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
        "sleep",
        "600",
    ])
    .ok();
    let exec_pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{exec_pid}")).exists());
    rt.cmd(&["kill", "--all", &id, "KILL"]).ok();
    rt.wait_status(&id, "stopped");
    assert!(
        poll_until(T, || !Path::new(&format!("/proc/{exec_pid}/cgroup"))
            .exists()
            || fs::read_to_string(format!("/proc/{exec_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "exec'd process survived kill --all"
    );
}

#[test]
fn delete_running_requires_force() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("delrun");
    rt.cmd(&["delete", &id])
        .fails_mentioning(&["running", "not stopped", "force"]);
    assert_eq!(rt.status(&id), "running");
    rt.delete_force(&id);
    rt.cmd(&["state", &id]).failed();
    rt.assert_no_leftovers(&id);
    rt.assert_root_empty();
}

#[test]
fn delete_force_created_container() {
    let rt = Runtime::new();
    let id = rt.id("delcreated");
    let b = rt.busybox(&id, &["sleep", "600"]);
    rt.create(&b, &id);
    let pid = rt.pid(&id);
    rt.delete_force(&id);
    rt.assert_no_leftovers(&id);
    assert!(poll_until(T, || process_gone(pid)));
}

/// runc deletes a created (never started) container without --force: it is killed.
#[test]
fn delete_created_container_without_force() {
    let rt = Runtime::new();
    let id = rt.id("delcreated2");
    let b = rt.busybox(&id, &["sleep", "600"]);
    rt.create(&b, &id);
    let pid = rt.pid(&id);
    rt.delete(&id);
    rt.cmd(&["state", &id]).failed();
    rt.assert_no_leftovers(&id);
    assert!(poll_until(T, || process_gone(pid)));
}

#[test]
fn kill_created_container() {
    let rt = Runtime::new();
    let id = rt.id("killcreated");
    let b = rt.busybox(&id, &["sleep", "600"]);
    let created = rt.create(&b, &id);
    rt.kill(&id, "KILL");
    rt.wait_status(&id, "stopped");
    rt.cmd(&["start", &id]).failed();
    assert_eq!(created.stdout_now(), "", "the user process never ran");
}

#[test]
fn init_killed_from_the_host_means_stopped() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("hostkill");
    let pid = rt.pid(&id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    rt.wait_status(&id, "stopped");
    rt.delete(&id);
    rt.assert_no_leftovers(&id);
}

#[test]
fn roots_are_isolated() {
    let rt = Runtime::new();
    let other = Runtime::new();
    let (id, _b) = rt.sleeper("isolated");
    assert_eq!(other.cmd(&["list", "-q"]).ok().stdout.trim(), "");
    other
        .cmd(&["state", &id])
        .fails_mentioning(&["not exist", "not found", "no such"]);
    assert_eq!(rt.cmd(&["list", "-q"]).ok().stdout.trim(), id);
}

#[test]
fn list_shows_containers() {
    let rt = Runtime::new();
    let a = rt.id("lista");
    let ba = rt.busybox(&a, &["sleep", "600"]);
    rt.create(&ba, &a);
    let (b, _bb) = rt.sleeper("listb");

    let table = rt.cmd(&["list"]).ok().stdout;
    let header = table.lines().next().unwrap_or_default();
    for col in ["ID", "PID", "STATUS", "BUNDLE", "CREATED"] {
        assert!(header.contains(col), "list header lacks {col}: {table}");
    }
    let line_a = table.lines().find(|l| l.starts_with(&a)).expect("a listed");
    assert!(line_a.contains("created"), "{table}");
    let line_b = table.lines().find(|l| l.starts_with(&b)).expect("b listed");
    assert!(line_b.contains("running"), "{table}");

    let mut q: Vec<String> = rt
        .cmd(&["list", "-q"])
        .ok()
        .stdout
        .lines()
        .map(str::to_owned)
        .collect();
    q.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(q, want);

    for flag in ["--format", "-f"] {
        let v = rt.cmd(&["list", flag, "json"]).ok().json();
        let arr = v.as_array().expect("list json is an array");
        assert_eq!(arr.len(), 2, "{v}");
        let ea = arr
            .iter()
            .find(|e| e["id"] == a.as_str())
            .expect("a in json");
        assert_eq!(ea["status"], "created");
        assert!(ea["pid"].as_i64().unwrap() > 0);
        assert_eq!(
            canon(ea["bundle"].as_str().unwrap()),
            canon(ba.path().to_str().unwrap())
        );
        let eb = arr
            .iter()
            .find(|e| e["id"] == b.as_str())
            .expect("b in json");
        assert_eq!(eb["status"], "running");
    }
}

#[test]
fn list_empty_root() {
    let rt = Runtime::new();
    let out = rt.cmd(&["list", "-q"]).ok();
    assert_eq!(out.stdout.trim(), "");
    let out = rt.cmd(&["list"]).ok();
    assert_eq!(out.stdout.lines().count(), 1, "only the header: {out:?}");
    // runc prints `null` for an empty JSON list
    let v = rt.cmd(&["list", "--format", "json"]).ok().json();
    assert!(
        v.is_null() || v.as_array().is_some_and(Vec::is_empty),
        "{v}"
    );
}

#[test]
fn ps_lists_container_processes() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("ps");
    let pid = rt.pid(&id);
    let pidfile = rt.scratch().join("exec.pid");
    rt.cmd(&[
        "exec",
        "-d",
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
        "sleep",
        "601",
    ])
    .ok();
    let exec_pid: i64 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    for flag in ["--format", "-f"] {
        let v = rt.cmd(&["ps", flag, "json", &id]).ok().json();
        let pids: Vec<i64> = v
            .as_array()
            .expect("ps json is an array of pids")
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        assert!(pids.contains(&(pid as i64)), "{v}");
        assert!(pids.contains(&exec_pid), "{v}");
    }

    let table = rt.cmd(&["ps", &id]).ok().stdout;
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().any(|w| w == pid.to_string())),
        "init pid {pid} not in ps table:\n{table}"
    );
    assert!(table.contains("sleep 601"), "{table}");
}

#[test]
fn pause_and_resume() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("pause");
    let cg = rtest::cgroup::Cgroup::of(rt.pid(&id)).unwrap();
    assert!(!cg.frozen());
    rt.cmd(&["pause", &id]).ok();
    assert_eq!(rt.status(&id), "paused");
    assert!(cg.frozen(), "freezer does not say frozen");
    // a paused container still lists, with its status
    let v = rt.cmd(&["list", "-f", "json"]).ok().json();
    assert_eq!(v[0]["status"], "paused", "{v}");
    rt.cmd(&["resume", &id]).ok();
    assert_eq!(rt.status(&id), "running");
    assert!(!cg.frozen());
}

#[test]
fn delete_force_paused_container() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("delpaused");
    rt.cmd(&["pause", &id]).ok();
    rt.delete_force(&id);
    rt.assert_no_leftovers(&id);
}

#[test]
fn events_stats_once() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("stats");
    let out = rt.cmd(&["events", "--stats", &id]).ok();
    let first = out.stdout.lines().next().expect("a line of output");
    let v: Value = serde_json::from_str(first).expect("JSON stats");
    assert_eq!(v["type"], "stats", "{v}");
    assert_eq!(v["id"], id.as_str(), "{v}");
    assert!(v["data"].is_object(), "{v}");
    assert!(
        v["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    assert!(v["data"]["memory"].is_object(), "{v}");
}

#[test]
fn events_stream_every_interval() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("events");
    let mut ev = rt.spawn(&["events", "--interval", "100ms", &id]);
    let lines = wait_for("two stats events", T, || {
        let s = ev.stdout_now();
        (s.lines().count() >= 2).then_some(s)
    });
    assert!(ev.try_wait().is_none(), "events should keep streaming");
    drop(ev);
    for l in lines.lines().take(2) {
        let v: Value = serde_json::from_str(l).expect("one JSON object per line");
        assert_eq!(v["type"], "stats", "{v}");
        assert_eq!(v["id"], id.as_str());
    }
}

#[test]
fn global_log_options() {
    let rt = Runtime::new();
    let id = rt.id("log");
    let b = rt.busybox(&id, &["true"]);
    let bp = b.path().to_str().unwrap().to_owned();

    // --log-format json --debug: every line of the log is a JSON object with a level and msg
    let log = rt.scratch().join("json.log");
    let lp = log.to_str().unwrap();
    rt.cmd(&[
        "--log",
        lp,
        "--log-format",
        "json",
        "--debug",
        "run",
        "-b",
        &bp,
        &id,
    ])
    .ok();
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.trim().is_empty(), "--debug wrote nothing to --log");
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["msg"].is_string(), "{l}");
    }
    assert!(text.contains("\"debug\""), "no debug-level entry:\n{text}");

    // errors go to the log as well as to stderr
    let log2 = rt.scratch().join("err.log");
    let lp2 = log2.to_str().unwrap();
    rt.cmd(&[
        "--log",
        lp2,
        "--log-format",
        "json",
        "state",
        "no-such-container",
    ])
    .failed();
    let text = fs::read_to_string(&log2).unwrap_or_default();
    let errs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["level"] == "error")
        .collect();
    assert!(!errs.is_empty(), "no error entry in the log:\n{text}");

    // text format
    let id2 = rt.id("logtext");
    let b2 = rt.busybox(&id2, &["true"]);
    let log3 = rt.scratch().join("text.log");
    let lp3 = log3.to_str().unwrap();
    rt.cmd(&[
        "--log",
        lp3,
        "--log-format",
        "text",
        "--debug",
        "run",
        "--bundle",
        b2.path().to_str().unwrap(),
        &id2,
    ])
    .ok();
    let text = fs::read_to_string(&log3).unwrap();
    assert!(text.contains("level=debug"), "text log:\n{text}");
    assert!(
        !text.trim_start().starts_with('{'),
        "text log looks like JSON:\n{text}"
    );
}

#[test]
fn no_pivot_runs() {
    let rt = Runtime::new();
    let id = rt.id("nopivot");
    let b = rt.busybox(&id, &["sh", "-c", "echo pivoted-or-not; ls /"]);
    let out = rt
        .cmd(&[
            "run",
            "--no-pivot",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ])
        .ok();
    assert!(out.stdout.contains("pivoted-or-not"), "{out:?}");
    assert!(out.stdout.contains("bin"), "{out:?}");
}

#[test]
fn preserve_fds_passes_extra_descriptors() {
    let rt = Runtime::new();
    let f = rt.scratch().join("fd3.txt");
    fs::write(&f, "through fd 3\n").unwrap();

    let id = rt.id("fds");
    let b = rt.busybox(&id, &["sh", "-c", "cat <&3"]);
    let fd = std::os::fd::OwnedFd::from(fs::File::open(&f).unwrap());
    let out = rt.cmd_with_fds(
        &[
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ],
        vec![fd],
    );
    let out = out.ok();
    assert_eq!(out.stdout, "through fd 3\n", "{out:?}");

    // without --preserve-fds the descriptor does not reach the container
    let id2 = rt.id("nofds");
    let b2 = rt.busybox(&id2, &["sh", "-c", "cat <&3"]);
    let fd = std::os::fd::OwnedFd::from(fs::File::open(&f).unwrap());
    let out = rt.cmd_with_fds(
        &["run", "--bundle", b2.path().to_str().unwrap(), &id2],
        vec![fd],
    );
    assert!(!out.success(), "fd 3 leaked into the container: {out:?}");
    assert!(!out.stdout.contains("through fd 3"));
}

#[test]
fn create_with_terminal_and_console_socket() {
    let rt = Runtime::new();
    let id = rt.id("tty");
    let mut b = rt.busybox(&id, &["sh", "-c", "tty; echo term=$TERM"]);
    b.config["process"]["terminal"] = json!(true);
    b.save().unwrap();
    let sock = rtest::console::ConsoleSocket::new().unwrap();
    rt.create_with(&b, &id, &["--console-socket", sock.path_str()]);
    let master = sock.recv_master(T).unwrap();
    rt.start(&id);
    let text = rtest::console::read_pty(&master, T, |s| s.contains("term="));
    let tty = text.lines().next().unwrap_or_default();
    assert!(tty.starts_with("/dev/pts/"), "tty printed {text:?}");
    assert!(text.contains("term=xterm"), "{text:?}");
    rt.wait_status(&id, "stopped");
}

#[test]
fn terminal_without_console_socket_fails() {
    let rt = Runtime::new();
    let id = rt.id("ttynosock");
    let mut b = rt.busybox(&id, &["true"]);
    b.config["process"]["terminal"] = json!(true);
    b.save().unwrap();
    rt.cmd(&["create", "--bundle", b.path().to_str().unwrap(), &id])
        .fails_mentioning(&["console", "socket", "terminal", "tty"]);
    rt.assert_no_leftovers(&id);
}

#[test]
fn features_describes_the_runtime() {
    let rt = Runtime::new();
    let v = rt.cmd(&["features"]).ok().json();
    for k in ["ociVersionMin", "ociVersionMax"] {
        assert!(
            v[k].as_str().is_some_and(|s| s.starts_with("1.")),
            "{k}: {v}"
        );
    }
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let hooks = strs(&v["hooks"]);
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.contains(&h.to_owned()), "hooks lack {h}: {hooks:?}");
    }
    let mo = strs(&v["mountOptions"]);
    for o in [
        "ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "rprivate", "rslave",
    ] {
        assert!(mo.contains(&o.to_owned()), "mountOptions lack {o}");
    }
    let ns = strs(&v["linux"]["namespaces"]);
    for n in ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"] {
        assert!(ns.contains(&n.to_owned()), "namespaces lack {n}: {ns:?}");
    }
    let caps = strs(&v["linux"]["capabilities"]);
    for c in [
        "CAP_CHOWN",
        "CAP_SYS_ADMIN",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    ] {
        assert!(caps.contains(&c.to_owned()), "capabilities lack {c}");
    }
    let cg = &v["linux"]["cgroup"];
    assert_eq!(cg["v1"], true, "{cg}");
    assert_eq!(cg["v2"], true, "{cg}");
    let sc = &v["linux"]["seccomp"];
    assert_eq!(sc["enabled"], true, "{sc}");
    let actions = strs(&sc["actions"]);
    for a in ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL"] {
        assert!(actions.contains(&a.to_owned()), "seccomp actions lack {a}");
    }
    assert!(strs(&sc["archs"]).contains(&"SCMP_ARCH_X86_64".to_owned()));
    assert!(strs(&sc["operators"]).contains(&"SCMP_CMP_EQ".to_owned()));
}

#[test]
fn spec_writes_a_usable_config() {
    let rt = Runtime::new();
    let id = rt.id("spec");
    let b = rt.busybox(&id, &["true"]);
    fs::remove_file(b.path().join("config.json")).unwrap();
    let bp = b.path().to_str().unwrap().to_owned();
    rt.cmd(&["spec", "--bundle", &bp]).ok();
    let cfg_path = b.path().join("config.json");
    let mut cfg: Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    assert!(cfg["ociVersion"].as_str().unwrap().starts_with("1."));
    assert_eq!(cfg["root"]["path"], "rootfs");
    assert_eq!(cfg["process"]["terminal"], true);
    assert_eq!(cfg["process"]["args"], json!(["sh"]));
    assert!(cfg["linux"]["namespaces"].as_array().unwrap().len() >= 4);

    // refuses to overwrite
    let before = fs::read(&cfg_path).unwrap();
    rt.cmd(&["spec", "--bundle", &bp])
        .fails_mentioning(&["exist"]);
    assert_eq!(fs::read(&cfg_path).unwrap(), before);

    cfg["process"]["terminal"] = json!(false);
    cfg["process"]["args"] = json!(["sh", "-c", "echo spec-ok"]);
    cfg["linux"]["cgroupsPath"] = json!(format!("/rtest-{id}"));
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let out = rt.run_fg(&b, &id).ok();
    assert_eq!(out.stdout.trim(), "spec-ok");
}

#[test]
fn spec_defaults_to_current_directory() {
    let rt = Runtime::new();
    let dir = rt.scratch().join("specdir");
    fs::create_dir(&dir).unwrap();
    let mut c = rt.command(&["spec"]);
    c.current_dir(&dir);
    rt.spawn_command(c, &["spec"]).wait().ok();
    let v: Value = serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert!(v["process"].is_object());
}
