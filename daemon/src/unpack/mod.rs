//! Applying an image layer (an OCI/Docker layer tar, gzip, zstd or plain) onto a directory.
//!
//! [`apply_layer`] streams the blob: it decompresses, computes the sha256 of the uncompressed
//! tar (the diff ID, to check against the image config's `rootfs.diff_ids`) and writes each
//! entry as it comes, never holding the layer in memory.
//!
//! # Confinement
//!
//! A layer is untrusted input; whatever it holds, nothing outside the destination is created,
//! changed, removed or linked to:
//!
//! - Entry names are cleaned lexically: empty and `.` components are dropped, a leading `/` is
//!   ignored (absolute names are relative to the destination), and a name whose `..`
//!   components climb above the destination is refused ([`UnpackError::PathEscapes`]); so is a
//!   hard link target that does.
//! - Parent directories are resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
//!   a symlink among the parents (one from this layer or already in the destination) is
//!   followed **as if the destination were the root**, the way `chroot` would and containerd
//!   does. A layer with `a -> /etc` then `a/passwd` writes `<dest>/etc/passwd`; `a -> ../..`
//!   stays at `<dest>`. Missing parents are created (`0755`, owned by the unpacking user).
//! - The final component is never followed: it is removed when present (a directory is only
//!   kept when the entry is a directory too) and created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, `mkdirat`, `symlinkat`, `mknodat` or `linkat` on the parent's descriptor;
//!   metadata goes through that descriptor or through `*at` calls with `AT_SYMLINK_NOFOLLOW`.
//! - Symlink targets are stored verbatim, never resolved at unpack time.
//! - A hard link's target is resolved the same way (parents inside the root, final component
//!   not followed), must exist and must not be a directory.
//! - Whiteouts resolve their parent the same way, so they delete (or mark) only inside the
//!   destination.
//! - Extended attributes from the layer are filtered ([`UnpackOptions::xattr_allowed`]);
//!   overlayfs' own (`trusted.overlay.*`, `user.overlay.*`) are never taken from a layer.
//!
//! The threat is the layer's content, not another process: the destination is a fresh
//! snapshot directory nothing else writes to while the layer is applied.
//!
//! # Failure
//!
//! On error the destination is left partly written: the caller must discard it, e.g. with
//! [`remove_dir_all`], which never follows a symlink. Limits ([`UnpackOptions`]) are checked
//! before the data is written, so a bomb fails early.

mod error;
mod fs;
mod stream;

pub use error::{Limit, UnpackError};
pub use fs::remove_dir_all;
pub use stream::Compression;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;
use stream::StreamState;
use tar::EntryType;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What the destination is, which decides what whiteouts become.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnpackMode {
    /// The upper directory of an overlayfs snapshot whose lower layers are the parent
    /// snapshots (and which starts empty): a whiteout `.wh.NAME` becomes an overlayfs
    /// whiteout (a 0/0 character device `NAME`), an opaque marker `.wh..wh..opq` sets
    /// `trusted.overlay.opaque=y` on its directory.
    #[default]
    Overlay,
    /// A plain directory holding the layers below (or nothing, for a first layer): a whiteout
    /// deletes its path, an opaque marker deletes what the directory held before this layer.
    Plain,
}

/// How to apply a layer: whiteout handling, ownership, extended attributes and limits.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub mode: UnpackMode,
    /// Give entries the uid/gid the layer says (needs root); otherwise they belong to the
    /// unpacking user. Default: whether the effective uid is 0.
    pub keep_ownership: bool,
    /// Apply `user.*` xattrs, `security.capability` (file capabilities) and POSIX ACLs.
    /// Default: yes.
    pub xattrs: bool,
    /// Apply other `security.*` xattrs (SELinux labels, IMA...). Default: no.
    pub security_xattrs: bool,
    /// Apply `trusted.*` xattrs other than overlayfs' own, which are never applied.
    /// Default: no.
    pub trusted_xattrs: bool,
    /// Most tar entries (whiteouts and directories included). Default: 10 million.
    pub max_entries: u64,
    /// Largest regular file, holes of sparse files included. Default: 64 GiB.
    pub max_file_size: u64,
    /// Most bytes of file content, all files together. Default: 64 GiB.
    pub max_total_bytes: u64,
    /// Largest uncompressed tar stream. Default: 80 GiB.
    pub max_tar_bytes: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            mode: UnpackMode::Overlay,
            keep_ownership: rustix::process::geteuid().is_root(),
            xattrs: true,
            security_xattrs: false,
            trusted_xattrs: false,
            max_entries: 10_000_000,
            max_file_size: 64 << 30,
            max_total_bytes: 64 << 30,
            max_tar_bytes: 80 << 30,
        }
    }
}

impl UnpackOptions {
    /// Options for `mode`, the rest default.
    pub fn new(mode: UnpackMode) -> UnpackOptions {
        UnpackOptions {
            mode,
            ..UnpackOptions::default()
        }
    }

    /// Whether an xattr named `name` found in the layer is applied.
    pub fn xattr_allowed(&self, name: &str) -> bool {
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            false
        } else if name.starts_with("user.")
            || name == "security.capability"
            || name == "system.posix_acl_access"
            || name == "system.posix_acl_default"
        {
            self.xattrs
        } else if name.starts_with("security.") {
            self.security_xattrs
        } else if name.starts_with("trusted.") {
            self.trusted_xattrs
        } else {
            false
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar: compare with the image config's
    /// `rootfs.diff_ids`.
    pub diff_id: String,
    /// The compression found.
    pub compression: Option<Compression>,
    /// Size of the blob read.
    pub compressed_bytes: u64,
    /// Size of the uncompressed tar.
    pub tar_bytes: u64,
    /// Tar entries seen, whatever they were.
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Character and block devices and FIFOs.
    pub devices: u64,
    /// Whiteouts and opaque markers.
    pub whiteouts: u64,
    /// Bytes of file content written (holes of sparse files included).
    pub file_bytes: u64,
}

/// Applies the layer `reader` yields onto `dest` (an existing directory), as `opts` says.
///
/// `compression` is what the layer's media type declares ([`Compression::from_media_type`])
/// and must match the blob's first bytes, or [`Compression::Auto`] to detect it. The blob is
/// streamed; its uncompressed tar's sha256 is returned as [`UnpackStats::diff_id`] once the
/// whole blob (trailer included) has been read and checked.
///
/// On error `dest` is partly written and must be discarded (see [`remove_dir_all`]).
pub fn apply_layer(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let started = Instant::now();
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Destination {
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let (stream, found, state) = stream::open(reader, compression, opts.max_tar_bytes)?;
    let mut u = Unpacker {
        root,
        opts,
        state,
        compression: found,
        stats: UnpackStats {
            compression: Some(found),
            ..UnpackStats::default()
        },
        dir_times: Vec::new(),
        layer_paths: HashSet::new(),
        buf: vec![0; 1 << 20],
    };
    let mut archive = tar::Archive::new(stream);
    {
        let entries = archive.entries().map_err(|e| u.classify(e, None))?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| u.classify(e, last.as_deref()))?;
            u.stats.entries += 1;
            let name = display(&entry.path_bytes());
            if u.stats.entries > opts.max_entries {
                return Err(UnpackError::LimitExceeded {
                    limit: Limit::Entries,
                    max: opts.max_entries,
                    path: Some(name),
                });
            }
            u.entry(&mut entry, &name)?;
            last = Some(name);
        }
    }
    u.set_dir_times()?;
    let (diff_id, tar_bytes) = archive
        .into_inner()
        .finish()
        .map_err(|e| u.classify(e, None))?;
    u.stats.diff_id = diff_id;
    u.stats.tar_bytes = tar_bytes;
    u.stats.compressed_bytes = u.state.compressed.get();
    tracing::debug!(
        dest = %dest.display(),
        diff_id = %u.stats.diff_id,
        entries = u.stats.entries,
        bytes = u.stats.tar_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "applied layer"
    );
    Ok(u.stats)
}

/// Lossy text of an entry name, for messages.
fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Splits `name` into the components of a path below the root: empty and `.` components
/// dropped, `..` applied, a leading `/` ignored. `None` when `..` climbs above the root.
fn clean(name: &[u8]) -> Option<Vec<&[u8]>> {
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop()?;
            }
            c => comps.push(c),
        }
    }
    Some(comps)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// Metadata of an entry, read from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

struct Unpacker<'o> {
    /// `O_PATH` descriptor of the destination.
    root: OwnedFd,
    opts: &'o UnpackOptions,
    state: Rc<StreamState>,
    compression: Compression,
    stats: UnpackStats,
    /// Directories whose times are set once everything is written.
    dir_times: Vec<(Vec<u8>, Timestamps)>,
    /// Plain mode: the paths this layer wrote (and their parents), which its whiteouts and
    /// opaque markers must not delete.
    layer_paths: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn classify(&self, e: io::Error, path: Option<&str>) -> UnpackError {
        stream::classify(
            e,
            &self.state,
            self.compression,
            self.opts.max_tar_bytes,
            self.stats.entries,
            path,
        )
    }

    fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &str) -> Result<(), UnpackError> {
        let raw_name = entry.path_bytes().into_owned();
        if raw_name.contains(&0) {
            return Err(UnpackError::InvalidName {
                path: name.to_owned(),
                reason: "it holds a NUL byte",
            });
        }
        let mut kind = entry.header().entry_type();
        // old tars mark directories by a trailing slash on a regular (type '\0') entry
        if entry.header().as_bytes()[156] == 0 && raw_name.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        if kind == EntryType::XGlobalHeader {
            tracing::debug!(entry = name, "skipping PAX global header");
            return Ok(());
        }
        let comps = clean(&raw_name).ok_or_else(|| UnpackError::PathEscapes {
            path: name.to_owned(),
        })?;
        let Some((&base, parent)) = comps.split_last() else {
            if kind == EntryType::Directory {
                tracing::debug!(entry = name, "skipping the root directory entry");
                return Ok(());
            }
            return Err(UnpackError::InvalidName {
                path: name.to_owned(),
                reason: "it names the root directory",
            });
        };

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(entry, parent, base, name);
        }

        let meta = self.meta(entry, name)?;
        let dir = self.parent_dir(parent, true, name)?.expect("created");
        let dir = dir.as_fd();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, dir, base, &meta, name)?
            }
            EntryType::Directory => {
                self.directory(dir, base, &meta, name)?;
                self.dir_times.push((join(&comps), meta.times()));
            }
            EntryType::Symlink => {
                let target = link_name(entry, name)?;
                self.clear(dir, base, false, name)?;
                rustix::fs::symlinkat(os(&target), dir, os(base))
                    .map_err(|e| UnpackError::io("creating symlink", name, e))?;
                self.node_meta(dir, base, &meta, false, name)?;
                self.stats.symlinks += 1;
            }
            EntryType::Link => self.hardlink(entry, dir, base, &comps, name)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let major = entry.header().device_major();
                        let minor = entry.header().device_minor();
                        let (Ok(Some(major)), Ok(Some(minor))) = (major, minor) else {
                            return Err(UnpackError::io(
                                "reading device numbers of",
                                name,
                                io::Error::from(io::ErrorKind::InvalidData),
                            ));
                        };
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                self.clear(dir, base, false, name)?;
                rustix::fs::mknodat(dir, os(base), ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| UnpackError::io("creating device node", name, e))?;
                self.node_meta(dir, base, &meta, true, name)?;
                self.stats.devices += 1;
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    path: name.to_owned(),
                    kind: format!("{other:?}"),
                })
            }
        }
        if self.opts.mode == UnpackMode::Plain {
            self.mark_layer_path(&comps);
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<R>, name: &str) -> Result<Meta, UnpackError> {
        let bad = |what: &'static str, e: io::Error| UnpackError::io(what, name, e);
        let h = entry.header();
        let mode = h.mode().map_err(|e| bad("reading mode of", e))? & 0o7777;
        let id = |v: io::Result<u64>, what: &'static str| -> Result<u32, UnpackError> {
            let v = v.map_err(|e| bad(what, e))?;
            u32::try_from(v).map_err(|_| bad(what, io::Error::from(io::ErrorKind::InvalidData)))
        };
        // empty numeric fields read as 0, as Go's archive/tar (docker, containerd) reads them
        let raw = h.as_bytes();
        let uid = id(lenient(h.uid(), &raw[108..116]), "reading uid of")?;
        let gid = id(lenient(h.gid(), &raw[116..124]), "reading gid of")?;
        let mtime = lenient(h.mtime(), &raw[136..148]).map_err(|e| bad("reading mtime of", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(mtime)
                .map_err(|_| bad("reading mtime of", io::ErrorKind::InvalidData.into()))?,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad("reading PAX records of", e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| bad("reading PAX records of", e))?;
                let Ok(key) = ext.key() else { continue };
                if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                } else if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                    if self.opts.xattr_allowed(xattr) {
                        xattrs.push((xattr.to_owned(), ext.value_bytes().to_vec()));
                    } else {
                        tracing::debug!(entry = name, xattr, "skipping xattr");
                    }
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens the parent directory `comps` below the root, creating missing components when
    /// `create` (otherwise a missing parent gives `None`).
    fn parent_dir(
        &self,
        comps: &[&[u8]],
        create: bool,
        name: &str,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let rel = join(comps);
        let not_dir = |prefix: &[u8]| UnpackError::NotADirectory {
            path: name.to_owned(),
            parent: display(prefix),
        };
        match fs::open_dir_in_root(self.root(), &rel) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                return if create { Err(not_dir(&rel)) } else { Ok(None) }
            }
            Err(e) => return Err(UnpackError::io("opening parent directory of", name, e)),
        }
        if !create {
            return Ok(None);
        }
        // create the missing components one by one, each in what its parent resolved to
        let mut cur = fs::open_dir_in_root(self.root(), b"")
            .map_err(|e| UnpackError::io("opening destination for", name, e))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match fs::open_dir_in_root(self.root(), &prefix) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                    return Err(not_dir(&prefix))
                }
                Err(e) => return Err(UnpackError::io("opening parent directory of", name, e)),
            }
            let c = os(comps[i]);
            match rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                // a dangling symlink: its target's parent is missing
                Err(Errno::EXIST) => return Err(not_dir(&prefix)),
                Err(e) => return Err(UnpackError::io("creating parent directory of", name, e)),
            }
            rustix::fs::chmodat(&cur, c, Mode::from_raw_mode(0o755), AtFlags::empty())
                .map_err(|e| UnpackError::io("setting mode of parent directory of", name, e))?;
            cur = rustix::fs::openat(
                &cur,
                c,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| UnpackError::io("opening parent directory of", name, e))?;
        }
        Ok(Some(cur))
    }

    /// Makes room for the entry `base` in `dir`: removes what is there, except a directory
    /// when `keep_dir`. Returns whether a directory was kept.
    fn clear(
        &self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        keep_dir: bool,
        name: &str,
    ) -> Result<bool, UnpackError> {
        match rustix::fs::statat(dir, os(base), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(UnpackError::io("inspecting", name, e)),
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && keep_dir {
                    return Ok(true);
                }
                fs::remove_tree_at(dir, base).map_err(|e| UnpackError::io("replacing", name, e))?;
                Ok(false)
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dir: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        let limit = |limit, max| UnpackError::LimitExceeded {
            limit,
            max,
            path: Some(name.to_owned()),
        };
        if size > self.opts.max_file_size {
            return Err(limit(Limit::FileSize, self.opts.max_file_size));
        }
        if self.stats.file_bytes.saturating_add(size) > self.opts.max_total_bytes {
            return Err(limit(Limit::TotalBytes, self.opts.max_total_bytes));
        }
        self.clear(dir, base, false, name)?;
        let fd = rustix::fs::openat(
            dir,
            os(base),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| UnpackError::io("creating", name, e))?;
        let mut file = File::from(fd);
        self.copy(entry, &mut file, size, name)?;
        self.stats.file_bytes += size;
        self.fd_meta(file.as_fd(), meta, name)?;
        rustix::fs::futimens(&file, &meta.times())
            .map_err(|e| UnpackError::io("setting times of", name, e))?;
        self.stats.files += 1;
        Ok(())
    }

    /// Copies `size` bytes of the entry to `file`, seeking over blocks of zeros (holes).
    fn copy(
        &mut self,
        entry: &mut impl Read,
        file: &mut File,
        size: u64,
        name: &str,
    ) -> Result<(), UnpackError> {
        let mut done = 0u64;
        let mut hole = false;
        while done < size {
            let want = (size - done).min(self.buf.len() as u64) as usize;
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(UnpackError::Truncated {
                        path: Some(name.to_owned()),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.classify(e, Some(name))),
            };
            let chunk = &self.buf[..n];
            if is_zero(chunk) {
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(|e| UnpackError::io("writing", name, e))?;
                hole = true;
            } else {
                file.write_all(chunk)
                    .map_err(|e| UnpackError::io("writing", name, e))?;
                hole = false;
            }
            done += n as u64;
        }
        if hole {
            file.set_len(size)
                .map_err(|e| UnpackError::io("writing", name, e))?;
        }
        Ok(())
    }

    fn directory(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if !self.clear(dir, base, true, name)? {
            rustix::fs::mkdirat(dir, os(base), Mode::from_raw_mode(0o700))
                .map_err(|e| UnpackError::io("creating directory", name, e))?;
        }
        let fd = fs::open_subdir(dir, base)
            .map_err(|e| UnpackError::io("opening directory", name, e))?;
        self.fd_meta(fd.as_fd(), meta, name)?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// Owner, mode and xattrs through a descriptor of the new file or directory.
    fn fd_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        // chown clears set-id bits and capabilities: owner first, then mode, then xattrs
        if self.opts.keep_ownership {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| UnpackError::io("setting owner of", name, e))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| UnpackError::io("setting mode of", name, e))?;
        for (key, value) in &meta.xattrs {
            let r = rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty());
            xattr_result(r, key, name)?;
        }
        Ok(())
    }

    /// Owner, mode (unless a symlink), xattrs and times of the node `base` in `dir`, never
    /// following it.
    fn node_meta(
        &self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        set_mode: bool,
        name: &str,
    ) -> Result<(), UnpackError> {
        if self.opts.keep_ownership {
            rustix::fs::chownat(
                dir,
                os(base),
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| UnpackError::io("setting owner of", name, e))?;
        }
        if set_mode {
            // `base` was just made by mknodat: it is no symlink, so following is moot
            rustix::fs::chmodat(
                dir,
                os(base),
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| UnpackError::io("setting mode of", name, e))?;
        }
        if !meta.xattrs.is_empty() {
            // our own descriptor of the parent, then `base` not followed
            let mut path =
                format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
            path.extend_from_slice(base);
            for (key, value) in &meta.xattrs {
                let r = rustix::fs::lsetxattr(os(&path), key.as_str(), value, XattrFlags::empty());
                xattr_result(r, key, name)?;
            }
        }
        rustix::fs::utimensat(dir, os(base), &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| UnpackError::io("setting times of", name, e))?;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dir: BorrowedFd<'_>,
        base: &[u8],
        comps: &[&[u8]],
        name: &str,
    ) -> Result<(), UnpackError> {
        let target = link_name(entry, name)?;
        let target_name = display(&target);
        let fail = |reason: String| UnpackError::Hardlink {
            path: name.to_owned(),
            target: target_name.clone(),
            reason,
        };
        let tcomps = clean(&target).ok_or_else(|| fail("target escapes the destination".into()))?;
        let Some((&tbase, tparent)) = tcomps.split_last() else {
            return Err(fail("target is the root directory".into()));
        };
        if tcomps == comps {
            tracing::debug!(entry = name, "skipping hard link to itself");
            return Ok(());
        }
        let tdir = self
            .parent_dir(tparent, false, name)?
            .ok_or_else(|| fail("target does not exist".into()))?;
        match rustix::fs::statat(&tdir, os(tbase), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(fail("target is a directory".into()))
            }
            Ok(_) => {}
            Err(Errno::NOENT) => return Err(fail("target does not exist".into())),
            Err(e) => return Err(fail(format!("inspecting target: {}", io::Error::from(e)))),
        }
        self.clear(dir, base, false, name)?;
        // flags 0: a symlink target is linked itself, not followed
        rustix::fs::linkat(&tdir, os(tbase), dir, os(base), AtFlags::empty())
            .map_err(|e| UnpackError::io("creating hard link", name, e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parent: &[&[u8]],
        base: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        if base == WHITEOUT_OPAQUE {
            return self.opaque(parent, name);
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            tracing::debug!(entry = name, "skipping AUFS metadata");
            return Ok(());
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::InvalidName {
                path: name.to_owned(),
                reason: "whiteout of nothing",
            });
        }
        match self.opts.mode {
            UnpackMode::Overlay => {
                let dir = self.parent_dir(parent, true, name)?.expect("created");
                match rustix::fs::statat(&dir, os(hidden), AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => {}
                    Ok(_) => {
                        // a whiteout hides the lower layers, not an entry of its own layer
                        tracing::debug!(entry = name, "whiteout of an entry of its own layer");
                        return Ok(());
                    }
                    Err(e) => return Err(UnpackError::io("inspecting", name, e)),
                }
                rustix::fs::mknodat(
                    &dir,
                    os(hidden),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| UnpackError::io("creating whiteout", name, e))?;
                if self.opts.keep_ownership {
                    let meta = self.meta(entry, name)?;
                    rustix::fs::chownat(
                        &dir,
                        os(hidden),
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| UnpackError::io("setting owner of", name, e))?;
                }
            }
            UnpackMode::Plain => {
                let mut path = parent.to_vec();
                path.push(hidden);
                if self.layer_paths.contains(&join(&path)) {
                    tracing::debug!(entry = name, "whiteout of an entry of its own layer");
                    return Ok(());
                }
                if let Some(dir) = self.parent_dir(parent, false, name)? {
                    fs::remove_tree_at(dir.as_fd(), hidden)
                        .map_err(|e| UnpackError::io("applying whiteout", name, e))?;
                }
            }
        }
        Ok(())
    }

    fn opaque(&mut self, dir_comps: &[&[u8]], name: &str) -> Result<(), UnpackError> {
        match self.opts.mode {
            UnpackMode::Overlay => {
                let dir = self.parent_dir(dir_comps, true, name)?.expect("created");
                let dir = fs::open_subdir(dir.as_fd(), b".")
                    .map_err(|e| UnpackError::io("opening opaque directory", name, e))?;
                rustix::fs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| UnpackError::io("marking directory opaque", name, e))?;
            }
            UnpackMode::Plain => {
                let Some(dir) = self.parent_dir(dir_comps, false, name)? else {
                    return Ok(());
                };
                let dir = fs::open_subdir(dir.as_fd(), b".")
                    .map_err(|e| UnpackError::io("opening opaque directory", name, e))?;
                self.prune(dir.as_fd(), &join(dir_comps))
                    .map_err(|e| UnpackError::io("applying opaque whiteout", name, e))?;
            }
        }
        Ok(())
    }

    /// Plain mode: removes what is under `dir` (the path `rel`) but not from this layer.
    fn prune(&self, dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        for child in fs::list_dir(dir)? {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&child);
            if !self.layer_paths.contains(&path) {
                fs::remove_tree_at(dir, &child)?;
                continue;
            }
            let st = rustix::fs::statat(dir, os(&child), AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let sub = fs::open_subdir(dir, &child)?;
                self.prune(sub.as_fd(), &path)?;
            }
        }
        Ok(())
    }

    fn mark_layer_path(&mut self, comps: &[&[u8]]) {
        for i in (1..=comps.len()).rev() {
            if !self.layer_paths.insert(join(&comps[..i])) {
                break;
            }
        }
    }

    /// Sets the times of the layer's directories, now that their contents are written.
    fn set_dir_times(&mut self) -> Result<(), UnpackError> {
        for (rel, times) in std::mem::take(&mut self.dir_times) {
            let comps = clean(&rel).expect("cleaned before");
            let (&base, parent) = comps.split_last().expect("not the root");
            let name = display(&rel);
            let Some(dir) = self.parent_dir(parent, false, &name)? else {
                continue;
            };
            match rustix::fs::statat(&dir, os(base), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                // replaced later in the layer
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(UnpackError::io("inspecting", &name, e)),
            }
            rustix::fs::utimensat(&dir, os(base), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| UnpackError::io("setting times of", &name, e))?;
        }
        Ok(())
    }
}

fn link_name<R: Read>(entry: &tar::Entry<R>, name: &str) -> Result<Vec<u8>, UnpackError> {
    let target: Option<Cow<[u8]>> = entry.link_name_bytes();
    match target {
        Some(t) if !t.is_empty() && !t.contains(&0) => Ok(t.into_owned()),
        _ => Err(UnpackError::InvalidName {
            path: name.to_owned(),
            reason: "link target is empty or holds a NUL byte",
        }),
    }
}

/// `v`, or 0 when the header field `raw` it was parsed from is empty.
fn lenient(v: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match v {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        v => v,
    }
}

fn xattr_result(r: rustix::io::Result<()>, key: &str, name: &str) -> Result<(), UnpackError> {
    match r {
        Ok(()) => Ok(()),
        // the filesystem has no xattrs, or none of this kind on this type of file
        Err(Errno::OPNOTSUPP) | Err(Errno::PERM) => {
            tracing::warn!(
                entry = name,
                xattr = key,
                "xattr not supported here, skipped"
            );
            Ok(())
        }
        Err(e) => Err(UnpackError::io("setting xattr of", name, e)),
    }
}

/// `mtime` PAX value: seconds, optionally with a fraction.
fn parse_pax_time(v: &str) -> Option<Timespec> {
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let tv_sec: i64 = sec.parse().ok()?;
    let mut nsec: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nsec = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
        if tv_sec < 0 && nsec > 0 {
            return Some(Timespec {
                tv_sec: tv_sec - 1,
                tv_nsec: (1_000_000_000 - nsec) as _,
            });
        }
    }
    Some(Timespec {
        tv_sec,
        tv_nsec: nsec as _,
    })
}

fn is_zero(buf: &[u8]) -> bool {
    if buf.first().is_some_and(|&b| b != 0) {
        return false;
    }
    let words = buf.chunks_exact(16);
    let tail = words.remainder();
    words
        .map(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names() {
        let c = |s: &str| clean(s.as_bytes()).map(|v| display(&join(&v)));
        assert_eq!(c("a/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(c("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(c("./a//./b/").as_deref(), Some("a/b"));
        assert_eq!(c("a/../b").as_deref(), Some("b"));
        assert_eq!(c("./").as_deref(), Some(""));
        assert_eq!(c("../x"), None);
        assert_eq!(c("a/../../x"), None);
        assert_eq!(c("/../x"), None);
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1700000000, 500_000_000));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        assert!(parse_pax_time("x").is_none());
    }

    #[test]
    fn zeros() {
        assert!(is_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert!(Compression::from_media_type("text/plain").is_err());
    }
}
