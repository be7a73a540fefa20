//! The task manager's errors: each names the task (namespace and id) and what failed.

use std::io;
use std::path::PathBuf;

/// The shim's answer to a call, as ttrpc's status code (containerd's errdefs mapping:
/// `NotFound`, `AlreadyExists`, `FailedPrecondition`, …).
pub use ttrpc::Code as ShimCode;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("task {id} already exists in namespace {namespace}")]
    AlreadyExists { namespace: String, id: String },
    #[error("unknown task {id} in namespace {namespace}")]
    NotFound { namespace: String, id: String },
    #[error("task {id} in namespace {namespace} is still running: kill it before deleting it")]
    Running { namespace: String, id: String },
    #[error("invalid {what} for task {id}: {reason}")]
    InvalidRequest {
        id: String,
        what: &'static str,
        reason: String,
    },
    #[error("starting shim {binary} for task {id}: {message}")]
    ShimStart {
        id: String,
        binary: PathBuf,
        message: String,
    },
    #[error("connecting to the shim of task {id} at {address}: {message}")]
    ShimConnect {
        id: String,
        address: String,
        message: String,
    },
    /// The shim is gone (killed, crashed): the task is reported stopped and its resources
    /// have been (or are being) released.
    #[error("the shim of task {id} in namespace {namespace} died")]
    ShimDied { namespace: String, id: String },
    /// The shim answered the call with an error status.
    #[error("{method} of task {id}{}: {message}", exec_suffix(exec_id))]
    Shim {
        id: String,
        exec_id: Option<String>,
        method: &'static str,
        code: ShimCode,
        message: String,
    },
    #[error("{method} of task {id}: no answer from the shim within {seconds} s")]
    Timeout {
        id: String,
        method: &'static str,
        seconds: u64,
    },
    #[error("running `{binary} delete` for task {id}: {message}")]
    ShimDelete {
        id: String,
        binary: PathBuf,
        message: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt task record {}: {message}", path.display())]
    CorruptRecord { path: PathBuf, message: String },
    #[error("events socket {}: {message}", path.display())]
    Events { path: PathBuf, message: String },
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}

fn exec_suffix(exec_id: &Option<String>) -> String {
    match exec_id {
        Some(e) => format!(" (exec {e})"),
        None => String::new(),
    }
}

impl TaskError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TaskError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the task or process named in the call does not exist (in rcd or in the shim).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TaskError::NotFound { .. })
            || matches!(
                self,
                TaskError::Shim {
                    code: ShimCode::NOT_FOUND,
                    ..
                }
            )
    }
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;
