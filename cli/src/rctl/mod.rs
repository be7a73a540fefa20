//! rctl: crictl's commands over CRI v1 gRPC only (RuntimeService + ImageService on a unix
//! socket), so it drives any CRI runtime: rcd, containerd, CRI-O.
//!
//! - [`config`]: crictl's YAML config file and the endpoint/timeout resolution.
//! - [`conn`]: the gRPC connection and call deadlines; error messages naming the endpoint.
//! - [`output`]: protobuf → crictl-shaped JSON/YAML, tables, human sizes and durations.
//! - [`input`]: crictl's pod/container config files (JSON or YAML, either field spelling).
//! - [`logs`]: reading (and following) CRI log files.
//! - [`spdy`] / [`ws`]: streaming clients (exec, attach, port-forward) over SPDY/3.1 and
//!   WebSocket channels; [`stream`] drives them.
//! - [`cmd`]: the commands.

pub mod cmd;
pub mod config;
pub mod conn;
pub mod input;
pub mod logs;
pub mod output;
pub mod spdy;
pub mod stream;
pub mod ws;
