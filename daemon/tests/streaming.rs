//! The CRI streaming server against real peers: a Go SPDY client built on moby/spdystream (the
//! SPDY stack of kubelet, kubectl and crictl; source in tests/go/spdyclient), tokio-tungstenite's
//! WebSocket client, and raw HTTP. The runtime behind the server runs real host processes
//! (`sh`), with a real pseudo-terminal for tty sessions, and forwards ports to a real TCP echo
//! server on loopback.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rcd::streaming::{
    AttachRequest, CancellationToken, Config, ExecRequest, PortForwardRequest, PortStream, Runtime,
    RuntimeError, StreamingServer, Streams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// The test runtime: host processes.

#[derive(Default)]
struct HostRuntime {
    /// Processes started without a tty.
    started: AtomicUsize,
    /// Processes killed because the client went away.
    killed: AtomicUsize,
    /// The "container" attach connects to: a line echoer started on first use.
    attached: Mutex<Option<AttachTarget>>,
}

struct AttachTarget {
    stdin: tokio::process::ChildStdin,
    lines: broadcast::Sender<String>,
    _child: tokio::process::Child,
}

fn signal_code(s: std::process::ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

fn set_winsize(fd: &OwnedFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

impl HostRuntime {
    async fn exec_pipes(&self, argv: Vec<String>, s: Streams) -> Result<i32, RuntimeError> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .kill_on_drop(true)
            .stdin(if s.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if s.stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if s.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError(format!("cannot start {argv:?}: {e}")))?;
        self.started.fetch_add(1, Ordering::SeqCst);
        let stdin_task = match (s.stdin, child.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            })),
            _ => None,
        };
        let mut outputs = Vec::new();
        if let (Some(mut to), Some(mut from)) = (s.stdout, child.stdout.take()) {
            outputs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }));
        }
        if let (Some(mut to), Some(mut from)) = (s.stderr, child.stderr.take()) {
            outputs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }));
        }
        let status = tokio::select! {
            st = child.wait() => st.map_err(|e| RuntimeError(format!("wait: {e}")))?,
            _ = s.cancel.cancelled() => {
                let _ = child.kill().await;
                self.killed.fetch_add(1, Ordering::SeqCst);
                return Err(RuntimeError("the client went away".into()));
            }
        };
        if let Some(t) = stdin_task {
            t.abort();
        }
        for o in outputs {
            let _ = o.await;
        }
        Ok(signal_code(status))
    }

    async fn exec_tty(&self, argv: Vec<String>, mut s: Streams) -> Result<i32, RuntimeError> {
        // real runtimes resize right after starting; waiting for the client's first size keeps
        // the test free of that race
        let mut resize = s.resize.take();
        let first = match resize.as_mut() {
            Some(r) => tokio::time::timeout(Duration::from_secs(2), r.recv())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let pty =
            nix::pty::openpty(None, None).map_err(|e| RuntimeError(format!("openpty: {e}")))?;
        if let Some(size) = first {
            set_winsize(&pty.master, size.width, size.height);
        }
        let mut cmd = std::process::Command::new(&argv[0]);
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        cmd.args(&argv[1..])
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        // SAFETY: only async-signal-safe calls between fork and exec
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError(format!("cannot start {argv:?}: {e}")))?;
        drop(pty.slave);
        let master = std::fs::File::from(pty.master.try_clone().expect("dup pty master"));
        let mut reader = tokio::fs::File::from_std(master.try_clone().expect("dup"));
        let mut writer = tokio::fs::File::from_std(master);
        let resizer = resize.map(|mut r| {
            let fd = pty.master.try_clone().expect("dup");
            tokio::spawn(async move {
                while let Some(size) = r.recv().await {
                    set_winsize(&fd, size.width, size.height);
                }
            })
        });
        let stdin_task = s.stdin.map(|mut from| {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf).await {
                    if n == 0 || writer.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = writer.flush().await;
                }
            })
        });
        let output = s.stdout.map(|mut to| {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // EIO once the last slave descriptor closes: the end of the output
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to.shutdown().await;
            })
        });
        let status = tokio::select! {
            st = child.wait() => st.map_err(|e| RuntimeError(format!("wait: {e}")))?,
            _ = s.cancel.cancelled() => {
                let _ = child.kill().await;
                self.killed.fetch_add(1, Ordering::SeqCst);
                return Err(RuntimeError("the client went away".into()));
            }
        };
        if let Some(o) = output {
            let _ = tokio::time::timeout(Duration::from_secs(5), o).await;
        }
        for t in [stdin_task, resizer].into_iter().flatten() {
            t.abort();
        }
        Ok(signal_code(status))
    }
}

#[async_trait::async_trait]
impl Runtime for HostRuntime {
    async fn exec(&self, req: ExecRequest, streams: Streams) -> Result<i32, RuntimeError> {
        if req.container_id == "missing" {
            return Err(RuntimeError("container \"missing\" not found".into()));
        }
        if streams.tty {
            self.exec_tty(req.cmd, streams).await
        } else {
            self.exec_pipes(req.cmd, streams).await
        }
    }

    async fn attach(&self, _req: AttachRequest, s: Streams) -> Result<(), RuntimeError> {
        let mut guard = self.attached.lock().await;
        if guard.is_none() {
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", "while read l; do echo \"got $l from $$\"; done"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| RuntimeError(e.to_string()))?;
            let (tx, _) = broadcast::channel(64);
            let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
            let lines = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut l = String::new();
                while out.read_line(&mut l).await.unwrap_or(0) > 0 {
                    let _ = lines.send(std::mem::take(&mut l));
                }
            });
            *guard = Some(AttachTarget {
                stdin: child.stdin.take().unwrap(),
                lines: tx,
                _child: child,
            });
        }
        let target = guard.as_mut().unwrap();
        let mut lines = target.lines.subscribe();
        let mut stdout = s.stdout;
        let forward = tokio::spawn(async move {
            while let Ok(l) = lines.recv().await {
                if let Some(o) = stdout.as_mut() {
                    if o.write_all(l.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        });
        // attached until the client closes stdin (detach) or leaves; the process lives on
        if let Some(mut stdin) = s.stdin {
            let mut buf = [0u8; 4096];
            loop {
                tokio::select! {
                    n = stdin.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => { let _ = target.stdin.write_all(&buf[..n]).await; }
                    },
                    _ = s.cancel.cancelled() => break,
                }
            }
        }
        // let the echo of the last line through before detaching
        tokio::time::sleep(Duration::from_millis(200)).await;
        forward.abort();
        Ok(())
    }

    async fn port_forward(
        &self,
        _pod: String,
        port: u16,
        mut stream: PortStream,
        cancel: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
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

// ---------------------------------------------------------------------------------------------
// Fixtures.

async fn server_with(config: Config) -> (StreamingServer, Arc<HostRuntime>) {
    let rt = Arc::new(HostRuntime::default());
    let srv = StreamingServer::start(config, rt.clone())
        .await
        .expect("streaming server starts");
    (srv, rt)
}

async fn server() -> (StreamingServer, Arc<HostRuntime>) {
    server_with(Config {
        linger: Duration::from_secs(2),
        ..Config::default()
    })
    .await
}

/// A TCP echo server on loopback: sends back what it reads, closes after the client does.
async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, h)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn exec(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdout: true,
        ..Default::default()
    }
}

/// The Go SPDY client, built once per test process from tests/go/spdyclient with Debian's Go
/// and its moby/spdystream package (GOPATH mode, no network).
fn spdyclient() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spdyclient");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/spdyclient");
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOCACHE", &cache)
            .status()
            .expect("go (golang-go, installed by scripts/deps.sh) runs");
        assert!(status.success(), "building the Go spdy client failed");
        out
    })
}

struct GoRun {
    code: i32,
    stdout: String,
    stderr: String,
    status: String,
}

async fn go(url: &str, args: &[&str]) -> GoRun {
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(spdyclient())
            .arg("-url")
            .arg(url)
            .arg("-status")
            .arg(&status_file)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Go client finishes within 60 s")
    .expect("the Go client runs");
    GoRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: std::fs::read_to_string(&status_file).unwrap_or_default(),
    }
}

/// One raw HTTP/1.1 exchange; returns the status code and the body.
async fn raw_http(url: &str, method: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = TcpStream::connect(host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // read the head and the announced body
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let code = text[9..12].parse().unwrap();
                return (code, text[end + 4..end + 4 + len].to_string());
            }
        }
    }
    panic!(
        "connection closed before a full answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(url: &str, protocols: &str) -> Result<(Ws, Option<String>), String> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let host = req.uri().authority().unwrap().to_string();
    let tcp = TcpStream::connect(host).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let p = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, p))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads channel messages until the server closes; returns them per channel, concatenated.
async fn ws_collect(ws: &mut Ws) -> [Vec<u8>; 5] {
    let mut got: [Vec<u8>; 5] = Default::default();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("websocket traffic within 30 s")
    {
        match msg.unwrap() {
            Message::Binary(b) if !b.is_empty() && (b[0] as usize) < 5 => {
                got[b[0] as usize].extend_from_slice(&b[1..])
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// SPDY (the Go client).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_splits_stdin_stdout_stderr_and_reports_success() {
    let (srv, _) = server().await;
    let url = srv
        .exec_url(ExecRequest {
            stdin: true,
            stderr: true,
            ..exec(&["sh", "-c", "read a; echo \"out:$a\"; echo \"err:$a\" >&2"])
        })
        .unwrap();
    assert!(
        url.starts_with(&format!("http://{}/exec/", srv.local_addr())),
        "{url}"
    );
    let r = go(&url, &["-stdin", "-stderr", "-do", r"ping;in:hi\n;eof"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("ping answered"), "{}", r.stderr);
    assert!(
        r.stderr.contains("negotiated v4.channel.k8s.io"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "out:hi\n");
    assert!(r.stderr.contains("err:hi\n"), "{}", r.stderr);
    assert!(!r.stdout.contains("err:"));
    assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_reports_a_non_zero_exit_code_in_the_status() {
    let (srv, _) = server().await;
    let url = srv
        .exec_url(exec(&["sh", "-c", "echo bye; exit 7"]))
        .unwrap();
    let r = go(&url, &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "bye\n");
    let status: serde_json::Value = serde_json::from_str(&r.status).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");
    assert_eq!(
        status["message"],
        "command terminated with non-zero exit code: error executing command [sh -c echo bye; exit 7], exit code 7"
    );

    // a runtime error is an InternalError status
    let url = srv
        .exec_url(ExecRequest {
            container_id: "missing".into(),
            ..exec(&["true"])
        })
        .unwrap();
    let r = go(&url, &[]).await;
    let status: serde_json::Value = serde_json::from_str(&r.status).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(
        status["message"],
        "Internal error occurred: container \"missing\" not found"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_older_protocols_carry_the_bare_message() {
    let (srv, _) = server().await;
    let url = srv.exec_url(exec(&["sh", "-c", "exit 3"])).unwrap();
    let r = go(&url, &["-proto", "v3.channel.k8s.io"]).await;
    assert!(
        r.stderr.contains("negotiated v3.channel.k8s.io"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.status,
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    );
    let url = srv.exec_url(exec(&["echo", "two"])).unwrap();
    // the client's preference wins among what both speak
    let r = go(&url, &["-proto", "v2.channel.k8s.io,v4.channel.k8s.io"]).await;
    assert!(
        r.stderr.contains("negotiated v2.channel.k8s.io"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "two\n");
    assert_eq!(r.status, "", "success is silent before v4");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_moves_more_than_a_flow_control_window_both_ways() {
    let (srv, _) = server().await;
    // 1 MB in: spdystream ignores flow control, so the server must pace it without deadlock
    let url = srv
        .exec_url(ExecRequest {
            stdin: true,
            ..exec(&["wc", "-c"])
        })
        .unwrap();
    let t = Instant::now();
    let r = go(&url, &["-stdin", "-do", "big:1048576;eof"]).await;
    assert_eq!(r.stdout.trim(), "1048576", "{}", r.stderr);
    eprintln!("1 MiB stdin through spdy: {:?}", t.elapsed());
    // 1 MB out: well past the 64 KiB window a SPDY/3.1 peer starts with
    let url = srv
        .exec_url(exec(&[
            "sh",
            "-c",
            "head -c 1048576 /dev/zero | tr '\\0' x",
        ]))
        .unwrap();
    let t = Instant::now();
    let r = go(&url, &[]).await;
    assert_eq!(r.stdout.len(), 1048576, "{}", r.stderr);
    assert!(r.stdout.bytes().all(|b| b == b'x'));
    assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    eprintln!("1 MiB stdout through spdy: {:?}", t.elapsed());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_tty_exec_follows_resizes() {
    let (srv, _) = server().await;
    let url = srv
        .exec_url(ExecRequest {
            tty: true,
            stdin: true,
            ..exec(&["sh", "-c", "stty size; read x; stty size"])
        })
        .unwrap();
    let r = go(
        &url,
        &[
            "-stdin",
            "-tty",
            "-do",
            r"resize:80x24;await:24 80;resize:100x50;sleep:300;in:go\n",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("24 80\r\n"), "{:?}", r.stdout);
    assert!(r.stdout.contains("50 100\r\n"), "{:?}", r.stdout);
    assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_attach_connects_to_the_running_process_and_detaches() {
    let (srv, _) = server().await;
    let attach = AttachRequest {
        container_id: "c1".into(),
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    let url = srv.attach_url(attach.clone()).unwrap();
    assert!(url.contains("/attach/"));
    let r = go(&url, &["-stdin", "-do", r"in:one\n;await:got one;eof"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    let pid = r.stdout.trim().rsplit(' ').next().unwrap().to_string();
    // the process outlived the first attach
    let url = srv.attach_url(attach).unwrap();
    let r = go(&url, &["-stdin", "-do", r"in:two\n;await:got two;eof"]).await;
    assert!(
        r.stdout.contains(&format!("got two from {pid}")),
        "{}",
        r.stdout
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_reaches_a_tcp_server_over_many_connections() {
    let (srv, _) = server().await;
    let (port, echo) = echo_server().await;
    let url = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        })
        .unwrap();
    let r = go(
        &url,
        &[
            "-mode",
            "portforward",
            "-proto",
            "portforward.k8s.io",
            "-port",
            &port.to_string(),
            "-conns",
            "8",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}", r.stdout);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("{i}:\"hello {i}\\n\":\"\""));
    }

    // old clients without request ids pair streams by id
    let url = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        })
        .unwrap();
    let r = go(
        &url,
        &[
            "-mode",
            "portforward",
            "-proto",
            "",
            "-port",
            &port.to_string(),
            "-no-requestid",
        ],
    )
    .await;
    assert_eq!(r.stdout.trim(), "0:\"hello 0\\n\":\"\"", "{}", r.stderr);

    // a port nothing listens on: the error stream says so
    let dead = closed_port();
    let url = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        })
        .unwrap();
    let r = go(
        &url,
        &[
            "-mode",
            "portforward",
            "-proto",
            "portforward.k8s.io",
            "-port",
            &dead.to_string(),
        ],
    )
    .await;
    assert!(
        r.stdout.contains(&format!(
            "error forwarding port {dead} to pod pod1, uid : connect to 127.0.0.1:{dead}"
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("closeConnection"), "{}", r.stdout);
    echo.abort();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_exec_kills_the_process_and_the_server_keeps_serving() {
    let (srv, rt) = server().await;
    let url = srv
        .exec_url(exec(&["sh", "-c", "echo started; sleep 30"]))
        .unwrap();
    let t = Instant::now();
    let r = go(&url, &["-do", "await:started;hangup"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    while rt.killed.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the exec'd process was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = srv.exec_url(exec(&["echo", "still here"])).unwrap();
    let r = go(&url, &[]).await;
    assert_eq!(r.stdout, "still here\n");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_dropped() {
    let (srv, rt) = server_with(Config {
        idle_timeout: Some(Duration::from_millis(500)),
        linger: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let url = srv
        .exec_url(exec(&["sh", "-c", "echo started; sleep 30"]))
        .unwrap();
    let t = Instant::now();
    let r = go(&url, &["-do", "await:started"]).await;
    assert_eq!(r.stdout, "started\n");
    assert_eq!(r.status, "", "the connection was dropped, no status");
    assert!(t.elapsed() < Duration::from_secs(10));
    let url = srv
        .exec_url(ExecRequest {
            stdin: true,
            ..exec(&["sh", "-c", "echo started; sleep 30"])
        })
        .unwrap();
    let (mut ws, _) = ws_connect(&url, "v4.channel.k8s.io").await.unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(got[1], b"started\n");
    let t = Instant::now();
    while rt.killed.load(Ordering::SeqCst) < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "idle sessions kept their processes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_server_down_cancels_running_sessions() {
    let (srv, rt) = server().await;
    let url = srv
        .exec_url(exec(&["sh", "-c", "echo started; sleep 30"]))
        .unwrap();
    let client = tokio::spawn(async move { go(&url, &["-do", "await:started"]).await });
    let t = Instant::now();
    while rt.started.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the exec never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = srv.local_addr();
    srv.shutdown().await;
    let r = client.await.unwrap();
    assert_eq!(rt.killed.load(Ordering::SeqCst), 1, "{}", r.stderr);
    assert!(r.status.contains("InternalError"), "{}", r.status);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// Throughput of one SPDY exec's stdout (run with --ignored --nocapture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn spdy_stdout_throughput() {
    let (srv, _) = server().await;
    let mib: usize = std::env::var("STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let url = srv
        .exec_url(exec(&["sh", "-c", &format!("head -c {}M /dev/zero", mib)]))
        .unwrap();
    let t = Instant::now();
    let r = go(&url, &[]).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.stdout.len(), mib << 20);
    eprintln!(
        "{mib} MiB stdout in {secs:.2} s: {:.0} MiB/s",
        mib as f64 / secs
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_run_at_once() {
    let (srv, _) = server().await;
    let srv = Arc::new(srv);
    let mut runs = Vec::new();
    for i in 0..16 {
        let url = srv
            .exec_url(exec(&["sh", "-c", &format!("sleep 0.2; echo session {i}")]))
            .unwrap();
        runs.push(tokio::spawn(async move { (i, go(&url, &[]).await) }));
    }
    for r in runs {
        let (i, r) = r.await.unwrap();
        assert_eq!(r.stdout, format!("session {i}\n"), "{}", r.stderr);
        assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_megabytes_both_ways_at_once() {
    let (srv, _) = server().await;
    let (port, echo) = echo_server().await;
    for transport in ["spdy", "websocket"] {
        let url = srv
            .port_forward_url(PortForwardRequest {
                pod_sandbox_id: "pod1".into(),
                ports: vec![],
            })
            .unwrap();
        let t = Instant::now();
        let r = go(
            &url,
            &[
                "-mode",
                "portforward",
                "-proto",
                "portforward.k8s.io",
                "-transport",
                transport,
                "-port",
                &port.to_string(),
                "-conns",
                "4",
                "-bulk",
                "4194304",
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            r.stdout,
            (0..4)
                .map(|i| format!("{i}:4194304 bytes:\"\"\n"))
                .collect::<String>(),
            "{}",
            r.stderr
        );
        eprintln!(
            "port forward over {transport}: 4 x 4 MiB echoed in {:?}",
            t.elapsed()
        );
    }
    echo.abort();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_tunnelled_through_websocket() {
    // client-go's websocket port-forward dialer (crictl port-forward --transport websocket)
    let (srv, _) = server().await;
    let (port, echo) = echo_server().await;
    let url = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        })
        .unwrap();
    let r = go(
        &url,
        &[
            "-mode",
            "portforward",
            "-transport",
            "websocket",
            "-port",
            &port.to_string(),
            "-conns",
            "3",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("negotiated SPDY/3.1+portforward.k8s.io"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stdout,
        "0:\"hello 0\\n\":\"\"\n1:\"hello 1\\n\":\"\"\n2:\"hello 2\\n\":\"\"\n"
    );
    echo.abort();
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket (tokio-tungstenite's client).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v4_exec_splits_output_and_reports_the_exit_code() {
    let (srv, _) = server().await;
    let url = srv
        .exec_url(ExecRequest {
            stderr: true,
            ..exec(&["sh", "-c", "echo out; echo err >&2; exit 3"])
        })
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io").await.unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let got = ws_collect(&mut ws).await;
    assert_eq!(got[1], b"out\n");
    assert_eq!(got[2], b"err\n");
    let status: serde_json::Value = serde_json::from_slice(&got[3]).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // the base64 variant: text messages, an ASCII channel digit, then base64
    let url = srv.exec_url(exec(&["echo", "b64"])).unwrap();
    let (mut ws, proto) = ws_connect(&url, "v4.base64.channel.k8s.io").await.unwrap();
    assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
    let mut texts = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(texts.contains(&"1YjY0Cg==".to_string()), "{texts:?}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v5_closes_stdin_with_the_close_signal_and_resizes_a_tty() {
    let (srv, _) = server().await;
    let url = srv
        .exec_url(ExecRequest {
            stdin: true,
            ..exec(&["cat"])
        })
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io")
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    ws.send(Message::binary(b"\x00hello v5\n".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(got[1], b"hello v5\n");
    assert_eq!(got[3], br#"{"metadata":{},"status":"Success"}"#);

    let url = srv
        .exec_url(ExecRequest {
            tty: true,
            ..exec(&["stty", "size"])
        })
        .unwrap();
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::binary(
        b"\x04{\"Width\":132,\"Height\":43}".to_vec(),
    ))
    .await
    .unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(String::from_utf8_lossy(&got[1]), "43 132\r\n");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_leaving_mid_exec_kills_the_process() {
    let (srv, rt) = server().await;
    let url = srv
        .exec_url(exec(&["sh", "-c", "echo started; sleep 30"]))
        .unwrap();
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let mut out = Vec::new();
    while !out.ends_with(b"started\n") {
        if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
            if b.first() == Some(&1) {
                out.extend_from_slice(&b[1..]);
            }
        }
    }
    drop(ws);
    let t = Instant::now();
    while rt.killed.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the process was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_announces_ports_and_carries_data() {
    let (srv, _) = server().await;
    let (port, echo) = echo_server().await;
    let dead = closed_port();
    let url = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![port as i32, dead as i32],
        })
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io").await.unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    // data and error channel of each port start with the port, little-endian
    let mut first = Vec::new();
    while first.len() < 4 {
        let Message::Binary(b) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        if b.len() == 3 && b[0] < 4 {
            first.push((b[0], u16::from_le_bytes([b[1], b[2]])));
        }
    }
    first.sort();
    assert_eq!(first, vec![(0, port), (1, port), (2, dead), (3, dead)]);
    ws.send(Message::binary(b"\x00ping through ws".to_vec()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    let mut dead_error = Vec::new();
    while echoed.len() < 15 || dead_error.is_empty() {
        let Message::Binary(b) = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        else {
            continue;
        };
        match b[0] {
            0 => echoed.extend_from_slice(&b[1..]),
            3 => dead_error.extend_from_slice(&b[1..]),
            _ => {}
        }
    }
    assert_eq!(echoed, b"ping through ws");
    let dead_error = String::from_utf8(dead_error).unwrap();
    assert!(
        dead_error.starts_with(&format!("error forwarding port {dead} to pod pod1")),
        "{dead_error}"
    );
    ws.close(None).await.unwrap();
    echo.abort();
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Tokens and refusals (raw HTTP).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_once() {
    let (srv, _) = server().await;
    let url = srv.exec_url(exec(&["true"])).unwrap();
    let r = go(&url, &[]).await;
    assert_eq!(r.status, r#"{"metadata":{},"status":"Success"}"#);
    let r = go(&url, &[]).await;
    assert_eq!(r.code, 4);
    assert!(r.stdout.starts_with("HTTP 404 "), "{}", r.stdout);
    assert!(
        r.stdout.contains("is unknown, already used or expired"),
        "{}",
        r.stdout
    );
    // and only for its own kind
    let url = srv.exec_url(exec(&["true"])).unwrap();
    let attach = url.replace("/exec/", "/attach/");
    let (code, body) = raw_http(
        &attach,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(code, 404, "{body}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_token_expires() {
    let (srv, _) = server_with(Config {
        token_ttl: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let url = srv.exec_url(exec(&["true"])).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, body) = raw_http(
        &url,
        "POST",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        body.contains("is unknown, already used or expired (tokens are single-use and live 300ms)"),
        "{body}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_get_clear_errors_and_keep_the_token() {
    let (srv, _) = server().await;
    let url = srv.exec_url(exec(&["echo", "finally"])).unwrap();

    let (code, body) = raw_http(&url, "POST", &[]).await;
    assert_eq!(code, 400);
    assert!(
        body.starts_with("unable to upgrade: missing upgrade headers in request"),
        "{body}"
    );

    let (code, body) = raw_http(
        &url,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        body,
        "unable to upgrade: unsupported upgrade protocol \"h2c\" (this server speaks SPDY/3.1 and websocket)\n"
    );

    let spdy = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    let (code, body) = raw_http(&url, "POST", &spdy).await;
    assert_eq!(code, 400);
    assert!(
        body.contains("names no X-Stream-Protocol-Version"),
        "{body}"
    );

    let (code, body) = raw_http(
        &url,
        "POST",
        &[
            spdy[0],
            spdy[1],
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body,
        "unable to upgrade: unable to negotiate protocol: client supports [v9.channel.k8s.io], \
         server supports [v5.channel.k8s.io v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io]\n"
    );

    let err = ws_connect(&url, "v9.channel.k8s.io").await.unwrap_err();
    assert!(err.contains("400"), "{err}");

    let (code, body) = raw_http(&url, "DELETE", &spdy).await;
    assert_eq!(code, 405);
    assert!(body.starts_with("method DELETE is not allowed"), "{body}");

    let elsewhere = url.replace("/exec/", "/logs/");
    let (code, body) = raw_http(&elsewhere, "POST", &spdy).await;
    assert_eq!(code, 404);
    assert!(
        body.starts_with("no streaming endpoint at \"/logs/"),
        "{body}"
    );

    // none of the refusals used the token up
    let r = go(&url, &[]).await;
    assert_eq!(r.stdout, "finally\n", "{}", r.stderr);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spdy_client_that_opens_no_streams_is_sent_away() {
    let (srv, _) = server_with(Config {
        stream_creation_timeout: Duration::from_millis(300),
        linger: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let url = srv.exec_url(exec(&["true"])).unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = TcpStream::connect(host).await.unwrap();
    c.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "{text}"
    );
    let body = &got[text.find("\r\n\r\n").unwrap() + 4..];
    // GOAWAY (control bit, version 3, type 7), last good stream 0, status OK
    assert_eq!(body, [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    srv.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_at_registration() {
    let (srv, _) = server().await;
    let e = srv
        .exec_url(ExecRequest {
            tty: true,
            stderr: true,
            ..exec(&["sh"])
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid exec request: tty and stderr cannot both be true"
    );
    let e = srv
        .exec_url(ExecRequest {
            container_id: String::new(),
            ..exec(&["sh"])
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid exec request: missing required container_id"
    );
    let e = srv
        .attach_url(AttachRequest {
            container_id: "c".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid attach request: one of stdin, stdout, or stderr must be set"
    );
    let e = srv
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80, 70000],
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid port forward request: port 70000 is out of range (1-65535)"
    );
    srv.shutdown().await;

    let (srv, _) = server_with(Config {
        base_url: Some("http://node.example:10010/".into()),
        ..Config::default()
    })
    .await;
    let url = srv.exec_url(exec(&["true"])).unwrap();
    assert!(url.starts_with("http://node.example:10010/exec/"), "{url}");
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = busy.local_addr().unwrap();
    let err = StreamingServer::start(
        Config {
            addr,
            ..Config::default()
        },
        Arc::new(HostRuntime::default()),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .starts_with(&format!("streaming server cannot listen on {addr}: ")),
        "{err}"
    );
    srv.shutdown().await;
}
