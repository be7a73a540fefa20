//! Ready-made images, built once per process, and files cached across processes.

use crate::image::{Image, ImageBuilder, Index, IndexBuilder, Platform};
use crate::layer::{sha256_digest, Compression, Layer, TarBuilder};
use crate::rootfs::populate_busybox;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The name [`busybox_oci_archive`] gives the busybox image (what `ctr images import` names it).
pub const BUSYBOX_NAME: &str = "docker.io/library/busybox:latest";
/// The name [`pause_oci_archive`] gives the pause image: the sandbox image containerd and
/// Kubernetes use by default, so an imported one is found without a network.
pub const PAUSE_NAME: &str = "registry.k8s.io/pause:3.10";
/// `PATH` in the busybox and pause images.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The static `pause` program built from `tests/pause/pause.c`: it waits for SIGINT or
/// SIGTERM and then exits 0, reaping zombies meanwhile.
pub fn pause_binary() -> &'static [u8] {
    PAUSE
}

fn once<T>(
    cell: &'static OnceLock<T>,
    what: &str,
    build: impl FnOnce() -> Result<T>,
) -> &'static T {
    cell.get_or_init(|| build().unwrap_or_else(|e| panic!("building the {what} fixture: {e:#}")))
}

/// The gzip layer of [`populate_busybox`]'s tree, to build other images on.
pub fn busybox_layer() -> &'static Layer {
    static CELL: OnceLock<Layer> = OnceLock::new();
    once(&CELL, "busybox layer", || {
        let dir = tempfile::Builder::new()
            .prefix("rtest-busybox-")
            .tempdir()?;
        populate_busybox(dir.path())?;
        Layer::from_dir(dir.path(), Compression::Gzip)
    })
}

/// The busybox image for `platform`: one layer ([`busybox_layer`]), `Cmd ["sh"]`, `PATH`.
pub fn busybox_image_for(platform: Platform) -> Result<Image> {
    ImageBuilder::new()
        .platform(platform)
        .layer(busybox_layer().clone())
        .env(DEFAULT_PATH)
        .cmd(&["sh"])
        .build()
}

/// The busybox image for the host platform (see [`busybox_image_for`]).
pub fn busybox_image() -> &'static Image {
    static CELL: OnceLock<Image> = OnceLock::new();
    once(&CELL, "busybox image", || {
        busybox_image_for(Platform::host())
    })
}

/// A multi-platform busybox: linux/amd64 and linux/arm64/v8 (same files, only the config
/// says arm64), as an OCI index. On an amd64 host its amd64 image is [`busybox_image`].
pub fn busybox_index() -> &'static Index {
    static CELL: OnceLock<Index> = OnceLock::new();
    once(&CELL, "busybox index", || {
        IndexBuilder::new()
            .image(busybox_image_for(Platform::linux_amd64())?)
            .image(busybox_image_for(Platform::linux_arm64())?)
            .build()
    })
}

/// The pause image: only `/pause` ([`pause_binary`]), `Entrypoint ["/pause"]`.
pub fn pause_image() -> &'static Image {
    static CELL: OnceLock<Image> = OnceLock::new();
    once(&CELL, "pause image", || {
        let tar = TarBuilder::new().file("pause", PAUSE, 0o755).finish();
        ImageBuilder::new()
            .layer_tar(tar)
            .env(DEFAULT_PATH)
            .entrypoint(&["/pause"])
            .build()
    })
}

/// [`busybox_image`] as an OCI archive named [`BUSYBOX_NAME`], for `ctr images import`.
pub fn busybox_oci_archive() -> &'static Path {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    once(&CELL, "busybox OCI archive", || {
        cached_file("oci.tar", &busybox_image().oci_archive(BUSYBOX_NAME)?)
    })
    .as_path()
}

/// [`pause_image`] as an OCI archive named [`PAUSE_NAME`].
pub fn pause_oci_archive() -> &'static Path {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    once(&CELL, "pause OCI archive", || {
        cached_file("oci.tar", &pause_image().oci_archive(PAUSE_NAME)?)
    })
    .as_path()
}

/// Where [`cached_file`] keeps files: `$RTEST_CACHE`, else `/tmp/rtest-cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RTEST_CACHE").map_or_else(|| PathBuf::from("/tmp/rtest-cache"), PathBuf::from)
}

/// Stores `data` as `<cache_dir>/<sha256 of data>.<ext>` unless it is there already, and
/// returns that path. Content-addressed and written by rename, so test processes running at
/// once share the files safely; treat them as read-only.
pub fn cached_file(ext: &str, data: &[u8]) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = cache_dir();
    let hex = sha256_digest(data);
    let path = dir.join(format!("{}.{ext}", &hex["sha256:".len()..]));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}
