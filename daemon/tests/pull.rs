//! Pulls from a real `docker-registry` on loopback (rtest), into a fresh content store.

use rcd::content::{ContentError, ContentStore, Digest};
use rcd::pull::{
    BlobKind, Capability, Mirror, Platform, Progress, ProgressState, PullError, PullOptions,
    PulledImage, Puller, RegistryConfig,
};
use rtest::{busybox_image, busybox_index, pause_image, Format, Image, ImageBuilder, Registry};
use std::sync::{Arc, Mutex};
use std::time::Instant;

async fn puller(config: RegistryConfig) -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).await.unwrap();
    (dir, Puller::new(store, config))
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

/// Checks every blob of `image` is in the store, byte for byte, and `pulled` describes it.
async fn assert_pulled(store: &ContentStore, pulled: &PulledImage, image: &Image) {
    assert_eq!(pulled.manifest_digest, digest(image.digest()));
    assert_eq!(pulled.config_digest, digest(&image.config.digest));
    assert_eq!(
        pulled.manifest_media_type,
        image.format.manifest_media_type()
    );
    let layers: Vec<&str> = pulled.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, image.layer_digests());
    assert_eq!(pulled.platform.architecture, image.platform.architecture);
    assert_eq!(pulled.platform.os, image.platform.os);
    for blob in image.blobs().iter().chain([&image.manifest]) {
        let got = store.read_all(&digest(&blob.digest)).await.unwrap();
        assert!(got == blob.data, "{} differs", blob.digest);
    }
    assert_no_ingest_for(store, None);
}

/// Checks no ingest is left for `digest` (or at all, with `None`).
fn assert_no_ingest_for(store: &ContentStore, digest: Option<&str>) {
    // sibling downloads cancelled by the failure may still be wrapping up: an ingest that
    // vanishes while we list is not one that was left
    let left: Vec<_> = std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let files: Vec<_> = std::fs::read_dir(&p)
                .ok()?
                .filter_map(|f| f.ok().map(|f| f.file_name()))
                .collect();
            Some((
                std::fs::read_to_string(p.join("ref")).unwrap_or_default(),
                files,
            ))
        })
        .filter(|(r, _)| digest.is_none_or(|d| r.ends_with(d)))
        .collect();
    assert!(left.is_empty(), "ingests left: {left:?}");
}

fn recorder() -> (Arc<Mutex<Vec<Progress>>>, PullOptions) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let opts = PullOptions {
        progress: Some(Arc::new(move |p: &Progress| {
            e.lock().unwrap().push(p.clone())
        })),
        ..PullOptions::default()
    };
    (events, opts)
}

#[tokio::test]
async fn pull_by_tag_and_by_digest() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "library/busybox", "latest").unwrap();
    let (_d, p) = puller(RegistryConfig::default()).await;
    let (events, opts) = recorder();

    let name = reg.image_ref("library/busybox", "latest");
    let t = Instant::now();
    let pulled = p.pull(&name, &opts).await.unwrap();
    eprintln!(
        "pulled busybox ({} bytes) from the local registry in {:?}",
        image.size(),
        t.elapsed()
    );
    assert_eq!(pulled.name, name);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.endpoint, reg.url());
    assert_pulled(p.store(), &pulled, image).await;
    {
        let events = events.lock().unwrap();
        let layer = &image.layers[0];
        let done = events
            .iter()
            .find(|e| e.digest.as_str() == layer.digest && e.state == ProgressState::Done)
            .expect("layer done event");
        assert_eq!(
            (done.kind, done.offset, done.total),
            (BlobKind::Layer, layer.size(), layer.size())
        );
        assert!(events
            .iter()
            .any(|e| e.state == ProgressState::Downloading && e.offset > 0 && e.offset < e.total));
    }

    // again: everything is there, nothing is fetched
    events.lock().unwrap().clear();
    let again = p.pull(&name, &opts).await.unwrap();
    assert_eq!(again.manifest_digest, pulled.manifest_digest);
    let events = events.lock().unwrap().clone();
    assert!(
        events.iter().all(|e| e.state == ProgressState::Exists),
        "{events:?}"
    );

    // by digest, into a fresh store
    let (_d2, p2) = puller(RegistryConfig::default()).await;
    let by_digest = format!("{}/library/busybox@{}", reg.host(), image.digest());
    let pulled = p2.pull(&by_digest, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.name, by_digest);
    assert_pulled(p2.store(), &pulled, image).await;

    // a digest the registry does not have
    let missing = format!("{}/library/busybox@{}", reg.host(), Digest::of(b"nope"));
    let err = p2
        .pull(&missing, &PullOptions::default())
        .await
        .unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn multi_arch_index() {
    let reg = Registry::start().unwrap();
    let index = busybox_index();
    reg.push_index(index, "library/busybox", "multi").unwrap();
    let name = reg.image_ref("library/busybox", "multi");

    let (_d, p) = puller(RegistryConfig::default()).await;
    let opts = PullOptions {
        platform: Platform::linux_amd64(),
        ..PullOptions::default()
    };
    let pulled = p.pull(&name, &opts).await.unwrap();
    let amd64 = index.image_for(&rtest::Platform::linux_amd64()).unwrap();
    assert_eq!(pulled.index_digest, Some(digest(index.digest())));
    assert_pulled(p.store(), &pulled, amd64).await;
    assert_eq!(pulled.platform, Platform::linux_amd64());
    assert!(p.store().exists(&digest(index.digest())).await.unwrap());

    let opts = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..PullOptions::default()
    };
    let pulled = p.pull(&name, &opts).await.unwrap();
    let arm64 = index.image_for(&rtest::Platform::linux_arm64()).unwrap();
    assert_pulled(p.store(), &pulled, arm64).await;
    assert_eq!(pulled.platform, Platform::linux_arm64());

    // the host's platform by default
    let pulled = p.pull(&name, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.platform.architecture, Platform::host().architecture);

    let opts = PullOptions {
        platform: "linux/s390x".parse().unwrap(),
        ..PullOptions::default()
    };
    let err = p.pull(&name, &opts).await.unwrap_err();
    eprintln!("expected error: {err}");
    let msg = err.to_string();
    assert!(
        matches!(err, PullError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("linux/s390x")
            && msg.contains("linux/amd64, linux/arm64/v8")
            && msg.contains(&name),
        "{msg}"
    );
}

#[tokio::test]
async fn docker_media_types() {
    let reg = Registry::start().unwrap();
    let image = ImageBuilder::new()
        .format(Format::Docker)
        .layer(rtest::busybox_layer().clone())
        .cmd(&["sh"])
        .build()
        .unwrap();
    reg.push(&image, "docker/busybox", "v2").unwrap();
    let list = rtest::IndexBuilder::new()
        .format(Format::Docker)
        .image(image.clone())
        .build()
        .unwrap();
    reg.push_index(&list, "docker/busybox", "list").unwrap();

    let (_d, p) = puller(RegistryConfig::default()).await;
    let pulled = p
        .pull(
            &reg.image_ref("docker/busybox", "v2"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        pulled.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        pulled.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_pulled(p.store(), &pulled, &image).await;

    let pulled = p
        .pull(
            &reg.image_ref("docker/busybox", "list"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.index_digest, Some(digest(list.digest())));
    assert_pulled(p.store(), &pulled, &image).await;
}

#[tokio::test]
async fn basic_auth() {
    let reg = Registry::builder()
        .htpasswd("alice", "secret")
        .start()
        .unwrap();
    reg.push(pause_image(), "pause", "3.10").unwrap();
    let name = reg.image_ref("pause", "3.10");

    let (_d, p) = puller(RegistryConfig::default()).await;
    let err = p.pull(&name, &PullOptions::default()).await.unwrap_err();
    eprintln!("expected error: {err}");
    let msg = err.to_string();
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");
    assert!(msg.contains(&name) && msg.contains("unauthorized"), "{msg}");
    assert!(p.store().list().await.unwrap().is_empty());

    let config = RegistryConfig::default().credentials(&reg.host(), "alice", "wrong");
    let (_d, p) = puller(config).await;
    let err = p.pull(&name, &PullOptions::default()).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");

    let config = RegistryConfig::default().credentials(&reg.host(), "alice", "secret");
    let (_d, p) = puller(config).await;
    let pulled = p.pull(&name, &PullOptions::default()).await.unwrap();
    assert_pulled(p.store(), &pulled, pause_image()).await;
}

#[tokio::test]
async fn mirror_fallback() {
    const NAME: &str = "registry.k8s.io/pause:3.10";
    let mut upstream = Registry::start().unwrap();
    let mut mirror = Registry::start().unwrap();
    upstream.push(pause_image(), "pause", "3.10").unwrap();
    mirror.push(pause_image(), "pause", "3.10").unwrap();
    let mut config = RegistryConfig::default().mirror("registry.k8s.io", Mirror::new(mirror.url()));
    config.host_mut("registry.k8s.io").server = Some(upstream.url());

    // both up: the mirror serves it, the name stays
    let (_d, p) = puller(config.clone()).await;
    let pulled = p.pull(NAME, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.name, NAME);
    assert_eq!(pulled.endpoint, mirror.url());
    assert_pulled(p.store(), &pulled, pause_image()).await;

    // upstream down: still served by the mirror
    upstream.stop();
    let (_d, p) = puller(config.clone()).await;
    let pulled = p.pull(NAME, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.endpoint, mirror.url());
    assert_pulled(p.store(), &pulled, pause_image()).await;

    // mirror down: the upstream
    upstream.restart().unwrap();
    mirror.stop();
    let (_d, p) = puller(config.clone()).await;
    let pulled = p.pull(NAME, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.endpoint, upstream.url());
    assert_pulled(p.store(), &pulled, pause_image()).await;

    // mirror up but without the image: the upstream
    mirror.restart().unwrap();
    let (_d, p) = puller(config.clone()).await;
    let pulled = p
        .pull("registry.k8s.io/pause:other", &PullOptions::default())
        .await;
    assert!(
        matches!(pulled, Err(PullError::NotFound { .. })),
        "{pulled:?}"
    );
    upstream
        .push(pause_image(), "pause", "only-upstream")
        .unwrap();
    let pulled = p
        .pull(
            "registry.k8s.io/pause:only-upstream",
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.endpoint, upstream.url());

    // a pull-only mirror does not resolve tags, but serves content by digest
    let mut pull_only = Mirror::new(mirror.url());
    pull_only.capabilities = vec![Capability::Pull];
    let mut config = RegistryConfig::default().mirror("registry.k8s.io", pull_only);
    config.host_mut("registry.k8s.io").server = Some(upstream.url());
    let (_d, p) = puller(config.clone()).await;
    let pulled = p.pull(NAME, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.endpoint, upstream.url());
    assert_pulled(p.store(), &pulled, pause_image()).await;
    upstream.stop();
    let (_d, p) = puller(config).await;
    let by_digest = format!("registry.k8s.io/pause@{}", pause_image().digest());
    let pulled = p.pull(&by_digest, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.endpoint, mirror.url());
    assert_pulled(p.store(), &pulled, pause_image()).await;

    // the real upstream (https://registry.k8s.io) is never asked while the mirror has it
    let config = RegistryConfig::default().mirror("registry.k8s.io", Mirror::new(mirror.url()));
    let (_d, p) = puller(config).await;
    let pulled = p.pull(NAME, &PullOptions::default()).await.unwrap();
    assert_eq!(pulled.endpoint, mirror.url());
}

#[tokio::test]
async fn not_found() {
    let reg = Registry::start().unwrap();
    reg.push(pause_image(), "pause", "3.10").unwrap();
    let (_d, p) = puller(RegistryConfig::default()).await;
    for name in [
        reg.image_ref("nosuchrepo", "latest"),
        reg.image_ref("pause", "nosuchtag"),
    ] {
        let err = p.pull(&name, &PullOptions::default()).await.unwrap_err();
        eprintln!("expected error: {err}");
        let msg = err.to_string();
        assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
        assert!(msg.contains(&name) && msg.contains("not found"), "{msg}");
    }
    let err = p
        .pull("Bad Name", &PullOptions::default())
        .await
        .unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, PullError::InvalidReference { .. }), "{err:?}");
    // nothing listening
    let port = {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let err = p
        .pull(&format!("127.0.0.1:{port}/x:y"), &PullOptions::default())
        .await
        .unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, PullError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}/x:y")),
        "{err}"
    );
}

/// An image with one 32 MiB incompressible layer, so a download can be cut halfway.
fn big_image() -> Image {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..(32 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let tar = rtest::TarBuilder::new().file("big", &data, 0o644).finish();
    ImageBuilder::new()
        .compression(rtest::Compression::None)
        .layer_tar(tar)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_stopped_mid_pull_then_resume() {
    let image = big_image();
    let layer = image.layers[0].clone();
    let reg = Registry::start().unwrap();
    reg.push(&image, "big", "1").unwrap();
    let name = reg.image_ref("big", "1");
    let reg = Arc::new(Mutex::new(reg));
    let (_d, p) = puller(RegistryConfig::default()).await;

    // kill the registry once the layer is 1 MiB in and the config (fetched alongside it) is
    // committed: cut earlier, a loaded machine can fail the config's request instead
    let r = reg.clone();
    let config_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = PullOptions {
        progress: Some(Arc::new(move |e: &Progress| {
            use std::sync::atomic::Ordering::SeqCst;
            if e.kind == BlobKind::Config
                && matches!(e.state, ProgressState::Done | ProgressState::Exists)
            {
                config_done.store(true, SeqCst);
            }
            if e.kind == BlobKind::Layer && e.offset >= 1 << 20 && config_done.load(SeqCst) {
                let mut reg = r.lock().unwrap();
                if reg.is_running() {
                    reg.stop();
                }
            }
        })),
        ..PullOptions::default()
    };
    let err = p.pull(&name, &opts).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, PullError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains(&layer.digest), "{err}");
    assert!(!p.store().exists(&digest(&layer.digest)).await.unwrap());
    let committed: Vec<Digest> = p
        .store()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();

    reg.lock().unwrap().restart().unwrap();
    let (events, opts) = recorder();
    let pulled = p.pull(&name, &opts).await.unwrap();
    assert_pulled(p.store(), &pulled, &image).await;
    let events = events.lock().unwrap();
    let first = events
        .iter()
        .find(|e| e.digest.as_str() == layer.digest && e.state == ProgressState::Downloading)
        .expect("layer downloaded");
    assert!(
        first.offset >= 1 << 20 && first.offset < layer.size(),
        "did not resume: first offset {}",
        first.offset
    );
    for d in committed {
        assert!(
            events
                .iter()
                .any(|e| e.digest == d && e.state == ProgressState::Exists),
            "{d} fetched again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image() {
    let reg = Registry::start().unwrap();
    let image = big_image();
    reg.push(&image, "big", "1").unwrap();
    let name = reg.image_ref("big", "1");
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).await.unwrap();
    // one shared puller and one of its own (as two daemons on one store would be)
    let shared = Arc::new(Puller::new(store.clone(), RegistryConfig::default()));
    let other = Arc::new(Puller::new(store.clone(), RegistryConfig::default()));
    let tasks: Vec<_> = [shared.clone(), shared, other]
        .into_iter()
        .map(|p| {
            let name = name.clone();
            tokio::spawn(async move { p.pull(&name, &PullOptions::default()).await })
        })
        .collect();
    // all must finish before the store is checked: a pull that finds a blob committed while it
    // waited may still be wrapping up its own ingest when another pull returns
    let mut pulled = Vec::new();
    for t in tasks {
        pulled.push(t.await.unwrap().unwrap());
    }
    for p in &pulled {
        assert_pulled(&store, p, &image).await;
    }
}

/// Pushes `image`'s blobs and a manifest edited by `edit` as `<repo>:<tag>`.
fn push_edited(
    reg: &Registry,
    image: &Image,
    repo: &str,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    for blob in image.blobs() {
        reg.push_blob(repo, &blob).unwrap();
    }
    let mut m: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
    edit(&mut m);
    let manifest = rtest::Blob::new(&image.manifest.media_type, serde_json::to_vec(&m).unwrap());
    reg.push_manifest(repo, tag, &manifest).unwrap();
}

#[tokio::test]
async fn manifest_lying_about_sizes() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    let real = image.layers[0].size() as i64;
    push_edited(&reg, image, "liar", "bigger", |m| {
        m["layers"][0]["size"] = (real + 10).into()
    });
    push_edited(&reg, image, "liar", "smaller", |m| {
        m["layers"][0]["size"] = (real - 10).into()
    });
    let layer = digest(&image.layers[0].digest);
    for tag in ["bigger", "smaller"] {
        let (_d, p) = puller(RegistryConfig::default()).await;
        let err = p
            .pull(&reg.image_ref("liar", tag), &PullOptions::default())
            .await
            .unwrap_err();
        eprintln!("expected error: {err}");
        let msg = err.to_string();
        match &err {
            PullError::Content {
                source: ContentError::SizeMismatch { .. },
                ..
            } => assert_eq!(tag, "bigger"),
            PullError::Content {
                source: ContentError::SizeExceeded { .. },
                ..
            } => assert_eq!(tag, "smaller"),
            other => panic!("{tag}: {other:?}"),
        }
        assert!(
            msg.contains(&reg.image_ref("liar", tag)) && msg.contains(layer.as_str()),
            "{msg}"
        );
        assert!(
            !p.store().exists(&layer).await.unwrap(),
            "{tag}: layer committed"
        );
        // the layer's ingest is discarded (others cancelled mid-way are kept, to resume)
        assert_no_ingest_for(p.store(), Some(layer.as_str()));
    }
}

/// Flips a byte in the middle of blob `digest` in the registry's own storage: it then serves
/// the bad bytes under the right digest and size.
fn corrupt(reg: &Registry, digest: &str) {
    let hex = &digest["sha256:".len()..];
    let path = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
}

#[tokio::test]
async fn corrupted_manifest_in_registry() {
    let reg = Registry::start().unwrap();
    let image = pause_image();
    reg.push(image, "pause", "3.10").unwrap();
    corrupt(&reg, image.digest());
    let (_d, p) = puller(RegistryConfig::default()).await;
    for name in [
        reg.image_ref("pause", "3.10"),
        format!("{}/pause@{}", reg.host(), image.digest()),
    ] {
        let err = p.pull(&name, &PullOptions::default()).await.unwrap_err();
        eprintln!("expected error: {err}");
        assert!(matches!(err, PullError::DigestMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(image.digest()), "{err}");
    }
    assert!(p.store().list().await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupted_blob_in_registry() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "corrupt", "1").unwrap();
    // flip a byte of the layer in the registry's own storage: it serves the bad bytes under
    // the right digest and size
    let layer = &image.layers[0];
    corrupt(&reg, &layer.digest);

    let (_d, p) = puller(RegistryConfig::default()).await;
    let err = p
        .pull(&reg.image_ref("corrupt", "1"), &PullOptions::default())
        .await
        .unwrap_err();
    eprintln!("expected error: {err}");
    assert!(
        matches!(&err, PullError::Content { source: ContentError::DigestMismatch { expected, .. }, .. }
            if expected.as_str() == layer.digest),
        "{err:?}"
    );
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!p.store().exists(&digest(&layer.digest)).await.unwrap());
    assert!(
        !p.store().exists(&digest(image.digest())).await.unwrap(),
        "manifest stored"
    );
    assert_no_ingest_for(p.store(), Some(&layer.digest));
}
