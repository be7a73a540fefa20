//! Restart policies kept by rcd (`ContainerOptions.restart`), `pids_limit` and
//! `stop_signal`, through the real `rcd` and its gRPC API (build first:
//! `cargo build -p rcd -p rcd-cli -p rshim`).

mod common;
mod life;

use life::{alive, env, sh, texts, wait_for};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::time::Duration;

fn policy(restart: &str, args: Vec<String>) -> pb::ContainerOptions {
    pb::ContainerOptions {
        args,
        restart: restart.into(),
        log: true,
        ..Default::default()
    }
}

async fn running_pid(e: &life::Env, id: &str) -> Option<u32> {
    e.task(id)
        .await
        .filter(|t| t.status == pb::TaskStatus::Running as i32)
        .map(|t| t.pid)
}

/// Waits for a running task other than `old`; its pid.
async fn new_pid(e: &life::Env, id: &str, old: u32, timeout: Duration) -> u32 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(p) = running_pid(e, id).await.filter(|p| *p != old) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new task of {id}\n{}",
            e.rcd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_a_killed_process_with_a_new_pid() {
    let e = env().await;
    let c = e
        .create("a1", policy("always", sh("echo up; exec sleep 1000")))
        .await;
    assert_eq!(
        c.labels.get(labels::RESTART).map(String::as_str),
        Some("always")
    );
    let pid1 = e.start("a1").await;
    // each run is killed only once it has logged (else it may die before its echo)
    e.wait_logs("a1", &["up\n"]).await;
    assert_eq!(
        e.labels("a1")
            .await
            .get(labels::RESTART_COUNT)
            .map(String::as_str),
        Some("0")
    );
    // events of the restart go on the stream as usual
    let mut events = pb::events_client::EventsClient::new(e.ch.clone())
        .subscribe(pb::SubscribeEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // the subscription is live once it sees an event of ours
    e.containers()
        .update(pb::UpdateContainerRequest {
            id: "a1".into(),
            labels: [("probe".to_owned(), "1".to_owned())].into(),
        })
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("the probe's event")
            .unwrap()
            .unwrap();
        if ev.topic == "/containers/update" {
            break;
        }
    }
    let killed = std::time::Instant::now();
    kill(pid1);
    let pid2 = new_pid(&e, "a1", pid1, Duration::from_secs(10)).await;
    // (measured: from the kill to the new task running, 100 ms of backoff included)
    eprintln!("restart took {:?}", killed.elapsed());
    assert!(alive(pid2));
    wait_for("count 1", Duration::from_secs(5), || async {
        e.restart_count("a1").await == 1
    })
    .await;
    let mut topics = Vec::new();
    // (the shim's events come through a publish process each: not in order with rcd's)
    while !["/tasks/exit", "/tasks/create", "/tasks/start"]
        .iter()
        .all(|w| topics.iter().any(|t| t == w))
    {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("restart events")
            .unwrap()
            .unwrap();
        topics.push(ev.topic);
    }
    // again: count 2, and the log was appended across restarts
    e.wait_logs("a1", &["up\n", "up\n"]).await;
    kill(pid2);
    wait_for("count 2", Duration::from_secs(10), || async {
        e.restart_count("a1").await == 2 && running_pid(&e, "a1").await.is_some()
    })
    .await;
    e.wait_logs("a1", &["up\n", "up\n", "up\n"]).await;
    e.stop("a1").await;
    e.remove("a1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_stops_after_its_count() {
    let e = env().await;
    e.create("f2", policy("on-failure:2", sh("echo run; exit 3")))
        .await;
    e.start("f2").await;
    // follow covers the restarts and ends after the last run
    let lines = tokio::time::timeout(
        Duration::from_secs(20),
        e.logs(pb::LogsRequest {
            id: "f2".into(),
            follow: true,
            tail_all: true,
            ..Default::default()
        }),
    )
    .await
    .expect("follow ended")
    .unwrap();
    assert_eq!(texts(&lines), ["run\n", "run\n", "run\n"]);
    assert_eq!(e.restart_count("f2").await, 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(e.restart_count("f2").await, 2);
    let t = e.task("f2").await.unwrap();
    assert_eq!(t.status, pb::TaskStatus::Stopped as i32, "{t:?}");
    assert_eq!(t.exit_status, 3);

    // a clean exit is not a failure
    e.create("f0", policy("on-failure", sh("exit 0"))).await;
    e.start("f0").await;
    assert_eq!(e.wait("f0").await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(e.restart_count("f0").await, 0);
    e.remove("f2").await;
    e.remove("f0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unless_stopped_stays_down_after_a_stop_until_started() {
    let e = env().await;
    e.create("u1", policy("unless-stopped", sh("exec sleep 1000")))
        .await;
    e.start("u1").await;
    e.stop("u1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = e.task("u1").await.unwrap();
    assert_eq!(t.status, pb::TaskStatus::Stopped as i32, "{t:?}");
    assert_eq!(e.restart_count("u1").await, 0);
    // a client's start clears the stop
    e.tasks()
        .delete(pb::DeleteTaskRequest {
            container_id: "u1".into(),
            force: false,
        })
        .await
        .unwrap();
    let pid = e.start("u1").await;
    assert!(!e
        .labels("u1")
        .await
        .contains_key(labels::EXPLICITLY_STOPPED));
    kill(pid);
    new_pid(&e, "u1", pid, Duration::from_secs(10)).await;
    e.stop("u1").await;
    e.remove("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_comes_back_after_rcd_kill9_when_its_process_died_meanwhile() {
    let mut e = env().await;
    e.create("r1", policy("always", sh("echo up; exec sleep 1000")))
        .await;
    let pid = e.start("r1").await;
    e.wait_logs("r1", &["up\n"]).await;
    e.rcd.kill9();
    kill(pid);
    wait_for("the process gone", Duration::from_secs(5), || async {
        !alive(pid)
    })
    .await;
    e.rcd.spawn();
    e.reconnect().await;
    let pid2 = new_pid(&e, "r1", pid, Duration::from_secs(15)).await;
    assert!(alive(pid2));
    // the count is bumped just after the new task starts
    wait_for("the restart count", Duration::from_secs(10), || async {
        e.restart_count("r1").await >= 1
    })
    .await;
    assert_eq!(e.restart_count("r1").await, 1);
    e.wait_logs("r1", &["up\n", "up\n"]).await;
    e.stop("r1").await;
    e.remove("r1").await;
}

/// dockerd's rule: at the daemon's start an explicitly stopped `always` container runs
/// again, an explicitly stopped `unless-stopped` one stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_always_comes_back_when_rcd_starts_unless_stopped_does_not() {
    let mut e = env().await;
    e.create("sa", policy("always", sh("echo up; exec sleep 1000")))
        .await;
    e.create("su", policy("unless-stopped", sh("exec sleep 1000")))
        .await;
    let pid = e.start("sa").await;
    e.start("su").await;
    e.wait_logs("sa", &["up\n"]).await;
    e.stop("sa").await;
    e.stop("su").await;
    assert!(!alive(pid));
    e.rcd.kill9();
    e.rcd.spawn();
    e.reconnect().await;
    let pid2 = new_pid(&e, "sa", pid, Duration::from_secs(15)).await;
    assert!(alive(pid2));
    assert!(!e
        .labels("sa")
        .await
        .contains_key(labels::EXPLICITLY_STOPPED));
    e.wait_logs("sa", &["up\n", "up\n"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = e.task("su").await.unwrap();
    assert_eq!(t.status, pb::TaskStatus::Stopped as i32, "{t:?}");
    assert_eq!(
        e.labels("su")
            .await
            .get(labels::EXPLICITLY_STOPPED)
            .map(String::as_str),
        Some("true")
    );
    e.stop("sa").await;
    e.remove("sa").await;
    e.remove("su").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_during_backoff_leaks_nothing() {
    let e = env().await;
    e.create("b1", policy("always", sh("exit 1"))).await;
    e.start("b1").await;
    // delays 100, 200, 400 ms: by count 3 the next one is 800 ms
    wait_for("three restarts", Duration::from_secs(15), || async {
        e.restart_count("b1").await >= 3
    })
    .await;
    e.remove("b1").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let tasks = e
        .tasks()
        .list(pb::ListTasksRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    let err = e
        .containers()
        .get(pb::GetContainerRequest { id: "b1".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(!e.rcd.state.join("tasks/default/b1").exists());
    assert!(!e.rcd.root.join("logs/default/b1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stop_signal_and_bad_options() {
    let e = env().await;
    let c = e
        .create(
            "p1",
            pb::ContainerOptions {
                pids_limit: 5,
                stop_signal: "quit".into(),
                ..policy(
                    "",
                    sh("i=0; while [ $i -lt 8 ]; do sleep 30 & i=$((i+1)); done; wait"),
                )
            },
        )
        .await;
    assert_eq!(
        c.labels.get(labels::STOP_SIGNAL).map(String::as_str),
        Some("SIGQUIT")
    );
    assert!(!c.labels.contains_key(labels::RESTART));
    let spec: serde_json::Value = serde_json::from_slice(&c.spec).unwrap();
    assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 5);
    e.start("p1").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = texts(&e.all_logs("p1").await).concat();
        if l.contains("can't fork") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fork failure logged: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the shell gave up at its first failed fork; what it forked stays within the limit
    if let Ok(r) = e
        .tasks()
        .list_pids(pb::ListPidsRequest {
            container_id: "p1".into(),
        })
        .await
    {
        let pids = r.into_inner().pids;
        assert!(pids.len() <= 5, "{pids:?}");
    }
    e.stop("p1").await;
    e.remove("p1").await;

    for (opts, want) in [
        (
            policy("sometimes", vec![]),
            "invalid restart policy \"sometimes\"",
        ),
        (policy("always:3", vec![]), "only on-failure takes a count"),
        (policy("on-failure:x", vec![]), "invalid restart policy"),
        (
            pb::ContainerOptions {
                stop_signal: "SIGNOPE".into(),
                ..Default::default()
            },
            "invalid stop signal \"SIGNOPE\"",
        ),
        (
            pb::ContainerOptions {
                pids_limit: -5,
                ..Default::default()
            },
            "invalid pids limit -5",
        ),
    ] {
        let err = e
            .containers()
            .create(pb::CreateContainerRequest {
                id: "bad".into(),
                image: e.image.clone(),
                options: Some(opts),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{want}: {err:?}");
    }
    // nothing was left by the refusals
    let list = e
        .containers()
        .list(pb::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(list.is_empty(), "{list:?}");
}
