//! SPDY/3.1 frames: the 8-byte frame header, the control frames a streaming session uses, and the
//! zlib-compressed name/value header blocks (one compression context per direction per connection,
//! primed with the spec's dictionary, each block ended with a sync flush).

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::dictionary::DICTIONARY;

pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;
pub const RST_STREAM_IN_USE: u32 = 8;

/// GOAWAY status codes.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Upper bound of a decompressed header block: streaming requests carry a handful of short
/// headers, so anything near this is an attack (a zlib bomb), not a request.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Header names (lower case, as SPDY/3 requires) and values (several values joined by NUL).
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame type this implementation does not use; the spec says to ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("spdy connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported spdy version {0} in a control frame (only 3 is spoken)")]
    Version(u16),
    #[error("malformed spdy {kind} frame: {what}")]
    Malformed { kind: &'static str, what: String },
    #[error("spdy header block does not decompress: {0}")]
    Compression(String),
}

fn malformed(kind: &'static str, what: impl Into<String>) -> FrameError {
    FrameError::Malformed {
        kind,
        what: what.into(),
    }
}

/// Compresses the header blocks one side sends on a connection.
pub struct HeaderEncoder {
    z: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&DICTIONARY)
            .expect("zlib accepts a dictionary on a fresh stream");
        HeaderEncoder { z }
    }

    pub fn encode(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::with_capacity(64);
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            pos += (self.z.total_in() - before) as usize;
            // Done once all input is taken and the flush left spare room (zlib's sync-flush
            // contract: output space left over means the flush completed).
            if pos == raw.len() && out.capacity() > out.len() {
                break;
            }
        }
        out
    }
}

/// Decompresses the header blocks the peer sends on a connection.
pub struct HeaderDecoder {
    z: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
        }
    }

    pub fn decode(&mut self, kind: &'static str, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate(block)?;
        parse_block(kind, &raw)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            let (in_before, out_before) = (self.z.total_in(), out.len());
            match self
                .z
                .decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Compression(
                        "the peer ended its header compression stream".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    pos += (self.z.total_in() - in_before) as usize;
                    self.z.set_dictionary(&DICTIONARY).map_err(|_| {
                        FrameError::Compression(
                            "the peer's header compression uses a dictionary other than spdy/3's"
                                .into(),
                        )
                    })?;
                    continue;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
            pos += (self.z.total_in() - in_before) as usize;
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::Compression(format!(
                    "header block inflates past {MAX_HEADER_BLOCK} bytes"
                )));
            }
            let progressed = out.len() > out_before || (self.z.total_in() - in_before) > 0;
            if pos >= block.len() && out.capacity() > out.len() {
                return Ok(out);
            }
            if !progressed {
                return Err(FrameError::Compression("header block is truncated".into()));
            }
        }
    }
}

fn parse_block(kind: &'static str, raw: &[u8]) -> Result<Headers, FrameError> {
    let mut r = raw;
    let take_u32 = |r: &mut &[u8]| -> Result<u32, FrameError> {
        if r.len() < 4 {
            return Err(malformed(kind, "header block ends inside a length"));
        }
        let v = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        *r = &r[4..];
        Ok(v)
    };
    let count = take_u32(&mut r)?;
    let mut headers = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        let field = |r: &mut &[u8]| -> Result<String, FrameError> {
            let len = take_u32(r)? as usize;
            if r.len() < len {
                return Err(malformed(kind, "header block ends inside a name or value"));
            }
            let s = String::from_utf8_lossy(&r[..len]).into_owned();
            *r = &r[len..];
            Ok(s)
        };
        let name = field(&mut r)?;
        let value = field(&mut r)?;
        if name.is_empty() {
            return Err(malformed(kind, "empty header name"));
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the next frame. `Ok(None)` is a clean end of the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut HeaderDecoder,
) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let flags = head[4];
    let len = (u32::from_be_bytes([0, head[5], head[6], head[7]])) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let payload = Bytes::from(payload);
    if head[0] & 0x80 == 0 {
        return Ok(Some(Frame::Data {
            stream_id: be32(&head[..4]) & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: payload,
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    let kind = u16::from_be_bytes([head[2], head[3]]);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let p = &payload[..];
    let need = |name: &'static str, n: usize| {
        if p.len() < n {
            Err(malformed(
                name,
                format!("{} bytes, at least {n} expected", p.len()),
            ))
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need("syn_stream", 10)?;
            Frame::SynStream {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                associated_to: be32(&p[4..8]) & 0x7fff_ffff,
                priority: p[8] >> 5,
                flags,
                headers: dec.decode("syn_stream", &p[10..])?,
            }
        }
        TYPE_SYN_REPLY => {
            need("syn_reply", 4)?;
            Frame::SynReply {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                headers: dec.decode("syn_reply", &p[4..])?,
            }
        }
        TYPE_HEADERS => {
            need("headers", 4)?;
            Frame::Headers {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                headers: dec.decode("headers", &p[4..])?,
            }
        }
        TYPE_RST_STREAM => {
            need("rst_stream", 8)?;
            Frame::RstStream {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                status: be32(&p[4..8]),
            }
        }
        TYPE_SETTINGS => {
            need("settings", 4)?;
            let n = be32(&p[0..4]) as usize;
            if p.len() < 4 + n.saturating_mul(8) {
                return Err(malformed(
                    "settings",
                    format!("{n} entries announced, fewer sent"),
                ));
            }
            let entries = (0..n)
                .map(|i| {
                    let e = &p[4 + i * 8..12 + i * 8];
                    let id_flags = be32(&e[0..4]);
                    (
                        (id_flags >> 24) as u8,
                        id_flags & 0x00ff_ffff,
                        be32(&e[4..8]),
                    )
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            need("ping", 4)?;
            Frame::Ping { id: be32(&p[0..4]) }
        }
        TYPE_GOAWAY => {
            need("goaway", 4)?;
            Frame::GoAway {
                last_good_stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                status: if p.len() >= 8 { be32(&p[4..8]) } else { 0 },
            }
        }
        TYPE_WINDOW_UPDATE => {
            need("window_update", 8)?;
            Frame::WindowUpdate {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                delta: be32(&p[4..8]) & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown { kind: other },
    };
    Ok(Some(frame))
}

fn control_head(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) {
    out.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
}

/// Appends the wire form of `frame` to `out`.
pub fn encode_frame(frame: &Frame, enc: &mut HeaderEncoder, out: &mut Vec<u8>) {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.push(if *fin { FLAG_FIN } else { 0 });
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers,
        } => {
            let block = enc.encode(headers);
            control_head(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&associated_to.to_be_bytes());
            out.push(priority << 5);
            out.push(0);
            out.extend_from_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        }
        | Frame::Headers {
            stream_id,
            fin,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = enc.encode(headers);
            control_head(out, kind, if *fin { FLAG_FIN } else { 0 }, 4 + block.len());
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control_head(out, TYPE_RST_STREAM, 0, 8);
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::Settings { flags, entries } => {
            control_head(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
            out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for (f, id, value) in entries {
                out.extend_from_slice(&(((*f as u32) << 24) | (id & 0x00ff_ffff)).to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
        Frame::Ping { id } => {
            control_head(out, TYPE_PING, 0, 4);
            out.extend_from_slice(&id.to_be_bytes());
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_head(out, TYPE_GOAWAY, 0, 8);
            out.extend_from_slice(&last_good_stream_id.to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_head(out, TYPE_WINDOW_UPDATE, 0, 8);
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
        }
        Frame::Unknown { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    async fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = HeaderEncoder::new();
        let mut wire = Vec::new();
        for f in frames {
            encode_frame(f, &mut enc, &mut wire);
        }
        let mut dec = HeaderDecoder::new();
        let mut r = &wire[..];
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut dec).await.unwrap() {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn every_frame_type_round_trips_with_a_shared_compression_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: headers(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", "stdin"), ("multi", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers: headers(&[("x", "y")]),
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: GOAWAY_OK,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536,
            },
        ];
        assert_eq!(roundtrip(&frames).await, frames);
    }

    #[tokio::test]
    async fn header_names_come_out_lower_case() {
        let got = roundtrip(&[Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: headers(&[("StreamType", "data")]),
        }])
        .await;
        assert_eq!(
            got,
            vec![Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: headers(&[("streamtype", "data")]),
            }]
        );
    }

    #[tokio::test]
    async fn a_wrong_version_is_a_clear_error() {
        let wire = [0x80u8, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        let err = read_frame(&mut &wire[..], &mut HeaderDecoder::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported spdy version 2 in a control frame (only 3 is spoken)"
        );
    }

    #[tokio::test]
    async fn garbage_header_blocks_are_rejected_not_trusted() {
        let mut wire = Vec::new();
        control_head(&mut wire, TYPE_SYN_REPLY, 0, 4 + 6);
        wire.extend_from_slice(&[0, 0, 0, 1, 1, 2, 3, 4, 5, 6]);
        let err = read_frame(&mut &wire[..], &mut HeaderDecoder::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spdy header block does not decompress"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_short_control_frame_is_malformed() {
        let mut wire = Vec::new();
        control_head(&mut wire, TYPE_RST_STREAM, 0, 4);
        wire.extend_from_slice(&[0, 0, 0, 1]);
        let err = read_frame(&mut &wire[..], &mut HeaderDecoder::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed spdy rst_stream frame: 4 bytes, at least 8 expected"
        );
    }
}
