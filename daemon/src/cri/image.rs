//! The ImageService: ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo over the
//! image records of namespace `k8s.io` (rcd's pull pipeline: download, unpack, record).
//!
//! A CRI image is one image config: its id is the config digest, its repo tags are the
//! names of the records pointing at it, its repo digests `<repository>@<manifest digest>`.

use super::{now_ns, Cri, NAMESPACE};
use crate::content::Digest;
use crate::metadata::ImageRecord;
use crate::pull::{parse_reference, PullOptions, Puller};
use crate::server::service::{blocking, metadata_status};
use k8s_cri::v1 as cri;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::Status;
use tracing::info;

/// What the manifest of an image says, read once per manifest digest.
#[derive(Clone, Debug)]
struct Parts {
    config: String,
    size: u64,
    user: String,
}

fn parts_cache() -> &'static std::sync::Mutex<HashMap<String, Parts>> {
    static C: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Parts>>> =
        std::sync::OnceLock::new();
    C.get_or_init(Default::default)
}

async fn parts(cri: &Cri, rec: &ImageRecord) -> Option<Parts> {
    let m = rec.manifest.as_ref().unwrap_or(&rec.target);
    if let Some(p) = parts_cache().lock().unwrap().get(m.digest.as_str()) {
        return Some(p.clone());
    }
    let data = cri.d.store.read_all(&m.digest).await.ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let config = doc["config"]["digest"].as_str()?.to_owned();
    let size = m.size
        + doc["config"]["size"].as_u64().unwrap_or(0)
        + doc["layers"]
            .as_array()
            .map(|l| l.iter().filter_map(|x| x["size"].as_u64()).sum::<u64>())
            .unwrap_or(0);
    let cfg = cri
        .d
        .store
        .read_all(&Digest::parse(&config).ok()?)
        .await
        .ok()?;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).ok()?;
    let user = cfg["config"]["User"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let p = Parts { config, size, user };
    parts_cache()
        .lock()
        .unwrap()
        .insert(m.digest.to_string(), p.clone());
    Some(p)
}

/// The image id (config digest) of a record.
pub async fn image_id(cri: &Cri, rec: &ImageRecord) -> String {
    parts(cri, rec).await.map(|p| p.config).unwrap_or_default()
}

/// `<repository>@<digest>` of a record.
pub fn repo_digest(rec: &ImageRecord) -> Option<String> {
    let r = parse_reference(&rec.name).ok()?;
    let whole = r.whole();
    let repo = match whole.rsplit_once('@') {
        Some((repo, _)) => repo.to_owned(),
        None => {
            // strip the tag: the last ':' after the last '/'
            let slash = whole.rfind('/').unwrap_or(0);
            match whole[slash..].rfind(':') {
                Some(i) => whole[..slash + i].to_owned(),
                None => whole.clone(),
            }
        }
    };
    Some(format!("{repo}@{}", rec.target.digest))
}

/// Finds the record an image reference (name, id, `sha256:` id prefix, or repo digest)
/// means.
pub fn resolve(cri: &Cri, name: &str) -> Result<ImageRecord, Status> {
    find(cri, name)?.ok_or_else(|| Status::not_found(format!("image {name:?} not found")))
}

fn find(cri: &Cri, name: &str) -> Result<Option<ImageRecord>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("no image given"));
    }
    let md = &cri.d.md;
    if let Some(r) = md.image(NAMESPACE, name).map_err(metadata_status)? {
        return Ok(Some(r));
    }
    if let Ok(r) = parse_reference(name) {
        if let Some(r) = md.image(NAMESPACE, &r.whole()).map_err(metadata_status)? {
            return Ok(Some(r));
        }
    }
    // an id (config digest, with or without `sha256:`, or a prefix) or a repo digest
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let is_id = hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let all = md.images(NAMESPACE).map_err(metadata_status)?;
    let cache = parts_cache().lock().unwrap();
    for r in all {
        if is_id {
            let m = r.manifest.as_ref().unwrap_or(&r.target);
            if let Some(p) = cache.get(m.digest.as_str()) {
                if p.config.trim_start_matches("sha256:").starts_with(hex) {
                    return Ok(Some(r));
                }
            }
        } else if repo_digest(&r).as_deref() == Some(name) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Loads the parts of every record (so ids resolve), grouped by image id.
async fn images(cri: &Cri) -> Result<BTreeMap<String, (Vec<ImageRecord>, Parts)>, Status> {
    let all = cri.d.md.images(NAMESPACE).map_err(metadata_status)?;
    let mut out: BTreeMap<String, (Vec<ImageRecord>, Parts)> = BTreeMap::new();
    for r in all {
        let Some(p) = parts(cri, &r).await else {
            continue;
        };
        out.entry(p.config.clone())
            .or_insert_with(|| (vec![], p))
            .0
            .push(r);
    }
    Ok(out)
}

fn to_cri(id: &str, recs: &[ImageRecord], p: &Parts) -> cri::Image {
    let mut tags: Vec<String> = recs
        .iter()
        .filter(|r| !r.name.contains('@'))
        .map(|r| r.name.clone())
        .collect();
    tags.sort();
    let mut digests: Vec<String> = recs.iter().filter_map(repo_digest).collect();
    digests.sort();
    digests.dedup();
    let user = p.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) if user.is_empty() => (None, String::new()),
        Err(_) => (None, user.to_owned()),
    };
    cri::Image {
        id: id.to_owned(),
        repo_tags: tags,
        repo_digests: digests,
        size: p.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: id.to_owned(),
            ..Default::default()
        }),
        pinned: false,
    }
}

pub async fn list(cri: &Cri) -> Result<Vec<cri::Image>, Status> {
    Ok(images(cri)
        .await?
        .iter()
        .map(|(id, (recs, p))| to_cri(id, recs, p))
        .collect())
}

pub async fn status(
    cri: &Cri,
    req: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    let name = req.image.map(|i| i.image).unwrap_or_default();
    let all = images(cri).await?;
    let Some(rec) = find(cri, &name)? else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let Some(p) = parts(cri, &rec).await else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let recs = all.get(&p.config).map(|x| x.0.clone()).unwrap_or_default();
    let image = to_cri(&p.config, &recs, &p);
    let mut info = HashMap::new();
    if req.verbose {
        let cfg = match Digest::parse(&p.config) {
            Ok(d) => cri
                .d
                .store
                .read_all(&d)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()),
            Err(_) => None,
        };
        info.insert(
            "info".to_owned(),
            serde_json::json!({
                "imageSpec": cfg,
                "chainID": "",
                "target": rec.target.digest.to_string(),
                "platform": rec.platform,
            })
            .to_string(),
        );
    }
    Ok(cri::ImageStatusResponse {
        image: Some(image),
        info,
    })
}

pub async fn pull(cri: &Cri, req: cri::PullImageRequest) -> Result<String, Status> {
    let name = req.image.map(|i| i.image).unwrap_or_default();
    if name.is_empty() {
        return Err(Status::invalid_argument("no image given"));
    }
    let reference = parse_reference(&name)
        .map_err(|e| Status::invalid_argument(format!("image {name:?}: {e}")))?;
    let d = &cri.d;
    let puller: Arc<Puller> = match req.auth {
        Some(a) if !a.username.is_empty() || !a.auth.is_empty() => {
            let (user, pass) = if !a.username.is_empty() {
                (a.username, a.password)
            } else {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.auth.trim())
                    .map_err(|_| Status::invalid_argument("auth: invalid base64"))?;
                let s = String::from_utf8_lossy(&raw).into_owned();
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| Status::invalid_argument("auth: expected user:password"))?;
                (u.to_owned(), p.to_owned())
            };
            let host = reference.registry().to_owned();
            let cfg = d.puller.config().clone().credentials(&host, &user, &pass);
            Arc::new(Puller::new(d.store.clone(), cfg))
        }
        _ => d.puller.clone(),
    };
    // nobody reads progress: the CRI's PullImage is one call
    let (events, _) = tokio::sync::mpsc::channel(1);
    let rec = crate::server::images::pull_and_record(
        d,
        NAMESPACE,
        &puller,
        &reference.whole(),
        &PullOptions::default(),
        true,
        &events,
    )
    .await?;
    let id = image_id(cri, &rec).await;
    info!(image = %rec.name, id = %id, "cri image pulled");
    Ok(id)
}

pub async fn remove(cri: &Cri, req: cri::RemoveImageRequest) -> Result<(), Status> {
    let name = req.image.map(|i| i.image).unwrap_or_default();
    let Some(rec) = find(cri, &name)? else {
        // kubelet's image GC may race: removing what is gone is fine
        return Ok(());
    };
    let id = image_id(cri, &rec).await;
    // every name of the image goes (CRI removes images, not tags), unless a name was given
    let names: Vec<String> = if name.starts_with("sha256:") || id.contains(&name) {
        images(cri)
            .await?
            .get(&id)
            .map(|x| x.0.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default()
    } else {
        vec![rec.name.clone()]
    };
    let md = cri.d.md.clone();
    let names_ = names.clone();
    blocking(move || {
        md.write(|tx| {
            for n in &names_ {
                tx.delete_image(NAMESPACE, n)?;
            }
            Ok(())
        })
        .map_err(metadata_status)
    })
    .await?;
    crate::server::images::images_deleted(&cri.d, NAMESPACE, &names);
    Ok(())
}

fn dir_usage(path: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            inodes += 1;
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    use std::os::unix::fs::MetadataExt;
                    bytes += m.blocks() * 512;
                }
            }
        }
    }
    (bytes, inodes)
}

pub async fn fs_info(cri: &Cri) -> Result<cri::ImageFsInfoResponse, Status> {
    let dir = cri.d.settings.root.join("overlayfs");
    let d2 = dir.clone();
    let (bytes, inodes) = tokio::task::spawn_blocking(move || dir_usage(&d2))
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let usage = cri::FilesystemUsage {
        timestamp: now_ns(),
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: dir.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value { value: bytes }),
        inodes_used: Some(cri::UInt64Value { value: inodes }),
    };
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage.clone()],
        container_filesystems: vec![usage],
    })
}

/// Whether `reference` (`host/path/name:tag` or `...@sha256:…`) is what a user means by
/// `filter`: the same repository path or its trailing components (`busybox`,
/// `library/busybox`), with the tag compared only when the filter names one.
pub fn short_name_matches(reference: &str, filter: &str) -> bool {
    fn split(r: &str) -> (&str, Option<&str>) {
        let r = r.split('@').next().unwrap_or(r);
        match r.rsplit_once(':') {
            // a colon after the last slash is a tag, before it a registry port
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (r, None),
        }
    }
    let (repo, tag) = split(reference);
    let (want, want_tag) = split(filter);
    if want.is_empty() {
        return false;
    }
    let repo_ok = repo == want || repo.ends_with(&format!("/{want}"));
    repo_ok && (want_tag.is_none() || want_tag == tag)
}

#[cfg(test)]
mod short_name_tests {
    use super::short_name_matches as m;

    #[test]
    fn short_names_match_trailing_components() {
        let r = "127.0.0.1:5000/rtest/busybox:latest";
        assert!(m(r, "rtest/busybox"));
        assert!(m(r, "busybox"));
        assert!(m(r, "busybox:latest"));
        assert!(m(r, "127.0.0.1:5000/rtest/busybox"));
        assert!(!m(r, "busybox:1.36"));
        assert!(!m(r, "box"));
        assert!(!m(r, "test/busybox"));
        assert!(!m(r, ""));
        assert!(m("docker.io/library/busybox@sha256:ab", "library/busybox"));
    }
}
