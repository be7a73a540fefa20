//! Containers and tasks, rcd + rctr + rshim against containerd 1.6 + ctr + its Go shim (with
//! runc), in the same run: `run --rm` of busybox /bin/true (interleaved), N detached `sleep`
//! containers started in a row, daemon RSS idle and with M containers running, and RSS/PSS
//! per shim (`/proc/<pid>/smaps_rollup`).

use crate::stats::{round3, Summary};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rtest::containerd::{shims_of, Containerd};
use rtest::{busybox_image, spawn_tied, Registry};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct TasksArgs {
    /// `run --rm /bin/true` runs per tool (after 2 warm-up runs each)
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Detached `sleep` containers started in a row
    #[arg(long, default_value_t = 20)]
    detached: usize,
    /// Containers running while the daemons' and shims' memory is measured
    #[arg(long, default_value_t = 10)]
    containers: usize,
    /// Directory of rcd, rctr, containerd-shim-runr-v2 and runr (default: the release
    /// profile dir next to rbench, else the debug one with a warning)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

fn bin_dir(a: &TasksArgs) -> Result<PathBuf> {
    bin_dir_with(
        a.bin_dir.as_deref(),
        &["rcd", "rctr", "containerd-shim-runr-v2", "runr"],
    )
}

/// `given`, else `release` next to rbench's profile dir if it has all of `bins`, else `debug`
/// (with a warning).
pub(crate) fn bin_dir_with(given: Option<&Path>, bins: &[&str]) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_owned());
    }
    let exe = std::env::current_exe()?;
    let own = exe.parent().context("rbench has no directory")?.to_owned();
    let target = own.parent().context("no target dir")?.to_owned();
    for profile in ["release", "debug"] {
        let d = target.join(profile);
        if bins.iter().all(|b| d.join(b).is_file()) {
            if profile == "debug" {
                eprintln!("rbench: warning: measuring debug builds (cargo build --release first)");
            }
            return Ok(d);
        }
    }
    bail!(
        "{} not all built in {}/release or {}/debug",
        bins.join(", "),
        target.display(),
        target.display()
    )
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// (RSS, PSS) in KiB from smaps_rollup.
pub(crate) fn rss_pss_kib(pid: u32) -> Result<(u64, u64)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let f = |name: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((f("Rss:"), f("Pss:")))
}

/// A private rcd with busybox pulled.
pub(crate) struct Rcd {
    child: Child,
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub(crate) image: String,
    _registry: Registry,
}

impl Rcd {
    pub(crate) fn start(bin: &Path) -> Result<Rcd> {
        let registry = Registry::start()?;
        registry.push(busybox_image(), "library/busybox", "latest")?;
        let rcd = Rcd::start_with(bin, registry, "")?;
        rcd.rctr_ok(&["images", "pull", "--plain-http", &rcd.image.clone()])?;
        Ok(rcd)
    }

    /// An rcd whose images come from `registry` (holding `library/busybox:latest`), with
    /// `extra_config` appended to its config file; nothing pulled yet.
    pub(crate) fn start_with(bin: &Path, registry: Registry, extra_config: &str) -> Result<Rcd> {
        let image = registry.image_ref("library/busybox", "latest");
        let dir = tempfile::Builder::new().prefix("rbench-rcd-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("rcd.log"))?;
        // rnerd's bridges under rbench's own prefix and pool, removed on drop
        let config = dir.path().join("rcd.toml");
        std::fs::write(
            &config,
            format!(
                "[networks]\npool = \"{BENCH_POOL}\"\nbridge_prefix = \"{BENCH_BRIDGE_PREFIX}\"\n\n\
                 {extra_config}"
            ),
        )?;
        let mut cmd = Command::new(bin.join("rcd"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(dir.path().join("rcd.sock"))
            .arg("--log-level")
            .arg("warn")
            .env("PATH", path_with(bin))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_tied(cmd)?;
        let rcd = Rcd {
            child,
            dir,
            bin: bin.to_owned(),
            image,
            _registry: registry,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(rcd.address()).is_err() {
            ensure!(Instant::now() < deadline, "rcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(rcd)
    }

    pub(crate) fn address(&self) -> PathBuf {
        self.dir.path().join("rcd.sock")
    }

    /// rcd's temp dir: config, root, state, socket, log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 20 s; once only (the pid is not signalled after it was
    /// reaped).
    pub(crate) fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn rctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join("rctr"));
        cmd.arg("--address")
            .arg(self.address())
            .args(args)
            .env("RCTR_FIFO_DIR", self.dir.path().join("fifo"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn rctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.rctr(args).output()?;
        if !out.status.success() {
            bail!(
                "rctr {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn shim_pid(&self, id: &str) -> Result<u32> {
        let p = self
            .dir
            .path()
            .join(format!("state/tasks/default/{id}/task.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
        v["shim_pid"]
            .as_u64()
            .map(|p| p as u32)
            .with_context(|| format!("no shim pid in {}", p.display()))
    }
}

const BENCH_POOL: &str = "10.78.0.0/16";
const BENCH_BRIDGE_PREFIX: &str = "rbench-";

impl Drop for Rcd {
    fn drop(&mut self) {
        self.stop();
        // the networks' bridges outlive their containers (as docker's do)
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or(name);
                if name.starts_with(BENCH_BRIDGE_PREFIX) {
                    let _ = Command::new("ip").args(["link", "del", name]).status();
                }
            }
        }
    }
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub(crate) fn timed(mut cmd: Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.output()?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(d)
}

fn ctr_cmd(ctd: &Containerd, args: &[&str]) -> Result<Command> {
    let (_, ctr) = Containerd::binaries()?;
    let mut cmd = Command::new(ctr);
    cmd.arg("--address")
        .arg(ctd.address())
        .arg("--namespace")
        .arg(ctd.namespace())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

#[derive(Default)]
struct Side {
    run_rm_ms: Vec<f64>,
    detached_s: f64,
    daemon_idle_kib: u64,
    daemon_loaded_kib: u64,
    shim_rss_kib: f64,
    shim_pss_kib: f64,
}

pub fn main(a: TasksArgs) -> Result<()> {
    ensure!(
        a.runs > 0 && a.containers > 0,
        "--runs and --containers must be at least 1"
    );
    let bin = bin_dir(&a)?;
    let rcd = Rcd::start(&bin)?;
    let ctd = Containerd::start("", &[])?;
    ctd.import(rtest::busybox_oci_archive(), None)?;
    let ctd_pid = crate::pull::containerd_pid(&ctd)?;
    let (mut r, mut c) = (Side::default(), Side::default());

    // run --rm /bin/true, interleaved, after warm-ups
    for i in 0..a.runs + 2 {
        let id = format!("rm{i}");
        let d = timed(rcd.rctr(&["run", "--rm", &rcd.image, &id, "/bin/true"]))?;
        let cid = ctd.container_id("rm");
        let cg = ctd.cgroup_for(&cid);
        let e = timed(ctr_cmd(
            &ctd,
            &[
                "run",
                "--rm",
                "--cgroup",
                &cg,
                rtest::BUSYBOX_NAME,
                &cid,
                "/bin/true",
            ],
        )?)?;
        if i >= 2 {
            r.run_rm_ms.push(d.as_secs_f64() * 1e3);
            c.run_rm_ms.push(e.as_secs_f64() * 1e3);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    r.daemon_idle_kib = rss_kib(rcd.child.id());
    c.daemon_idle_kib = rss_kib(ctd_pid);

    // N detached sleep containers in a row
    let rcd_ids: Vec<String> = (0..a.detached).map(|i| format!("d{i}")).collect();
    let ctd_ids: Vec<String> = (0..a.detached).map(|_| ctd.container_id("d")).collect();
    let t = Instant::now();
    for id in &rcd_ids {
        rcd.rctr_ok(&["run", "-d", &rcd.image, id, "sleep", "600"])?;
    }
    r.detached_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for id in &ctd_ids {
        let cg = ctd.cgroup_for(id);
        let out = ctr_cmd(
            &ctd,
            &[
                "run",
                "-d",
                "--cgroup",
                &cg,
                rtest::BUSYBOX_NAME,
                id,
                "sleep",
                "600",
            ],
        )?
        .output()?;
        ensure!(
            out.status.success(),
            "ctr run -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.detached_s = t.elapsed().as_secs_f64();
    // memory with `containers` of them running: stop the rest first
    let keep = a.containers.min(a.detached);
    for id in &rcd_ids[keep..] {
        rcd.rctr_ok(&["tasks", "rm", "-f", id])?;
        rcd.rctr_ok(&["containers", "rm", id])?;
    }
    for id in &ctd_ids[keep..] {
        ctd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id])?;
        ctd.wait_task_status(id, "STOPPED", Duration::from_secs(20))?;
        ctd.ctr_ok(&["tasks", "delete", id])?;
        ctd.ctr_ok(&["containers", "rm", id])?;
    }
    std::thread::sleep(Duration::from_secs(1));
    r.daemon_loaded_kib = rss_kib(rcd.child.id());
    c.daemon_loaded_kib = rss_kib(ctd_pid);
    let mut rs = vec![];
    for id in &rcd_ids[..keep] {
        rs.push(rss_pss_kib(rcd.shim_pid(id)?)?);
    }
    let mut cs = vec![];
    for id in &ctd_ids[..keep] {
        let shims = shims_of(id);
        let [(pid, _)] = shims.as_slice() else {
            bail!("expected one shim for {id}, found {shims:?}");
        };
        cs.push(rss_pss_kib(*pid as u32)?);
    }
    let avg = |v: &[(u64, u64)], f: fn(&(u64, u64)) -> u64| {
        v.iter().map(f).sum::<u64>() as f64 / v.len().max(1) as f64
    };
    (r.shim_rss_kib, r.shim_pss_kib) = (avg(&rs, |x| x.0), avg(&rs, |x| x.1));
    (c.shim_rss_kib, c.shim_pss_kib) = (avg(&cs, |x| x.0), avg(&cs, |x| x.1));
    for id in &rcd_ids[..keep] {
        rcd.rctr_ok(&["tasks", "rm", "-f", id])?;
        rcd.rctr_ok(&["containers", "rm", id])?;
    }
    for id in &ctd_ids[..keep] {
        let _ = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        let _ = ctd.wait_task_status(id, "STOPPED", Duration::from_secs(20));
        let _ = ctd.ctr(&["tasks", "delete", id]);
        let _ = ctd.ctr(&["containers", "rm", id]);
    }
    let left = ctd.stop()?;
    ensure!(left.is_empty(), "containerd left {left:?}");

    let rm_r = Summary::of(r.run_rm_ms.iter().copied());
    let rm_c = Summary::of(c.run_rm_ms.iter().copied());
    let mib = |k: f64| k / 1024.0;
    if a.json {
        let side = |s: &Side, rm: Summary| {
            json!({
                "run_rm_ms": rm.to_json(),
                "detached_s": round3(s.detached_s),
                "daemon_rss_idle_mib": round3(mib(s.daemon_idle_kib as f64)),
                "daemon_rss_loaded_mib": round3(mib(s.daemon_loaded_kib as f64)),
                "shim_rss_mib": round3(mib(s.shim_rss_kib)),
                "shim_pss_mib": round3(mib(s.shim_pss_kib)),
            })
        };
        let v = json!({
            "binaries": bin.display().to_string(),
            "runs": a.runs, "detached": a.detached, "containers": keep,
            "rcd": side(&r, rm_r), "containerd": side(&c, rm_c),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "rcd + rctr + rshim ({}) vs containerd 1.6 + ctr + containerd-shim-runc-v2/runc",
        bin.display()
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "rcd", "containerd", "ratio"
    );
    let row = |name: String, x: f64, y: f64| {
        println!("{name:<44} {x:>12.2} {y:>12.2} {:>8.2}", x / y);
    };
    row(
        format!("run --rm /bin/true, median of {} (ms)", a.runs),
        rm_r.median,
        rm_c.median,
    );
    row("  p10 (ms)".into(), rm_r.p10, rm_c.p10);
    row("  p90 (ms)".into(), rm_r.p90, rm_c.p90);
    row(
        format!("{} detached sleep containers in a row (s)", a.detached),
        r.detached_s,
        c.detached_s,
    );
    row(
        "daemon RSS idle (MiB)".into(),
        mib(r.daemon_idle_kib as f64),
        mib(c.daemon_idle_kib as f64),
    );
    row(
        format!("daemon RSS, {keep} containers running (MiB)"),
        mib(r.daemon_loaded_kib as f64),
        mib(c.daemon_loaded_kib as f64),
    );
    row(
        "RSS per shim (MiB)".into(),
        mib(r.shim_rss_kib),
        mib(c.shim_rss_kib),
    );
    row(
        "PSS per shim (MiB)".into(),
        mib(r.shim_pss_kib),
        mib(c.shim_pss_kib),
    );
    Ok(())
}
