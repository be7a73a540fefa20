//! Exec/attach (remotecommand) and port-forward over a CRI streaming URL, with the local
//! terminal: raw mode for `-t` on a terminal, resize messages on SIGWINCH, stdin to the
//! remote, and the remote's exit code from the error stream's Status.

use super::spdy;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Transport {
    #[default]
    Spdy,
    Websocket,
}

#[derive(Clone, Copy, Debug)]
pub struct Io {
    pub stdin: bool,
    pub tty: bool,
}

/// What the remote process's end means for us: `Ok(code)` or a failure message.
pub fn exit_from_status(protocol: &str, raw: &[u8]) -> Result<i32> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    if !protocol.starts_with("v4.") && !protocol.starts_with("v5.") {
        // v1–v3 put the plain error text on the error stream.
        bail!("{}", String::from_utf8_lossy(raw).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(raw).with_context(|| {
        format!(
            "bad status from the streaming server: {}",
            String::from_utf8_lossy(raw)
        )
    })?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        if let Some(causes) = v["details"]["causes"].as_array() {
            for c in causes {
                if c["reason"] == "ExitCode" {
                    if let Some(code) = c["message"].as_str().and_then(|m| m.parse().ok()) {
                        return Ok(code);
                    }
                }
            }
        }
    }
    bail!(
        "{}",
        v["message"].as_str().unwrap_or("the remote command failed")
    )
}

/// Puts the terminal on fd 0 into raw mode until dropped.
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    pub fn enter() -> RawMode {
        use nix::sys::termios::*;
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// The terminal size of stdout (or stdin) as the `{"Width","Height"}` resize message.
pub fn term_size() -> Option<Vec<u8>> {
    for fd in [1, 0] {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the struct we pass.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some(
                format!(r#"{{"Width":{},"Height":{}}}"#, ws.ws_col, ws.ws_row).into_bytes(),
            );
        }
    }
    None
}

/// Sends every terminal size change to `send` until the process ends.
pub fn spawn_resizer(send: impl Fn(Vec<u8>) -> bool + Send + 'static) {
    if let Some(s) = term_size() {
        send(s);
    }
    tokio::spawn(async move {
        let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while sig.recv().await.is_some() {
            if let Some(s) = term_size() {
                if !send(s) {
                    break;
                }
            }
        }
    });
}

/// Copies our stdin to `send` in chunks, then calls `eof`.
pub fn spawn_stdin(
    send: impl Fn(Bytes) -> bool + Send + 'static,
    eof: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(Bytes::copy_from_slice(&buf[..n])) {
                        return;
                    }
                }
            }
        }
        eof();
    });
}

/// What client-go's SPDY executor offers; over SPDY v5 behaves as v4 (its close signal is for
/// WebSocket), and containerd 1.6 picks v4.
const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Runs exec/attach I/O over SPDY; returns the remote exit code.
pub async fn remotecommand_spdy(url: &str, io: Io) -> Result<i32> {
    let (session, protocol) = spdy::connect(url, REMOTECOMMAND_PROTOCOLS).await?;
    let st = |t: &str| [("streamtype", t.to_owned())];
    let mut error = session.open(&st("error"));
    if io.stdin {
        let stdin = session.open(&st("stdin"));
        let w = stdin.writer();
        let w2 = w.clone();
        spawn_stdin(move |b| w.write(b).is_ok(), move || w2.close_write());
    }
    let mut stdout = session.open(&st("stdout"));
    let mut stderr = (!io.tty).then(|| session.open(&st("stderr")));
    if io.tty {
        let resize = session.open(&st("resize"));
        let w = resize.writer();
        spawn_resizer(move |m| w.write(Bytes::from(m)).is_ok());
    }
    let out_task = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(b) = stdout.read().await {
            let _ = out.write_all(&b).await;
            let _ = out.flush().await;
        }
    });
    let err_task = tokio::spawn(async move {
        if let Some(s) = stderr.as_mut() {
            let mut err = tokio::io::stderr();
            // tokio's stderr hands each write to a blocking thread: unflushed bytes are lost
            // when the process exits right after
            while let Some(b) = s.read().await {
                let _ = err.write_all(&b).await;
                let _ = err.flush().await;
            }
        }
    });
    let mut status = vec![];
    while let Some(b) = error.read().await {
        status.extend_from_slice(&b);
    }
    let _ = out_task.await;
    let _ = err_task.await;
    session.close();
    exit_from_status(&protocol, &status)
}

/// Forwards each `(local listener, remote port)` over SPDY `portforward.k8s.io` (on its own
/// connection, or tunnelled in WebSocket messages) until interrupted.
pub async fn port_forward(
    url: &str,
    transport: Transport,
    listeners: Vec<(tokio::net::TcpListener, u16)>,
) -> Result<()> {
    let session = match transport {
        Transport::Spdy => {
            let (session, chosen) = spdy::connect(url, &["portforward.k8s.io"]).await?;
            if !chosen.is_empty() && chosen != "portforward.k8s.io" {
                bail!("the streaming server chose an unknown port-forward protocol {chosen:?}");
            }
            session
        }
        Transport::Websocket => spdy::connect_ws_tunnel(url).await?,
    };
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = vec![];
    for (listener, remote) in listeners {
        let session = session.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                println!("Handling connection for {remote}");
                let rid = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let headers = |t: &str| {
                    [
                        ("streamtype", t.to_owned()),
                        ("port", remote.to_string()),
                        ("requestid", rid.to_string()),
                    ]
                };
                let mut error = session.open(&headers("error"));
                // Nothing is ever written to the error stream by the client.
                error.close_write();
                let mut data = session.open(&headers("data"));
                let w = data.writer();
                let (mut rd, mut wr) = conn.into_split();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if w.write(Bytes::copy_from_slice(&buf[..n])).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    w.close_write();
                });
                tokio::spawn(async move {
                    while let Some(b) = data.read().await {
                        if wr.write_all(&b).await.is_err() {
                            data.reset();
                            break;
                        }
                    }
                    let _ = wr.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut msg = vec![];
                    while let Some(b) = error.read().await {
                        msg.extend_from_slice(&b);
                    }
                    if !msg.is_empty() {
                        eprintln!(
                            "error forwarding port {remote}: {}",
                            String::from_utf8_lossy(&msg).trim()
                        );
                    }
                });
            }
        }));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures_util::future::join_all(tasks) => {}
    }
    session.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            exit_from_status(
                "v4.channel.k8s.io",
                br#"{"metadata":{},"status":"Success"}"#
            )
            .unwrap(),
            0
        );
        let nz = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_from_status("v4.channel.k8s.io", nz).unwrap(), 3);
        let e = exit_from_status(
            "v4.channel.k8s.io",
            br#"{"status":"Failure","message":"exec: \"nope\": not found"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"));
        assert_eq!(exit_from_status("v4.channel.k8s.io", b"").unwrap(), 0);
        assert!(exit_from_status("v2.channel.k8s.io", b"boom").is_err());
    }
}
