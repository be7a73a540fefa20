//! A private instance of the system's containerd (Debian's 1.6) for interop tests: its own
//! config, root, state and socket in a temp dir, driven with `ctr`, and torn down completely —
//! containerd, its shims, the containers' processes, mounts and cgroups — even when a test
//! panics half-way.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where containerd 1.6 puts shim sockets, whatever its state dir is.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// How long one `ctr` command may take before it is killed and the test fails.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Containerd::stop`] had to clean up by force. Empty after a test that removed all
/// it created.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub tasks: Vec<String>,
    pub containers: Vec<String>,
    pub shims: Vec<String>,
    pub processes: Vec<String>,
    pub mounts: Vec<String>,
    pub cgroups: Vec<String>,
    pub sockets: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.containers.is_empty()
            && self.shims.is_empty()
            && self.processes.is_empty()
            && self.mounts.is_empty()
            && self.cgroups.is_empty()
            && self.sockets.is_empty()
    }
}

/// A running containerd. Dropping it tears everything down; [`Containerd::stop`] does the same
/// and reports what was left over.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    namespace: String,
    /// Container IDs handed out, for shim sockets to remove.
    ids: Mutex<Vec<String>>,
    /// cgroup paths handed out, to empty and remove.
    cgroups: Mutex<Vec<String>>,
    /// The environment added at start, for [`Containerd::kill9_and_restart`].
    env: Vec<(String, String)>,
    /// Set when the CRI plugin is on.
    cri: Option<CriConfig>,
}

impl Containerd {
    /// `containerd` and `ctr` from PATH (Debian package `containerd`).
    pub fn binaries() -> Result<(PathBuf, PathBuf)> {
        let find = |name: &str| {
            which(name)
                .with_context(|| format!("{name} not found: install the Debian package containerd"))
        };
        Ok((find("containerd")?, find("ctr")?))
    }

    /// Starts containerd with a config of its own: version 2, root, state and the gRPC socket
    /// in a temp dir, CRI disabled, the overlayfs snapshotter, plus `extra_toml` (use
    /// `{dir}` in it for the temp dir). `env` is added to containerd's environment (and so
    /// its shims'). Waits until the socket answers.
    pub fn start(extra_toml: &str, env: &[(&str, &str)]) -> Result<Containerd> {
        Self::start_inner(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
            extra_toml,
            env,
            None,
        )
    }

    /// Starts containerd with its CRI plugin on (see [`CriConfig`]): the `k8s.io` namespace
    /// for the `ctr` helpers, a test-owned CNI bridge network, the sandbox image pulled over
    /// plain HTTP from a loopback registry. Teardown also removes the bridge, the pods'
    /// network namespaces and the cgroup parent.
    pub fn start_cri(cri: CriConfig) -> Result<Containerd> {
        let toml = cri.toml();
        let parent = cri.cgroup_parent.clone();
        let mut ctd = Self::start_inner("", &toml, &[], Some(cri))?;
        ctd.namespace = "k8s.io".into();
        ctd.cgroups.lock().unwrap().push(parent);
        Ok(ctd)
    }

    fn start_inner(
        head: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
        cri: Option<CriConfig>,
    ) -> Result<Containerd> {
        Self::binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("rtest-ctd-")
            .tempdir()
            .context("creating containerd temp dir")?;
        let d = dir.path().display().to_string();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
{head}

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.snapshotter.v1.overlayfs"]

{extra}
"#,
            extra = extra_toml.replace("{dir}", &d)
        );
        if let Some(cri) = &cri {
            cri.write_files(dir.path())?;
        }
        std::fs::write(dir.path().join("config.toml"), config)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::spawn(dir.path(), &env)?;
        let mut ctd = Containerd {
            namespace: format!("rtest-{}", std::process::id()),
            dir,
            child: Some(child),
            ids: Mutex::new(vec![]),
            cgroups: Mutex::new(vec![]),
            env,
            cri,
        };
        ctd.wait_ready(Duration::from_secs(30))?;
        Ok(ctd)
    }

    fn spawn(dir: &Path, env: &[(String, String)]) -> Result<Child> {
        let (containerd, _) = Self::binaries()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))?;
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Tied to this process: killed by the kernel if the test process dies without Drop.
        crate::spawn_tied(cmd).context("starting containerd")
    }

    /// `kill -9` of containerd alone (its shims and containers keep running), then a new
    /// containerd on the same config, root and state; waits until it answers.
    pub fn kill9_and_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = Some(Self::spawn(self.dir.path(), &self.env)?);
        self.wait_ready(Duration::from_secs(30))
    }

    /// The pid of containerd (for tests that kill it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(self.address()).is_ok() {
                // The socket accepts before every service is registered; `ctr version` needs
                // the version service, which comes with the gRPC server.
                let out = self.ctr(&["version"])?;
                if out.status.success() {
                    return Ok(());
                }
            }
            let child = self.child.as_mut().expect("running");
            if child.try_wait()?.is_some() {
                bail!("containerd exited during start-up:\n{}", self.log_tail(60));
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd socket {} not ready after {timeout:?}:\n{}",
                    self.address().display(),
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The containerd namespace the `ctr` helpers use (unique to this test process).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A fresh container ID, remembered for clean-up.
    pub fn container_id(&self, prefix: &str) -> String {
        let id = crate::unique_id(prefix);
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// A cgroup path of its own for container `id` (`ctr run --cgroup`), remembered for
    /// clean-up. Without it containers would share the parent cgroup `/<namespace>`, which
    /// nothing removes.
    pub fn cgroup_for(&self, id: &str) -> String {
        let path = format!("/rtest-ctd-{id}");
        self.cgroups.lock().unwrap().push(path.clone());
        path
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `ctr --address SOCK -n NS <args>`, killed after [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        let (_, ctr) = Self::binaries()?;
        let mut cmd = Command::new(ctr);
        // In 1.6 the snapshotter is the client's choice; ctr's default is overlayfs too.
        cmd.env("CONTAINERD_SNAPSHOTTER", "overlayfs")
            .arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        output_with_timeout(cmd, CTR_TIMEOUT).with_context(|| format!("ctr {}", args.join(" ")))
    }

    /// [`Containerd::ctr`] that must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr images import` of an OCI or docker archive into this instance's namespace.
    pub fn import(&self, archive: &Path, base_name: Option<&str>) -> Result<String> {
        let archive = archive.display().to_string();
        let mut args = vec!["images", "import"];
        if let Some(b) = base_name {
            args.extend(["--base-name", b]);
        }
        args.push(&archive);
        self.ctr_ok(&args)
    }

    /// The status column of `ctr tasks ls` for `id`, if listed.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = self.ctr_ok(&["tasks", "ls"])?;
        Ok(out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        }))
    }

    /// Polls until task `id` has `status` (e.g. `STOPPED`).
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.task_status(id)?;
            if now.as_deref() == Some(status) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("task {id} is {now:?}, not {status}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd and removes everything it left: shims of this instance, the processes
    /// in the cgroups handed out, mounts under the temp dir, those cgroups and shim sockets.
    /// Returns what had to be cleaned by force (so a test can assert there was nothing).
    pub fn stop(mut self) -> Result<Leftovers> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<Leftovers> {
        let mut left = Leftovers::default();
        let Some(mut child) = self.child.take() else {
            return Ok(left);
        };
        // While containerd still runs, let it remove what the test left, through the runtime.
        if child.try_wait()?.is_none() {
            if let Ok(out) = self.ctr(&["tasks", "ls", "-q"]) {
                for t in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    left.tasks.push(t.to_owned());
                    let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", t]);
                    let _ = self.wait_task_status(t, "STOPPED", Duration::from_secs(5));
                    let _ = self.ctr(&["tasks", "delete", "--force", t]);
                }
            }
            if let Ok(out) = self.ctr(&["containers", "ls", "-q"]) {
                for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    left.containers.push(c.to_owned());
                    let _ = self.ctr(&["containers", "rm", c]);
                }
            }
            // SIGTERM, then SIGKILL after 10 s.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.wait();

        // Shims of this instance: any process with `-address <our socket>` in its argv. A shim
        // told to shut down exits once its last events are published (containerd's own wait
        // up to 5 s for their publisher): only one still there after that is left over.
        let address = self.address().display().to_string();
        let ours = |argv: &[String]| {
            argv.first().is_some_and(|a0| {
                a0.rsplit('/')
                    .next()
                    .unwrap_or("")
                    .starts_with("containerd-shim")
            }) && argv
                .windows(2)
                .any(|w| w[0] == "-address" && w[1] == address)
        };
        let deadline = Instant::now() + Duration::from_secs(7);
        while !processes_where(|a| ours(a)).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let shims = processes_where(|a| ours(a));
        for (pid, argv) in &shims {
            left.shims.push(format!("{pid} {}", argv.join(" ")));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_gone(shims.iter().map(|(p, _)| *p), Duration::from_secs(5));

        // Container processes the runtime did not kill, then their cgroups.
        let cgroups = self.cgroups.lock().unwrap().clone();
        for cg in &cgroups {
            for dir in cgroup_dirs(cg) {
                let pids = read_pids(&dir.join("cgroup.procs"));
                for pid in &pids {
                    left.processes.push(format!("{pid} in {}", dir.display()));
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                wait_gone(pids.into_iter(), Duration::from_secs(5));
            }
        }

        // The runtimes' state dirs of our namespace (the shims' default `--root` is
        // host-wide, `/run/containerd/<runtime>/<namespace>`): empty once all is deleted.
        for rt in ["runr", "runc"] {
            let _ =
                std::fs::remove_dir(Path::new("/run/containerd").join(rt).join(&self.namespace));
        }

        // Mounts under our dir (rootfs overlays, shm), deepest first.
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            left.mounts.push(m.clone());
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }

        if let Some(cri) = &self.cri {
            // Network namespaces the pods left (named in containerd's log), then the bridge.
            let log =
                std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
            for ns in netns_in(&log) {
                let p = Path::new(NETNS_DIR).join(&ns);
                if p.exists() {
                    left.mounts.push(p.display().to_string());
                    let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_file(&p);
                }
            }
            if Path::new("/sys/class/net").join(&cri.bridge).exists() {
                let _ = Command::new("ip")
                    .args(["link", "del", &cri.bridge])
                    .output();
            }
        }

        for cg in &cgroups {
            // Pods' and containers' cgroups below a handed-out parent, deepest first.
            for dir in cgroup_dirs(cg) {
                let mut subs = vec![];
                collect_subdirs(&dir, &mut subs);
                subs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
                for sub in subs {
                    for pid in read_pids(&sub.join("cgroup.procs")) {
                        left.processes.push(format!("{pid} in {}", sub.display()));
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    left.cgroups.push(sub.display().to_string());
                    rmdir_retry(&sub, Duration::from_secs(5));
                }
                // The CRI pods' parent is expected to stay; only what is below it is left over.
                if self.cri.as_ref().is_none_or(|c| c.cgroup_parent != *cg) {
                    left.cgroups.push(dir.display().to_string());
                }
                rmdir_retry(&dir, Duration::from_secs(5));
            }
        }

        for id in self.ids.lock().unwrap().iter() {
            let sock = shim_socket(&address, &self.namespace, id);
            if sock.exists() {
                left.sockets.push(sock.display().to_string());
                let _ = std::fs::remove_file(&sock);
            }
        }

        // What could not be removed is an error, not just a leftover.
        let still: Vec<String> = mounts_under(self.dir.path())
            .into_iter()
            .chain(
                cgroups
                    .iter()
                    .flat_map(|c| cgroup_dirs(c))
                    .map(|d| d.display().to_string()),
            )
            .collect();
        if !still.is_empty() {
            bail!("could not remove: {}", still.join(", "));
        }
        Ok(left)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        match self.teardown() {
            Ok(left) if !left.is_empty() => eprintln!("containerd teardown cleaned up {left:?}"),
            Ok(_) => {}
            Err(e) => eprintln!("containerd teardown: {e:#}"),
        }
    }
}

/// The workspace's shim `containerd-shim-runr-v2` (package rshim) next to the test
/// executable (`target/<tuple>/<profile>/`), like [`crate::runtime::runtime_binary`] finds runr.
/// Panics when it is not built.
pub fn rshim_binary() -> PathBuf {
    let candidates = crate::runtime::built_binary_candidates("containerd-shim-runr-v2");
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "containerd-shim-runr-v2 was not found (looked at {}): build it first with \
         `cargo build -p rshim` (same profile as the tests)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A PATH for containerd that finds [`rshim_binary`] (runtime `io.containerd.runr.v2`) first.
pub fn path_with_rshim() -> String {
    let shim = rshim_binary();
    format!(
        "{}:{}",
        shim.parent().expect("in a dir").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// (pid, argv) of the shims whose argv has `-id <id>`.
pub fn shims_of(id: &str) -> Vec<(i32, Vec<String>)> {
    processes_where(|argv| {
        argv.first()
            .is_some_and(|a0| a0.contains("containerd-shim"))
            && argv.windows(2).any(|w| w[0] == "-id" && w[1] == id)
    })
}

/// Where containerd 1.6 mounts pod network namespaces (fixed, whatever its state dir).
pub const NETNS_DIR: &str = "/var/run/netns";

/// What the CRI plugin of a private containerd uses. Every name is unique to the test process
/// so instances never clash: bridge `rctl<n>`, subnet `10.<a>.<b>.0/24`, cgroup parent.
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// The sandbox image (e.g. pushed to a loopback registry).
    pub sandbox_image: String,
    /// `host:port` of registries spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    pub bridge: String,
    pub subnet: String,
    /// Give this to pods as `linux.cgroup_parent`; removed at teardown.
    pub cgroup_parent: String,
    /// Chain CNI's `portmap` after the bridge, as a node's usual pod network does (off: the
    /// bridge alone).
    pub portmap: bool,
}

impl CriConfig {
    pub fn new(sandbox_image: &str, plain_http: &[String]) -> CriConfig {
        let pid = std::process::id();
        CriConfig {
            sandbox_image: sandbox_image.into(),
            plain_http: plain_http.to_vec(),
            bridge: format!("rctl{}", pid % 100_000),
            subnet: format!("10.{}.{}.0/24", 200 + (pid / 250) % 50, pid % 250),
            cgroup_parent: format!("/rtest-cri-{pid}"),
            portmap: false,
        }
    }

    /// The CNI conflist of this network (bridge, host-local addresses kept in `ipam_dir`,
    /// portmap if asked); containerd adds the loopback network itself.
    pub fn conflist(&self, ipam_dir: &Path) -> serde_json::Value {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}]],
                "dataDir": ipam_dir.display().to_string(),
            },
        })];
        if self.portmap {
            plugins.push(serde_json::json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
            }));
        }
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": format!("rtest-{}", self.bridge),
            "plugins": plugins,
        })
    }

    fn toml(&self) -> String {
        format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{{dir}}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{{dir}}/certs.d"
"#,
            sandbox = self.sandbox_image
        )
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni)?;
        let conf = self.conflist(&dir.join("cni-ipam"));
        std::fs::write(cni.join("10-rtest.conflist"), conf.to_string())?;
        for host in &self.plain_http {
            let d = dir.join("certs.d").join(host);
            std::fs::create_dir_all(&d)?;
            std::fs::write(
                d.join("hosts.toml"),
                format!(
                    "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        Ok(())
    }
}

/// `cni-<uuid>` names of network namespaces mentioned in a containerd log.
fn netns_in(log: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for (i, _) in log.match_indices("/var/run/netns/cni-") {
        let rest = &log[i + "/var/run/netns/".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.len() > 4 && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn collect_subdirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                collect_subdirs(&e.path(), out);
            }
        }
    }
}

/// A `/bin/sh` script in `dir` that appends `<runtime> <its arguments>` to `log`, then execs
/// `runtime`: point containerd at it to see which commands the runtime is given.
pub fn logging_wrapper(dir: &Path, name: &str, runtime: &Path, log: &Path) -> Result<PathBuf> {
    for p in [runtime, log] {
        if p.to_string_lossy().contains('\'') {
            bail!("quote in {}", p.display());
        }
    }
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s %s\\n' '{rt}' \"$*\" >> '{log}'\nexec '{rt}' \"$@\"\n",
            rt = runtime.display(),
            log = log.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A bare name looked up in PATH and the sbin directories.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|c| c.is_file());
    found
}

/// containerd 1.6's shim socket for a container: `/run/containerd/s/<sha256(address/ns/id)>`.
pub fn shim_socket(address: &str, namespace: &str, id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}/{namespace}/{id}").as_bytes());
    Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest))
}

/// Runs `cmd` with stdout and stderr captured, killing it after `timeout`.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let ro = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: ro.join().unwrap_or_default(),
        stderr: re.join().unwrap_or_default(),
    })
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// (pid, argv) of every process whose argv matches.
fn processes_where(pred: impl Fn(&[String]) -> bool) -> Vec<(i32, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (pred(&argv) && proc_state(pid) != Some('Z')).then_some((pid, argv))
        })
        .collect()
}

/// Waits until none of `pids` runs any more (zombies count as gone).
fn wait_gone(pids: impl Iterator<Item = i32>, timeout: Duration) {
    let pids: Vec<i32> = pids.collect();
    let deadline = Instant::now() + timeout;
    while pids
        .iter()
        .any(|p| !matches!(proc_state(*p), None | Some('Z')))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pids(procs: &Path) -> Vec<i32> {
    std::fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The directories of cgroup `path` that exist, in every mounted hierarchy (v1 controllers
/// and the unified one) or in the v2 root.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.path().join(rel)).collect())
        .unwrap_or_default();
    dirs.push(root.join(rel));
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

fn rmdir_retry(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn finds_netns_names_in_the_log() {
        let log = "level=debug msg=\"x\" netns=/var/run/netns/cni-1a2b-3c\n\
                   path /var/run/netns/cni-1a2b-3c again, /var/run/netns/cni-ff\"";
        assert_eq!(netns_in(log), ["cni-1a2b-3c", "cni-ff"]);
        assert!(netns_in("nothing here").is_empty());
    }

    #[test]
    fn cri_names_are_per_process_and_valid() {
        let c = CriConfig::new("127.0.0.1:5000/pause:3.10", &[]);
        assert!(c.bridge.len() <= 15, "{}", c.bridge);
        assert!(c.subnet.starts_with("10.") && c.subnet.ends_with(".0/24"));
        assert!(c.toml().contains("restrict_oom_score_adj = true"));
    }

    #[test]
    fn conflist_chains_portmap_when_asked() {
        let mut c = CriConfig::new("127.0.0.1:5000/pause:3.10", &[]);
        let types = |c: &CriConfig| {
            c.conflist(Path::new("/ipam"))["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(types(&c), ["bridge"]);
        c.portmap = true;
        assert_eq!(types(&c), ["bridge", "portmap"]);
        let l = c.conflist(Path::new("/ipam"));
        assert_eq!(l["plugins"][0]["bridge"], c.bridge.as_str());
        assert_eq!(l["plugins"][0]["ipam"]["dataDir"], "/ipam");
        assert_eq!(l["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn shim_socket_matches_containerd() {
        // Observed from containerd 1.6.20 for address /tmp/scratch/ctd/ctd.sock, ns rtest, id c6.
        assert_eq!(
            shim_socket("/tmp/scratch/ctd/ctd.sock", "rtest", "c6"),
            Path::new(
                "/run/containerd/s/07db42cfcb74e53715d80212bd12163dbd2496cbf66c75469b791fcf60c9ccea"
            )
        );
    }
}
