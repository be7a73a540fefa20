//! ExecSync, and the streaming server's runtime behind Exec, Attach and PortForward.

use super::store::ContainerState;
use super::{Cri, NAMESPACE};
use crate::streaming::{self, RuntimeError, Streams};
use crate::task::{IoConfig, Stdio};
use k8s_cri::v1 as cri;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

/// The most output ExecSync keeps per stream (kubelet's probes read far less).
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// The exec'd process: the container's own process (user, env, cwd, capabilities) with
/// `cmd`.
async fn process_of(
    cri: &Cri,
    id: &str,
    cmd: &[String],
    tty: bool,
) -> Result<serde_json::Value, Status> {
    if cmd.is_empty() {
        return Err(Status::invalid_argument("no command given"));
    }
    let md = cri.d.md.clone();
    let id_ = id.to_owned();
    let rec = crate::server::service::blocking(move || {
        md.container(NAMESPACE, &id_)
            .map_err(crate::server::service::metadata_status)?
            .ok_or_else(|| Status::not_found(format!("container {id_} has no record")))
    })
    .await?;
    let mut p = rec.spec["process"].clone();
    p["args"] = serde_json::json!(cmd);
    p["terminal"] = serde_json::json!(tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    Ok(p)
}

fn running(cri: &Cri, id: &str) -> Result<String, Status> {
    let e = super::container::get(cri, id)?;
    let r = e.lock().unwrap();
    if r.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            r.id
        )));
    }
    Ok(r.id.clone())
}

fn exec_id() -> String {
    format!("exec-{:016x}", fastrand::u64(..))
}

async fn read_capped(r: Option<tokio::net::unix::pipe::Receiver>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(r) = r {
        let _ = r.take(MAX_EXEC_OUTPUT as u64).read_to_end(&mut out).await;
    }
    out
}

pub async fn exec_sync(
    cri: &Cri,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    let id = running(cri, &req.container_id)?;
    let process = process_of(cri, &id, &req.cmd, false).await?;
    let eid = exec_id();
    let io = cri
        .tasks
        .exec(
            NAMESPACE,
            &id,
            &eid,
            process,
            IoConfig {
                stdin: Stdio::Null,
                stdout: Stdio::Pipe,
                stderr: Stdio::Pipe,
                terminal: false,
            },
        )
        .await
        .map_err(|e| Status::internal(format!("exec in {id}: {e}")))?;
    if let Err(e) = cri.tasks.start(NAMESPACE, &id, Some(&eid)).await {
        let _ = cri.tasks.delete_exec(NAMESPACE, &id, &eid).await;
        return Err(Status::internal(format!("exec in {id}: {e}")));
    }
    let run = async {
        let (out, err, exit) = tokio::join!(
            read_capped(io.stdout),
            read_capped(io.stderr),
            cri.tasks.wait(NAMESPACE, &id, Some(&eid))
        );
        (out, err, exit)
    };
    let result = if req.timeout > 0 {
        tokio::time::timeout(Duration::from_secs(req.timeout as u64), run).await
    } else {
        Ok(run.await)
    };
    match result {
        Ok((stdout, stderr, exit)) => {
            let _ = cri.tasks.delete_exec(NAMESPACE, &id, &eid).await;
            let exit = exit.map_err(|e| Status::internal(format!("exec in {id}: {e}")))?;
            Ok(cri::ExecSyncResponse {
                stdout,
                stderr,
                exit_code: exit.status as i32,
            })
        }
        Err(_) => {
            let _ = cri
                .tasks
                .kill(NAMESPACE, &id, Some(&eid), libc::SIGKILL as u32, false)
                .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                cri.tasks.wait(NAMESPACE, &id, Some(&eid)),
            )
            .await;
            let _ = cri.tasks.delete_exec(NAMESPACE, &id, &eid).await;
            Err(Status::deadline_exceeded(format!(
                "command {:?} in {id} timed out after {}s",
                req.cmd, req.timeout
            )))
        }
    }
}

/// Exec/Attach/PortForward: the URLs of the streaming server.
pub fn exec_url(cri: &Cri, req: cri::ExecRequest) -> Result<String, Status> {
    let id = running(cri, &req.container_id)?;
    server(cri)?
        .exec_url(streaming::ExecRequest {
            container_id: id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn attach_url(cri: &Cri, req: cri::AttachRequest) -> Result<String, Status> {
    let id = running(cri, &req.container_id)?;
    server(cri)?
        .attach_url(streaming::AttachRequest {
            container_id: id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn port_forward_url(cri: &Cri, req: cri::PortForwardRequest) -> Result<String, Status> {
    let sb = super::sandbox::get(cri, &req.pod_sandbox_id)?;
    let id = sb.lock().unwrap().id.clone();
    server(cri)?
        .port_forward_url(streaming::PortForwardRequest {
            pod_sandbox_id: id,
            ports: req.port,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn server(cri: &Cri) -> Result<&streaming::StreamingServer, Status> {
    cri.streaming
        .get()
        .ok_or_else(|| Status::unavailable("the streaming server is not running"))
}

/// The streaming server's side of rcd: processes are execs of the container's task.
pub struct StreamRuntime(pub Weak<Cri>);

impl StreamRuntime {
    fn cri(&self) -> Result<Arc<Cri>, RuntimeError> {
        self.0
            .upgrade()
            .ok_or_else(|| RuntimeError("rcd is shutting down".into()))
    }
}

#[async_trait::async_trait]
impl streaming::Runtime for StreamRuntime {
    async fn exec(
        &self,
        req: streaming::ExecRequest,
        mut streams: Streams,
    ) -> Result<i32, RuntimeError> {
        let cri = self.cri()?;
        let err = |e: String| RuntimeError(e);
        let id = running(&cri, &req.container_id).map_err(|s| err(s.message().into()))?;
        let process = process_of(&cri, &id, &req.cmd, streams.tty)
            .await
            .map_err(|s| err(s.message().into()))?;
        let eid = exec_id();
        let pipe = |want: bool| if want { Stdio::Pipe } else { Stdio::Null };
        let io = cri
            .tasks
            .exec(
                NAMESPACE,
                &id,
                &eid,
                process,
                IoConfig {
                    stdin: pipe(streams.stdin.is_some()),
                    stdout: pipe(streams.stdout.is_some()),
                    stderr: if streams.tty {
                        Stdio::Null
                    } else {
                        pipe(streams.stderr.is_some())
                    },
                    terminal: streams.tty,
                },
            )
            .await
            .map_err(|e| err(format!("exec in {id}: {e}")))?;
        if let Err(e) = cri.tasks.start(NAMESPACE, &id, Some(&eid)).await {
            let _ = cri.tasks.delete_exec(NAMESPACE, &id, &eid).await;
            return Err(err(format!("exec in {id}: {e}")));
        }
        let mut jobs = Vec::new();
        if let (Some(mut input), Some(mut w)) = (streams.stdin.take(), io.stdin) {
            let (cri2, id2, eid2) = (cri.clone(), id.clone(), eid.clone());
            jobs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut input, &mut w).await;
                drop(w);
                let _ = cri2.tasks.close_stdin(NAMESPACE, &id2, Some(&eid2)).await;
            }));
        }
        let mut outs = Vec::new();
        if let (Some(mut out), Some(mut r)) = (streams.stdout.take(), io.stdout) {
            outs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut out).await;
                let _ = out.flush().await;
            }));
        }
        if let (Some(mut out), Some(mut r)) = (streams.stderr.take(), io.stderr) {
            outs.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut out).await;
                let _ = out.flush().await;
            }));
        }
        if let Some(mut resize) = streams.resize.take() {
            let (cri2, id2, eid2) = (cri.clone(), id.clone(), eid.clone());
            jobs.push(tokio::spawn(async move {
                while let Some(sz) = resize.recv().await {
                    let _ = cri2
                        .tasks
                        .resize_pty(
                            NAMESPACE,
                            &id2,
                            Some(&eid2),
                            sz.width as u32,
                            sz.height as u32,
                        )
                        .await;
                }
            }));
        }
        let exit = tokio::select! {
            e = cri.tasks.wait(NAMESPACE, &id, Some(&eid)) => e.map_err(|e| err(e.to_string())),
            _ = streams.cancel.cancelled() => {
                let _ = cri.tasks.kill(NAMESPACE, &id, Some(&eid), libc::SIGKILL as u32, false).await;
                let _ = cri.tasks.wait(NAMESPACE, &id, Some(&eid)).await;
                Err(err("the client left".into()))
            }
        };
        for o in outs {
            let _ = o.await;
        }
        for j in jobs {
            j.abort();
        }
        let _ = cri.tasks.delete_exec(NAMESPACE, &id, &eid).await;
        Ok(exit?.status as i32)
    }

    async fn attach(
        &self,
        req: streaming::AttachRequest,
        _streams: Streams,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError(format!(
            "attach to {}: rcd writes container output to its log only (no attachable stdio yet)",
            req.container_id
        )))
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        mut stream: streaming::PortStream,
        cancel: streaming::CancellationToken,
    ) -> Result<(), RuntimeError> {
        let cri = self.cri()?;
        let sb = super::sandbox::get(&cri, &pod_sandbox_id)
            .map_err(|s| RuntimeError(s.message().into()))?;
        let netns = sb.lock().unwrap().netns.clone();
        let conn = match netns {
            None => std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| RuntimeError(format!("connecting to port {port}: {e}")))?,
            Some(path) => {
                let ns = crate::cni::NetNs::open(&path)
                    .map_err(|e| RuntimeError(format!("pod network namespace: {e}")))?;
                tokio::task::spawn_blocking(move || {
                    ns.run(move || std::net::TcpStream::connect(("127.0.0.1", port)))
                })
                .await
                .map_err(|e| RuntimeError(e.to_string()))?
                .map_err(|e| RuntimeError(e.to_string()))?
                .map_err(|e| {
                    RuntimeError(format!(
                        "connecting to port {port} in pod {pod_sandbox_id}: {e}"
                    ))
                })?
            }
        };
        conn.set_nonblocking(true)
            .map_err(|e| RuntimeError(e.to_string()))?;
        let mut conn =
            tokio::net::TcpStream::from_std(conn).map_err(|e| RuntimeError(e.to_string()))?;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut conn, &mut stream) => {}
            _ = cancel.cancelled() => {}
        }
        Ok(())
    }
}
