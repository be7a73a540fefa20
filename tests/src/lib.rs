//! Test fixtures shared by every integration test: busybox root filesystems and bundles,
//! OCI images built from them, and a real registry on a loopback port.

pub mod bundle;
pub mod containerd;
pub mod rootfs;
pub mod runtime;

pub use bundle::{unique_id, Bundle};
pub use runtime::runtime_under_test;
