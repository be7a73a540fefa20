//! rcd, the container daemon (library part for now): the content store, registry pulls into
//! it, the layer unpacker that applies an OCI/Docker layer onto a snapshot directory,
//! confined to it whatever the layer holds, the metadata database, the overlayfs snapshotter,
//! unpacking pulled images into snapshots, garbage collection, and the daemon process's gRPC
//! server (`server`, run by `src/bin/rcd.rs`).

pub mod archive;
pub mod cni;
pub mod content;
pub mod cri;
pub mod gc;
pub mod image;
pub mod metadata;
pub mod netmgr;
pub mod pull;
pub mod push;
pub mod server;
pub mod snapshot;
pub mod spec;
pub mod streaming;
pub mod task;
pub mod trash;
pub mod unpack;

/// The program shims run as a container's logger: `rcd-logger` next to this executable,
/// else this executable itself (rcd has the same `cri-logger`/`json-logger` subcommands).
pub fn logger_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/rcd".into());
    let small = exe.with_file_name("rcd-logger");
    if small.is_file() {
        small
    } else {
        exe
    }
}
