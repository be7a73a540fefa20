//! The unpacker's errors.

use super::Compression;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Which of the [`super::UnpackOptions`] limits a layer went past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_entries`: number of tar entries.
    Entries,
    /// `max_file_size`: size of one regular file (holes of a sparse file included).
    FileSize,
    /// `max_total_bytes`: bytes of file content, all files together.
    TotalBytes,
    /// `max_tar_bytes`: size of the uncompressed tar stream.
    TarBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Entries => "entry count",
            Limit::FileSize => "file size",
            Limit::TotalBytes => "total file size",
            Limit::TarBytes => "uncompressed layer size",
        })
    }
}

/// Why a layer could not be applied. The destination is then partly written and must be
/// discarded by the caller (see [`super::remove_dir_all`]).
///
/// `path` fields are the entry's name as the tar gives it (lossily decoded), relative to the
/// destination.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("opening destination {}: {source}", path.display())]
    Destination { path: PathBuf, source: io::Error },

    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),

    #[error("layer is not {expected}: its first bytes are those of {found}")]
    CompressionMismatch {
        expected: Compression,
        found: Compression,
    },

    #[error("reading layer: {0}")]
    Read(#[source] io::Error),

    #[error("decompressing {compression} layer: {source}")]
    Decompress {
        compression: Compression,
        source: io::Error,
    },

    #[error("layer tar is truncated{}", in_entry(path))]
    Truncated { path: Option<String> },

    #[error("invalid layer tar after {entries} entries: {source}")]
    Tar { entries: u64, source: io::Error },

    #[error("{limit} limit of {max} exceeded{}", in_entry(path))]
    LimitExceeded {
        limit: Limit,
        max: u64,
        path: Option<String>,
    },

    #[error("{path}: path escapes the destination directory")]
    PathEscapes { path: String },

    #[error("{path}: invalid entry name: {reason}")]
    InvalidName { path: String, reason: &'static str },

    #[error("{path}: parent {parent} is not a directory")]
    NotADirectory { path: String, parent: String },

    #[error("{path}: hard link to {target}: {reason}")]
    Hardlink {
        path: String,
        target: String,
        reason: String,
    },

    #[error("{path}: unsupported tar entry type {kind}")]
    UnsupportedEntry { path: String, kind: String },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

fn in_entry(path: &Option<String>) -> String {
    match path {
        Some(p) => format!(" in entry {p}"),
        None => String::new(),
    }
}

impl UnpackError {
    pub(crate) fn io(op: &'static str, path: &str, source: impl Into<io::Error>) -> UnpackError {
        UnpackError::Io {
            op,
            path: path.to_owned(),
            source: source.into(),
        }
    }
}
