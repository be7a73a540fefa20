//! The Kubernetes CRI v1 (`runtime.v1.RuntimeService` and `ImageService`, crate `k8s-cri`)
//! served on rcd's socket beside the native API, laid out like containerd's CRI plugin: one
//! file per group of RPCs, a sandbox store and a container store ([`store`]), everything in
//! the rcd namespace `k8s.io`.
//!
//! - A pod sandbox is a pinned network namespace with its CNI attachments, a pod directory
//!   (`<state>/cri/pods/<id>/`: resolv.conf, hostname, hosts, bind-mounted into its
//!   containers) and a pause task: rcd's built-in static `pause` (no image pull: pods start
//!   offline), or the configured `sandbox_image`. Containers join the pod's network
//!   namespace by path and its IPC/UTS (and pod PID) namespaces through
//!   `/proc/<pause pid>/ns/*`; cgroups go under the pod's parent.
//! - Containers are tasks of the [`crate::task::TaskManager`] on snapshots of their image,
//!   with their spec from [`crate::spec::generate`]; their output goes to a `rcd
//!   cri-logger` ([`logger`]) that the shim runs (`binary://`), so logs are written while rcd
//!   is down.
//! - Records: `<root>/cri/{sandboxes,containers}/<id>.json` plus a container record in the
//!   metadata DB for each task (the native API sees them as containerd shows CRI's). Lists
//!   are served from memory.

pub mod attach;
pub mod container;
pub mod exec;
pub mod image;
pub mod logger;
pub mod sandbox;
pub mod service;
pub mod stats;
pub mod store;
mod timing;

use crate::cni::{Cni, CniOptions};
use crate::server::Daemon;
use crate::task::TaskManager;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Status;

/// The rcd namespace CRI objects live in (containerd's).
pub const NAMESPACE: &str = "k8s.io";

/// The runtime name Version reports.
pub const RUNTIME_NAME: &str = "rcd";

/// `[cri]` in rcd's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// The sandbox (pause) image; empty: rcd's built-in pause, nothing to pull.
    pub sandbox_image: String,
    /// The admin's CNI network configs.
    pub cni_conf_dir: PathBuf,
    /// Where the CNI plugins are, searched in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The CNI results cache and generated configs; default `<root>/cni`.
    pub cni_state_dir: Option<PathBuf>,
    /// The streaming server's listen address (`127.0.0.1:0`: a free loopback port).
    pub stream_address: String,
    /// Longest CRI log line; longer lines are split into partial (`P`) lines.
    pub max_log_line_size: usize,
    /// Where pod cgroups go when kubelet names no parent.
    pub cgroup_parent: String,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            sandbox_image: String::new(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            cni_state_dir: None,
            stream_address: "127.0.0.1:0".into(),
            max_log_line_size: 16 * 1024,
            cgroup_parent: "/rcd/k8s.io".into(),
        }
    }
}

/// What every CRI call shares.
pub struct Cri {
    pub d: Arc<Daemon>,
    pub tasks: TaskManager,
    pub cfg: CriConfig,
    pub cni: tokio::sync::RwLock<Cni>,
    pub store: store::Store,
    /// `<state>/cri`: pod dirs, logger control dirs, netns.
    pub state_dir: PathBuf,
    /// The logger program shims run ([`crate::logger_exe`]).
    pub exe: PathBuf,
    pub streaming: std::sync::OnceLock<crate::streaming::StreamingServer>,
    pub events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(transparent)]
    Cni(#[from] crate::cni::CniError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the streaming server: {0}")]
    Streaming(#[from] crate::streaming::StreamingError),
}

impl Cri {
    /// Opens the stores, loads the CNI config, writes the built-in pause, starts the
    /// streaming server, and takes back what an earlier rcd left running.
    pub async fn start(d: Arc<Daemon>, tasks: TaskManager) -> Result<Arc<Cri>, CriError> {
        let cfg = d.settings.cri.clone();
        let state_dir = d.settings.state.join("cri");
        let cni = Cni::load(CniOptions {
            conf_dir: cfg.cni_conf_dir.clone(),
            plugin_dirs: cfg.cni_bin_dirs.clone(),
            state_dir: cfg
                .cni_state_dir
                .clone()
                .unwrap_or_else(|| d.settings.root.join("cni")),
            ..Default::default()
        })?;
        let store = store::Store::open(&d.settings.root.join("cri"))?;
        sandbox::install_pause(&d.settings.root)?;
        let (events, _) = tokio::sync::broadcast::channel(256);
        let cri = Arc::new(Cri {
            d,
            tasks,
            cfg,
            cni: tokio::sync::RwLock::new(cni),
            store,
            state_dir,
            exe: crate::logger_exe(),
            streaming: Default::default(),
            events,
        });
        let addr = cri.cfg.stream_address.parse().map_err(|_| CriError::Io {
            what: "parsing the stream address",
            path: cri.cfg.stream_address.clone().into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let server = crate::streaming::StreamingServer::start(
            crate::streaming::Config {
                addr,
                ..Default::default()
            },
            Arc::new(exec::StreamRuntime(Arc::downgrade(&cri))),
        )
        .await?;
        let _ = cri.streaming.set(server);
        container::watch_all(&cri);
        Ok(cri)
    }

    /// The two gRPC services.
    pub fn services(
        self: &Arc<Self>,
    ) -> (
        cri::runtime_service_server::RuntimeServiceServer<service::RuntimeService>,
        cri::image_service_server::ImageServiceServer<service::ImageService>,
    ) {
        (
            cri::runtime_service_server::RuntimeServiceServer::new(service::RuntimeService(
                self.clone(),
            ))
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20),
            cri::image_service_server::ImageServiceServer::new(service::ImageService(self.clone())),
        )
    }
}

/// A fresh 64-hex-digit id, as containerd's.
pub fn new_id() -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// Nanoseconds since the epoch, the CRI's timestamps.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

pub(crate) fn internal(what: &str) -> impl FnOnce(String) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// Whether every `selector` label is in `labels`.
pub(crate) fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Finds an object by a full id or a unique prefix (crictl passes prefixes).
pub(crate) fn resolve_id<'a>(ids: impl Iterator<Item = &'a String>, id: &str) -> Option<String> {
    let mut found = None;
    for i in ids {
        if i == id {
            return Some(i.clone());
        }
        if i.starts_with(id) {
            if found.is_some() {
                return None;
            }
            found = Some(i.clone());
        }
    }
    found
}
