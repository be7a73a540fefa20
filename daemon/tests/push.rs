//! Pushes from a real content store to a real `docker-registry` on loopback, checked with
//! skopeo and by pulling back with rcd's puller.

use rcd::archive::{self, Descriptor, ImportOptions};
use rcd::content::{ContentStore, Digest};
use rcd::pull::{
    BlobKind, Credentials, Platform, PullOptions, PulledImage, Puller, RegistryConfig,
};
use rcd::push::{push, PushError, PushOptions, PushProgress, PushState};
use rtest::{busybox_image, busybox_index, Registry};
use serde_json::Value;
use std::process::Command;
use std::sync::{Arc, Mutex};

async fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).await.unwrap();
    (dir, store)
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn skopeo_inspect(args: &[&str]) -> Value {
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg("--tls-verify=false")
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .output()
        .expect("skopeo (run scripts/deps.sh)");
    assert!(
        out.status.success(),
        "skopeo inspect {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The pulled image's target: its index if it came from one, else its manifest.
async fn target(store: &ContentStore, p: &PulledImage) -> Descriptor {
    match &p.index_digest {
        Some(i) => {
            let data = store.read_all(i).await.unwrap();
            let v: Value = serde_json::from_slice(&data).unwrap();
            Descriptor::new(
                v["mediaType"].as_str().unwrap(),
                i.clone(),
                data.len() as u64,
            )
        }
        None => Descriptor::new(
            p.manifest_media_type.clone(),
            p.manifest_digest.clone(),
            store.info(&p.manifest_digest).await.unwrap().size,
        ),
    }
}

#[tokio::test]
async fn pushes_a_pulled_image_to_another_repository_and_pulls_it_back() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "library/busybox", "latest").unwrap();
    let (_d, s) = store().await;
    let cfg = RegistryConfig::default();
    let pulled = Puller::new(s.clone(), cfg.clone())
        .pull(
            &reg.image_ref("library/busybox", "latest"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    let t = target(&s, &pulled).await;

    let events = Arc::new(Mutex::new(Vec::<PushProgress>::new()));
    let e = events.clone();
    let opts = PushOptions {
        progress: Some(Arc::new(move |p: &PushProgress| {
            e.lock().unwrap().push(p.clone())
        })),
        ..Default::default()
    };
    let dest = reg.image_ref("copies/busybox", "v2");
    let pushed = push(&s, &cfg, &t, &dest, &opts).await.unwrap();
    assert_eq!(pushed.digest, digest(image.digest()));
    assert_eq!(pushed.name, dest);
    assert_eq!(pushed.uploaded, 1 + image.layers.len());
    assert_eq!(pushed.skipped, 0);
    {
        let ev = events.lock().unwrap();
        let layer = digest(&image.layers[0].digest);
        assert!(ev.iter().any(|p| p.digest == layer
            && p.kind == BlobKind::Layer
            && p.state == PushState::Done
            && p.offset == image.layers[0].size()));
        assert!(ev.iter().any(|p| p.state == PushState::Uploading));
    }
    assert_eq!(
        reg.manifest_digest("copies/busybox", "v2")
            .unwrap()
            .as_deref(),
        Some(image.digest())
    );
    let inspect = skopeo_inspect(&[&format!("docker://{dest}")]);
    assert_eq!(inspect["Digest"], image.digest());
    assert_eq!(inspect["Layers"][0], image.layers[0].digest);

    // pulled back into an empty store: the same image
    let (_d2, s2) = store().await;
    let back = Puller::new(s2.clone(), cfg.clone())
        .pull(&dest, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(back.manifest_digest, pulled.manifest_digest);
    assert_eq!(back.config_digest, pulled.config_digest);

    // again, under another tag: every blob is there already
    let again = push(
        &s,
        &cfg,
        &t,
        &reg.image_ref("copies/busybox", "v3"),
        &PushOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((again.uploaded, again.skipped), (0, 1 + image.layers.len()));

    // by digest: it must be the image's
    let by_digest = format!("{}/copies/busybox@{}", reg.host(), image.digest());
    push(&s, &cfg, &t, &by_digest, &PushOptions::default())
        .await
        .unwrap();
    let wrong = format!("{}/copies/busybox@sha256:{}", reg.host(), "0".repeat(64));
    let e = push(&s, &cfg, &t, &wrong, &PushOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, PushError::InvalidReference { .. }), "{e}");
}

#[tokio::test]
async fn pushes_an_imported_index_whole_or_one_platform() {
    let reg = Registry::start().unwrap();
    let index = busybox_index();
    let (_d, s) = store().await;
    let imported = archive::import(
        &s,
        std::io::Cursor::new(index.oci_archive("example.com/multi:v1").unwrap()),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let t = imported[0].target.clone();
    let cfg = RegistryConfig::default();
    let dest = reg.image_ref("multi", "all");
    let pushed = push(&s, &cfg, &t, &dest, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(pushed.digest, digest(index.digest()));
    assert_eq!(
        reg.manifest_digest("multi", "all").unwrap().as_deref(),
        Some(index.digest())
    );
    for i in &index.images {
        let by_digest = format!("docker://{}/multi@{}", reg.host(), i.digest());
        assert_eq!(skopeo_inspect(&[&by_digest])["Digest"], i.digest());
    }

    // one platform of it, under a tag of its own
    let arm = index.image_for(&rtest::Platform::linux_arm64()).unwrap();
    let opts = PushOptions {
        platform: Some(Platform::linux_arm64()),
        ..Default::default()
    };
    let pushed = push(&s, &cfg, &t, &reg.image_ref("multi", "arm"), &opts)
        .await
        .unwrap();
    assert_eq!(pushed.digest, digest(arm.digest()));
    assert_eq!(
        reg.manifest_digest("multi", "arm").unwrap().as_deref(),
        Some(arm.digest())
    );
    let opts = PushOptions {
        platform: Some(Platform::new("linux", "s390x", None)),
        ..Default::default()
    };
    let e = push(&s, &cfg, &t, &reg.image_ref("multi", "x"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, PushError::NoMatchingPlatform { .. }), "{e}");

    // an index of which the store holds one platform cannot be pushed whole
    let (_d2, s2) = store().await;
    let pulled = Puller::new(s2.clone(), cfg.clone())
        .pull(
            &dest,
            &PullOptions {
                platform: Platform::linux_amd64(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t2 = target(&s2, &pulled).await;
    let e = push(
        &s2,
        &cfg,
        &t2,
        &reg.image_ref("multi", "partial"),
        &PushOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PushError::MissingContent { .. }), "{e}");
    assert!(e.to_string().contains(arm.digest()), "{e}");
    assert_eq!(reg.manifest_digest("multi", "partial").unwrap(), None);
}

#[tokio::test]
async fn push_to_a_registry_with_auth_needs_credentials() {
    let reg = Registry::builder()
        .htpasswd("pusher", "s3cret")
        .start()
        .unwrap();
    let image = busybox_image();
    let (_d, s) = store().await;
    archive::import(
        &s,
        std::io::Cursor::new(
            image
                .oci_archive("docker.io/library/busybox:latest")
                .unwrap(),
        ),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let t = Descriptor::new(
        image.manifest.media_type.clone(),
        digest(image.digest()),
        image.manifest.size(),
    );
    let dest = reg.image_ref("private/busybox", "latest");
    let e = push(
        &s,
        &RegistryConfig::default(),
        &t,
        &dest,
        &PushOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PushError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("unauthorized"), "{e}");

    let wrong = PushOptions {
        credentials: Some(Credentials {
            username: "pusher".into(),
            password: "nope".into(),
        }),
        ..Default::default()
    };
    let e = push(&s, &RegistryConfig::default(), &t, &dest, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(e, PushError::Unauthorized { .. }), "{e}");
    assert_eq!(
        reg.get_with("/v2/private/busybox/tags/list", Some(("pusher", "s3cret")))
            .unwrap()
            .status,
        404
    );

    // credentials from the registry settings, as the daemon's config gives them
    let cfg = RegistryConfig::default().credentials(&reg.host(), "pusher", "s3cret");
    let pushed = push(&s, &cfg, &t, &dest, &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(pushed.digest, digest(image.digest()));
    let (_d2, s2) = store().await;
    let back = Puller::new(s2, cfg)
        .pull(&dest, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(back.manifest_digest, digest(image.digest()));
}

#[tokio::test]
async fn push_of_content_the_store_lacks_fails_before_sending() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    let (_d, s) = store().await;
    let t = Descriptor::new(
        image.manifest.media_type.clone(),
        digest(image.digest()),
        image.manifest.size(),
    );
    let e = push(
        &s,
        &RegistryConfig::default(),
        &t,
        &reg.image_ref("x/y", "z"),
        &PushOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PushError::MissingContent { .. }), "{e}");
    let e = push(
        &s,
        &RegistryConfig::default(),
        &t,
        "Not A Ref",
        &PushOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PushError::InvalidReference { .. }), "{e}");
}
