//! runr: a runc-compatible OCI runtime on youki's libcontainer.
//!
//! The binary (`src/main.rs`) parses runc's command line; this library holds the parts other crates
//! reuse (the default spec, state and feature reporting).

pub mod spec;
