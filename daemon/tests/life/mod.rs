//! Shared by tests/logs.rs and tests/restart.rs: a real `rcd` (rshim + runr next to it) with
//! busybox pulled from a loopback registry, driven through its gRPC API with a tonic client.

#![allow(dead_code)]

use crate::common::Rcd;
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use rcd_proto::v1::containers_client::ContainersClient;
use rcd_proto::v1::tasks_client::TasksClient;
use rtest::{busybox_image, Registry};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Env {
    pub rcd: Rcd,
    pub _reg: Registry,
    pub dir: tempfile::TempDir,
    pub c: Client,
}

/// The API calls the tests make.
pub struct Client {
    pub ch: Channel,
    pub image: String,
}

impl std::ops::Deref for Env {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.c
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.rcd.child.is_none() {
            return;
        }
        // a failed test's containers go too (on a runtime of its own: the test's is gone)
        let (address, image) = (self.rcd.address.clone(), self.c.image.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = Client {
                    ch: connect(&address).await,
                    image,
                };
                c.cleanup().await;
            });
        })
        .join();
    }
}

pub async fn connect(address: &Path) -> Channel {
    let path = address.to_owned();
    Endpoint::from_static("http://rcd.sock")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

pub async fn env() -> Env {
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let image = reg.image_ref("library/busybox", "latest");
    let dir = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(dir.path());
    rcd.ok(&["images", "pull", "--plain-http", &image]);
    let ch = connect(&rcd.address).await;
    Env {
        rcd,
        _reg: reg,
        dir,
        c: Client { ch, image },
    }
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

impl Env {
    /// Reconnects after rcd was restarted.
    pub async fn reconnect(&mut self) {
        self.c.ch = connect(&self.rcd.address).await;
    }
}

impl Client {
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.ch.clone())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }

    pub async fn create(&self, id: &str, options: pb::ContainerOptions) -> pb::Container {
        self.containers()
            .create(pb::CreateContainerRequest {
                id: id.into(),
                image: self.image.clone(),
                options: Some(options),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating {id}: {e}"))
            .into_inner()
            .container
            .unwrap()
    }

    /// A detached run: a task without stdio of its own, started; its pid.
    pub async fn start(&self, id: &str) -> u32 {
        self.tasks()
            .create(pb::CreateTaskRequest {
                container_id: id.into(),
                stdio: None,
            })
            .await
            .unwrap_or_else(|e| panic!("creating the task of {id}: {e}"));
        self.tasks()
            .start(pb::StartTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("starting {id}: {e}"))
            .into_inner()
            .pid
    }

    pub async fn task(&self, id: &str) -> Option<pb::Process> {
        self.tasks()
            .get(pb::GetTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().process)
    }

    pub async fn wait(&self, id: &str) -> u32 {
        self.tasks()
            .wait(pb::WaitTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .exit_status
    }

    pub async fn labels(&self, id: &str) -> std::collections::HashMap<String, String> {
        self.containers()
            .get(pb::GetContainerRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap()
            .labels
    }

    pub async fn restart_count(&self, id: &str) -> u32 {
        self.labels(id)
            .await
            .get(labels::RESTART_COUNT)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub async fn logs(&self, req: pb::LogsRequest) -> Result<Vec<pb::LogLine>, tonic::Status> {
        let mut s = self.containers().logs(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await? {
            out.extend(m.lines);
        }
        Ok(out)
    }

    pub async fn all_logs(&self, id: &str) -> Vec<pb::LogLine> {
        self.logs(pb::LogsRequest {
            id: id.into(),
            tail_all: true,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    /// A client's stop: explicitly-stopped first, then SIGKILL, and the exit.
    pub async fn stop(&self, id: &str) {
        self.containers()
            .update(pb::UpdateContainerRequest {
                id: id.into(),
                labels: [(labels::EXPLICITLY_STOPPED.to_owned(), "true".to_owned())].into(),
            })
            .await
            .unwrap();
        let _ = self
            .tasks()
            .kill(pb::KillTaskRequest {
                container_id: id.into(),
                signal: 9,
                all: true,
                ..Default::default()
            })
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
    }

    /// rnerd's `rm -f`: stop, delete the task, delete the container (retried while a
    /// restart that was already under way makes a new task).
    pub async fn remove(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let _ = self
                .tasks()
                .kill(pb::KillTaskRequest {
                    container_id: id.into(),
                    signal: 9,
                    all: true,
                    ..Default::default()
                })
                .await;
            let _ = self
                .tasks()
                .delete(pb::DeleteTaskRequest {
                    container_id: id.into(),
                    force: true,
                })
                .await;
            match self
                .containers()
                .delete(pb::DeleteContainerRequest {
                    id: id.into(),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => return,
                Err(e) if e.code() == tonic::Code::NotFound => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "removing {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Removes every container left (a failed test's).
    pub async fn cleanup(&self) {
        let Ok(list) = self
            .containers()
            .list(pb::ListContainersRequest::default())
            .await
        else {
            return;
        };
        for c in list.into_inner().containers {
            let _ = self
                .containers()
                .update(pb::UpdateContainerRequest {
                    id: c.id.clone(),
                    labels: [(labels::EXPLICITLY_STOPPED.to_owned(), "true".to_owned())].into(),
                })
                .await;
            self.remove(&c.id).await;
        }
    }
}

impl Env {
    /// Waits until the container's log holds exactly `want`.
    pub async fn wait_logs(&self, id: &str, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = texts(&self.all_logs(id).await);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "log of {id}: {got:?}, want {want:?}\nrcd log:\n{}",
                self.rcd.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `f` until it holds.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines' text.
pub fn texts(lines: &[pb::LogLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.line).into_owned())
        .collect()
}

/// Whether a process `pid` exists.
pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
