//! The task manager against real shims: Debian's `containerd-shim-runc-v2` with runc
//! (`$RCD_TEST_SHIM` picks another shim binary, e.g. rshim's `containerd-shim-runr-v2`).
//! Every test uses its own state dir, removes its tasks and checks that no bundle, shim,
//! container process or cgroup is left.

use anyhow::{bail, Context, Result};
use rcd::task::{
    CreateOptions, Exit, IoConfig, Reconnected, Stdio, TaskError, TaskEvent, TaskEventKind,
    TaskManager, TaskManagerConfig, TaskStats, TaskStatus,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "rtest-task";

fn shim_binary() -> PathBuf {
    std::env::var_os("RCD_TEST_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/containerd-shim-runc-v2"))
}

/// One busybox tree shared read-only by every container of the test process (and kept
/// between runs under cargo's target tmpdir): building one per container costs ~0.4 s of
/// symlinks on this disk.
fn shared_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rcd-task-busybox");
        if !dir.join(".complete").exists() {
            let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            rtest::rootfs::populate_busybox(&tmp).expect("building the busybox rootfs");
            std::fs::write(tmp.join(".complete"), b"").unwrap();
            if std::fs::rename(&tmp, &dir).is_err() {
                // another test process won the race
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
}

/// A busybox spec on the shared rootfs, read-only, cgroup `/rtest-<id>`.
fn spec(id: &str, args: &[&str]) -> Value {
    let mut s = rtest::bundle::default_config(id, args);
    s["root"]["path"] = json!(shared_rootfs().display().to_string());
    s
}

fn process(args: &[&str]) -> Value {
    let mut p = spec("x", args)["process"].clone();
    p["terminal"] = json!(false);
    p
}

struct Env {
    dir: tempfile::TempDir,
    m: TaskManager,
    ids: Vec<String>,
}

fn config(dir: &Path) -> TaskManagerConfig {
    let mut cfg = TaskManagerConfig::new(dir.join("state"), dir.join("rcd.sock"), shim_binary());
    cfg.publish_binary = publish_binary();
    cfg
}

/// A stand-in for `rcd publish` (Debian's shim forwards its events over ttrpc and never runs
/// it; rshim may): a script that turns `--address A publish --topic T --namespace NS` into
/// a run of this test binary's `publish_helper`, which calls `publish_from_stdin`.
fn publish_binary() -> PathBuf {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rcd-task-publish");
            let script = format!(
                "#!/bin/sh\n\
                 while [ $# -gt 0 ]; do case \"$1\" in\n\
                 --address) A=$2; shift;; --topic) T=$2; shift;; --namespace) N=$2; shift;;\n\
                 esac; shift; done\n\
                 RCD_PUBLISH_ADDRESS=\"$A\" RCD_PUBLISH_TOPIC=\"$T\" RCD_PUBLISH_NAMESPACE=\"$N\" \\\n\
                 exec {} --exact publish_helper --test-threads=1 --quiet >/dev/null\n",
                std::env::current_exe().unwrap().display()
            );
            let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
            std::fs::write(&tmp, script).unwrap();
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        })
        .clone()
}

/// The body of the `publish_binary` script; a no-op in a normal test run.
#[tokio::test]
async fn publish_helper() {
    let Some(address) = std::env::var_os("RCD_PUBLISH_ADDRESS") else {
        return;
    };
    let ns = std::env::var("RCD_PUBLISH_NAMESPACE").unwrap();
    let topic = std::env::var("RCD_PUBLISH_TOPIC").unwrap();
    rcd::task::publish_from_stdin(Path::new(&address), Path::new("/nonexistent"), &ns, &topic)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_forwards_or_spools() {
    use rcd::task::Published;
    let env = Env::new().await;
    let mut rx = env.m.subscribe();
    // a TaskOOM event, as a shim would hand it over on stdin
    let any = [
        &[0x0a, 25][..],
        b"containerd.events.TaskOOM",
        &[0x12, 5, 0x0a, 3],
        b"c-1",
    ]
    .concat();
    let run = |state: &Path| {
        let mut child = std::process::Command::new(publish_binary())
            .args([
                "--address",
                &env.dir.path().join("rcd.sock").display().to_string(),
                "publish",
                "--topic",
                "/tasks/oom",
                "--namespace",
                NS,
            ])
            .env(rcd::task::STATE_DIR_ENV, state)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&any).unwrap();
        assert!(child.wait().unwrap().success());
    };
    run(&env.state());
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.namespace.as_str(), ev.topic.as_str()),
        (NS, "/tasks/oom")
    );
    assert_eq!(ev.kind, TaskEventKind::Oom { id: "c-1".into() });

    // no daemon: the event is spooled and the next manager replays it
    env.m.close().await;
    run(&env.state());
    let spooled: Vec<_> = std::fs::read_dir(env.state().join("events"))
        .unwrap()
        .collect();
    assert_eq!(spooled.len(), 1);
    let m = TaskManager::new(config(env.dir.path())).await.unwrap();
    let mut rx = m.subscribe();
    assert!(m.reconnect_all().await.unwrap().is_empty());
    let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, TaskEventKind::Oom { id: "c-1".into() });
    assert_eq!(
        std::fs::read_dir(env.state().join("events"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        rcd::task::publish(
            &env.dir.path().join("rcd.sock"),
            &env.state(),
            NS,
            "/tasks/oom",
            &any
        )
        .await
        .unwrap(),
        Published::Forwarded
    );
    m.close().await;
    env.finish().await;
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("rcd-task-")
            .tempdir()
            .unwrap();
        let m = TaskManager::new(config(dir.path())).await.unwrap();
        Env {
            dir,
            m,
            ids: vec![],
        }
    }

    fn id(&mut self) -> String {
        let id = rtest::unique_id("t");
        self.ids.push(id.clone());
        id
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn create(&mut self, args: &[&str], io: IoConfig) -> (String, rcd::task::ProcessIo) {
        let id = self.id();
        let (_, pio) = self
            .m
            .create(
                NS,
                &id,
                CreateOptions {
                    spec: spec(&id, args),
                    rootfs: vec![],
                    io,
                    shim_group: None,
                },
            )
            .await
            .unwrap();
        (id, pio)
    }

    /// Kills and deletes every task left, then checks that nothing remains.
    async fn finish(mut self) {
        let tasks = self.m.list(None);
        for t in &tasks {
            let _ = self.m.kill(&t.namespace, &t.id, None, 9, true).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                self.m.wait(&t.namespace, &t.id, None),
            )
            .await;
            self.m.delete(&t.namespace, &t.id).await.unwrap();
        }
        for t in &tasks {
            if let Some(a) = &t.address {
                let path = a.trim_start_matches("unix://");
                // the shim and its socket go just after the delete's reply
                assert!(
                    rtest::poll_until(Duration::from_secs(5), || !Path::new(path).exists()),
                    "socket {path} of {} left",
                    t.id
                );
            }
            if let Some(pid) = t.shim_pid {
                assert!(
                    rtest::poll_until(Duration::from_secs(5), || !alive(pid)),
                    "shim {pid} of {} left running",
                    t.id
                );
            }
        }
        self.m.close().await;
        assert_clean(&self.state(), &std::mem::take(&mut self.ids));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            force_cleanup(&self.state());
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn assert_clean(state: &Path, ids: &[String]) {
    // a deleted task's bundle leaves its path once its shim has ended, just after the
    // delete's reply; then its files (and rootfs mounts) go in rcd's trash worker
    let tasks = state.join("tasks").join(NS);
    let bundles = || -> Vec<_> {
        std::fs::read_dir(&tasks)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    rtest::poll_until(Duration::from_secs(10), || bundles().is_empty());
    assert!(
        rcd::trash::flush(Duration::from_secs(20)),
        "the trash worker did not finish"
    );
    let left = bundles();
    assert!(
        left.is_empty(),
        "bundles left in {}: {left:?}",
        tasks.display()
    );
    for id in ids {
        let name = format!("rtest-{id}");
        assert!(
            rtest::poll_until(Duration::from_secs(5), || rtest::cgroup::pids_in(&name)
                .is_empty()),
            "processes left in cgroup {name}"
        );
        assert!(
            rtest::poll_until(Duration::from_secs(5), || rtest::cgroup::leftover_dirs(
                &name
            )
            .is_empty()),
            "cgroups left: {:?}",
            rtest::cgroup::leftover_dirs(&name)
        );
        assert!(
            !Path::new("/run/containerd/runc").join(NS).join(id).exists(),
            "runc state of {id} left"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = state.display().to_string();
    assert!(!mounts.contains(&s), "mounts left under {s}");
}

/// After a failed test: kill every shim and container of the state dir, the blunt way.
fn force_cleanup(state: &Path) {
    let Ok(rd) = std::fs::read_dir(state.join("tasks").join(NS)) else {
        return;
    };
    for b in rd.flatten() {
        let bundle = b.path();
        if let Ok(rec) = std::fs::read(bundle.join("task.json")) {
            if let Ok(v) = serde_json::from_slice::<Value>(&rec) {
                if let Some(pid) = v["shim_pid"].as_u64() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let id = b.file_name().to_string_lossy().into_owned();
        let _ = std::process::Command::new("runc")
            .args([
                "--root",
                &format!("/run/containerd/runc/{NS}"),
                "delete",
                "--force",
                &id,
            ])
            .output();
        let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&bundle);
    }
}

async fn read_all(r: Option<tokio::net::unix::pipe::Receiver>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        tokio::time::timeout(Duration::from_secs(10), r.read_to_string(&mut s))
            .await
            .expect("output in time")
            .unwrap();
    }
    s
}

async fn wait(m: &TaskManager, id: &str) -> Exit {
    tokio::time::timeout(Duration::from_secs(20), m.wait(NS, id, None))
        .await
        .expect("task exits in time")
        .unwrap()
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<TaskEvent>,
    id: &str,
) -> TaskEventKind {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
            .unwrap();
        if ev.kind.task_id() == Some(id) {
            assert_eq!(ev.namespace, NS);
            return ev.kind;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn true_exits_zero() {
    let mut env = Env::new().await;
    let (id, _) = env.create(&["/bin/true"], IoConfig::default()).await;
    assert_eq!(
        env.m.state(NS, &id, None).await.unwrap().status,
        TaskStatus::Created
    );
    let pid = env.m.start(NS, &id, None).await.unwrap();
    let exit = wait(&env.m, &id).await;
    assert_eq!((exit.status, exit.pid), (0, pid));
    // one more, timed end to end (create, start, wait, delete)
    let t0 = Instant::now();
    let (id2, _) = env.create(&["/bin/true"], IoConfig::default()).await;
    env.m.start(NS, &id2, None).await.unwrap();
    assert_eq!(wait(&env.m, &id2).await.status, 0);
    env.m.delete(NS, &id2).await.unwrap();
    eprintln!("create+start+wait+delete of /bin/true: {:?}", t0.elapsed());
    let st = env.m.state(NS, &id, None).await.unwrap();
    assert_eq!(st.status, TaskStatus::Stopped);
    assert_eq!(st.exit.unwrap().status, 0);
    let deleted = env.m.delete(NS, &id).await.unwrap();
    assert_eq!(deleted.status, 0);
    assert!(env.m.state(NS, &id, None).await.unwrap_err().is_not_found());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_events() {
    let mut env = Env::new().await;
    let mut rx = env.m.subscribe();
    let (id, _) = env
        .create(&["sh", "-c", "exit 7"], IoConfig::default())
        .await;
    let pid = env.m.start(NS, &id, None).await.unwrap();
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let exit = wait(&env.m, &id).await;
    assert_eq!(exit.status, 7);
    assert!(exit.exited_at() >= before && exit.exited_at() <= std::time::SystemTime::now());
    // several waiters, after the fact, all get the same exit
    let (a, b) = tokio::join!(env.m.wait(NS, &id, None), env.m.wait(NS, &id, None));
    assert_eq!((a.unwrap(), b.unwrap()), (exit, exit));
    env.m.delete(NS, &id).await.unwrap();
    // Debian's shim forwards in order; a shim that runs one publish process per event
    // need not, so only the set is checked
    let mut got = vec![];
    for _ in 0..4 {
        got.push(next_event(&mut rx, &id).await);
    }
    let has = |f: &dyn Fn(&TaskEventKind) -> bool| got.iter().any(f);
    assert!(
        has(&|k| matches!(k, TaskEventKind::Create { pid: p, .. } if *p == pid)),
        "{got:?}"
    );
    assert!(
        has(&|k| matches!(k, TaskEventKind::Start { pid: p, .. } if *p == pid)),
        "{got:?}"
    );
    assert!(
        has(&|k| matches!(k, TaskEventKind::Exit { exit_status: 7, .. })),
        "{got:?}"
    );
    assert!(
        has(&|k| matches!(k, TaskEventKind::Delete { exit_status: 7, .. })),
        "{got:?}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_to_a_log_file() {
    let mut env = Env::new().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("c.log");
    let script = "echo out; sleep 0.1; echo err >&2; sleep 0.1; echo more";
    let (id, _) = env
        .create(&["sh", "-c", script], IoConfig::log_file(&log))
        .await;
    env.m.start(NS, &id, None).await.unwrap();
    assert_eq!(wait(&env.m, &id).await.status, 0);
    env.m.delete(NS, &id).await.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\nmore\n");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_output_then_kill() {
    let mut env = Env::new().await;
    let (id, _) = env.create(&["sleep", "1000"], IoConfig::default()).await;
    env.m.start(NS, &id, None).await.unwrap();
    let io = IoConfig {
        stdout: Stdio::Pipe,
        stderr: Stdio::Pipe,
        ..Default::default()
    };
    let pio = env
        .m
        .exec(
            NS,
            &id,
            "e1",
            process(&["sh", "-c", "echo hi; echo there >&2; exit 3"]),
            io,
        )
        .await
        .unwrap();
    let epid = env.m.start(NS, &id, Some("e1")).await.unwrap();
    assert!(epid > 0);
    let (out, err) = tokio::join!(read_all(pio.stdout), read_all(pio.stderr));
    assert_eq!((out.as_str(), err.as_str()), ("hi\n", "there\n"));
    let exit = env.m.wait(NS, &id, Some("e1")).await.unwrap();
    assert_eq!(exit.status, 3);
    assert_eq!(env.m.delete_exec(NS, &id, "e1").await.unwrap().status, 3);
    assert!(!env
        .state()
        .join("tasks")
        .join(NS)
        .join(&id)
        .join("exec-e1.stdout")
        .exists());
    let e = env.m.start(NS, &id, Some("nope")).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // a running task cannot be deleted
    let e = env.m.delete(NS, &id).await.unwrap_err();
    assert!(matches!(e, TaskError::Running { .. }), "{e}");
    assert!(e.to_string().contains("still running"), "{e}");
    // the init of a pid namespace ignores signals it has no handler for: SIGTERM does nothing
    env.m.kill(NS, &id, None, 15, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        env.m.state(NS, &id, None).await.unwrap().status,
        TaskStatus::Running
    );
    env.m.kill(NS, &id, None, 9, false).await.unwrap();
    assert_eq!(wait(&env.m, &id).await.status, 128 + 9);
    env.m.delete(NS, &id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exec() {
    let mut env = Env::new().await;
    let (id, _) = env.create(&["sleep", "1000"], IoConfig::default()).await;
    env.m.start(NS, &id, None).await.unwrap();
    let io = IoConfig {
        stdout: Stdio::Pipe,
        terminal: true,
        ..Default::default()
    };
    let mut p = process(&["sh", "-c", "sleep 0.3; tty; stty size"]);
    p["terminal"] = json!(true);
    let pio = env.m.exec(NS, &id, "tty", p, io).await.unwrap();
    env.m.start(NS, &id, Some("tty")).await.unwrap();
    env.m
        .resize_pty(NS, &id, Some("tty"), 100, 30)
        .await
        .unwrap();
    let out = read_all(pio.stdout).await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("30 100"), "{out:?}");
    assert_eq!(env.m.wait(NS, &id, Some("tty")).await.unwrap().status, 0);
    env.m.delete_exec(NS, &id, "tty").await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_closed_on_request() {
    let mut env = Env::new().await;
    let io = IoConfig {
        stdin: Stdio::Pipe,
        stdout: Stdio::Pipe,
        ..Default::default()
    };
    let (id, pio) = env.create(&["cat"], io).await;
    env.m.start(NS, &id, None).await.unwrap();
    let mut stdin = pio.stdin.unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    let reader = tokio::spawn(read_all(pio.stdout));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        env.m.state(NS, &id, None).await.unwrap().status,
        TaskStatus::Running
    );
    drop(stdin);
    env.m.close_stdin(NS, &id, None).await.unwrap();
    assert_eq!(wait(&env.m, &id).await.status, 0);
    assert_eq!(reader.await.unwrap(), "hello\n");
    env.m.delete(NS, &id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_stats_update_pause_resume() {
    let mut env = Env::new().await;
    let (id, _) = env
        .create(
            &["sh", "-c", "sleep 1000 & sleep 1000"],
            IoConfig::default(),
        )
        .await;
    let pid = env.m.start(NS, &id, None).await.unwrap();
    // the shell forks its background sleep after the start returned
    let mut pids = vec![];
    for _ in 0..100 {
        pids = env.m.pids(NS, &id).await.unwrap();
        if pids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pids.contains(&pid) && pids.len() == 2, "{pids:?}");
    match env.m.stats(NS, &id).await.unwrap() {
        TaskStats::V1(m) => {
            assert_eq!(m.pids.current, 2);
            assert!(m.memory.usage.usage > 0);
        }
        TaskStats::V2(m) => assert_eq!(m.pids.current, 2),
        TaskStats::Other(a) => panic!("unexpected stats {}", a.type_url),
    }
    env.m
        .update(NS, &id, json!({"memory": {"limit": 64 << 20}}))
        .await
        .unwrap();
    match env.m.stats(NS, &id).await.unwrap() {
        TaskStats::V1(m) => assert_eq!(m.memory.usage.limit, 64 << 20),
        TaskStats::V2(m) => assert_eq!(m.memory.usage_limit, 64 << 20),
        TaskStats::Other(_) => unreachable!(),
    }
    let e = env.m.update(NS, &id, json!(1)).await.unwrap_err();
    assert!(e.to_string().contains("must be a JSON object"), "{e}");
    env.m.pause(NS, &id).await.unwrap();
    assert_eq!(
        env.m.state(NS, &id, None).await.unwrap().status,
        TaskStatus::Paused
    );
    env.m.resume(NS, &id).await.unwrap();
    assert_eq!(
        env.m.state(NS, &id, None).await.unwrap().status,
        TaskStatus::Running
    );
    env.m.kill(NS, &id, None, 9, true).await.unwrap();
    assert_eq!(wait(&env.m, &id).await.status, 137);
    env.m.delete(NS, &id).await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_mounts_through_the_shim() {
    let mut env = Env::new().await;
    let layers = tempfile::tempdir().unwrap();
    let (upper, work) = (layers.path().join("upper"), layers.path().join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let id = env.id();
    let mut s = spec(&id, &["sh", "-c", "echo written > /new; cat /new"]);
    s["root"] = json!({"path": "rootfs", "readonly": false});
    let overlay = rcd::snapshot::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={}", shared_rootfs().display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    let io = IoConfig {
        stdout: Stdio::Pipe,
        ..Default::default()
    };
    let (_, pio) = env
        .m
        .create(
            NS,
            &id,
            CreateOptions {
                spec: s,
                rootfs: vec![overlay],
                io,
                shim_group: None,
            },
        )
        .await
        .unwrap();
    env.m.start(NS, &id, None).await.unwrap();
    assert_eq!(read_all(pio.stdout).await, "written\n");
    assert_eq!(wait(&env.m, &id).await.status, 0);
    env.m.delete(NS, &id).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(upper.join("new")).unwrap(),
        "written\n"
    );
    assert!(!shared_rootfs().join("new").exists());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_nothing_behind() {
    let mut env = Env::new().await;
    let e = env.m.state(NS, "nope", None).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("unknown task nope in namespace {NS}")
    );
    let e = env.m.kill(NS, "nope", None, 9, false).await.unwrap_err();
    assert!(e.is_not_found());
    for (ns, id) in [("a/b", "x"), (NS, "../x"), (NS, "")] {
        let e = env
            .m
            .create(
                ns,
                id,
                CreateOptions {
                    spec: spec("x", &["true"]),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("invalid "), "{e}");
    }
    let e = env
        .m
        .create(
            NS,
            "x",
            CreateOptions {
                spec: json!([]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must be a JSON object"), "{e}");

    // duplicate id
    let (id, _) = env.create(&["sleep", "1000"], IoConfig::default()).await;
    let e = env
        .m
        .create(
            NS,
            &id,
            CreateOptions {
                spec: spec(&id, &["true"]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::AlreadyExists { .. }), "{e}");
    env.m.delete(NS, &id).await.unwrap();

    // the runtime refuses the spec: the shim goes, the bundle goes
    let id = env.id();
    let e = env
        .m
        .create(
            NS,
            &id,
            CreateOptions {
                spec: spec(&id, &["/no/such/binary"]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TaskError::Shim {
                method: "create",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&id), "{e}");
    assert!(!env.state().join("tasks").join(NS).join(&id).exists());
    assert!(env.m.list(None).is_empty());

    // a shim binary that does not exist
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.shim_binary = PathBuf::from("/no/such/shim");
    let m2 = TaskManager::new(cfg).await.unwrap();
    let e = m2
        .create(
            NS,
            "x",
            CreateOptions {
                spec: spec("x", &["true"]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("starting shim /no/such/shim for task x: cannot execute it"),
        "{e}"
    );
    assert!(!dir.path().join("state/tasks").join(NS).join("x").exists());
    m2.close().await;

    // a created task that never started can be deleted
    let (id, _) = env.create(&["sleep", "1000"], IoConfig::default()).await;
    env.m.delete(NS, &id).await.unwrap();
    // the bundle's path is freed once the shim has ended, just after the reply
    let bundle = env.state().join("tasks").join(NS).join(&id);
    assert!(rtest::poll_until(Duration::from_secs(10), || !bundle.exists()));

    // a bundle whose creation never finished (rcd killed before the shim answered) is
    // removed by the next reconnect, and so is a bundle without a record
    for (n, record) in [(0, true), (1, false)] {
        let id = format!("{}-unfinished{n}", env.id());
        let b = env.state().join("tasks").join(NS).join(&id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), spec(&id, &["true"]).to_string()).unwrap();
        if record {
            let rec = json!({"namespace": NS, "id": id, "shim_binary": shim_binary(), "created_at_ms": 0});
            std::fs::write(b.join("task.json"), rec.to_string()).unwrap();
        }
        let found = env.m.reconnect_all().await.unwrap();
        assert_eq!(
            found,
            vec![Reconnected::Removed {
                namespace: NS.into(),
                id: id.clone()
            }]
        );
        assert!(!b.exists());
    }

    // a second manager on the same events socket is refused
    let e = TaskManager::new(config(env.dir.path()))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("another daemon"), "{e}");
    env.finish().await;
}

/// rcd killed after the shim's `start` answered but before `Create`: the shim runs, knows
/// no task; the next reconnect shuts it down and removes the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_removes_a_half_created_task() {
    let mut env = Env::new().await;
    let id = env.id();
    let b = env.state().join("tasks").join(NS).join(&id);
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), spec(&id, &["true"]).to_string()).unwrap();
    let rec = json!({"namespace": NS, "id": id, "shim_binary": shim_binary(), "created_at_ms": 0});
    std::fs::write(b.join("task.json"), rec.to_string()).unwrap();
    // the shim's log FIFO, with a reader as rcd would hold (the Go shim waits for one)
    nix::unistd::mkfifo(
        &b.join("log"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let _log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("log"))
        .unwrap();
    let out = std::process::Command::new(shim_binary())
        .args(["-namespace", NS, "-address"])
        .arg(env.dir.path().join("rcd.sock"))
        .args(["-publish-binary", "/bin/false", "-id", &id, "start"])
        .env("TTRPC_ADDRESS", env.dir.path().join("rcd.sock.ttrpc"))
        .current_dir(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let address = String::from_utf8(out.stdout).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists());
    let found = env.m.reconnect_all().await.unwrap();
    assert_eq!(
        found,
        vec![Reconnected::Removed {
            namespace: NS.into(),
            id: id.clone()
        }]
    );
    assert!(!b.exists());
    assert!(
        rtest::poll_until(Duration::from_secs(5), || !socket.exists()),
        "the shim of the half-created task still serves {}",
        socket.display()
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_under_running_task() {
    let mut env = Env::new().await;
    let mut rx = env.m.subscribe();
    let (id, _) = env.create(&["sleep", "1000"], IoConfig::default()).await;
    let pid = env.m.start(NS, &id, None).await.unwrap();
    let shim = env.m.list(Some(NS))[0].shim_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = wait(&env.m, &id).await;
    assert_eq!(exit.status, 137);
    let st = env.m.state(NS, &id, None).await.unwrap();
    assert_eq!(st.status, TaskStatus::Stopped);
    assert!(env.m.list(Some(NS))[0].shim_dead);
    assert!(
        rtest::poll_until(Duration::from_secs(5), || !alive(pid)),
        "container process {pid} left running"
    );
    let e = env.m.kill(NS, &id, None, 9, false).await.unwrap_err();
    assert!(matches!(e, TaskError::ShimDied { .. }), "{e}");
    loop {
        if let TaskEventKind::Exit { exit_status, .. } = next_event(&mut rx, &id).await {
            assert_eq!(exit_status, 137);
            break;
        }
    }
    assert_eq!(env.m.delete(NS, &id).await.unwrap().status, 137);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tasks_at_once() {
    let mut env = Env::new().await;
    let n: usize = std::env::var("RCD_TEST_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let ids: Vec<String> = (0..n).map(|_| env.id()).collect();
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    for id in &ids {
        let (m, id) = (env.m.clone(), id.clone());
        jobs.push(tokio::spawn(async move {
            m.create(
                NS,
                &id,
                CreateOptions {
                    spec: spec(&id, &["sleep", "1000"]),
                    ..Default::default()
                },
            )
            .await?;
            m.start(NS, &id, None).await
        }));
    }
    let mut failed = vec![];
    for j in jobs {
        if let Err(e) = j.await.unwrap() {
            failed.push(e.to_string());
        }
    }
    let took = t0.elapsed();
    eprintln!("{n} tasks created and started concurrently in {took:?}");
    assert!(failed.is_empty(), "{failed:?}");
    for id in &ids {
        assert_eq!(
            env.m.state(NS, id, None).await.unwrap().status,
            TaskStatus::Running
        );
    }
    env.finish().await;
}

/// The manager of `restart_reconnects`, in a child process the test kills with SIGKILL.
/// A no-op unless `RCD_TASK_CHILD` names the dir to work in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_manager() {
    let Some(dir) = std::env::var_os("RCD_TASK_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let m = TaskManager::new(config(&dir)).await.unwrap();
    let ids: Vec<String> = std::env::var("RCD_TASK_IDS")
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut jobs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (m, id) = (m.clone(), id.clone());
        // the last three exit (3, 4, 5) while no manager runs
        let args: Vec<String> = if i + 3 >= ids.len() {
            vec![
                "sh".into(),
                "-c".into(),
                format!("sleep 1; exit {}", i + 3 - (ids.len() - 3)),
            ]
        } else {
            vec!["sleep".into(), "1000".into()]
        };
        jobs.push(tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            m.create(
                NS,
                &id,
                CreateOptions {
                    spec: spec(&id, &args),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            m.start(NS, &id, None).await.unwrap();
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    println!("READY");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconnects() -> Result<()> {
    let mut env = Env::new().await;
    // the child serves the events socket: this manager steps aside until it is killed
    env.m.close().await;
    let ids: Vec<String> = (0..23).map(|_| env.id()).collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--exact",
        "child_manager",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("RCD_TASK_CHILD", env.dir.path())
    .env("RCD_TASK_IDS", ids.join(","))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = rtest::spawn_tied(cmd)?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.trim_end().ends_with("READY") => break,
            Some(Ok(_)) => {}
            _ => bail!(
                "the child manager ended before its tasks ran: {:?}",
                child.wait()
            ),
        }
    }
    eprintln!("child manager started 23 tasks in {:?}", t0.elapsed());
    child.kill()?; // SIGKILL: no destructor, no cleanup
    child.wait()?;
    // the last three exit while no manager runs
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let m = TaskManager::new(config(env.dir.path()))
        .await
        .context("second manager")?;
    let t0 = Instant::now();
    let mut found = m.reconnect_all().await?;
    eprintln!("reconnect_all of 23 tasks took {:?}", t0.elapsed());
    env.m = m;
    found.sort_by_key(|r| match r {
        Reconnected::Live { id, .. }
        | Reconnected::ShimDied { id, .. }
        | Reconnected::Removed { id, .. } => ids.iter().position(|i| i == id),
    });
    assert_eq!(found.len(), 23, "{found:?}");
    for (i, r) in found.iter().enumerate() {
        match r {
            Reconnected::Live {
                id, status, exit, ..
            } => {
                assert_eq!(id, &ids[i]);
                if i < 20 {
                    assert_eq!((status, exit), (&TaskStatus::Running, &None), "{id}");
                } else {
                    assert_eq!(status, &TaskStatus::Stopped, "{id}");
                    assert_eq!(exit.unwrap().status, (i - 20 + 3) as u32, "{id}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // the reconnected tasks are fully usable: kill one and wait for it
    env.m.kill(NS, &ids[0], None, 9, false).await?;
    assert_eq!(wait(&env.m, &ids[0]).await.status, 137);
    assert_eq!(wait(&env.m, &ids[21]).await.status, 4);

    // a shim killed while no manager runs: cleaned up at the next reconnect
    let victim = &ids[1];
    let shim = env
        .m
        .list(Some(NS))
        .iter()
        .find(|t| &t.id == victim)
        .unwrap()
        .shim_pid
        .unwrap();
    env.m.close().await;
    let m = std::mem::replace(&mut env.m, TaskManager::new(config(env.dir.path())).await?);
    drop(m);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    assert!(rtest::poll_until(Duration::from_secs(5), || !alive(shim)));
    let again = env.m.reconnect_all().await?;
    let died: Vec<_> = again
        .iter()
        .filter(|r| matches!(r, Reconnected::ShimDied { .. }))
        .collect();
    assert_eq!(died.len(), 1, "{again:?}");
    assert!(
        matches!(died[0], Reconnected::ShimDied { id, exit, .. } if id == victim && exit.status == 137)
    );
    assert_eq!(again.len(), 23);
    env.finish().await;
    Ok(())
}

/// A manager with one task that ran `true` and exited 0: the env, its id and its bundle.
async fn exited_task() -> Result<(Env, String, PathBuf)> {
    let mut env = Env::new().await;
    let (id, _) = env.create(&["true"], IoConfig::default()).await;
    env.m.start(NS, &id, None).await?;
    assert_eq!(wait(&env.m, &id).await.status, 0);
    let bundle = env.state().join("tasks").join(NS).join(&id);
    Ok((env, id, bundle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_closed_right_after_a_delete_sees_the_shim_out() -> Result<()> {
    let (mut env, id, bundle) = exited_task().await?;
    let shim = env
        .m
        .list(Some(NS))
        .into_iter()
        .find(|t| t.id == id)
        .and_then(|t| t.shim_pid)
        .expect("rshim's pid");
    // the shim's Shutdown and end come after the delete's reply; a close at once waits
    env.m.delete(NS, &id).await?;
    env.m.close().await;
    assert!(!alive(shim), "shim {shim} still running after close");
    assert!(!bundle.exists(), "bundle {} left", bundle.display());
    env.ids.clear();
    assert!(rcd::trash::flush(Duration::from_secs(20)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_cut_short_is_finished_by_the_next_manager() -> Result<()> {
    let (mut env, id, bundle) = exited_task().await?;
    // the mark a delete leaves in the bundle before it asks the shim (the bundle stays
    // until the shim has ended, after the reply); then the daemon ends
    std::fs::write(bundle.join("deleting"), b"")?;
    env.m.close().await;
    let m = std::mem::replace(&mut env.m, TaskManager::new(config(env.dir.path())).await?);
    drop(m);
    let found = env.m.reconnect_all().await?;
    assert!(
        matches!(&found[..], [Reconnected::Removed { id: i, .. }] if *i == id),
        "{found:?}"
    );
    assert!(env.m.list(None).is_empty());
    assert!(rtest::poll_until(Duration::from_secs(10), || !bundle.exists()));
    env.finish().await;
    Ok(())
}
