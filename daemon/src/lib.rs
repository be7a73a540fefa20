//! rcd, the container daemon: content store, snapshots, images.
//!
//! Only the layer unpacker exists yet: [`unpack`] applies an OCI/Docker image layer onto a
//! snapshot directory, confined to it whatever the layer holds.

pub mod unpack;
