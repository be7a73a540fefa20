//! A SPDY/3.1 client session, as crictl (client-go's spdystream) uses it against a CRI
//! streaming server: HTTP/1.1 upgrade, then client-initiated streams (odd IDs) carrying the
//! `streamtype` header. The frame codec and header compression are rcd's own (the server side
//! in `daemon/src/streaming/spdy`), compiled in here: they are symmetric and have no server
//! state.
//!
//! Flow control: WINDOW_UPDATEs (stream and session level) are sent for everything received
//! (rcd's server waits for them once it has seen one); outgoing data is not held back by
//! windows, as spdystream does not (rcd's server and kubelet's accept that).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[allow(dead_code)]
#[path = "../../../daemon/src/streaming/spdy/dictionary.rs"]
mod dictionary;
#[allow(dead_code)]
#[path = "../../../daemon/src/streaming/spdy/frame.rs"]
mod frame;

use frame::{encode_frame, read_frame, Frame, HeaderDecoder, HeaderEncoder};

/// What a stream receives: data, then `None` once the peer finished or reset it.
type Inbox = mpsc::UnboundedSender<Option<Bytes>>;

#[derive(Clone)]
pub struct Session {
    out: mpsc::UnboundedSender<Frame>,
    streams: Arc<Mutex<HashMap<u32, Inbox>>>,
    next_id: Arc<Mutex<u32>>,
}

pub struct Stream {
    pub id: u32,
    session: Session,
    rx: mpsc::UnboundedReceiver<Option<Bytes>>,
}

/// Connects to `url` (http://host:port/path) and upgrades to SPDY/3.1 offering `protocols`
/// (`X-Stream-Protocol-Version`); returns the session and the protocol the server chose.
pub async fn connect(url: &str, protocols: &[&str]) -> Result<(Session, String)> {
    let (hostport, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&hostport)
        .await
        .with_context(|| format!("connecting to the streaming server at {hostport}"))?;
    tcp.set_nodelay(true)?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Read the response head byte by byte: SPDY frames may follow it at once.
    let mut head = vec![];
    while !head.ends_with(b"\r\n\r\n") {
        let b = tcp
            .read_u8()
            .await
            .context("the streaming server closed the connection during the upgrade")?;
        head.push(b);
        if head.len() > 64 * 1024 {
            bail!("oversized upgrade response from {hostport}");
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        bail!(
            "the streaming server refused the upgrade: {}",
            status.split_once(' ').map_or(status, |(_, s)| s)
        );
    }
    let chosen = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-stream-protocol-version"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let (rd, wr) = tcp.into_split();
    Ok((start(rd, wr), chosen))
}

/// Connects to `url` as a WebSocket with the `SPDY/3.1+portforward.k8s.io` subprotocol and runs
/// a SPDY session inside its binary messages (client-go's WebSocket port-forward tunnel).
pub async fn connect_ws_tunnel(url: &str) -> Result<Session> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
    let (hostport, path) = split_url(url)?;
    let tcp = TcpStream::connect(&hostport)
        .await
        .with_context(|| format!("connecting to the streaming server at {hostport}"))?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{hostport}{path}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", PROTOCOL.parse()?);
    let (ws, resp) = match tokio_tungstenite::client_async(req, tcp).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => bail!(
            "the streaming server at {hostport} refused port forwarding over websocket ({}): use --transport spdy",
            r.status()
        ),
        Err(e) => bail!("websocket upgrade to {hostport}: {e}"),
    };
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if chosen != PROTOCOL {
        bail!("the streaming server does not tunnel SPDY port forwarding over websocket (use --transport spdy)");
    }
    let (mut sink, mut source) = ws.split();
    // The SPDY session runs over one end of an in-memory pipe; the other end is bridged to
    // WebSocket messages.
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut prd, mut pwr) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match prd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(b) if pwr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = pwr.shutdown().await;
    });
    let (rd, wr) = tokio::io::split(ours);
    Ok(start(rd, wr))
}

/// Runs a client session over an established byte stream.
fn start<R, W>(mut rd: R, mut wr: W) -> Session
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        let mut enc = HeaderEncoder::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        while let Some(f) = out_rx.recv().await {
            buf.clear();
            encode_frame(&f, &mut enc, &mut buf);
            while let Ok(f) = out_rx.try_recv() {
                encode_frame(&f, &mut enc, &mut buf);
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let session = Session {
        out: out_tx,
        streams: Arc::new(Mutex::new(HashMap::new())),
        next_id: Arc::new(Mutex::new(1)),
    };
    let s = session.clone();
    tokio::spawn(async move {
        let mut dec = HeaderDecoder::new();
        loop {
            let f = match read_frame(&mut rd, &mut dec).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("spdy read: {e}");
                    break;
                }
            };
            match f {
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    let inbox = s.streams.lock().unwrap().get(&stream_id).cloned();
                    if let Some(inbox) = inbox {
                        if !data.is_empty() {
                            // SPDY/3.1 windows are per stream and per session (stream 0).
                            for id in [stream_id, 0] {
                                let _ = s.out.send(Frame::WindowUpdate {
                                    stream_id: id,
                                    delta: data.len() as u32,
                                });
                            }
                            let _ = inbox.send(Some(data));
                        }
                        if fin {
                            let _ = inbox.send(None);
                        }
                    }
                }
                Frame::SynReply {
                    stream_id,
                    fin: true,
                    ..
                }
                | Frame::Headers {
                    stream_id,
                    fin: true,
                    ..
                }
                | Frame::RstStream { stream_id, .. } => {
                    if let Some(inbox) = s.streams.lock().unwrap().get(&stream_id) {
                        let _ = inbox.send(None);
                    }
                }
                Frame::Ping { id } => {
                    let _ = s.out.send(Frame::Ping { id });
                }
                Frame::GoAway { .. } => break,
                Frame::SynStream { stream_id, .. } => {
                    // Servers do not open streams in these protocols.
                    let _ = s.out.send(Frame::RstStream {
                        stream_id,
                        status: frame::RST_REFUSED_STREAM,
                    });
                }
                _ => {}
            }
        }
        // The connection is gone: every stream ends.
        for (_, inbox) in s.streams.lock().unwrap().drain() {
            let _ = inbox.send(None);
        }
    });
    session
}

impl Session {
    /// Opens a stream with `headers` (e.g. `streamtype: stdout`).
    pub fn open(&self, headers: &[(&str, String)]) -> Stream {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            let id = *n;
            *n += 2;
            id
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().unwrap().insert(id, tx);
        let _ = self.out.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
        Stream {
            id,
            session: self.clone(),
            rx,
        }
    }

    /// Ends the session politely.
    pub fn close(&self) {
        let _ = self.out.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: frame::GOAWAY_OK,
        });
    }
}

impl Stream {
    /// Half-closes our side (FIN).
    pub fn close_write(&self) {
        let _ = self.session.out.send(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        });
    }

    pub fn reset(&self) {
        let _ = self.session.out.send(Frame::RstStream {
            stream_id: self.id,
            status: frame::RST_CANCEL,
        });
    }

    /// The next data; `None` once the peer finished the stream or the connection ended.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await.flatten()
    }

    /// A handle that can write to this stream from another task.
    pub fn writer(&self) -> StreamWriter {
        StreamWriter {
            id: self.id,
            out: self.session.out.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::UnboundedSender<Frame>,
}

impl StreamWriter {
    pub fn write(&self, data: Bytes) -> Result<()> {
        self.out
            .send(Frame::Data {
                stream_id: self.id,
                fin: false,
                data,
            })
            .map_err(|_| anyhow::anyhow!("streaming connection closed"))
    }

    pub fn close_write(&self) {
        let _ = self.out.send(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        });
    }
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`).
pub fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .with_context(|| {
            format!("unsupported streaming URL {url:?} (only plain http is spoken)")
        })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        bail!("streaming URL {url:?} has no host");
    }
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:4000/exec/abc").unwrap(),
            ("127.0.0.1:4000".into(), "/exec/abc".into())
        );
        assert_eq!(
            split_url("http://h/x").unwrap(),
            ("h:80".into(), "/x".into())
        );
        assert!(split_url("https://h/x").is_err());
    }
}
