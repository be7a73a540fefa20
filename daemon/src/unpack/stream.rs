//! The layer blob as a tar stream: decompression (detected or declared), the sha256 of the
//! uncompressed tar (the diff ID) and the uncompressed size limit.

use super::error::{Limit, UnpackError};
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

/// Size of the buffers on both sides of the decompressor.
const BUF_SIZE: usize = 1 << 20;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Detect from the first bytes: gzip and zstd have magic numbers, anything else is taken
    /// for a plain tar.
    Auto,
    /// A plain tar.
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Auto => "auto-detected",
            Compression::None => "an uncompressed tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The compression an OCI or Docker layer media type declares.
    pub fn from_media_type(media_type: &str) -> Result<Compression, UnpackError> {
        Ok(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => return Err(UnpackError::UnsupportedMediaType(other.to_owned())),
        })
    }

    fn detect(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What went wrong below the tar reader, for telling a broken gzip from a broken tar.
#[derive(Default)]
pub(crate) struct StreamState {
    /// The decompressor (or the blob reader) failed: its error kind and message.
    pub failed: Cell<Option<(io::ErrorKind, String)>>,
    /// The uncompressed stream went past `max_tar_bytes`.
    pub too_large: Cell<bool>,
    /// The uncompressed stream ended.
    pub eof: Cell<bool>,
    /// Bytes read from the blob.
    pub compressed: Cell<u64>,
}

/// Counts the bytes of the blob.
struct Counting<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state
            .compressed
            .set(self.state.compressed.get() + n as u64);
        Ok(n)
    }
}

/// The uncompressed tar: hashes and counts what goes through it, enforces the size limit and
/// notes failures of the layers below.
pub(crate) struct TarStream<'r> {
    inner: BufReader<Box<dyn Read + 'r>>,
    hasher: Sha256,
    bytes: u64,
    max: u64,
    state: Rc<StreamState>,
}

impl Read for TarStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.state.failed.set(Some((e.kind(), e.to_string())));
                return Err(e);
            }
        };
        if n == 0 && !buf.is_empty() {
            self.state.eof.set(true);
        }
        self.bytes += n as u64;
        if self.bytes > self.max {
            self.state.too_large.set(true);
            return Err(io::Error::other("uncompressed layer size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl TarStream<'_> {
    /// Reads what is left (the end-of-archive blocks, padding, the compressor's trailer, which
    /// is only checked once read) and returns the diff ID and the tar's size.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((digest, self.bytes))
    }
}

/// Opens the blob: checks or detects its compression and returns the tar stream, the
/// compression found and the shared state.
pub(crate) fn open<'r>(
    reader: impl Read + 'r,
    declared: Compression,
    max_tar_bytes: u64,
) -> Result<(TarStream<'r>, Compression, Rc<StreamState>), UnpackError> {
    let state = Rc::new(StreamState::default());
    let mut input = BufReader::with_capacity(
        BUF_SIZE,
        Counting {
            inner: reader,
            state: state.clone(),
        },
    );
    // the first bytes tell the compression; read them whole even from a pipe
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Read(e)),
        }
    }
    let found = Compression::detect(&head[..n]);
    let input = io::Cursor::new(head[..n].to_vec()).chain(input);
    finish_open(Box::new(input), found, declared, max_tar_bytes, state)
}

fn finish_open<'r>(
    input: Box<dyn BufRead + 'r>,
    found: Compression,
    declared: Compression,
    max_tar_bytes: u64,
    state: Rc<StreamState>,
) -> Result<(TarStream<'r>, Compression, Rc<StreamState>), UnpackError> {
    if declared != Compression::Auto && declared != found {
        return Err(UnpackError::CompressionMismatch {
            expected: declared,
            found,
        });
    }
    let decoder: Box<dyn Read + 'r> = match found {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(
            |source| UnpackError::Decompress {
                compression: Compression::Zstd,
                source,
            },
        )?),
        Compression::None | Compression::Auto => Box::new(input),
    };
    let stream = TarStream {
        inner: BufReader::with_capacity(BUF_SIZE, decoder),
        hasher: Sha256::new(),
        bytes: 0,
        max: max_tar_bytes,
        state: state.clone(),
    };
    Ok((stream, found, state))
}

/// Turns an error of the tar reader into the error of the layer below it when that is where
/// it came from.
pub(crate) fn classify(
    e: io::Error,
    state: &StreamState,
    compression: Compression,
    max_tar_bytes: u64,
    entries: u64,
    path: Option<&str>,
) -> UnpackError {
    if state.too_large.get() {
        return UnpackError::LimitExceeded {
            limit: Limit::TarBytes,
            max: max_tar_bytes,
            path: path.map(str::to_owned),
        };
    }
    if let Some((kind, msg)) = state.failed.take() {
        return if compression == Compression::None {
            UnpackError::Read(io::Error::new(kind, msg))
        } else {
            UnpackError::Decompress {
                compression,
                source: io::Error::new(kind, msg),
            }
        };
    }
    if state.eof.get() || e.kind() == io::ErrorKind::UnexpectedEof {
        return UnpackError::Truncated {
            path: path.map(str::to_owned),
        };
    }
    UnpackError::Tar { entries, source: e }
}
