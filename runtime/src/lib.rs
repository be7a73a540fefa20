//! runr: a runc-compatible OCI runtime on youki's libcontainer.
//!
//! The binary (`src/main.rs`) parses runc's command line and runs one command; this library holds
//! the pure parts other crates reuse (the default spec, bundle checks, signal and unit parsing,
//! runc-format logs, the features document, compiled seccomp filters).

pub mod bundle;
pub mod features;
pub mod logging;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod units;
