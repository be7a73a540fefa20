//! `rbench pull`: pull plus unpack of a large multi-layer image from a loopback registry into
//! an empty store, rcd against `ctr images pull` of Debian's containerd 1.6, interleaved.
//!
//! * The image is built once from trees of this machine (default: a busybox rootfs plus four
//!   host directories, about 315 MB unpacked) and cached under `rtest::cache_dir()`, keyed by
//!   the chosen directories; it is pushed once to a `docker-registry` on 127.0.0.1.
//! * rcd: every run is a fresh process (`rbench __pull-child`) that opens a new content store,
//!   metadata DB and overlay snapshotter in an empty temp root, pulls over plain HTTP, unpacks
//!   and records the image. It is started and measured by the small `__driver` helper, so its
//!   wall time, CPU time (wait4 user+sys) and peak RSS (`ru_maxrss`) are the whole job's.
//! * containerd: every run is a fresh private containerd (root in an empty temp dir), started
//!   before the timer; the timer covers `ctr images pull --plain-http` (which in 1.6 also
//!   unpacks into overlayfs snapshots). CPU = ctr's wait4 user+sys plus containerd's
//!   utime+stime delta (/proc/PID/stat); RSS = containerd's VmHWM (reset through
//!   /proc/PID/clear_refs just before the pull, so it is the peak during the pull, of the
//!   whole daemon) and ctr's `ru_maxrss`, reported separately and as a sum.
//!
//! Both tools do the same per-inode filesystem work (about 30k creates, 3k of them symlinks,
//! plus the removal of the previous run's tree). On this machine's ext4 (a busy VM) that
//! costs 0.5 to 2 ms of mostly system time per create and swamps everything else, so the
//! ratio on `/tmp` tends to 1 as the machine gets busier; `--workdir /dev/shm` (tmpfs, both
//! stores and the registry there) measures the tools rather than the disk.

use crate::runtime::Driver;
use crate::stats::{round3, Summary};
use anyhow::{bail, ensure, Context, Result};
use rcd::content::ContentStore;
use rcd::image::{record_image, unpack_image, ImageLayers};
use rcd::metadata::{Labels, Metadata};
use rcd::pull::{PullOptions, Puller, RegistryConfig};
use rcd::snapshot::Snapshotter;
use rtest::containerd::{mounts_under, Containerd};
use rtest::{Compression, ImageBuilder, Layer, Registry};
use serde_json::{json, Value};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

const REPO: &str = "bench/big";
const TAG: &str = "latest";
const NS: &str = "default";
/// `--layer` value that means rtest's busybox rootfs layer.
const BUSYBOX: &str = "busybox";
const CACHE_VERSION: &str = "rbench-pull-v1";

#[derive(clap::Args)]
pub struct PullArgs {
    /// A layer: a directory whose tree becomes one layer, or `busybox` for a busybox rootfs.
    /// Repeat for more layers, bottom first. Default: busybox, /usr/lib/gcc, /usr/share/doc,
    /// /usr/share/man, /usr/share/perl (on this machine about 315 MB unpacked, 150 MB gzip,
    /// 30k files of which 3k symlinks; /usr holds little pre-compressed data, so the issue's
    /// 175 MB gzip for 280 MB unpacked is not reachable with host trees of that size).
    #[arg(long = "layer")]
    layers: Vec<String>,
    /// Runs per tool (interleaved; medians reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where both stores (rcd's root, containerd's root) and the registry storage live
    /// (e.g. /dev/shm to take the disk's per-inode cost out)
    #[arg(long, default_value = "/tmp")]
    workdir: PathBuf,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// How rcd pulls: `daemon` = a fresh `rcd` (beside rbench) per run, started before the
    /// timer, and `rctr images pull --plain-http` timed, as ctr against containerd;
    /// `library` = rcd's pull/unpack/record library in a fresh child process
    #[arg(long, value_enum, default_value_t = RcdMode::Daemon)]
    rcd_mode: RcdMode,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum RcdMode {
    Daemon,
    Library,
}

#[derive(clap::Args, Debug)]
pub struct PullChildArgs {
    /// Empty dir for the content store, metadata DB and snapshotter
    #[arg(long)]
    root: PathBuf,
    /// Image reference (host:port/repo:tag) served over plain HTTP
    #[arg(long)]
    image: String,
}

fn default_layers() -> Vec<String> {
    [
        BUSYBOX,
        "/usr/lib/gcc",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/perl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Entry point of the hidden `__pull-child`: one pull + unpack + record into `root`.
pub fn child_main(a: PullChildArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let store = ContentStore::open(a.root.join("content")).await?;
        let md = Metadata::open(a.root.join("meta.db"))?;
        let snap = Snapshotter::open(a.root.join("overlayfs"), md)?;
        let host = a
            .image
            .split('/')
            .next()
            .context("reference without host")?;
        let puller = Puller::new(store.clone(), RegistryConfig::default().plain_http(host));
        let _lease = snap.metadata().lease().await;
        let pulled = puller.pull(&a.image, &PullOptions::default()).await?;
        let unpacked = unpack_image(NS, &ImageLayers::try_from(&pulled)?, &store, &snap).await?;
        record_image(
            NS,
            &pulled.name,
            &pulled,
            &unpacked,
            &store,
            &snap,
            Labels::new(),
        )
        .await?;
        anyhow::Ok(json!({
            "name": pulled.name,
            "layers": pulled.layers.len(),
            "applied": unpacked.applied,
            "top": unpacked.top().map(|d| d.to_string()),
        }))
    })?;
    println!("{out}");
    Ok(())
}

/// What one layer is made of.
struct LayerInfo {
    source: String,
    files: u64,
    symlinks: u64,
    tar_bytes: u64,
    gz_bytes: u64,
}

fn count_tree(dir: &Path, files: &mut u64, symlinks: &mut u64) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_symlink() {
            *symlinks += 1;
        } else if ft.is_dir() {
            count_tree(&e.path(), files, symlinks)?;
        } else if !ft.is_socket() {
            *files += 1;
        }
    }
    Ok(())
}

/// The layer for `source`, from the cache or built (and cached).
fn layer_for(source: &str) -> Result<(Layer, LayerInfo)> {
    let key = rtest::sha256_digest(format!("{CACHE_VERSION}\n{source}").as_bytes());
    let dir = rtest::fixtures::cache_dir().join(format!("{CACHE_VERSION}-{}", &key[7..23]));
    let (blob, meta) = (dir.join("layer.tar.gz"), dir.join("layer.json"));
    if let (Ok(data), Ok(m)) = (std::fs::read(&blob), std::fs::read(&meta)) {
        let m: Value = serde_json::from_slice(&m)?;
        let digest = rtest::sha256_digest(&data);
        if m["digest"].as_str() == Some(digest.as_str()) {
            let info = LayerInfo {
                source: source.to_owned(),
                files: m["files"].as_u64().unwrap_or(0),
                symlinks: m["symlinks"].as_u64().unwrap_or(0),
                tar_bytes: m["tar_bytes"].as_u64().unwrap_or(0),
                gz_bytes: data.len() as u64,
            };
            let layer = Layer {
                media_type: Compression::Gzip.oci_media_type().to_owned(),
                digest,
                diff_id: m["diff_id"]
                    .as_str()
                    .context("cache lacks diff_id")?
                    .to_owned(),
                data,
                compression: Compression::Gzip,
            };
            return Ok((layer, info));
        }
    }
    eprintln!("rbench pull: building layer from {source} (cached afterwards)");
    let (tar, files, symlinks) = if source == BUSYBOX {
        let tar = rtest::busybox_layer().tar()?;
        let mut ar = tar::Archive::new(&tar[..]);
        let (mut f, mut s) = (0, 0);
        for e in ar.entries()? {
            let e = e?;
            let t = e.header().entry_type();
            if t.is_symlink() {
                s += 1;
            } else if !t.is_dir() {
                f += 1;
            }
        }
        (tar, f, s)
    } else {
        let p = Path::new(source);
        ensure!(p.is_dir(), "--layer {source}: not a directory");
        let (mut f, mut s) = (0, 0);
        count_tree(p, &mut f, &mut s)?;
        (rtest::tar_dir(p)?, f, s)
    };
    let layer = Layer::from_tar(&tar, Compression::Gzip)?;
    let info = LayerInfo {
        source: source.to_owned(),
        files,
        symlinks,
        tar_bytes: tar.len() as u64,
        gz_bytes: layer.size(),
    };
    drop(tar);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&blob, &layer.data)?;
    std::fs::write(
        &meta,
        serde_json::to_vec(&json!({
            "source": source, "digest": layer.digest, "diff_id": layer.diff_id,
            "files": files, "symlinks": symlinks, "tar_bytes": info.tar_bytes,
        }))?,
    )?;
    Ok((layer, info))
}

/// One measured run of either tool.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    wall_s: f64,
    cpu_s: f64,
    /// Peak RSS of the main process (rcd child; containerd daemon), KiB.
    rss_kib: u64,
    /// ctr's own CPU and peak RSS (containerd runs only).
    client_cpu_s: f64,
    client_rss_kib: u64,
}

fn proc_cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14..17 of stat(5) (utime, stime, cutime, cstime); `rest` starts at field 3.
    let n = |i: usize| f[i - 3].parse::<u64>().unwrap_or(0);
    Ok(n(14) + n(15) + n(16) + n(17))
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// The containerd process serving `ctd` (found by its config path in the command line).
pub(crate) fn containerd_pid(ctd: &Containerd) -> Result<u32> {
    let cfg = ctd.dir().join("config.toml").display().to_string();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("containerd")) && args.contains(&cfg) {
                return Ok(pid);
            }
        }
    }
    bail!("containerd process for {cfg} not found")
}

fn run_rcd(driver: &mut Driver, workdir: &Path, image: &str) -> Result<RunResult> {
    let root = tempfile::Builder::new()
        .prefix("rbench-pull-rcd-")
        .tempdir_in(workdir)?;
    let exe = std::env::current_exe()?.display().to_string();
    let argv = [
        exe,
        "__pull-child".into(),
        "--root".into(),
        root.path().display().to_string(),
        "--image".into(),
        image.to_owned(),
    ];
    let result = (|| {
        let s = driver.run(&argv)?;
        let out = driver.output();
        if s.status != 0 {
            bail!("rcd pull child failed (status {}):\n{out}", s.status);
        }
        let reply: Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("rcd pull child printed no result:\n{out}"))?;
        // Verify from the outside: the image is recorded and its top snapshot exists.
        let md = Metadata::open(root.path().join("meta.db"))?;
        let snap = Snapshotter::open(root.path().join("overlayfs"), md)?;
        let name = reply["name"].as_str().context("rcd run: no name")?;
        let rec = snap.metadata().image(NS, name)?;
        ensure!(rec.is_some(), "rcd run: image {name} not recorded");
        let top = reply["top"].as_str().context("rcd run: no top snapshot")?;
        snap.stat(NS, top)
            .with_context(|| format!("rcd run: top snapshot {top} missing"))?;
        ensure!(
            reply["applied"].as_u64() == reply["layers"].as_u64(),
            "rcd run: not every layer was applied from an empty store: {reply}"
        );
        let n = snap.list(NS)?.len();
        ensure!(
            n as u64 == reply["layers"].as_u64().unwrap_or(0),
            "rcd run: {n} snapshots for {reply}"
        );
        Ok(RunResult {
            wall_s: s.wall.as_secs_f64(),
            cpu_s: s.tree_cpu.as_secs_f64(),
            rss_kib: s.tree_maxrss_kib,
            client_cpu_s: 0.0,
            client_rss_kib: 0,
        })
    })();
    let left = mounts_under(root.path());
    for m in left.iter().rev() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    rcd::unpack::remove_dir_all(root.path())
        .with_context(|| format!("removing {}", root.path().display()))?;
    ensure!(left.is_empty(), "rcd run left mounts: {left:?}");
    result
}

/// `rcd` and `rctr` of the same build as rbench (same target directory).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating rbench")?;
    let p = exe.with_file_name(name);
    ensure!(
        p.is_file(),
        "{} not found beside rbench: build it (cargo build [--release] -p rcd -p rcd-cli)",
        p.display()
    );
    Ok(p)
}

/// One run against a fresh rcd daemon: the daemon is started (empty root) before the timer,
/// the timer covers `rctr images pull --plain-http` (download, unpack into overlayfs
/// snapshots, record), as containerd's run covers `ctr images pull`.
fn run_rcd_daemon(
    driver: &mut Driver,
    workdir: &Path,
    image: &str,
    layers: usize,
) -> Result<RunResult> {
    let dir = tempfile::Builder::new()
        .prefix("rbench-pull-rcdd-")
        .tempdir_in(workdir)?;
    let (root, state, sock) = (
        dir.path().join("root"),
        dir.path().join("state"),
        dir.path().join("rcd.sock"),
    );
    let (rcd, rctr) = (sibling("rcd")?, sibling("rctr")?);
    let log = std::fs::File::create(dir.path().join("rcd.log"))?;
    let mut daemon = std::process::Command::new(&rcd)
        .arg("--root")
        .arg(&root)
        .arg("--state")
        .arg(&state)
        .arg("--address")
        .arg(&sock)
        .args(["--log-level", "warn"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", rcd.display()))?;
    let rctr_cmd = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&rctr)
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "rctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let result = (|| {
        let t0 = std::time::Instant::now();
        while rctr_cmd(&["version"]).is_err() {
            ensure!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "rcd did not answer on {} within 20 s:\n{}",
                sock.display(),
                std::fs::read_to_string(dir.path().join("rcd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pid = daemon.id();
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let argv: Vec<String> = vec![
            rctr.display().to_string(),
            "--address".into(),
            sock.display().to_string(),
            "images".into(),
            "pull".into(),
            "--plain-http".into(),
            image.to_owned(),
        ];
        let cpu0 = proc_cpu_ticks(pid)?;
        let s = driver.run(&argv)?;
        let cpu1 = proc_cpu_ticks(pid)?;
        let hwm = vm_hwm_kib(pid)?;
        if s.status != 0 {
            bail!(
                "rctr images pull failed (status {}):\n{}",
                s.status,
                driver.output()
            );
        }
        ensure!(reset, "could not reset rcd's VmHWM (clear_refs)");
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let names = rctr_cmd(&["images", "ls", "-q"])?;
        ensure!(
            names.lines().any(|l| l.trim().ends_with(image)),
            "rcd run: {image} not listed: {names}"
        );
        let snaps = rctr_cmd(&["snapshots", "ls"])?;
        let committed = snaps.lines().filter(|l| l.contains("Committed")).count();
        ensure!(
            committed == layers,
            "rcd run: {committed} committed snapshots, want {layers}:\n{snaps}"
        );
        Ok(RunResult {
            wall_s: s.wall.as_secs_f64(),
            cpu_s: (cpu1 - cpu0) as f64 / tick + s.tree_cpu.as_secs_f64(),
            rss_kib: hwm,
            client_cpu_s: s.tree_cpu.as_secs_f64(),
            client_rss_kib: s.tree_maxrss_kib,
        })
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let left = mounts_under(dir.path());
    for m in left.iter().rev() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    rcd::unpack::remove_dir_all(dir.path())
        .with_context(|| format!("removing {}", dir.path().display()))?;
    ensure!(left.is_empty(), "rcd run left mounts: {left:?}");
    result
}

fn run_containerd(driver: &mut Driver, image: &str, layers: usize) -> Result<RunResult> {
    let ctd = Containerd::start("", &[])?;
    let result = (|| {
        let (_, ctr) = Containerd::binaries()?;
        let pid = containerd_pid(&ctd)?;
        // Reset the peak RSS to the current RSS, so VmHWM is the peak during the pull.
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let argv: Vec<String> = vec![
            ctr.display().to_string(),
            "--address".into(),
            ctd.address().display().to_string(),
            "--namespace".into(),
            ctd.namespace().to_owned(),
            "images".into(),
            "pull".into(),
            "--plain-http".into(),
            "--snapshotter".into(),
            "overlayfs".into(),
            image.to_owned(),
        ];
        let cpu0 = proc_cpu_ticks(pid)?;
        let s = driver.run(&argv)?;
        let cpu1 = proc_cpu_ticks(pid)?;
        let hwm = vm_hwm_kib(pid)?;
        if s.status != 0 {
            bail!(
                "ctr images pull failed (status {}):\n{}\ncontainerd log:\n{}",
                s.status,
                driver.output(),
                ctd.log_tail(30)
            );
        }
        ensure!(reset, "could not reset containerd's VmHWM (clear_refs)");
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let imgs = ctd.ctr_ok(&["images", "ls", "-q"])?;
        ensure!(
            imgs.lines().any(|l| l.trim() == image),
            "containerd run: {image} not listed: {imgs}"
        );
        let snaps = ctd.ctr_ok(&["snapshots", "--snapshotter", "overlayfs", "ls"])?;
        let committed = snaps.lines().filter(|l| l.contains("Committed")).count();
        ensure!(
            committed == layers,
            "containerd run: {committed} committed snapshots, want {layers}:\n{snaps}"
        );
        Ok(RunResult {
            wall_s: s.wall.as_secs_f64(),
            cpu_s: (cpu1 - cpu0) as f64 / tick + s.tree_cpu.as_secs_f64(),
            rss_kib: hwm,
            client_cpu_s: s.tree_cpu.as_secs_f64(),
            client_rss_kib: s.tree_maxrss_kib,
        })
    })();
    let left = ctd.stop()?;
    if result.is_ok() && !left.is_empty() {
        bail!("containerd run left {left:?}");
    }
    result
}

fn summary(v: &[RunResult], f: impl Fn(&RunResult) -> f64) -> Summary {
    Summary::of(v.iter().map(f))
}

pub fn main(a: PullArgs) -> Result<()> {
    ensure!(a.runs > 0, "--runs must be at least 1");
    let layers = if a.layers.is_empty() {
        default_layers()
    } else {
        a.layers.clone()
    };
    std::fs::create_dir_all(&a.workdir)?;
    let workdir = a.workdir.canonicalize()?;
    // The harnesses (registry, containerd) make their temp dirs under TMPDIR.
    std::env::set_var("TMPDIR", &workdir);
    let scratch = tempfile::Builder::new()
        .prefix("rbench-pull-")
        .tempdir_in(&workdir)?;
    // Drivers first, while this process is small: a forked child's ru_maxrss starts at its
    // parent's RSS (see driver.rs).
    let mut rcd_driver = Driver::start(scratch.path().join("rcd.out"), None)?;
    let mut ctr_driver = Driver::start(scratch.path().join("ctr.out"), None)?;

    let mut infos = Vec::new();
    let mut builder = ImageBuilder::new().cmd(&["/bin/sh"]);
    for l in &layers {
        let (layer, info) = layer_for(l)?;
        builder = builder.layer(layer);
        infos.push(info);
    }
    let image = builder.build()?;
    let reg = Registry::start()?;
    reg.push(&image, REPO, TAG)?;
    drop(image);
    let image_ref = reg.image_ref(REPO, TAG);

    let (tar_total, gz_total): (u64, u64) = infos
        .iter()
        .fold((0, 0), |(t, g), i| (t + i.tar_bytes, g + i.gz_bytes));
    let mb = |b: u64| b as f64 / 1e6;
    if !a.json {
        println!("image {image_ref}: {} layers", infos.len());
        println!(
            "  {:<24} {:>8} {:>8} {:>10} {:>10}",
            "layer", "files", "symlinks", "tar MB", "gzip MB"
        );
        for i in &infos {
            println!(
                "  {:<24} {:>8} {:>8} {:>10.1} {:>10.1}",
                i.source,
                i.files,
                i.symlinks,
                mb(i.tar_bytes),
                mb(i.gz_bytes)
            );
        }
        println!(
            "  {:<24} {:>8} {:>8} {:>10.1} {:>10.1}",
            "total",
            infos.iter().map(|i| i.files).sum::<u64>(),
            infos.iter().map(|i| i.symlinks).sum::<u64>(),
            mb(tar_total),
            mb(gz_total)
        );
        println!(
            "stores under {} ({}), {} runs each, interleaved",
            workdir.display(),
            fs_type(&workdir),
            a.runs
        );
    }

    let (mut rcd_runs, mut ctd_runs) = (Vec::new(), Vec::new());
    for i in 0..a.runs {
        for which in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            if which == 0 {
                let r = match a.rcd_mode {
                    RcdMode::Daemon => {
                        run_rcd_daemon(&mut rcd_driver, &workdir, &image_ref, infos.len())
                    }
                    RcdMode::Library => run_rcd(&mut rcd_driver, &workdir, &image_ref),
                }
                .with_context(|| format!("rcd run {i}"))?;
                if !a.json {
                    eprintln!(
                        "  run {i} rcd:        {:>6.2} s wall {:>6.2} s CPU {:>5} MiB",
                        r.wall_s,
                        r.cpu_s,
                        r.rss_kib >> 10
                    );
                }
                rcd_runs.push(r);
            } else {
                let r = run_containerd(&mut ctr_driver, &image_ref, infos.len())
                    .with_context(|| format!("containerd run {i}"))?;
                if !a.json {
                    eprintln!(
                        "  run {i} containerd: {:>6.2} s wall {:>6.2} s CPU {:>5} MiB (+ ctr {} MiB)",
                        r.wall_s,
                        r.cpu_s,
                        r.rss_kib >> 10,
                        r.client_rss_kib >> 10
                    );
                }
                ctd_runs.push(r);
            }
        }
    }
    drop(reg);

    let rw = summary(&rcd_runs, |r| r.wall_s);
    let rc = summary(&rcd_runs, |r| r.cpu_s);
    let rr = summary(&rcd_runs, |r| (r.rss_kib >> 10) as f64);
    let cw = summary(&ctd_runs, |r| r.wall_s);
    let cc = summary(&ctd_runs, |r| r.cpu_s);
    let cr = summary(&ctd_runs, |r| (r.rss_kib >> 10) as f64);
    let ccc = summary(&ctd_runs, |r| r.client_cpu_s);
    let ccr = summary(&ctd_runs, |r| (r.client_rss_kib >> 10) as f64);
    let csum = summary(&ctd_runs, |r| ((r.rss_kib + r.client_rss_kib) >> 10) as f64);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    if a.json {
        let runs = |v: &[RunResult]| {
            v.iter()
                .map(|r| {
                    json!({"wall_s": round3(r.wall_s), "cpu_s": round3(r.cpu_s),
                    "rss_kib": r.rss_kib, "client_cpu_s": round3(r.client_cpu_s),
                    "client_rss_kib": r.client_rss_kib})
                })
                .collect::<Vec<_>>()
        };
        let out = json!({
            "image": {
                "ref": image_ref,
                "layers": infos.iter().map(|i| json!({
                    "source": i.source, "files": i.files, "symlinks": i.symlinks,
                    "tar_bytes": i.tar_bytes, "gzip_bytes": i.gz_bytes,
                })).collect::<Vec<_>>(),
                "tar_bytes": tar_total, "gzip_bytes": gz_total,
            },
            "workdir": workdir, "fs": fs_type(&workdir), "runs": a.runs,
            "loadavg": load.trim(),
            "rcd": {"wall_s": rw.to_json(), "cpu_s": rc.to_json(), "rss_mib": rr.to_json(),
                    "runs": runs(&rcd_runs)},
            "containerd": {"wall_s": cw.to_json(), "cpu_s": cc.to_json(),
                    "daemon_rss_mib": cr.to_json(), "ctr_cpu_s": ccc.to_json(),
                    "ctr_rss_mib": ccr.to_json(), "daemon_plus_ctr_rss_mib": csum.to_json(),
                    "runs": runs(&ctd_runs)},
            "ratio_rcd_over_containerd": {
                "wall": round3(rw.median / cw.median),
                "cpu": round3(rc.median / cc.median),
                "rss_vs_daemon": round3(rr.median / cr.median),
                "rss_vs_daemon_plus_ctr": round3(rr.median / csum.median),
            },
            "target": "rcd wall <= 0.5 x containerd wall",
            "rcd_mode": format!("{:?}", a.rcd_mode).to_lowercase(),
            "meaning_daemon_mode": "rcd is measured as containerd is: a fresh daemon (empty root) started before the timer, wall = `rctr images pull --plain-http`, CPU = daemon utime+stime delta + rctr's, RSS = daemon VmHWM reset via clear_refs just before the pull (rctr's RSS not included)",
            "meaning": {
                "wall": "rcd (library mode): fork of the __pull-child to its reaping (process start, store open, pull, unpack, record, exit); containerd: fork of `ctr images pull` to its exit (daemon already running with an empty root)",
                "cpu": "rcd: user+sys of the child process tree; containerd: utime+stime delta of the containerd daemon (/proc/PID/stat) + ctr's user+sys",
                "rss": "rcd: ru_maxrss of the child; containerd: daemon VmHWM reset via clear_refs just before the pull (so its baseline of ~30-40 MiB after start-up is included), ctr separately",
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "\n{:<28} {:>10} {:>14} {:>10}",
            "median (min..max)", "rcd", "containerd", "rcd/ctd"
        );
        let row = |label: &str, r: Summary, c: Summary, unit: &str| {
            println!(
                "{:<28} {:>8.2}{unit} {:>12.2}{unit} {:>10.2}   (rcd {:.2}..{:.2}, ctd {:.2}..{:.2})",
                label,
                r.median,
                c.median,
                r.median / c.median,
                r.min,
                r.max,
                c.min,
                c.max
            );
        };
        row("wall s", rw, cw, " ");
        row("CPU s (user+sys)", rc, cc, " ");
        row("peak RSS MiB vs daemon", rr, cr, " ");
        row("peak RSS MiB vs daemon+ctr", rr, csum, " ");
        println!(
            "{:<28} {:>10} {:>12.2}  {:>10}   ctr alone: {:.2} s CPU, {:.0} MiB",
            "  (ctr client share)", "", ccc.median, "", ccc.median, ccr.median
        );
        println!(
            "\ntarget: rcd wall <= 0.5 x containerd: {} (ratio {:.2})",
            if rw.median <= 0.5 * cw.median {
                "MET"
            } else {
                "NOT met"
            },
            rw.median / cw.median
        );
        println!(
            "rcd mode: {:?}{}",
            a.rcd_mode,
            if a.rcd_mode == RcdMode::Daemon {
                " (rcd measured as containerd: fresh daemon started before the timer; wall = \
                 `rctr images pull --plain-http`; CPU = daemon delta + rctr; RSS = daemon VmHWM \
                 reset just before the pull). The lines below describe library mode for rcd."
            } else {
                ""
            }
        );
        println!(
            "wall: rcd = fork of a fresh `rbench __pull-child` (opens an empty store, pulls, \
             unpacks into overlay snapshots, records) to its reaping; containerd = `ctr images \
             pull --plain-http` with a fresh daemon (empty root) started before the timer.\n\
             CPU: rcd = user+sys of the child; containerd = daemon utime+stime delta + ctr's \
             user+sys.\n\
             RSS: rcd = ru_maxrss of the child; containerd = daemon VmHWM reset (clear_refs) just \
             before the pull, so it includes the daemon's post-start-up RSS; ctr's ru_maxrss \
             separately and summed.\nloadavg at end: {}",
            load.trim()
        );
    }
    Ok(())
}

fn fs_type(p: &Path) -> String {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
