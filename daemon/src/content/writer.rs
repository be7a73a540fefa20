//! Ingest writers: append, hash, resume, commit by rename.

use super::{io_err, ContentError, ContentStore, Digest, Info, Result};
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::fs;
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

const DATA: &str = "data";
/// Where ingests go to be deleted, beside `ingest/` and `blobs/`.
pub(super) const TRASH: &str = "trash";
const REF: &str = "ref";
const TOTAL: &str = "total";

/// An in-progress ingest as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The expected size, if the writer was given one.
    pub total: Option<u64>,
    pub updated: DateTime<Utc>,
}

pub(super) async fn status(reference: &str, dir: &Path) -> Result<Option<IngestStatus>> {
    let data = dir.join(DATA);
    let meta = match fs::metadata(&data).await {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat", &data)(e)),
    };
    let total = fs::read_to_string(dir.join(TOTAL))
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(Some(IngestStatus {
        reference: reference.to_owned(),
        offset: meta.len(),
        total,
        updated: meta.modified().map(DateTime::from).unwrap_or_default(),
    }))
}

/// Writes one blob into the store. Implements [`AsyncWrite`]; [`Writer::write_all`] is the
/// same with a typed error.
///
/// The data file is `flock`ed for the writer's life (the lock is on the open file itself, so
/// it is held until the last in-flight write has finished, even if the writer is dropped
/// mid-write). Dropping a writer keeps what was written, to be resumed by the next
/// [`ContentStore::writer`] for the same ref; [`Writer::abort`] discards it.
pub struct Writer {
    store: ContentStore,
    reference: String,
    dir: PathBuf,
    file: fs::File,
    hasher: Sha256,
    offset: u64,
    expected: Option<(Digest, u64)>,
    poisoned: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("reference", &self.reference)
            .field("offset", &self.offset)
            .field("expected", &self.expected)
            .finish()
    }
}

/// Opens `dir/data`, creating the directory, and takes an exclusive non-blocking flock on it.
/// Retries when the file was committed or aborted between open and lock (its path then names
/// another file, or none).
pub(super) fn open_locked(reference: &str, dir: &Path) -> Result<std::fs::File> {
    let data = dir.join(DATA);
    for _ in 0..100 {
        match std::fs::create_dir_all(dir) {
            Ok(()) => {}
            // the directory was moved aside by a commit or abort while we created it
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating", dir)(e)),
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&data)
        {
            Ok(f) => f,
            // the directory was removed by a commit or abort in between
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("opening", &data)(e)),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(ContentError::RefLocked(reference.to_owned()));
            }
            return Err(io_err("locking", &data)(e));
        }
        let held = file.metadata().map_err(io_err("stat", &data))?;
        match std::fs::metadata(&data) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &data)(e)),
        }
    }
    Err(ContentError::RefLocked(reference.to_owned()))
}

/// Hashes what is in `file` from the start; returns the hasher and the length.
fn rehash(file: &mut std::fs::File, path: &Path) -> Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        hasher.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hasher, n))
}

impl Writer {
    pub(super) async fn open(
        store: ContentStore,
        reference: String,
        dir: PathBuf,
        expected: Option<(Digest, u64)>,
    ) -> Result<Writer> {
        let data = dir.join(DATA);
        let (r, d, exp) = (reference.clone(), dir.clone(), expected.clone());
        let (file, hasher, offset) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut file = open_locked(&r, &d)?;
            let (mut hasher, mut offset) = rehash(&mut file, &d.join(DATA))?;
            if let Some((_, size)) = &exp {
                if offset > *size {
                    warn!(reference = %r, offset, size, "ingest longer than expected, restarting it");
                    file.set_len(0).map_err(io_err("truncating", &d.join(DATA)))?;
                    hasher = Sha256::new();
                    offset = 0;
                }
            }
            std::fs::write(d.join(REF), &r).map_err(io_err("writing", &d.join(REF)))?;
            match &exp {
                Some((_, size)) => std::fs::write(d.join(TOTAL), size.to_string())
                    .map_err(io_err("writing", &d.join(TOTAL)))?,
                None => {
                    let _ = std::fs::remove_file(d.join(TOTAL));
                }
            }
            Ok((file, hasher, offset))
        })
        .await
        .map_err(|e| io_err("opening", &data)(io::Error::other(e)))??;
        if offset > 0 {
            debug!(%reference, offset, "resuming ingest");
        }
        let mut file = fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(io_err("seeking", &data))?;
        Ok(Writer {
            store,
            reference,
            dir,
            file,
            hasher,
            offset,
            expected,
            poisoned: false,
        })
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Bytes written so far (including those found on disk when resuming).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn expected(&self) -> Option<&(Digest, u64)> {
        self.expected.as_ref()
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    fn check_room(&self, len: usize) -> Result<()> {
        if self.poisoned {
            return Err(ContentError::Poisoned(self.reference.clone()));
        }
        match &self.expected {
            Some((_, size)) if self.offset + len as u64 > *size => {
                Err(ContentError::SizeExceeded {
                    reference: self.reference.clone(),
                    expected: *size,
                })
            }
            _ => Ok(()),
        }
    }

    /// Appends `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.check_room(buf.len())?;
        // a cancelled or failed write leaves the hash unknown: refuse further writes
        self.poisoned = true;
        let path = self.data_path();
        self.file
            .write_all(buf)
            .await
            .map_err(io_err("writing", &path))?;
        self.hasher.update(buf);
        self.offset += buf.len() as u64;
        self.poisoned = false;
        Ok(())
    }

    /// Throws away what was written and starts again from byte 0 (e.g. when a server ignored
    /// a range request and sends the whole blob).
    pub async fn restart(&mut self) -> Result<()> {
        let path = self.data_path();
        self.file.flush().await.map_err(io_err("flushing", &path))?;
        self.file
            .set_len(0)
            .await
            .map_err(io_err("truncating", &path))?;
        self.file
            .seek(io::SeekFrom::Start(0))
            .await
            .map_err(io_err("seeking", &path))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.poisoned = false;
        Ok(())
    }

    /// Checks size and digest against what the writer was opened with, fsyncs and renames the
    /// data into `blobs/`, and removes the ingest. On a mismatch the ingest is discarded and
    /// nothing is committed. A blob that is already in the store is not an error: the ingest
    /// is dropped and the existing blob's info returned.
    ///
    /// The checks, fsync, rename and cleanup run as one blocking task, so a caller cancelled
    /// meanwhile never leaves a half-done commit.
    pub async fn commit(self) -> Result<Info> {
        let Writer {
            store,
            reference,
            dir,
            mut file,
            hasher,
            offset,
            expected,
            poisoned,
        } = self;
        if poisoned {
            return Err(ContentError::Poisoned(reference));
        }
        let path = dir.join(DATA);
        file.flush().await.map_err(io_err("flushing", &path))?;
        let file = file.into_std().await;
        let actual = Digest::from_hasher(hasher);
        let target = store.blob_path(&actual);
        let (r, d) = (reference.clone(), actual.clone());
        tokio::task::spawn_blocking(move || {
            commit_blocking(file, &r, &dir, expected, d, offset, &target)
        })
        .await
        .map_err(|e| io_err("committing", &path)(io::Error::other(e)))??;
        store.info(&actual).await
    }

    /// Discards the ingest: its data and directory.
    pub async fn abort(self) -> Result<()> {
        let aside = move_aside(&self.dir)?;
        fs::remove_dir_all(&aside)
            .await
            .map_err(io_err("removing", &aside))?;
        debug!(reference = %self.reference, "aborted ingest");
        Ok(())
    }
}

/// Moves an ingest directory into `<root>/trash` before anything else touches it. Done under
/// the ref's lock: a writer that opens the same ref afterwards starts a fresh directory,
/// instead of creating its file in this one just before it is deleted.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let root = dir.parent().and_then(Path::parent).ok_or_else(|| {
        io_err("moving aside", dir)(io::Error::other("ingest dir has no store root"))
    })?;
    let to = root.join(TRASH).join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::rename(dir, &to).map_err(io_err("moving aside", dir))?;
    Ok(to)
}

pub(super) fn remove_ingest(reference: &str, dir: &Path) {
    let gone =
        move_aside(dir).and_then(|d| std::fs::remove_dir_all(&d).map_err(io_err("removing", &d)));
    if let Err(e) = gone {
        warn!(reference, dir = %dir.display(), error = %e, "removing ingest");
    }
}

fn commit_blocking(
    file: std::fs::File,
    reference: &str,
    dir: &Path,
    expected: Option<(Digest, u64)>,
    actual: Digest,
    size: u64,
    target: &Path,
) -> Result<()> {
    if let Some((digest, want)) = expected {
        if size != want {
            remove_ingest(reference, dir);
            return Err(ContentError::SizeMismatch {
                reference: reference.to_owned(),
                digest: digest.to_string(),
                expected: want,
                actual: size,
            });
        }
        if actual != digest {
            remove_ingest(reference, dir);
            return Err(ContentError::DigestMismatch {
                reference: reference.to_owned(),
                expected: digest,
                actual,
            });
        }
    }
    if target.exists() {
        debug!(reference, digest = %actual, "blob already committed");
        remove_ingest(reference, dir);
        return Ok(());
    }
    let dir = &move_aside(dir)?;
    let path = dir.join(DATA);
    file.sync_all().map_err(io_err("syncing", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(io_err("chmod", &path))?;
    std::fs::rename(&path, target).map_err(io_err("renaming into the store", &path))?;
    let blobs = target.parent().unwrap_or(target);
    std::fs::File::open(blobs)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", blobs))?;
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!(reference, dir = %dir.display(), error = %e, "removing committed ingest");
    }
    info!(reference, digest = %actual, size, "committed blob");
    Ok(())
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_room(buf.len()) {
            return Poll::Ready(Err(io::Error::other(e)));
        }
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.offset += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }
}
