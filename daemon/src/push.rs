//! Pushing an image from the content store to a registry.
//!
//! [`push`] walks the image from its target (an index and the manifests of it the store
//! holds, or one manifest), then uploads in the order a registry accepts: each manifest's
//! config and layers (a blob the registry already has is skipped), the manifest by digest,
//! and last the target under the reference's tag. Blobs stream from the store's files. The
//! registry settings are the pull's ([`RegistryConfig`]): plain HTTP, CA, credentials of the
//! upstream (mirrors serve pulls only).

use crate::archive::Descriptor;
use crate::content::{ContentError, ContentStore, Digest};
use crate::pull::{
    error_chain, parse_reference, upstream_client, BlobKind, Credentials, Platform, PullError,
    Reference, RegistryConfig,
};
use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::io::ReaderStream;
use tracing::{debug, info};

/// What failed in a push; every variant names the image reference.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid registry settings for {host}: {reason}")]
    Config { host: String, reason: String },
    #[error("{reference}: unauthorized at {endpoint} pushing {what} (credentials missing or rejected): {message}")]
    Unauthorized {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: pushing {what} to {endpoint}: {message}")]
    Transport {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: registry {endpoint} refused {what}: {message}")]
    Registry {
        reference: String,
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("{reference}: {what} {digest} is not in the content store")]
    MissingContent {
        reference: String,
        what: String,
        digest: Digest,
    },
    #[error("{reference}: invalid {what}: {reason}")]
    Invalid {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("{reference}: no manifest for platform {wanted} in index {index}")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        index: Digest,
    },
    #[error("{reference}: reading {what}: {source}")]
    Content {
        reference: String,
        what: String,
        #[source]
        source: ContentError,
    },
}

/// Where a blob's upload is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushState {
    /// The registry has it already; not sent.
    Exists,
    /// Bytes are going out (`offset` so far).
    Uploading,
    Done,
}

#[derive(Debug, Clone)]
pub struct PushProgress {
    pub digest: Digest,
    pub kind: BlobKind,
    pub state: PushState,
    pub offset: u64,
    pub total: u64,
}

pub type PushProgressFn = Arc<dyn Fn(&PushProgress) + Send + Sync>;

#[derive(Clone, Default)]
pub struct PushOptions {
    /// Credentials for this push, over those of the registry settings.
    pub credentials: Option<Credentials>,
    /// Push only this platform's manifest of an index target, under the reference's tag
    /// (as `ctr push --platform`); default: the whole index.
    pub platform: Option<Platform>,
    pub progress: Option<PushProgressFn>,
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("credentials", &self.credentials)
            .field("platform", &self.platform)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The normalised reference pushed to.
    pub name: String,
    /// The digest the reference now names (the target's, or the chosen platform's manifest).
    pub digest: Digest,
    pub endpoint: String,
    /// Blobs (configs and layers) sent, and those the registry already had.
    pub uploaded: usize,
    pub skipped: usize,
}

/// One manifest to push, with what it needs first.
struct Step {
    desc: Descriptor,
    data: Vec<u8>,
    blobs: Vec<(Descriptor, BlobKind)>,
}

struct Ctx<'a> {
    name: &'a str,
    endpoint: String,
    client: Client,
    progress: Option<PushProgressFn>,
}

impl Ctx<'_> {
    fn classify(&self, what: &str, e: OciDistributionError) -> PushError {
        let (reference, endpoint, what) =
            (self.name.to_owned(), self.endpoint.clone(), what.to_owned());
        let unauthorized = |message| PushError::Unauthorized {
            reference: reference.clone(),
            what: what.clone(),
            endpoint: endpoint.clone(),
            message,
        };
        match e {
            OciDistributionError::UnauthorizedError { url } => {
                unauthorized(format!("HTTP 401 from {url}"))
            }
            OciDistributionError::AuthenticationFailure(m) => unauthorized(m),
            OciDistributionError::ServerError { code, url, message }
                if code == 401 || code == 403 =>
            {
                unauthorized(format!("HTTP {code} from {url}: {}", message.trim()))
            }
            OciDistributionError::RegistryError { envelope, url }
                if envelope.errors.iter().any(|e| {
                    matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                unauthorized(format!("{} ({url})", envelope_message(&envelope)))
            }
            OciDistributionError::RegistryError { envelope, url } => PushError::Registry {
                reference,
                what,
                endpoint,
                message: format!("{} ({url})", envelope_message(&envelope)),
            },
            OciDistributionError::RequestError(e)
                if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) =>
            {
                unauthorized(error_chain(&e))
            }
            OciDistributionError::RequestError(e) => PushError::Transport {
                reference,
                what,
                endpoint,
                message: error_chain(&e),
            },
            OciDistributionError::IoError(e) => PushError::Transport {
                reference,
                what,
                endpoint,
                message: error_chain(&e),
            },
            other => PushError::Registry {
                reference,
                what,
                endpoint,
                message: other.to_string(),
            },
        }
    }

    fn report(&self, desc: &Descriptor, kind: BlobKind, state: PushState, offset: u64) {
        if let Some(p) = &self.progress {
            p(&PushProgress {
                digest: desc.digest.clone(),
                kind,
                state,
                offset,
                total: desc.size,
            });
        }
    }

    fn content(&self, what: String) -> impl FnOnce(ContentError) -> PushError + '_ {
        move |source| match source {
            ContentError::NotFound(digest) => PushError::MissingContent {
                reference: self.name.to_owned(),
                what,
                digest,
            },
            source => PushError::Content {
                reference: self.name.to_owned(),
                what,
                source,
            },
        }
    }
}

fn envelope_message(envelope: &oci_client::errors::OciEnvelope) -> String {
    envelope
        .errors
        .iter()
        .map(|e| format!("{:?}: {}", e.code, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pushes the image `target` (an index or manifest in `store`) to `image`
/// (`host[:port]/repo:tag`, normalised as pulls are). A reference with a digest must name
/// the target's (or the chosen platform's) digest.
pub async fn push(
    store: &ContentStore,
    config: &RegistryConfig,
    target: &Descriptor,
    image: &str,
    opts: &PushOptions,
) -> Result<PushedImage, PushError> {
    let started = Instant::now();
    let reference = parse_reference(image).map_err(|e| match e {
        PullError::InvalidReference { reference, reason } => {
            PushError::InvalidReference { reference, reason }
        }
        e => PushError::InvalidReference {
            reference: image.to_owned(),
            reason: e.to_string(),
        },
    })?;
    let name = reference.whole();
    let registry = reference.registry().to_owned();
    let (client, mut auth, endpoint, host) =
        upstream_client(config, &registry)
            .await
            .map_err(|e| match e {
                PullError::Config { host, reason } => PushError::Config { host, reason },
                e => PushError::Config {
                    host: registry.clone(),
                    reason: e.to_string(),
                },
            })?;
    if let Some(c) = &opts.credentials {
        auth = RegistryAuth::Basic(c.username.clone(), c.password.clone());
    }
    let ctx = Ctx {
        name: &name,
        endpoint,
        client,
        progress: opts.progress.clone(),
    };
    // the reference as the endpoint's host knows it (a `server` may differ from the name)
    let repo = reference.repository().to_owned();
    let at = |tag: Option<&str>, digest: Option<&str>| match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(host.clone(), repo.clone(), t.into(), d.into())
        }
        (_, Some(d)) => Reference::with_digest(host.clone(), repo.clone(), d.into()),
        (t, None) => Reference::with_tag(host.clone(), repo.clone(), t.unwrap_or("latest").into()),
    };
    let top_ref = at(reference.tag(), None);

    // 1. plan: every manifest (children first) and its blobs, all read from the store
    let mut top = target.clone();
    let mut steps = Vec::new();
    let top_data = read_manifest(&ctx, store, &top).await?;
    if let Some(children) = top_data.1.get("manifests").and_then(|m| m.as_array()) {
        let children: Vec<Descriptor> = children
            .iter()
            .map(|c| serde_json::from_value(c.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| PushError::Invalid {
                reference: name.clone(),
                what: format!("index {}", top.digest),
                reason: e.to_string(),
            })?;
        if let Some(p) = &opts.platform {
            let child = children
                .iter()
                .find(|c| c.platform.as_ref().is_some_and(|cp| p.matches(cp)))
                .ok_or_else(|| PushError::NoMatchingPlatform {
                    reference: name.clone(),
                    wanted: p.to_string(),
                    index: top.digest.clone(),
                })?;
            top = child.clone();
            let (data, doc) = read_manifest(&ctx, store, &top).await?;
            steps.push(plan_manifest(&ctx, &top, data, &doc)?);
        } else {
            for c in &children {
                let (data, doc) = read_manifest(&ctx, store, c).await?;
                steps.push(plan_manifest(&ctx, c, data, &doc)?);
            }
            steps.push(Step {
                desc: top.clone(),
                data: top_data.0,
                blobs: Vec::new(),
            });
        }
    } else {
        steps.push(plan_manifest(&ctx, &top, top_data.0, &top_data.1)?);
    }
    if let Some(want) = reference.digest() {
        if want != top.digest.as_str() {
            return Err(PushError::InvalidReference {
                reference: name.clone(),
                reason: format!("the image's digest is {}", top.digest),
            });
        }
    }
    for s in &steps {
        for (b, _) in &s.blobs {
            match store.info(&b.digest).await {
                Ok(info) if info.size == b.size => {}
                Ok(info) => {
                    return Err(PushError::Invalid {
                        reference: name.clone(),
                        what: format!("manifest {}", s.desc.digest),
                        reason: format!(
                            "it says blob {} has {} bytes, the store has {}",
                            b.digest, b.size, info.size
                        ),
                    })
                }
                Err(e) => {
                    return Err(ctx.content(format!("blob of manifest {}", s.desc.digest))(
                        e,
                    ))
                }
            }
        }
    }

    // 2. authenticate once for push (and pull) on this repository
    ctx.client
        .auth(&top_ref, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| ctx.classify("credentials", e))?;

    // 3. blobs, then manifests by digest, then the tag
    let (mut uploaded, mut skipped) = (0, 0);
    let mut done: Vec<Digest> = Vec::new();
    let last = steps.len() - 1;
    for (i, step) in steps.iter().enumerate() {
        for (b, kind) in &step.blobs {
            if done.contains(&b.digest) {
                continue;
            }
            if push_blob(&ctx, store, &top_ref, b, *kind).await? {
                uploaded += 1;
            } else {
                skipped += 1;
            }
            done.push(b.digest.clone());
        }
        let r = if i == last {
            match reference.digest() {
                Some(d) => at(None, Some(d)),
                None => top_ref.clone(),
            }
        } else {
            at(None, Some(step.desc.digest.as_str()))
        };
        let what = format!("manifest {}", step.desc.digest);
        let ct =
            http::HeaderValue::from_str(&step.desc.media_type).map_err(|e| PushError::Invalid {
                reference: name.clone(),
                what: what.clone(),
                reason: format!("media type {:?}: {e}", step.desc.media_type),
            })?;
        ctx.client
            .push_manifest_raw(&r, step.data.clone(), ct)
            .await
            .map_err(|e| ctx.classify(&what, e))?;
        debug!(image = %name, digest = %step.desc.digest, "pushed manifest");
    }
    info!(image = %name, digest = %top.digest, uploaded, skipped,
        elapsed_ms = started.elapsed().as_millis() as u64, "pushed");
    Ok(PushedImage {
        name: name.clone(),
        digest: top.digest,
        endpoint: ctx.endpoint.clone(),
        uploaded,
        skipped,
    })
}

async fn read_manifest(
    ctx: &Ctx<'_>,
    store: &ContentStore,
    desc: &Descriptor,
) -> Result<(Vec<u8>, serde_json::Value), PushError> {
    let what = format!("manifest {}", desc.digest);
    if !(crate::archive::is_index(&desc.media_type)
        || crate::archive::is_manifest(&desc.media_type))
    {
        return Err(PushError::Invalid {
            reference: ctx.name.to_owned(),
            what,
            reason: format!("unsupported media type {:?}", desc.media_type),
        });
    }
    let data = store
        .read_all(&desc.digest)
        .await
        .map_err(ctx.content(what.clone()))?;
    let invalid = |reason: String| PushError::Invalid {
        reference: ctx.name.to_owned(),
        what: what.clone(),
        reason,
    };
    if data.len() as u64 != desc.size {
        return Err(invalid(format!(
            "the descriptor says {} bytes, the store has {}",
            desc.size,
            data.len()
        )));
    }
    crate::archive::parse_manifest(&data, desc).map_err(|e| invalid(e.to_string()))?;
    let doc = serde_json::from_slice(&data).map_err(|e| invalid(e.to_string()))?;
    Ok((data, doc))
}

fn plan_manifest(
    ctx: &Ctx<'_>,
    desc: &Descriptor,
    data: Vec<u8>,
    doc: &serde_json::Value,
) -> Result<Step, PushError> {
    if doc.get("manifests").is_some() {
        return Err(PushError::Invalid {
            reference: ctx.name.to_owned(),
            what: format!("index {}", desc.digest),
            reason: "nested indexes are not supported by push".into(),
        });
    }
    let parse = |v: &serde_json::Value| -> Result<Descriptor, PushError> {
        serde_json::from_value(v.clone()).map_err(|e| PushError::Invalid {
            reference: ctx.name.to_owned(),
            what: format!("manifest {}", desc.digest),
            reason: e.to_string(),
        })
    };
    let mut blobs = vec![(parse(&doc["config"])?, BlobKind::Config)];
    for l in doc["layers"].as_array().into_iter().flatten() {
        blobs.push((parse(l)?, BlobKind::Layer));
    }
    Ok(Step {
        desc: desc.clone(),
        data,
        blobs,
    })
}

/// Uploads one blob unless the registry has it; `true` if it was sent.
async fn push_blob(
    ctx: &Ctx<'_>,
    store: &ContentStore,
    r: &Reference,
    desc: &Descriptor,
    kind: BlobKind,
) -> Result<bool, PushError> {
    let what = format!("blob {}", desc.digest);
    if ctx
        .client
        .blob_exists(r, desc.digest.as_str())
        .await
        .map_err(|e| ctx.classify(&what, e))?
    {
        ctx.report(desc, kind, PushState::Exists, desc.size);
        return Ok(false);
    }
    let file = store
        .reader(&desc.digest)
        .await
        .map_err(ctx.content(what.clone()))?;
    let sent = Arc::new(AtomicU64::new(0));
    let progress = ctx.progress.clone();
    let (d, total) = (desc.digest.clone(), desc.size);
    let counted = sent.clone();
    let stream = ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
        let chunk = chunk.map_err(OciDistributionError::IoError)?;
        let offset = counted.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if let Some(p) = &progress {
            p(&PushProgress {
                digest: d.clone(),
                kind,
                state: PushState::Uploading,
                offset,
                total,
            });
        }
        Ok(chunk)
    });
    ctx.client
        .push_blob_stream(r, stream, desc.digest.as_str(), Some(desc.size))
        .await
        .map_err(|e| ctx.classify(&what, e))?;
    let n = sent.load(Ordering::Relaxed);
    if n != desc.size {
        return Err(PushError::Invalid {
            reference: ctx.name.to_owned(),
            what,
            reason: format!("sent {n} bytes, the manifest says {}", desc.size),
        });
    }
    ctx.report(desc, kind, PushState::Done, desc.size);
    debug!(image = %ctx.name, digest = %desc.digest, size = desc.size, "pushed blob");
    Ok(true)
}
