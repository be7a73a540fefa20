//! The daemon process: rcd's native gRPC API (`rcd.v1`, crate `rcd-proto`) served with tonic
//! on a unix socket.
//!
//! ```text
//! <root>/content/      the content store (blobs, ingests), shared by all namespaces
//! <root>/meta.db       the metadata DB (redb): images, snapshots, content labels, leases
//! <root>/overlayfs/    the snapshotter's directories (snapshots/<id>/{fs,work})
//! <root>/rcd.lock      flock'ed while a daemon uses the root
//! <state>/             runtime state (nothing yet besides the default socket)
//! <address>            the gRPC socket, mode 0660, removed on shutdown
//! ```
//!
//! Namespaces come from the `rcd-namespace` metadata header of each call (default `default`).
//! One service per file: `images.rs`, `snapshots.rs`, `leases.rs`, `service.rs` (Version,
//! Content, and what the services share). A containers service goes next to them, with its
//! table in the same metadata DB (see `metadata/`) and its roots in `gc.rs`.

pub mod config;
pub(crate) mod containers;
pub mod events;
pub(crate) mod images;
mod leases;
pub mod logs;
mod namespaces;
mod networks;
mod restart;
pub(crate) mod service;
mod snapshots;
pub(crate) mod tasks;
pub(crate) mod volumes;

pub use config::{Config, Settings};

use crate::content::ContentStore;
use crate::metadata::Metadata;
use crate::pull::Puller;
use crate::snapshot::Snapshotter;
use rcd_proto::v1::{
    containers_server::ContainersServer, events_server::EventsServer,
    introspection_server::IntrospectionServer, namespaces_server::NamespacesServer,
    networks_server::NetworksServer, tasks_server::TasksServer, volumes_server::VolumesServer,
};
use rcd_proto::v1::{
    content_server::ContentServer, images_server::ImagesServer, leases_server::LeasesServer,
    snapshots_server::SnapshotsServer, version_server::VersionServer,
};
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("another rcd is serving on {0}")]
    AddressInUse(PathBuf),
    #[error("root {0} is in use by another rcd")]
    RootLocked(PathBuf),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    #[error("networks: {0}")]
    Net(#[from] crate::netmgr::NetError),
    #[error("cri: {0}")]
    Cri(#[from] crate::cri::CriError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How long running calls may go on after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the services share. Every table of the metadata DB (images, snapshots, content
/// labels, leases; containers next) is reached through `md`, which is also the
/// snapshotter's.
pub struct Daemon {
    pub settings: Settings,
    pub store: ContentStore,
    pub md: Metadata,
    pub snapshotter: Snapshotter,
    pub puller: Arc<Puller>,
    /// Pullers for per-call settings (`--plain-http`, `--user`), by (registry, plain HTTP,
    /// user, password), so their registry clients are reused; at most [`MAX_PULLERS`].
    pub pullers: std::sync::Mutex<std::collections::HashMap<PullerKey, Arc<Puller>>>,
    /// The daemon's event stream (images, containers, tasks).
    pub events: events::EventHub,
}

/// (registry, plain HTTP, user, password)
pub type PullerKey = (String, bool, String, String);

/// Bound of [`Daemon::pullers`]; the map is emptied when full.
pub const MAX_PULLERS: usize = 16;

/// Binds `address`: a stale socket (nobody answers) is removed; a live one means another rcd
/// serves there, and is left alone.
fn bind(address: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = address.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
    }
    match std::os::unix::net::UnixStream::connect(address) {
        Ok(_) => return Err(ServeError::AddressInUse(address.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            // ECONNREFUSED: a socket nobody listens on, left by a dead daemon; anything else
            // (a regular file, no permission) is reported by the bind below.
            if e.kind() == io::ErrorKind::ConnectionRefused {
                warn!(address = %address.display(), "removing stale socket");
                std::fs::remove_file(address).map_err(io_err("removing stale socket", address))?;
            }
        }
    }
    // Created 0660 from the start (no window with a wider mode), then chmod'ed to be sure.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
    let listener = UnixListener::bind(address);
    rustix::process::umask(old);
    let listener = listener.map_err(io_err("binding", address))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("chmod", address))?;
    Ok(listener)
}

/// Locks `<root>/rcd.lock` for the life of the process (the metadata DB is locked too; this
/// gives the clearer error, before anything is opened).
fn lock_root(root: &Path) -> Result<std::fs::File, ServeError> {
    let path = root.join("rcd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServeError::RootLocked(root.to_owned())),
        Err(e) => Err(ServeError::Io {
            op: "locking",
            path,
            source: e.into(),
        }),
    }
}

/// Serves until `shutdown` completes, then removes the socket.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if std::os::unix::net::UnixStream::connect(&settings.address).is_ok() {
        return Err(ServeError::AddressInUse(settings.address.clone()));
    }
    for dir in [&settings.root, &settings.state] {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("chmod", dir))?;
    }
    let _lock = lock_root(&settings.root)?;
    let store = ContentStore::open(settings.root.join("content")).await?;
    let (md, snapshotter) = {
        let root = settings.root.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
            let md = Metadata::open(root.join("meta.db"))?;
            md.open_container_tables()?;
            let snapshotter = Snapshotter::open(root.join("overlayfs"), md.clone())?;
            Ok((md, snapshotter))
        })
        .await
        .expect("opening the metadata")?
    };
    if settings.root.join("images.json").exists() {
        warn!(
            "ignoring {}: image records of older rcd versions are not migrated (pull again)",
            settings.root.join("images.json").display()
        );
    }
    let puller = Arc::new(Puller::new(store.clone(), settings.registry.clone()));
    // Shims of running containers outlive a daemon: take them back before serving, so the
    // first call sees every task with its true state.
    let tasks = crate::task::TaskManager::new(crate::task::TaskManagerConfig::new(
        &settings.state,
        &settings.address,
        &settings.shim,
    ))
    .await?;
    let event_hub = events::EventHub::default();
    event_hub.forward_tasks(&tasks);
    let found = tasks.reconnect_all().await?;
    if !found.is_empty() {
        info!(
            tasks = found.len(),
            "reconnected to the shims of an earlier rcd"
        );
    }
    let listener = match bind(&settings.address) {
        Ok(l) => l,
        Err(e) => {
            tasks.close().await;
            return Err(e);
        }
    };
    let address = settings.address.clone();
    info!(
        address = %address.display(),
        root = %settings.root.display(),
        state = %settings.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "rcd serving"
    );
    let daemon = Arc::new(Daemon {
        settings,
        store,
        md,
        snapshotter,
        puller,
        pullers: Default::default(),
        events: event_hub.clone(),
    });
    let net = Arc::new(crate::netmgr::NetManager::new(
        &daemon.settings.root,
        &daemon.settings.state,
        &daemon.settings.networks,
        daemon.settings.cri.cni_bin_dirs.clone(),
    )?);
    let runtime = Arc::new(containers::Runtime {
        d: daemon.clone(),
        tasks: tasks.clone(),
        events: event_hub.clone(),
        shim: daemon.settings.shim.clone(),
        started_at: chrono::Utc::now(),
        net,
        restarts: Default::default(),
    });
    {
        let d = daemon.clone();
        tokio::task::spawn_blocking(move || containers::remove_interrupted_creates(&d))
            .await
            .expect("undoing interrupted creates");
    }
    tokio::spawn(containers::remove_stale_tasks(runtime.clone()));
    restart::start(runtime.clone());
    let cri = crate::cri::Cri::start(daemon.clone(), tasks.clone()).await?;
    let (cri_runtime, cri_images) = cri.services();
    // One collection at start, as containerd's scheduler does: what a killed daemon left
    // (extraction snapshots, blobs of pulls whose lease expired) goes; leased work stays.
    {
        let d = daemon.clone();
        tokio::spawn(async move {
            match crate::gc::collect(&d.store, &d.snapshotter).await {
                Ok(st) => info!(
                    blobs = st.blobs.len(),
                    snapshots = st.snapshots.len(),
                    leases = st.leases,
                    "start-up collection"
                ),
                Err(e) => warn!(error = %e, "start-up collection failed"),
            }
        });
    }
    // After the signal, running calls (a pull's stream) get SHUTDOWN_GRACE to finish.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = stop.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.notify_one();
    };
    let server = tonic::transport::Server::builder()
        .add_service(VersionServer::new(service::VersionService))
        .add_service(ImagesServer::new(images::ImagesService(daemon.clone())))
        .add_service(ContentServer::new(service::ContentService(daemon.clone())))
        .add_service(SnapshotsServer::new(snapshots::SnapshotsService(
            daemon.clone(),
        )))
        .add_service(LeasesServer::new(leases::LeasesService(daemon.clone())))
        .add_service(ContainersServer::new(containers::ContainersService(
            runtime.clone(),
        )))
        .add_service(TasksServer::new(tasks::TasksService(runtime.clone())))
        .add_service(NetworksServer::new(networks::NetworksService(
            runtime.clone(),
        )))
        .add_service(VolumesServer::new(volumes::VolumesService(runtime.clone())))
        .add_service(cri_runtime)
        .add_service(cri_images)
        .add_service(NamespacesServer::new(namespaces::NamespacesService(
            runtime.clone(),
        )))
        .add_service(EventsServer::new(events::EventsService(event_hub)))
        .add_service(IntrospectionServer::new(namespaces::IntrospectionService(
            runtime.clone(),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    let grace = async {
        stop.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        warn!(
            "calls still running {}s after the signal: stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    };
    let result = tokio::select! {
        r = server => r,
        _ = grace => Ok(()),
    };
    // running containers and their shims stay; shims spool their events until the next rcd
    tasks.close().await;
    match std::fs::remove_file(&address) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(address = %address.display(), error = %e, "removing socket"),
    }
    // bundles and snapshots of deleted containers still being removed: finish them, so a
    // stopped daemon leaves no mount behind (a killed one leaves them to the next start)
    let flushed = tokio::task::spawn_blocking(|| crate::trash::flush(SHUTDOWN_GRACE))
        .await
        .unwrap_or(false);
    if !flushed {
        warn!(
            "files of deleted containers still being removed at exit: the next start removes them"
        );
    }
    info!("rcd stopped");
    result.map_err(Into::into)
}
