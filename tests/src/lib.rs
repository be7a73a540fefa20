//! Test fixtures shared by every integration test: busybox root filesystems and bundles,
//! OCI images built from them, and a real registry on a loopback port.
//!
//! - [`rootfs`], [`bundle`]: a busybox tree and OCI runtime bundles.
//! - [`layer`]: deterministic and hand-crafted (hostile) layer tars, compressed blobs.
//! - [`image`]: [`ImageBuilder`] / [`IndexBuilder`] and the OCI layout, OCI archive and
//!   `docker save` archive writers.
//! - [`fixtures`]: [`busybox_image`], [`pause_image`], [`busybox_index`], built once per
//!   process, and the embedded [`pause_binary`].
//! - [`registry`]: [`Registry`], a real `docker-registry` on 127.0.0.1.
//! - [`containerd`]: [`containerd::Containerd`], a private containerd driven with `ctr`.
//! - [`runtime`]: [`runtime_under_test`], `$RTEST_RUNTIME` or the workspace's runr.

pub mod bundle;
pub mod containerd;
pub mod fixtures;
pub mod image;
pub mod layer;
pub mod process;
pub mod registry;
pub mod rootfs;
pub mod runtime;

pub use bundle::{unique_id, Bundle};
pub use fixtures::{
    busybox_image, busybox_image_for, busybox_index, busybox_layer, busybox_oci_archive,
    cached_file, pause_binary, pause_image, pause_oci_archive, BUSYBOX_NAME, PAUSE_NAME,
};
pub use image::{Blob, Format, Image, ImageBuilder, Index, IndexBuilder, Platform};
pub use layer::{sha256_digest, tar_dir, Compression, Layer, TarBuilder};
pub use process::spawn_tied;
pub use registry::{HttpResponse, Registry, RegistryBuilder};
pub use runtime::runtime_under_test;
