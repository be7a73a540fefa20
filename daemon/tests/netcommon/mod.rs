//! Shared by tests/networks.rs and tests/volumes.rs: a real rcd with busybox pulled from a
//! loopback registry, driven through its gRPC API with tonic clients. Test `n` gets its own
//! network pool (10.<40+n>.0.0/16) and bridge prefix (`rt<n>-`), so tests run in parallel;
//! everything it leaves on the host (bridges, iptables rules of its pool, mounts under its
//! dir) is removed when its `Env` drops, and before it starts (a killed earlier run).

#![allow(dead_code)]

use crate::common::{rctr, Rcd};
use rcd_proto::v1 as pb;
use rcd_proto::v1::{
    containers_client::ContainersClient, networks_client::NetworksClient,
    tasks_client::TasksClient, volumes_client::VolumesClient,
};
use rtest::{busybox_image, hostnet, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

fn shim() -> PathBuf {
    if let Some(s) = std::env::var_os("RCD_TEST_SHIM") {
        return s.into();
    }
    let rshim = Path::new(env!("CARGO_BIN_EXE_rcd")).with_file_name("containerd-shim-runr-v2");
    if rshim.exists() {
        return rshim;
    }
    "/usr/bin/containerd-shim-runc-v2".into()
}

pub struct Env {
    pub n: u8,
    pub rcd: Rcd,
    pub ch: Channel,
    pub image: String,
    _reg: Registry,
    pub dir: tempfile::TempDir,
}

pub fn prefix(n: u8) -> String {
    format!("rt{n}-")
}

/// `10.<40+n>.` : every address of test `n`'s pool starts so.
pub fn pool_prefix(n: u8) -> String {
    format!("10.{}.", 40 + n)
}

/// Removes test `n`'s bridges and the iptables rules naming its pool, with their per-pod
/// chains.
pub fn purge_host(n: u8) {
    hostnet::purge_test_net(&prefix(n), &pool_prefix(n));
}

/// What test `n` left on the host: bridges of its prefix, iptables rules of its pool.
pub fn host_leftovers(n: u8) -> Vec<String> {
    let mut out = Vec::new();
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(&prefix(n)) {
            out.push(line.to_owned());
        }
    }
    let pool = pool_prefix(n);
    for table in hostnet::TABLES {
        out.extend(hostnet::rules(table, |l| l.contains(&pool)));
    }
    out
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

pub async fn env(n: u8) -> Env {
    env_with(n, "").await
}

/// [`env`] with `extra` appended to rcd's config file.
pub async fn env_with(n: u8, extra: &str) -> Env {
    purge_host(n);
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let image = reg.image_ref("library/busybox", "latest");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"debug\"\nshim = {:?}\n\n[networks]\npool = \"10.{}.0.0/16\"\nbridge_prefix = {:?}\n\n{extra}",
            shim().display().to_string(),
            40 + n,
            prefix(n),
        ),
    )
    .unwrap();
    let (root, state) = (dir.path().join("root"), dir.path().join("state"));
    let address = state.join("rcd.sock");
    let mut rcd = Rcd {
        child: None,
        args: vec![
            "--config".into(),
            config.into(),
            "--root".into(),
            root.clone().into(),
            "--state".into(),
            state.clone().into(),
            "--address".into(),
            address.clone().into(),
        ],
        root,
        state,
        address,
        log: dir.path().join("rcd.log"),
    };
    rcd.spawn();
    let out = rctr(&rcd.address, &["images", "pull", "--plain-http", &image]);
    assert!(out.status.success(), "pull: {out:?}");
    let ch = connect(&rcd.address).await;
    Env {
        n,
        rcd,
        ch,
        image,
        _reg: reg,
        dir,
    }
}

/// Options running `sh -c SCRIPT`.
pub fn sh(script: &str) -> pb::ContainerOptions {
    pb::ContainerOptions {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

pub fn port(host: u32, ctr: u32) -> pb::PortMapping {
    pb::PortMapping {
        host_port: host,
        container_port: ctr,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }
}

impl Env {
    /// The container id of a test's short id: unique on the host, since the runtime's
    /// state (/run/containerd/<runtime>/<namespace>/<id>) is shared by every rcd.
    pub fn cid(&self, id: &str) -> String {
        format!("{id}-{}-{}", std::process::id(), self.n)
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.ch.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }
    pub fn networks(&self) -> NetworksClient<Channel> {
        NetworksClient::new(self.ch.clone())
    }
    pub fn volumes(&self) -> VolumesClient<Channel> {
        VolumesClient::new(self.ch.clone())
    }

    pub async fn create(
        &self,
        id: &str,
        name: &str,
        o: pb::ContainerOptions,
    ) -> Result<pb::Container, tonic::Status> {
        let mut labels = std::collections::HashMap::new();
        if !name.is_empty() {
            labels.insert(rcd_proto::labels::NAME.to_owned(), name.to_owned());
        }
        self.containers()
            .create(pb::CreateContainerRequest {
                id: self.cid(id),
                image: self.image.clone(),
                labels,
                options: Some(o),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().container.unwrap())
    }

    /// Creates and starts the task of a created container.
    pub async fn start(&self, id: &str) -> Result<u32, tonic::Status> {
        let mut t = self.tasks();
        let id = &self.cid(id);
        t.create(pb::CreateTaskRequest {
            container_id: id.into(),
            stdio: None,
        })
        .await?;
        Ok(t.start(pb::StartTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .pid)
    }

    pub async fn run(&self, id: &str, name: &str, o: pb::ContainerOptions) -> u32 {
        self.create(id, name, o).await.unwrap();
        match self.start(id).await {
            Ok(pid) => pid,
            Err(e) => panic!("starting {id}: {e:?}\n{}", tail(&self.rcd.log_text())),
        }
    }

    pub async fn wait(&self, id: &str, timeout: Duration) -> u32 {
        tokio::time::timeout(
            timeout,
            self.tasks().wait(pb::WaitTaskRequest {
                container_id: self.cid(id),
                exec_id: String::new(),
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{id} did not exit within {timeout:?}"))
        .unwrap()
        .into_inner()
        .exit_status
    }

    /// Kills (if running) and deletes the task, then the container.
    pub async fn remove(&self, id: &str, remove_volumes: bool) {
        let has_task = self
            .tasks()
            .get(pb::GetTaskRequest {
                container_id: self.cid(id),
                exec_id: String::new(),
            })
            .await
            .is_ok();
        if has_task {
            self.stop(id).await;
        }
        self.containers()
            .delete(pb::DeleteContainerRequest {
                id: self.cid(id),
                keep_snapshot: false,
                remove_volumes,
            })
            .await
            .unwrap();
    }

    /// Kills and deletes the task.
    pub async fn stop(&self, id: &str) {
        let mut t = self.tasks();
        let id = &self.cid(id);
        let _ = t
            .kill(pb::KillTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await;
        if let Err(e) = t
            .delete(pb::DeleteTaskRequest {
                container_id: id.into(),
                force: true,
            })
            .await
        {
            panic!("deleting task {id}: {e:?}\n{}", tail(&self.rcd.log_text()));
        }
    }

    pub async fn labels(&self, id: &str) -> std::collections::HashMap<String, String> {
        self.containers()
            .get(pb::GetContainerRequest { id: self.cid(id) })
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap()
            .labels
    }

    pub async fn network(&self, name: &str) -> Result<pb::Network, tonic::Status> {
        self.networks()
            .get(pb::GetNetworkRequest { name: name.into() })
            .await
            .map(|r| r.into_inner().network.unwrap())
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

impl Drop for Env {
    fn drop(&mut self) {
        // what a failed test left running: its containers (by the runtime), then the shims
        let suffix = format!("-{}-{}", std::process::id(), self.n);
        let runr = Path::new(env!("CARGO_BIN_EXE_rcd")).with_file_name("runr");
        let root = Path::new("/run/containerd/runr/default");
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.ends_with(&suffix) && !id.starts_with("bundle@") {
                let _ = Command::new(&runr)
                    .arg("--root")
                    .arg(root)
                    .args(["delete", "--force", &id])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let state = self.rcd.state.display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&state)
                    && String::from_utf8_lossy(&cmd).contains("containerd-shim")
                {
                    // SAFETY: plain kill of a shim this test's daemon started
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let dir = self.dir.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let c = std::ffi::CString::new(m).unwrap();
            // SAFETY: a valid C string
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        purge_host(self.n);
    }
}
