//! Exec/attach over WebSocket channels (`v5.channel.k8s.io`, `v4.channel.k8s.io`): each
//! binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
//! v5 adds 255 = close a channel, used for stdin EOF).

use super::spdy::split_url;
use super::stream::{exit_from_status, spawn_resizer, spawn_stdin, Io};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub async fn remotecommand_ws(url: &str, io: Io) -> Result<i32> {
    let (hostport, path) = split_url(url)?;
    let tcp = tokio::net::TcpStream::connect(&hostport)
        .await
        .with_context(|| format!("connecting to the streaming server at {hostport}"))?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{hostport}{path}").into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io, v4.channel.k8s.io".parse()?,
    );
    let (ws, resp) = match tokio_tungstenite::client_async(req, tcp).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => bail!(
            "the streaming server refused the websocket upgrade: {} {}",
            r.status(),
            r.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default()
        ),
        Err(e) => bail!("websocket upgrade to {hostport}: {e}"),
    };
    let protocol = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let v5 = protocol.starts_with("v5.");
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let frame = |ch: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(ch);
        v.extend_from_slice(data);
        Message::Binary(Bytes::from(v))
    };
    if io.stdin {
        let t = tx.clone();
        let t2 = tx.clone();
        spawn_stdin(
            move |b| t.send(frame(0, &b)).is_ok(),
            move || {
                if v5 {
                    let _ = t2.send(frame(255, &[0]));
                }
            },
        );
    }
    if io.tty {
        let t = tx.clone();
        spawn_resizer(move |m| t.send(frame(4, &m)).is_ok());
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let mut status = vec![];
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&ch, rest)) = data.split_first() else {
            continue;
        };
        match ch {
            1 => {
                let _ = out.write_all(rest).await;
                let _ = out.flush().await;
            }
            2 => {
                // unflushed, tokio's stderr may still hold it when the process exits
                let _ = err.write_all(rest).await;
                let _ = err.flush().await;
            }
            3 => status.extend_from_slice(rest),
            _ => {}
        }
    }
    drop(tx);
    writer.abort();
    exit_from_status(
        if protocol.is_empty() {
            "v4.channel.k8s.io"
        } else {
            &protocol
        },
        &status,
    )
}
