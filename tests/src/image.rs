//! OCI and Docker images built in memory, and written out as an OCI image layout, an OCI
//! archive (`ctr images import`, `skopeo copy oci-archive:`) or a `docker save` archive.
//!
//! Everything is deterministic: the same inputs give the same digests on every run.
//!
//! ```no_run
//! use rtest::{Compression, ImageBuilder, TarBuilder};
//! let image = ImageBuilder::new()
//!     .layer_dir("/path/to/rootfs")
//!     .layer_tar(TarBuilder::new().file("hello", b"hi\n", 0o644).finish())
//!     .compression(Compression::Zstd) // for the layers added from here on
//!     .cmd(&["sh"])
//!     .env("PATH=/bin")
//!     .build()
//!     .unwrap();
//! println!("{} {}", image.digest(), image.config.digest);
//! image.write_oci_archive("/tmp/x.tar".as_ref(), "docker.io/library/x:latest").unwrap();
//! ```

use crate::layer::{sha256_digest, Compression, Layer, TarBuilder};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::fs;
use std::path::{Path, PathBuf};

pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// OCI annotation holding the tag (`latest`) in an image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full image name in `index.json`, which
/// `ctr images import` uses as the image's name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The `created` time of configs and history entries: fixed, for stable digests.
pub const FIXED_CREATED: &str = "1970-01-01T00:00:00Z";

/// Which family of media types manifests, configs and layers are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// OCI image spec media types; the default.
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2 / manifest list.
    Docker,
}

impl Format {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
}

/// Some bytes stored by digest: a manifest, an index, a config or a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Its OCI descriptor: `{"mediaType", "digest", "size"}`.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        digest_hex(&self.digest)
    }
}

fn digest_hex(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

/// An OS/architecture pair as images, indexes and registries spell it (Go's names).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }

    /// The machine running the tests (Go's name for its architecture).
    pub fn host() -> Platform {
        match std::env::consts::ARCH {
            "x86_64" => Platform::linux_amd64(),
            "aarch64" => Platform::linux_arm64(),
            "x86" => Platform::new("linux", "386", None),
            "powerpc64" => Platform::new("linux", "ppc64le", None),
            "s390x" => Platform::new("linux", "s390x", None),
            "riscv64" => Platform::new("linux", "riscv64", None),
            other => Platform::new("linux", other, None),
        }
    }

    /// `{"architecture", "os", "variant"?}` as in an index.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

enum LayerSource {
    Dir(PathBuf, Compression),
    Tar(Vec<u8>, Compression),
    Ready(Layer),
}

type ConfigEdit = Box<dyn FnOnce(&mut Value) + Send>;

/// Builds an [`Image`]: layers, platform and the runtime config (`config.Cmd` and so on).
pub struct ImageBuilder {
    layers: Vec<LayerSource>,
    compression: Compression,
    format: Format,
    platform: Platform,
    config: Map<String, Value>,
    annotations: Map<String, Value>,
    edits: Vec<ConfigEdit>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// No layers, the host platform, OCI media types, gzip layers, an empty config.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            compression: Compression::Gzip,
            format: Format::Oci,
            platform: Platform::host(),
            config: Map::new(),
            annotations: Map::new(),
            edits: Vec::new(),
        }
    }

    /// OCI (default) or Docker schema 2 media types.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// How the layers added after this call are compressed (gzip by default).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Adds a layer holding the tree under `dir` (read at [`ImageBuilder::build`]), as
    /// [`crate::tar_dir`] writes it.
    pub fn layer_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.layers
            .push(LayerSource::Dir(dir.into(), self.compression));
        self
    }

    /// Adds a layer from a complete tar stream, e.g. one made with [`TarBuilder`].
    pub fn layer_tar(mut self, tar: Vec<u8>) -> Self {
        self.layers.push(LayerSource::Tar(tar, self.compression));
        self
    }

    /// Adds a ready layer as it is (its compression wins over [`ImageBuilder::compression`]).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(LayerSource::Ready(layer));
        self
    }

    /// The platform the config and the index entries name (the host's by default).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// `config.Cmd`.
    pub fn cmd(self, cmd: &[&str]) -> Self {
        self.set("Cmd", json!(cmd))
    }

    /// `config.Entrypoint`.
    pub fn entrypoint(self, entrypoint: &[&str]) -> Self {
        self.set("Entrypoint", json!(entrypoint))
    }

    /// Appends `KEY=value` to `config.Env`.
    pub fn env(mut self, kv: &str) -> Self {
        self.push("Env", json!(kv));
        self
    }

    /// `config.WorkingDir`.
    pub fn working_dir(self, dir: &str) -> Self {
        self.set("WorkingDir", json!(dir))
    }

    /// `config.User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub fn user(self, user: &str) -> Self {
        self.set("User", json!(user))
    }

    /// Adds a `config.Labels` entry.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        let labels = self.config.entry("Labels").or_insert_with(|| json!({}));
        labels[key] = json!(value);
        self
    }

    /// Adds `port` (`"80/tcp"`, `"53/udp"`) to `config.ExposedPorts`.
    pub fn expose(mut self, port: &str) -> Self {
        let ports = self
            .config
            .entry("ExposedPorts")
            .or_insert_with(|| json!({}));
        ports[port] = json!({});
        self
    }

    /// `config.StopSignal`, e.g. `SIGINT`.
    pub fn stop_signal(self, signal: &str) -> Self {
        self.set("StopSignal", json!(signal))
    }

    /// Any other `config` field (`Volumes`, `Healthcheck`, ...).
    pub fn config_field(self, key: &str, value: Value) -> Self {
        self.set(key, value)
    }

    /// An annotation on the manifest.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), json!(value));
        self
    }

    /// Edits the whole image config JSON right before it is serialised (after `rootfs`
    /// and `history` are filled in), e.g. to give wrong diff IDs on purpose.
    pub fn edit_config(mut self, edit: impl FnOnce(&mut Value) + Send + 'static) -> Self {
        self.edits.push(Box::new(edit));
        self
    }

    fn set(mut self, key: &str, value: Value) -> Self {
        self.config.insert(key.to_owned(), value);
        self
    }

    fn push(&mut self, key: &str, value: Value) {
        let list = self.config.entry(key).or_insert_with(|| json!([]));
        list.as_array_mut().expect("a list field").push(value);
    }

    /// Tars, compresses and hashes the layers; writes config and manifest.
    pub fn build(self) -> Result<Image> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for source in self.layers {
            let mut layer = match source {
                LayerSource::Dir(dir, c) => Layer::from_dir(&dir, c)
                    .with_context(|| format!("layer from {}", dir.display()))?,
                LayerSource::Tar(tar, c) => Layer::from_tar(&tar, c)?,
                LayerSource::Ready(layer) => layer,
            };
            let c = layer.compression;
            if [c.oci_media_type(), c.docker_media_type()].contains(&layer.media_type.as_str()) {
                layer.media_type = match self.format {
                    Format::Oci => c.oci_media_type(),
                    Format::Docker => c.docker_media_type(),
                }
                .to_owned();
            }
            layers.push(layer);
        }
        let history: Vec<Value> = (0..layers.len())
            .map(|i| json!({"created": FIXED_CREATED, "created_by": format!("rtest layer {i}")}))
            .collect();
        let mut config = json!({
            "created": FIXED_CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": Value::Object(self.config),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        });
        if let Some(variant) = &self.platform.variant {
            config["variant"] = json!(variant);
        }
        for edit in self.edits {
            edit(&mut config);
        }
        let config = Blob::new(
            self.format.config_media_type(),
            serde_json::to_vec(&config)?,
        );
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_media_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.digest, "size": l.size(),
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = Value::Object(self.annotations);
        }
        let manifest = Blob::new(
            self.format.manifest_media_type(),
            serde_json::to_vec(&manifest)?,
        );
        Ok(Image {
            manifest,
            config,
            layers,
            platform: self.platform,
            format: self.format,
        })
    }
}

/// A built image: manifest, config and layers, all with their digests and sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub platform: Platform,
    pub format: Format,
}

impl Image {
    /// The manifest digest: what a registry, `skopeo inspect` and containerd call the image's
    /// digest.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The config parsed.
    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config.data).expect("we wrote it as JSON")
    }

    /// The layer blob digests, bottom first.
    pub fn layer_digests(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.digest.as_str()).collect()
    }

    /// The uncompressed layer digests, bottom first, as in `rootfs.diff_ids`.
    pub fn diff_ids(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.diff_id.as_str()).collect()
    }

    /// The blobs a manifest references: the config, then the layers (as [`Blob`]s).
    pub fn blobs(&self) -> Vec<Blob> {
        let mut blobs = vec![self.config.clone()];
        blobs.extend(self.layers.iter().map(|l| Blob {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            data: l.data.clone(),
        }));
        blobs
    }

    /// Config plus compressed layers plus manifest, in bytes: what a pull downloads.
    pub fn size(&self) -> u64 {
        self.manifest.size() + self.config.size() + self.layers.iter().map(Layer::size).sum::<u64>()
    }

    /// The manifest's descriptor with its `platform`, as an index lists it.
    pub fn descriptor(&self) -> Value {
        let mut d = self.manifest.descriptor();
        d["platform"] = self.platform.to_json();
        d
    }

    /// Adds the image to the OCI image layout at `dir` (created if missing; other entries of
    /// an existing `index.json` are kept, one with the same name is replaced).
    /// `name` is a bare tag (`latest`) or a full name (`docker.io/library/busybox:latest`);
    /// see [`ref_annotations`]. Note: skopeo (containers/image) only sees OCI-typed entries
    /// of a layout, so a [`Format::Docker`] image written here is invisible to it (containerd
    /// reads it); push Docker-format images to a [`crate::Registry`] instead.
    pub fn write_oci_layout(&self, dir: &Path, name: &str) -> Result<()> {
        let mut blobs = self.blobs();
        blobs.push(self.manifest.clone());
        write_layout(dir, self.manifest.descriptor(), &blobs, name)
    }

    /// Writes an OCI archive (a tar of a layout holding only this image) to `path`.
    /// `name` as for [`Image::write_oci_layout`]; give a full name for `ctr images import`.
    pub fn write_oci_archive(&self, path: &Path, name: &str) -> Result<()> {
        write_archive(path, &self.oci_archive(name)?)
    }

    /// The bytes [`Image::write_oci_archive`] writes.
    pub fn oci_archive(&self, name: &str) -> Result<Vec<u8>> {
        let mut blobs = self.blobs();
        blobs.push(self.manifest.clone());
        layout_tar(self.manifest.descriptor(), &blobs, name)
    }

    /// Writes the archive `docker save` would (`manifest.json`, `<config hex>.json`,
    /// `<diff id hex>/layer.tar` uncompressed), which `docker load` and
    /// `skopeo copy docker-archive:` read. `repo_tag` is e.g. `busybox:latest`.
    pub fn write_docker_archive(&self, path: &Path, repo_tag: &str) -> Result<()> {
        write_archive(path, &self.docker_archive(repo_tag)?)
    }

    /// The bytes [`Image::write_docker_archive`] writes.
    pub fn docker_archive(&self, repo_tag: &str) -> Result<Vec<u8>> {
        let config_name = format!("{}.json", self.config.hex());
        let mut layer_names = Vec::new();
        let mut tb = TarBuilder::new();
        for layer in &self.layers {
            let dir = format!("{}/", digest_hex(&layer.diff_id));
            let name = format!("{dir}layer.tar");
            if layer_names.contains(&name) {
                layer_names.push(name);
                continue;
            }
            tb.dir(&dir, 0o755).file(&name, &layer.tar()?, 0o644);
            layer_names.push(name);
        }
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]);
        tb.file(&config_name, &self.config.data, 0o644);
        tb.file("manifest.json", &serde_json::to_vec(&manifest)?, 0o644);
        Ok(tb.finish())
    }
}

/// Builds an [`Index`] (a multi-platform image) from images.
#[derive(Default)]
pub struct IndexBuilder {
    images: Vec<Image>,
    format: Option<Format>,
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }

    /// Adds an image; its [`Image::platform`] goes into the index entry.
    pub fn image(mut self, image: Image) -> Self {
        self.images.push(image);
        self
    }

    /// OCI index or Docker manifest list; by default that of the first image.
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    pub fn build(self) -> Result<Index> {
        if self.images.is_empty() {
            bail!("an index needs at least one image");
        }
        let format = self.format.unwrap_or(self.images[0].format);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": format.index_media_type(),
            "manifests": self.images.iter().map(Image::descriptor).collect::<Vec<_>>(),
        });
        let index = Blob::new(format.index_media_type(), serde_json::to_vec(&index)?);
        Ok(Index {
            index,
            images: self.images,
            format,
        })
    }
}

/// A multi-platform image: an OCI index (or Docker manifest list) and its images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The index JSON itself.
    pub index: Blob,
    pub images: Vec<Image>,
    pub format: Format,
}

impl Index {
    /// The index digest: what a registry calls the multi-platform image's digest.
    pub fn digest(&self) -> &str {
        &self.index.digest
    }

    /// The image for `platform`, if any.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        self.images.iter().find(|i| &i.platform == platform)
    }

    /// Every blob: the images' configs, layers and manifests (once each); not the index.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut out: Vec<Blob> = Vec::new();
        for image in &self.images {
            let mut blobs = image.blobs();
            blobs.push(image.manifest.clone());
            for b in blobs {
                if !out.iter().any(|o| o.digest == b.digest) {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Like [`Image::write_oci_layout`], with the index as the tagged entry.
    pub fn write_oci_layout(&self, dir: &Path, name: &str) -> Result<()> {
        let mut blobs = self.blobs();
        blobs.push(self.index.clone());
        write_layout(dir, self.index.descriptor(), &blobs, name)
    }

    /// Like [`Image::write_oci_archive`], with the index as the tagged entry.
    pub fn write_oci_archive(&self, path: &Path, name: &str) -> Result<()> {
        write_archive(path, &self.oci_archive(name)?)
    }

    /// The bytes [`Index::write_oci_archive`] writes.
    pub fn oci_archive(&self, name: &str) -> Result<Vec<u8>> {
        let mut blobs = self.blobs();
        blobs.push(self.index.clone());
        layout_tar(self.index.descriptor(), &blobs, name)
    }
}

/// The `index.json` annotations for `name`: a bare tag (no `:` nor `/`, e.g. `latest`) gives
/// only [`ANNOTATION_REF_NAME`]; a full name (`docker.io/library/busybox:latest`, or
/// `busybox` plus `:tag`) gives its tag (`latest` when it has none) as
/// [`ANNOTATION_REF_NAME`] and the name as [`ANNOTATION_CONTAINERD_NAME`].
pub fn ref_annotations(name: &str) -> Map<String, Value> {
    let mut a = Map::new();
    if !name.contains([':', '/']) {
        a.insert(ANNOTATION_REF_NAME.into(), json!(name));
        return a;
    }
    let after_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (full, tag) = match name[after_slash..].rfind(':') {
        Some(i) => (name.to_owned(), name[after_slash + i + 1..].to_owned()),
        None => (format!("{name}:latest"), "latest".to_owned()),
    };
    a.insert(ANNOTATION_CONTAINERD_NAME.into(), json!(full));
    a.insert(ANNOTATION_REF_NAME.into(), json!(tag));
    a
}

fn index_entry(mut descriptor: Value, name: &str) -> Value {
    descriptor["annotations"] = Value::Object(ref_annotations(name));
    descriptor
}

fn layout_tar(descriptor: Value, blobs: &[Blob], name: &str) -> Result<Vec<u8>> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [index_entry(descriptor, name)],
    });
    let mut tb = TarBuilder::new();
    tb.file("oci-layout", &oci_layout_file(), 0o644)
        .file("index.json", &serde_json::to_vec(&index)?, 0o644)
        .dir("blobs/", 0o755)
        .dir("blobs/sha256/", 0o755);
    let mut done: Vec<&str> = Vec::new();
    for b in blobs {
        if !done.contains(&b.digest.as_str()) {
            tb.file(&format!("blobs/sha256/{}", b.hex()), &b.data, 0o644);
            done.push(&b.digest);
        }
    }
    Ok(tb.finish())
}

fn oci_layout_file() -> Vec<u8> {
    serde_json::to_vec(&json!({"imageLayoutVersion": OCI_LAYOUT_VERSION})).unwrap()
}

fn write_layout(dir: &Path, descriptor: Value, blobs: &[Blob], name: &str) -> Result<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
    fs::write(dir.join("oci-layout"), oci_layout_file())?;
    for b in blobs {
        let p = blob_dir.join(b.hex());
        if !p.exists() {
            fs::write(&p, &b.data).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let index_path = dir.join("index.json");
    let mut index = if index_path.exists() {
        serde_json::from_slice(&fs::read(&index_path)?)
            .with_context(|| format!("parsing {}", index_path.display()))?
    } else {
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    };
    let entry = index_entry(descriptor, name);
    let manifests = index["manifests"]
        .as_array_mut()
        .context("index.json without manifests")?;
    manifests.retain(|m| m["annotations"] != entry["annotations"]);
    manifests.push(entry);
    fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(())
}

fn write_archive(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
