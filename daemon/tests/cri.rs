//! The CRI v1 services of a real `rcd` (temp root, state and socket), driven with k8s-cri's
//! gRPC client: pods on a test-owned CNI bridge (`rcdc<n>`, 10.232.<n>.0/24), busybox from a
//! loopback registry (pulled through a `registry.k8s.io` mirror), Debian's
//! `containerd-shim-runc-v2` (`$RCD_TEST_CRI_SHIM` picks another; the shim must support
//! `binary://` logging).

mod common;

use common::Rcd;
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rcd::cni::BridgeNetwork;
use rtest::{busybox_image, hostnet, pause_image, ImageBuilder, Registry, TarBuilder};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::{Channel, Endpoint, Uri};

const IMAGE: &str = "registry.k8s.io/library/busybox:latest";

fn shim() -> PathBuf {
    std::env::var_os("RCD_TEST_CRI_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/containerd-shim-runc-v2".into())
}

struct Env {
    n: u8,
    rcd: Rcd,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    _reg: Registry,
    dir: tempfile::TempDir,
}

fn bridge(n: u8) -> String {
    format!("rcdc{n}")
}

/// Whether an iptables rule belongs to test network `n`: the plugins (bridge's masquerade,
/// portmap, firewall) name the network in their rules' comments, and the jumps to their
/// chains name the pods' addresses.
fn of_net(n: u8) -> impl Fn(&str) -> bool {
    let (subnet, name) = (format!("10.232.{n}."), format!("\"rcdcri-{n}\\\""));
    move |l: &str| l.contains(&subnet) || l.contains(&name)
}

/// Removes the test bridge and the iptables rules and per-pod chains an earlier run of
/// network `n` left (a test killed half-way).
fn purge_net(n: u8) {
    let _ = Command::new("ip")
        .args(["link", "del", &bridge(n)])
        .stderr(Stdio::null())
        .status();
    hostnet::purge_rules(of_net(n));
}

/// The snapshots of the CRI's namespace, through rcd's native API.
async fn cri_snapshots(address: &Path) -> Vec<rcd_proto::v1::Snapshot> {
    let mut req = tonic::Request::new(rcd_proto::v1::ListSnapshotsRequest {});
    req.metadata_mut()
        .insert(rcd_proto::NAMESPACE_HEADER, "k8s.io".parse().unwrap());
    rcd_proto::v1::snapshots_client::SnapshotsClient::new(connect(address).await)
        .list(req)
        .await
        .unwrap()
        .into_inner()
        .snapshots
}

async fn connect(address: &Path) -> Channel {
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

async fn env(n: u8) -> Env {
    env_with(n, "").await
}

/// [`env`] with more lines for rcd's `[cri]` section.
async fn env_with(n: u8, cri_extra: &str) -> Env {
    purge_net(n);
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let net = BridgeNetwork {
        name: format!("rcdcri-{n}"),
        bridge: bridge(n),
        subnets: vec![format!("10.232.{n}.0/24")],
        ipam_data_dir: Some(dir.path().join("ipam")),
    };
    std::fs::write(
        conf.join("10-test.conflist"),
        net.render().unwrap().to_bytes(),
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"debug\"\nshim = {shim:?}\n\n[cri]\ncni_conf_dir = {conf:?}\n\
             cgroup_parent = \"/rcd-test-cri-{n}\"\n{cri_extra}\n\
             [registries.\"registry.k8s.io\"]\n[[registries.\"registry.k8s.io\".mirrors]]\n\
             url = \"http://{host}\"\n",
            shim = shim().display().to_string(),
            conf = conf.display().to_string(),
            host = reg.host(),
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
        address: address.clone(),
        log: dir.path().join("rcd.log"),
    };
    rcd.spawn();
    let ch = connect(&address).await;
    let mut img = ImageServiceClient::new(ch.clone());
    img.pull_image(cri::PullImageRequest {
        image: Some(spec(IMAGE)),
        ..Default::default()
    })
    .await
    .unwrap();
    Env {
        n,
        rcd,
        rt: RuntimeServiceClient::new(ch),
        img,
        _reg: reg,
        dir,
    }
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

impl Env {
    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs().join(name).display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            labels: HashMap::from([("app".into(), name.into())]),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    async fn run_pod(&mut self, cfg: cri::PodSandboxConfig) -> String {
        let r = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await;
        match r {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("run pod: {e}\n{}", tail(&self.rcd.log_text())),
        }
    }

    fn container_config(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(spec(IMAGE)),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("c".into(), name.into())]),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    async fn start_container(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> String {
        let id = match self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
        {
            Ok(r) => r.into_inner().container_id,
            Err(e) => panic!("create: {e}\n{}", tail(&self.rcd.log_text())),
        };
        if let Err(e) = self
            .rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            panic!("start: {e}\n{}", tail(&self.rcd.log_text()));
        }
        id
    }

    async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn sh(&mut self, id: &str, script: &str) -> (i32, String, String) {
        let r = self.exec(id, &["sh", "-c", script], 20).await.unwrap();
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    /// PodSandboxStatus, verbose.
    async fn pod_status_response(&mut self, id: &str) -> cri::PodSandboxStatusResponse {
        self.rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// PodSandboxStatus's verbose `info` document.
    async fn pod_status_info(&mut self, id: &str) -> serde_json::Value {
        let info = self.pod_status_response(id).await.info;
        serde_json::from_str(&info["info"]).unwrap()
    }

    async fn pod_status(&mut self, id: &str) -> cri::PodSandboxStatus {
        self.pod_status_response(id).await.status.unwrap()
    }

    async fn wait_exited(&mut self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remove_pod(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// Removes every pod (and with them the containers), then checks nothing is left.
    async fn finish(mut self) {
        let pods = self
            .rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        for p in pods {
            self.remove_pod(&p.id).await;
        }
        // nothing of the pods is left: shims (one per pod, ended by its last task's
        // delete), bundles, netns, addresses, veths, snapshots, cgroups
        self.assert_no_leftovers().await;
        let left = self
            .rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(left.is_empty(), "{left:?}");
        let netns = self.rcd.state.join("cri/netns");
        let ns: Vec<_> = std::fs::read_dir(&netns)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(ns.is_empty(), "netns left: {ns:?}");
        let ipam = self
            .dir
            .path()
            .join("ipam")
            .join(format!("rcdcri-{}", self.n));
        let ips: Vec<_> = std::fs::read_dir(&ipam)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default();
        assert!(ips.is_empty(), "addresses left: {ips:?}");
        let cg = format!("/sys/fs/cgroup/memory/rcd-test-cri-{}", self.n);
        let kids: Vec<_> = std::fs::read_dir(&cg)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(kids.is_empty(), "cgroups left under {cg}: {kids:?}");
        assert!(self.rcd.stop().success());
        purge_net(self.n);
        for ctl in [
            "memory",
            "cpu,cpuacct",
            "cpuset",
            "pids",
            "blkio",
            "devices",
            "freezer",
            "cpu",
            "cpuacct",
            "net_cls,net_prio",
            "perf_event",
            "hugetlb",
            "systemd",
        ] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctl}/rcd-test-cri-{}", self.n));
        }
    }
}

impl Env {
    /// Asserts that [`Env::leftovers`] comes to nothing within 5 s: a deleted task's shim
    /// ends, and its bundle goes, just after the reply.
    async fn assert_no_leftovers(&mut self) {
        let mut left = self.leftovers().await;
        for _ in 0..50 {
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = self.leftovers().await;
        }
        assert!(left.is_empty(), "{left:?}");
    }

    /// What a pod that failed to start could leave behind: sandboxes, network namespaces,
    /// addresses, veths on the test bridge, shims, task bundles, pod dirs, active snapshots
    /// and pod cgroups.
    async fn leftovers(&mut self) -> Vec<String> {
        let mut left = vec![];
        let pods = self
            .rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        left.extend(pods.iter().map(|p| format!("sandbox {}", p.id)));
        let names = |dir: PathBuf| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|r| {
                    r.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let state = &self.rcd.state;
        for (what, dir) in [
            ("netns", state.join("cri/netns")),
            ("pod dir", state.join("cri/pods")),
            ("task bundle", state.join("tasks/k8s.io")),
        ] {
            left.extend(names(dir).into_iter().map(|n| format!("{what} {n}")));
        }
        let ipam = self.dir.path().join(format!("ipam/rcdcri-{}", self.n));
        left.extend(
            names(ipam)
                .into_iter()
                .filter(|n| n.starts_with("10."))
                .map(|n| format!("address {n}")),
        );
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", &bridge(self.n)])
            .output()
            .unwrap();
        left.extend(
            String::from_utf8_lossy(&veths.stdout)
                .lines()
                .map(|l| format!("veth {l}")),
        );
        left.extend(
            common::shims_of(&self.rcd.address)
                .into_iter()
                .map(|s| format!("shim {s}")),
        );
        let snaps = cri_snapshots(&self.rcd.address).await;
        left.extend(
            snaps
                .iter()
                .filter(|s| s.kind == "active")
                .map(|s| format!("snapshot {}", s.key)),
        );
        // a CNI DEL that stopped half-way leaves the masquerade or port-mapping rules
        left.extend(hostnet::leftover_rules(of_net(self.n)));
        let cg = PathBuf::from(format!("/sys/fs/cgroup/memory/rcd-test-cri-{}", self.n));
        left.extend(
            names(cg.clone())
                .into_iter()
                .filter(|n| cg.join(n).is_dir())
                .map(|n| format!("cgroup {n}")),
        );
        left
    }
}

/// A failed test's pods go (with their containers, network and cgroups) while its rcd runs.
impl Drop for Env {
    fn drop(&mut self) {
        if self.rcd.child.is_none() {
            return;
        }
        let address = self.rcd.address.clone();
        let n = self.n;
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = RuntimeServiceClient::new(connect(&address).await);
                let pods = c
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await
                    .map(|r| r.into_inner().items)
                    .unwrap_or_default();
                for p in pods {
                    let _ = c
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
            });
            purge_net(n);
        })
        .join();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(url: &str, protocol: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let host = req.uri().authority().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

/// Channel messages until the server closes, per channel.
async fn ws_collect(ws: &mut Ws) -> [Vec<u8>; 5] {
    let mut got: [Vec<u8>; 5] = Default::default();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("websocket traffic within 20 s")
    {
        match msg.unwrap() {
            Message::Binary(b) if !b.is_empty() && (b[0] as usize) < 5 => {
                got[b[0] as usize].extend_from_slice(&b[1..])
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    got
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Parses CRI log lines: (stream, tag, text).
fn parse_log(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                "bad timestamp in {l:?}"
            );
            (
                it.next().unwrap().to_owned(),
                it.next().unwrap().to_owned(),
                it.next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

async fn wait_file(path: &Path, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        if f(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {}: {:?}",
            path.display(),
            t.chars().take(300).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_exec_logs_and_idempotence() {
    let mut e = env(1).await;
    let v =
        e.rt.version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("rcd", "v1")
    );
    let st =
        e.rt.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(conds.iter().all(|c| c.status), "{conds:?}");

    let pcfg = e.pod_config("web");
    let t0 = Instant::now();
    let pod = e.run_pod(pcfg.clone()).await;
    eprintln!("RunPodSandbox took {:?}", t0.elapsed());
    let ps = e.pod_status(&pod).await;
    assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = ps.network.unwrap().ip;
    assert!(ip.starts_with(&format!("10.232.{}.", e.n)), "{ip}");
    // a second pod with the same name is refused
    let dup =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pcfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{dup}");

    let cfg = e.container_config(
        "app",
        &["sh", "-c", "trap '' TERM; echo hello; echo oops >&2; head -c 40000 /dev/zero | tr '\\0' x; echo; exec sleep 1000"],
    );
    let t0 = Instant::now();
    let c = e.start_container(&pod, &pcfg, cfg).await;
    eprintln!("CreateContainer + StartContainer took {:?}", t0.elapsed());
    let s = e.status(&c).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at > 0);
    // one shim per pod: the container's init and the pause have the same parent
    let info =
        e.rt.container_status(cri::ContainerStatusRequest {
            container_id: c.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let app_pid = info["pid"].as_u64().unwrap();
    let pinfo = e.pod_status_info(&pod).await;
    let pause_pid = pinfo["pid"].as_u64().unwrap();
    let ppid = |pid: u64| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = st.rsplit_once(')').unwrap().1;
        rest.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(ppid(app_pid), ppid(pause_pid), "the pod's shim is shared");

    // lists: by pod, by label, by state
    let list =
        e.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                label_selector: HashMap::from([("c".into(), "app".into())]),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    let pods =
        e.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".into(), "nope".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty());

    // exec: exit codes, output, timeout
    let t0 = Instant::now();
    let (code, out, err) = e.sh(&c, "echo out; echo err >&2; exit 3").await;
    eprintln!("ExecSync took {:?}", t0.elapsed());
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    let t0 = Instant::now();
    let to = e.exec(&c, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(to.code(), tonic::Code::DeadlineExceeded, "{to}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // the pod's files
    let (_, resolv, _) = e.sh(&c, "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let (_, host, _) = e.sh(&c, "hostname; cat /etc/hostname").await;
    assert_eq!(host, "web\nweb\n");
    let (_, addrs, _) = e.sh(&c, "ip -4 addr show eth0").await;
    assert!(addrs.contains(&ip), "{addrs}");

    // logs: CRI format, 16 KiB partials, both streams
    let log = e.logs().join("web/app/0.log");
    let text = wait_file(&log, "log lines", |t| t.lines().count() >= 5).await;
    let lines = parse_log(&text);
    assert!(lines.contains(&("stdout".into(), "F".into(), "hello".into())));
    assert!(lines.contains(&("stderr".into(), "F".into(), "oops".into())));
    let xs: Vec<_> = lines.iter().filter(|l| l.2.starts_with('x')).collect();
    assert_eq!(xs.len(), 3);
    assert_eq!((xs[0].1.as_str(), xs[0].2.len()), ("P", 16384));
    assert_eq!((xs[1].1.as_str(), xs[1].2.len()), ("P", 16384));
    assert_eq!((xs[2].1.as_str(), xs[2].2.len()), ("F", 40000 - 2 * 16384));
    // rotation: rename, reopen, new lines go to the new file
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    e.rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .unwrap();
    assert!(log.exists());
    // exec output is not the container's: write through the container's own stdout (the
    // pod shares one PID namespace: the proto's default, pid 1 is the pause)
    let r = e
        .sh(&c, "echo after-rotation > /proc/$(pidof sleep)/fd/1")
        .await;
    assert_eq!(r.0, 0, "{r:?}");

    let text = wait_file(&log, "line after reopen", |t| t.contains("after-rotation")).await;
    assert_eq!(parse_log(&text).len(), 1, "{text}");
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("after-rotation"));

    // stop: the container ignores SIGTERM, so the timeout, then SIGKILL
    let t0 = Instant::now();
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let s = e.wait_exited(&c).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));
    // stop again, remove twice, unknown ids
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    for _ in 0..2 {
        e.rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    }
    let nf =
        e.rt.container_status(cri::ContainerStatusRequest {
            container_id: c.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);
    e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await
    .unwrap();
    e.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await
    .unwrap();
    e.rt.remove_container(cri::RemoveContainerRequest {
        container_id: "0123456789abcdef".into(),
    })
    .await
    .unwrap();
    // stop pod twice: NotReady, no IP left allocated
    for _ in 0..2 {
        e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        e.pod_status(&pod).await.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    // images: list, status by name and id
    let imgs = e
        .img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].repo_tags, vec![IMAGE.to_string()]);
    let by_id = e
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(&imgs[0].id)),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.image.unwrap().id, imgs[0].id);
    let none = e
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec("nothing:here")),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.image.is_none());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_localhost_and_volumes_pods_reach_each_other() {
    let mut e = env(2).await;
    let vol = e.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let mut acfg = e.pod_config("a");
    let host_port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    acfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: String::new(),
    }];
    let a = e.run_pod(acfg.clone()).await;
    let mut web = e.container_config("web", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let mount = cri::Mount {
        container_path: "/www".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    };
    web.mounts = vec![mount.clone()];
    let w = e.start_container(&a, &acfg, web).await;
    let mut side = e.container_config("side", &["sleep", "1000"]);
    side.mounts = vec![mount];
    let s = e.start_container(&a, &acfg, side).await;
    // the sidecar writes into the shared volume and reads it back over the pod's localhost
    let (code, _, err) = e.sh(&s, "echo shared-page > /www/index.html").await;
    assert_eq!(code, 0, "{err}");
    let mut got = String::new();
    for _ in 0..50 {
        let (code, out, _) = e
            .sh(&s, "wget -q -O - http://127.0.0.1:8080/index.html")
            .await;
        if code == 0 {
            got = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, "shared-page\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("index.html")).unwrap(),
        "shared-page\n"
    );
    // one IPC and UTS namespace for the pod
    let (_, h1, _) = e.sh(&w, "readlink /proc/self/ns/ipc; hostname").await;
    let (_, h2, _) = e.sh(&s, "readlink /proc/self/ns/ipc; hostname").await;
    assert_eq!(h1, h2);
    // another pod reaches it by IP
    let a_ip = e.pod_status(&a).await.network.unwrap().ip;
    let bcfg = e.pod_config("b");
    let b = e.run_pod(bcfg.clone()).await;
    let c = e
        .start_container(&b, &bcfg, e.container_config("client", &["sleep", "1000"]))
        .await;
    let (code, out, err) = e
        .sh(&c, &format!("wget -q -O - http://{a_ip}:8080/index.html"))
        .await;
    assert_eq!((code, out.as_str()), (0, "shared-page\n"), "{err}");
    // the host port reaches the pod (portmap's DNAT from another pod to the gateway)
    let gw = format!("10.232.{}.1", e.n);
    let (code, out, err) = e
        .sh(
            &c,
            &format!("wget -q -O - http://{gw}:{host_port}/index.html"),
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "shared-page\n"), "{err}");
    // streaming: exec over WebSocket (v5), stdin to cat, and an exit code
    let url =
        e.rt.exec(cri::ExecRequest {
            container_id: w.clone(),
            cmd: vec!["cat".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::binary(b"\x00hello exec\n".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(got[1], b"hello exec\n");
    assert_eq!(got[3], br#"{"metadata":{},"status":"Success"}"#);
    let url =
        e.rt.exec(cri::ExecRequest {
            container_id: w.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo bye >&2; exit 5".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    let got = ws_collect(&mut ws).await;
    assert_eq!(got[2], b"bye\n");
    let status = String::from_utf8_lossy(&got[3]).into_owned();
    assert!(
        status.contains("NonZeroExitCode") && status.contains("\"message\":\"5\""),
        "{status}"
    );
    // port forwarding into the pod's network namespace (WebSocket, portforward.k8s.io)
    let url =
        e.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: a.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = ws_connect(&url, "portforward.k8s.io").await;
    let mut req = vec![0u8];
    req.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
    ws.send(Message::binary(req)).await.unwrap();
    let mut body = Vec::new();
    let mut first = true;
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("port-forward data within 10 s")
    {
        if let Message::Binary(b) = m {
            if b.first() == Some(&0) {
                if first {
                    // each channel starts with its port
                    assert_eq!(&b[1..], &8080u16.to_le_bytes());
                    first = false;
                } else {
                    body.extend_from_slice(&b[1..]);
                }
            }
        }
        if String::from_utf8_lossy(&body).contains("shared-page") {
            break;
        }
    }
    assert!(
        String::from_utf8_lossy(&body).contains("shared-page"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    drop(ws);
    // stats of the running containers
    let stats =
        e.rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .stats;
    assert_eq!(stats.len(), 3);
    assert!(stats.iter().all(|s| s
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .is_some()));
    e.remove_pod(&a).await;
    // a removed pod's containers are gone with it
    let left =
        e.rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert_eq!(left.len(), 1);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_and_oom_killed() {
    let mut e = env(3).await;
    let pcfg = e.pod_config("sec");
    let pod = e.run_pod(pcfg.clone()).await;
    let mut cfg = e.container_config("user", &["sleep", "1000"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 1001 }),
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            no_new_privs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = e.start_container(&pod, &pcfg, cfg).await;
    let (_, ids, _) = e.sh(&c, "id -u; id -g").await;
    assert_eq!(ids, "1000\n1001\n");
    let (code, _, err) = e.sh(&c, "touch /x").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");
    let (_, caps, _) = e.sh(&c, "grep CapEff /proc/self/status").await;
    assert!(caps.contains("0000000000000000"), "{caps}");

    // a memory hog under a 32 MiB limit is OOM killed
    let mut hog = e.container_config(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let h = e.start_container(&pod, &pcfg, hog).await;
    let s = e.wait_exited(&h).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    // a clean exit is Completed
    let ok = e
        .start_container(&pod, &pcfg, e.container_config("ok", &["true"]))
        .await;
    let s = e.wait_exited(&ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let bad = e
        .start_container(
            &pod,
            &pcfg,
            e.container_config("bad", &["sh", "-c", "exit 7"]),
        )
        .await;
    let s = e.wait_exited(&bad).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_keeps_pods_and_containers() {
    let mut e = env(4).await;
    let pcfg = e.pod_config("keep");
    let pod = e.run_pod(pcfg.clone()).await;
    let c = e
        .start_container(
            &pod,
            &pcfg,
            e.container_config(
                "loop",
                &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
            ),
        )
        .await;
    let ip = e.pod_status(&pod).await.network.unwrap().ip;
    let log = e.logs().join("keep/loop/0.log");
    // kill -9: the container keeps logging while no rcd runs
    let mut child = e.rcd.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(during > before, "{before} -> {during}");
    e.rcd.spawn();
    let ch = connect(&e.rcd.address).await;
    e.rt = RuntimeServiceClient::new(ch.clone());
    e.img = ImageServiceClient::new(ch);
    let ps = e.pod_status(&pod).await;
    assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(ps.network.unwrap().ip, ip);
    assert_eq!(
        e.status(&c).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let (code, out, _) = e.sh(&c, "echo back").await;
    assert_eq!((code, out.as_str()), (0, "back\n"));
    // attach after the restart: the container's logger, not rcd, feeds it
    let url =
        e.rt.attach(cri::AttachRequest {
            container_id: c.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tick\ntick\n") {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("attached output within 10 s")
        {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&1) => got.extend_from_slice(&b[1..]),
            Some(Ok(_)) => {}
            other => panic!("attach ended early: {other:?}, got {got:?}"),
        }
    }
    drop(ws);
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert_eq!(e.wait_exited(&c).await.exit_code, 137);
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_sandbox_image_is_pulled_and_runs_the_pod() {
    const PAUSE: &str = "registry.k8s.io/pause:3.9";
    let mut e = env_with(5, &format!("sandbox_image = {PAUSE:?}\n")).await;
    // not in the registry yet: a clear error, and no pod is left behind
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(e.pod_config("early")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("pulling the sandbox image registry.k8s.io/pause:3.9"),
        "{err:?}"
    );
    let pods =
        e.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "{pods:?}");

    e._reg.push(pause_image(), "pause", "3.9").unwrap();
    let pcfg = e.pod_config("imaged");
    let pod = e.run_pod(pcfg.clone()).await;
    let images = e
        .img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(
        images
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == PAUSE)),
        "{images:?}"
    );
    let info = e.pod_status_info(&pod).await;
    assert_eq!(info["sandboxImage"], PAUSE);
    let pid = info["pid"].as_u64().unwrap();
    // the pause runs the image's entrypoint on an overlay of the image's layer
    // (the runtime's start returns before its init has exec'd the entrypoint)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        if cmdline == b"/pause\0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(root.contains(" - overlay "), "{root}");
    // the pod works as with the built-in pause
    let c = e
        .start_container(&pod, &pcfg, e.container_config("app", &["sleep", "60"]))
        .await;
    let (code, out, _) = e.sh(&c, "hostname; echo ok").await;
    assert_eq!((code, out.as_str()), (0, "imaged\nok\n"));
    e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    e.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    // its snapshot went with it; its rootfs is unmounted by rcd's trash worker, just after
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if !mounts.contains(&pod) {
            break;
        }
        assert!(Instant::now() < deadline, "{mounts}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snaps = cri_snapshots(&e.rcd.address).await;
    assert!(!snaps.is_empty(), "the image's layer is a snapshot");
    assert!(snaps.iter().all(|s| s.key != pod), "{snaps:?}");
    e.finish().await;
}

/// The pause fails while the pod network is set up beside it: RunPodSandbox says why, and
/// the network (namespace, veth, address), the shim, the snapshot and the pod are undone;
/// twice, so nothing of the first attempt is in the way of the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_pause_fails_leaves_nothing() {
    const PAUSE: &str = "registry.k8s.io/pause:broken";
    let mut e = env_with(6, &format!("sandbox_image = {PAUSE:?}\n")).await;
    let broken = ImageBuilder::new()
        .layer_tar(
            TarBuilder::new()
                .file("pause", b"not a program", 0o755)
                .finish(),
        )
        .entrypoint(&["/nonexistent"])
        .build()
        .unwrap();
    e._reg.push(&broken, "pause", "broken").unwrap();
    for _ in 0..2 {
        let err =
            e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(e.pod_config("broken")),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("the pause task"), "{err:?}");
        e.assert_no_leftovers().await;
    }
    e.finish().await;
}

/// The pod network fails (a conflist whose last plugin fails) while the pause is made:
/// RunPodSandbox says why and the pause task, its shim, the namespace and the pod are
/// undone; once the config is fixed, pods start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_network_fails_leaves_nothing() {
    let mut e = env(7).await;
    let conf = e.dir.path().join("net.d/10-test.conflist");
    let good = std::fs::read(&conf).unwrap();
    let mut broken: serde_json::Value = serde_json::from_slice(&good).unwrap();
    // a chained plugin that fails after bridge made the veth and host-local gave an address
    broken["plugins"].as_array_mut().unwrap().push(
        serde_json::json!({"type": "tuning", "sysctl": {"net.core.rcd_test_nonexistent": "1"}}),
    );
    std::fs::write(&conf, broken.to_string()).unwrap();
    // Status re-reads the config dir
    e.rt.status(cri::StatusRequest { verbose: false })
        .await
        .unwrap();
    for _ in 0..2 {
        let err =
            e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(e.pod_config("nonet")),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert!(
            err.message().contains("setting up the pod network"),
            "{err:?}"
        );
        e.assert_no_leftovers().await;
    }
    std::fs::write(&conf, &good).unwrap();
    e.rt.status(cri::StatusRequest { verbose: false })
        .await
        .unwrap();
    let pod = e.run_pod(e.pod_config("nonet")).await;
    let st = e.pod_status(&pod).await;
    assert!(
        st.network.unwrap().ip.starts_with("10.232.7."),
        "the pod has an address once the network works"
    );
    e.finish().await;
}
