//! CRI v1 as kubelet sees it, rcd against containerd 1.6's CRI plugin in the same run: a gRPC
//! client (k8s-cri's tonic client) on each runtime's unix socket times pod → running
//! container, N pods started in a row, ListContainers / ListPodSandbox / ExecSync with the
//! pods running, the daemons' memory and what each runtime adds per pod (shims, loggers,
//! pause), and the teardown of the pods.
//!
//! Both runtimes pull the same busybox from one loopback registry and attach pods to a CNI
//! network of their own with the same conflist (bridge with host-local addresses, portmap;
//! loopback added by the runtime): [`CriConfig::conflist`]. rcd runs its built-in pause,
//! containerd a pause image built from rtest's pause binary, pulled before any timing.

use crate::stats::{round3, Summary};
use crate::tasks::{bin_dir_with, rss_kib, rss_pss_kib, Rcd};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rtest::containerd::{cgroup_dirs, mounts_under, Containerd, CriConfig};
use rtest::{busybox_image, pause_image, Registry};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Args)]
pub struct CriArgs {
    /// Pods (one busybox `sleep` container each) started in a row and kept running while
    /// lists, exec and memory are measured
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Timed pod → running container runs per runtime (after 2 warm-up runs each)
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// ListContainers and ListPodSandbox calls timed (each) with the pods running
    #[arg(long, default_value_t = 50)]
    lists: usize,
    /// ExecSync `true` calls timed with the pods running
    #[arg(long, default_value_t = 20)]
    execs: usize,
    /// Directory of rcd, containerd-shim-runr-v2 and runr (default: the release profile dir
    /// next to rbench, else the debug one with a warning)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// What describes the client in the output.
const CLIENT: &str = "k8s-cri 0.11 gRPC client (tonic) on each runtime's unix socket";

/// Deadline of one CRI call: generous, so a stuck daemon fails the run instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A CRI v1 client on one unix socket, with blocking calls (the timings include nothing but
/// the call: the runtime is current-thread and idle between calls).
struct Client {
    tokio: Arc<tokio::runtime::Runtime>,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    endpoint: String,
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Client {
    fn connect(tokio: Arc<tokio::runtime::Runtime>, socket: &Path) -> Result<Client> {
        let path = socket.to_owned();
        let ch = tokio.block_on(
            Endpoint::from_static("http://cri.sock").connect_with_connector(tower::service_fn(
                move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                },
            )),
        );
        let ch = ch.with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Client {
            tokio,
            rt: RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            img: ImageServiceClient::new(ch),
            endpoint: socket.display().to_string(),
        })
    }

    fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match self.tokio.block_on(f) {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => bail!("{what} on {}: {}: {}", self.endpoint, s.code(), s.message()),
        }
    }

    fn version(&self) -> Result<cri::VersionResponse> {
        let mut c = self.rt.clone();
        self.call(
            "Version",
            c.version(req(cri::VersionRequest {
                version: "v1".into(),
            })),
        )
    }

    fn pull(&self, image: &str) -> Result<String> {
        let mut c = self.img.clone();
        let r = self.call(
            &format!("PullImage {image}"),
            c.pull_image(req(cri::PullImageRequest {
                image: Some(image_spec(image)),
                ..Default::default()
            })),
        )?;
        Ok(r.image_ref)
    }

    fn run_pod(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let mut c = self.rt.clone();
        let r = self.call(
            "RunPodSandbox",
            c.run_pod_sandbox(req(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })),
        )?;
        Ok(r.pod_sandbox_id)
    }

    fn create(
        &self,
        pod: &str,
        config: cri::ContainerConfig,
        pod_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.rt.clone();
        let r = self.call(
            "CreateContainer",
            c.create_container(req(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config),
            })),
        )?;
        Ok(r.container_id)
    }

    fn start(&self, id: &str) -> Result<()> {
        let mut c = self.rt.clone();
        self.call(
            "StartContainer",
            c.start_container(req(cri::StartContainerRequest {
                container_id: id.into(),
            })),
        )?;
        Ok(())
    }

    fn stop_pod(&self, id: &str) -> Result<()> {
        let mut c = self.rt.clone();
        self.call(
            "StopPodSandbox",
            c.stop_pod_sandbox(req(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })),
        )?;
        Ok(())
    }

    fn remove_pod(&self, id: &str) -> Result<()> {
        let mut c = self.rt.clone();
        self.call(
            "RemovePodSandbox",
            c.remove_pod_sandbox(req(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })),
        )?;
        Ok(())
    }

    fn list_containers(&self) -> Result<Vec<cri::Container>> {
        let mut c = self.rt.clone();
        let r = self.call(
            "ListContainers",
            c.list_containers(req(cri::ListContainersRequest { filter: None })),
        )?;
        Ok(r.containers)
    }

    fn list_pods(&self) -> Result<Vec<cri::PodSandbox>> {
        let mut c = self.rt.clone();
        let r = self.call(
            "ListPodSandbox",
            c.list_pod_sandbox(req(cri::ListPodSandboxRequest { filter: None })),
        )?;
        Ok(r.items)
    }

    fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<cri::ExecSyncResponse> {
        let mut c = self.rt.clone();
        self.call(
            "ExecSync",
            c.exec_sync(req(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })),
        )
    }
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// One runtime under test as kubelet drives it. Dropping it stops and removes every pod it
/// still lists (before the daemon itself goes: declare it after the daemon).
struct Side {
    name: &'static str,
    client: Client,
    image: String,
    cgroup_parent: String,
    /// Pod log directories go below.
    logs: PathBuf,
    /// The daemon's socket, as its shims name it (`-address`).
    address: PathBuf,
    daemon_pid: u32,
    bridge: String,
    seq: usize,
}

impl Side {
    fn pod_config(&mut self, prefix: &str) -> Result<cri::PodSandboxConfig> {
        self.seq += 1;
        let name = format!("{prefix}-{}", self.seq);
        let logs = self.logs.join(&name);
        std::fs::create_dir_all(&logs)?;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "rbench".into(),
                attempt: 0,
            }),
            hostname: name,
            log_directory: logs.display().to_string(),
            labels: HashMap::from([("rbench".into(), "cri".into())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn container_config(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "sleep".into(),
                attempt: 0,
            }),
            image: Some(image_spec(&self.image)),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleep.log".into(),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer, timed (the configs are built
    /// before): (pod id, container id, time).
    fn pod_up(&mut self, prefix: &str) -> Result<(String, String, Duration)> {
        let pcfg = self.pod_config(prefix)?;
        let ccfg = self.container_config();
        let t = Instant::now();
        let pod = self.client.run_pod(pcfg.clone())?;
        let ctr = self.client.create(&pod, ccfg, pcfg)?;
        self.client.start(&ctr)?;
        Ok((pod, ctr, t.elapsed()))
    }

    fn pod_down(&self, pod: &str) -> Result<()> {
        self.client.stop_pod(pod)?;
        self.client.remove_pod(pod)
    }

    /// The runtime's own processes: its shims (`-address <socket>` in their argv) and all
    /// they started, apart from the containers' `sleep`s.
    fn per_pod_processes(&self) -> (Vec<Proc>, usize) {
        let table = proc_table();
        let address = self.address.display().to_string();
        let mut ours: HashSet<i32> = table
            .values()
            .filter(|p| {
                p.argv
                    .first()
                    .is_some_and(|a| a.contains("containerd-shim"))
                    && p.argv
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == address)
            })
            .map(|p| p.pid)
            .collect();
        loop {
            let more: Vec<i32> = table
                .values()
                .filter(|p| !ours.contains(&p.pid) && ours.contains(&p.ppid))
                .map(|p| p.pid)
                .collect();
            if more.is_empty() {
                break;
            }
            ours.extend(more);
        }
        let mut sleeps = 0;
        let mut procs = vec![];
        for pid in ours {
            let p = &table[&pid];
            if p.argv.first().map(String::as_str) == Some("sleep") {
                sleeps += 1;
            } else {
                procs.push(p.clone());
            }
        }
        (procs, sleeps)
    }

    /// What is left of pods after they were all removed: processes, cgroups below the
    /// pods' parent, veths on the bridge.
    fn leftovers(&self) -> Vec<String> {
        let mut left = vec![];
        let (procs, sleeps) = self.per_pod_processes();
        for p in procs {
            left.push(format!("process {} {}", p.pid, p.argv.join(" ")));
        }
        if sleeps > 0 {
            left.push(format!("{sleeps} container processes"));
        }
        for dir in cgroup_dirs(&self.cgroup_parent) {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        left.push(format!("cgroup {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge)) {
            for e in rd.flatten() {
                left.push(format!(
                    "veth {} on {}",
                    e.file_name().to_string_lossy(),
                    self.bridge
                ));
            }
        }
        left
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let Ok(pods) = self.client.list_pods() else {
            return;
        };
        for p in pods {
            if let Err(e) = self.pod_down(&p.id) {
                eprintln!("rbench cri: removing pod {} of {}: {e:#}", p.id, self.name);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
}

impl Proc {
    /// The program's name; rcd's logger is `rcd-logger cri-logger` (or `rcd cri-logger`).
    fn label(&self) -> String {
        let a0 = self.argv.first().map(String::as_str).unwrap_or("?");
        let base = a0.rsplit('/').next().unwrap_or(a0);
        match self.argv.get(1) {
            Some(sub) if base == "rcd" || base == "rcd-logger" => format!("{base} {sub}"),
            _ => base.to_owned(),
        }
    }
}

/// Every live (non-zombie) process with its parent and argv.
fn proc_table() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: i32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if state == "Z" {
            continue;
        }
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.insert(pid, Proc { pid, ppid, argv });
    }
    out
}

/// rcd with its CRI on a CNI network of its own (`rbcri<n>`, 10.79.<n>.0/24) and a cgroup
/// parent of its own. Dropping it stops rcd, then removes by force what the pods left:
/// processes, mounts (rootfs, pinned netns), cgroups, the bridge, iptables rules.
struct RcdCri {
    rcd: Rcd,
    net: CriConfig,
    _net_dir: tempfile::TempDir,
}

impl RcdCri {
    fn start(bin: &Path, registry: Registry, pause_ref: &str) -> Result<RcdCri> {
        let pid = std::process::id();
        let mut net = CriConfig::new(pause_ref, &[]);
        net.bridge = format!("rbcri{}", pid % 100_000);
        net.subnet = format!("10.79.{}.0/24", pid % 250);
        net.cgroup_parent = format!("/rbench-cri-rcd-{pid}");
        net.portmap = true;
        purge_net(&net);
        let net_dir = tempfile::Builder::new().prefix("rbench-cni-").tempdir()?;
        let conf = net_dir.path().join("net.d");
        std::fs::create_dir_all(&conf)?;
        std::fs::write(
            conf.join("10-rbench.conflist"),
            net.conflist(&net_dir.path().join("ipam")).to_string(),
        )?;
        let rcd = Rcd::start_with(
            bin,
            registry,
            &format!(
                "[cri]\ncni_conf_dir = {:?}\ncgroup_parent = {:?}\n",
                conf.display().to_string(),
                net.cgroup_parent
            ),
        )?;
        Ok(RcdCri {
            rcd,
            net,
            _net_dir: net_dir,
        })
    }

    /// Stops rcd and removes what it left; returns what had to be removed.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = vec![];
        self.rcd.stop();
        let address = self.rcd.address().display().to_string();
        let table = proc_table();
        let mut kill: HashSet<i32> = table
            .values()
            .filter(|p| {
                p.argv
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == address)
            })
            .map(|p| p.pid)
            .collect();
        for dir in cgroup_dirs(&self.net.cgroup_parent) {
            let mut dirs = vec![dir];
            while let Some(d) = dirs.pop() {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                {
                    kill.insert(pid);
                }
                if let Ok(rd) = std::fs::read_dir(&d) {
                    dirs.extend(
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
        for pid in &kill {
            let argv = table.get(pid).map(|p| p.argv.join(" ")).unwrap_or_default();
            left.push(format!("process {pid} {argv}"));
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while kill.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut mounts = mounts_under(self.rcd.dir());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            left.push(format!("mount {m}"));
        }
        for dir in cgroup_dirs(&self.net.cgroup_parent) {
            let mut subs = vec![];
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            subs.push(e.path());
                            stack.push(e.path());
                        }
                    }
                }
            }
            subs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
            for d in subs {
                left.push(format!("cgroup {}", d.display()));
                rmdir_retry(&d);
            }
            rmdir_retry(&dir);
        }
        purge_net(&self.net);
        left
    }
}

impl Drop for RcdCri {
    fn drop(&mut self) {
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("rbench cri: rcd teardown cleaned up {left:?}");
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

fn rmdir_retry(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the bridge and any iptables rule naming its subnet.
fn purge_net(net: &CriConfig) {
    let _ = Command::new("ip")
        .args(["link", "del", &net.bridge])
        .stderr(Stdio::null())
        .status();
    let prefix = net.subnet.trim_end_matches(".0/24").to_owned() + ".";
    for table in ["nat", "filter"] {
        let Ok(out) = Command::new("iptables-save").args(["-t", table]).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rule) = line.strip_prefix("-A ") {
                if line.contains(&prefix) {
                    let mut cmd = Command::new("iptables");
                    cmd.args(["-w", "-t", table, "-D"]);
                    cmd.args(rule.split_whitespace());
                    let _ = cmd.stderr(Stdio::null()).status();
                }
            }
        }
    }
}

/// Figures of one runtime.
#[derive(Default)]
struct Figures {
    version: String,
    pod_up_ms: Vec<f64>,
    pods_in_a_row_s: f64,
    list_containers_ms: Vec<f64>,
    list_pods_ms: Vec<f64>,
    /// Version round trips in the same loop: the transport's floor under the lists
    version_ms: Vec<f64>,
    exec_sync_ms: Vec<f64>,
    daemon_idle_kib: u64,
    daemon_loaded_kib: u64,
    per_pod_rss_kib: f64,
    per_pod_pss_kib: f64,
    per_pod_procs: f64,
    /// label → (count, RSS KiB, PSS KiB), over all pods
    processes: BTreeMap<String, (usize, u64, u64)>,
    teardown_s: f64,
    /// the StopPodSandbox part of the teardown
    stop_s: f64,
    leftovers: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// N pods in a row, lists, exec, memory, teardown on one runtime.
fn loaded(side: &mut Side, a: &CriArgs, f: &mut Figures) -> Result<()> {
    std::thread::sleep(Duration::from_secs(1));
    f.daemon_idle_kib = rss_kib(side.daemon_pid);
    let mut pods = vec![];
    let t = Instant::now();
    for _ in 0..a.pods {
        let (pod, ctr, _) = side.pod_up("many")?;
        pods.push((pod, ctr));
    }
    f.pods_in_a_row_s = t.elapsed().as_secs_f64();

    let n = side.client.list_containers()?.len();
    ensure!(
        n == a.pods,
        "{}: ListContainers lists {n} containers, {} expected",
        side.name,
        a.pods
    );
    for _ in 0..a.lists {
        let t = Instant::now();
        side.client.list_containers()?;
        f.list_containers_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        side.client.list_pods()?;
        f.list_pods_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        side.client.version()?;
        f.version_ms.push(ms(t.elapsed()));
    }
    let target = &pods[0].1;
    for _ in 0..a.execs {
        let t = Instant::now();
        let r = side.client.exec_sync(target, &["true"])?;
        f.exec_sync_ms.push(ms(t.elapsed()));
        ensure!(
            r.exit_code == 0,
            "{}: ExecSync true exited {}: {}",
            side.name,
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        );
    }

    std::thread::sleep(Duration::from_secs(1));
    f.daemon_loaded_kib = rss_kib(side.daemon_pid);
    let (procs, sleeps) = side.per_pod_processes();
    ensure!(
        sleeps == a.pods,
        "{}: {sleeps} container processes under its shims, {} expected",
        side.name,
        a.pods
    );
    let (mut rss, mut pss) = (0, 0);
    for p in &procs {
        let (r, s) = rss_pss_kib(p.pid as u32)?;
        rss += r;
        pss += s;
        let e = f.processes.entry(p.label()).or_default();
        e.0 += 1;
        e.1 += r;
        e.2 += s;
    }
    let n = a.pods as f64;
    f.per_pod_rss_kib = rss as f64 / n;
    f.per_pod_pss_kib = pss as f64 / n;
    f.per_pod_procs = procs.len() as f64 / n;

    let t = Instant::now();
    let mut stop = Duration::ZERO;
    for (pod, _) in &pods {
        let s = Instant::now();
        side.client.stop_pod(pod)?;
        stop += s.elapsed();
        side.client.remove_pod(pod)?;
    }
    f.teardown_s = t.elapsed().as_secs_f64();
    f.stop_s = stop.as_secs_f64();
    // shims exit (and containerd's reap theirs) a moment after the pod is gone
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        f.leftovers = side.leftovers();
        if f.leftovers.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn main(a: CriArgs) -> Result<()> {
    ensure!(
        a.runs > 0 && a.pods > 0 && a.lists > 0 && a.execs > 0,
        "--runs, --pods, --lists and --execs must be at least 1"
    );
    let bin = bin_dir_with(
        a.bin_dir.as_deref(),
        &["rcd", "rcd-logger", "containerd-shim-runr-v2", "runr"],
    )?;
    let tokio = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    );
    let logs = tempfile::Builder::new()
        .prefix("rbench-cri-logs-")
        .tempdir()?;

    let registry = Registry::start()?;
    registry.push(busybox_image(), "library/busybox", "latest")?;
    registry.push(pause_image(), "rtest/pause", "3.10")?;
    let pause_ref = registry.image_ref("rtest/pause", "3.10");
    let host = registry.host();
    let mut rcd = RcdCri::start(&bin, registry, &pause_ref)?;
    let image = rcd.rcd.image.clone();
    let mut ccfg = CriConfig::new(&pause_ref, &[host]);
    ccfg.portmap = true;
    let ctd = Containerd::start_cri(ccfg.clone())?;
    let ctd_pid = ctd.pid().context("containerd is not running")?;

    let mut r = Side {
        name: "rcd",
        client: Client::connect(tokio.clone(), &rcd.rcd.address())?,
        image: image.clone(),
        cgroup_parent: rcd.net.cgroup_parent.clone(),
        logs: logs.path().join("rcd"),
        address: rcd.rcd.address(),
        daemon_pid: rcd.rcd.pid(),
        bridge: rcd.net.bridge.clone(),
        seq: 0,
    };
    let mut c = Side {
        name: "containerd",
        client: Client::connect(tokio.clone(), &ctd.address())?,
        image: image.clone(),
        cgroup_parent: ccfg.cgroup_parent.clone(),
        logs: logs.path().join("containerd"),
        address: ctd.address(),
        daemon_pid: ctd_pid,
        bridge: ccfg.bridge.clone(),
        seq: 0,
    };
    let (mut fr, mut fc) = (Figures::default(), Figures::default());
    for (side, f) in [(&r, &mut fr), (&c, &mut fc)] {
        let v = side.client.version()?;
        f.version = format!("{} {}", v.runtime_name, v.runtime_version);
        side.client.pull(&image)?;
    }
    // containerd's sandbox image: in its store before anything is timed
    c.client.pull(&pause_ref)?;

    // pod → running container, interleaved, after warm-ups
    for i in 0..a.runs + 2 {
        for (side, f) in [(&mut r, &mut fr), (&mut c, &mut fc)] {
            let (pod, _, d) = side.pod_up("one")?;
            side.pod_down(&pod)?;
            if i >= 2 {
                f.pod_up_ms.push(ms(d));
            }
        }
    }
    loaded(&mut r, &a, &mut fr)?;
    loaded(&mut c, &a, &mut fc)?;

    drop(r);
    drop(c);
    let rcd_left = rcd.teardown();
    let ctd_left = ctd.stop()?;
    drop(rcd);

    report(&a, &bin, &fr, &fc)?;
    let mut bad = vec![];
    for (name, f) in [("rcd", &fr), ("containerd", &fc)] {
        if !f.leftovers.is_empty() {
            bad.push(format!(
                "{name} left after removing its pods: {:?}",
                f.leftovers
            ));
        }
    }
    if !rcd_left.is_empty() {
        bad.push(format!("rcd left at its stop: {rcd_left:?}"));
    }
    if !ctd_left.is_empty() {
        bad.push(format!("containerd left at its stop: {ctd_left:?}"));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("\n"));
    }
    Ok(())
}

fn report(a: &CriArgs, bin: &Path, r: &Figures, c: &Figures) -> Result<()> {
    let s = |v: &[f64]| Summary::of(v.iter().copied());
    let mib = |k: f64| k / 1024.0;
    // (metric, rcd, containerd, decimals)
    let mut rows: Vec<(String, f64, f64, usize)> = vec![];
    let (ur, uc) = (s(&r.pod_up_ms), s(&c.pod_up_ms));
    rows.push((
        format!("pod -> running container, median of {} (ms)", a.runs),
        ur.median,
        uc.median,
        1,
    ));
    rows.push(("  min (ms)".into(), ur.min, uc.min, 1));
    rows.push(("  max (ms)".into(), ur.max, uc.max, 1));
    rows.push((
        format!("{} pods started in a row (s)", a.pods),
        r.pods_in_a_row_s,
        c.pods_in_a_row_s,
        2,
    ));
    rows.push((
        format!(
            "ListContainers, {} pods, median of {} (ms)",
            a.pods, a.lists
        ),
        s(&r.list_containers_ms).median,
        s(&c.list_containers_ms).median,
        3,
    ));
    rows.push((
        format!(
            "ListPodSandbox, {} pods, median of {} (ms)",
            a.pods, a.lists
        ),
        s(&r.list_pods_ms).median,
        s(&c.list_pods_ms).median,
        3,
    ));
    rows.push((
        "  Version in the same loop (the gRPC floor), median (ms)".into(),
        s(&r.version_ms).median,
        s(&c.version_ms).median,
        3,
    ));
    rows.push((
        format!("ExecSync `true`, median of {} (ms)", a.execs),
        s(&r.exec_sync_ms).median,
        s(&c.exec_sync_ms).median,
        1,
    ));
    rows.push((
        "daemon RSS idle (MiB)".into(),
        mib(r.daemon_idle_kib as f64),
        mib(c.daemon_idle_kib as f64),
        1,
    ));
    rows.push((
        format!("daemon RSS, {} pods (MiB)", a.pods),
        mib(r.daemon_loaded_kib as f64),
        mib(c.daemon_loaded_kib as f64),
        1,
    ));
    rows.push((
        "per-pod overhead RSS (MiB)".into(),
        mib(r.per_pod_rss_kib),
        mib(c.per_pod_rss_kib),
        2,
    ));
    rows.push((
        "per-pod overhead PSS (MiB)".into(),
        mib(r.per_pod_pss_kib),
        mib(c.per_pod_pss_kib),
        2,
    ));
    rows.push((
        "  processes per pod".into(),
        r.per_pod_procs,
        c.per_pod_procs,
        1,
    ));
    rows.push((
        format!("teardown of {} pods, stop + remove (s)", a.pods),
        r.teardown_s,
        c.teardown_s,
        2,
    ));
    rows.push((
        "  of which StopPodSandbox (s)".into(),
        r.stop_s,
        c.stop_s,
        2,
    ));

    if a.json {
        let side = |f: &Figures| {
            json!({
                "version": f.version,
                "pod_up_ms": s(&f.pod_up_ms).to_json(),
                "pods_in_a_row_s": round3(f.pods_in_a_row_s),
                "list_containers_ms": s(&f.list_containers_ms).to_json(),
                "list_pod_sandbox_ms": s(&f.list_pods_ms).to_json(),
                "version_ms": s(&f.version_ms).to_json(),
                "exec_sync_ms": s(&f.exec_sync_ms).to_json(),
                "daemon_rss_idle_mib": round3(mib(f.daemon_idle_kib as f64)),
                "daemon_rss_loaded_mib": round3(mib(f.daemon_loaded_kib as f64)),
                "per_pod_rss_mib": round3(mib(f.per_pod_rss_kib)),
                "per_pod_pss_mib": round3(mib(f.per_pod_pss_kib)),
                "per_pod_processes": f.processes.iter().map(|(k, (n, r, p))| (k.clone(), json!({
                    "count": n,
                    "rss_mib_all_pods": round3(mib(*r as f64)),
                    "pss_mib_all_pods": round3(mib(*p as f64)),
                }))).collect::<serde_json::Map<_, _>>(),
                "teardown_s": round3(f.teardown_s),
                "stop_pod_sandbox_s": round3(f.stop_s),
                "leftovers": f.leftovers,
            })
        };
        let v = json!({
            "client": CLIENT,
            "binaries": bin.display().to_string(),
            "pods": a.pods, "runs": a.runs, "lists": a.lists, "execs": a.execs,
            "rcd": side(r), "containerd": side(c),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "rbench cri: {} ({}) vs {}, CRI v1 through the {CLIENT}",
        r.version,
        bin.display(),
        c.version
    );
    println!("pods: busybox `sleep 3600`, one container each; CNI bridge + host-local + portmap (+ loopback) on each side");
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    println!(
        "{:<w$} | {:>10} | {:>10} | {:>14}",
        "metric", "rcd", "containerd", "rcd/containerd"
    );
    println!(
        "{}|{}|{}|{}",
        "-".repeat(w + 1),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(15)
    );
    let mut over = vec![];
    for (name, x, y, dec) in &rows {
        let ratio = x / y;
        println!("{name:<w$} | {x:>10.dec$} | {y:>10.dec$} | {ratio:>14.2}");
        if ratio > 1.0 / 3.0 && !name.starts_with("  ") {
            over.push(name.trim().to_owned());
        }
    }
    let n = a.pods as f64;
    let procs = |f: &Figures| {
        f.processes
            .iter()
            .map(|(k, (count, rss, pss))| {
                format!(
                    "{count}x {k} ({:.2}/{:.2})",
                    mib(*rss as f64) / n,
                    mib(*pss as f64) / n
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "processes added for {} pods (per-pod RSS/PSS MiB): rcd {}; containerd {}",
        a.pods,
        procs(r),
        procs(c)
    );
    println!(
        "target (issue 5): rcd at most a third of containerd's figures (rcd/containerd <= 0.33): {}",
        if over.is_empty() {
            "met on every row".to_owned()
        } else {
            format!("not met on {}", over.join("; "))
        }
    );
    Ok(())
}
