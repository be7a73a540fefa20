//! Export: an OCI image layout tar (plus Docker's `manifest.json`) streamed from the store.

use super::{
    is_index, is_manifest, parse_manifest, ArchiveError, Descriptor, Result, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, OCI_LAYOUT_VERSION,
};
use crate::content::{ContentError, ContentStore, Digest};
use crate::pull::{parse_reference, Platform, OCI_INDEX};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use tokio::io::AsyncWrite;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;
use tracing::{debug, info};

/// One image to export: its name and what the name points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportImage {
    /// A full name (`docker.io/library/busybox:latest`); short names are normalised.
    pub name: String,
    pub target: Descriptor,
}

/// What to do with the manifests of an index that are not in the store (a pull stores only
/// its platform's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingPolicy {
    /// Write the index whole (its digest stays the image's identity) and the platforms that
    /// are present, as `ctr images export` without `--all-platforms` does. An index with
    /// none of its manifests present is still an error.
    #[default]
    Skip,
    /// Fail with [`ArchiveError::MissingBlob`].
    Fail,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub missing: MissingPolicy,
    /// Which manifest of an index goes into `manifest.json` (Docker's format has one image
    /// per entry); default: the host's.
    pub platform: Platform,
    pub format: ExportFormat,
}

/// What the archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// An OCI image layout plus Docker's `manifest.json`, as containerd writes: read by
    /// `skopeo … oci-archive:`, `ctr images import` and `docker load`.
    #[default]
    OciAndDocker,
    /// The OCI image layout alone.
    Oci,
    /// Docker's `manifest.json` and the configs and layers it names (no `index.json`, no
    /// indexes, only the [`ExportOptions::platform`] manifest of an index).
    Docker,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            missing: MissingPolicy::Skip,
            platform: Platform::host(),
            format: ExportFormat::OciAndDocker,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub blobs: usize,
    /// Bytes of blobs (not counting tar headers and the layout's own files).
    pub blob_bytes: u64,
}

/// A manifest's config and layers, for `manifest.json`.
struct Parts {
    config: Digest,
    layers: Vec<Digest>,
}

/// Writes `images` as a tar of an OCI image layout to `writer`, then shuts it down.
///
/// Only what the targets reach is written: indexes, the manifests of the store (see
/// [`MissingPolicy`]), their configs and layers, each blob once. Everything is checked
/// against the store before the first byte is written, so a missing blob fails the export
/// before anything is sent; blobs are then copied from their files on a blocking thread.
pub async fn export<W>(
    store: &ContentStore,
    images: &[ExportImage],
    writer: W,
    opts: &ExportOptions,
) -> Result<ExportStats>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    if images.is_empty() {
        return Err(ArchiveError::Invalid {
            what: "export".into(),
            reason: "no images given".into(),
        });
    }
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    // `blobs` is in dependency order (children first) for readers that stream
    let mut parts: HashMap<Digest, Parts> = HashMap::new();
    let mut index = Vec::new();
    let mut docker: Vec<(Digest, Vec<String>)> = Vec::new();
    for image in images {
        let name = parse_reference(&image.name)
            .map_err(|e| ArchiveError::InvalidName {
                name: image.name.clone(),
                reason: e.to_string(),
            })?
            .whole();
        let mut children = Vec::new();
        walk(
            store,
            &image.target,
            0,
            opts,
            &mut blobs,
            &mut parts,
            &mut children,
        )
        .await?;
        let mut desc = image.target.clone();
        desc.annotations.clear();
        desc.annotations
            .insert(ANNOTATION_IMAGE_NAME.into(), name.clone());
        let reference = parse_reference(&name).expect("normalised above");
        if let Some(tag) = reference.tag() {
            desc.annotations
                .insert(ANNOTATION_REF_NAME.into(), tag.to_owned());
        }
        index.push(desc);

        if opts.format == ExportFormat::Oci {
            continue;
        }
        // Docker's format holds one image per entry: the manifest itself, or the index's
        // manifest for the chosen platform, if the store has it
        let manifest = if is_index(&image.target.media_type) {
            children
                .iter()
                .find(|c: &&Descriptor| {
                    c.platform
                        .as_ref()
                        .is_some_and(|p| opts.platform.matches(p))
                })
                .map(|c| c.digest.clone())
        } else {
            Some(image.target.digest.clone())
        };
        let Some(manifest) = manifest else {
            debug!(image = %name, platform = %opts.platform, "no manifest for manifest.json");
            continue;
        };
        let tag = reference.tag().map(|_| familiar(&name));
        match docker.iter_mut().find(|(d, _)| *d == manifest) {
            Some((_, tags)) => tags.extend(tag),
            None => docker.push((manifest, tag.into_iter().collect())),
        }
    }

    let index_json = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": index,
    }))
    .map_err(|e| ArchiveError::Write(e.to_string()))?;
    if opts.format == ExportFormat::Docker {
        // only what manifest.json names: configs and layers
        if docker.is_empty() {
            return Err(ArchiveError::Invalid {
                what: "docker archive".into(),
                reason: format!("no image has a manifest for {}", opts.platform),
            });
        }
        let wanted: Vec<&Digest> = docker
            .iter()
            .filter_map(|(m, _)| parts.get(m))
            .flat_map(|p| std::iter::once(&p.config).chain(&p.layers))
            .collect();
        blobs.retain(|(d, _)| wanted.contains(&d));
    }
    let manifest_json = if opts.format != ExportFormat::Oci {
        #[derive(Serialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags")]
            repo_tags: Vec<String>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let entries: Vec<Entry> = docker
            .iter()
            .filter_map(|(m, tags)| {
                let p = parts.get(m)?;
                Some(Entry {
                    config: path(&p.config),
                    repo_tags: tags.clone(),
                    layers: p.layers.iter().map(path).collect(),
                })
            })
            .collect();
        Some(serde_json::to_vec(&entries).map_err(|e| ArchiveError::Write(e.to_string()))?)
    } else {
        None
    };
    let layout = serde_json::to_vec(&json!({ "imageLayoutVersion": OCI_LAYOUT_VERSION }))
        .map_err(|e| ArchiveError::Write(e.to_string()))?;

    let handle = Handle::current();
    let out = SyncIoBridge::new_with_handle(writer, handle);
    let store = store.clone();
    let oci = (opts.format != ExportFormat::Docker).then_some((layout, index_json));
    let stats = tokio::task::spawn_blocking(move || {
        write_tar(&store, out, &blobs, oci, manifest_json.as_deref())
    })
    .await
    .map_err(|e| ArchiveError::Write(format!("export task failed: {e}")))??;
    info!(
        images = images.len(),
        blobs = stats.blobs,
        bytes = stats.blob_bytes,
        "exported"
    );
    Ok(stats)
}

/// `docker.io/library/busybox:1` → `busybox:1`, `docker.io/u/app:t` → `u/app:t`: the names
/// `docker load` shows.
fn familiar(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_owned()
}

/// Checks `desc` against the store and collects what it reaches, children first.
#[allow(clippy::too_many_arguments)]
async fn walk(
    store: &ContentStore,
    desc: &Descriptor,
    depth: usize,
    opts: &ExportOptions,
    blobs: &mut Vec<(Digest, u64)>,
    parts: &mut HashMap<Digest, Parts>,
    children_out: &mut Vec<Descriptor>,
) -> Result<()> {
    let what = if is_index(&desc.media_type) {
        "index"
    } else if is_manifest(&desc.media_type) {
        "manifest"
    } else {
        return Err(ArchiveError::UnsupportedMediaType {
            what: format!("image {}", desc.digest),
            media_type: desc.media_type.clone(),
        });
    };
    if depth > 4 {
        return Err(ArchiveError::Invalid {
            what: format!("index {}", desc.digest),
            reason: "indexes nest deeper than 4".into(),
        });
    }
    let data = read_checked(store, what, desc).await?;
    if blobs.iter().any(|(d, _)| *d == desc.digest) {
        return Ok(());
    }
    let m = parse_manifest(&data, desc)?;
    if let Some(children) = m.manifests {
        let mut present = 0;
        for c in &children {
            if !store.exists(&c.digest).await? {
                if opts.missing == MissingPolicy::Fail {
                    return Err(missing(
                        &format!("manifest of index {}", desc.digest),
                        &c.digest,
                    ));
                }
                debug!(index = %desc.digest, manifest = %c.digest, "not in the store, skipped");
                continue;
            }
            present += 1;
            Box::pin(walk(
                store,
                c,
                depth + 1,
                opts,
                blobs,
                parts,
                &mut Vec::new(),
            ))
            .await?;
            children_out.push(c.clone());
        }
        if present == 0 {
            let first = children.first().ok_or_else(|| ArchiveError::Invalid {
                what: format!("index {}", desc.digest),
                reason: "it lists no manifests".into(),
            })?;
            return Err(missing(
                &format!("every manifest of index {}, such as", desc.digest),
                &first.digest,
            ));
        }
    } else if let Some(config) = m.config {
        let check = |what: String, d: &Descriptor| {
            let (store, d) = (store.clone(), d.clone());
            async move {
                let info = store.info(&d.digest).await.map_err(|e| match e {
                    ContentError::NotFound(_) => missing(&what, &d.digest),
                    e => e.into(),
                })?;
                if info.size != d.size {
                    return Err(ArchiveError::SizeMismatch {
                        what,
                        digest: d.digest.clone(),
                        expected: d.size,
                        actual: info.size,
                    });
                }
                Ok(d.digest)
            }
        };
        let c = check(format!("config of manifest {}", desc.digest), &config).await?;
        let mut layers = Vec::new();
        for (i, l) in m.layers.iter().enumerate() {
            layers.push(check(format!("layer {i} of manifest {}", desc.digest), l).await?);
        }
        for (d, size) in std::iter::once((&c, config.size))
            .chain(layers.iter().zip(m.layers.iter().map(|l| l.size)))
        {
            if !blobs.iter().any(|(b, _)| b == d) {
                blobs.push((d.clone(), size));
            }
        }
        parts.insert(desc.digest.clone(), Parts { config: c, layers });
    }
    blobs.push((desc.digest.clone(), desc.size));
    Ok(())
}

fn missing(what: &str, digest: &Digest) -> ArchiveError {
    ArchiveError::MissingBlob {
        what: what.to_owned(),
        digest: digest.clone(),
        place: "content store",
    }
}

/// A manifest or index from the store, checked against its descriptor's size.
async fn read_checked(store: &ContentStore, what: &str, desc: &Descriptor) -> Result<Vec<u8>> {
    let info = store.info(&desc.digest).await.map_err(|e| match e {
        ContentError::NotFound(_) => missing(what, &desc.digest),
        e => e.into(),
    })?;
    if info.size != desc.size {
        return Err(ArchiveError::SizeMismatch {
            what: what.to_owned(),
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: info.size,
        });
    }
    if info.size > crate::pull::MAX_MANIFEST_SIZE as u64 {
        return Err(ArchiveError::Invalid {
            what: format!("{what} {}", desc.digest),
            reason: format!("larger than {} bytes", crate::pull::MAX_MANIFEST_SIZE),
        });
    }
    Ok(store.read_all(&desc.digest).await?)
}

fn header(path: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // paths here are short and ASCII (`blobs/sha256/<64 hex>` is 77 bytes)
    h.set_path(path).expect("short ascii path");
    h.set_cksum();
    h
}

fn write_tar<W: AsyncWrite + Unpin>(
    store: &ContentStore,
    out: SyncIoBridge<W>,
    blobs: &[(Digest, u64)],
    oci: Option<(Vec<u8>, Vec<u8>)>,
    manifest: Option<&[u8]>,
) -> Result<ExportStats> {
    let werr = |e: io::Error| ArchiveError::Write(e.to_string());
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out));
    if let Some((layout, _)) = &oci {
        tar.append(
            &header("oci-layout", layout.len() as u64, false),
            &layout[..],
        )
        .map_err(werr)?;
    }
    tar.append(&header("blobs/", 0, true), io::empty())
        .map_err(werr)?;
    tar.append(&header("blobs/sha256/", 0, true), io::empty())
        .map_err(werr)?;
    let mut stats = ExportStats::default();
    let mut written: BTreeMap<&Digest, ()> = BTreeMap::new();
    for (digest, size) in blobs {
        if written.insert(digest, ()).is_some() {
            continue;
        }
        let path = store.blob_path(digest);
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => missing("blob", digest),
            _ => ArchiveError::Content(ContentError::Io {
                op: "opening",
                path: path.clone(),
                source: e,
            }),
        })?;
        let actual = file.metadata().map_err(werr)?.len();
        if actual != *size {
            return Err(ArchiveError::SizeMismatch {
                what: "blob".into(),
                digest: digest.clone(),
                expected: *size,
                actual,
            });
        }
        // take exactly `size` bytes: the blob's file is read-only, but be exact anyway
        let h = header(&format!("blobs/sha256/{}", digest.hex()), *size, false);
        tar.append(&h, io::Read::take(file, *size)).map_err(werr)?;
        stats.blobs += 1;
        stats.blob_bytes += size;
    }
    if let Some((_, index)) = &oci {
        tar.append(&header("index.json", index.len() as u64, false), &index[..])
            .map_err(werr)?;
    }
    if let Some(m) = manifest {
        tar.append(&header("manifest.json", m.len() as u64, false), m)
            .map_err(werr)?;
    }
    let mut buf = tar.into_inner().map_err(werr)?;
    buf.flush().map_err(werr)?;
    let mut out = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    out.shutdown().map_err(werr)?;
    Ok(stats)
}
