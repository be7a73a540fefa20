//! rctl's streaming clients against rcd's own streaming server (`rcd::streaming`), which the
//! containerd tests cannot reach: WebSocket v5 (stdin close), SPDY flow control with a
//! megabyte each way, and port forwarding over SPDY and tunnelled in WebSocket. The server is
//! real; its runtime runs host processes (non-tty) and connects forwarded ports on loopback.
//! rctl gets the URLs through its hidden `--url` (no CRI call; rcd's CRI is tested elsewhere).

use rcd::streaming::{
    AttachRequest, CancellationToken, Config, ExecRequest, PortForwardRequest, PortStream, Runtime,
    RuntimeError, StreamingServer, Streams,
};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const RCTL: &str = env!("CARGO_BIN_EXE_rctl");

struct HostRuntime;

#[async_trait::async_trait]
impl Runtime for HostRuntime {
    async fn exec(&self, req: ExecRequest, mut s: Streams) -> Result<i32, RuntimeError> {
        let mut child = tokio::process::Command::new(&req.cmd[0])
            .args(&req.cmd[1..])
            .stdin(if s.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError(format!("{}: {e}", req.cmd[0])))?;
        let stdin = match (s.stdin.take(), child.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            })),
            _ => None,
        };
        let mut po = child.stdout.take().unwrap();
        let mut pe = child.stderr.take().unwrap();
        let mut so = s.stdout.take();
        let mut se = s.stderr.take();
        let out = async {
            if let Some(o) = so.as_mut() {
                let _ = tokio::io::copy(&mut po, o).await;
                let _ = o.shutdown().await;
            }
        };
        let err = async {
            if let Some(e) = se.as_mut() {
                let _ = tokio::io::copy(&mut pe, e).await;
                let _ = e.shutdown().await;
            }
        };
        tokio::join!(out, err);
        let status = child
            .wait()
            .await
            .map_err(|e| RuntimeError(e.to_string()))?;
        if let Some(t) = stdin {
            t.abort();
        }
        Ok(status.code().unwrap_or(128))
    }

    async fn attach(&self, _req: AttachRequest, _s: Streams) -> Result<(), RuntimeError> {
        Err(RuntimeError("no attach here".into()))
    }

    async fn port_forward(
        &self,
        _pod: String,
        port: u16,
        mut stream: PortStream,
        cancel: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| RuntimeError(format!("connect to 127.0.0.1:{port}: {e}")))?;
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut stream, &mut tcp) => {
                r.map(|_| ()).map_err(|e| RuntimeError(format!("copy: {e}")))
            }
            _ = cancel.cancelled() => Ok(()),
        }
    }
}

fn exec_req(cmd: &[&str], stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr: true,
    }
}

/// Runs rctl in a blocking thread (the server runs on this test's runtime).
async fn rctl(args: Vec<String>, stdin: Vec<u8>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(RCTL)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = si.write_all(&stdin);
        });
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rctl_exec_against_rcd_streaming() {
    let srv = StreamingServer::start(Config::default(), Arc::new(HostRuntime))
        .await
        .unwrap();
    for transport in ["spdy", "websocket"] {
        let url = srv
            .exec_url(exec_req(
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                false,
            ))
            .unwrap();
        let o = rctl(
            vec![
                "exec".into(),
                "--transport".into(),
                transport.into(),
                "--url".into(),
                url,
                "c1".into(),
                "x".into(),
            ],
            vec![],
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "out\n",
            "{transport}: {o:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            "err\n",
            "{transport}: {o:?}"
        );
        assert_eq!(o.status.code(), Some(3), "{transport}");

        // A megabyte in (stdin EOF: SPDY FIN, WebSocket v5 close) and a megabyte out.
        let url = srv
            .exec_url(exec_req(
                &["sh", "-c", "wc -c; head -c 1048576 /dev/zero"],
                true,
            ))
            .unwrap();
        let o = rctl(
            vec![
                "exec".into(),
                "-i".into(),
                "--transport".into(),
                transport.into(),
                "--url".into(),
                url,
                "c1".into(),
                "x".into(),
            ],
            vec![7u8; 1 << 20],
        )
        .await;
        assert!(
            o.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = o.stdout;
        let nl = out.iter().position(|b| *b == b'\n').expect("wc output");
        assert_eq!(
            String::from_utf8_lossy(&out[..nl]).trim(),
            "1048576",
            "{transport}"
        );
        assert_eq!(out.len() - nl - 1, 1 << 20, "{transport}");
    }
    // A command that cannot start: the runtime's message, exit 1.
    let url = srv.exec_url(exec_req(&["/no/such/cmd"], false)).unwrap();
    let o = rctl(
        vec!["exec".into(), "--url".into(), url, "c1".into(), "x".into()],
        vec![],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/no/such/cmd"),
        "{o:?}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rctl_port_forward_against_rcd_streaming() {
    let srv = StreamingServer::start(Config::default(), Arc::new(HostRuntime))
        .await
        .unwrap();
    // An echo server standing in for the pod's port.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    for transport in ["spdy", "websocket"] {
        let url = srv
            .port_forward_url(PortForwardRequest {
                pod_sandbox_id: "pod1".into(),
                ports: vec![port as i32],
            })
            .unwrap();
        let args = vec![
            "port-forward".to_string(),
            "--transport".into(),
            transport.into(),
            "--url".into(),
            url,
            "pod1".into(),
            format!(":{port}"),
        ];
        let transport = transport.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(RCTL)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut so = child.stdout.take().unwrap();
            let mut line = vec![];
            let mut b = [0u8; 1];
            while line.last() != Some(&b'\n') && so.read(&mut b).unwrap() == 1 {
                line.push(b[0]);
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            std::thread::spawn(move || std::io::copy(&mut so, &mut std::io::sink()));
            let local: u16 = line
                .trim()
                .strip_prefix("Forwarding from 127.0.0.1:")
                .and_then(|r| r.split_once(' '))
                .and_then(|(p, _)| p.parse().ok())
                .unwrap_or_else(|| panic!("{transport}: {line:?}"));
            // Several connections through one session, a megabyte each.
            for i in 0..3u8 {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data = vec![i; 1 << 20];
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&sent).unwrap();
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let mut back = vec![];
                s.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back.len(), data.len(), "{transport} connection {i}");
                assert!(back == data, "{transport} connection {i}");
            }
            let _ = child.kill();
            let _ = child.wait();
        })
        .await
        .unwrap();
    }
    srv.shutdown().await;
}
