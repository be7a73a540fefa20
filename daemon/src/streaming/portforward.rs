//! Port-forward sessions (kubelet's `portforward`). Over SPDY the client opens an error and a data
//! stream per forwarded connection (`streamtype`, `port`, `requestid` headers) for as long as the
//! session lives; over WebSocket every requested port gets a data and an error channel for the
//! life of the connection, each announced by the port number (u16, little-endian) as its first
//! message; client-go's WebSocket dialer instead tunnels the SPDY session through binary
//! messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::frame::{RST_CANCEL, RST_PROTOCOL_ERROR};
use super::spdy::{Incoming, Session, SpdyStream};
use super::ws::{self, Codec, WsOut, CLOSE_SIGNAL, PIPE};
use super::{CancellationToken, Inner, PortForwardRequest, Runtime};

/// What kubelet writes on a forwarded connection's error stream (client-go decodes it).
#[derive(Serialize)]
struct ErrorResponse {
    #[serde(rename = "closeConnection", skip_serializing_if = "std::ops::Not::not")]
    close_connection: bool,
    message: String,
}

fn forward_error(port: u16, pod: &str, e: &dyn std::fmt::Display) -> String {
    // kubelet's wording; the CRI has no pod uid to show
    format!("error forwarding port {port} to pod {pod}, uid : {e}")
}

fn parse_port(value: Option<&str>) -> Result<u16, String> {
    match value {
        None => Err("the stream has no port header".into()),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("invalid port header {v:?}: ports are 1-65535")),
        },
    }
}

#[derive(Default)]
struct Pair {
    data: Option<SpdyStream>,
    error: Option<SpdyStream>,
    port: u16,
    since: Option<Instant>,
}

pub(crate) async fn serve_spdy<T>(inner: Arc<Inner>, req: PortForwardRequest, io: T)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let pod = req.pod_sandbox_id;
    let mut session = Session::start(io, inner.config.idle_timeout);
    let cancel = inner.shutdown.child_token();
    let mut lost = session.lost();
    let watcher = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let _ = lost.wait_for(|gone| *gone).await;
            cancel.cancel();
        }
    });
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            incoming = session.accept() => {
                let Some(incoming) = incoming else { break };
                on_stream(&inner, &pod, incoming, &mut pending, &cancel);
            }
            _ = tick.tick() => {
                let timeout = inner.config.stream_creation_timeout;
                pending.retain(|id, pair| {
                    if pair.since.is_some_and(|t| t.elapsed() < timeout) {
                        return true;
                    }
                    tracing::warn!("port forward to {pod}: request {id} timed out waiting for its second stream");
                    if let Some(e) = pair.error.take() {
                        let msg = format!("timed out waiting for the data stream of request {id}");
                        tokio::spawn(async move {
                            let _ = e.send(msg.as_bytes()).await;
                            e.finish();
                        });
                    }
                    if let Some(d) = pair.data.take() {
                        d.reset(RST_CANCEL);
                    }
                    false
                });
            }
            _ = cancel.cancelled() => break,
        }
    }
    cancel.cancel();
    watcher.abort();
}

fn on_stream(
    inner: &Arc<Inner>,
    pod: &str,
    incoming: Incoming,
    pending: &mut HashMap<String, Pair>,
    cancel: &CancellationToken,
) {
    let kind = incoming.header("streamtype").unwrap_or("").to_string();
    if kind != "data" && kind != "error" {
        tracing::warn!("port forward to {pod}: refusing stream of type {kind:?}");
        incoming.refuse();
        return;
    }
    let port = parse_port(incoming.header("port"));
    let request_id = match incoming.header("requestid") {
        Some(id) => id.to_string(),
        // clients older than request ids open the error stream, then the data stream
        None if kind == "error" => incoming.id().to_string(),
        None => incoming.id().saturating_sub(2).to_string(),
    };
    let stream = incoming.accept();
    let port = match port {
        Ok(p) => p,
        Err(msg) => {
            tracing::warn!("port forward to {pod}: {msg}");
            if kind == "error" {
                tokio::spawn(async move {
                    let _ = stream.send(msg.as_bytes()).await;
                    stream.finish();
                });
            } else {
                stream.reset(RST_PROTOCOL_ERROR);
            }
            return;
        }
    };
    let pair = pending.entry(request_id.clone()).or_default();
    let slot = if kind == "data" {
        &mut pair.data
    } else {
        &mut pair.error
    };
    if slot.is_some() {
        tracing::warn!("port forward to {pod}: request {request_id} opened two {kind} streams");
        stream.reset(RST_PROTOCOL_ERROR);
        return;
    }
    *slot = Some(stream);
    pair.port = port;
    pair.since.get_or_insert_with(Instant::now);
    if pair.data.is_some() && pair.error.is_some() {
        let pair = pending.remove(&request_id).expect("pair just filled");
        tokio::spawn(forward(
            inner.runtime.clone(),
            pod.to_string(),
            pair.port,
            pair.data.unwrap(),
            pair.error.unwrap(),
            cancel.child_token(),
        ));
    }
}

/// One forwarded connection over a SPDY data/error stream pair.
async fn forward(
    runtime: Arc<dyn Runtime>,
    pod: String,
    port: u16,
    data: SpdyStream,
    error: SpdyStream,
    cancel: CancellationToken,
) {
    let (theirs, ours) = tokio::io::duplex(PIPE);
    let (mut ours_r, mut ours_w) = tokio::io::split(ours);
    let incoming = data.clone();
    let pump_in = tokio::spawn(async move {
        loop {
            match incoming.recv().await {
                Ok(Some(b)) => {
                    if ours_w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    let _ = ours_w.shutdown().await;
                    break;
                }
                Err(_) => break,
            }
        }
        // keep the write half until the runtime is done so the pipe stays open for replies
        ours_w
    });
    let outgoing = data.clone();
    let pump_out = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match ours_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if outgoing.send(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        outgoing.finish();
    });
    let result = runtime
        .port_forward(pod.clone(), port, theirs, cancel.clone())
        .await;
    if let Err(e) = result {
        tracing::warn!("port forward to {pod}:{port}: {e}");
        let body = ErrorResponse {
            close_connection: true,
            message: forward_error(port, &pod, &e),
        };
        let mut json = serde_json::to_vec(&body).expect("serializes");
        json.push(b'\n');
        let _ = error.send(&json).await;
    }
    error.finish();
    tokio::select! {
        _ = pump_out => {}
        _ = cancel.cancelled() => {}
    }
    pump_in.abort();
    data.finish();
}

pub(crate) async fn serve_ws<T>(
    inner: Arc<Inner>,
    req: PortForwardRequest,
    ports: Vec<u16>,
    protocol: &'static str,
    io: T,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pod = req.pod_sandbox_id;
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut source) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    let codec = Codec::for_protocol(protocol);
    let cancel = inner.shutdown.child_token();
    let idle = inner.config.idle_timeout;

    let mut inputs = Vec::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let error_ch = data_ch + 1;
        for ch in [data_ch, error_ch] {
            let _ = out
                .send(WsOut::Msg(codec.encode(ch, &port.to_le_bytes())))
                .await;
        }
        let (theirs, ours) = tokio::io::duplex(PIPE);
        let (ours_r, ours_w) = tokio::io::split(ours);
        inputs.push(Some(ours_w));
        let (pump_out, pump) = {
            let (w, h) = ws::output(data_ch, codec, out.clone());
            (w, h)
        };
        // copy what the runtime writes into the channel's output stream
        let copy = tokio::spawn(async move {
            let mut r = ours_r;
            let mut w = pump_out;
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        let runtime = inner.runtime.clone();
        let pod = pod.clone();
        let out = out.clone();
        let cancel = cancel.child_token();
        tasks.push(tokio::spawn(async move {
            let result = runtime
                .port_forward(pod.clone(), port, theirs, cancel.clone())
                .await;
            if let Err(e) = result {
                tracing::warn!("port forward to {pod}:{port}: {e}");
                let msg = forward_error(port, &pod, &e);
                let _ = out
                    .send(WsOut::Msg(codec.encode(error_ch, msg.as_bytes())))
                    .await;
            }
            tokio::select! {
                _ = async { let _ = copy.await; let _ = pump.await; } => {}
                _ = cancel.cancelled() => {}
            }
        }));
    }

    let reader = tokio::spawn({
        let cancel = cancel.clone();
        let out = out.clone();
        async move {
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
                if channel == CLOSE_SIGNAL {
                    if let Some(&ch) = data.first() {
                        if let Some(Some(mut w)) = inputs.get_mut(ch as usize / 2).map(Option::take)
                        {
                            let _ = w.shutdown().await;
                        }
                    }
                    continue;
                }
                if channel % 2 != 0 {
                    continue;
                }
                if let Some(slot) = inputs.get_mut(channel as usize / 2) {
                    if let Some(w) = slot.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            *slot = None;
                        }
                    }
                }
            }
            cancel.cancel();
        }
    });

    futures_util::future::join_all(tasks).await;
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

/// client-go's WebSocket port forwarding: the SPDY session runs inside binary messages.
pub(crate) async fn serve_ws_tunnel<T>(inner: Arc<Inner>, req: PortForwardRequest, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = inner.config.idle_timeout;
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = socket.split();
    let (spdy_side, ours) = tokio::io::duplex(256 * 1024);
    let (mut ours_r, mut ours_w) = tokio::io::split(ours);
    let down = tokio::spawn(async move {
        while let Some(msg) = ws::next_message(&mut source, idle).await {
            let ok = match msg {
                Message::Binary(b) => ours_w.write_all(&b).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let _ = ours_w.shutdown().await;
    });
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match ours_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(ws::close_message()).await;
        let _ = sink.close().await;
    });
    serve_spdy(inner, req, spdy_side).await;
    let _ = up.await;
    down.abort();
}
