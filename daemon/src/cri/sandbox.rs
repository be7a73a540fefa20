//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use super::store::{SandboxRecord, SandboxState};
use super::timing::Timeline;
use super::{internal, labels_match, new_id, now_ns, Cri, CriError, NAMESPACE};
use crate::cni::{dns, netns, NetNs, PodNetworkRequest, PortMapping};
use crate::metadata::{ContainerRecord as MdContainer, Labels};
use crate::spec::{self, ContainerRequest, NamespaceMode, SeccompMode};
use crate::task::{CreateOptions, IoConfig, TaskStatus};
use k8s_cri::v1 as cri;
use oci_spec::image::ImageConfiguration;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Status;
use tracing::{info, warn};

/// rcd's static pause, built by daemon/build.rs.
static PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The built-in pause's read-only root: `<root>/pause/rootfs`.
pub fn pause_rootfs(root: &Path) -> PathBuf {
    root.join("pause").join("rootfs")
}

/// Writes the built-in pause and the mount points its spec needs (the rootfs is shared by
/// every pod and mounted read-only, so nothing may have to be created in it later).
pub fn install_pause(root: &Path) -> Result<(), CriError> {
    let rootfs = pause_rootfs(root);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| CriError::Io { what, path, source }
    };
    for d in ["proc", "dev", "sys", "etc", "tmp"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    for f in ["etc/resolv.conf", "etc/hostname", "etc/hosts"] {
        let p = rootfs.join(f);
        if !p.exists() {
            std::fs::write(&p, b"").map_err(io("creating", &p))?;
        }
    }
    let bin = rootfs.join("pause");
    if std::fs::read(&bin).ok().as_deref() != Some(PAUSE) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = rootfs.join(".pause.tmp");
        std::fs::write(&tmp, PAUSE).map_err(io("writing", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &tmp))?;
        std::fs::rename(&tmp, &bin).map_err(io("renaming", &bin))?;
    }
    Ok(())
}

fn ns_mode(opts: Option<&cri::NamespaceOption>) -> (i32, i32, i32) {
    match opts {
        Some(o) => (o.network, o.pid, o.ipc),
        None => (0, 0, 0),
    }
}

const NODE: i32 = cri::NamespaceMode::Node as i32;

/// The namespace options of a sandbox's config.
pub fn namespace_options(c: &cri::PodSandboxConfig) -> Option<cri::NamespaceOption> {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
}

pub fn host_network(c: &cri::PodSandboxConfig) -> bool {
    ns_mode(namespace_options(c).as_ref()).0 == NODE
}

fn pod_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

pub(crate) fn get(cri: &Cri, id: &str) -> Result<super::store::Entry<SandboxRecord>, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no pod sandbox id given"));
    }
    cri.store
        .sandbox(id)
        .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))
}

pub async fn run(cri: &Arc<Cri>, req: cri::RunPodSandboxRequest) -> Result<String, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("no pod sandbox config given"))?;
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("the pod sandbox config has no metadata"))?;
    if meta.name.is_empty() {
        return Err(Status::invalid_argument(
            "the pod sandbox metadata has no name",
        ));
    }
    if !req.runtime_handler.is_empty() && req.runtime_handler != "runc" {
        return Err(Status::invalid_argument(format!(
            "runtime handler {:?}: rcd has one runtime (\"\" or \"runc\")",
            req.runtime_handler
        )));
    }
    let id = new_id();
    let pod_dir = cri.state_dir.join("pods").join(&id);
    let cgroup_parent = match config.linux.as_ref().map(|l| l.cgroup_parent.as_str()) {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => format!("{}/pod-{id}", cri.cfg.cgroup_parent.trim_end_matches('/')),
    };
    let rec = SandboxRecord {
        id: id.clone(),
        name: pod_name(&meta),
        config: config.clone(),
        created_at: now_ns(),
        state: SandboxState::NotReady,
        netns: None,
        pod_dir: pod_dir.clone(),
        cgroup_parent,
        pid: 0,
        ips: vec![],
        network_down: false,
    };
    match cri.store.add_sandbox(rec.clone()) {
        Ok(Ok(())) => {}
        Ok(Err(other)) => {
            return Err(Status::already_exists(format!(
                "pod sandbox name {:?} is taken by {other}",
                rec.name
            )))
        }
        Err(e) => return Err(Status::internal(e.to_string())),
    }
    // Runs to its end even if the caller stops waiting (kubelet's deadline): a pod set up
    // halfway would leak its namespace, addresses and pause task.
    let cri = cri.clone();
    tokio::spawn(async move {
        let tl = Timeline::new("run pod sandbox", &id);
        match setup(&cri, rec, &tl).await {
            Ok(rec) => {
                info!(id = %id, name = %rec.name, ip = ?rec.ips, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                warn!(id = %id, "pod sandbox failed: {}", e.message());
                if let Err(e2) = tl
                    .step("undo", teardown(&cri, &id, Teardown::Undo, &tl))
                    .await
                {
                    warn!(id = %id, "undoing the failed pod sandbox: {}", e2.message());
                }
                let _ = cri.store.remove_sandbox(&id);
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| Status::internal(format!("running the pod sandbox: {e}")))?
}

async fn setup(cri: &Cri, mut rec: SandboxRecord, tl: &Timeline) -> Result<SandboxRecord, Status> {
    let id = rec.id.clone();
    let config = rec.config.clone();
    let meta = config.metadata.clone().unwrap_or_default();
    let (net, _, _) = ns_mode(namespace_options(&config).as_ref());
    let entry = cri.store.sandbox(&id).expect("just added");
    // network: a pinned namespace, loopback + the pod network through CNI
    if net != NODE {
        let dir = cri.state_dir.join("netns");
        let id_ = id.clone();
        let ns = tl
            .step(
                "netns",
                tokio::task::spawn_blocking(move || NetNs::create(&dir, &id_)),
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("creating the pod's network namespace: {e}")))?;
        rec.netns = Some(ns.path().to_owned());
        *entry.lock().unwrap() = rec.clone();
        cri.store
            .save_sandbox(&rec)
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    let hostname = if net == NODE {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if config.hostname.is_empty() {
        meta.name.clone()
    } else {
        config.hostname.clone()
    };
    // The pod network and the pause need nothing from each other (the pause joins the
    // pinned namespace by path; its spec mounts none of the pod files), so they are set up
    // at the same time. Both run to their end before the pod is Ready, or before `run`
    // undoes whatever either made.
    let (network, pause) = tokio::join!(
        pod_network(cri, &rec, &hostname, tl),
        pause_task(cri, &rec, &hostname, tl)
    );
    let (ips, pid) = match (network, pause) {
        (Ok(ips), Ok(pid)) => (ips, pid),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(e), Err(e2)) => {
            warn!(id = %id, "the pause failed too: {}", e2.message());
            return Err(e);
        }
    };
    rec.ips = ips.iter().map(|i| i.to_string()).collect();
    rec.pid = pid;
    rec.state = SandboxState::Ready;
    *entry.lock().unwrap() = rec.clone();
    tl.step("record", async {
        cri.store
            .save_sandbox(&rec)
            .map_err(|e| Status::internal(e.to_string()))
    })
    .await?;
    Ok(rec)
}

/// CNI ADD in the pod's namespace (none with the host's network), then the pod's
/// resolv.conf, hosts and hostname; returns the pod's IPs.
async fn pod_network(
    cri: &Cri,
    rec: &SandboxRecord,
    hostname: &str,
    tl: &Timeline,
) -> Result<Vec<std::net::IpAddr>, Status> {
    let mut ips = vec![];
    if rec.netns.is_some() {
        let req = network_request(rec);
        let pn = tl
            .step("cni add", async {
                cri.cni.read().await.setup_pod(&req).await
            })
            .await
            .map_err(|e| Status::internal(format!("setting up the pod network: {e}")))?;
        ips = pn.ips;
    }
    let dns_cfg = rec.config.dns_config.as_ref().map(|d| dns::DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    let dir = rec.pod_dir.clone();
    let files_req = dns::PodFilesRequest {
        hostname: hostname.to_owned(),
        ips: ips.clone(),
        dns: dns_cfg,
        host_resolv_conf: None,
    };
    tl.step(
        "pod files",
        tokio::task::spawn_blocking(move || dns::write_pod_files(&dir, &files_req)),
    )
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::invalid_argument(format!("pod files: {e}")))?;
    Ok(ips)
}

/// Creates and starts the pause task: the built-in pause, or the configured sandbox image
/// (pulled if absent, as containerd does). Returns its pid.
async fn pause_task(
    cri: &Cri,
    rec: &SandboxRecord,
    hostname: &str,
    tl: &Timeline,
) -> Result<u32, Status> {
    let id = rec.id.clone();
    let config = &rec.config;
    let (net, pid, ipc) = ns_mode(namespace_options(config).as_ref());
    let image = tl.step("pause image", sandbox_image(cri)).await?;
    let rootfs = pause_rootfs(&cri.d.settings.root);
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone());
    let builtin = image.is_none();
    let mut sreq = ContainerRequest {
        id: id.clone(),
        // the image's entrypoint and command, when it is an image
        args: builtin.then(|| vec!["/pause".into()]),
        entrypoint: builtin.then(Vec::new),
        hostname: (net != NODE).then(|| hostname.to_owned()),
        readonly_rootfs: true,
        namespace: Some(NAMESPACE.into()),
        cgroups_path: Some(spec::cgroups_path_under(&rec.cgroup_parent, &id)),
        rlimits: Some(vec![]),
        seccomp: SeccompMode::Unconfined,
        oom_score_adj: Some(-998),
        sysctls: config
            .linux
            .as_ref()
            .map(|l| l.sysctls.clone().into_iter().collect())
            .unwrap_or_default(),
        privileged: sc.as_ref().is_some_and(|s| s.privileged),
        user: sc
            .as_ref()
            .and_then(|s| s.run_as_user.as_ref())
            .map(|u| u.value.to_string()),
        ..Default::default()
    };
    sreq.namespaces.network = match &rec.netns {
        Some(p) => NamespaceMode::Join(p.clone()),
        None => NamespaceMode::Host,
    };
    if net == NODE {
        sreq.namespaces.uts = NamespaceMode::Host;
    }
    if pid == NODE {
        sreq.namespaces.pid = NamespaceMode::Host;
    }
    if ipc == NODE {
        sreq.namespaces.ipc = NamespaceMode::Host;
    }
    let md = cri.d.md.clone();
    let now = chrono::Utc::now();
    let kind = Labels::from([("io.cri-containerd.kind".into(), "sandbox".into())]);
    let prepared = async {
        match image {
            None => {
                let root2 = rootfs.clone();
                let generated =
                    tokio::task::spawn_blocking(move || spec::generate(None, &sreq, &root2))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|e| Status::invalid_argument(format!("pod sandbox: {e}")))?;
                let mut spec_json = serde_json::to_value(&generated.spec)
                    .map_err(|e| internal("encoding")(e.to_string()))?;
                spec_json["root"] = serde_json::json!({"path": rootfs, "readonly": true});
                let md_rec = MdContainer {
                    id: id.clone(),
                    image: "rcd.io/builtin/pause".into(),
                    snapshot_key: None,
                    labels: kind,
                    spec: spec_json.clone(),
                    runtime: None,
                    created: now,
                    updated: now,
                };
                crate::server::service::blocking(move || {
                    md.write(|tx| tx.create_container(NAMESPACE, &md_rec))
                        .map_err(crate::server::service::metadata_status)
                })
                .await?;
                Ok((spec_json, vec![]))
            }
            Some((image, img_cfg, top)) => {
                let snapshotter = cri.d.snapshotter.clone();
                let scratch = cri.state_dir.join("spec-mounts").join(&id);
                let id_ = id.clone();
                crate::server::service::blocking(move || {
                    std::fs::create_dir_all(&scratch).map_err(|e| {
                        Status::internal(format!("creating {}: {e}", scratch.display()))
                    })?;
                    let mounts = snapshotter
                        .prepare_unsynced(NAMESPACE, &id_, Some(&top), Labels::new())
                        .map_err(crate::server::service::snapshot_status)?;
                    let made = crate::server::containers::generate_spec(
                        &img_cfg, &sreq, &mounts, &scratch,
                    )
                    .and_then(|spec| {
                        let md_rec = MdContainer {
                            id: id_.clone(),
                            image: image.name.clone(),
                            snapshot_key: Some(id_.clone()),
                            labels: kind,
                            spec: spec.clone(),
                            runtime: None,
                            created: now,
                            updated: now,
                        };
                        md.write(|tx| tx.create_container(NAMESPACE, &md_rec))
                            .map_err(crate::server::service::metadata_status)?;
                        Ok((spec, mounts))
                    });
                    let _ = std::fs::remove_dir(&scratch);
                    if made.is_err() {
                        let _ = snapshotter.remove(NAMESPACE, &id_);
                    }
                    made
                })
                .await
            }
        }
    };
    let (spec_json, rootfs_mounts) = tl.step("pause spec", prepared).await?;
    tl.step(
        "pause create",
        cri.tasks.create(
            NAMESPACE,
            &id,
            CreateOptions {
                spec: spec_json,
                rootfs: rootfs_mounts,
                io: IoConfig::default(),
                shim_group: None,
            },
        ),
    )
    .await
    .map_err(|e| Status::internal(format!("creating the pause task: {e}")))?;
    tl.step("pause start", cri.tasks.start(NAMESPACE, &id, None))
        .await
        .map_err(|e| Status::internal(format!("starting the pause task: {e}")))
}

/// The configured sandbox image's record, config and top layer, pulled when absent; `None`
/// for the built-in pause.
async fn sandbox_image(
    cri: &Cri,
) -> Result<Option<(crate::metadata::ImageRecord, ImageConfiguration, String)>, Status> {
    let name = cri.cfg.sandbox_image.clone();
    if name.is_empty() {
        return Ok(None);
    }
    let image = match super::image::resolve(cri, &name) {
        Ok(i) => i,
        Err(e) if e.code() == tonic::Code::NotFound => {
            info!(image = %name, "pulling the sandbox image");
            super::image::pull(
                cri,
                cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                Status::new(
                    e.code(),
                    format!("pulling the sandbox image {name}: {}", e.message()),
                )
            })?;
            super::image::resolve(cri, &name)?
        }
        Err(e) => return Err(e),
    };
    let (cfg, top) = crate::server::containers::image_parts(&cri.d, NAMESPACE, &image).await?;
    Ok(Some((image, cfg, top)))
}

fn network_request(rec: &SandboxRecord) -> PodNetworkRequest {
    let meta = rec.config.metadata.clone().unwrap_or_default();
    PodNetworkRequest {
        id: rec.id.clone(),
        netns: rec.netns.clone(),
        args: PodNetworkRequest::k8s_args(&rec.id, &meta.namespace, &meta.name, &meta.uid),
        port_mappings: rec
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0 && p.container_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port as u16,
                container_port: p.container_port as u16,
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .into(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        bandwidth: None,
    }
}

/// What [`teardown`] is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// StopPodSandbox: a step that fails stops it (the namespace stays for a retry).
    Stop,
    /// RemovePodSandbox: also the pod files and the metadata record.
    Remove,
    /// Undoing a RunPodSandbox that failed: as `Remove`, but going on past failures, since
    /// the pod's record goes and nothing would ever retry (a CNI DEL that fails like the ADD
    /// did must not keep the namespace).
    Undo,
}

/// Kills and deletes the pause task and, at the same time, releases the network (the
/// namespace stays pinned until both are done, so the plugins find it); then the namespace,
/// and with `Remove`/`Undo` the pod files and the metadata record. Every step tolerates what
/// is already gone.
async fn teardown(cri: &Cri, id: &str, mode: Teardown, tl: &Timeline) -> Result<(), Status> {
    let remove = mode != Teardown::Stop;
    let rec = cri.store.sandbox(id).map(|e| e.lock().unwrap().clone());
    let pause = async {
        tl.step("pause stop", stop_task(cri, id, Duration::ZERO))
            .await?;
        tl.step("pause delete", delete_task(cri, id)).await
    };
    let network = async {
        match &rec {
            Some(rec) if !rec.network_down && rec.netns.is_some() => {
                let req = network_request(rec);
                tl.step("cni del", async {
                    cri.cni.read().await.teardown_pod(&req).await
                })
                .await
                .map_err(|e| Status::internal(format!("tearing down the pod network: {e}")))
            }
            _ => Ok(()),
        }
    };
    let (pause, network) = tokio::join!(pause, network);
    let mut first_err = None;
    for r in [pause, network] {
        if let Err(e) = r {
            if mode != Teardown::Undo {
                return Err(e);
            }
            warn!(id = %id, "undoing the pod sandbox: {}", e.message());
            first_err.get_or_insert(e);
        }
    }
    let Some(entry) = cri.store.sandbox(id) else {
        return Ok(());
    };
    let rec = entry.lock().unwrap().clone();
    if !rec.network_down {
        if let Some(p) = rec.netns.clone() {
            let removed = tl
                .step(
                    "netns remove",
                    tokio::task::spawn_blocking(move || netns::remove(&p)),
                )
                .await
                .map_err(|e| Status::internal(e.to_string()))
                .and_then(|r| {
                    r.map_err(|e| Status::internal(format!("removing the network namespace: {e}")))
                });
            if let Err(e) = removed {
                if mode != Teardown::Undo {
                    return Err(e);
                }
                warn!(id = %id, "undoing the pod sandbox: {}", e.message());
                first_err.get_or_insert(e);
            }
        }
    }
    let snapshot = {
        let mut r = entry.lock().unwrap();
        r.network_down = true;
        r.state = SandboxState::NotReady;
        r.pid = 0;
        r.clone()
    };
    tl.step("record", async {
        cri.store
            .save_sandbox(&snapshot)
            .map_err(|e| Status::internal(e.to_string()))
    })
    .await?;
    if remove {
        // three independent removals, each blocking (a cgroup's rmdir takes milliseconds)
        let pod_dir = rec.pod_dir.clone();
        let files = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&pod_dir);
        });
        // a pod cgroup rcd named is rcd's to remove (kubelet removes its own)
        let own = format!("{}/pod-{id}", cri.cfg.cgroup_parent.trim_end_matches('/'));
        let cgroup = (rec.cgroup_parent == own).then_some(async move {
            // the runtime removes a deleted container's cgroup (below the pod's) just
            // after the shim's Delete reply, and is done when the shim has ended
            cri.tasks.settled_all(NAMESPACE).await;
            tokio::task::spawn_blocking(move || remove_cgroup(&own)).await
        });
        // with a sandbox image's snapshot (the built-in pause has none)
        let record = super::container::forget_record(cri, id);
        let _ = tokio::join!(
            tl.step("pod dir", files),
            tl.step("cgroup", async {
                if let Some(c) = cgroup {
                    let _ = c.await;
                }
            }),
            tl.step("pause record", record)
        );
    }
    first_err.map_or(Ok(()), Err)
}

/// Stops a task (a container's or a pause's): the signal, `timeout`, then SIGKILL. A task
/// that is unknown or already stopped is fine.
pub(crate) async fn stop_task(cri: &Cri, id: &str, timeout: Duration) -> Result<(), Status> {
    let t = &cri.tasks;
    match t.state(NAMESPACE, id, None).await {
        Ok(s) if s.status == TaskStatus::Stopped => return Ok(()),
        Ok(_) => {}
        Err(crate::task::TaskError::NotFound { .. }) => return Ok(()),
        Err(_) => {}
    }
    if !timeout.is_zero() {
        let _ = t
            .kill(NAMESPACE, id, None, libc::SIGTERM as u32, false)
            .await;
        if tokio::time::timeout(timeout, t.wait(NAMESPACE, id, None))
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    match t
        .kill(NAMESPACE, id, None, libc::SIGKILL as u32, true)
        .await
    {
        Ok(()) | Err(crate::task::TaskError::NotFound { .. }) => {}
        Err(e) => {
            if !matches!(t.state(NAMESPACE, id, None).await, Ok(s) if s.status == TaskStatus::Stopped)
            {
                return Err(Status::internal(format!("killing {id}: {e}")));
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), t.wait(NAMESPACE, id, None)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{id} did not stop within 10s of SIGKILL"
        ))),
    }
}

pub(crate) async fn delete_task(cri: &Cri, id: &str) -> Result<(), Status> {
    match cri.tasks.delete(NAMESPACE, id).await {
        Ok(_) | Err(crate::task::TaskError::NotFound { .. }) => Ok(()),
        Err(e) => Err(Status::internal(format!("deleting task {id}: {e}"))),
    }
}

pub async fn stop(cri: &Arc<Cri>, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no pod sandbox id given"));
    }
    // unknown: already removed, as kubelet expects
    let Some(entry) = cri.store.sandbox(id) else {
        return Ok(());
    };
    let id = entry.lock().unwrap().id.clone();
    let tl = Timeline::new("stop pod sandbox", &id);
    // the containers go at once (each is killed, no grace period), then the pause
    let containers = super::container::of_sandbox(cri, &id);
    tl.step(
        "containers stop",
        futures_util::future::try_join_all(
            containers.iter().map(|c| super::container::stop(cri, c, 0)),
        ),
    )
    .await?;
    teardown(cri, &id, Teardown::Stop, &tl).await?;
    info!(id = %id, "pod sandbox stopped");
    Ok(())
}

pub async fn remove(cri: &Arc<Cri>, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no pod sandbox id given"));
    }
    let Some(entry) = cri.store.sandbox(id) else {
        return Ok(());
    };
    let id = entry.lock().unwrap().id.clone();
    let tl = Timeline::new("remove pod sandbox", &id);
    let containers = super::container::of_sandbox(cri, &id);
    tl.step(
        "containers remove",
        futures_util::future::try_join_all(containers.iter().map(|c| async move {
            super::container::stop(cri, c, 0).await?;
            super::container::remove(cri, c).await
        })),
    )
    .await?;
    teardown(cri, &id, Teardown::Remove, &tl).await?;
    cri.store
        .remove_sandbox(&id)
        .map_err(|e| Status::internal(e.to_string()))?;
    info!(id = %id, "pod sandbox removed");
    Ok(())
}

use std::sync::Arc;

/// The sandbox's state, correcting a Ready record whose pause is gone.
fn state_of(cri: &Cri, rec: &SandboxRecord) -> SandboxState {
    state_with(rec.state, &rec.id, &live_tasks(cri))
}

/// The ids of the CRI namespace's tasks that still run. Taken once per call: a list asking
/// the task manager for every pod made ListPodSandbox quadratic (30 pods: 3.7x containerd's
/// time).
fn live_tasks(cri: &Cri) -> HashSet<String> {
    cri.tasks
        .list(Some(NAMESPACE))
        .into_iter()
        .filter(|t| t.exit.is_none() && !t.shim_dead)
        .map(|t| t.id)
        .collect()
}

/// A Ready sandbox whose pause task is gone is NotReady (kubelet then recreates the pod).
fn state_with(recorded: SandboxState, id: &str, live: &HashSet<String>) -> SandboxState {
    if recorded == SandboxState::Ready && !live.contains(id) {
        return SandboxState::NotReady;
    }
    recorded
}

fn cri_state(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub async fn status(
    cri: &Cri,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let entry = get(cri, &req.pod_sandbox_id)?;
    let rec = entry.lock().unwrap().clone();
    let state = state_of(cri, &rec);
    let c = &rec.config;
    let mut ips = rec.ips.iter();
    let network = (!host_network(c)).then(|| cri::PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    });
    let status = cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: c.metadata.clone(),
        state: cri_state(state),
        created_at: rec.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(namespace_options(c).unwrap_or_default()),
            }),
        }),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        runtime_handler: String::new(),
    };
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_owned(),
            serde_json::json!({
                "pid": rec.pid,
                "netns": rec.netns,
                "podDir": rec.pod_dir,
                "cgroupParent": rec.cgroup_parent,
                "sandboxImage": if cri.cfg.sandbox_image.is_empty() { "built-in" } else { cri.cfg.sandbox_image.as_str() },
            })
            .to_string(),
        );
    }
    let containers_statuses = vec![];
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status),
        info,
        containers_statuses,
        timestamp: now_ns(),
    })
}

pub fn list(cri: &Cri, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    let f = filter.unwrap_or_default();
    let live = live_tasks(cri);
    let mut out = vec![];
    for e in cri.store.sandboxes() {
        let rec = e.lock().unwrap();
        if !f.id.is_empty() && !rec.id.starts_with(&f.id) {
            continue;
        }
        let state = cri_state(state_with(rec.state, &rec.id, &live));
        if f.state.as_ref().is_some_and(|s| s.state != state) {
            continue;
        }
        if !labels_match(&rec.config.labels, &f.label_selector) {
            continue;
        }
        out.push(cri::PodSandbox {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state,
            created_at: rec.created_at,
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: String::new(),
        });
    }
    out.sort_by_key(|p| p.created_at);
    out
}

/// Removes an (empty) cgroup from every v1 hierarchy and the unified one.
fn remove_cgroup(path: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path().join(path.trim_start_matches('/'));
        if dir.is_dir() {
            if let Err(err) = std::fs::remove_dir(&dir) {
                warn!(cgroup = %dir.display(), "removing the pod cgroup: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_live_pause() {
        let live = HashSet::from(["a".to_owned()]);
        assert_eq!(
            state_with(SandboxState::Ready, "a", &live),
            SandboxState::Ready
        );
        assert_eq!(
            state_with(SandboxState::Ready, "b", &live),
            SandboxState::NotReady
        );
        assert_eq!(
            state_with(SandboxState::NotReady, "a", &live),
            SandboxState::NotReady
        );
    }
}
