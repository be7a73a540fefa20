//! The content store: blobs addressed by digest, as in containerd's local store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      committed blobs, read-only, never modified
//! <root>/ingest/<sha256(ref)>/   one directory per ingest (in-progress write)
//!     data                       the bytes written so far (flock'ed by its writer)
//!     ref                        the ingest's ref, for listing
//!     total                      the expected size, if known
//! ```
//!
//! A [`Writer`] appends to `ingest/…/data`, hashing as it goes; opening the same ref again
//! resumes from the bytes on disk (re-hashing them). [`Writer::commit`] checks size and digest,
//! fsyncs and renames the file into `blobs/` — the only way a blob appears there — so a
//! mismatch never lands a blob. The ingest directory is named by the sha256 of the ref, as
//! containerd does, so any ref string is safe as a path.
//!
//! Labels (`containerd.io/gc.ref.*`, distribution sources) and GC roots are not kept here:
//! they belong in the metadata DB, which will reference blobs by digest. Until then nothing
//! is garbage collected; [`ContentStore::delete`] removes a blob unconditionally.

mod digest;
mod writer;

pub use digest::{Digest, InvalidDigest};
pub use writer::{IngestStatus, Writer};

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use tokio::fs;
use tracing::debug;

/// Errors of the content store. Each names the digest, ref or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),
    #[error("invalid ingest ref {0:?}: must be non-empty and at most 1024 bytes")]
    InvalidRef(String),
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("ingest ref {0:?} is locked by another writer")]
    RefLocked(String),
    #[error("digest mismatch in ingest {reference:?}: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "size mismatch in ingest {reference:?} for {digest}: expected {expected} bytes, got {actual}"
    )]
    SizeMismatch {
        reference: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("ingest {reference:?} exceeds its expected size of {expected} bytes")]
    SizeExceeded { reference: String, expected: u64 },
    #[error("writer for ingest {0:?} is unusable after an earlier error")]
    Poisoned(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = ContentError> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError {
    let path = path.to_owned();
    move |source| ContentError::Io { op, path, source }
}

/// What the store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    /// When it was committed (the file's modification time).
    pub created: DateTime<Utc>,
}

/// A content store rooted at a directory. Cheap to clone; all state is on disk, so several
/// handles (or processes) on one root agree.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<ContentStore> {
        let store = ContentStore { root: root.into() };
        for dir in [
            store.blobs_dir(),
            store.ingest_root(),
            store.root.join(writer::TRASH),
        ] {
            fs::create_dir_all(&dir)
                .await
                .map_err(io_err("creating", &dir))?;
        }
        store.empty_trash().await;
        Ok(store)
    }

    /// Removes ingests moved aside by processes that died before deleting them (the entries
    /// are named `<pid>-<n>`; those of live processes are theirs to remove).
    async fn empty_trash(&self) {
        let trash = self.root.join(writer::TRASH);
        let Ok(mut entries) = fs::read_dir(&trash).await else {
            return;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path()).await;
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join(digest::SHA256)
    }

    fn ingest_root(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where a committed blob lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// The directory of the ingest `reference`.
    fn ingest_dir(&self, reference: &str) -> Result<PathBuf> {
        if reference.is_empty() || reference.len() > 1024 {
            return Err(ContentError::InvalidRef(reference.to_owned()));
        }
        let name = hex::encode(Sha256::digest(reference.as_bytes()));
        Ok(self.ingest_root().join(name))
    }

    /// Size and commit time of a blob; [`ContentError::NotFound`] if absent.
    pub async fn info(&self, digest: &Digest) -> Result<Info> {
        let path = self.blob_path(digest);
        let meta = match fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        Ok(Info {
            digest: digest.clone(),
            size: meta.len(),
            created: meta.modified().map(DateTime::from).unwrap_or_default(),
        })
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        match self.info(digest).await {
            Ok(_) => Ok(true),
            Err(ContentError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An open read-only file of the blob (it implements `AsyncRead` and `AsyncSeek`).
    pub async fn reader(&self, digest: &Digest) -> Result<fs::File> {
        let path = self.blob_path(digest);
        match fs::File::open(&path).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("opening", &path)(e)),
        }
    }

    /// The whole blob in memory (for manifests and configs, not layers).
    pub async fn read_all(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        match fs::read(&path).await {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Removes a blob; [`ContentError::NotFound`] if it is not there.
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path).await {
            Ok(()) => {
                debug!(%digest, "deleted blob");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Every committed blob, sorted by digest. Files in `blobs/sha256` whose names are not
    /// digests are skipped.
    pub async fn list(&self) -> Result<Vec<Info>> {
        let dir = self.blobs_dir();
        let mut entries = fs::read_dir(&dir).await.map_err(io_err("listing", &dir))?;
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err("listing", &dir))?
        {
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|hex| Digest::parse(&format!("{}:{hex}", digest::SHA256)).ok())
            else {
                continue;
            };
            match self.info(&digest).await {
                Ok(info) => out.push(info),
                Err(ContentError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Opens the ingest `reference` for writing, creating it or resuming it from the bytes
    /// already on disk. `expected` is the digest and size the content must have; with it, the
    /// writer refuses bytes past the size and [`Writer::commit`] checks both.
    ///
    /// Fails with [`ContentError::RefLocked`] while another writer (in any process) has the
    /// same ref open. Different refs for the same digest are independent; the second commit
    /// finds the blob there and succeeds.
    pub async fn writer(&self, reference: &str, expected: Option<(Digest, u64)>) -> Result<Writer> {
        let dir = self.ingest_dir(reference)?;
        Writer::open(self.clone(), reference.to_owned(), dir, expected).await
    }

    /// The state of an ingest, or `None` if there is none for `reference`.
    pub async fn ingest_status(&self, reference: &str) -> Result<Option<IngestStatus>> {
        let dir = self.ingest_dir(reference)?;
        writer::status(reference, &dir).await
    }

    /// Discards the ingest `reference` (its partial data), if any. Fails with
    /// [`ContentError::RefLocked`] while a writer holds it.
    pub async fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(reference)?;
        if fs::metadata(&dir).await.is_err() {
            return Ok(());
        }
        let r = reference.to_owned();
        tokio::task::spawn_blocking(move || {
            let _lock = writer::open_locked(&r, &dir)?;
            let aside = writer::move_aside(&dir)?;
            std::fs::remove_dir_all(&aside).map_err(io_err("removing", &aside))?;
            debug!(reference = %r, "aborted ingest");
            Ok(())
        })
        .await
        .map_err(|e| io_err("aborting", self.ingest_root().as_path())(io::Error::other(e)))?
    }
}
