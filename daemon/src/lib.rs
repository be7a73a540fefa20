//! rcd, the container daemon (library part).

pub mod content;
pub mod pull;
