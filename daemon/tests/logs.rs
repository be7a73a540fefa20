//! json-file logs (`ContainerOptions.log`, `Containers.Logs`) through the real `rcd` and its
//! gRPC API (build first: `cargo build -p rcd -p rcd-cli -p rshim`).

mod common;
mod life;

use life::{env, sh, texts, wait_for};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::time::{Duration, Instant};

fn logged(args: Vec<String>) -> pb::ContainerOptions {
    pb::ContainerOptions {
        args,
        log: true,
        ..Default::default()
    }
}

fn follow(id: &str) -> pb::LogsRequest {
    pb::LogsRequest {
        id: id.into(),
        follow: true,
        tail_all: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_logs_keep_streams_order_tail_since() {
    let e = env().await;
    let c = e
        .create(
            "l1",
            logged(sh(
                "echo out1; sleep 0.05; echo err1 >&2; sleep 0.05; echo out2; printf last",
            )),
        )
        .await;
    assert_eq!(
        c.labels.get(labels::LOG).map(String::as_str),
        Some("json-file")
    );
    e.start("l1").await;
    // follow ends once the task has exited and its logger has written everything
    let lines = tokio::time::timeout(Duration::from_secs(20), e.logs(follow("l1")))
        .await
        .expect("follow ended")
        .unwrap();
    assert_eq!(texts(&lines), ["out1\n", "err1\n", "out2\n", "last"]);
    let streams: Vec<&str> = lines.iter().map(|l| l.stream.as_str()).collect();
    assert_eq!(streams, ["stdout", "stderr", "stdout", "stdout"]);
    assert!(
        lines.windows(2).all(|w| w[0].time <= w[1].time),
        "{lines:?}"
    );
    assert_eq!(e.wait("l1").await, 0);

    // the file is docker's json-file format
    let path = e.rcd.root.join("logs/default/l1/json.log");
    let raw = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    assert_eq!(first["log"], "out1\n");
    assert_eq!(first["stream"], "stdout");
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");

    let tail = e
        .logs(pb::LogsRequest {
            id: "l1".into(),
            tail: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(texts(&tail), ["out2\n", "last"]);
    for (tail, tail_all, n) in [(0, false, 0), (0, true, 4), (-1, false, 4), (9, false, 4)] {
        let got = e
            .logs(pb::LogsRequest {
                id: "l1".into(),
                tail,
                tail_all,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(got.len(), n, "tail {tail} tail_all {tail_all}");
    }
    let since = e
        .logs(pb::LogsRequest {
            id: "l1".into(),
            since: lines[1].time.clone(),
            tail_all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(texts(&since), ["err1\n", "out2\n", "last"]);
    let until = e
        .logs(pb::LogsRequest {
            id: "l1".into(),
            until: lines[0].time.clone(),
            tail_all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(texts(&until), ["out1\n"]);
    // Unix seconds far in the future: nothing
    let none = e
        .logs(pb::LogsRequest {
            id: "l1".into(),
            since: "4000000000.5".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    // errors
    let err = e.logs(follow("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("unknown container \"nope\""),
        "{err:?}"
    );
    let err = e
        .logs(pb::LogsRequest {
            id: "l1".into(),
            since: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("invalid since \"yesterday\""),
        "{err:?}"
    );
    e.create("nolog", pb::ContainerOptions::default()).await;
    let err = e.logs(follow("nolog")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("keeps no log"), "{err:?}");

    // the log goes with the container
    e.remove("l1").await;
    e.remove("nolog").await;
    assert!(!path.exists());
    assert!(!path.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines_and_ends_when_the_task_exits() {
    let e = env().await;
    e.create(
        "f1",
        logged(sh("for i in 1 2 3; do echo line$i; sleep 0.4; done")),
    )
    .await;
    e.start("f1").await;
    let started = Instant::now();
    let mut s = e
        .containers()
        .logs(follow("f1"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(texts(&first.lines)[0], "line1\n");
    // it came while the task still ran
    let st = e.task("f1").await.unwrap();
    assert_eq!(st.status, pb::TaskStatus::Running as i32, "{st:?}");
    let mut all = first.lines;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("follow ended")
        .unwrap()
    {
        all.extend(m.lines);
    }
    assert_eq!(texts(&all), ["line1\n", "line2\n", "line3\n"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // a stopped container's follow returns what there is and ends
    let again = tokio::time::timeout(Duration::from_secs(5), e.logs(follow("f1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.len(), 3);
    e.remove("f1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_output_is_one_stdout_stream() {
    let e = env().await;
    e.create(
        "t1",
        pb::ContainerOptions {
            tty: true,
            ..logged(sh("echo hi; echo oops >&2"))
        },
    )
    .await;
    e.start("t1").await;
    let lines = tokio::time::timeout(Duration::from_secs(20), e.logs(follow("t1")))
        .await
        .expect("follow ended")
        .unwrap();
    assert_eq!(texts(&lines), ["hi\r\n", "oops\r\n"]);
    assert!(lines.iter().all(|l| l.stream == "stdout"), "{lines:?}");
    e.remove("t1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_survive_rcd_kill9_and_grow_while_it_is_down() {
    let mut e = env().await;
    e.create(
        "k1",
        logged(sh(
            "i=0; while true; do i=$((i+1)); echo n$i; sleep 0.05; done",
        )),
    )
    .await;
    e.start("k1").await;
    let path = e.rcd.root.join("logs/default/k1/json.log");
    let count = || {
        std::fs::read_to_string(&path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("a few lines", Duration::from_secs(10), || async {
        count() >= 3
    })
    .await;
    e.rcd.kill9();
    let down = count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        count() > down + 3,
        "no lines while rcd was down: {down} → {}",
        count()
    );
    e.rcd.spawn();
    e.reconnect().await;
    let lines = e.all_logs("k1").await;
    assert!(lines.len() > down + 3, "{} lines", lines.len());
    // every line, none lost or repeated
    for (i, l) in texts(&lines).iter().enumerate() {
        assert_eq!(l, &format!("n{}\n", i + 1));
    }
    e.stop("k1").await;
    e.remove("k1").await;
}

/// Tasks.Create names the logger's attach socket of a logged task: up once Create returns,
/// so a client connected before Start gets all the output, on the right streams, and then
/// the end of the stream once the task has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_socket_of_a_logged_task_streams_all_its_output() {
    use rcd_proto::attach::{read_frame, socket_path, STDERR, STDOUT};
    let e = env().await;
    e.create(
        "a1",
        logged(sh("echo o1; echo e1 >&2; seq 1 5000; echo e2 >&2")),
    )
    .await;
    let r = e
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: "a1".into(),
            stdio: None,
        })
        .await
        .unwrap()
        .into_inner();
    let sock = std::path::PathBuf::from(&r.attach_socket);
    assert_eq!(
        sock,
        e.rcd
            .state
            .join("logs/default/a1")
            .join(rcd_proto::attach::SOCKET)
    );
    // no retry: the socket is there once Create has returned
    let (path, _dirfd) = socket_path(sock.parent().unwrap(), rcd_proto::attach::SOCKET).unwrap();
    let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // the logger's acknowledgement comes first, before any output
        let first = read_frame(&mut conn).unwrap().map(|(k, _)| k);
        assert_eq!(first, Some(rcd_proto::attach::ATTACHED));
        while let Some((kind, data)) = read_frame(&mut conn).unwrap() {
            match kind {
                STDOUT => out.extend(data),
                STDERR => err.extend(data),
                k => panic!("unexpected frame kind {k}"),
            }
        }
        (out, err)
    });
    e.tasks()
        .start(pb::StartTaskRequest {
            container_id: "a1".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(e.wait("a1").await, 0);
    let (out, err) = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the stream ended")
        .unwrap();
    let want: String = std::iter::once("o1\n".to_owned())
        .chain((1..=5000).map(|i| format!("{i}\n")))
        .collect();
    assert!(
        String::from_utf8_lossy(&out) == want,
        "{} of {} bytes",
        out.len(),
        want.len()
    );
    assert_eq!(String::from_utf8_lossy(&err), "e1\ne2\n");
    e.remove("a1").await;

    // a task whose output rcd does not log has no socket
    e.create(
        "n1",
        pb::ContainerOptions {
            args: sh("true"),
            ..Default::default()
        },
    )
    .await;
    let r = e
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: "n1".into(),
            stdio: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.attach_socket, "");
    e.remove("n1").await;
}
