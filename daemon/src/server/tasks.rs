//! The Tasks service: a thin layer over the [`TaskManager`] (one shim per task). Creating a
//! task takes the container's spec and its rootfs snapshot's mounts; execs get their process
//! from the container's spec with the request on top (the spec generator's `exec_process`).

use super::containers::{get_container, Runtime};
use super::events::time_ms;
use super::service::{namespace, snapshot_status};
use crate::task::{
    CreateOptions, IoConfig, ProcessState, ShimCode, Stdio, TaskError, TaskStats, TaskStatus,
};
use rcd_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::info;

/// How long `Delete` with `force` waits for a killed task to stop.
const FORCE_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn task_status(e: TaskError) -> Status {
    let msg = e.to_string();
    match &e {
        TaskError::InvalidName { .. } | TaskError::InvalidRequest { .. } => {
            Status::invalid_argument(msg)
        }
        TaskError::AlreadyExists { .. } => Status::already_exists(msg),
        TaskError::NotFound { .. } => Status::not_found(msg),
        TaskError::Running { .. } | TaskError::ShimDied { .. } => Status::failed_precondition(msg),
        TaskError::Timeout { .. } => Status::deadline_exceeded(msg),
        TaskError::Shim { code, .. } => match *code {
            ShimCode::NOT_FOUND => Status::not_found(msg),
            ShimCode::ALREADY_EXISTS => Status::already_exists(msg),
            ShimCode::INVALID_ARGUMENT => Status::invalid_argument(msg),
            ShimCode::FAILED_PRECONDITION => Status::failed_precondition(msg),
            ShimCode::UNIMPLEMENTED => Status::unimplemented(msg),
            _ => Status::unknown(msg),
        },
        _ => Status::internal(msg),
    }
}

fn stdio(s: &str) -> Stdio {
    if s.is_empty() {
        Stdio::Null
    } else {
        Stdio::Raw(s.to_owned())
    }
}

fn io_config(s: Option<pb::Stdio>) -> IoConfig {
    let s = s.unwrap_or_default();
    IoConfig {
        stdin: stdio(&s.stdin),
        stdout: stdio(&s.stdout),
        stderr: stdio(&s.stderr),
        terminal: s.terminal,
    }
}

fn status_pb(s: TaskStatus) -> pb::TaskStatus {
    match s {
        TaskStatus::Created => pb::TaskStatus::Created,
        TaskStatus::Running => pb::TaskStatus::Running,
        TaskStatus::Stopped => pb::TaskStatus::Stopped,
        TaskStatus::Paused => pb::TaskStatus::Paused,
        TaskStatus::Pausing => pb::TaskStatus::Pausing,
        TaskStatus::Unknown => pb::TaskStatus::Unknown,
    }
}

fn process_pb(p: &ProcessState) -> pb::Process {
    pb::Process {
        id: p.id.clone(),
        exec_id: p.exec_id.clone().unwrap_or_default(),
        pid: p.pid,
        status: status_pb(p.status) as i32,
        stdin: p.stdin.clone(),
        stdout: p.stdout.clone(),
        stderr: p.stderr.clone(),
        terminal: p.terminal,
        exit_status: p.exit.map(|e| e.status).unwrap_or(0),
        exited_at: p.exit.map(|e| time_ms(e.exited_at())).unwrap_or_default(),
    }
}

/// How long a state call waits for the exit of an init whose shim just died (rcd records
/// it once it has cleaned up after the shim).
const SETTLE: Duration = Duration::from_secs(3);

/// A stopped init without an exit yet (its shim died and the clean-up is under way) gets
/// the exit once rcd has it, rather than a made-up 0.
async fn settled(tasks: &crate::task::TaskManager, ns: &str, mut st: ProcessState) -> ProcessState {
    if st.exec_id.is_none() && st.status == TaskStatus::Stopped && st.exit.is_none() {
        if let Ok(Ok(exit)) = tokio::time::timeout(SETTLE, tasks.wait(ns, &st.id, None)).await {
            st.exit = Some(exit);
        }
    }
    st
}

fn exec_id(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Creates the init task of container `c`: the one path for Tasks.Create and for rcd's own
/// starts (the restart monitor), so what a container's labels ask for (its network, its log)
/// is set up the same way whoever starts it.
pub(crate) async fn create_task(
    rt: &Runtime,
    ns: &str,
    c: &crate::metadata::ContainerRecord,
    io: IoConfig,
) -> Result<(u32, Option<std::path::PathBuf>), Status> {
    let rootfs = match &c.snapshot_key {
        Some(key) => rt.d.snapshotter.mounts(ns, key).map_err(snapshot_status)?,
        None => {
            return Err(Status::failed_precondition(format!(
                "container {:?} has no rootfs snapshot",
                c.id
            )))
        }
    };
    let (io, attach_socket) = super::logs::task_io(rt, ns, c, io)?;
    let (spec, pending) = crate::netmgr::task::setup(rt, ns, c).await?;
    let create = rt.tasks.create(
        ns,
        &c.id,
        CreateOptions {
            spec,
            rootfs,
            io,
            shim_group: None,
        },
    );
    // the CNI ADDs run while the shim and the runtime create the task (its process waits to
    // be started, so it sees its network complete); the reply waits for both
    let (created, attached) = match pending {
        Some(p) => tokio::join!(create, p.finish(rt)),
        None => (create.await, Ok(())),
    };
    match (created, attached) {
        (Ok((pid, _io)), Ok(())) => Ok((pid, attach_socket)),
        (Ok(_), Err(e)) => {
            undo_created(rt, ns, &c.id).await;
            Err(e)
        }
        (Err(e), _) => {
            crate::netmgr::task::teardown(rt, ns, &c.id).await;
            Err(task_status(e))
        }
    }
}

/// Removes the task of `id` that was created but must not run (its network failed): killed,
/// reaped, deleted, and its network undone.
async fn undo_created(rt: &Runtime, ns: &str, id: &str) {
    let tasks = &rt.tasks;
    if let Err(e) = tasks.kill(ns, id, None, libc::SIGKILL as u32, true).await {
        tracing::warn!(namespace = %ns, id, "undoing a created task: kill: {e}");
    }
    let _ = tokio::time::timeout(FORCE_WAIT, tasks.wait(ns, id, None)).await;
    if let Err(e) = tasks.delete(ns, id).await {
        tracing::warn!(namespace = %ns, id, "undoing a created task: delete: {e}");
    }
    crate::netmgr::task::teardown(rt, ns, id).await;
}

/// Deletes the init task of container `id` (stopped): the one path for Tasks.Delete and rcd's
/// own deletes, undoing what [`create_task`] set up beside the task.
pub(crate) async fn delete_task(
    rt: &Runtime,
    ns: &str,
    id: &str,
) -> Result<crate::task::Exit, Status> {
    let exit = rt.tasks.delete(ns, id).await.map_err(task_status)?;
    crate::netmgr::task::teardown(rt, ns, id).await;
    Ok(exit)
}

pub struct TasksService(pub Arc<Runtime>);

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksService {
    async fn create(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let rt = &self.0;
        let c = get_container(&rt.d.md, &ns, &req.container_id)?;
        let (pid, attach_socket) = create_task(rt, &ns, &c, io_config(req.stdio)).await?;
        super::restart::client_start(rt, &ns, &c).await;
        info!(namespace = %ns, id = %c.id, pid, "task created");
        Ok(Response::new(pb::CreateTaskResponse {
            pid,
            attach_socket: attach_socket
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn start(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let pid = self
            .0
            .tasks
            .start(&ns, &req.container_id, exec_id(&req.exec_id))
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::StartTaskResponse { pid }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let tasks = &self.0.tasks;
        let id = req.container_id.as_str();
        if req.force && !tasks.exited(&ns, id) {
            let st = tasks.state(&ns, id, None).await.map_err(task_status)?;
            if st.status != TaskStatus::Stopped {
                if st.status == TaskStatus::Paused {
                    let _ = tasks.resume(&ns, id).await;
                }
                match tasks.kill(&ns, id, None, libc::SIGKILL as u32, true).await {
                    Ok(()) | Err(TaskError::ShimDied { .. }) => {}
                    Err(e) => return Err(task_status(e)),
                }
                if tokio::time::timeout(FORCE_WAIT, tasks.wait(&ns, id, None))
                    .await
                    .is_err()
                {
                    return Err(Status::deadline_exceeded(format!(
                        "task {id:?} did not stop within {}s of SIGKILL",
                        FORCE_WAIT.as_secs()
                    )));
                }
            }
        }
        let exit = delete_task(&self.0, &ns, id).await?;
        info!(namespace = %ns, id, status = exit.status, "task deleted");
        Ok(Response::new(pb::DeleteTaskResponse {
            id: id.to_owned(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: time_ms(exit.exited_at()),
        }))
    }

    async fn delete_process(
        &self,
        req: Request<pb::DeleteProcessRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("no exec id given"));
        }
        let exit = self
            .0
            .tasks
            .delete_exec(&ns, &req.container_id, &req.exec_id)
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::DeleteTaskResponse {
            id: req.exec_id,
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: time_ms(exit.exited_at()),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let st = self
            .0
            .tasks
            .state(&ns, &req.container_id, exec_id(&req.exec_id))
            .await
            .map_err(task_status)?;
        let st = settled(&self.0.tasks, &ns, st).await;
        Ok(Response::new(pb::GetTaskResponse {
            process: Some(process_pb(&st)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let ns = namespace(&req)?;
        let tasks = &self.0.tasks;
        let infos = tasks.list(Some(&ns));
        // one State per shim, all at once
        let states =
            futures_util::future::join_all(infos.iter().map(|t| tasks.state(&ns, &t.id, None)))
                .await;
        let mut out = Vec::with_capacity(infos.len());
        for (info, st) in infos.iter().zip(states) {
            out.push(match st {
                Ok(st) => process_pb(&st),
                // deleted meanwhile, or the shim does not answer: what rcd knows
                Err(_) => pb::Process {
                    id: info.id.clone(),
                    pid: info.pid,
                    status: if info.exit.is_some() || info.shim_dead {
                        pb::TaskStatus::Stopped
                    } else {
                        pb::TaskStatus::Unknown
                    } as i32,
                    exit_status: info.exit.map(|e| e.status).unwrap_or(0),
                    exited_at: info
                        .exit
                        .map(|e| time_ms(e.exited_at()))
                        .unwrap_or_default(),
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(pb::ListTasksResponse { tasks: out }))
    }

    async fn kill(
        &self,
        req: Request<pb::KillTaskRequest>,
    ) -> Result<Response<pb::KillTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        if req.signal == 0 || req.signal > 64 {
            return Err(Status::invalid_argument(format!(
                "invalid signal {}",
                req.signal
            )));
        }
        self.0
            .tasks
            .kill(
                &ns,
                &req.container_id,
                exec_id(&req.exec_id),
                req.signal,
                req.all,
            )
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::KillTaskResponse {}))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecTaskRequest>,
    ) -> Result<Response<pb::ExecTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let rt = &self.0;
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("no exec id given"));
        }
        let c = get_container(&rt.d.md, &ns, &req.container_id)?;
        let task = rt
            .tasks
            .list(Some(&ns))
            .into_iter()
            .find(|t| t.id == c.id)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {:?} has no task: start it first",
                    c.id
                ))
            })?;
        let spec: oci_spec::runtime::Spec = serde_json::from_value(c.spec.clone())
            .map_err(|e| Status::internal(format!("container {:?}: its spec: {e}", c.id)))?;
        let io = io_config(req.stdio);
        let ereq = crate::spec::ExecRequest {
            args: req.args,
            env: req.env,
            cwd: (!req.cwd.is_empty()).then_some(req.cwd),
            user: (!req.user.is_empty()).then_some(req.user),
            tty: io.terminal,
        };
        let rootfs = task.bundle.join("rootfs");
        let process = crate::spec::exec_process(&spec, &ereq, &rootfs)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let process = serde_json::to_value(&process)
            .map_err(|e| Status::internal(format!("encoding the process: {e}")))?;
        rt.tasks
            .exec(&ns, &c.id, &req.exec_id, process, io)
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::ExecTaskResponse {}))
    }

    async fn resize_pty(
        &self,
        req: Request<pb::ResizePtyRequest>,
    ) -> Result<Response<pb::ResizePtyResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        self.0
            .tasks
            .resize_pty(
                &ns,
                &req.container_id,
                exec_id(&req.exec_id),
                req.width,
                req.height,
            )
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::ResizePtyResponse {}))
    }

    async fn close_io(
        &self,
        req: Request<pb::CloseIoRequest>,
    ) -> Result<Response<pb::CloseIoResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        self.0
            .tasks
            .close_stdin(&ns, &req.container_id, exec_id(&req.exec_id))
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::CloseIoResponse {}))
    }

    async fn pause(
        &self,
        req: Request<pb::PauseTaskRequest>,
    ) -> Result<Response<pb::PauseTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.tasks.pause(&ns, &id).await.map_err(task_status)?;
        Ok(Response::new(pb::PauseTaskResponse {}))
    }

    async fn resume(
        &self,
        req: Request<pb::ResumeTaskRequest>,
    ) -> Result<Response<pb::ResumeTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.tasks.resume(&ns, &id).await.map_err(task_status)?;
        Ok(Response::new(pb::ResumeTaskResponse {}))
    }

    async fn list_pids(
        &self,
        req: Request<pb::ListPidsRequest>,
    ) -> Result<Response<pb::ListPidsResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let pids = self.0.tasks.pids(&ns, &id).await.map_err(task_status)?;
        Ok(Response::new(pb::ListPidsResponse { pids }))
    }

    async fn metrics(
        &self,
        req: Request<pb::TaskMetricsRequest>,
    ) -> Result<Response<pb::TaskMetricsResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let stats = self.0.tasks.stats(&ns, &id).await.map_err(task_status)?;
        Ok(Response::new(metrics_pb(&stats)?))
    }

    async fn wait(
        &self,
        req: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let exit = self
            .0
            .tasks
            .wait(&ns, &req.container_id, exec_id(&req.exec_id))
            .await
            .map_err(task_status)?;
        Ok(Response::new(pb::WaitTaskResponse {
            exit_status: exit.status,
            exited_at: time_ms(exit.exited_at()),
        }))
    }
}

fn metrics_pb(s: &TaskStats) -> Result<pb::TaskMetricsResponse, Status> {
    Ok(match s {
        TaskStats::V1(m) => {
            let mem = m.memory.get_or_default().usage.get_or_default();
            let cpu = m.cpu.get_or_default().usage.get_or_default();
            let pids = m.pids.get_or_default();
            pb::TaskMetricsResponse {
                memory_usage: mem.usage,
                memory_limit: mem.limit,
                memory_max_usage: mem.max,
                cpu_usage_total_ns: cpu.total,
                cpu_usage_user_ns: cpu.user,
                cpu_usage_kernel_ns: cpu.kernel,
                pids_current: pids.current,
                pids_limit: pids.limit,
                cgroup: "v1".into(),
            }
        }
        TaskStats::V2(m) => {
            let mem = m.memory.get_or_default();
            let cpu = m.cpu.get_or_default();
            let pids = m.pids.get_or_default();
            pb::TaskMetricsResponse {
                memory_usage: mem.usage,
                memory_limit: mem.usage_limit,
                memory_max_usage: mem.max_usage,
                cpu_usage_total_ns: cpu.usage_usec * 1000,
                cpu_usage_user_ns: cpu.user_usec * 1000,
                cpu_usage_kernel_ns: cpu.system_usec * 1000,
                pids_current: pids.current,
                pids_limit: pids.limit,
                cgroup: "v2".into(),
            }
        }
        TaskStats::Other(any) => {
            return Err(Status::unimplemented(format!(
                "the shim reports metrics as {}, which rcd does not read",
                any.type_url
            )))
        }
    })
}
