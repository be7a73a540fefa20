//! Test fixtures shared by every integration test: busybox root filesystems and bundles,
//! OCI images built from them, and a real registry on a loopback port.

pub mod bundle;
pub mod rootfs;

pub use bundle::{unique_id, Bundle};
