//! rcd, the container daemon (library part for now): the content store, registry pulls into
//! it, and the layer unpacker that applies an OCI/Docker layer onto a snapshot directory,
//! confined to it whatever the layer holds.

pub mod content;
pub mod pull;
pub mod server;
pub mod unpack;
