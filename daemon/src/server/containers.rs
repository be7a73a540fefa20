//! The Containers service, and [`Runtime`]: what the container-side services (containers,
//! tasks, namespaces, events, introspection) share on top of the image side's [`Daemon`].
//!
//! Create = resolve the image (its config, and its unpacked top snapshot), prepare an active
//! snapshot keyed by the container id on it, mount it for a moment so the spec generator can
//! read the image's /etc/passwd and /etc/group, generate the OCI spec, record the
//! container. Any failure removes the snapshot again.

use super::events::EventHub;
use super::service::{blocking, metadata_status, namespace, snapshot_status, time};
use super::Daemon;
use crate::content::Digest;
use crate::image::SNAPSHOTTER_NAME;
use crate::metadata::{ContainerRecord, ImageRecord, Labels, Metadata, LABEL_GC_REF_SNAPSHOT};
use crate::spec::{
    self, ContainerRequest, MountRequest, MountSource, NamespaceMode, Propagation, Resources,
};
use crate::task::TaskManager;
use chrono::{DateTime, Utc};
use oci_spec::image::ImageConfiguration;
use rcd_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The container side of the daemon.
pub struct Runtime {
    pub d: Arc<Daemon>,
    pub tasks: TaskManager,
    pub events: EventHub,
    /// The shim binary tasks run under.
    pub shim: PathBuf,
    pub started_at: DateTime<Utc>,
    /// rnerd's networks and volumes.
    pub net: Arc<crate::netmgr::NetManager>,
    /// The restart monitor's per-container state (`restart.rs`).
    pub restarts: super::restart::Restarts,
}

/// containerd's rule for container ids: they name directories (bundles, cgroups).
pub(super) fn check_id(id: &str) -> Result<(), Status> {
    let bad = |reason: &str| {
        Err(Status::invalid_argument(format!(
            "invalid container id {id:?}: {reason}"
        )))
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 76 {
        return bad("longer than 76 bytes");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The error of a metadata transaction run for a call: the store's, or the call's own.
pub(super) enum TxError {
    Md(crate::metadata::MetadataError),
    Status(Status),
}

impl From<crate::metadata::MetadataError> for TxError {
    fn from(e: crate::metadata::MetadataError) -> Self {
        TxError::Md(e)
    }
}

impl From<Status> for TxError {
    fn from(s: Status) -> Self {
        TxError::Status(s)
    }
}

impl From<TxError> for Status {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Md(e) => metadata_status(e),
            TxError::Status(s) => s,
        }
    }
}

pub(super) fn unknown_container(ns: &str, id: &str) -> Status {
    Status::not_found(format!("unknown container {id:?} in namespace {ns:?}"))
}

/// The container record, or "unknown container".
pub(super) fn get_container(md: &Metadata, ns: &str, id: &str) -> Result<ContainerRecord, Status> {
    md.container(ns, id)
        .map_err(metadata_status)?
        .ok_or_else(|| unknown_container(ns, id))
}

/// An image of the namespace as typed or normalised (`busybox` →
/// `docker.io/library/busybox:latest`).
pub(crate) fn find_image(md: &Metadata, ns: &str, name: &str) -> Result<ImageRecord, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("no image given"));
    }
    if let Some(r) = md.image(ns, name).map_err(metadata_status)? {
        return Ok(r);
    }
    let full = crate::pull::parse_reference(name)
        .map(|r| r.whole())
        .unwrap_or_else(|_| name.to_owned());
    md.image(ns, &full)
        .map_err(metadata_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "image {name:?} not found in namespace {ns:?} (pull it first)"
            ))
        })
}

/// What a container needs of its image: the config and the key of its top snapshot.
pub(crate) async fn image_parts(
    d: &Daemon,
    ns: &str,
    rec: &ImageRecord,
) -> Result<(ImageConfiguration, String), Status> {
    let broken = |what: String| {
        Status::failed_precondition(format!("image {:?} is broken: {what}", rec.name))
    };
    let manifest = rec.manifest.as_ref().unwrap_or(&rec.target);
    let data = d
        .store
        .read_all(&manifest.digest)
        .await
        .map_err(|e| broken(format!("manifest: {e}")))?;
    let m: serde_json::Value =
        serde_json::from_slice(&data).map_err(|e| broken(format!("manifest: {e}")))?;
    let config = m["config"]["digest"]
        .as_str()
        .ok_or_else(|| broken("the manifest names no config".into()))?;
    let config = Digest::parse(config).map_err(|e| broken(format!("config: {e}")))?;
    let data = d
        .store
        .read_all(&config)
        .await
        .map_err(|e| broken(format!("config: {e}")))?;
    let cfg: ImageConfiguration =
        serde_json::from_slice(&data).map_err(|e| broken(format!("config {config}: {e}")))?;
    let label = format!("{LABEL_GC_REF_SNAPSHOT}{SNAPSHOTTER_NAME}");
    let top =
        d.md.read(|tx| tx.content(ns, &config))
            .map_err(metadata_status)?
            .and_then(|c| c.labels.get(&label).cloned())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "image {:?} is not unpacked: pull it again",
                    rec.name
                ))
            })?;
    Ok((cfg, top))
}

/// ctr's `--mount`: `type=bind,src=/a,dst=/b,options=rbind:ro` (also `source`,
/// `destination`, `target`); types bind and tmpfs.
fn parse_ctr_mount(s: &str) -> Result<MountRequest, Status> {
    let bad = |reason: String| Status::invalid_argument(format!("invalid mount {s:?}: {reason}"));
    let (mut typ, mut src, mut dst, mut options) = (None, None, None, Vec::new());
    for field in s.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| bad(format!("{field:?} is not KEY=VALUE")))?;
        match k {
            "type" => typ = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "dst" | "destination" | "target" => dst = Some(v.to_owned()),
            "options" => options.extend(v.split(':').filter(|o| !o.is_empty()).map(str::to_owned)),
            _ => return Err(bad(format!("unknown field {k:?}"))),
        }
    }
    let dst = dst.ok_or_else(|| bad("no dst".into()))?;
    let mut readonly = false;
    let mut propagation = Propagation::default();
    let mut rest = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => readonly = true,
            "rw" | "bind" | "rbind" => {}
            p => match Propagation::parse(p) {
                Ok(p) => propagation = p,
                Err(_) => rest.push(o),
            },
        }
    }
    let source = match typ.as_deref().unwrap_or("bind") {
        "bind" => {
            let src = src.ok_or_else(|| bad("a bind mount needs src".into()))?;
            if !src.starts_with('/') {
                return Err(bad(format!("src {src:?} is not an absolute path")));
            }
            MountSource::Bind {
                source: src.into(),
                propagation,
            }
        }
        "tmpfs" => MountSource::Tmpfs {
            size: None,
            mode: None,
        },
        t => return Err(bad(format!("type {t:?}: only bind and tmpfs"))),
    };
    Ok(MountRequest {
        destination: dst,
        source,
        readonly,
        options: rest,
    })
}

/// The spec generator's request from the API's options.
fn container_request(
    ns: &str,
    id: &str,
    o: &pb::ContainerOptions,
    labels: &Labels,
) -> Result<ContainerRequest, Status> {
    let invalid = |e: spec::SpecError| Status::invalid_argument(e.to_string());
    let mut req = ContainerRequest {
        id: id.to_owned(),
        namespace: Some(ns.to_owned()),
        args: (!o.args.is_empty()).then(|| o.args.clone()),
        entrypoint: o.set_entrypoint.then(|| o.entrypoint.clone()),
        env: o.env.clone(),
        cwd: (!o.cwd.is_empty()).then(|| o.cwd.clone()),
        user: (!o.user.is_empty()).then(|| o.user.clone()),
        hostname: (!o.hostname.is_empty()).then(|| o.hostname.clone()),
        cap_add: o.cap_add.clone(),
        cap_drop: o.cap_drop.clone(),
        privileged: o.privileged,
        readonly_rootfs: o.readonly_rootfs,
        tty: o.tty,
        labels: labels.clone(),
        mounts: o
            .mounts
            .iter()
            .map(|m| parse_ctr_mount(m))
            .collect::<Result<_, _>>()?,
        resources: Resources {
            cpus: if o.cpus.is_empty() {
                None
            } else {
                Some(spec::resources::parse_cpus(&o.cpus).map_err(invalid)?)
            },
            memory_limit: match o.memory_limit {
                0 => None,
                n => Some(i64::try_from(n).map_err(|_| {
                    Status::invalid_argument(format!("memory limit {n} is too large"))
                })?),
            },
            pids_limit: (o.pids_limit > 0).then_some(o.pids_limit),
            ..Default::default()
        },
        ..Default::default()
    };
    if o.net_host {
        req.namespaces.network = NamespaceMode::Host;
        // as ctr --net-host: the host's name too
        req.namespaces.uts = NamespaceMode::Host;
    }
    Ok(req)
}

/// Generates the spec of a container whose rootfs `mounts` (a snapshot just prepared) are
/// mounted, as a read-only view, for the time it takes under `scratch`.
pub(crate) fn generate_spec(
    cfg: &ImageConfiguration,
    req: &ContainerRequest,
    mounts: &[crate::snapshot::Mount],
    scratch: &Path,
) -> Result<serde_json::Value, Status> {
    let view = crate::snapshot::read_only_view(mounts);
    crate::snapshot::mount_all(&view, scratch).map_err(|e| {
        Status::internal(format!("mounting the rootfs on {}: {e}", scratch.display()))
    })?;
    let generated = spec::generate(Some(cfg), req, scratch);
    if let Err(e) = crate::snapshot::unmount(scratch) {
        warn!(path = %scratch.display(), "unmounting the spec scratch mount: {e}");
    }
    let mut spec = generated
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .spec;
    // the shim mounts the rootfs on <bundle>/rootfs
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path("rootfs".into());
    spec.set_root(Some(root));
    serde_json::to_value(&spec).map_err(|e| Status::internal(format!("encoding the spec: {e}")))
}

pub(super) fn to_pb(c: &ContainerRecord, with_spec: bool) -> pb::Container {
    pb::Container {
        id: c.id.clone(),
        image: c.image.clone(),
        snapshot_key: c.snapshot_key.clone().unwrap_or_default(),
        labels: c.labels.clone().into_iter().collect(),
        spec: if with_spec {
            serde_json::to_vec(&c.spec).unwrap_or_default()
        } else {
            Vec::new()
        },
        runtime: c.runtime.clone().unwrap_or_default(),
        created_at: time(&c.created),
        updated_at: time(&c.updated),
    }
}

/// One condition of a list filter.
#[derive(Debug, PartialEq)]
struct Cond {
    field: String,
    /// `None`: the field must be present.
    value: Option<String>,
    negate: bool,
}

fn parse_filters(filters: &[String]) -> Result<Vec<Vec<Cond>>, Status> {
    filters
        .iter()
        .map(|f| {
            f.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    let p = p.trim();
                    let (field, value, negate) = if let Some((a, b)) = p.split_once("!=") {
                        (a, Some(b), true)
                    } else if let Some((a, b)) = p.split_once("==") {
                        (a, Some(b), false)
                    } else if let Some((a, b)) = p.split_once('=') {
                        (a, Some(b), false)
                    } else {
                        (p, None, false)
                    };
                    let field = field.trim();
                    let known = matches!(field, "id" | "image" | "runtime")
                        || field.strip_prefix("labels.").is_some_and(|k| !k.is_empty());
                    if !known {
                        return Err(Status::invalid_argument(format!(
                            "invalid filter {p:?}: fields are id, image, runtime, labels.KEY"
                        )));
                    }
                    Ok(Cond {
                        field: field.to_owned(),
                        value: value.map(|v| v.trim().trim_matches('"').to_owned()),
                        negate,
                    })
                })
                .collect()
        })
        .collect()
}

fn matches(c: &ContainerRecord, conds: &[Cond]) -> bool {
    conds.iter().all(|cond| {
        let got: Option<&str> = match cond.field.as_str() {
            "id" => Some(&c.id),
            "image" => Some(&c.image),
            "runtime" => Some(c.runtime.as_deref().unwrap_or("")),
            f => f
                .strip_prefix("labels.")
                .and_then(|k| c.labels.get(k))
                .map(String::as_str),
        };
        let hit = match (&cond.value, got) {
            (None, g) => g.is_some(),
            (Some(v), Some(g)) => g == v,
            (Some(_), None) => false,
        };
        hit != cond.negate
    })
}

fn spec_mounts(state: &Path) -> PathBuf {
    state.join("spec-mounts")
}

/// At start-up: creates a killed daemon left half-way (`<state>/spec-mounts/<ns>/<id>`, the
/// rootfs maybe still mounted there, a snapshot without a container) are undone.
pub(super) fn remove_interrupted_creates(d: &Daemon) {
    let base = spec_mounts(&d.settings.state);
    let Ok(namespaces) = std::fs::read_dir(&base) else {
        return;
    };
    for ns_dir in namespaces.flatten() {
        let ns = ns_dir.file_name().to_string_lossy().into_owned();
        for e in std::fs::read_dir(ns_dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            if matches!(d.md.container(&ns, &id), Ok(None)) {
                match d.snapshotter.remove(&ns, &id) {
                    Ok(()) => {
                        warn!(namespace = %ns, id = %id, "removed the snapshot of an interrupted container create")
                    }
                    Err(crate::snapshot::SnapshotError::NotFound { .. }) => {}
                    Err(e) => {
                        warn!(namespace = %ns, id = %id, "removing the snapshot of an interrupted create: {e}")
                    }
                }
            }
            let _ = std::fs::remove_dir(&path);
        }
        let _ = std::fs::remove_dir(ns_dir.path());
    }
}

/// After a restart: tasks whose container record is gone (removed while the task ran, a
/// metadata DB replaced) are killed and deleted, so no shim is leaked.
pub(super) async fn remove_stale_tasks(rt: Arc<Runtime>) {
    for t in rt.tasks.list(None) {
        match rt.d.md.container(&t.namespace, &t.id) {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => {
                warn!(namespace = %t.namespace, id = %t.id, "checking the container of a task: {e}");
                continue;
            }
        }
        warn!(namespace = %t.namespace, id = %t.id, "task without a container: removing it");
        if t.exit.is_none() && !t.shim_dead {
            let _ = rt
                .tasks
                .kill(&t.namespace, &t.id, None, libc::SIGKILL as u32, true)
                .await;
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                rt.tasks.wait(&t.namespace, &t.id, None),
            )
            .await;
        }
        if let Err(e) = rt.tasks.delete(&t.namespace, &t.id).await {
            warn!(namespace = %t.namespace, id = %t.id, "removing a stale task: {e}");
        }
        crate::netmgr::task::teardown(&rt, &t.namespace, &t.id).await;
    }
}

pub struct ContainersService(pub Arc<Runtime>);

#[tonic::async_trait]
impl pb::containers_server::Containers for ContainersService {
    async fn create(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let rt = &self.0;
        let d = &rt.d;
        check_id(&req.id)?;
        // a task create of this container usually follows at once: its cgroup move finds
        // the kernel's lock warm (see `task::warm`)
        crate::task::warm::for_a_while(std::time::Duration::from_millis(250));
        if !req.runtime.is_empty() && Path::new(&req.runtime) != rt.shim {
            return Err(Status::invalid_argument(format!(
                "runtime {:?}: this rcd runs every task under {} (set `shim` in its config)",
                req.runtime,
                rt.shim.display()
            )));
        }
        if d.md
            .container(&ns, &req.id)
            .map_err(metadata_status)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "container {:?} already exists in namespace {ns:?}",
                req.id
            )));
        }
        let image = find_image(&d.md, &ns, &req.image)?;
        let (cfg, top) = image_parts(d, &ns, &image).await?;
        let mut labels: Labels = req.labels.clone().into_iter().collect();
        let opts = req.options.unwrap_or_default();
        super::restart::option_labels(&opts, &mut labels)?;
        super::restart::image_stop_signal(&cfg, &mut labels);
        // rnerd's network and volume options: labels, and mounts for the spec
        let net = crate::netmgr::create::translate(&rt.net, &ns, &opts, &mut labels, |c| {
            crate::netmgr::task::find_container(&d.md, &ns, c).is_some()
        })
        .map_err(crate::netmgr::task::net_status)?;
        let creq = container_request(&ns, &req.id, &opts, &labels).map(|mut r| {
            r.mounts.extend(net.mounts.iter().cloned());
            if net.host_network {
                r.namespaces.network = NamespaceMode::Host;
                r.namespaces.uts = NamespaceMode::Host;
            }
            r
        });
        let creq = match creq {
            Ok(r) => r,
            Err(e) => {
                crate::netmgr::create::undo(&rt.net, &ns, &net);
                return Err(e);
            }
        };
        let snapshotter = d.snapshotter.clone();
        let md = d.md.clone();
        // The scratch dir marks a create in progress: a daemon killed half-way leaves it,
        // and the next one removes the snapshot it made (see `remove_interrupted_creates`).
        let scratch = spec_mounts(&d.settings.state).join(&ns).join(&req.id);
        let trash = crate::task::trash_dir(&d.settings.state);
        let (ns_, id) = (ns.clone(), req.id.clone());
        let image_name = image.name.clone();
        let rec = blocking(move || {
            std::fs::create_dir_all(&scratch).map_err(|e| {
                Status::internal(format!("creating {}: {e}", scratch.display()))
            })?;
            let made = (|| {
                let mounts = snapshotter
                    .prepare_unsynced(&ns_, &id, Some(&top), Labels::new())
                    .map_err(|e| match e {
                        crate::snapshot::SnapshotError::AlreadyExists { .. } => {
                            Status::already_exists(format!(
                                "snapshot {id:?} already exists in namespace {ns_:?} (remove it, or pick another container id)"
                            ))
                        }
                        e => snapshot_status(e),
                    })?;
                let made = generate_spec(&cfg, &creq, &mounts, &scratch).and_then(|spec| {
                    let now = Utc::now();
                    let rec = ContainerRecord {
                        id: id.clone(),
                        image: image_name,
                        snapshot_key: Some(id.clone()),
                        labels,
                        spec,
                        runtime: None,
                        created: now,
                        updated: now,
                    };
                    md.write(|tx| tx.create_container(&ns_, &rec))
                        .map_err(metadata_status)?;
                    Ok(rec)
                });
                if made.is_err() {
                    if let Err(e) = snapshotter.remove(&ns_, &id) {
                        warn!(namespace = %ns_, id = %id, "removing the snapshot of a failed create: {e}");
                    }
                }
                made
            })();
            // renamed away at once (the create is over), removed in the background
            crate::trash::discard_renamed(&scratch, &trash);
            made
        })
        .await;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                crate::netmgr::create::undo(&rt.net, &ns, &net);
                return Err(e);
            }
        };
        info!(namespace = %ns, id = %rec.id, image = %rec.image, "container created");
        rt.events.publish(
            &ns,
            "/containers/create",
            &[("id", rec.id.clone()), ("image", rec.image.clone())],
        );
        Ok(Response::new(pb::CreateContainerResponse {
            container: Some(to_pb(&rec, true)),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetContainerRequest>,
    ) -> Result<Response<pb::GetContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let c = get_container(&self.0.d.md, &ns, &id)?;
        Ok(Response::new(pb::GetContainerResponse {
            container: Some(to_pb(&c, true)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let ns = namespace(&req)?;
        let filters = parse_filters(&req.into_inner().filters)?;
        let list = self.0.d.md.containers(&ns).map_err(metadata_status)?;
        let containers = list
            .iter()
            .filter(|c| filters.is_empty() || filters.iter().any(|f| matches(c, f)))
            .map(|c| to_pb(c, false))
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateContainerRequest>,
    ) -> Result<Response<pb::UpdateContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let md = self.0.d.md.clone();
        let (ns_, id) = (ns.clone(), req.id.clone());
        let rec = blocking(move || {
            md.write(|tx| -> Result<_, TxError> {
                let mut c = tx
                    .container(&ns_, &id)?
                    .ok_or_else(|| unknown_container(&ns_, &id))?;
                for (k, v) in req.labels {
                    if v.is_empty() {
                        c.labels.remove(&k);
                    } else {
                        c.labels.insert(k, v);
                    }
                }
                c.updated = Utc::now();
                tx.update_container(&ns_, &c)?;
                Ok(c)
            })
            .map_err(Status::from)
        })
        .await?;
        self.0
            .events
            .publish(&ns, "/containers/update", &[("id", rec.id.clone())]);
        Ok(Response::new(pb::UpdateContainerResponse {
            container: Some(to_pb(&rec, false)),
        }))
    }

    type LogsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::LogsResponse, Status>> + Send + 'static>,
    >;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let ns = namespace(&req)?;
        let rx = super::logs::logs(self.0.clone(), ns, req.into_inner()).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<pb::DeleteContainerResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        delete_container(&self.0, &ns, &req.id, req.keep_snapshot, req.remove_volumes).await?;
        Ok(Response::new(pb::DeleteContainerResponse {}))
    }
}

/// Containers.Delete, and rcd's own (auto-remove): refused while the container has a task.
pub(crate) async fn delete_container(
    rt: &Arc<Runtime>,
    ns: &str,
    id: &str,
    keep_snapshot: bool,
    remove_volumes: bool,
) -> Result<(), Status> {
    let ns = ns.to_owned();
    let req = pb::DeleteContainerRequest {
        id: id.to_owned(),
        keep_snapshot,
        remove_volumes,
    };
    {
        // a pending restart either comes first or finds no container (restart.rs)
        let lock = rt.restarts.lock(&ns, &req.id);
        let _held = lock.lock().await;
        let c = get_container(&rt.d.md, &ns, &req.id).inspect_err(|_| {
            rt.restarts.forget(&ns, &req.id);
        })?;
        if rt.tasks.list(Some(&ns)).iter().any(|t| t.id == c.id) {
            let running = match rt.tasks.state(&ns, &c.id, None).await {
                Ok(s) => !matches!(s.status, crate::task::TaskStatus::Stopped),
                Err(_) => false,
            };
            return Err(Status::failed_precondition(if running {
                format!(
                    "container {:?} has a running task: kill it and delete the task first",
                    c.id
                )
            } else {
                format!(
                    "container {:?} has a stopped task: delete the task first",
                    c.id
                )
            }));
        }
        let snapshotter = rt.d.snapshotter.clone();
        let ns_ = ns.clone();
        let keep = req.keep_snapshot;
        let volumes = crate::netmgr::volumes::mounts_of(&c.labels);
        blocking(move || {
            let key = c.snapshot_key.as_deref().filter(|_| !keep);
            snapshotter
                .remove_deferred_with(&ns_, key, |tx| tx.delete_container(&ns_, &c.id))
                .map_err(|e| match e {
                    crate::snapshot::SnapshotError::Metadata(m) => metadata_status(m),
                    e => snapshot_status(e),
                })
        })
        .await?;
        if req.remove_volumes {
            super::volumes::remove_anonymous(rt, &ns, &volumes).await;
        }
        rt.restarts.forget(&ns, &req.id);
        super::logs::remove(rt, &ns, &req.id);
        info!(namespace = %ns, id = %req.id, keep_snapshot = keep, "container deleted");
        rt.events
            .publish(&ns, "/containers/delete", &[("id", req.id.clone())]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("web-1_a.b").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(77)] {
            let e = check_id(bad).unwrap_err();
            assert!(e.message().starts_with("invalid container id"), "{bad}");
        }
    }

    #[test]
    fn ctr_mounts() {
        let m = parse_ctr_mount("type=bind,src=/tmp,dst=/mnt,options=rbind:ro").unwrap();
        assert_eq!(m.destination, "/mnt");
        assert!(m.readonly);
        assert!(matches!(m.source, MountSource::Bind { .. }));
        let m = parse_ctr_mount("type=tmpfs,dst=/t").unwrap();
        assert!(matches!(m.source, MountSource::Tmpfs { .. }));
        for bad in [
            "src=/tmp",
            "type=bind,dst=/x",
            "type=bind,src=rel,dst=/x",
            "type=nfs,src=/a,dst=/b",
            "bogus=1,dst=/x",
            "dst",
        ] {
            let e = parse_ctr_mount(bad).unwrap_err();
            assert!(e.message().starts_with("invalid mount"), "{bad}: {e:?}");
        }
    }

    fn rec(id: &str, labels: &[(&str, &str)]) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            image: "docker.io/library/busybox:latest".into(),
            snapshot_key: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            spec: serde_json::Value::Null,
            runtime: None,
            created: Utc::now(),
            updated: Utc::now(),
        }
    }

    #[test]
    fn list_filters() {
        let a = rec("a", &[("app", "web"), ("tier", "1")]);
        let b = rec("b", &[("app", "db")]);
        let f = |s: &[&str]| parse_filters(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let pick = |fs: &Vec<Vec<Cond>>| -> Vec<String> {
            [&a, &b]
                .iter()
                .filter(|c| fs.is_empty() || fs.iter().any(|f| matches(c, f)))
                .map(|c| c.id.clone())
                .collect()
        };
        assert_eq!(pick(&f(&["labels.app==web"]).unwrap()), ["a"]);
        assert_eq!(pick(&f(&["labels.tier"]).unwrap()), ["a"]);
        assert_eq!(pick(&f(&["labels.app!=web"]).unwrap()), ["b"]);
        assert_eq!(
            pick(&f(&["labels.app==web,labels.tier==2"]).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(pick(&f(&["id==b", "id==a"]).unwrap()), ["a", "b"]);
        assert_eq!(
            pick(&f(&["image==docker.io/library/busybox:latest"]).unwrap()),
            ["a", "b"]
        );
        assert!(f(&["bogus==1"]).is_err());
        assert!(f(&["labels.==1"]).is_err());
    }

    #[test]
    fn requests() {
        let o = pb::ContainerOptions {
            args: vec!["sh".into()],
            cpus: "0.5".into(),
            memory_limit: 64 << 20,
            net_host: true,
            ..Default::default()
        };
        let r = container_request("ns", "c1", &o, &Labels::new()).unwrap();
        assert_eq!(r.args.as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(r.resources.cpus, Some(0.5));
        assert_eq!(r.resources.memory_limit, Some(64 << 20));
        assert_eq!(r.namespaces.network, NamespaceMode::Host);
        let bad = pb::ContainerOptions {
            cpus: "lots".into(),
            ..Default::default()
        };
        let e = container_request("ns", "c1", &bad, &Labels::new()).unwrap_err();
        assert!(e.message().contains("cpus"), "{e:?}");
    }
}
