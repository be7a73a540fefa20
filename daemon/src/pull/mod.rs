//! Pulling images from registries into the content store.
//!
//! [`Puller::pull`] resolves a reference (trying the registry's mirrors in order, then its
//! upstream), picks the platform's manifest out of an index, and streams the index, manifest,
//! config and layers into the [`ContentStore`] — every blob through a [`Writer`] that checks
//! size and digest before it lands in `blobs/`. Layers are fetched a few at a time; a blob
//! already in the store is skipped; an interrupted download resumes from its ingest with an
//! HTTP range request. The wire protocol (auth challenges, token exchange, range requests) is
//! `oci-client`'s; manifest parsing, platform choice, mirrors and verification are ours.
//!
//! [`Writer`]: crate::content::Writer

mod config;
mod platform;
mod reference;

pub use config::{
    default_server, is_loopback, Capability, Credentials, HostConfig, Mirror, RegistryConfig,
};
pub use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
pub use platform::{InvalidPlatform, Platform};
pub use reference::{parse_reference, Reference};

use crate::content::{ContentError, ContentStore, Digest, Writer};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, LayerDescriptor,
};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests and indexes larger than this are refused (containerd's limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

const ACCEPT: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// What failed in a pull; every variant names the image reference.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid registry settings for {host}: {reason}")]
    Config { host: String, reason: String },
    #[error("{reference}: {what} not found at {endpoint}: {message}")]
    NotFound {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: unauthorized at {endpoint} fetching {what} (credentials missing or rejected): {message}")]
    Unauthorized {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: fetching {what} from {endpoint}: {message}")]
    Transport {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: registry {endpoint} failed fetching {what}: {message}")]
    Registry {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: invalid {what}: {reason}")]
    InvalidManifest {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("{reference}: no manifest for platform {wanted} in index {index} (available: {})", available.join(", "))]
    NoMatchingPlatform {
        reference: String,
        /// `os/arch[/variant]`
        wanted: String,
        index: Digest,
        available: Vec<String>,
    },
    #[error("{reference}: storing {what}: {source}")]
    Content {
        reference: String,
        what: String,
        #[source]
        source: ContentError,
    },
}

/// Which part of an image a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl BlobKind {
    fn name(self) -> &'static str {
        match self {
            BlobKind::Index => "index",
            BlobKind::Manifest => "manifest",
            BlobKind::Config => "config",
            BlobKind::Layer => "layer",
        }
    }
}

/// Where a blob is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Another pull is writing it (its ingest ref is locked); waiting for that.
    Waiting,
    /// Bytes are arriving (`offset` so far); the first event of a resumed download has the
    /// resumed offset.
    Downloading,
    /// Already in the store; not fetched.
    Exists,
    /// Committed.
    Done,
}

/// One progress event.
#[derive(Debug, Clone)]
pub struct Progress {
    pub digest: Digest,
    pub kind: BlobKind,
    pub state: ProgressState,
    pub offset: u64,
    pub total: u64,
}

/// Receives progress events; called from the pulling tasks, so keep it quick (e.g. send on a
/// channel).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Options of one pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Which manifest of an index to take; default: the host's ([`Platform::host`]).
    pub platform: Platform,
    /// How many blobs to download at once.
    pub max_concurrent_downloads: usize,
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            max_concurrent_downloads: 3,
            progress: None,
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("max_concurrent_downloads", &self.max_concurrent_downloads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A pulled image: everything it consists of is in the content store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalised reference (`docker.io/library/busybox:latest`); a mirror does not change it.
    pub name: String,
    /// The index or manifest list the reference named, if it named one.
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest: OciImageManifest,
    pub config_digest: Digest,
    pub layers: Vec<OciDescriptor>,
    /// From the image config (`os`, `architecture`, `variant`).
    pub platform: Platform,
    /// The endpoint (`http://127.0.0.1:5000`) that resolved the reference.
    pub endpoint: String,
}

/// One place to fetch a registry's content from: a mirror or the upstream.
struct Endpoint {
    url: String,
    host: String,
    mirror: bool,
    capabilities: Vec<Capability>,
    client: Client,
    auth: RegistryAuth,
}

impl Endpoint {
    /// `reference` addressed to this endpoint: a mirror gets the original registry as `ns`
    /// (as containerd sends it), an upstream with another server is simply renamed.
    fn target(&self, reference: &Reference) -> Reference {
        if self.mirror {
            let mut r = reference.clone();
            r.set_mirror_registry(self.host.clone());
            r
        } else if self.host == reference.resolve_registry() {
            reference.clone()
        } else {
            let (registry, repo) = (self.host.clone(), reference.repository().to_owned());
            match (reference.tag(), reference.digest()) {
                (Some(t), Some(d)) => {
                    Reference::with_tag_and_digest(registry, repo, t.to_owned(), d.to_owned())
                }
                (_, Some(d)) => Reference::with_digest(registry, repo, d.to_owned()),
                (t, None) => Reference::with_tag(registry, repo, t.unwrap_or("latest").to_owned()),
            }
        }
    }
}

/// Pulls images into a content store. Cheap to share (`Arc`); clients (connection pools,
/// tokens) are kept per registry.
pub struct Puller {
    store: ContentStore,
    config: RegistryConfig,
    endpoints: Mutex<HashMap<String, Arc<Vec<Arc<Endpoint>>>>>,
}

static CRYPTO: Once = Once::new();

/// Installs rustls' ring provider as the process default (reqwest is built without one).
fn install_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The per-pull state shared by the blob fetches.
struct Ctx<'a> {
    name: &'a str,
    reference: &'a Reference,
    endpoints: Vec<Arc<Endpoint>>,
    progress: Option<ProgressFn>,
}

impl Ctx<'_> {
    fn report(
        &self,
        digest: &Digest,
        kind: BlobKind,
        state: ProgressState,
        offset: u64,
        total: u64,
    ) {
        if let Some(p) = &self.progress {
            p(&Progress {
                digest: digest.clone(),
                kind,
                state,
                offset,
                total,
            });
        }
    }

    fn content(&self, what: impl Into<String>) -> impl FnOnce(ContentError) -> PullError + '_ {
        let what = what.into();
        move |source| PullError::Content {
            reference: self.name.to_owned(),
            what,
            source,
        }
    }

    fn invalid(&self, what: &str, reason: impl Into<String>) -> PullError {
        PullError::InvalidManifest {
            reference: self.name.to_owned(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Maps an oci-client error to ours.
fn classify(e: OciDistributionError, reference: &str, endpoint: &str, what: &str) -> PullError {
    let (reference, endpoint, what) = (reference.to_owned(), endpoint.to_owned(), what.to_owned());
    match e {
        OciDistributionError::UnauthorizedError { url } => PullError::Unauthorized {
            reference,
            what,
            endpoint,
            message: format!("HTTP 401 from {url}"),
        },
        OciDistributionError::AuthenticationFailure(message) => PullError::Unauthorized {
            reference,
            what,
            endpoint,
            message,
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let message = format!("{message} ({url})");
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => PullError::NotFound {
                    reference,
                    what,
                    endpoint,
                    message,
                },
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    PullError::Unauthorized {
                        reference,
                        what,
                        endpoint,
                        message,
                    }
                }
                _ => PullError::Registry {
                    reference,
                    what,
                    endpoint,
                    message,
                },
            }
        }
        OciDistributionError::ServerError { code, url, message } => {
            let message = format!("HTTP {code} from {url}: {}", message.trim());
            match code {
                404 => PullError::NotFound {
                    reference,
                    what,
                    endpoint,
                    message,
                },
                401 | 403 => PullError::Unauthorized {
                    reference,
                    what,
                    endpoint,
                    message,
                },
                _ => PullError::Registry {
                    reference,
                    what,
                    endpoint,
                    message,
                },
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            PullError::DigestMismatch {
                reference,
                what: format!("{what} from {endpoint}"),
                expected,
                actual,
            }
        }
        OciDistributionError::RequestError(e) => PullError::Transport {
            reference,
            what,
            endpoint,
            message: error_chain(&e),
        },
        OciDistributionError::IoError(e) => PullError::Transport {
            reference,
            what,
            endpoint,
            message: error_chain(&e),
        },
        other => PullError::Registry {
            reference,
            what,
            endpoint,
            message: other.to_string(),
        },
    }
}

/// `e: cause: cause`, for errors (reqwest's) whose Display hides the cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The media type a manifest says it has, or guessed from its fields.
fn media_type_of(doc: &Value) -> Option<String> {
    if let Some(mt) = doc.get("mediaType").and_then(Value::as_str) {
        return Some(mt.to_owned());
    }
    if doc.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if doc.get("config").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

fn descriptor_size(ctx: &Ctx<'_>, what: &str, size: i64) -> Result<u64, PullError> {
    u64::try_from(size).map_err(|_| ctx.invalid(what, format!("negative size {size}")))
}

impl Puller {
    pub fn new(store: ContentStore, config: RegistryConfig) -> Puller {
        Puller {
            store,
            config,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The endpoints of `registry`, mirrors first, built once.
    async fn endpoints(&self, registry: &str) -> Result<Arc<Vec<Arc<Endpoint>>>, PullError> {
        let mut cache = self.endpoints.lock().await;
        if let Some(e) = cache.get(registry) {
            return Ok(e.clone());
        }
        let host = self.config.host(registry);
        let mut list = Vec::new();
        for m in &host.mirrors {
            list.push(Arc::new(
                build_endpoint(
                    registry,
                    &m.url,
                    true,
                    m.capabilities.clone(),
                    m.skip_verify,
                    &m.ca,
                    m.auth.as_ref(),
                )
                .await?,
            ));
        }
        let server = host
            .server
            .clone()
            .unwrap_or_else(|| default_server(registry));
        let caps = host
            .capabilities
            .clone()
            .unwrap_or_else(|| vec![Capability::Pull, Capability::Resolve]);
        list.push(Arc::new(
            build_endpoint(
                registry,
                &server,
                false,
                caps,
                host.skip_verify,
                &host.ca,
                host.auth.as_ref(),
            )
            .await?,
        ));
        let list = Arc::new(list);
        cache.insert(registry.to_owned(), list.clone());
        Ok(list)
    }

    /// Pulls `image` (`busybox`, `host:port/repo:tag`, `repo@sha256:…`) into the store.
    pub async fn pull(&self, image: &str, opts: &PullOptions) -> Result<PulledImage, PullError> {
        let started = Instant::now();
        let reference = parse_reference(image)?;
        let name = reference.whole();
        let all = self.endpoints(reference.registry()).await?;
        let by_digest = reference.digest().is_some();
        let resolvers: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|e| {
                e.capabilities.contains(&Capability::Resolve)
                    || by_digest && e.capabilities.contains(&Capability::Pull)
            })
            .cloned()
            .collect();
        let mut ctx = Ctx {
            name: &name,
            reference: &reference,
            endpoints: Vec::new(),
            progress: opts.progress.clone(),
        };
        if resolvers.is_empty() {
            return Err(PullError::Config {
                host: reference.registry().to_owned(),
                reason: "no endpoint may resolve references".into(),
            });
        }

        // 1. resolve: the first endpoint that has the manifest wins
        let (top, top_digest, resolver) = self
            .fetch_manifest(&ctx, &resolvers, &reference, "manifest")
            .await?;
        if let Some(want) = reference.digest() {
            if top_digest.as_str() != want {
                return Err(PullError::DigestMismatch {
                    reference: name.clone(),
                    what: "manifest".into(),
                    expected: want.to_owned(),
                    actual: top_digest.to_string(),
                });
            }
        }
        info!(image = %name, digest = %top_digest, endpoint = %resolver.url, "resolved");
        // blobs: in configured order, from the endpoints that may pull; those that failed
        // to resolve (down, or without the image) go last, so a dead mirror is not waited
        // for once per blob, while a pull-only mirror still serves blobs first
        let failed: Vec<&Arc<Endpoint>> = resolvers
            .iter()
            .take_while(|e| !Arc::ptr_eq(e, &resolver))
            .collect();
        let pullers = all
            .iter()
            .filter(|e| e.capabilities.contains(&Capability::Pull));
        let is_failed = |e: &&Arc<Endpoint>| failed.iter().any(|f| Arc::ptr_eq(f, e));
        ctx.endpoints
            .extend(pullers.clone().filter(|e| !is_failed(e)).cloned());
        ctx.endpoints.extend(pullers.filter(is_failed).cloned());

        let doc: Value =
            serde_json::from_slice(&top).map_err(|e| ctx.invalid("manifest", e.to_string()))?;
        let media_type = media_type_of(&doc)
            .ok_or_else(|| ctx.invalid("manifest", "neither a manifest nor an index"))?;
        if doc.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
            return Err(ctx.invalid(
                "manifest",
                format!(
                    "unsupported schemaVersion {} (only 2)",
                    doc["schemaVersion"]
                ),
            ));
        }

        let (index_digest, manifest_bytes, manifest_digest, manifest_media_type) =
            if is_index(&media_type) {
                let index: OciImageIndex =
                    serde_json::from_value(doc).map_err(|e| ctx.invalid("index", e.to_string()))?;
                self.put_small(&ctx, BlobKind::Index, &top_digest, &top)
                    .await?;
                let entry = self.choose(&ctx, &index, &top_digest, &opts.platform)?;
                let digest = Digest::parse(&entry.digest)
                    .map_err(|e| ctx.invalid("index", e.to_string()))?;
                let size = descriptor_size(&ctx, "index", entry.size)?;
                let by_digest = reference.clone_with_digest(digest.to_string());
                let (bytes, got, _) = self
                    .fetch_manifest(&ctx, &ctx.endpoints, &by_digest, "platform manifest")
                    .await?;
                if got != digest {
                    return Err(PullError::DigestMismatch {
                        reference: name.clone(),
                        what: "platform manifest".into(),
                        expected: digest.to_string(),
                        actual: got.to_string(),
                    });
                }
                if bytes.len() as u64 != size {
                    return Err(ctx.invalid(
                        "index",
                        format!(
                            "manifest {digest} is {} bytes, the index says {size}",
                            bytes.len()
                        ),
                    ));
                }
                let doc: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ctx.invalid("manifest", e.to_string()))?;
                let mt = media_type_of(&doc).unwrap_or_default();
                if !is_manifest(&mt) {
                    return Err(ctx.invalid(
                        "manifest",
                        format!("{digest} from the index is a {mt:?}, not an image manifest"),
                    ));
                }
                (Some(top_digest), bytes, digest, mt)
            } else if is_manifest(&media_type) {
                (None, top, top_digest, media_type)
            } else {
                return Err(
                    ctx.invalid("manifest", format!("unsupported media type {media_type:?}"))
                );
            };

        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ctx.invalid("manifest", format!("{manifest_digest}: {e}")))?;
        let config_digest = Digest::parse(&manifest.config.digest)
            .map_err(|e| ctx.invalid("manifest", e.to_string()))?;
        let mut blobs = vec![(BlobKind::Config, manifest.config.clone())];
        for layer in &manifest.layers {
            Digest::parse(&layer.digest).map_err(|e| ctx.invalid("manifest", e.to_string()))?;
            descriptor_size(&ctx, "manifest", layer.size)?;
            blobs.push((BlobKind::Layer, layer.clone()));
        }
        descriptor_size(&ctx, "manifest", manifest.config.size)?;

        // 2. config and layers, a few at a time; the manifest last, so a manifest in the
        // store means its blobs are too
        let parallel = opts.max_concurrent_downloads.max(1);
        let ctx = &ctx;
        let fetches: Vec<_> = blobs
            .into_iter()
            .map(|(kind, desc)| async move { self.fetch_blob(ctx, kind, &desc).await })
            .collect();
        futures_util::stream::iter(fetches)
            .buffer_unordered(parallel)
            .try_collect::<Vec<()>>()
            .await?;
        self.put_small(ctx, BlobKind::Manifest, &manifest_digest, &manifest_bytes)
            .await?;

        let config = self
            .store
            .read_all(&config_digest)
            .await
            .map_err(ctx.content("config"))?;
        let config: Value =
            serde_json::from_slice(&config).map_err(|e| ctx.invalid("config", e.to_string()))?;
        let field = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_owned);
        let platform = Platform {
            os: field("os").unwrap_or_default(),
            architecture: field("architecture").unwrap_or_default(),
            variant: field("variant"),
        };
        info!(image = %name, manifest = %manifest_digest, %platform, elapsed = ?started.elapsed(), "pulled");
        Ok(PulledImage {
            name: name.clone(),
            index_digest,
            manifest_digest,
            manifest_media_type,
            layers: manifest.layers.clone(),
            manifest,
            config_digest,
            platform,
            endpoint: resolver.url.clone(),
        })
    }

    /// The index entry for `wanted`, or an error listing what the index has.
    fn choose<'i>(
        &self,
        ctx: &Ctx<'_>,
        index: &'i OciImageIndex,
        index_digest: &Digest,
        wanted: &Platform,
    ) -> Result<&'i oci_client::manifest::ImageIndexEntry, PullError> {
        let mut available = Vec::new();
        for entry in &index.manifests {
            let Some(p) = &entry.platform else { continue };
            let platform = Platform {
                os: p.os.to_string(),
                architecture: p.architecture.to_string(),
                variant: p.variant.clone(),
            };
            if wanted.matches(&platform) && is_manifest(&entry.media_type) {
                debug!(image = %ctx.name, %platform, digest = %entry.digest, "platform chosen");
                return Ok(entry);
            }
            available.push(platform.to_string());
        }
        Err(PullError::NoMatchingPlatform {
            reference: ctx.name.to_owned(),
            wanted: wanted.to_string(),
            index: index_digest.clone(),
            available,
        })
    }

    /// Fetches a manifest or index (by tag or digest) from the first endpoint that has it.
    async fn fetch_manifest(
        &self,
        ctx: &Ctx<'_>,
        endpoints: &[Arc<Endpoint>],
        reference: &Reference,
        what: &str,
    ) -> Result<(Vec<u8>, Digest, Arc<Endpoint>), PullError> {
        let mut last = None;
        for ep in endpoints {
            let target = ep.target(reference);
            match ep.client.pull_manifest_raw(&target, &ep.auth, ACCEPT).await {
                Ok((bytes, _)) => {
                    if bytes.len() > MAX_MANIFEST_SIZE {
                        return Err(ctx.invalid(
                            what,
                            format!("{} bytes, more than {MAX_MANIFEST_SIZE}", bytes.len()),
                        ));
                    }
                    // oci-client checked the body against the reference's digest and the
                    // registry's Docker-Content-Digest; the digest we keep is our own hash
                    let digest = Digest::of(&bytes);
                    return Ok((bytes.to_vec(), digest, ep.clone()));
                }
                Err(e) => {
                    let e = classify(e, ctx.name, &ep.url, what);
                    if endpoints.len() > 1 {
                        warn!(image = %ctx.name, endpoint = %ep.url, error = %e, "endpoint failed, trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// Opens the ingest for `digest`, waiting while another pull holds it. `None` if the blob
    /// turned up in the store meanwhile.
    async fn open_ingest(
        &self,
        ctx: &Ctx<'_>,
        kind: BlobKind,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<Writer>, PullError> {
        let reference = format!("{}-{digest}", kind.name());
        let mut reported = false;
        loop {
            match self
                .store
                .writer(&reference, Some((digest.clone(), size)))
                .await
            {
                Ok(w) => {
                    // committed by another pull between our check and the lock
                    if self
                        .store
                        .exists(digest)
                        .await
                        .map_err(ctx.content(kind.name()))?
                    {
                        w.abort().await.map_err(ctx.content(kind.name()))?;
                        return Ok(None);
                    }
                    return Ok(Some(w));
                }
                Err(ContentError::RefLocked(_)) => {
                    if !reported {
                        debug!(image = %ctx.name, %digest, "another pull is fetching it, waiting");
                        ctx.report(digest, kind, ProgressState::Waiting, 0, size);
                        reported = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if self
                        .store
                        .exists(digest)
                        .await
                        .map_err(ctx.content(kind.name()))?
                    {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(ctx.content(kind.name())(e)),
            }
        }
    }

    /// Stores a manifest or index we already hold in memory.
    async fn put_small(
        &self,
        ctx: &Ctx<'_>,
        kind: BlobKind,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), PullError> {
        let size = bytes.len() as u64;
        if self
            .store
            .exists(digest)
            .await
            .map_err(ctx.content(kind.name()))?
        {
            ctx.report(digest, kind, ProgressState::Exists, size, size);
            return Ok(());
        }
        let Some(mut w) = self.open_ingest(ctx, kind, digest, size).await? else {
            return Ok(());
        };
        let what = format!("{} {digest}", kind.name());
        w.restart().await.map_err(ctx.content(what.clone()))?;
        w.write_all(bytes)
            .await
            .map_err(ctx.content(what.clone()))?;
        w.commit().await.map_err(ctx.content(what))?;
        ctx.report(digest, kind, ProgressState::Done, size, size);
        Ok(())
    }

    /// Fetches one config or layer into the store unless it is there.
    async fn fetch_blob(
        &self,
        ctx: &Ctx<'_>,
        kind: BlobKind,
        desc: &OciDescriptor,
    ) -> Result<(), PullError> {
        let digest =
            Digest::parse(&desc.digest).map_err(|e| ctx.invalid("manifest", e.to_string()))?;
        let size = descriptor_size(ctx, "manifest", desc.size)?;
        let what = format!("{} {digest}", kind.name());
        let existing = match self.store.info(&digest).await {
            Ok(info) => Some(info),
            Err(ContentError::NotFound(_)) => None,
            Err(e) => return Err(ctx.content(what)(e)),
        };
        if let Some(info) = existing {
            if info.size != size {
                return Err(ctx.invalid(
                    "manifest",
                    format!(
                        "{what} is {} bytes in the store, the manifest says {size}",
                        info.size
                    ),
                ));
            }
            debug!(image = %ctx.name, %digest, "already in the store");
            ctx.report(&digest, kind, ProgressState::Exists, size, size);
            return Ok(());
        }
        let Some(mut writer) = self.open_ingest(ctx, kind, &digest, size).await? else {
            ctx.report(&digest, kind, ProgressState::Exists, size, size);
            return Ok(());
        };
        let mut last = None;
        for ep in &ctx.endpoints {
            if writer.offset() == size {
                break; // complete in the ingest already: only the commit is left
            }
            match self
                .download(ctx, ep, kind, desc, &digest, size, &mut writer)
                .await
            {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    if ctx.endpoints.len() > 1 {
                        warn!(image = %ctx.name, endpoint = %ep.url, error = %e, "endpoint failed, trying the next");
                    }
                    let fatal = matches!(e, PullError::Content { .. });
                    last = Some(e);
                    if fatal {
                        break;
                    }
                }
            }
        }
        match last {
            // the whole blob arrived but the stream reported an error (oci-client's own
            // digest check): commit, which checks it and discards a bad ingest
            Some(_) if writer.offset() == size => {}
            Some(PullError::Content { source, .. })
                if matches!(source, ContentError::SizeExceeded { .. }) =>
            {
                let _ = writer.abort().await;
                return Err(PullError::Content {
                    reference: ctx.name.to_owned(),
                    what,
                    source,
                });
            }
            Some(e) => return Err(e), // the ingest is kept, to resume
            None => {}
        }
        writer.commit().await.map_err(ctx.content(what))?;
        ctx.report(&digest, kind, ProgressState::Done, size, size);
        Ok(())
    }

    /// Streams the rest of a blob from `ep` into `writer`, resuming at its offset.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        ctx: &Ctx<'_>,
        ep: &Endpoint,
        kind: BlobKind,
        desc: &OciDescriptor,
        digest: &Digest,
        size: u64,
        writer: &mut Writer,
    ) -> Result<(), PullError> {
        let what = format!("{} {digest}", kind.name());
        let target = ep.target(ctx.reference);
        // foreign-layer URLs are never followed: they could leak to any host
        let no_urls = None;
        let layer = LayerDescriptor {
            digest: &desc.digest,
            urls: &no_urls,
        };
        let offset = writer.offset();
        let classify = |e| classify(e, ctx.name, &ep.url, &what);
        let mut stream = if offset > 0 {
            match ep
                .client
                .pull_blob_stream_partial(&target, &layer, offset, None)
                .await
                .map_err(classify)?
            {
                BlobResponse::Partial(s) => {
                    info!(image = %ctx.name, %digest, offset, size, "resuming download");
                    s
                }
                BlobResponse::Full(s) => {
                    warn!(image = %ctx.name, %digest, offset, endpoint = %ep.url, "range request ignored, downloading from the start");
                    writer.restart().await.map_err(ctx.content(what.clone()))?;
                    s
                }
            }
        } else {
            ep.client
                .pull_blob_stream(&target, &layer)
                .await
                .map_err(classify)?
        };
        debug!(image = %ctx.name, %digest, offset, size, endpoint = %ep.url, "downloading");
        ctx.report(
            digest,
            kind,
            ProgressState::Downloading,
            writer.offset(),
            size,
        );
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PullError::Transport {
                reference: ctx.name.to_owned(),
                what: what.clone(),
                endpoint: ep.url.clone(),
                message: error_chain(&e),
            })?;
            writer
                .write_all(&chunk)
                .await
                .map_err(ctx.content(what.clone()))?;
            ctx.report(
                digest,
                kind,
                ProgressState::Downloading,
                writer.offset(),
                size,
            );
        }
        Ok(())
    }
}

/// The client of `registry`'s upstream endpoint with its credentials, for pushes (mirrors
/// only serve pulls): `(client, auth, url, host)`.
pub(crate) async fn upstream_client(
    config: &RegistryConfig,
    registry: &str,
) -> Result<(Client, RegistryAuth, String, String), PullError> {
    let host = config.host(registry);
    let server = host
        .server
        .clone()
        .unwrap_or_else(|| default_server(registry));
    let ep = build_endpoint(
        registry,
        &server,
        false,
        vec![Capability::Push],
        host.skip_verify,
        &host.ca,
        host.auth.as_ref(),
    )
    .await?;
    Ok((ep.client, ep.auth, ep.url, ep.host))
}

/// Builds the client of one endpoint URL (`http(s)://host[:port]`).
async fn build_endpoint(
    registry: &str,
    url: &str,
    mirror: bool,
    capabilities: Vec<Capability>,
    skip_verify: bool,
    ca: &[std::path::PathBuf],
    auth: Option<&Credentials>,
) -> Result<Endpoint, PullError> {
    let bad = |reason: String| PullError::Config {
        host: registry.to_owned(),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(format!("endpoint {url:?} has no http:// or https://")))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(bad(format!("endpoint {url:?}: a path is not supported")));
    }
    let protocol = match scheme {
        "http" => ClientProtocol::Http,
        "https" => ClientProtocol::Https,
        _ => {
            return Err(bad(format!(
                "endpoint {url:?}: scheme must be http or https"
            )))
        }
    };
    let mut extra_root_certificates = Vec::new();
    for path in ca {
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| bad(format!("reading CA {}: {e}", path.display())))?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    install_crypto_provider();
    let config = ClientConfig {
        protocol,
        accept_invalid_certificates: skip_verify,
        extra_root_certificates,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("rcd/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    let client = Client::try_from(config).map_err(|e| bad(format!("endpoint {url}: {e}")))?;
    let auth = match auth {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    client.store_auth_if_needed(host, &auth).await;
    debug!(registry, endpoint = url, mirror, "registry endpoint");
    Ok(Endpoint {
        url: format!("{scheme}://{host}"),
        host: host.to_owned(),
        mirror,
        capabilities,
        client,
        auth,
    })
}
