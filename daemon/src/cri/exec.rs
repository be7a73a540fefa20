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
            // the exec is over and its output read: its record in the shim goes after the
            // reply (kubelet's probes wait on this call)
            let tasks = cri.tasks.clone();
            let (cid, exec) = (id.clone(), eid.clone());
            tokio::spawn(async move {
                let _ = tasks.delete_exec(NAMESPACE, &cid, &exec).await;
            });
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
        mut streams: Streams,
    ) -> Result<(), RuntimeError> {
        use super::attach::{encode, read_frame, STDERR, STDIN, STDIN_END, STDOUT};
        let cri = self.cri()?;
        let err = |e: String| RuntimeError(e);
        let id = running(&cri, &req.container_id).map_err(|s| err(s.message().into()))?;
        let (has_stdin, has_log) = {
            let e = super::container::get(&cri, &id).map_err(|s| err(s.message().into()))?;
            let r = e.lock().unwrap();
            (r.config.stdin, r.log_path.is_some())
        };
        if !has_log {
            return Err(err(format!(
                "attach to {id}: the container has no log path, so no attachable output"
            )));
        }
        let dir = super::container::control_dir(&cri, &id);
        let (path, dirfd) = super::attach::socket_path(&dir, super::attach::SOCKET)
            .map_err(|e| err(format!("attach to {id}: {}: {e}", dir.display())))?;
        let conn = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
            err(format!(
                "attach to {id}: its logger at {} does not answer: {e}",
                dir.join(super::attach::SOCKET).display()
            ))
        })?;
        drop(dirfd);
        // The frames are read on a blocking thread: a std stream keeps the decoder simple.
        let conn = conn
            .into_std()
            .and_then(|c| c.set_nonblocking(false).map(|_| c))
            .map_err(|e| err(format!("attach to {id}: {e}")))?;
        let mut reader = conn
            .try_clone()
            .map_err(|e| err(format!("attach to {id}: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(64);
        let read_job = tokio::task::spawn_blocking(move || {
            while let Ok(Some(frame)) = read_frame(&mut reader) {
                if tx.blocking_send(frame).is_err() {
                    break;
                }
            }
        });
        let mut jobs = Vec::new();
        // stdin of a container created without one has nowhere to go (as containerd)
        if let (Some(mut input), true) = (streams.stdin.take(), has_stdin) {
            let mut w = conn
                .try_clone()
                .map_err(|e| err(format!("attach to {id}: {e}")))?;
            let (itx, mut irx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
            jobs.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if itx.send(encode(STDIN, &buf[..n])).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = itx.send(encode(STDIN_END, b"")).await;
            }));
            jobs.push(tokio::task::spawn_blocking(move || {
                use std::io::Write;
                while let Some(f) = irx.blocking_recv() {
                    if w.write_all(&f).is_err() {
                        break;
                    }
                }
            }));
        }
        if let Some(mut resize) = streams.resize.take() {
            let (cri2, id2) = (cri.clone(), id.clone());
            jobs.push(tokio::spawn(async move {
                while let Some(sz) = resize.recv().await {
                    let _ = cri2
                        .tasks
                        .resize_pty(NAMESPACE, &id2, None, sz.width as u32, sz.height as u32)
                        .await;
                }
            }));
        }
        let (mut out, mut errs) = (streams.stdout.take(), streams.stderr.take());
        let pump = async {
            while let Some((kind, data)) = rx.recv().await {
                let to = match kind {
                    STDOUT => out.as_mut(),
                    STDERR => errs.as_mut(),
                    _ => None,
                };
                if let Some(w) = to {
                    if w.write_all(&data).await.is_err() {
                        break;
                    }
                    let _ = w.flush().await;
                }
            }
        };
        // Ends when the container's output ends (it exited; its logger is gone) or the
        // client leaves: attach detaches, the container keeps running.
        tokio::select! {
            _ = pump => {}
            _ = streams.cancel.cancelled() => {}
        }
        let _ = conn.shutdown(std::net::Shutdown::Both);
        read_job.abort();
        for j in jobs {
            j.abort();
        }
        for w in [out.as_mut(), errs.as_mut()].into_iter().flatten() {
            let _ = w.flush().await;
        }
        Ok(())
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
