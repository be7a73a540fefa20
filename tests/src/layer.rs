//! Image layers: deterministic tars of a directory, hand-made (possibly hostile) tars, and
//! their compressed blobs.
//!
//! [`TarBuilder`] writes entry names exactly as given, without the checks `tar::Builder`
//! makes, so tests can craft `..` paths, absolute paths, symlink and hard-link escapes,
//! whiteouts and device nodes.

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use tar::{EntryType, Header};

/// The mtime of every entry [`TarBuilder`] writes unless told otherwise (the epoch), so the
/// same content always gives the same tar.
pub const FIXED_MTIME: u64 = 0;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// How a layer's tar is stored in its blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// The plain tar.
    None,
    /// gzip, what registries and `docker save` tooling expect; the default.
    #[default]
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
}

impl Compression {
    /// Compresses `tar`; deterministic (gzip header mtime 0, fixed levels).
    pub fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(tar)?;
                enc.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar, 3).context("zstd compression")?,
        })
    }

    /// Undoes [`Compression::compress`].
    pub fn decompress(self, blob: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Compression::None => blob.to_vec(),
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(blob)
                    .read_to_end(&mut out)
                    .context("gunzip")?;
                out
            }
            Compression::Zstd => zstd::decode_all(blob).context("zstd decompression")?,
        })
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::image::OCI_LAYER,
            Compression::Gzip => crate::image::OCI_LAYER_GZIP,
            Compression::Zstd => crate::image::OCI_LAYER_ZSTD,
        }
    }

    /// The Docker schema 2 layer media type (Docker has none for zstd: the OCI one is used).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::image::DOCKER_LAYER,
            Compression::Gzip => crate::image::DOCKER_LAYER_GZIP,
            Compression::Zstd => crate::image::OCI_LAYER_ZSTD,
        }
    }
}

/// One layer: its blob as pushed and stored, and the digest of the uncompressed tar.
///
/// Fields are public so tests can break them on purpose (a wrong `diff_id`, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The media type the manifest gives it; [`crate::ImageBuilder`] rewrites the standard
    /// OCI/Docker layer types to the image's [`crate::Format`] and leaves others alone.
    pub media_type: String,
    /// `sha256:` digest of `data`.
    pub digest: String,
    /// The blob: the tar, compressed as `compression` says.
    pub data: Vec<u8>,
    /// `sha256:` digest of the uncompressed tar, as in the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub compression: Compression,
}

impl Layer {
    /// A layer from a complete tar stream (e.g. [`TarBuilder::finish`]), compressed as asked.
    pub fn from_tar(tar: &[u8], compression: Compression) -> Result<Layer> {
        let data = compression.compress(tar)?;
        Ok(Layer {
            media_type: compression.oci_media_type().to_owned(),
            digest: sha256_digest(&data),
            diff_id: sha256_digest(tar),
            data,
            compression,
        })
    }

    /// A layer holding the tree under `dir`, as [`tar_dir`] writes it.
    pub fn from_dir(dir: &Path, compression: Compression) -> Result<Layer> {
        Layer::from_tar(&tar_dir(dir)?, compression)
    }

    /// Size of the blob in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        self.compression.decompress(&self.data)
    }
}

/// A deterministic tar of the tree under `dir` (which is not itself an entry): entries
/// sorted by name, parents first, mtime [`FIXED_MTIME`], uid/gid 0, directories named with
/// a trailing `/`, hard links kept as links to the first name seen, and symlinks, FIFOs and
/// device nodes as they are. Sockets are skipped.
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut tb = TarBuilder::new();
    let mut inodes = HashMap::new();
    walk(dir, &mut Vec::new(), &mut tb, &mut inodes)?;
    Ok(tb.finish())
}

fn walk(
    root: &Path,
    rel: &mut Vec<u8>,
    tb: &mut TarBuilder,
    inodes: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    let here = root.join(std::ffi::OsStr::from_bytes(rel));
    let mut names: Vec<_> = fs::read_dir(&here)
        .with_context(|| format!("reading {}", here.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let len = rel.len();
        rel.extend_from_slice(name.as_bytes());
        let path = root.join(std::ffi::OsStr::from_bytes(rel));
        let md = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        if ft.is_dir() {
            rel.push(b'/');
            tb.raw(EntryType::Directory, rel, None, mode, &[], 0, 0);
            walk(root, rel, tb, inodes)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            tb.raw(
                EntryType::Symlink,
                rel,
                Some(target.as_os_str().as_bytes()),
                0o777,
                &[],
                0,
                0,
            );
        } else if md.nlink() > 1 && inodes.contains_key(&(md.dev(), md.ino())) {
            let first = inodes[&(md.dev(), md.ino())].clone();
            tb.raw(EntryType::Link, rel, Some(&first), mode, &[], 0, 0);
        } else if ft.is_file() {
            if md.nlink() > 1 {
                inodes.insert((md.dev(), md.ino()), rel.clone());
            }
            let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            tb.raw(EntryType::Regular, rel, None, mode, &data, 0, 0);
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let rdev = md.rdev();
            tb.raw(
                kind,
                rel,
                None,
                mode,
                &[],
                libc::major(rdev),
                libc::minor(rdev),
            );
        } else if ft.is_fifo() {
            tb.raw(EntryType::Fifo, rel, None, mode, &[], 0, 0);
        }
        rel.truncate(len);
    }
    Ok(())
}

/// Builds a tar stream entry by entry, writing names and link targets byte for byte: nothing
/// is normalised or refused, so `../x`, `/etc/x` and links out of the root are possible.
///
/// ```
/// let tar = rtest::TarBuilder::new()
///     .dir("etc/", 0o755)
///     .file("etc/motd", b"hi\n", 0o644)
///     .symlink("escape", "../../../")
///     .whiteout("etc/passwd")
///     .finish();
/// let layer = rtest::Layer::from_tar(&tar, rtest::Compression::Gzip).unwrap();
/// ```
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder::new()
    }
}

impl TarBuilder {
    /// An empty tar; entries are owned by 0:0 with mtime [`FIXED_MTIME`].
    pub fn new() -> TarBuilder {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
            uid: 0,
            gid: 0,
            mtime: FIXED_MTIME,
        }
    }

    /// Owner of the entries added after this call.
    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// mtime of the entries added after this call.
    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// A directory (by convention `path` ends in `/`, but it need not).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, path.as_bytes(), None, mode, &[], 0, 0)
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(EntryType::Regular, path.as_bytes(), None, mode, data, 0, 0)
    }

    /// A symlink `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            path.as_bytes(),
            Some(target.as_bytes()),
            0o777,
            &[],
            0,
            0,
        )
    }

    /// A hard link `path` to the earlier entry (or any path) `target`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Link,
            path.as_bytes(),
            Some(target.as_bytes()),
            0o644,
            &[],
            0,
            0,
        )
    }

    /// A character device node, e.g. `char_device("dev/null", 1, 3, 0o666)`.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        self.raw(
            EntryType::Char,
            path.as_bytes(),
            None,
            mode,
            &[],
            major,
            minor,
        )
    }

    /// A block device node.
    pub fn block_device(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        self.raw(
            EntryType::Block,
            path.as_bytes(),
            None,
            mode,
            &[],
            major,
            minor,
        )
    }

    /// A FIFO.
    pub fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Fifo, path.as_bytes(), None, mode, &[], 0, 0)
    }

    /// An AUFS/OCI whiteout deleting `path` of the lower layers: the empty file
    /// `<dir>/.wh.<name>`.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let path = path.trim_end_matches('/');
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, &[], 0o644)
    }

    /// An opaque whiteout hiding everything the lower layers have under `dir`:
    /// `<dir>/.wh..wh..opq`.
    pub fn opaque_whiteout(&mut self, dir: &str) -> &mut Self {
        let dir = dir.trim_end_matches('/');
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.file(&path, &[], 0o644)
    }

    /// Any entry, with the builder's owner and mtime: `name` and `link` are written byte for
    /// byte (GNU long-name records are added past 100 bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: Option<&[u8]>,
        mode: u32,
        data: &[u8],
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(data.len() as u64);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(major)
                .expect("GNU headers have device numbers");
            h.set_device_minor(minor)
                .expect("GNU headers have device numbers");
        }
        if let Some(link) = link {
            if link.len() > 100 {
                self.long_record(EntryType::GNULongLink, link);
            }
            let n = link.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        }
        if name.len() > 100 {
            self.long_record(EntryType::GNULongName, name);
        }
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        self.builder
            .append(&h, data)
            .expect("writing to a Vec cannot fail");
        self
    }

    /// Any header with its data, appended as is (set the checksum yourself, or break it).
    pub fn header(&mut self, header: &Header, data: &[u8]) -> &mut Self {
        self.builder
            .append(header, data)
            .expect("writing to a Vec cannot fail");
        self
    }

    fn long_record(&mut self, kind: EntryType, value: &[u8]) {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(0);
        let mut data = value.to_vec();
        data.push(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder
            .append(&h, &data[..])
            .expect("writing to a Vec cannot fail");
    }

    /// The finished tar stream (with its two zero end blocks).
    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().expect("writing to a Vec cannot fail")
    }
}
