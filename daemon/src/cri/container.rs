//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, UpdateContainerResources, ReopenContainerLog.

use super::store::{ContainerRecord, ContainerState, Entry, SandboxState};
use super::{labels_match, logger, new_id, now_ns, Cri, NAMESPACE};
use crate::metadata::{ContainerRecord as MdContainer, Labels};
use crate::server::service::{blocking, metadata_status, snapshot_status};
use crate::spec::{
    self, ContainerRequest, MountRequest, MountSource, NamespaceMode, Propagation, SeccompMode,
};
use crate::task::{CreateOptions, IoConfig, Stdio, TaskEventKind};
use k8s_cri::v1 as cri;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;
use tracing::info;

pub(crate) fn get(cri: &Cri, id: &str) -> Result<Entry<ContainerRecord>, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no container id given"));
    }
    cri.store
        .container(id)
        .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
}

pub(crate) fn of_sandbox(cri: &Cri, sandbox: &str) -> Vec<String> {
    cri.store
        .containers()
        .into_iter()
        .filter_map(|c| {
            let c = c.lock().unwrap();
            (c.sandbox_id == sandbox).then(|| c.id.clone())
        })
        .collect()
}

fn ns_option(c: &cri::ContainerConfig) -> cri::NamespaceOption {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn propagation(p: i32) -> Propagation {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Rshared,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::Rslave,
        _ => Propagation::Rprivate,
    }
}

fn seccomp_mode(p: Option<&cri::SecurityProfile>, legacy: &str) -> Result<SeccompMode, Status> {
    use cri::security_profile::ProfileType;
    if let Some(p) = p {
        return Ok(match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => SeccompMode::RuntimeDefault,
            Ok(ProfileType::Unconfined) => SeccompMode::Unconfined,
            Ok(ProfileType::Localhost) => SeccompMode::Localhost(p.localhost_ref.clone().into()),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )))
            }
        });
    }
    Ok(match legacy {
        "" | "unconfined" => SeccompMode::Unconfined,
        "runtime/default" | "docker/default" => SeccompMode::RuntimeDefault,
        l => match l.strip_prefix("localhost/") {
            Some(p) => SeccompMode::Localhost(p.into()),
            None => {
                return Err(Status::invalid_argument(format!(
                    "unknown seccomp profile {l:?}"
                )))
            }
        },
    })
}

/// The spec request of a CRI container in its sandbox.
fn request(
    id: &str,
    c: &cri::ContainerConfig,
    sb: &super::store::SandboxRecord,
) -> Result<ContainerRequest, Status> {
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let res = linux.resources.clone().unwrap_or_default();
    let mut req = ContainerRequest {
        id: id.to_owned(),
        env: c
            .envs
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect(),
        cwd: (!c.working_dir.is_empty()).then(|| c.working_dir.clone()),
        tty: c.tty,
        namespace: Some(NAMESPACE.into()),
        cgroups_path: Some(spec::cgroups_path_under(&sb.cgroup_parent, id)),
        rlimits: Some(vec![]),
        privileged: sc.privileged,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privileges: sc.no_new_privs,
        labels: c.annotations.clone().into_iter().collect(),
        #[allow(deprecated)]
        seccomp: seccomp_mode(sc.seccomp.as_ref(), &sc.seccomp_profile_path)?,
        additional_gids: sc.supplemental_groups.iter().map(|g| *g as u32).collect(),
        masked_paths: (!sc.masked_paths.is_empty()).then(|| sc.masked_paths.clone()),
        readonly_paths: (!sc.readonly_paths.is_empty()).then(|| sc.readonly_paths.clone()),
        oom_score_adj: (res.oom_score_adj != 0).then_some(res.oom_score_adj as i32),
        ..Default::default()
    };
    if !c.command.is_empty() {
        req.entrypoint = Some(c.command.clone());
        req.args = Some(c.args.clone());
    } else if !c.args.is_empty() {
        req.args = Some(c.args.clone());
    }
    if let Some(caps) = &sc.capabilities {
        req.cap_add = caps.add_capabilities.clone();
        req.cap_drop = caps.drop_capabilities.clone();
    }
    if let Some(a) = &sc.apparmor {
        if a.profile_type != cri::security_profile::ProfileType::Unconfined as i32
            && a.profile_type != cri::security_profile::ProfileType::RuntimeDefault as i32
        {
            return Err(Status::invalid_argument(
                "apparmor profile: rcd has no AppArmor support",
            ));
        }
    }
    if sc.selinux_options.as_ref().is_some_and(|s| {
        !(s.user.is_empty() && s.role.is_empty() && s.r#type.is_empty() && s.level.is_empty())
    }) {
        return Err(Status::invalid_argument(
            "selinux options: rcd has no SELinux support",
        ));
    }
    let group = sc.run_as_group.as_ref().map(|g| g.value);
    let user = if let Some(u) = &sc.run_as_user {
        Some(u.value.to_string())
    } else if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else {
        None
    };
    req.user = match (user, group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u),
        (None, Some(_)) => {
            return Err(Status::invalid_argument(
                "run_as_group is set without run_as_user or run_as_username",
            ))
        }
        (None, None) => None,
    };
    req.resources = spec::Resources {
        cpu_period: (res.cpu_period > 0).then_some(res.cpu_period as u64),
        cpu_quota: (res.cpu_quota > 0).then_some(res.cpu_quota),
        cpu_shares: (res.cpu_shares > 0).then_some(res.cpu_shares as u64),
        memory_limit: (res.memory_limit_in_bytes > 0).then_some(res.memory_limit_in_bytes),
        memory_swap: (res.memory_swap_limit_in_bytes > 0).then_some(res.memory_swap_limit_in_bytes),
        cpuset_cpus: (!res.cpuset_cpus.is_empty()).then(|| res.cpuset_cpus.clone()),
        cpuset_mems: (!res.cpuset_mems.is_empty()).then(|| res.cpuset_mems.clone()),
        ..Default::default()
    };
    // namespaces: the pod's network; its IPC and UTS through the pause process
    let pod_ns = super::sandbox::namespace_options(&sb.config).unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let proc_ns = |n: &str| PathBuf::from(format!("/proc/{}/ns/{n}", sb.pid));
    req.namespaces.network = match &sb.netns {
        Some(p) => NamespaceMode::Join(p.clone()),
        None => NamespaceMode::Host,
    };
    req.namespaces.uts = if sb.netns.is_none() {
        NamespaceMode::Host
    } else {
        NamespaceMode::Join(proc_ns("uts"))
    };
    req.namespaces.ipc = if pod_ns.ipc == node {
        NamespaceMode::Host
    } else {
        NamespaceMode::Join(proc_ns("ipc"))
    };
    let own = ns_option(c);
    req.namespaces.pid = if own.pid == node || pod_ns.pid == node {
        NamespaceMode::Host
    } else if own.pid == cri::NamespaceMode::Pod as i32 {
        NamespaceMode::Join(proc_ns("pid"))
    } else {
        NamespaceMode::New
    };
    // mounts: the request's, then the pod files unless a request mount covers them
    for m in &c.mounts {
        if m.image.is_some() {
            return Err(Status::invalid_argument(format!(
                "mount at {:?}: image volumes are not supported",
                m.container_path
            )));
        }
        let mut options = vec![];
        if m.recursive_read_only {
            options.push("rro".to_owned());
        }
        req.mounts.push(MountRequest {
            destination: m.container_path.clone(),
            source: MountSource::Bind {
                source: m.host_path.clone().into(),
                propagation: propagation(m.propagation),
            },
            readonly: m.readonly,
            options,
        });
    }
    for f in ["resolv.conf", "hostname", "hosts"] {
        let dest = format!("/etc/{f}");
        if !c.mounts.iter().any(|m| m.container_path == dest) {
            req.mounts.push(MountRequest::bind(
                sb.pod_dir.join(f),
                &dest,
                sc.readonly_rootfs,
            ));
        }
    }
    Ok(req)
}

pub async fn create(cri: &Arc<Cri>, req: cri::CreateContainerRequest) -> Result<String, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("no container config given"))?;
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("the container config has no metadata"))?;
    if meta.name.is_empty() {
        return Err(Status::invalid_argument(
            "the container metadata has no name",
        ));
    }
    let sb_entry = super::sandbox::get(cri, &req.pod_sandbox_id)?;
    let sb = sb_entry.lock().unwrap().clone();
    if sb.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            sb.id
        )));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let image = super::image::resolve(cri, &image_name)?;
    let (img_cfg, top) = crate::server::containers::image_parts(&cri.d, NAMESPACE, &image).await?;
    let id = new_id();
    let creq = request(&id, &config, &sb)?;
    let log_path = (!config.log_path.is_empty() && !sb.config.log_directory.is_empty())
        .then(|| Path::new(&sb.config.log_directory).join(&config.log_path));
    let name = format!("{}_{}_{}", meta.name, sb.name, meta.attempt);
    let image_id = super::image::image_id(cri, &image).await;
    let rec = ContainerRecord {
        id: id.clone(),
        sandbox_id: sb.id.clone(),
        name: name.clone(),
        config: config.clone(),
        image: image_name.clone(),
        image_id: image_id.clone(),
        image_ref: super::image::repo_digest(&image).unwrap_or(image_id),
        created_at: now_ns(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        state: ContainerState::Created,
        log_path,
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    match cri.store.add_container(rec.clone()) {
        Ok(Ok(())) => {}
        Ok(Err(other)) => {
            return Err(Status::already_exists(format!(
                "container name {name:?} is taken by {other}"
            )))
        }
        Err(e) => return Err(Status::internal(e.to_string())),
    }
    let snapshotter = cri.d.snapshotter.clone();
    let md = cri.d.md.clone();
    let scratch = cri.state_dir.join("spec-mounts").join(&id);
    let (id_, image_full) = (id.clone(), image.name.clone());
    let made = blocking(move || {
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Status::internal(format!("creating {}: {e}", scratch.display())))?;
        let mounts = snapshotter
            .prepare_unsynced(NAMESPACE, &id_, Some(&top), Labels::new())
            .map_err(snapshot_status);
        let mounts = match mounts {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir(&scratch);
                return Err(e);
            }
        };
        let spec = crate::server::containers::generate_spec(&img_cfg, &creq, &mounts, &scratch)
            .and_then(|spec| {
                let now = chrono::Utc::now();
                let rec = MdContainer {
                    id: id_.clone(),
                    image: image_full,
                    snapshot_key: Some(id_.clone()),
                    labels: Labels::from([("io.cri-containerd.kind".into(), "container".into())]),
                    spec: spec.clone(),
                    runtime: None,
                    created: now,
                    updated: now,
                };
                md.write(|tx| tx.create_container(NAMESPACE, &rec))
                    .map_err(metadata_status)?;
                Ok(spec)
            });
        let _ = std::fs::remove_dir(&scratch);
        if spec.is_err() {
            let _ = snapshotter.remove(NAMESPACE, &id_);
        }
        spec
    })
    .await;
    if let Err(e) = made {
        let _ = cri.store.remove_container(&id);
        return Err(e);
    }
    publish(cri, &id, cri::ContainerEventType::ContainerCreatedEvent);
    info!(id = %id, name = %name, "container created");
    Ok(id)
}

/// The container's stdin when its config asks for one: a FIFO in its control dir that the
/// logger feeds from attach clients (see [`super::attach`]).
fn stdin_fifo(dir: &Path, config: &cri::ContainerConfig) -> Result<Stdio, Status> {
    let fifo = dir.join(super::attach::STDIN_FIFO);
    let once = dir.join(super::attach::STDIN_ONCE);
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&once);
    if !config.stdin {
        return Ok(Stdio::Null);
    }
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Status::internal(format!("creating stdin fifo {}: {e}", fifo.display())))?;
    if config.stdin_once {
        std::fs::write(&once, b"")
            .map_err(|e| Status::internal(format!("creating {}: {e}", once.display())))?;
    }
    Ok(Stdio::Raw(fifo.display().to_string()))
}

pub(crate) fn control_dir(cri: &Cri, id: &str) -> PathBuf {
    cri.state_dir.join("containers").join(id)
}

pub async fn start(cri: &Arc<Cri>, id: &str) -> Result<(), Status> {
    let entry = get(cri, id)?;
    let rec = entry.lock().unwrap().clone();
    if rec.state != ContainerState::Created {
        return Err(Status::failed_precondition(format!(
            "container {} is not in the created state",
            rec.id
        )));
    }
    let sb = super::sandbox::get(cri, &rec.sandbox_id)?;
    if sb.lock().unwrap().state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} of container {} is not ready",
            rec.sandbox_id, rec.id
        )));
    }
    let md = cri.d.md.clone();
    let id_ = rec.id.clone();
    let mdrec = blocking(move || {
        md.container(NAMESPACE, &id_)
            .map_err(metadata_status)?
            .ok_or_else(|| Status::not_found(format!("container {id_} has no record")))
    })
    .await?;
    let mounts = cri
        .d
        .snapshotter
        .mounts(NAMESPACE, &rec.id)
        .map_err(snapshot_status)?;
    let io = match &rec.log_path {
        Some(path) => {
            let dir = control_dir(cri, &rec.id);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
            let uri = logger::binary_uri(
                &cri.exe,
                &logger::spec_arg(cri.cfg.max_log_line_size, &dir, path),
            );
            IoConfig {
                stdin: stdin_fifo(&dir, &rec.config)?,
                stdout: Stdio::Raw(uri.clone()),
                stderr: if rec.config.tty {
                    Stdio::Null
                } else {
                    Stdio::Raw(uri)
                },
                terminal: rec.config.tty,
            }
        }
        None => IoConfig {
            terminal: rec.config.tty,
            ..Default::default()
        },
    };
    let failed = |entry: &Entry<ContainerRecord>, msg: String| {
        let mut r = entry.lock().unwrap();
        r.state = ContainerState::Exited;
        r.finished_at = now_ns();
        r.exit_code = 128;
        r.reason = "StartError".into();
        r.message = msg.clone();
        let _ = cri.store.save_container(&r);
        Status::internal(msg)
    };
    if let Err(e) = cri
        .tasks
        .create(
            NAMESPACE,
            &rec.id,
            CreateOptions {
                spec: mdrec.spec,
                rootfs: mounts,
                io,
                // one shim per pod: the pause's
                shim_group: Some(rec.sandbox_id.clone()),
            },
        )
        .await
    {
        return Err(failed(
            &entry,
            format!("creating the task of {}: {e}", rec.id),
        ));
    }
    if let Err(e) = cri.tasks.start(NAMESPACE, &rec.id, None).await {
        let _ = super::sandbox::delete_task(cri, &rec.id).await;
        return Err(failed(&entry, format!("starting {}: {e}", rec.id)));
    }
    {
        let mut r = entry.lock().unwrap();
        r.state = ContainerState::Running;
        r.started_at = now_ns();
        cri.store
            .save_container(&r)
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    watch(cri.clone(), rec.id.clone());
    publish(cri, &rec.id, cri::ContainerEventType::ContainerStartedEvent);
    info!(id = %rec.id, "container started");
    Ok(())
}

/// Whether the container's memory cgroup saw an OOM kill (cgroup v1 `memory.oom_control`,
/// v2 `memory.events`).
fn oom_killed(cri: &Cri, id: &str) -> bool {
    let Some(sb) = cri
        .store
        .container(id)
        .map(|c| c.lock().unwrap().sandbox_id.clone())
        .and_then(|s| cri.store.sandbox(&s))
    else {
        return false;
    };
    let parent = sb.lock().unwrap().cgroup_parent.clone();
    let path = spec::cgroups_path_under(&parent, id);
    let v1 = format!("/sys/fs/cgroup/memory{path}/memory.oom_control");
    let v2 = format!("/sys/fs/cgroup/unified{path}/memory.events");
    for f in [v1, v2] {
        if let Ok(s) = std::fs::read_to_string(&f) {
            for l in s.lines() {
                if let Some(n) = l.strip_prefix("oom_kill ") {
                    if n.trim().parse::<u64>().unwrap_or(0) > 0 {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// Records the exit of a running container when its task ends.
fn watch(cri: Arc<Cri>, id: String) {
    tokio::spawn(async move {
        let Ok(exit) = cri.tasks.wait(NAMESPACE, &id, None).await else {
            return;
        };
        record_exit(&cri, &id, &exit);
    });
}

/// Records a container's exit, once: the watcher and a StopContainer that saw the task end
/// both call it; whichever comes first records it and publishes the stopped event.
fn record_exit(cri: &Cri, id: &str, exit: &crate::task::Exit) {
    let Some(entry) = cri.store.container(id) else {
        return;
    };
    let oom = oom_killed(cri, id);
    {
        let mut r = entry.lock().unwrap();
        if r.state == ContainerState::Exited {
            return;
        }
        r.state = ContainerState::Exited;
        r.finished_at = (exit.exited_at_ms as i64) * 1_000_000;
        r.exit_code = exit.status as i32;
        if oom || r.reason == "OOMKilled" {
            r.reason = "OOMKilled".into();
        } else if r.exit_code == 0 {
            r.reason = "Completed".into();
        } else {
            r.reason = "Error".into();
        }
        let _ = cri.store.save_container(&r);
    }
    publish(cri, id, cri::ContainerEventType::ContainerStoppedEvent);
}

/// After a start: watches every running container again, and notes OOM events.
pub(crate) fn watch_all(cri: &Arc<Cri>) {
    let live: std::collections::HashMap<String, Option<crate::task::Exit>> = cri
        .tasks
        .list(Some(NAMESPACE))
        .into_iter()
        .map(|t| (t.id, t.exit))
        .collect();
    for e in cri.store.containers() {
        let (id, state) = {
            let r = e.lock().unwrap();
            (r.id.clone(), r.state)
        };
        if state == ContainerState::Running {
            if live.contains_key(&id) {
                watch(cri.clone(), id);
            } else {
                let mut r = e.lock().unwrap();
                r.state = ContainerState::Exited;
                r.exit_code = 255;
                r.reason = "Unknown".into();
                r.message = "the container's task is gone".into();
                r.finished_at = now_ns();
                let _ = cri.store.save_container(&r);
            }
        }
    }
    let mut events = cri.tasks.subscribe();
    let weak = Arc::downgrade(cri);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) if ev.namespace == NAMESPACE => {
                    if let TaskEventKind::Oom { id } = ev.kind {
                        let Some(cri) = weak.upgrade() else { return };
                        if let Some(e) = cri.store.container(&id) {
                            let mut r = e.lock().unwrap();
                            if r.state != ContainerState::Exited {
                                r.reason = "OOMKilled".into();
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
}

pub async fn stop(cri: &Arc<Cri>, id: &str, timeout: i64) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no container id given"));
    }
    let Some(entry) = cri.store.container(id) else {
        return Err(Status::not_found(format!("container {id:?} not found")));
    };
    let (id, state) = {
        let r = entry.lock().unwrap();
        (r.id.clone(), r.state)
    };
    if state != ContainerState::Running {
        return Ok(());
    }
    super::sandbox::stop_task(cri, &id, Duration::from_secs(timeout.max(0) as u64)).await?;
    // the caller must see EXITED: the task has ended, so its exit is there to record now
    // (waiting for the watcher to do it cost a 20 ms poll per container)
    if let Ok(Ok(exit)) =
        tokio::time::timeout(Duration::from_secs(2), cri.tasks.wait(NAMESPACE, &id, None)).await
    {
        record_exit(cri, &id, &exit);
    }
    for _ in 0..100 {
        if entry.lock().unwrap().state == ContainerState::Exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn remove(cri: &Arc<Cri>, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no container id given"));
    }
    let Some(entry) = cri.store.container(id) else {
        return Ok(());
    };
    let id = entry.lock().unwrap().id.clone();
    if entry.lock().unwrap().state == ContainerState::Running {
        stop(cri, &id, 0).await?;
    }
    super::sandbox::delete_task(cri, &id).await?;
    forget_record(cri, &id).await?;
    let _ = std::fs::remove_dir_all(control_dir(cri, &id));
    cri.store
        .remove_container(&id)
        .map_err(|e| Status::internal(e.to_string()))?;
    publish(cri, &id, cri::ContainerEventType::ContainerDeletedEvent);
    info!(id = %id, "container removed");
    Ok(())
}

fn cri_mounts(c: &cri::ContainerConfig) -> Vec<cri::Mount> {
    c.mounts.clone()
}

pub fn to_status(rec: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: rec.state.to_cri() as i32,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: rec.config.image.clone(),
        image_ref: rec.image_ref.clone(),
        image_id: rec.image_id.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: cri_mounts(&rec.config),
        log_path: rec
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: rec
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        user: None,
    }
}

pub fn status(
    cri: &Cri,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let entry = get(cri, &req.container_id)?;
    let rec = entry.lock().unwrap().clone();
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let pid = cri
            .tasks
            .list(Some(NAMESPACE))
            .into_iter()
            .find(|t| t.id == rec.id)
            .map(|t| t.pid)
            .unwrap_or(0);
        info.insert(
            "info".to_owned(),
            serde_json::json!({
                "sandboxID": rec.sandbox_id,
                "pid": pid,
                "name": rec.name,
            })
            .to_string(),
        );
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(to_status(&rec)),
        info,
    })
}

pub fn list(cri: &Cri, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
    let f = filter.unwrap_or_default();
    let mut out = vec![];
    for e in cri.store.containers() {
        let r = e.lock().unwrap();
        if !f.id.is_empty() && !r.id.starts_with(&f.id) {
            continue;
        }
        if !f.pod_sandbox_id.is_empty() && !r.sandbox_id.starts_with(&f.pod_sandbox_id) {
            continue;
        }
        let state = r.state.to_cri() as i32;
        if f.state.as_ref().is_some_and(|s| s.state != state) {
            continue;
        }
        if !labels_match(&r.config.labels, &f.label_selector) {
            continue;
        }
        out.push(cri::Container {
            id: r.id.clone(),
            pod_sandbox_id: r.sandbox_id.clone(),
            metadata: r.config.metadata.clone(),
            image: r.config.image.clone(),
            image_ref: r.image_ref.clone(),
            image_id: r.image_id.clone(),
            state,
            created_at: r.created_at,
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        });
    }
    out.sort_by_key(|c| c.created_at);
    out
}

pub async fn update_resources(
    cri: &Arc<Cri>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<(), Status> {
    let entry = get(cri, &req.container_id)?;
    let id = entry.lock().unwrap().id.clone();
    let Some(r) = req.linux else {
        return Ok(());
    };
    let mut res = serde_json::json!({});
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), r.cpu_shares.into());
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), r.cpu_quota.into());
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), r.cpu_period.into());
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), r.cpuset_cpus.clone().into());
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), r.cpuset_mems.clone().into());
    }
    if !cpu.is_empty() {
        res["cpu"] = cpu.into();
    }
    if r.memory_limit_in_bytes > 0 {
        res["memory"] = serde_json::json!({ "limit": r.memory_limit_in_bytes });
        if r.memory_swap_limit_in_bytes > 0 {
            res["memory"]["swap"] = r.memory_swap_limit_in_bytes.into();
        }
    }
    let running = entry.lock().unwrap().state == ContainerState::Running;
    if running {
        cri.tasks
            .update(NAMESPACE, &id, res)
            .await
            .map_err(|e| Status::internal(format!("updating {id}: {e}")))?;
    }
    let mut rec = entry.lock().unwrap();
    if let Some(l) = rec.config.linux.as_mut() {
        l.resources = Some(r);
    }
    let _ = cri.store.save_container(&rec);
    Ok(())
}

pub async fn reopen_log(cri: &Cri, id: &str) -> Result<(), Status> {
    let entry = get(cri, id)?;
    let rec = entry.lock().unwrap().clone();
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let Some(path) = rec.log_path else {
        return Ok(());
    };
    let pid_file = control_dir(cri, &rec.id).join(logger::PID_FILE);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            Status::internal(format!(
                "container {}: no log writer ({} unreadable)",
                rec.id,
                pid_file.display()
            ))
        })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .map_err(|e| Status::internal(format!("signalling the log writer {pid}: {e}")))?;
    // kubelet renamed the file: done once it exists again
    for _ in 0..100 {
        if path.exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(Status::internal(format!(
        "the log writer did not reopen {}",
        path.display()
    )))
}

pub(crate) fn publish(cri: &Cri, id: &str, ty: cri::ContainerEventType) {
    if cri.events.receiver_count() == 0 {
        return;
    }
    let Some(entry) = cri.store.container(id) else {
        // deleted: what is left is the id
        let _ = cri.events.send(cri::ContainerEventResponse {
            container_id: id.to_owned(),
            container_event_type: ty as i32,
            created_at: now_ns(),
            ..Default::default()
        });
        return;
    };
    let rec = entry.lock().unwrap().clone();
    let pod = cri
        .store
        .sandbox(&rec.sandbox_id)
        .map(|s| s.lock().unwrap().clone());
    let _ = cri.events.send(cri::ContainerEventResponse {
        container_id: id.to_owned(),
        container_event_type: ty as i32,
        created_at: now_ns(),
        pod_sandbox_status: pod.map(|p| cri::PodSandboxStatus {
            id: p.id,
            metadata: p.config.metadata.clone(),
            created_at: p.created_at,
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
            ..Default::default()
        }),
        containers_statuses: vec![to_status(&rec)],
    });
}

/// Deletes the metadata record of a CRI container or pod sandbox `id` (a gone one is fine)
/// and its snapshot, in one commit; the snapshot's files go to the trash.
pub(super) async fn forget_record(cri: &Cri, id: &str) -> Result<(), Status> {
    let snapshotter = cri.d.snapshotter.clone();
    let id = id.to_owned();
    blocking(move || {
        snapshotter
            .remove_deferred_with(NAMESPACE, Some(&id), |tx| {
                match tx.delete_container(NAMESPACE, &id) {
                    Err(crate::metadata::MetadataError::NotFound { .. }) => Ok(()),
                    r => r,
                }
            })
            .map_err(|e| match e {
                crate::snapshot::SnapshotError::Metadata(m) => metadata_status(m),
                e => snapshot_status(e),
            })
    })
    .await
}
