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
//! - [`runtime`]: [`Runtime`], a driver for an OCI runtime binary (`runr`, or runc through
//!   `RTEST_RUNTIME`) with a private `--root` and a cleanup guard; [`cgroup`] and
//!   [`console`] find a container's cgroups and receive its pty over `--console-socket`.
//! - [`hostnet`]: the bridges and iptables rules and chains CNI plugins leave, found and
//!   removed by what they name.
//! - [`containerd`]: [`containerd::Containerd`], a private containerd driven with `ctr`, torn
//!   down with its shims, containers, mounts and cgroups.

pub mod bundle;
pub mod cgroup;
pub mod console;
pub mod containerd;
pub mod fixtures;
pub mod hostnet;
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
pub use runtime::{poll_until, process_gone, wait_for, Output, Runtime};
