//! Image archives: import and export of OCI image layouts and Docker `save` archives as tar
//! streams (plain, gzip or zstd compressed on import), through the content store.
//!
//! - [`import`] reads an archive once, front to back, staging every file in a content-store
//!   ingest while hashing it; nothing lands in `blobs/` until the whole archive has been read
//!   and every image in it checked (digests, sizes, references, diff IDs). Then only the blobs
//!   the images reach are committed, children before parents (layers and configs, then
//!   manifests, then indexes), and every other ingest is discarded. Any error discards all
//!   ingests; as every check comes before the first commit, a bad archive leaves nothing.
//! - [`export`] writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) plus a
//!   Docker `manifest.json`, as containerd's `ctr images export` does, so both `skopeo copy
//!   oci-archive:` and `docker load` read it. Blobs are streamed from the store's files.
//!
//! Names: `io.containerd.image.name` (containerd) or `org.opencontainers.image.ref.name`
//! (a full reference, or a bare tag joined to [`ImportOptions::base_name`]) for OCI layouts,
//! `RepoTags` for Docker archives, normalised as pulls are (`busybox:1` →
//! `docker.io/library/busybox:1`).
//!
//! Platforms: an index is kept whole — every child manifest the archive holds is checked and
//! imported (as `ctr import --all-platforms`), and children the archive lacks are skipped (as
//! an export of one platform of a multi-platform image leaves them out); an index none of whose
//! children are present is refused. Export does the same the other way round.

mod export;
mod import;

pub use export::{export, ExportFormat, ExportImage, ExportOptions, ExportStats, MissingPolicy};
pub use import::{import, ImportOptions, ImportedImage};

use crate::content::{ContentError, Digest, InvalidDigest};
use crate::pull::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
/// containerd's annotation for an image's full name in `index.json`.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference name (a tag, or a full name) in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A content descriptor: what an image name points at (an index or a manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// What failed in an import or export. Each variant names the archive entry, digest or image
/// it is about.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive: {0}")]
    Read(String),
    #[error("writing the archive: {0}")]
    Write(String),
    #[error("archive entry {entry:?}: path escapes the archive")]
    PathTraversal { entry: String },
    #[error("archive entry {entry:?}: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("archive entry {entry:?} appears twice")]
    DuplicateEntry { entry: String },
    #[error("archive entry {entry:?} is a {kind}; only files, directories and links are allowed")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("unknown archive format: {0}")]
    UnknownFormat(String),
    #[error("archive entry {entry:?} has digest {actual}, its name says {expected}")]
    DigestMismatch {
        entry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} {digest} is missing from the {place}")]
    MissingBlob {
        what: String,
        digest: Digest,
        place: &'static str,
    },
    #[error("{what} {digest}: the descriptor says {expected} bytes, the blob has {actual}")]
    SizeMismatch {
        what: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("archive metadata (JSON files) exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Digest(#[from] InvalidDigest),
    #[error("content store: {0}")]
    Content(#[from] ContentError),
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == crate::pull::OCI_INDEX || media_type == crate::pull::DOCKER_MANIFEST_LIST
}

pub(crate) fn is_manifest(media_type: &str) -> bool {
    media_type == crate::pull::OCI_MANIFEST || media_type == crate::pull::DOCKER_MANIFEST
}

/// The fields of manifests and indexes rcd needs (unknown fields ignored; the bytes are kept
/// as they are, so digests never change).
#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "mediaType")]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    pub manifests: Option<Vec<Descriptor>>,
}

/// Parses a manifest or index and checks its own `mediaType` (if it has one) agrees with the
/// descriptor that pointed at it.
pub(crate) fn parse_manifest(data: &[u8], desc: &Descriptor) -> Result<Manifest> {
    let what = format!("manifest {}", desc.digest);
    let m: Manifest = serde_json::from_slice(data).map_err(|e| ArchiveError::Invalid {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    if let Some(mt) = &m.media_type {
        if mt != &desc.media_type {
            return Err(ArchiveError::Invalid {
                what,
                reason: format!(
                    "its mediaType is {mt:?}, the descriptor says {:?}",
                    desc.media_type
                ),
            });
        }
    }
    if is_index(&desc.media_type) {
        if m.manifests.is_none() {
            return Err(ArchiveError::Invalid {
                what,
                reason: "an index without \"manifests\"".into(),
            });
        }
    } else if m.config.is_none() {
        return Err(ArchiveError::Invalid {
            what,
            reason: "a manifest without \"config\"".into(),
        });
    }
    Ok(m)
}
