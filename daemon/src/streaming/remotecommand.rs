//! Exec and attach sessions (kubelet's `remotecommand`): collect the client's streams, run the
//! command through the [`Runtime`](super::Runtime), then report how it ended on the error stream
//! and close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::{Session, SpdyStream};
use super::status::Outcome;
use super::ws::{self, Codec, WsOut, CLOSE_SIGNAL, PIPE};
use super::{
    AttachRequest, CancellationToken, ExecRequest, Inner, InputStream, OutputStream, Streams,
    TerminalSize,
};

pub(crate) enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl From<ExecRequest> for Command {
    fn from(r: ExecRequest) -> Self {
        Command::Exec(r)
    }
}

impl From<AttachRequest> for Command {
    fn from(r: AttachRequest) -> Self {
        Command::Attach(r)
    }
}

struct Flags {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Command {
    fn flags(&self) -> Flags {
        match self {
            Command::Exec(r) => Flags {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !r.tty,
                tty: r.tty,
            },
            Command::Attach(r) => Flags {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !r.tty,
                tty: r.tty,
            },
        }
    }

    fn label(&self) -> String {
        match self {
            Command::Exec(r) => format!("exec {:?} in {}", r.cmd, r.container_id),
            Command::Attach(r) => format!("attach to {}", r.container_id),
        }
    }
}

async fn run(inner: &Inner, cmd: Command, streams: Streams) -> Outcome {
    match cmd {
        Command::Exec(r) => {
            let argv = r.cmd.clone();
            match inner.runtime.exec(r, streams).await {
                Ok(code) => Outcome::Exited { code, cmd: argv },
                Err(e) => Outcome::Failed(e),
            }
        }
        Command::Attach(r) => match inner.runtime.attach(r, streams).await {
            Ok(()) => Outcome::Attached,
            Err(e) => Outcome::Failed(e),
        },
    }
}

/// Splits the resize stream's concatenated JSON objects (`{"Width":80,"Height":24}`) into sizes.
#[derive(Default)]
pub(crate) struct ResizeParser {
    buf: Vec<u8>,
}

#[derive(Deserialize)]
struct WireSize {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

impl ResizeParser {
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<TerminalSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<WireSize>();
        let mut consumed = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    consumed = it.byte_offset();
                    sizes.push(TerminalSize {
                        width: s.width,
                        height: s.height,
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::warn!("ignoring a malformed terminal size on the resize stream: {e}");
                    consumed = self.buf.len();
                    break;
                }
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        sizes
    }
}

fn spdy_input(stream: SpdyStream) -> (InputStream, JoinHandle<()>) {
    let (theirs, mut ours) = tokio::io::duplex(PIPE);
    let handle = tokio::spawn(async move {
        loop {
            match stream.recv().await {
                Ok(Some(b)) => {
                    if ours.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    let _ = ours.shutdown().await;
                    break;
                }
                Err(_) => break,
            }
        }
    });
    (Box::new(theirs), handle)
}

fn spdy_output(stream: SpdyStream) -> (OutputStream, JoinHandle<()>) {
    let (theirs, mut ours) = tokio::io::duplex(PIPE);
    let handle = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match ours.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.send(&buf[..n]).await.is_err() {
                        // dropping `ours` makes the runtime's writes fail
                        return;
                    }
                }
            }
        }
        stream.finish();
    });
    (Box::new(theirs), handle)
}

/// Waits for the output pumps, but not past the client's departure.
async fn drain(pumps: Vec<JoinHandle<()>>, cancel: &CancellationToken) {
    let all = futures_util::future::join_all(pumps);
    tokio::select! {
        _ = all => {}
        _ = cancel.cancelled() => {}
    }
}

pub(crate) async fn serve_spdy<T>(inner: Arc<Inner>, cmd: Command, protocol: &'static str, io: T)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let label = cmd.label();
    let mut session = Session::start(io, inner.config.idle_timeout);
    let f = cmd.flags();
    let v4 = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let mut want = vec!["error"];
    if f.stdin {
        want.push("stdin");
    }
    if f.stdout {
        want.push("stdout");
    }
    if f.stderr {
        want.push("stderr");
    }
    if f.tty && !protocol.starts_with("v2.") {
        want.push("resize");
    }
    let mut got: HashMap<&'static str, SpdyStream> = HashMap::new();
    let deadline = tokio::time::sleep(inner.config.stream_creation_timeout);
    tokio::pin!(deadline);
    while got.len() < want.len() {
        tokio::select! {
            incoming = session.accept() => {
                let Some(incoming) = incoming else {
                    tracing::debug!("{label}: the client left before opening its streams");
                    return;
                };
                let kind = incoming.header("streamtype").unwrap_or("").to_string();
                match want.iter().find(|w| **w == kind) {
                    Some(w) if !got.contains_key(w) => {
                        got.insert(w, incoming.accept());
                    }
                    _ => {
                        tracing::warn!("{label}: refusing unexpected stream type {kind:?}");
                        incoming.refuse();
                    }
                }
            }
            _ = &mut deadline => {
                tracing::warn!(
                    "{label}: timed out waiting for the client to create streams (has {:?} of {want:?})",
                    got.keys().collect::<Vec<_>>()
                );
                session.close(Duration::ZERO).await;
                return;
            }
            _ = inner.shutdown.cancelled() => return,
        }
    }

    let cancel = inner.shutdown.child_token();
    let mut lost = session.lost();
    let watcher = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let _ = lost.wait_for(|gone| *gone).await;
            cancel.cancel();
        }
    });
    let mut background = Vec::new();
    let mut outputs = Vec::new();
    let stdin = got.remove("stdin").map(|s| {
        let (r, h) = spdy_input(s);
        background.push(h);
        r
    });
    let mut output = |name: &str| {
        got.remove(name).map(|s| {
            let (w, h) = spdy_output(s);
            outputs.push(h);
            w
        })
    };
    let stdout = output("stdout");
    let stderr = output("stderr");
    let resize = got.remove("resize").map(|s| {
        let (tx, rx) = mpsc::channel(16);
        background.push(tokio::spawn(async move {
            let mut parser = ResizeParser::default();
            while let Ok(Some(chunk)) = s.recv().await {
                for size in parser.push(&chunk) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        }));
        rx
    });
    let error = got
        .remove("error")
        .expect("the error stream is always awaited");
    let streams = Streams {
        stdin,
        stdout,
        stderr,
        tty: f.tty,
        resize,
        cancel: cancel.clone(),
    };
    let outcome = run(&inner, cmd, streams).await;
    drain(outputs, &cancel).await;
    tracing::debug!("{label}: {outcome:?}");
    let report = if v4 {
        Some(outcome.to_json())
    } else {
        outcome.message().map(String::into_bytes)
    };
    if let Some(report) = report {
        let _ = error.send(&report).await;
    }
    error.finish();
    for h in background {
        h.abort();
    }
    watcher.abort();
    drop(error);
    session.close(inner.config.linger).await;
}

pub(crate) async fn serve_ws<T>(inner: Arc<Inner>, cmd: Command, protocol: &'static str, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let label = cmd.label();
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut source) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    let codec = Codec::for_protocol(protocol);
    let v4 = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let v5 = protocol.starts_with("v5.");
    let f = cmd.flags();
    let idle = inner.config.idle_timeout;

    // kubelet's "connection established" signal: an empty message on the lowest output channel
    let first = if f.stdout {
        1
    } else if f.stderr {
        2
    } else {
        3
    };
    let _ = out.send(WsOut::Msg(codec.encode(first, &[]))).await;

    let cancel = inner.shutdown.child_token();
    let (stdin, mut stdin_pipe) = if f.stdin {
        let (theirs, ours) = tokio::io::duplex(PIPE);
        (Some(Box::new(theirs) as InputStream), Some(ours))
    } else {
        (None, None)
    };
    let (resize_tx, resize) = if f.tty {
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let reader = tokio::spawn({
        let cancel = cancel.clone();
        let out = out.clone();
        async move {
            let mut parser = ResizeParser::default();
            while let Some(msg) = ws::next_message(&mut source, idle).await {
                match &msg {
                    Message::Close(_) => break,
                    Message::Ping(_) => {
                        let _ = out.try_send(WsOut::Flush);
                        continue;
                    }
                    _ => {}
                }
                let Some((channel, data)) = codec.decode(&msg) else {
                    continue;
                };
                match channel {
                    0 => {
                        if let Some(pipe) = stdin_pipe.as_mut() {
                            if pipe.write_all(&data).await.is_err() {
                                stdin_pipe = None;
                            }
                        }
                    }
                    4 => {
                        if let Some(tx) = &resize_tx {
                            for size in parser.push(&data) {
                                let _ = tx.send(size).await;
                            }
                        }
                    }
                    CLOSE_SIGNAL if v5 => {
                        if data.first() == Some(&0) {
                            if let Some(mut pipe) = stdin_pipe.take() {
                                let _ = pipe.shutdown().await;
                            }
                        }
                    }
                    other => tracing::debug!("ignoring a websocket message on channel {other}"),
                }
            }
            // the client closed or the connection broke
            cancel.cancel();
        }
    });

    let mut outputs = Vec::new();
    let mut output = |wanted: bool, channel: u8| {
        wanted.then(|| {
            let (w, h) = ws::output(channel, codec, out.clone());
            outputs.push(h);
            w
        })
    };
    let stdout = output(f.stdout, 1);
    let stderr = output(f.stderr, 2);
    let streams = Streams {
        stdin,
        stdout,
        stderr,
        tty: f.tty,
        resize,
        cancel: cancel.clone(),
    };
    let outcome = run(&inner, cmd, streams).await;
    drain(outputs, &cancel).await;
    tracing::debug!("{label}: {outcome:?}");
    let report = if v4 {
        Some(outcome.to_json())
    } else {
        outcome.message().map(String::into_bytes)
    };
    if let Some(report) = report {
        let _ = out.send(WsOut::Msg(codec.encode(3, &report))).await;
    }
    let _ = out.send(WsOut::Msg(ws::close_message())).await;
    drop(out);
    let _ = tokio::time::timeout(inner.config.linger, writer).await;
    let mut reader = reader;
    if tokio::time::timeout(inner.config.linger, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_split_across_chunks_are_reassembled() {
        let mut p = ResizeParser::default();
        assert_eq!(p.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            p.push(br#"ght":24}{"Width":100,"Height":50}"#),
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(p.push(b"\n"), vec![]);
        // garbage is dropped and parsing continues with the next message
        assert_eq!(p.push(b"nonsense"), vec![]);
        assert_eq!(
            p.push(br#"{"width":1,"height":2}"#),
            vec![TerminalSize {
                width: 1,
                height: 2
            }]
        );
    }
}
