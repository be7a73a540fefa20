//! Image archive import and export through a real content store, against archives written by
//! skopeo from a real `docker-registry` on loopback, the rtest fixtures, and hostile archives
//! built here.

use rcd::archive::{
    self, ArchiveError, Descriptor, ExportFormat, ExportImage, ExportOptions, ImportOptions,
    ImportedImage, MissingPolicy,
};
use rcd::content::{ContentStore, Digest};
use rcd::pull::{Platform as RcdPlatform, PullOptions, Puller, RegistryConfig};
use rtest::{busybox_image, busybox_index, Blob, Image, Registry, TarBuilder};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

async fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).await.unwrap();
    (dir, store)
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

async fn import_bytes(
    store: &ContentStore,
    data: Vec<u8>,
) -> Result<Vec<ImportedImage>, ArchiveError> {
    archive::import(store, std::io::Cursor::new(data), &ImportOptions::default()).await
}

async fn import_file(store: &ContentStore, path: &Path) -> Vec<ImportedImage> {
    let f = tokio::fs::File::open(path).await.unwrap();
    archive::import(store, f, &ImportOptions::default())
        .await
        .unwrap_or_else(|e| panic!("importing {}: {e}", path.display()))
}

async fn export_to(
    store: &ContentStore,
    images: &[ExportImage],
    path: &Path,
    opts: &ExportOptions,
) {
    let f = tokio::fs::File::create(path).await.unwrap();
    archive::export(store, images, f, opts).await.unwrap();
}

/// Runs a tool (no proxies: everything is on loopback); panics with its output on failure.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/deps.sh)"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo_inspect(arg: &str) -> Value {
    serde_json::from_str(&run("skopeo", &["inspect", "--tls-verify=false", arg])).unwrap()
}

/// Every blob of `image` is in the store byte for byte.
async fn assert_image_in(store: &ContentStore, image: &Image) {
    for blob in image.blobs().iter().chain([&image.manifest]) {
        let got = store.read_all(&digest(&blob.digest)).await.unwrap();
        assert!(got == blob.data, "{} differs", blob.digest);
    }
}

/// Nothing of a failed import is left: no ingest, no blob (the store started empty).
async fn assert_empty(store: &ContentStore) {
    let blobs = store.list().await.unwrap();
    assert!(blobs.is_empty(), "blobs left: {blobs:?}");
    let ingests: Vec<_> = std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .collect();
    assert!(ingests.is_empty(), "ingests left: {ingests:?}");
    let trash: Vec<_> = std::fs::read_dir(store.root().join("trash"))
        .unwrap()
        .collect();
    assert!(trash.is_empty(), "trash left: {trash:?}");
}

fn target_of(image: &Image) -> Descriptor {
    Descriptor::new(
        image.manifest.media_type.clone(),
        digest(image.digest()),
        image.manifest.size(),
    )
}

#[tokio::test]
async fn imports_fixture_oci_and_docker_archives() {
    let image = busybox_image();
    let (_d, s) = store().await;
    let got = import_bytes(
        &s,
        image
            .oci_archive("docker.io/library/busybox:latest")
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].name.as_deref(),
        Some("docker.io/library/busybox:latest")
    );
    assert_eq!(got[0].target.digest, digest(image.digest()));
    assert_eq!(got[0].target.media_type, image.manifest.media_type);
    assert_image_in(&s, image).await;
    assert_eq!(s.list().await.unwrap().len(), 3);

    // a bare tag needs a base name
    let (_d, s) = store().await;
    let opts = ImportOptions {
        base_name: Some("example.com/bb".into()),
        ..Default::default()
    };
    let got = archive::import(
        &s,
        std::io::Cursor::new(image.oci_archive("v1").unwrap()),
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(got[0].name.as_deref(), Some("example.com/bb:v1"));
    let got = import_bytes(&s, image.oci_archive("v1").unwrap())
        .await
        .unwrap();
    assert_eq!(got[0].name, None);

    // docker save: uncompressed layers, a docker schema 2 manifest made on import
    let (_d, s) = store().await;
    let got = import_bytes(&s, image.docker_archive("busybox:1.36").unwrap())
        .await
        .unwrap();
    assert_eq!(
        got[0].name.as_deref(),
        Some("docker.io/library/busybox:1.36")
    );
    assert_eq!(
        got[0].target.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        got[0].target.platform.as_ref().unwrap().architecture,
        image.platform.architecture
    );
    let manifest: Value =
        serde_json::from_slice(&s.read_all(&got[0].target.digest).await.unwrap()).unwrap();
    assert_eq!(manifest["config"]["digest"], image.config.digest);
    let layer = &manifest["layers"][0];
    assert_eq!(layer["digest"], image.layers[0].diff_id);
    assert_eq!(
        layer["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    let tar = s.read_all(&digest(&image.layers[0].diff_id)).await.unwrap();
    assert!(tar == image.layers[0].tar().unwrap());
    // config, layer, manifest: nothing else (docker's own files are not blobs)
    assert_eq!(s.list().await.unwrap().len(), 3);

    // the same archive gzip-compressed
    let (_d, s) = store().await;
    let gz = rtest::Compression::Gzip
        .compress(&image.docker_archive("busybox:1.36").unwrap())
        .unwrap();
    let again = import_bytes(&s, gz).await.unwrap();
    assert_eq!(again, got);
}

#[tokio::test]
async fn skopeo_archives_round_trip_through_import_export_and_the_registry() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    let index = busybox_index();
    reg.push(image, "library/busybox", "latest").unwrap();
    reg.push_index(index, "multi", "latest").unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = |repo| format!("docker://{}", reg.image_ref(repo, "latest"));

    // skopeo → oci-archive (one image, and a whole index) → import
    let oci = t.path().join("oci.tar");
    let name = "docker.io/library/busybox:latest";
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &src("library/busybox"),
            &format!("oci-archive:{}:{name}", oci.display()),
        ],
    );
    let all = t.path().join("all.tar");
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &src("multi"),
            &format!("oci-archive:{}:example.com/multi:v1", all.display()),
        ],
    );
    let (_d, s) = store().await;
    let got = import_file(&s, &oci).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name.as_deref(), Some(name));
    assert_eq!(got[0].target.digest, digest(image.digest()));
    assert_image_in(&s, image).await;
    let got_all = import_file(&s, &all).await;
    assert_eq!(got_all[0].name.as_deref(), Some("example.com/multi:v1"));
    assert_eq!(got_all[0].target.digest, digest(index.digest()));
    for i in &index.images {
        assert_image_in(&s, i).await;
    }

    // skopeo → docker-archive → import: same config and layer content
    let docker = t.path().join("docker.tar");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &src("library/busybox"),
            &format!("docker-archive:{}:busybox:saved", docker.display()),
        ],
    );
    let (_d, s2) = store().await;
    let got_docker = import_file(&s2, &docker).await;
    assert_eq!(
        got_docker[0].name.as_deref(),
        Some("docker.io/library/busybox:saved")
    );
    let m: Value =
        serde_json::from_slice(&s2.read_all(&got_docker[0].target.digest).await.unwrap()).unwrap();
    assert_eq!(m["config"]["digest"], image.config.digest);
    assert_eq!(m["layers"][0]["digest"], image.layers[0].diff_id);

    // export both images (and the index) → skopeo reads the OCI layout and copies it back
    let out = t.path().join("export.tar");
    let images = vec![
        ExportImage {
            name: name.into(),
            target: got[0].target.clone(),
        },
        ExportImage {
            name: "example.com/multi:v1".into(),
            target: got_all[0].target.clone(),
        },
    ];
    export_to(&s, &images, &out, &ExportOptions::default()).await;
    let arg = format!("oci-archive:{}:v1", out.display());
    assert_eq!(skopeo_inspect(&arg)["Digest"], index.digest());
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &arg,
            &format!("docker://{}", reg.image_ref("back/multi", "v1")),
        ],
    );
    assert_eq!(
        reg.manifest_digest("back/multi", "v1").unwrap().as_deref(),
        Some(index.digest())
    );
    run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}:latest", out.display()),
            &format!("docker://{}", reg.image_ref("back/busybox", "v1")),
        ],
    );
    // pulled back with rcd's puller: the very same manifest
    let (_d, s3) = store().await;
    let pulled = Puller::new(s3.clone(), RegistryConfig::default())
        .pull(
            &reg.image_ref("back/busybox", "v1"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, digest(image.digest()));

    // docker's manifest.json in the same archive: skopeo's docker-archive reader takes it
    let d = skopeo_inspect(&format!("docker-archive:{}:busybox:latest", out.display()));
    assert_eq!(d["Layers"].as_array().unwrap().len(), image.layers.len());
    // and the docker-archive import of skopeo's output exports and re-imports unchanged
    let out2 = t.path().join("export2.tar");
    let images2 = vec![ExportImage {
        name: "busybox:saved".into(),
        target: got_docker[0].target.clone(),
    }];
    export_to(&s2, &images2, &out2, &ExportOptions::default()).await;
    let (_d, s4) = store().await;
    let again = import_file(&s4, &out2).await;
    assert_eq!(again, got_docker);
    let digests = |s: &ContentStore| {
        let s = s.clone();
        async move {
            s.list()
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.digest)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(digests(&s4).await, digests(&s2).await);
}

#[tokio::test]
async fn umoci_validates_an_exported_layout() {
    let image = busybox_image();
    let (_d, s) = store().await;
    import_bytes(
        &s,
        image
            .oci_archive("docker.io/library/busybox:latest")
            .unwrap(),
    )
    .await
    .unwrap();
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.tar");
    let images = [ExportImage {
        name: "busybox".into(),
        target: target_of(image),
    }];
    export_to(&s, &images, &out, &ExportOptions::default()).await;
    let layout = t.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(
        "tar",
        &["-xf", out.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    let ls = run("umoci", &["ls", "--layout", layout.to_str().unwrap()]);
    assert_eq!(ls.trim(), "latest");
    run(
        "umoci",
        &["stat", "--image", &format!("{}:latest", layout.display())],
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest[0]["RepoTags"], json!(["busybox:latest"]));
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", image.config.hex())
    );
}

#[tokio::test]
async fn export_of_a_partly_pulled_index_skips_or_fails() {
    let reg = Registry::start().unwrap();
    let index = busybox_index();
    reg.push_index(index, "multi", "latest").unwrap();
    let (_d, s) = store().await;
    let pulled = Puller::new(s.clone(), RegistryConfig::default())
        .pull(
            &reg.image_ref("multi", "latest"),
            &PullOptions {
                platform: RcdPlatform::linux_amd64(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let idx = pulled.index_digest.clone().unwrap();
    let target = Descriptor::new(
        index.index.media_type.clone(),
        idx.clone(),
        s.info(&idx).await.unwrap().size,
    );
    let images = [ExportImage {
        name: "example.com/multi:v1".into(),
        target,
    }];
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.tar");
    let opts = ExportOptions {
        platform: RcdPlatform::linux_amd64(),
        ..Default::default()
    };
    export_to(&s, &images, &out, &opts).await;
    let (_d, s2) = store().await;
    let got = import_file(&s2, &out).await;
    assert_eq!(got[0].target.digest, idx);
    let amd = index.image_for(&rtest::Platform::linux_amd64()).unwrap();
    assert_image_in(&s2, amd).await;
    let arm = index.image_for(&rtest::Platform::linux_arm64()).unwrap();
    assert!(!s2.exists(&digest(arm.digest())).await.unwrap());

    let f = tokio::fs::File::create(t.path().join("y.tar"))
        .await
        .unwrap();
    let strict = ExportOptions {
        missing: MissingPolicy::Fail,
        ..opts
    };
    let e = archive::export(&s, &images, f, &strict).await.unwrap_err();
    assert!(matches!(e, ArchiveError::MissingBlob { .. }), "{e}");
    assert!(e.to_string().contains(arm.digest()), "{e}");
}

// ---- hostile archives -------------------------------------------------------------------

/// An OCI layout tar of `blobs` (name → bytes) with `index` as index.json.
fn layout_tar(index: &Value, blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tb = TarBuilder::new();
    tb.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    for (name, data) in blobs {
        tb.file(name, data, 0o644);
    }
    tb.file("index.json", &serde_json::to_vec(index).unwrap(), 0o644);
    tb.finish()
}

fn blob_entry(b: &Blob) -> (String, Vec<u8>) {
    (format!("blobs/sha256/{}", b.hex()), b.data.clone())
}

fn index_of(manifest: &Blob) -> Value {
    let mut d = manifest.descriptor();
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "docker.io/library/x:1"});
    json!({"schemaVersion": 2, "manifests": [d]})
}

fn busybox_blobs() -> Vec<(String, Vec<u8>)> {
    let image = busybox_image();
    let mut blobs: Vec<_> = image.blobs().iter().map(blob_entry).collect();
    blobs.push(blob_entry(&image.manifest));
    blobs
}

/// The busybox manifest with `edit` applied, and a layout holding it.
fn edited_manifest(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let image = busybox_image();
    let mut m: Value = serde_json::from_slice(&image.manifest.data).unwrap();
    edit(&mut m);
    let m = Blob::new(&image.manifest.media_type, serde_json::to_vec(&m).unwrap());
    let mut blobs: Vec<_> = image.blobs().iter().map(blob_entry).collect();
    blobs.push(blob_entry(&m));
    layout_tar(&index_of(&m), &blobs)
}

async fn refused(data: Vec<u8>) -> ArchiveError {
    let (_d, s) = store().await;
    let e = import_bytes(&s, data).await.unwrap_err();
    assert_empty(&s).await;
    let msg = e.to_string();
    assert!(
        msg.starts_with(|c: char| c.is_lowercase()),
        "lower case: {msg}"
    );
    e
}

#[tokio::test]
async fn hostile_archives_are_refused_and_leave_nothing() {
    let image = busybox_image();
    let good_index = index_of(&image.manifest);

    // entry names leaving the archive
    for name in [&b"../evil"[..], b"/etc/evil", b"blobs/../../evil"] {
        let mut tb = TarBuilder::new();
        tb.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
        tb.raw(tar::EntryType::Regular, name, None, 0o644, b"x", 0, 0);
        let e = refused(tb.finish()).await;
        assert!(matches!(e, ArchiveError::PathTraversal { .. }), "{e}");
        assert!(e.to_string().contains("escapes the archive"), "{e}");
    }
    let mut tb = TarBuilder::new();
    tb.symlink("blobs/sha256/x", "../../../etc/passwd");
    let e = refused(tb.finish()).await;
    assert!(matches!(e, ArchiveError::PathTraversal { .. }), "{e}");
    let mut tb = TarBuilder::new();
    tb.char_device("dev", 1, 3, 0o644);
    let e = refused(tb.finish()).await;
    assert!(matches!(e, ArchiveError::UnsupportedEntry { .. }), "{e}");

    // a blob whose bytes are not what its name says
    let mut blobs = busybox_blobs();
    blobs[0].1.push(b'\n');
    let e = refused(layout_tar(&good_index, &blobs)).await;
    assert!(matches!(e, ArchiveError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&blobs[0].0), "{e}");

    // a missing layer
    let mut blobs = busybox_blobs();
    let layer = format!("blobs/sha256/{}", &image.layers[0].digest[7..]);
    blobs.retain(|(n, _)| *n != layer);
    let e = refused(layout_tar(&good_index, &blobs)).await;
    assert!(matches!(e, ArchiveError::MissingBlob { .. }), "{e}");
    assert!(e.to_string().contains(&image.layers[0].digest), "{e}");

    // a manifest lying about a layer's size, an index lying about the manifest's
    let e = refused(edited_manifest(|m| {
        let size = m["layers"][0]["size"].as_u64().unwrap();
        m["layers"][0]["size"] = json!(size - 1);
    }))
    .await;
    assert!(matches!(e, ArchiveError::SizeMismatch { .. }), "{e}");
    let mut lying = good_index.clone();
    lying["manifests"][0]["size"] = json!(image.manifest.size() + 10);
    let e = refused(layout_tar(&lying, &busybox_blobs())).await;
    assert!(matches!(e, ArchiveError::SizeMismatch { .. }), "{e}");

    // the archive cut in the middle of a layer
    let whole = layout_tar(&good_index, &busybox_blobs());
    let e = refused(whole[..whole.len() / 2].to_vec()).await;
    assert!(matches!(e, ArchiveError::Read(_)), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");

    // not a tar, gzip garbage, empty, a tar of something else
    let e = refused(b"this is not an image archive, just text\n".repeat(30)).await;
    assert!(
        matches!(e, ArchiveError::Read(_) | ArchiveError::UnknownFormat(_)),
        "{e}"
    );
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
    let e = refused(gz).await;
    assert!(matches!(e, ArchiveError::Read(_)), "{e}");
    let e = refused(Vec::new()).await;
    assert!(matches!(e, ArchiveError::UnknownFormat(_)), "{e}");
    let e = refused(TarBuilder::new().file("hello", b"hi", 0o644).finish()).await;
    assert!(matches!(e, ArchiveError::UnknownFormat(_)), "{e}");

    // docker archives: a layer that is not the config's diff ID, a missing layer file
    let mut tb = TarBuilder::new();
    let cfg = format!("{}.json", image.config.hex());
    tb.file(&cfg, &image.config.data, 0o644)
        .file(
            "l/layer.tar",
            &TarBuilder::new().file("x", b"y", 0o644).finish(),
            0o644,
        )
        .file(
            "manifest.json",
            &serde_json::to_vec(
                &json!([{"Config": cfg, "RepoTags": ["a:b"], "Layers": ["l/layer.tar"]}]),
            )
            .unwrap(),
            0o644,
        );
    let e = refused(tb.finish()).await;
    assert!(e.to_string().contains("diff ID"), "{e}");
    let mut tb = TarBuilder::new();
    tb.file(&cfg, &image.config.data, 0o644).file(
        "manifest.json",
        &serde_json::to_vec(
            &json!([{"Config": cfg, "RepoTags": ["a:b"], "Layers": ["l/layer.tar"]}]),
        )
        .unwrap(),
        0o644,
    );
    let e = refused(tb.finish()).await;
    assert!(e.to_string().contains("not in the archive"), "{e}");
    let mut tb = TarBuilder::new();
    tb.file(
        "manifest.json",
        &serde_json::to_vec(&json!([{"Config": "../../etc/passwd", "Layers": []}])).unwrap(),
        0o644,
    );
    let e = refused(tb.finish()).await;
    assert!(matches!(e, ArchiveError::PathTraversal { .. }), "{e}");
}

#[tokio::test]
async fn a_failed_import_keeps_blobs_that_were_there_before() {
    let image = busybox_image();
    let (_d, s) = store().await;
    import_bytes(
        &s,
        image
            .oci_archive("docker.io/library/busybox:latest")
            .unwrap(),
    )
    .await
    .unwrap();
    let before = s.list().await.unwrap();
    let mut blobs = busybox_blobs();
    let layer = format!("blobs/sha256/{}", &image.layers[0].digest[7..]);
    blobs.retain(|(n, _)| *n != layer);
    let e = import_bytes(&s, layout_tar(&index_of(&image.manifest), &blobs))
        .await
        .unwrap_err();
    assert!(matches!(e, ArchiveError::MissingBlob { .. }), "{e}");
    assert_eq!(s.list().await.unwrap(), before);
    assert_eq!(
        std::fs::read_dir(s.root().join("ingest")).unwrap().count(),
        0
    );
}

/// Peak RSS of this process, in KiB.
fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Measures import and export of a docker archive with one large layer (`RCD_ARCHIVE_MIB`,
/// default 256): run with `--ignored --nocapture`. Memory must not grow with the layer.
#[tokio::test]
#[ignore]
async fn measure_large_archive() {
    use sha2::{Digest as _, Sha256};
    use std::io::Write;
    let mib: usize = std::env::var("RCD_ARCHIVE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let t = tempfile::tempdir().unwrap();
    // the layer: a tar of one file of pseudo-random bytes, written and hashed in chunks
    let layer = t.path().join("layer.tar");
    {
        let mut tb = tar::Builder::new(std::fs::File::create(&layer).unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_size((mib << 20) as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let reader = XorShift {
            x: 0x9e37_79b9_7f4a_7c15,
            left: mib << 20,
        };
        tb.append_data(&mut h, "big", reader).unwrap();
        tb.finish().unwrap();
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&layer).unwrap(), &mut hasher).unwrap();
    let diff_id = format!("sha256:{}", hex::encode(hasher.finalize()));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let archive_path = t.path().join("big.tar");
    {
        let mut tb = tar::Builder::new(std::fs::File::create(&archive_path).unwrap());
        tb.append_path_with_name(&layer, "l/layer.tar").unwrap();
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tb.append_data(&mut h, name, data).unwrap();
        };
        add("c.json", &config);
        let m = json!([{"Config": "c.json", "RepoTags": ["big:1"], "Layers": ["l/layer.tar"]}]);
        add("manifest.json", &serde_json::to_vec(&m).unwrap());
        tb.into_inner().unwrap().flush().unwrap();
    }
    std::fs::remove_file(&layer).unwrap();
    let (_d, s) = store().await;
    let before = vm_hwm();
    let started = std::time::Instant::now();
    let got = import_file(&s, &archive_path).await;
    let import = started.elapsed();
    let started = std::time::Instant::now();
    let images = [ExportImage {
        name: "big:1".into(),
        target: got[0].target.clone(),
    }];
    export_to(
        &s,
        &images,
        &t.path().join("out.tar"),
        &ExportOptions::default(),
    )
    .await;
    let export = started.elapsed();
    println!(
        "{mib} MiB layer: import {import:?}, export {export:?}, peak RSS {} MiB (+{} MiB over the run)",
        vm_hwm() >> 10,
        (vm_hwm() - before) >> 10
    );
}

/// Pseudo-random bytes (incompressible, cheap), `left` of them.
struct XorShift {
    x: u64,
    left: usize,
}

impl std::io::Read for XorShift {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left) & !7;
        for c in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            c.copy_from_slice(&self.x.to_le_bytes());
        }
        self.left -= n;
        Ok(n)
    }
}

#[tokio::test]
async fn imports_legacy_docker_layouts_with_linked_and_gzipped_layers() {
    // docker save writes a repeated layer once and links the second `<id>/layer.tar` to it
    let tar = TarBuilder::new().file("a", b"a\n", 0o644).finish();
    let gz = rtest::Compression::Gzip.compress(&tar).unwrap();
    let diff = rtest::sha256_digest(&tar);
    let config = serde_json::to_vec(&json!({
        "architecture": "arm64", "variant": "v8", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff, diff, diff]},
    }))
    .unwrap();
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let mut tb = TarBuilder::new();
    tb.dir(&format!("{a}/"), 0o755)
        .file(&format!("{a}/layer.tar"), &tar, 0o644)
        .file(&format!("{a}/json"), b"{}", 0o644)
        .file(&format!("{a}/VERSION"), b"1.0", 0o644)
        .dir(&format!("{b}/"), 0o755)
        .symlink(&format!("{b}/layer.tar"), &format!("../{a}/layer.tar"))
        .file(&format!("{c}.tar.gz"), &gz, 0o644)
        .file("cfg.json", &config, 0o644)
        .file("repositories", br#"{"x":{"1":"aaaa"}}"#, 0o644)
        .file(
            "manifest.json",
            &serde_json::to_vec(&json!([{
                "Config": "cfg.json",
                "RepoTags": ["example.com/x:1", "x:2"],
                "Layers": [format!("{a}/layer.tar"), format!("{b}/layer.tar"), format!("{c}.tar.gz")],
            }]))
            .unwrap(),
            0o644,
        );
    let (_d, s) = store().await;
    let got = import_bytes(&s, tb.finish()).await.unwrap();
    let names: Vec<_> = got.iter().map(|i| i.name.clone().unwrap()).collect();
    assert_eq!(names, ["example.com/x:1", "docker.io/library/x:2"]);
    assert_eq!(got[0].target, got[1].target);
    let p = got[0].target.platform.clone().unwrap();
    assert_eq!(
        (p.architecture.as_str(), p.variant.as_deref()),
        ("arm64", Some("v8"))
    );
    let m: Value =
        serde_json::from_slice(&s.read_all(&got[0].target.digest).await.unwrap()).unwrap();
    let types: Vec<_> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].clone())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ]
    );
    assert_eq!(m["layers"][2]["digest"], rtest::sha256_digest(&gz));
    // config, the tar once, the gzip, the manifest: docker's own files are not stored
    assert_eq!(s.list().await.unwrap().len(), 4);
    assert_eq!(
        std::fs::read_dir(s.root().join("ingest")).unwrap().count(),
        0
    );
}

/// The entry names of a tar file.
fn tar_names(path: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn exports_docker_only_and_oci_only_archives() {
    let index = busybox_index();
    let (_d, s) = store().await;
    let got = import_bytes(&s, index.oci_archive("example.com/multi:v1").unwrap())
        .await
        .unwrap();
    let images = [ExportImage {
        name: "example.com/multi:v1".into(),
        target: got[0].target.clone(),
    }];
    let t = tempfile::tempdir().unwrap();
    let arm = index.image_for(&rtest::Platform::linux_arm64()).unwrap();

    let docker = t.path().join("docker.tar");
    let opts = ExportOptions {
        format: ExportFormat::Docker,
        platform: RcdPlatform::linux_arm64(),
        ..Default::default()
    };
    export_to(&s, &images, &docker, &opts).await;
    let names = tar_names(&docker);
    assert!(names.contains(&"manifest.json".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "index.json" || n == "oci-layout"),
        "{names:?}"
    );
    // the arm64 config and layers only: no manifests, no index, nothing of amd64
    let blobs = names
        .iter()
        .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 13)
        .count();
    assert_eq!(blobs, 1 + arm.layers.len(), "{names:?}");
    let inspect = skopeo_inspect(&format!("docker-archive:{}", docker.display()));
    assert_eq!(inspect["Architecture"], "arm64");
    let (_d2, s2) = store().await;
    let back = import_file(&s2, &docker).await;
    assert_eq!(back[0].name.as_deref(), Some("example.com/multi:v1"));
    let m: Value =
        serde_json::from_slice(&s2.read_all(&back[0].target.digest).await.unwrap()).unwrap();
    assert_eq!(m["config"]["digest"], arm.config.digest);
    // the fixture's layers are gzip: kept as they are, typed as docker gzip layers
    assert_eq!(m["layers"][0]["digest"], arm.layers[0].digest);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    let oci = t.path().join("oci.tar");
    let opts = ExportOptions {
        format: ExportFormat::Oci,
        ..Default::default()
    };
    export_to(&s, &images, &oci, &opts).await;
    let names = tar_names(&oci);
    assert!(!names.contains(&"manifest.json".to_owned()), "{names:?}");
    let (_d3, s3) = store().await;
    assert_eq!(import_file(&s3, &oci).await, got);
    assert_eq!(
        s3.list().await.unwrap().len(),
        s.list().await.unwrap().len()
    );

    // nothing to put in a docker archive for a platform the index lacks
    let f = tokio::fs::File::create(t.path().join("none.tar"))
        .await
        .unwrap();
    let opts = ExportOptions {
        format: ExportFormat::Docker,
        platform: RcdPlatform::new("linux", "s390x", None),
        ..Default::default()
    };
    let e = archive::export(&s, &images, f, &opts).await.unwrap_err();
    assert!(e.to_string().contains("linux/s390x"), "{e}");
}
