//! Import: one pass over the tar stream into staged ingests, then checks, then commits.

use super::{
    is_index, is_manifest, parse_manifest, ArchiveError, Descriptor, Result, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LAYER_GZIP,
};
use crate::content::{ContentStore, Digest, Writer};
use crate::pull::{parse_reference, Platform, DOCKER_MANIFEST, MAX_MANIFEST_SIZE, OCI_INDEX};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use tokio::io::AsyncRead;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;
use tracing::{debug, info, warn};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Links inside an archive are followed at most this many times (docker's legacy layouts link
/// a repeated layer to the first copy: one hop).
const MAX_LINK_HOPS: usize = 16;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 4;

/// Options of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Joined to a bare-tag `org.opencontainers.image.ref.name` (`latest` → `BASE:latest`),
    /// as `ctr images import --base-name` does. Without it such an image is imported unnamed.
    pub base_name: Option<String>,
    /// Cap on the JSON files (manifests, configs, indexes) held in memory while reading.
    pub max_metadata_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            base_name: None,
            max_metadata_bytes: 64 << 20,
        }
    }
}

/// One image of an imported archive: every blob it reaches is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The normalised name (`docker.io/library/busybox:latest`); `None` for an entry the
    /// archive does not name (the caller may name it by digest, or skip it).
    pub name: Option<String>,
    /// The index or manifest the name points at (with its platform when the archive says).
    pub target: Descriptor,
}

/// Reads an archive (a tar stream, plain or gzip/zstd-compressed: an OCI image layout or a
/// Docker `save` archive) into `store` and returns its images, for the caller to record.
///
/// Nothing is committed unless the whole archive checks out, and on error every ingest of
/// this import is removed: a bad archive leaves nothing. Only a failure while committing
/// (I/O) can leave verified blobs behind, unreferenced until GC, as an interrupted pull does;
/// removing them could take a blob from a concurrent import or pull that counted on it.
/// The work runs on a blocking thread (the tar crate is synchronous); `reader` is read there
/// through a [`SyncIoBridge`].
pub async fn import<R>(
    store: &ContentStore,
    reader: R,
    opts: &ImportOptions,
) -> Result<Vec<ImportedImage>>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let handle = Handle::current();
    let reader = SyncIoBridge::new_with_handle(reader, handle.clone());
    let mut stage = Stage::new(store.clone(), handle, opts.clone());
    tokio::task::spawn_blocking(move || {
        let result = stage.run(reader);
        stage.discard();
        result
    })
    .await
    .map_err(|e| ArchiveError::Read(format!("import task failed: {e}")))?
}

/// A regular file of the archive.
struct File {
    digest: Digest,
    size: u64,
    /// The first bytes (compression sniffing).
    head: Vec<u8>,
    /// The bytes, for JSON files up to [`MAX_MANIFEST_SIZE`].
    data: Option<Vec<u8>>,
    /// The staged ingest holding the bytes; `None` for the layout's own files (`index.json`).
    writer: Option<Writer>,
}

struct Stage {
    store: ContentStore,
    handle: Handle,
    opts: ImportOptions,
    /// Prefix of this import's ingest refs.
    prefix: String,
    files: BTreeMap<String, File>,
    /// Link entry → the entry name it points at.
    links: BTreeMap<String, String>,
    metadata_bytes: u64,
    /// Blobs this import made: the Docker manifests it wrote.
    generated: HashMap<Digest, Vec<u8>>,
    /// Where each digest is staged (the first file that has it).
    by_digest: HashMap<Digest, String>,
}

fn read_err(e: io::Error) -> ArchiveError {
    ArchiveError::Read(e.to_string())
}

impl Stage {
    fn new(store: ContentStore, handle: Handle, opts: ImportOptions) -> Stage {
        Stage {
            store,
            handle,
            opts,
            prefix: format!("import-{}-{:016x}", std::process::id(), fastrand::u64(..)),
            files: BTreeMap::new(),
            links: BTreeMap::new(),
            metadata_bytes: 0,
            generated: HashMap::new(),
            by_digest: HashMap::new(),
        }
    }

    fn run(&mut self, reader: impl Read) -> Result<Vec<ImportedImage>> {
        self.read_archive(reader)?;
        let mut order = Vec::new();
        let images = if self.files.contains_key("index.json") {
            self.oci_images(&mut order)?
        } else if self.files.contains_key("manifest.json") {
            self.docker_images(&mut order)?
        } else if self.files.contains_key("repositories") {
            return Err(ArchiveError::UnknownFormat(
                "a docker archive without manifest.json (docker before 1.10) is not supported"
                    .into(),
            ));
        } else {
            return Err(ArchiveError::UnknownFormat(
                "neither an OCI image layout (index.json) nor a docker archive (manifest.json)"
                    .into(),
            ));
        };
        self.commit(&order)?;
        info!(
            images = images.len(),
            blobs = order.len(),
            "imported archive"
        );
        Ok(images)
    }

    /// Aborts every staged ingest left.
    fn discard(&mut self) {
        for (name, file) in std::mem::take(&mut self.files) {
            if let Some(w) = file.writer {
                if let Err(e) = self.handle.block_on(w.abort()) {
                    warn!(entry = %name, error = %e, "removing staged ingest");
                }
            }
        }
    }

    fn read_archive(&mut self, reader: impl Read) -> Result<()> {
        let mut buf = BufReader::with_capacity(1 << 20, reader);
        let head = buf.fill_buf().map_err(read_err)?.to_vec();
        if head.is_empty() {
            return Err(ArchiveError::UnknownFormat("the archive is empty".into()));
        }
        let decoded: Box<dyn Read> = if head.starts_with(GZIP_MAGIC) {
            Box::new(flate2::read::MultiGzDecoder::new(buf))
        } else if head.starts_with(ZSTD_MAGIC) {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(read_err)?)
        } else {
            Box::new(buf)
        };
        let mut archive = tar::Archive::new(decoded);
        let mut n = 0usize;
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            n += 1;
            let raw = entry.path_bytes().into_owned();
            let Some(name) = clean_name(&raw)? else {
                continue;
            };
            if self.files.contains_key(&name) || self.links.contains_key(&name) {
                return Err(ArchiveError::DuplicateEntry { entry: name });
            }
            match entry.header().entry_type() {
                tar::EntryType::Directory
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let hard = entry.header().entry_type() == tar::EntryType::Link;
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| ArchiveError::BadEntry {
                            entry: name.clone(),
                            reason: "link without a target".into(),
                        })?
                        .into_owned();
                    let target = resolve_link(&name, &target, hard)?;
                    self.links.insert(name, target);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let declared = entry.size();
                    let file = self.stage_file(&name, declared, &mut entry)?;
                    self.by_digest
                        .entry(file.digest.clone())
                        .or_insert_with(|| name.clone());
                    self.files.insert(name, file);
                }
                other => {
                    return Err(ArchiveError::UnsupportedEntry {
                        entry: name,
                        kind: format!("{other:?}").to_lowercase(),
                    })
                }
            }
        }
        // to the end, so a compressed stream's trailer (checksum, length) is checked too
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
        if n == 0 {
            return Err(ArchiveError::UnknownFormat(
                "the archive has no entries".into(),
            ));
        }
        debug!(
            files = self.files.len(),
            links = self.links.len(),
            "read archive"
        );
        Ok(())
    }

    /// Streams one file into a staged ingest (or memory, for the layout's own files), hashing
    /// it; a `blobs/sha256/<hex>` file must hash to its name.
    fn stage_file(&mut self, name: &str, declared: u64, mut entry: &mut impl Read) -> Result<File> {
        let named = blob_name(name)?;
        let own_file = matches!(
            name,
            "index.json" | "oci-layout" | "manifest.json" | "repositories"
        ) || is_legacy_metadata(name);
        let mut writer = None;
        if !own_file {
            let reference = format!("{}-{}", self.prefix, self.files.len());
            let w = self.handle.block_on(self.store.writer(&reference, None))?;
            writer = Some(w);
        }
        let result = self.copy_file(name, &mut entry, writer.as_mut());
        let (digest, size, head, data) = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(w) = writer {
                    let _ = self.handle.block_on(w.abort());
                }
                return Err(e);
            }
        };
        if size != declared {
            if let Some(w) = writer {
                let _ = self.handle.block_on(w.abort());
            }
            return Err(ArchiveError::Read(format!(
                "entry {name:?} is truncated: {size} of {declared} bytes"
            )));
        }
        if let Some(expected) = named {
            if expected != digest {
                if let Some(w) = writer {
                    let _ = self.handle.block_on(w.abort());
                }
                return Err(ArchiveError::DigestMismatch {
                    entry: name.to_owned(),
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(File {
            digest,
            size,
            head,
            data,
            writer,
        })
    }

    #[allow(clippy::type_complexity)]
    fn copy_file(
        &mut self,
        name: &str,
        entry: &mut impl Read,
        mut writer: Option<&mut Writer>,
    ) -> Result<(Digest, u64, Vec<u8>, Option<Vec<u8>>)> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        let mut head = Vec::new();
        let mut data: Option<Vec<u8>> = None;
        loop {
            let got = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::Read(format!("entry {name:?}: {e}"))),
            };
            let chunk = &buf[..got];
            if size == 0 {
                head = chunk[..chunk.len().min(8)].to_vec();
                let json = chunk
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b'{' || *b == b'[');
                if json {
                    data = Some(Vec::new());
                }
            }
            size += got as u64;
            if let Some(d) = &mut data {
                if size > MAX_MANIFEST_SIZE as u64 {
                    data = None; // not a manifest or config we will read
                } else {
                    self.metadata_bytes += got as u64;
                    if self.metadata_bytes > self.opts.max_metadata_bytes {
                        return Err(ArchiveError::TooLarge {
                            limit: self.opts.max_metadata_bytes,
                        });
                    }
                    d.extend_from_slice(chunk);
                }
            }
            match writer.as_deref_mut() {
                Some(w) => self.handle.block_on(w.write_all(chunk))?,
                None => hasher.update(chunk),
            }
        }
        let digest = match writer {
            Some(w) => w.digest(),
            None => Digest::from_hasher(hasher),
        };
        Ok((digest, size, head, data))
    }

    /// The file an entry name leads to, following links inside the archive.
    fn resolve(&self, name: &str) -> Option<&File> {
        let mut name = name;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(f) = self.files.get(name) {
                return Some(f);
            }
            name = self.links.get(name)?;
        }
        None
    }

    fn blob(&self, digest: &Digest) -> Option<&File> {
        self.resolve(&format!("blobs/sha256/{}", digest.hex()))
    }

    /// Checks a descriptor against the archive's blob: present and of the size it says.
    fn check(&self, what: &str, desc: &Descriptor) -> Result<&File> {
        let file = self
            .blob(&desc.digest)
            .ok_or_else(|| ArchiveError::MissingBlob {
                what: what.to_owned(),
                digest: desc.digest.clone(),
                place: "archive",
            })?;
        if file.size != desc.size {
            return Err(ArchiveError::SizeMismatch {
                what: what.to_owned(),
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: file.size,
            });
        }
        Ok(file)
    }

    fn json<'a>(&self, what: &str, file: &'a File) -> Result<&'a [u8]> {
        file.data.as_deref().ok_or_else(|| ArchiveError::Invalid {
            what: what.to_owned(),
            reason: format!("not a JSON document of at most {MAX_MANIFEST_SIZE} bytes"),
        })
    }

    fn oci_images(&mut self, order: &mut Vec<Digest>) -> Result<Vec<ImportedImage>> {
        let layout = self
            .files
            .get("oci-layout")
            .ok_or_else(|| {
                ArchiveError::UnknownFormat(
                    "index.json without oci-layout: not an OCI image layout".into(),
                )
            })?
            .data
            .clone()
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Layout {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let layout: Layout =
            serde_json::from_slice(&layout).map_err(|e| ArchiveError::Invalid {
                what: "oci-layout".into(),
                reason: e.to_string(),
            })?;
        if layout.version != super::OCI_LAYOUT_VERSION {
            return Err(ArchiveError::UnknownFormat(format!(
                "OCI image layout version {:?} (only {} is known)",
                layout.version,
                super::OCI_LAYOUT_VERSION
            )));
        }
        let index = self.files.get("index.json").and_then(|f| f.data.clone());
        let index = index.ok_or_else(|| ArchiveError::Invalid {
            what: "index.json".into(),
            reason: "not a JSON document".into(),
        })?;
        let top = Descriptor::new(OCI_INDEX, Digest::of(&index), index.len() as u64);
        let index = parse_manifest(&index, &top).map_err(|e| match e {
            ArchiveError::Invalid { reason, .. } => ArchiveError::Invalid {
                what: "index.json".into(),
                reason,
            },
            e => e,
        })?;
        let manifests = index.manifests.unwrap_or_default();
        if manifests.is_empty() {
            return Err(ArchiveError::Invalid {
                what: "index.json".into(),
                reason: "it lists no images".into(),
            });
        }
        let mut seen = HashSet::new();
        let mut images = Vec::new();
        for desc in manifests {
            self.walk(&desc, 0, &mut seen, order)?;
            let name = self.oci_name(&desc.annotations)?;
            let mut target = desc;
            target.annotations.clear();
            images.push(ImportedImage { name, target });
        }
        Ok(images)
    }

    /// Checks an index or manifest and what it reaches; appends their digests to `order`
    /// after those of their children.
    fn walk(
        &self,
        desc: &Descriptor,
        depth: usize,
        seen: &mut HashSet<Digest>,
        order: &mut Vec<Digest>,
    ) -> Result<()> {
        if seen.contains(&desc.digest) {
            return Ok(());
        }
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
        if depth > MAX_DEPTH {
            return Err(ArchiveError::Invalid {
                what: format!("index {}", desc.digest),
                reason: format!("indexes nest deeper than {MAX_DEPTH}"),
            });
        }
        let file = self.check(what, desc)?;
        let m = parse_manifest(self.json(&format!("{what} {}", desc.digest), file)?, desc)?;
        if let Some(children) = &m.manifests {
            let present: Vec<&Descriptor> = children
                .iter()
                .filter(|c| self.blob(&c.digest).is_some())
                .collect();
            match children.first() {
                None => {
                    return Err(ArchiveError::Invalid {
                        what: format!("index {}", desc.digest),
                        reason: "it lists no manifests".into(),
                    })
                }
                Some(first) if present.is_empty() => {
                    return Err(ArchiveError::MissingBlob {
                        what: format!("every manifest of index {}, such as", desc.digest),
                        digest: first.digest.clone(),
                        place: "archive",
                    })
                }
                _ => {}
            }
            if present.len() < children.len() {
                debug!(index = %desc.digest, present = present.len(), listed = children.len(),
                    "importing the platforms the archive holds");
            }
            for c in present {
                self.walk(c, depth + 1, seen, order)?;
            }
        } else if let Some(config) = &m.config {
            self.check(&format!("config of manifest {}", desc.digest), config)?;
            push_once(order, &config.digest);
            for (i, layer) in m.layers.iter().enumerate() {
                self.check(&format!("layer {i} of manifest {}", desc.digest), layer)?;
                push_once(order, &layer.digest);
            }
        }
        seen.insert(desc.digest.clone());
        push_once(order, &desc.digest);
        Ok(())
    }

    fn oci_name(&self, annotations: &BTreeMap<String, String>) -> Result<Option<String>> {
        if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
            return normalise(name).map(Some);
        }
        let Some(r) = annotations.get(ANNOTATION_REF_NAME) else {
            return Ok(None);
        };
        if r.contains(['/', ':', '@']) {
            return normalise(r).map(Some);
        }
        match &self.opts.base_name {
            Some(base) => normalise(&format!("{base}:{r}")).map(Some),
            None => {
                warn!(tag = %r, "image named by a bare tag and no base name: imported unnamed");
                Ok(None)
            }
        }
    }

    fn docker_images(&mut self, order: &mut Vec<Digest>) -> Result<Vec<ImportedImage>> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        #[derive(Deserialize)]
        struct Config {
            rootfs: RootFs,
            #[serde(default)]
            os: Option<String>,
            #[serde(default)]
            architecture: Option<String>,
            #[serde(default)]
            variant: Option<String>,
        }
        #[derive(Deserialize)]
        struct RootFs {
            #[serde(rename = "type")]
            kind: String,
            diff_ids: Vec<Digest>,
        }
        #[derive(Serialize)]
        struct Schema2<'a> {
            #[serde(rename = "schemaVersion")]
            schema_version: u32,
            #[serde(rename = "mediaType")]
            media_type: &'a str,
            config: &'a Descriptor,
            layers: &'a [Descriptor],
        }

        let data = self.files.get("manifest.json").and_then(|f| f.data.clone());
        let entries: Vec<Entry> = data
            .as_deref()
            .ok_or_else(|| "not a JSON document".to_owned())
            .and_then(|d| serde_json::from_slice(d).map_err(|e| e.to_string()))
            .map_err(|reason| ArchiveError::Invalid {
                what: "manifest.json".into(),
                reason,
            })?;
        if entries.is_empty() {
            return Err(ArchiveError::Invalid {
                what: "manifest.json".into(),
                reason: "it lists no images".into(),
            });
        }
        let missing = |entry: &str, what: &str| ArchiveError::BadEntry {
            entry: entry.to_owned(),
            reason: format!("{what} named by manifest.json is not in the archive"),
        };
        let mut images = Vec::new();
        for e in entries {
            let config_name = clean_name(e.config.as_bytes())?.unwrap_or_default();
            let file = self
                .resolve(&config_name)
                .ok_or_else(|| missing(&e.config, "the config"))?;
            let config: Config =
                serde_json::from_slice(self.json("config", file)?).map_err(|err| {
                    ArchiveError::Invalid {
                        what: format!("config {:?}", e.config),
                        reason: err.to_string(),
                    }
                })?;
            let config_desc = Descriptor::new(DOCKER_CONFIG, file.digest.clone(), file.size);
            if config.rootfs.kind != "layers" || config.rootfs.diff_ids.len() != e.layers.len() {
                return Err(ArchiveError::Invalid {
                    what: format!("config {:?}", e.config),
                    reason: format!(
                        "rootfs has {} diff IDs of type {:?}, manifest.json lists {} layers",
                        config.rootfs.diff_ids.len(),
                        config.rootfs.kind,
                        e.layers.len()
                    ),
                });
            }
            let mut layers = Vec::new();
            for (layer, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
                let name = clean_name(layer.as_bytes())?.unwrap_or_default();
                let file = self
                    .resolve(&name)
                    .ok_or_else(|| missing(layer, "the layer"))?;
                let media_type = if file.head.starts_with(GZIP_MAGIC) {
                    DOCKER_LAYER_GZIP
                } else if file.head.starts_with(ZSTD_MAGIC) {
                    return Err(ArchiveError::UnsupportedMediaType {
                        what: format!("layer {layer:?}"),
                        media_type: "zstd-compressed tar in a docker archive".into(),
                    });
                } else {
                    if &file.digest != diff_id {
                        return Err(ArchiveError::Invalid {
                            what: format!("layer {layer:?}"),
                            reason: format!(
                                "its digest {} is not the diff ID {diff_id} the config lists",
                                file.digest
                            ),
                        });
                    }
                    DOCKER_LAYER
                };
                layers.push(Descriptor::new(media_type, file.digest.clone(), file.size));
            }
            let manifest = serde_json::to_vec(&Schema2 {
                schema_version: 2,
                media_type: DOCKER_MANIFEST,
                config: &config_desc,
                layers: &layers,
            })
            .map_err(|err| ArchiveError::Invalid {
                what: "generated manifest".into(),
                reason: err.to_string(),
            })?;
            let digest = Digest::of(&manifest);
            push_once(order, &config_desc.digest);
            for l in &layers {
                push_once(order, &l.digest);
            }
            push_once(order, &digest);
            let mut target =
                Descriptor::new(DOCKER_MANIFEST, digest.clone(), manifest.len() as u64);
            if let (Some(os), Some(arch)) = (&config.os, &config.architecture) {
                target.platform = Some(Platform::new(os, arch, config.variant.as_deref()));
            }
            self.generated.insert(digest, manifest);
            let tags = e.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                images.push(ImportedImage { name: None, target });
            } else {
                for t in tags {
                    images.push(ImportedImage {
                        name: Some(normalise(&t)?),
                        target: target.clone(),
                    });
                }
            }
        }
        Ok(images)
    }

    /// Commits the blobs in `order` (children first): staged ingests, or generated manifests.
    fn commit(&mut self, order: &[Digest]) -> Result<()> {
        for digest in order {
            if let Some(data) = self.generated.get(digest) {
                let reference = format!("{}-{}", self.prefix, digest.hex());
                let store = self.store.clone();
                let data = data.clone();
                let expected = Some((digest.clone(), data.len() as u64));
                self.handle.block_on(async move {
                    let mut w = store.writer(&reference, expected).await?;
                    if let Err(e) = w.write_all(&data).await {
                        let _ = w.abort().await;
                        return Err(e);
                    }
                    w.commit().await
                })?;
            } else {
                let path = self.by_digest.get(digest).cloned().unwrap_or_default();
                let file = self.files.get_mut(&path);
                let Some(writer) = file.and_then(|f| f.writer.take()) else {
                    return Err(ArchiveError::MissingBlob {
                        what: "blob".into(),
                        digest: digest.clone(),
                        place: "staged archive files",
                    });
                };
                self.handle.block_on(writer.commit())?;
            }
        }
        Ok(())
    }
}

fn push_once(order: &mut Vec<Digest>, d: &Digest) {
    if !order.contains(d) {
        order.push(d.clone());
    }
}

fn normalise(name: &str) -> Result<String> {
    parse_reference(name)
        .map(|r| r.whole())
        .map_err(|e| ArchiveError::InvalidName {
            name: name.to_owned(),
            reason: match e {
                crate::pull::PullError::InvalidReference { reason, .. } => reason,
                e => e.to_string(),
            },
        })
}

/// `<64 hex>/json` and `<64 hex>/VERSION` of docker's legacy layout: read by nothing here.
fn is_legacy_metadata(name: &str) -> bool {
    matches!(name.split_once('/'), Some((_, "json" | "VERSION")))
}

/// The digest a `blobs/<alg>/<hex>` name promises; other names give `None`.
fn blob_name(name: &str) -> Result<Option<Digest>> {
    let Some(rest) = name.strip_prefix("blobs/") else {
        return Ok(None);
    };
    let Some((alg, hex)) = rest.split_once('/') else {
        return Ok(None);
    };
    Digest::parse(&format!("{alg}:{hex}"))
        .map(Some)
        .map_err(|e| ArchiveError::BadEntry {
            entry: name.to_owned(),
            reason: format!("a blob must be named by its digest: {}", e.reason),
        })
}

/// An entry name made relative and clean: `./a//b` → `a/b`; `None` for the root itself.
/// Absolute names and `..` are refused whatever they would resolve to.
fn clean_name(raw: &[u8]) -> Result<Option<String>> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let s = std::str::from_utf8(raw).map_err(|_| ArchiveError::BadEntry {
        entry: lossy(),
        reason: "the name is not UTF-8".into(),
    })?;
    if s.starts_with('/') {
        return Err(ArchiveError::PathTraversal { entry: lossy() });
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ArchiveError::PathTraversal { entry: lossy() }),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Where a link entry points, as an entry name: a symlink's target is relative to its own
/// directory, a hard link's to the archive root. Targets outside the archive are refused.
fn resolve_link(name: &str, target: &[u8], hard: bool) -> Result<String> {
    let bad = || ArchiveError::PathTraversal {
        entry: format!("{name} -> {}", String::from_utf8_lossy(target)),
    };
    let t = std::str::from_utf8(target).map_err(|_| bad())?;
    if t.starts_with('/') {
        return Err(bad());
    }
    let mut parts: Vec<&str> = if hard {
        Vec::new()
    } else {
        let mut p: Vec<&str> = name.split('/').collect();
        p.pop();
        p
    };
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(bad)?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(clean_name(b"./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(clean_name(b"./").unwrap(), None);
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../x", b"a/.."] {
            assert!(matches!(
                clean_name(bad),
                Err(ArchiveError::PathTraversal { .. })
            ));
        }
        assert_eq!(
            resolve_link("a/layer.tar", b"../b/layer.tar", false).unwrap(),
            "b/layer.tar"
        );
        assert_eq!(resolve_link("a/x", b"b/y", true).unwrap(), "b/y");
        assert!(resolve_link("a/x", b"../../etc/passwd", false).is_err());
        assert!(resolve_link("a/x", b"/etc/passwd", false).is_err());
        assert!(blob_name("blobs/sha256/xyz").is_err());
        assert!(blob_name("blobs/sha512/ab").is_err());
        assert_eq!(blob_name("index.json").unwrap(), None);
        assert!(is_legacy_metadata(&format!("{}/json", "a".repeat(64))));
    }
}
