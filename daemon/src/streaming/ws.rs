//! WebSocket plumbing shared by exec/attach and port forwarding: the channel framing of
//! `channel.k8s.io` (binary: one channel byte then data; base64 variants: an ASCII digit then
//! base64 text), a writer task owning the sink, and output pumps.

use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::OutputStream;

/// The v5 protocol's "this channel is closed" signal: `[255, channel]`.
pub(crate) const CLOSE_SIGNAL: u8 = 255;
/// Buffer between a runtime's stream and the connection.
pub(crate) const PIPE: usize = 64 * 1024;

#[derive(Clone, Copy)]
pub(crate) struct Codec {
    base64: bool,
}

impl Codec {
    pub(crate) fn for_protocol(protocol: &str) -> Codec {
        Codec {
            base64: protocol.contains("base64"),
        }
    }

    pub(crate) fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push((b'0' + channel) as char);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(channel);
            v.extend_from_slice(data);
            Message::binary(v)
        }
    }

    /// The channel and payload of a data message; `None` for control messages and garbage.
    pub(crate) fn decode(&self, msg: &Message) -> Option<(u8, Vec<u8>)> {
        match msg {
            Message::Binary(b) if !b.is_empty() => Some((b[0], b[1..].to_vec())),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let t = t.as_str();
                let channel = t.as_bytes()[0].checked_sub(b'0')?;
                match base64::engine::general_purpose::STANDARD.decode(&t[1..]) {
                    Ok(data) => Some((channel, data)),
                    Err(e) => {
                        tracing::warn!("websocket message on channel {channel} is not base64: {e}");
                        None
                    }
                }
            }
            _ => None,
        }
    }
}

/// The next message, `None` when the connection ends, fails or stays silent for `idle`.
pub(crate) async fn next_message<S>(source: &mut S, idle: Option<Duration>) -> Option<Message>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let next = source.next();
    let msg = match idle {
        Some(idle) => match tokio::time::timeout(idle, next).await {
            Ok(m) => m,
            Err(_) => {
                tracing::info!("websocket session idle for {idle:?}: closing it");
                return None;
            }
        },
        None => next.await,
    };
    msg?.ok()
}

pub(crate) enum WsOut {
    Msg(Message),
    /// Writes queued control replies (pongs) out.
    Flush,
}

/// Spawns the task that owns the sink. It ends when every sender is gone (after closing the
/// connection if no Close was sent) or the connection fails.
pub(crate) fn spawn_writer<T>(
    mut sink: SplitSink<WebSocketStream<T>, Message>,
) -> (mpsc::Sender<WsOut>, JoinHandle<()>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<WsOut>(32);
    let handle = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let r = match out {
                WsOut::Msg(m) => sink.send(m).await,
                WsOut::Flush => sink.flush().await,
            };
            if let Err(e) = r {
                tracing::debug!("websocket write failed: {e}");
                return;
            }
        }
        let _ = sink.close().await;
    });
    (tx, handle)
}

/// A normal-closure Close message.
pub(crate) fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// An output stream for the runtime whose bytes go out as messages on `channel`; the task ends
/// when the runtime drops or shuts down its end.
pub(crate) fn output(
    channel: u8,
    codec: Codec,
    out: mpsc::Sender<WsOut>,
) -> (OutputStream, JoinHandle<()>) {
    let (theirs, mut ours) = tokio::io::duplex(PIPE);
    let handle = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match ours.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out
                        .send(WsOut::Msg(codec.encode(channel, &buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    (Box::new(theirs), handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_channels_round_trip() {
        for codec in [
            Codec::for_protocol("v4.channel.k8s.io"),
            Codec::for_protocol("v4.base64.channel.k8s.io"),
        ] {
            let m = codec.encode(2, b"hello\xff");
            assert_eq!(codec.decode(&m), Some((2, b"hello\xff".to_vec())));
        }
        let b64 = Codec::for_protocol("base64.channel.k8s.io");
        assert_eq!(b64.encode(1, b"hi"), Message::text("1aGk="));
        assert_eq!(b64.decode(&Message::text("0!!!")), None);
        assert_eq!(
            Codec::for_protocol("").decode(&Message::binary(Vec::new())),
            None
        );
    }
}
